"""The boot path runs, not just its text: boot.sh in a scratch root, with dnf, rpm, systemctl and
systemd-tmpfiles stubbed (they record what they were asked), and everything else real: the node
runtime's check, render (haproxy -c, keepalived -t) and ready, against moto."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from haproxy_ha_runtime import peer
from tests.conftest import REPO, client_for, host_interface, make_world, require
from tests.runtime.samples import doc
from tests.support.imds_stand_in import FakeImds
from tests.support.moto_server import free_port

STUBS = {
    "rpm": "exit 0",  # the packages are there
    "dnf": 'echo "dnf $*" >> "$STUB_LOG"',
    "systemd-tmpfiles": 'echo "systemd-tmpfiles $*" >> "$STUB_LOG"',
    # systemctl records its calls; keepalived is active once something started it.
    "systemctl": '''echo "systemctl $*" >> "$STUB_LOG"
if [ "$*" = "start keepalived.service" ]; then touch "$STUB_LOG.keepalived-active"; fi
if [ "$1" = is-active ]; then test -e "$STUB_LOG.keepalived-active"; exit $?; fi
exit 0''',
}


@dataclass
class Node:
    root: Path
    env: dict[str, str]
    log: Path

    def boot(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(REPO / "userdata" / "boot.sh")], env=self.env, capture_output=True,
                              text=True, timeout=120)

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


@pytest.fixture
def node(moto: str, tmp_path: Path) -> Iterator[Node]:
    for binary in ("haproxy", "keepalived"):
        require(f"the {binary} binary (Debian package {binary})", shutil.which(binary) is not None)
    root = tmp_path / "root"
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for name, body in {**STUBS, "python3": f'exec "{sys.executable}" "$@"'}.items():
        (stubs / name).write_text(f"#!/bin/bash\n{body}\n")
        (stubs / name).chmod(0o755)
    files = root / "opt" / "haproxy-ha"
    shutil.copytree(REPO / "userdata", files)
    shutil.copytree(REPO / "haproxy_ha_runtime", files / "haproxy_ha_runtime",
                    ignore=shutil.ignore_patterns("__pycache__"))
    world = make_world(client_for(moto), 2)
    # The peer's ENI has no running instance: it is "being replaced", so ready does not wait for it.
    world.client.terminate_instances(InstanceIds=[world.instance_b])
    agent_port = free_port()
    # HAProxy's socket path must stay under 98 characters: the run directory gets a short name.
    run_dir = Path(tempfile.mkdtemp(prefix="hhb-"))
    document = doc(eni_id=world.eni_a, route_table_ids=world.tables, interface=host_interface(), endpoint_url=moto,
                   peers=[{"name": "b", "ip": "192.0.2.20", "eni_id": world.eni_b}], agent_port=agent_port,
                   paths={"run_dir": str(run_dir), "log_socket": str(root / "dev-log"),
                          "haproxy_conf": str(root / "etc" / "haproxy" / "haproxy.cfg"),
                          "keepalived_conf": str(root / "etc" / "keepalived" / "keepalived.conf")})
    (root / "etc" / "haproxy-ha").mkdir(parents=True)
    (root / "etc" / "haproxy-ha" / "node.json").write_text(json.dumps(document))
    # systemctl is a stub, so no agent runs: this stands in for its /state, healthy and BACKUP.
    agent_state = peer.StateServer(agent_port, lambda: {"node": "a", "vrrp": "BACKUP", "healthy": True}).start()
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}:/usr/sbin", "HAPROXY_HA_ROOT": str(root),
           "STUB_LOG": str(tmp_path / "calls.log"), "HAPROXY_HA_READY_TIMEOUT_S": "20",
           "AWS_ENDPOINT_URL": moto}
    try:
        yield Node(root, env, tmp_path / "calls.log")
    finally:
        agent_state.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


def test_boot_installs_units_renders_checked_configs_starts_keepalived_last_and_waits_until_ready(node: Node) -> None:
    proc = node.boot()
    assert proc.returncode == 0, proc.stderr
    calls = node.calls()
    assert "systemctl daemon-reload" in calls
    starts = [c for c in calls if c.split()[1] in ("reload-or-restart", "restart", "start", "reload")]
    assert starts == ["systemctl reload-or-restart haproxy.service", "systemctl restart haproxy-ha-agent.service",
                      "systemctl start keepalived.service"]
    units = node.root / "etc" / "systemd" / "system"
    assert (units / "haproxy-ha-agent.service").exists()
    assert (units / "keepalived.service.d" / "haproxy-ha.conf").exists()
    assert (units / "haproxy.service.d" / "haproxy-ha.conf").exists()
    assert (node.root / "etc" / "haproxy" / "haproxy.cfg").read_text().startswith("# Generated by haproxy-ha")
    assert "versions: HAProxy version" in proc.stderr and "node a is ready" in proc.stdout


def _fetch_from(node: Node, moto: str, **env: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """The boot unit's first step: fetch-node-files.sh, with a stand-in for the AWS CLI that
    downloads from moto's S3 (tests/support/aws_cli_stand_in.py); returns the run and its calls."""
    stubs = node.log.parent / "stubs"
    (stubs / "aws").write_text(f'#!/bin/bash\nPYTHONPATH="{REPO}" exec "{sys.executable}" '
                               '-m tests.support.aws_cli_stand_in "$@"\n')
    (stubs / "aws").chmod(0o755)
    calls = node.log.parent / "aws-cli.log"
    proc = subprocess.run(["bash", str(REPO / "userdata" / "fetch-node-files.sh")], capture_output=True, text=True,
                          timeout=120, env={**node.env, "AWS_REGION": "us-east-1", "HAPROXY_HA_FETCH_DELAY_S": "0",
                                            "AWS_CLI_LOG": str(calls), **env})
    return proc, calls.read_text().splitlines() if calls.exists() else []


def test_the_fetched_document_reaches_node_json_and_boot_serves_it(node: Node, moto: str) -> None:
    s3 = boto3.session.Session().client("s3", region_name="us-east-1", endpoint_url=moto)
    s3.create_bucket(Bucket="haproxy-ha-docs")
    # The node files as the asset holds them: what the fixture laid out, zipped; the fetch brings them back.
    files = node.root / "opt" / "haproxy-ha"
    archive = shutil.make_archive(str(node.log.parent / "node-files"), "zip", files)
    s3.upload_file(archive, "haproxy-ha-docs", "assets/node-files.zip")
    shutil.rmtree(files)
    path = node.root / "etc" / "haproxy-ha" / "node.json"
    document = json.loads(path.read_text())
    document["listeners"] = [{"name": "web", "port": 80, "static_reply": "from the document in S3"}]
    s3.put_object(Bucket="haproxy-ha-docs", Key="nodes/a/node.json", Body=json.dumps(document).encode())
    path.write_text(json.dumps({**document, "listeners": [{"name": "web", "port": 80, "static_reply": "stale"}]}))
    fetched, calls = _fetch_from(node, moto, NODE_FILES_URL="s3://haproxy-ha-docs/assets/node-files.zip",
                                 NODE_CONFIG_URL="s3://haproxy-ha-docs/nodes/a/node.json")
    assert fetched.returncode == 0, fetched.stderr
    assert [c.split()[-2] for c in calls] == ["s3://haproxy-ha-docs/assets/node-files.zip",
                                              "s3://haproxy-ha-docs/nodes/a/node.json"]
    assert json.loads(path.read_text()) == document and not path.with_suffix(".json.part").exists()
    proc = node.boot()
    assert proc.returncode == 0, proc.stderr
    assert "from the document in S3" in (node.root / "etc" / "haproxy" / "haproxy.cfg").read_text()


def test_a_document_that_cannot_be_fetched_is_retried_then_fails_the_boot_leaving_node_json(
        node: Node, moto: str) -> None:
    s3 = boto3.session.Session().client("s3", region_name="us-east-1", endpoint_url=moto)
    s3.create_bucket(Bucket="haproxy-ha-docs")
    files = node.root / "opt" / "haproxy-ha"
    s3.upload_file(shutil.make_archive(str(node.log.parent / "node-files"), "zip", files), "haproxy-ha-docs",
                   "assets/node-files.zip")
    path = node.root / "etc" / "haproxy-ha" / "node.json"
    before = path.read_text()
    fetched, calls = _fetch_from(node, moto, HAPROXY_HA_FETCH_TRIES="3",
                                 NODE_FILES_URL="s3://haproxy-ha-docs/assets/node-files.zip",
                                 NODE_CONFIG_URL="s3://haproxy-ha-docs/nodes/a/missing.json")
    assert fetched.returncode == 1
    assert [c.split()[-2] for c in calls] == ["s3://haproxy-ha-docs/assets/node-files.zip",
                                              *["s3://haproxy-ha-docs/nodes/a/missing.json"] * 3]
    assert "could not fetch s3://haproxy-ha-docs/nodes/a/missing.json after 3 tries" in fetched.stderr
    assert path.read_text() == before


def test_a_second_boot_changes_nothing_and_never_restarts_keepalived(node: Node) -> None:
    assert node.boot().returncode == 0
    first_calls, first_files = node.calls(), _files(node.root)
    node.log.unlink()
    proc = node.boot()
    assert proc.returncode == 0, proc.stderr
    assert _files(node.root) == first_files
    second = node.calls()
    assert "systemctl reload keepalived.service" in second
    assert not any("keepalived" in c and c.split()[1] in ("restart", "start", "stop") for c in second)
    assert len(second) == len(first_calls)


def _ship(node: Node, ctl_exit: int = 0) -> dict[str, Any]:
    """Name log groups in the node's document (its shipping files in the scratch root), and stand
    in for the CloudWatch agent's control script (not installed here): it records its arguments."""
    path = node.root / "etc" / "haproxy-ha" / "node.json"
    document: dict[str, Any] = json.loads(path.read_text())
    document.update(pair_name="prod", log_group_prefix="/haproxy-ha/prod")
    document["paths"].update(log_dir=str(node.root / "var" / "log" / "haproxy-ha"),
                             cloudwatch_agent_conf=str(node.root / "etc" / "haproxy-ha" / "cloudwatch-agent.json"),
                             rsyslog_conf=str(node.root / "etc" / "rsyslog.d" / "haproxy-ha.conf"),
                             logrotate_conf=str(node.root / "etc" / "logrotate.d" / "haproxy-ha"))
    path.write_text(json.dumps(document))
    ctl = node.root / "opt" / "aws" / "amazon-cloudwatch-agent" / "bin" / "amazon-cloudwatch-agent-ctl"
    ctl.parent.mkdir(parents=True, exist_ok=True)
    ctl.write_text(f'#!/bin/bash\necho "amazon-cloudwatch-agent-ctl $*" >> "$STUB_LOG"\nexit {ctl_exit}\n')
    ctl.chmod(0o755)
    return document


def test_a_node_that_names_log_groups_starts_rsyslog_before_haproxy_and_the_cloudwatch_agent_after(
        node: Node) -> None:
    document = _ship(node)
    proc = node.boot()
    assert proc.returncode == 0, proc.stderr
    calls = node.calls()
    conf = document["paths"]["cloudwatch_agent_conf"]
    assert calls.index("systemctl restart rsyslog.service") < calls.index("systemctl reload-or-restart haproxy.service")
    assert calls.index("systemctl start keepalived.service") < calls.index(
        f"amazon-cloudwatch-agent-ctl -a fetch-config -m ec2 -s -c file:{conf}")
    agent_conf = json.loads(Path(conf).read_text())
    groups = [f["log_group_name"] for f in agent_conf["logs"]["logs_collected"]["files"]["collect_list"]]
    assert groups == ["/haproxy-ha/prod/agent", "/haproxy-ha/prod/metrics", "/haproxy-ha/prod/haproxy",
                      "/haproxy-ha/prod/keepalived"]
    assert Path(document["paths"]["rsyslog_conf"]).read_text().startswith("# Generated by haproxy-ha")
    # HAProxy logs to rsyslog's socket now, not to the journal.
    haproxy_cfg = (node.root / "etc" / "haproxy" / "haproxy.cfg").read_text()
    assert f"log {document['paths']['run_dir']}/syslog.sock local0" in haproxy_cfg
    # A second boot, and shipping turned off: the files go, and the agent an earlier boot started stops.
    node.log.unlink()
    path = node.root / "etc" / "haproxy-ha" / "node.json"
    path.write_text(json.dumps({**document, "log_group_prefix": None}))
    assert node.boot().returncode == 0
    assert "amazon-cloudwatch-agent-ctl -a stop" in node.calls()
    assert not Path(conf).exists() and not Path(document["paths"]["rsyslog_conf"]).exists()
    assert not any("rsyslog" in c for c in node.calls())


def test_a_cloudwatch_agent_that_refuses_its_config_costs_the_shipping_not_the_node(node: Node) -> None:
    _ship(node, ctl_exit=1)
    proc = node.boot()
    assert proc.returncode == 0, proc.stderr
    assert "the CloudWatch agent refused" in proc.stderr and "node a is ready" in proc.stdout


def test_boot_installs_the_cloudwatch_agent_rsyslog_and_logrotate_with_the_others(node: Node) -> None:
    stubs = Path(node.env["PATH"].split(":")[0])
    (stubs / "rpm").write_text("#!/bin/bash\nexit 1\n")  # nothing installed yet
    assert node.boot().returncode == 0
    installs = [c for c in node.calls() if c.startswith("dnf ")]
    assert installs == ["dnf install -y -q haproxy keepalived python3-boto3 amazon-cloudwatch-agent rsyslog logrotate"]


def test_a_bad_document_stops_boot_with_exit_2_before_any_service_is_touched(node: Node) -> None:
    path = node.root / "etc" / "haproxy-ha" / "node.json"
    bad: dict[str, Any] = json.loads(path.read_text())
    bad["vip"] = "10.0.0.0/8"
    path.write_text(json.dumps(bad))
    proc = node.boot()
    assert proc.returncode == 2
    assert "vip: got '10.0.0.0/8'" in proc.stderr
    assert not any(c.startswith("systemctl") for c in node.calls())
    assert not (node.root / "etc" / "haproxy" / "haproxy.cfg").exists()


def test_a_rendered_file_the_binaries_refuse_stops_boot_before_any_service_starts(node: Node) -> None:
    path = node.root / "etc" / "haproxy-ha" / "node.json"
    bad: dict[str, Any] = json.loads(path.read_text())
    bad["interface"] = "nosuchif0"  # keepalived -t refuses an interface that does not exist
    path.write_text(json.dumps(bad))
    proc = node.boot()
    assert proc.returncode == 2 and "keepalived refused" in proc.stderr
    assert not any(c.split()[1] in ("start", "restart", "reload", "reload-or-restart")
                   for c in node.calls() if c.startswith("systemctl"))


# Runs one node command as `python3 -m haproxy_ha_runtime` does, then names the AWS SDK modules it loaded.
_SDK_PROBE = """import runpy, sys
sys.argv = ["haproxy_ha_runtime", *sys.argv[1:]]
try:
    runpy.run_module("haproxy_ha_runtime", run_name="__main__", alter_sys=True)
except SystemExit as e:
    status = e.code
print("exit", status, "sdk", sorted(m for m in ("boto3", "botocore") if m in sys.modules))
"""


def test_check_render_and_ship_do_not_load_the_aws_sdk_and_ready_does(node: Node) -> None:
    # Every boot runs check, render and ship; the SDK's import would cost each about half a second.
    config = str(node.root / "etc" / "haproxy-ha" / "node.json")
    env = {**node.env, "PYTHONPATH": str(node.root / "opt" / "haproxy-ha")}
    loaded = {}
    for command in ("check", "render", "ship", "ready"):
        proc = subprocess.run([sys.executable, "-c", _SDK_PROBE, command, "--config", config], env=env,
                              capture_output=True, text=True, timeout=60, cwd=node.root)
        loaded[command] = proc.stdout.splitlines()[-1] if proc.stdout else proc.stderr
    # ready asks EC2 (the fixture's stand-in agent says healthy): the probe sees the SDK when it is loaded.
    assert loaded == {"check": "exit 0 sdk []", "render": "exit 0 sdk []", "ship": "exit 0 sdk []",
                      "ready": "exit 0 sdk ['boto3', 'botocore']"}


def test_the_agent_exits_3_when_eni_id_is_null_and_imds_fails(tmp_path: Path) -> None:
    path = tmp_path / "node.json"
    path.write_text(json.dumps(doc(eni_id=None)))
    # IMDS is a closed port on loopback, never 169.254.169.254.
    env = {**os.environ, "AWS_EC2_METADATA_SERVICE_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    proc = subprocess.run([sys.executable, "-m", "haproxy_ha_runtime", "agent", "--config", str(path)], env=env,
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 3 and "cannot learn this node's ENI" in proc.stderr


def test_ready_fails_with_exit_4_and_says_why(node: Node, tmp_path: Path) -> None:
    document = json.loads((node.root / "etc" / "haproxy-ha" / "node.json").read_text())
    document["agent_port"] = free_port()  # nothing answers there
    path = tmp_path / "other.json"
    path.write_text(json.dumps(document))
    proc = subprocess.run([sys.executable, "-m", "haproxy_ha_runtime", "ready", "--config", str(path),
                           "--timeout", "1"], env=node.env, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 4 and "the agent does not answer at /state (haproxy-down)" in proc.stderr


@pytest.mark.parametrize(("status", "asked"), [("4", True), ("1", True), ("2", False)])
def test_a_boot_that_gave_up_asks_the_group_for_a_new_instance_unless_the_document_was_refused(
        tmp_path: Path, status: str, asked: bool) -> None:
    # The real script, the real curl against an IMDS stand-in, and a stub `aws` that records its
    # arguments (the AWS CLI is not installed here).
    require("curl", shutil.which("curl") is not None)
    imds = FakeImds(instance_id="i-0feedfacecafe0001")
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    calls = tmp_path / "aws.log"
    (stubs / "aws").write_text(f'#!/bin/bash\necho "$*" >> "{calls}"\n')
    (stubs / "aws").chmod(0o755)
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "HAPROXY_HA_IMDS": imds.url,
           "AWS_REGION": "eu-west-1", "MONITOR_EXIT_STATUS": status}
    try:
        result = subprocess.run(["bash", str(REPO / "userdata" / "boot-failed.sh")], env=env, capture_output=True,
                                text=True, timeout=30)
    finally:
        imds.stop()
    assert result.returncode == 0, result.stderr
    if asked:
        assert calls.read_text().split() == [
            "autoscaling", "set-instance-health", "--region", "eu-west-1", "--instance-id", "i-0feedfacecafe0001",
            "--health-status", "Unhealthy", "--no-should-respect-grace-period"]
        assert "asked the group to replace i-0feedfacecafe0001" in result.stderr
    else:
        assert not calls.exists()
        assert "refused the node's document" in result.stderr
