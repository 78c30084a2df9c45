"""What ships the node's logs: the CloudWatch agent's config (its schema's rules for file collection,
as far as they matter here; the agent itself cannot be installed here), rsyslog's drop-in run by a
real rsyslogd with a real HAProxy logging to it, and logrotate's config read by a real logrotate."""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from haproxy_ha_runtime import shipping
from haproxy_ha_runtime.config import NodeConfig, parse_config
from haproxy_ha_runtime.log import logging_to
from haproxy_ha_runtime.render import render_haproxy
from tests.conftest import require
from tests.runtime.samples import doc
from tests.support.agent_tools import wait_for
from tests.support.moto_server import free_port

PREFIX = "/haproxy-ha/prod"
# The keys the CloudWatch agent's schema allows in a file collection entry that this project uses,
# and the variables it substitutes in a stream name (amazon-cloudwatch-agent's
# translator/config/schema.json, logsFilesDefinition; "Manually create or edit the CloudWatch
# agent configuration file").
FILE_ENTRY_KEYS = {"file_path", "log_group_name", "log_stream_name", "timezone"}
GROUP_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/#")


def _cfg(tmp: Path, **changes: Any) -> NodeConfig:
    return parse_config(doc(**{"pair_name": "prod", "log_group_prefix": PREFIX,
                               "paths": {"run_dir": str(tmp / "run"), "log_dir": str(tmp / "logs"),
                                         "cloudwatch_agent_conf": str(tmp / "etc" / "cloudwatch-agent.json"),
                                         "rsyslog_conf": str(tmp / "etc" / "rsyslog.d" / "haproxy-ha.conf"),
                                         "logrotate_conf": str(tmp / "etc" / "logrotate.d" / "haproxy-ha")},
                               **changes}))


def test_the_cloudwatch_agent_ships_each_file_to_its_group_in_one_stream_per_node_and_instance(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    conf = json.loads(shipping.render_cloudwatch_agent(cfg))
    assert conf["agent"] == {"region": "us-east-1"}
    assert set(conf["logs"]) == {"logs_collected"} and set(conf["logs"]["logs_collected"]) == {"files"}
    entries = conf["logs"]["logs_collected"]["files"]["collect_list"]
    assert [(e["file_path"], e["log_group_name"]) for e in entries] == [
        (str(tmp_path / "logs" / "agent.jsonl"), PREFIX + "/agent"),
        (str(tmp_path / "logs" / "metrics.jsonl"), PREFIX + "/metrics"),
        (str(tmp_path / "logs" / "haproxy.log"), PREFIX + "/haproxy"),
        (str(tmp_path / "logs" / "keepalived.log"), PREFIX + "/keepalived"),
    ]
    for e in entries:
        assert set(e) <= FILE_ENTRY_KEYS
        assert e["log_stream_name"] == "a/{instance_id}" and e["timezone"] in ("UTC", "Local", "LOCAL")
        assert set(e["log_group_name"]) <= GROUP_NAME_CHARS and len(e["log_group_name"]) <= 512
    # The groups' names come from one place, which the stack reads too.
    assert [e["log_group_name"] for e in entries] == [shipping.log_group(PREFIX, k) for k in shipping.LOG_GROUPS]
    longest = _cfg(tmp_path, log_group_prefix="x" * 500)
    assert max(len(e["log_group_name"]) for e in json.loads(shipping.render_cloudwatch_agent(longest))["logs"]
               ["logs_collected"]["files"]["collect_list"]) <= 512


def test_fails_when_a_log_group_kind_is_unknown() -> None:
    with pytest.raises(ValueError, match="log group kind: got 'access'; allowed: agent, metrics, haproxy, keepalived"):
        shipping.log_group(PREFIX, "access")


def test_files_are_written_when_the_document_names_log_groups_and_removed_when_it_stops(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    first = shipping.write_files(cfg, "node.json")
    assert list(first.values()) == [True, True, True]
    assert list(shipping.write_files(cfg, "node.json").values()) == [False, False, False]
    assert Path(cfg.paths.log_dir).is_dir()
    off = _cfg(tmp_path, log_group_prefix=None)
    assert list(shipping.write_files(off, "node.json").values()) == [True, True, True]
    assert not any(Path(p).exists() for p in first)
    assert list(shipping.write_files(off, "node.json").values()) == [False, False, False]


def test_haproxy_logs_to_the_journal_unless_the_node_ships_its_logs(tmp_path: Path) -> None:
    assert "    log /dev/log local0\n" in render_haproxy(_cfg(tmp_path, log_group_prefix=None, paths=None))
    assert f"    log {tmp_path}/run/syslog.sock local0\n" in render_haproxy(_cfg(tmp_path))


# -- rsyslog and logrotate, the real ones ---------------------------------------------------------

def _main_conf(tmp: Path, cfg: NodeConfig, test_socket: Path) -> Path:
    """What /etc/rsyslog.conf gives the drop-in on a node (imuxsock loaded; the journal's input
    stands in for a socket whose lines go to the default ruleset, as imjournal's do)."""
    work = tmp / "rsyslog-work"
    work.mkdir(exist_ok=True)
    main = tmp / "rsyslog.conf"
    main.write_text(f'global(workDirectory="{work}")\n'
                    'module(load="imuxsock" SysSock.Use="off")\n'
                    f'input(type="imuxsock" Socket="{test_socket}")\n'
                    f'include(file="{cfg.paths.rsyslog_conf}")\n'
                    f'*.* action(type="omfile" file="{tmp / "everything-else.log"}")\n')
    return main


def test_rsyslog_accepts_the_drop_in(tmp_path: Path) -> None:
    rsyslogd = shutil.which("rsyslogd") or shutil.which("rsyslogd", path="/usr/sbin")
    require("the rsyslogd binary (Debian package rsyslog)", rsyslogd is not None)
    assert rsyslogd is not None
    cfg = _cfg(tmp_path)
    shipping.write_files(cfg, "node.json")
    main = _main_conf(tmp_path, cfg, tmp_path / "journal.sock")
    proc = subprocess.run([rsyslogd, "-N1", "-f", str(main)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The check is real: a drop-in that loads imuxsock again is refused.
    Path(cfg.paths.rsyslog_conf).write_text('module(load="imuxsock")\n' + Path(cfg.paths.rsyslog_conf).read_text())
    assert subprocess.run([rsyslogd, "-N1", "-f", str(main)], capture_output=True, timeout=30).returncode != 0


class _Backend:
    def __init__(self) -> None:
        class H(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def rsyslog_and_haproxy(tmp_path: Path) -> Iterator[tuple[NodeConfig, int, Path]]:
    rsyslogd = shutil.which("rsyslogd") or shutil.which("rsyslogd", path="/usr/sbin")
    haproxy = shutil.which("haproxy")
    require("the rsyslogd binary (Debian package rsyslog)", rsyslogd is not None)
    require("the haproxy binary (Debian package haproxy)", haproxy is not None)
    assert rsyslogd is not None and haproxy is not None
    backend = _Backend()
    port = free_port()
    cfg = _cfg(tmp_path, stats_port=free_port(), agent_port=free_port(),
               listeners=[{"name": "web", "port": port, "check_path": "/",
                           "backends": [{"name": "b1", "host": "127.0.0.1", "port": backend.port}]}])
    shipping.write_files(cfg, "node.json")
    journal = tmp_path / "journal.sock"
    main = _main_conf(tmp_path, cfg, journal)
    rs = subprocess.Popen([rsyslogd, "-n", "-f", str(main), "-i", str(tmp_path / "rsyslogd.pid")],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    text = "".join(line for line in render_haproxy(cfg).splitlines(keepends=True)
                   if line.strip() not in ("user haproxy", "group haproxy"))
    (tmp_path / "haproxy.cfg").write_text(text)
    hp = None
    try:
        wait_for(lambda: Path(cfg.paths.syslog_socket).exists() and journal.exists())
        hp = subprocess.Popen([haproxy, "-db", "-f", str(tmp_path / "haproxy.cfg")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: Path(cfg.paths.haproxy_socket).exists())
        yield cfg, port, journal
    finally:
        for proc in (hp, rs):
            if proc is not None:
                proc.terminate()
                proc.wait(10)
        backend.server.shutdown()


def test_haproxy_s_access_log_and_keepalived_s_lines_reach_their_files(
        rsyslog_and_haproxy: tuple[NodeConfig, int, Path], tmp_path: Path) -> None:
    cfg, port, journal = rsyslog_and_haproxy
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/from-the-test")
    assert conn.getresponse().status == 200
    conn.close()
    access = Path(cfg.paths.access_log)
    wait_for(lambda: access.exists() and "GET /from-the-test" in access.read_text())
    line = next(x for x in access.read_text().splitlines() if "/from-the-test" in x)
    assert " haproxy[" in line and " web web/b1 " in line and " 200 " in line
    # keepalived's lines (here through a socket that stands in for the journal) go to their file.
    for tag, text in (("Keepalived_vrrp", "(haproxy_ha) Entering MASTER STATE"), ("sshd", "not ours")):
        subprocess.run(["logger", "-u", str(journal), "-t", tag, text], check=True, timeout=10)
    keepalived = Path(cfg.paths.keepalived_log)
    wait_for(lambda: keepalived.exists() and "Entering MASTER STATE" in keepalived.read_text())
    wait_for(lambda: "not ours" in (tmp_path / "everything-else.log").read_text())
    assert "not ours" not in keepalived.read_text()
    assert "Entering MASTER STATE" not in access.read_text()
    # The access log is HAProxy's own: it does not go down the default ruleset as well.
    assert "/from-the-test" not in (tmp_path / "everything-else.log").read_text()


def test_logrotate_accepts_its_config(tmp_path: Path) -> None:
    logrotate = shutil.which("logrotate") or shutil.which("logrotate", path="/usr/sbin")
    require("the logrotate binary (Debian package logrotate)", logrotate is not None)
    assert logrotate is not None
    cfg = _cfg(tmp_path)
    shipping.write_files(cfg, "node.json")
    for path in (cfg.paths.access_log, cfg.paths.keepalived_log):
        Path(path).write_text("a line\n")
    # Debug mode: reads the config and says what it would do, runs nothing.
    proc = subprocess.run([logrotate, "-d", "-f", "-s", str(tmp_path / "state"), cfg.paths.logrotate_conf],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"rotating log {cfg.paths.access_log}" in proc.stdout + proc.stderr
    bad = tmp_path / "bad"
    bad.write_text(Path(cfg.paths.logrotate_conf).read_text().replace("maxsize 100M", "maxsize lots"))
    assert subprocess.run([logrotate, "-d", "-s", str(tmp_path / "state"), str(bad)], capture_output=True,
                          timeout=30).returncode != 0


def test_a_node_that_ships_its_logs_keeps_its_events_in_a_file_too(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "logs" / "agent.jsonl"
    log = logging_to(str(path))
    log("transition", node="a", old="BACKUP", new="MASTER", reason="notify_fifo")
    log("route_move", node="a", converged=True, duration_s=0.05)
    printed = capsys.readouterr().out.splitlines()
    assert path.read_text().splitlines() == printed
    assert [json.loads(line)["event"] for line in printed] == ["transition", "route_move"]
    # A file that cannot be written never costs the journal its line.
    path.unlink()
    path.mkdir()
    log("health", node="a", healthy=False)
    assert json.loads(capsys.readouterr().out)["healthy"] is False
