"""Live config against moto's S3 over HTTP and the real haproxy and keepalived checks: a new
version of the node's document is applied (reloading only what changed), a bad one refused with
the live files untouched, and each reported in the node's status object."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import boto3
import pytest

from haproxy_ha_runtime import apply, config, live_config
from haproxy_ha_runtime.config import NodeConfig, parse_config
from haproxy_ha_runtime.version import __version__
from tests.conftest import host_interface, require
from tests.runtime.samples import doc

BUCKET = "haproxy-ha-config-test"
KEY = "nodes/a/node.json"
STATUS = "nodes/a/status.json"


@pytest.fixture(autouse=True)
def _binaries() -> None:
    for binary in ("haproxy", "keepalived"):
        require(f"the {binary} binary (Debian package {binary})", shutil.which(binary) is not None)


def _doc(tmp: Path, **changes: Any) -> dict[str, Any]:
    return doc(**{"interface": host_interface(), "config_bucket": BUCKET, "config_key": KEY, "status_key": STATUS,
                  "paths": {"run_dir": str(tmp / "run"), "log_socket": str(tmp / "log.sock"),
                            "haproxy_conf": str(tmp / "haproxy.cfg"),
                            "keepalived_conf": str(tmp / "keepalived.conf")}, **changes})


class Node:
    """A booted node's files, its document in S3, and the reloads it asked for."""

    def __init__(self, moto: str, tmp: Path) -> None:
        self.s3 = boto3.session.Session(aws_access_key_id="t", aws_secret_access_key="t").client(
            "s3", region_name="us-east-1", endpoint_url=moto)
        self.s3.create_bucket(Bucket=BUCKET)
        self.tmp = tmp
        self.document = tmp / "node.json"
        first = _doc(tmp)
        self.document.write_text(json.dumps(first))
        self.cfg: NodeConfig = parse_config(first)
        apply.apply_config(self.cfg, str(self.document))  # as boot left it
        self.reloads: list[str] = []
        self.live = live_config.LiveConfig(self.cfg, self.s3, str(self.document), instance_id=lambda: "i-0abc",
                                           run=self.reloads.append)

    def put(self, document: dict[str, Any] | bytes) -> str:
        body = document if isinstance(document, bytes) else json.dumps(document).encode()
        return str(self.s3.put_object(Bucket=BUCKET, Key=KEY, Body=body)["ETag"]).strip('"')

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.s3.get_object(Bucket=BUCKET, Key=STATUS)["Body"].read())
        return result

    def files(self) -> dict[str, str]:
        return {p: Path(p).read_text() for p in (self.cfg.paths.haproxy_conf, self.cfg.paths.keepalived_conf)}


@pytest.fixture
def node(moto: str, tmp_path: Path) -> Node:
    return Node(moto, tmp_path)


def test_the_version_the_node_booted_with_is_reported_and_reloads_nothing(node: Node) -> None:
    version = node.put(_doc(node.tmp))
    outcome = node.live.poll_once()
    assert outcome is not None and outcome.state == live_config.APPLIED and outcome.version == version
    assert node.reloads == [] and not outcome.restart_agent
    assert node.status() | {"ts": 0} == {"node": "a", "version": version, "versions": {KEY: version}, "key": KEY,
                                         "state": "applied", "reason": None, "listeners": {},
                                         "runtime": __version__, "schema": config.SCHEMA_VERSION, "release": None,
                                         "instance_id": "i-0abc", "ts": 0}
    assert node.live.poll_once() is None  # unchanged: the same ETag at the same key


def test_a_new_backend_is_swapped_in_and_only_haproxy_reloads(node: Node) -> None:
    node.put(_doc(node.tmp))
    node.live.poll_once()
    keepalived_before = Path(node.cfg.paths.keepalived_conf).read_text()
    listeners = [{"name": "web", "port": 80, "backends": [{"name": "web1", "host": "192.0.2.50", "port": 8080},
                                                          {"name": "web2", "host": "192.0.2.51", "port": 8080}]}]
    version = node.put(_doc(node.tmp, listeners=listeners))
    outcome = node.live.poll_once()
    assert outcome is not None and outcome.state == "applied", outcome
    assert node.reloads == [live_config.RELOAD_HAPROXY]
    assert "server web2 192.0.2.51:8080" in Path(node.cfg.paths.haproxy_conf).read_text()
    assert Path(node.cfg.paths.keepalived_conf).read_text() == keepalived_before
    # Kept where boot and a restarted agent read it; the agent takes the listeners as they are.
    assert json.loads(node.document.read_text())["listeners"] == listeners
    assert not outcome.restart_agent and outcome.cfg is not None and len(outcome.cfg.listeners[0].backends) == 2
    assert node.status()["version"] == version and node.status()["state"] == "applied"


def test_a_priority_change_reloads_keepalived_and_restarts_the_agent(node: Node) -> None:
    node.put(_doc(node.tmp, priority=120))
    outcome = node.live.poll_once()
    assert outcome is not None and outcome.state == "applied"
    assert node.reloads == [live_config.RELOAD_KEEPALIVED]
    assert outcome.restart_agent  # the agent's own settings changed: only a new agent takes them


@pytest.mark.parametrize(("bad", "reason"), [
    (b"{not json", "is not valid JSON"),
    ({"listeners": [{"name": "web", "port": 8404, "static_reply": "x"}]}, "stats_port: got 8404"),
    ({"node_name": "b", "peers": [{"name": "a", "ip": "192.0.2.21", "eni_id": "eni-0123456789abcdef1"}]},
     "is node b's document, not this node's (a)"),
    # Valid to the schema, refused by the real keepalived -t: the interface does not exist.
    ({"interface": "nosuchif0", "listeners": [{"name": "web", "port": 81, "static_reply": "new"}]},
     "keepalived refused the rendered"),
])
def test_a_bad_version_is_refused_reported_and_never_half_applied(node: Node, bad: Any, reason: str) -> None:
    node.put(_doc(node.tmp))
    node.live.poll_once()
    before, document_before = node.files(), node.document.read_text()
    version = node.put(bad if isinstance(bad, bytes) else _doc(node.tmp, **bad))
    outcome = node.live.poll_once()
    assert outcome is not None and outcome.state == live_config.REFUSED and reason in (outcome.reason or "")
    assert node.files() == before and node.document.read_text() == document_before and node.reloads == []
    status = node.status()
    assert status["state"] == "refused" and status["version"] == version and reason in status["reason"]
    assert node.live.poll_once() is None  # the same version is not tried again
    # The next good version is applied.
    node.put(_doc(node.tmp, listeners=[{"name": "web", "port": 81, "static_reply": "fixed"}]))
    fixed = node.live.poll_once()
    assert fixed is not None and fixed.state == "applied" and node.reloads == [live_config.RELOAD_HAPROXY]


def test_a_file_haproxy_refuses_is_refused(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    """The renderer is replaced by one that writes a broken file; the check is the real haproxy."""
    node.put(_doc(node.tmp))
    node.live.poll_once()
    before = node.files()
    monkeypatch.setattr(apply, "render_haproxy", lambda c, s, left_out=None: "global\n    no-such-keyword\n")
    node.put(_doc(node.tmp, listeners=[{"name": "web", "port": 81, "static_reply": "new"}]))
    outcome = node.live.poll_once()
    assert outcome is not None and outcome.state == "refused" and "haproxy refused" in (outcome.reason or "")
    assert node.files() == before and node.reloads == []


def test_a_reload_that_fails_is_reported(node: Node) -> None:
    def failing(command: str) -> None:
        raise RuntimeError(f"{command!r} exited 1: Job for haproxy.service failed")

    node.live.run = failing
    node.put(_doc(node.tmp, listeners=[{"name": "web", "port": 81, "static_reply": "new"}]))
    outcome = node.live.poll_once()
    assert outcome is not None and outcome.state == "refused"
    assert "a reload failed" in (outcome.reason or "") and "Job for haproxy.service failed" in (outcome.reason or "")


def test_s3_errors_reach_the_caller_and_the_version_is_tried_again(node: Node) -> None:
    node.s3.delete_bucket(Bucket=BUCKET)
    with pytest.raises(live_config.DocumentMissing, match=f"s3://{BUCKET}/nodes/a/node.v2.json: 404"):
        node.live.poll_once()
    assert node.live.version is None


def test_a_document_without_an_interface_renders_as_boot_rendered_it(moto: str, tmp_path: Path) -> None:
    """The construct's documents say `interface: null`; boot renders with the interface that holds
    local_ip.  The agent must resolve a new version the same way, or the very version the node
    booted with renders another keepalived.conf (render's fallback, eth0) and is reloaded or refused."""
    names = sorted(p.name for p in Path("/sys/class/net").iterdir() if p.name != "eth0")
    require("an interface other than eth0 (render's fallback for a null interface)", bool(names))
    booted_on = names[0]
    node = Node(moto, tmp_path)
    first = _doc(tmp_path, interface=None)
    node.document.write_text(json.dumps(first))
    as_boot = dataclasses.replace(parse_config(first), interface=booted_on)
    apply.apply_config(as_boot, str(node.document))  # what boot's render left
    before = node.files()
    live = live_config.LiveConfig(parse_config(first), node.s3, str(node.document), instance_id=lambda: "i-0abc",
                                  run=node.reloads.append,
                                  resolve=lambda c: dataclasses.replace(c, interface=c.interface or booted_on))
    version = node.put(first)
    outcome = live.poll_once()
    assert outcome is not None and outcome.state == "applied" and outcome.version == version, outcome
    assert node.files() == before and node.reloads == [] and not outcome.restart_agent
    assert f"interface {booted_on}\n" in Path(as_boot.paths.keepalived_conf).read_text()
    # The document is kept as S3 holds it (interface null), for the next boot to resolve.
    assert json.loads(node.document.read_text())["interface"] is None
