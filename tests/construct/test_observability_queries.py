"""The saved Logs Insights queries, as far as they can be checked here.

moto's StartQuery runs only `fields` (of @timestamp, @message, @logStream and @log), `sort` and
`limit`; it ignores `filter`, `parse` and `stats` and accepts any text in them.  So: moto runs each
query over HTTP (it is accepted, sorted newest first and cut at its limit); the 5xx query's
`parse` pattern is run here on lines a real HAProxy logs, laid out as rsyslog's file format writes
them to PREFIX/haproxy; the failover and state-change queries' fields and filters are those of the
events the agent writes to PREFIX/agent.
"""

from __future__ import annotations

import collections
import http.client
import http.server
import json
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from haproxy_ha import observability
from haproxy_ha_runtime import agent, peer, telemetry
from haproxy_ha_runtime.config import parse_config
from haproxy_ha_runtime.render import render_haproxy
from tests.conftest import client_for, make_world, require
from tests.runtime.samples import doc
from tests.support.agent_tools import Log
from tests.support.moto_server import free_port

QUERIES = {
    "failovers": observability.failovers_query().to_string(),
    "5xx": observability.errors_5xx_query().to_string(),
    "states": observability.state_changes_query("a").to_string(),
}


def _insights_regex(query: str) -> re.Pattern[str]:
    """The query's `parse` pattern as a Python regex ((?<name>...) is Python's (?P<name>...))."""
    (pattern,) = re.findall(r"^parse @message /(.*)/$", query, flags=re.M)
    return re.compile(pattern.replace("(?<", "(?P<"))


# --- moto runs each query ----------------------------------------------------------------------------

def _run_query(logs: Any, group: str, query: str) -> list[dict[str, str]]:
    now = int(time.time())
    query_id = logs.start_query(logGroupName=group, startTime=now - 3600, endTime=now + 60,
                                queryString=query)["queryId"]
    deadline = time.monotonic() + 10
    while True:
        answer = logs.get_query_results(queryId=query_id)
        if answer["status"] not in ("Scheduled", "Running"):
            break
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert answer["status"] == "Complete"
    return [{f["field"]: f["value"] for f in row} for row in answer["results"]]


def test_moto_runs_each_saved_query_newest_first_and_within_its_limit(moto: str) -> None:
    logs = boto3.client("logs", endpoint_url=moto, region_name="us-east-1")
    start = int(time.time() * 1000) - 120_000
    lines = {
        "agent": [json.dumps({"ts": i, "event": "failover" if i % 2 else "transition", "node": "a",
                              "old": "BACKUP", "new": "MASTER", "reason": "notify_fifo", "took_ms": 300 + i})
                  for i in range(observability.QUERY_LIMIT + 10)],
        "haproxy": ['2026-12-03T07:50:11.679012+00:00 ip-10-0-1-5 haproxy[1]: 10.0.1.2:3317 '
                    '[03/Dec/2026:07:50:11.678] web web/<NOSRV> 0/-1/-1/-1/0 503 232 - - SC-- 1/1/0/0/0 0/0 '
                    '"GET / HTTP/1.1"'] * 3,
    }
    for group, messages in lines.items():
        logs.create_log_group(logGroupName=group)
        logs.create_log_stream(logGroupName=group, logStreamName="i-0123456789abcdef0")
        logs.put_log_events(logGroupName=group, logStreamName="i-0123456789abcdef0", logEvents=[
            {"timestamp": start + i * 100, "message": m} for i, m in enumerate(messages)])
    for name in ("failovers", "states"):
        rows = _run_query(logs, "agent", QUERIES[name])
        stamps = [int(r["@timestamp"]) for r in rows]
        assert len(rows) == observability.QUERY_LIMIT
        assert stamps == sorted(stamps, reverse=True) and stamps[0] == start + (len(lines["agent"]) - 1) * 100
    assert len(_run_query(logs, "haproxy", QUERIES["5xx"])) == 3


# --- the 5xx query parses a real HAProxy's access log --------------------------------------------------

class _Backend(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(500 if self.path == "/boom" else 200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def backend() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Backend)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _get(port: int, path: str, deadline: float) -> int:
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            return response.status
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
        finally:
            conn.close()


def test_the_5xx_query_parses_what_a_real_haproxy_logs_and_leaves_tcp_lines_alone(
        backend: int, tmp_path: Path) -> None:
    haproxy = shutil.which("haproxy")
    require("haproxy (Debian package haproxy)", haproxy is not None)
    assert haproxy is not None
    log = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    log.bind(str(tmp_path / "log.sock"))
    log.settimeout(0.5)
    dead = free_port()
    ports = {"web": free_port(), "down": free_port(), "pg": free_port()}
    paths = {"run_dir": str(tmp_path), "log_socket": str(tmp_path / "log.sock")}
    cfg = parse_config(doc(stats_port=free_port(), paths=paths, listeners=[
        {"name": "web", "port": ports["web"], "backends": [{"name": "web1", "host": "127.0.0.1", "port": backend}]},
        {"name": "down", "port": ports["down"], "backends": [{"name": "gone", "host": "127.0.0.1", "port": dead}]},
        {"name": "pg", "port": ports["pg"], "mode": "tcp",
         "backends": [{"name": "db1", "host": "127.0.0.1", "port": backend}]},
    ]))
    text = "".join(line for line in render_haproxy(cfg).splitlines(keepends=True)
                   if line.strip() not in ("user haproxy", "group haproxy"))
    (tmp_path / "haproxy.cfg").write_text(text)
    proc = subprocess.Popen([haproxy, "-db", "-f", str(tmp_path / "haproxy.cfg")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        assert [_get(ports["web"], "/", deadline), _get(ports["web"], "/boom", deadline),
                _get(ports["down"], "/", deadline)] == [200, 500, 503]
        with socket.create_connection(("127.0.0.1", ports["pg"]), timeout=5) as tcp:
            tcp.sendall(b"GET / HTTP/1.0\r\n\r\n")
            tcp.recv(1024)
        lines: list[str] = []
        while time.monotonic() < deadline and sum(" pg pg/" in line for line in lines) < 1:
            try:
                lines.append(log.recv(65535).decode())
            except TimeoutError:
                continue
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
    access = [_as_rsyslog_writes_it(line) for line in lines if re.search(r"\] (web|down|pg) ", line)]
    assert len(access) == 4, lines
    pattern = _insights_regex(QUERIES["5xx"])
    parsed = [m.groupdict() for m in map(pattern.search, access) if m]
    # The TCP line has three timers and no status: it never counts as an HTTP answer.  The dead
    # server is named until a health check marks it down, then HAProxy logs <NOSRV>.
    down_server = next(p["server"] for p in parsed if p["backend"] == "down")
    assert down_server in ("gone", "<NOSRV>")
    assert sorted((p["backend"], p["server"], p["status"]) for p in parsed) == [
        ("down", down_server, "503"), ("web", "web1", "200"), ("web", "web1", "500")]
    # The query's filter and stats, as Logs Insights would apply them.
    assert re.findall(r"^\| filter status like /\^5/$", QUERIES["5xx"], flags=re.M)
    counted = collections.Counter((p["backend"], p["server"], p["status"]) for p in parsed if p["status"][0] == "5")
    assert counted == {("web", "web1", "500"): 1, ("down", down_server, "503"): 1}


def _as_rsyslog_writes_it(datagram: str) -> str:
    """A syslog datagram from HAProxy ("<PRI>Mon DD HH:MM:SS tag[pid]: message") as rsyslog's
    RSYSLOG_FileFormat writes it to the file the CloudWatch agent ships (shipping.render_rsyslog):
    an RFC 3339 time and the host, then the tag and the message."""
    match = re.fullmatch(r"<\d+>\w{3} [ \d]\d \d\d:\d\d:\d\d (\S+\[\d+\]: .*)", datagram.rstrip("\n"), flags=re.S)
    assert match, datagram
    return f"2026-12-03T07:50:11.678901+00:00 ip-10-0-1-5 {match.group(1)}"


# --- the failover and state-change queries read what the agent writes ---------------------------

def test_the_failovers_query_names_the_fields_of_the_agents_failover_event(moto: str, tmp_path: Path) -> None:
    world = make_world(client_for(moto), 1)
    cfg = parse_config(doc(eni_id=world.eni_a, route_table_ids=world.tables, paths={"run_dir": str(tmp_path)},
                           pair_name="prod", peers=[{"name": "b", "ip": "192.0.2.20", "eni_id": world.eni_b}]))
    log = Log()
    # The peer does not answer: the take-over is a fault, a failover.
    node = agent.Agent(cfg, world.client, world.eni_a, log, probe=lambda _p: peer.PeerView(reach=peer.UNREACHABLE),
                       metrics=telemetry.Telemetry("prod", cfg.node_name, lambda _line: None))
    try:
        node._count_take_over(True, 1, 321.0)
    finally:
        node.shutdown()
    (event,) = log.of("failover")
    fields_line, filter_line = QUERIES["failovers"].splitlines()[:2]
    assert filter_line == '| filter event = "failover"'
    shown = [f.strip() for f in fields_line.removeprefix("fields ").split(",")]
    assert shown == ["@timestamp", "node", "took_ms", "reason"]
    assert set(shown[1:]) <= set(event), (shown, event)
    assert (event["node"], event["took_ms"]) == (cfg.node_name, 321.0) and event["reason"]


def test_the_state_change_query_names_the_fields_of_the_agents_transition_event(moto: str, tmp_path: Path) -> None:
    world = make_world(client_for(moto), 1)
    cfg = parse_config(doc(eni_id=world.eni_a, route_table_ids=world.tables, paths={"run_dir": str(tmp_path)},
                           peers=[{"name": "b", "ip": "192.0.2.20", "eni_id": world.eni_b}]))
    log = Log()
    node = agent.Agent(cfg, world.client, world.eni_a, log)
    try:
        node.on_state(agent.BACKUP)
    finally:
        node.shutdown()
    (event,) = log.of("transition")
    fields_line, filter_line = QUERIES["states"].splitlines()[:2]
    assert filter_line == f'| filter event = "transition" and node = "{cfg.node_name}"'
    assert event["node"] == cfg.node_name and event["new"] == agent.BACKUP
    shown = [f.strip() for f in fields_line.removeprefix("fields ").split(",")]
    assert shown[0] == "@timestamp" and set(shown[1:]) <= set(event), (shown, event)
