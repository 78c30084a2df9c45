"""TLS listeners' certificates against moto's Secrets Manager over HTTP, with certificates made by
openssl in the test: valid material is written 0600 and served, a bad secret is refused for its
listener alone (with its reason in the live config status), a rotation is found by its version,
and no part of a key reaches a log line or a problem."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import threading
import types
from pathlib import Path
from typing import Any

import boto3
import pytest

from haproxy_ha_runtime import agent, apply, live_config
from haproxy_ha_runtime.config import NodeConfig, parse_config
from haproxy_ha_runtime.log import log_event
from haproxy_ha_runtime.render import render_haproxy
from haproxy_ha_runtime.tls import TlsStore
from tests.conftest import host_interface, require
from tests.runtime.samples import doc
from tests.support.certs import Cert, make_ca, make_server_cert

BUCKET = "haproxy-ha-config-test"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Cert]:
    require("the openssl command (Debian package openssl)", shutil.which("openssl") is not None)
    folder = tmp_path_factory.mktemp("certs")
    ca = make_ca(folder)
    return {"ca": ca, "one": make_server_cert(ca, folder, "one", ip="203.0.113.10"),
            "two": make_server_cert(ca, folder, "two", ip="203.0.113.10"),
            "other": make_server_cert(ca, folder, "other", dns="other.internal")}


def _key_body(cert: Cert) -> str:
    """The base64 body of a private key: what must never be seen outside its bundle."""
    return "".join(line for line in cert.key.read_text().splitlines() if not line.startswith("-----"))


def _doc(tmp: Path, **changes: Any) -> dict[str, Any]:
    listeners = [
        {"name": "web", "port": 80, "backends": [{"name": "w1", "host": "192.0.2.50", "port": 8080}]},
        {"name": "https", "port": 443, "backends": [{"name": "w1", "host": "192.0.2.50", "port": 8443}],
         "tls": {"secret": "lb/https", "backend_tls": True}},
        {"name": "tls13", "port": 8443, "mode": "tcp", "backends": [{"name": "t1", "host": "192.0.2.51", "port": 80}],
         "tls": {"secret": "lb/tls13", "policy": "ELBSecurityPolicy-TLS13-1-3-2021-06"}},
    ]
    return doc(**{"listeners": listeners, "interface": host_interface(),
                  "paths": {"run_dir": str(tmp / "run"), "log_socket": str(tmp / "log.sock"),
                            "haproxy_conf": str(tmp / "haproxy.cfg"), "keepalived_conf": str(tmp / "keepalived.conf")},
                  **changes})


class Secrets:
    """moto's Secrets Manager, and the secrets of the sample's two TLS listeners."""

    def __init__(self, moto: str) -> None:
        self.client = boto3.session.Session(aws_access_key_id="t", aws_secret_access_key="t").client(
            "secretsmanager", region_name="us-east-1", endpoint_url=moto)

    def create(self, name: str, value: str) -> str:
        return str(self.client.create_secret(Name=name, SecretString=value)["VersionId"])

    def rotate(self, name: str, value: str) -> str:
        return str(self.client.put_secret_value(SecretId=name, SecretString=value)["VersionId"])


@pytest.fixture
def secrets(moto: str) -> Secrets:
    return Secrets(moto)


def test_valid_material_is_written_0600_and_served(secrets: Secrets, certs: dict[str, Cert], tmp_path: Path) -> None:
    v1 = secrets.create("lb/https", certs["one"].secret_string(chain=certs["ca"].cert))
    secrets.create("lb/tls13", certs["other"].secret_string())
    cfg = parse_config(_doc(tmp_path))
    store = TlsStore(secrets.client, cfg.paths)
    assert store.refresh(cfg) is True
    bundle = Path(cfg.paths.tls_bundle("https"))
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o600
    assert stat.S_IMODE(Path(cfg.paths.tls_dir).stat().st_mode) == 0o700
    text = bundle.read_text()
    # The leaf first, then the chain, then the key.
    assert text.index(certs["one"].cert.read_text().strip()) < text.index(certs["ca"].cert.read_text().strip())
    assert text.rstrip().endswith(certs["one"].key.read_text().strip())
    assert store.states["https"].served == v1
    assert store.problems(cfg) == {} and store.left_out(cfg) == {}
    # A restarted agent knows what boot fetched: nothing to fetch, nothing to reload.
    assert TlsStore(secrets.client, cfg.paths).refresh(cfg) is False


@pytest.mark.parametrize(("value", "reason"), [
    ("not json", "not JSON"),
    ("NOKEY", "private_key is missing"),
    ("MISMATCH", "private_key does not belong to certificate"),
    (json.dumps({"certificate": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                 "private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}),
     "OpenSSL cannot load"),
])
def test_a_bad_secret_is_refused_for_its_listener_alone(secrets: Secrets, certs: dict[str, Cert], tmp_path: Path,
                                                        value: str, reason: str) -> None:
    if value == "MISMATCH":
        value = json.dumps({"certificate": certs["one"].cert.read_text(), "private_key": certs["two"].key.read_text()})
    elif value == "NOKEY":
        value = json.dumps({"certificate": certs["one"].cert.read_text()})
    secrets.create("lb/https", certs["one"].secret_string())
    secrets.create("lb/tls13", value)
    cfg = parse_config(_doc(tmp_path))
    store = TlsStore(secrets.client, cfg.paths)
    store.refresh(cfg)
    assert set(store.problems(cfg)) == {"tls13"}
    assert reason in store.problems(cfg)["tls13"]
    assert set(store.left_out(cfg)) == {"tls13"}
    assert not os.path.exists(cfg.paths.tls_bundle("tls13"))
    assert os.path.exists(cfg.paths.tls_bundle("https"))
    text = render_haproxy(cfg, left_out=store.left_out(cfg))
    assert "frontend tls13" not in text and "# Listener tls13 (port 8443) is left out" in text
    assert "frontend https" in text and "frontend web" in text
    for secret in (certs["one"], certs["two"]):
        assert _key_body(secret) not in json.dumps(store.problems(cfg)) + text


def test_a_missing_secret_is_refused_with_the_aws_error(secrets: Secrets, certs: dict[str, Cert],
                                                        tmp_path: Path) -> None:
    secrets.create("lb/https", certs["one"].secret_string())
    cfg = parse_config(_doc(tmp_path))
    store = TlsStore(secrets.client, cfg.paths)
    store.refresh(cfg)
    assert "ResourceNotFoundException" in store.problems(cfg)["tls13"]


def test_a_rotation_is_found_by_its_version_and_a_bad_one_keeps_the_last_good(
        secrets: Secrets, certs: dict[str, Cert], tmp_path: Path) -> None:
    secrets.create("lb/https", certs["one"].secret_string())
    secrets.create("lb/tls13", certs["other"].secret_string())
    cfg = parse_config(_doc(tmp_path))
    store = TlsStore(secrets.client, cfg.paths)
    store.refresh(cfg)
    assert store.refresh(cfg) is False  # same version: nothing fetched, nothing changed
    v2 = secrets.rotate("lb/https", certs["two"].secret_string())
    assert store.refresh(cfg) is True
    assert store.states["https"].served == v2
    assert certs["two"].cert.read_text().strip() in Path(cfg.paths.tls_bundle("https")).read_text()
    v3 = secrets.rotate("lb/https", "{}")
    assert store.refresh(cfg) is False
    assert Path(cfg.paths.tls_bundle("https")).read_text().startswith(certs["two"].cert.read_text().strip())
    problem = store.problems(cfg)["https"]
    assert f"version {v3}" in problem and f"still serving version {v2}" in problem
    assert store.left_out(cfg) == {}


@pytest.fixture
def binaries() -> None:
    for binary in ("haproxy", "keepalived"):
        require(f"the {binary} binary (Debian package {binary})", shutil.which(binary) is not None)


@pytest.mark.usefixtures("binaries")
def test_haproxy_accepts_what_a_bad_secret_leaves(secrets: Secrets, certs: dict[str, Cert], tmp_path: Path) -> None:
    secrets.create("lb/https", certs["one"].secret_string())
    secrets.create("lb/tls13", "{}")
    cfg = parse_config(_doc(tmp_path))
    store = TlsStore(secrets.client, cfg.paths)
    store.refresh(cfg)
    apply.apply_config(cfg, "test", left_out=store.left_out(cfg))  # raises CheckFailed if haproxy -c refuses
    assert "frontend https" in Path(cfg.paths.haproxy_conf).read_text()


class _LiveNode:
    """A node's live config against moto's S3 (its document already polled once) and TLS store
    against moto's Secrets Manager; HAProxy reloads are recorded in `reloads`, not run."""

    def __init__(self, secrets: Secrets, tmp_path: Path, moto: str, **changes: Any) -> None:
        self.s3 = boto3.session.Session(aws_access_key_id="t", aws_secret_access_key="t").client(
            "s3", region_name="us-east-1", endpoint_url=moto)
        self.s3.create_bucket(Bucket=BUCKET)
        document = _doc(tmp_path, config_bucket=BUCKET, config_key="a/node.json", status_key="a/status.json",
                        **changes)
        self.path = tmp_path / "node.json"
        self.path.write_text(json.dumps(document))
        self.cfg: NodeConfig = parse_config(document)
        self.store = TlsStore(secrets.client, self.cfg.paths)
        self.reloads: list[str] = []
        self.live = live_config.LiveConfig(self.cfg, self.s3, str(self.path), instance_id=lambda: None,
                                           run=self.reloads.append, tls=self.store)
        self.s3.put_object(Bucket=BUCKET, Key="a/node.json", Body=json.dumps(document).encode())
        self.first = self.live.poll_once()

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.s3.get_object(Bucket=BUCKET, Key="a/status.json")["Body"].read())
        return result


@pytest.mark.usefixtures("binaries")
def test_the_live_config_status_says_why_and_the_poller_reloads_on_a_rotation(
        secrets: Secrets, certs: dict[str, Cert], tmp_path: Path, moto: str) -> None:
    secrets.create("lb/https", certs["one"].secret_string())
    secrets.create("lb/tls13", "{}")
    node = _LiveNode(secrets, tmp_path, moto, tls_poll_s=1)
    cfg, store, live, path, reloads = node.cfg, node.store, node.live, node.path, node.reloads
    assert node.first is not None and node.first.state == live_config.APPLIED
    status = node.status()
    assert status["state"] == "applied" and set(status["listeners"]) == {"tls13"}
    assert "tls13" in status["listeners"] and "certificate is missing" in status["listeners"]["tls13"]
    reloads.clear()

    # The TLS poller: the fixed secret and a rotated one arrive through one reload.
    secrets.rotate("lb/tls13", certs["other"].secret_string())
    secrets.rotate("lb/https", certs["two"].secret_string())
    lines = io.StringIO()
    stop = threading.Event()
    watcher = threading.Thread(target=agent._watch_tls, args=(
        types.SimpleNamespace(cfg=live.cfg), store, live, str(path), stop,
        lambda event, **f: log_event(event, stream=lines, **f)))
    watcher.start()
    try:
        for _ in range(40):
            if reloads:
                break
            stop.wait(0.1)
    finally:
        stop.set()
        watcher.join(5)
    assert reloads == [live_config.RELOAD_HAPROXY]
    status = node.status()
    assert status["listeners"] == {}
    assert "frontend tls13" in Path(cfg.paths.haproxy_conf).read_text()
    logged = lines.getvalue()
    assert '"event": "tls_applied"' in logged
    for secret in certs.values():
        assert _key_body(secret) not in logged + json.dumps(status)
    # The rendered file passes haproxy -c with both bundles in place.
    proc = subprocess.run(["haproxy", "-c", "-f", cfg.paths.haproxy_conf], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.usefixtures("binaries")
def test_a_bad_rotation_while_serving_is_reported_by_the_poller_and_a_good_one_clears_it(
        secrets: Secrets, certs: dict[str, Cert], tmp_path: Path, moto: str) -> None:
    # The listener keeps its certificate, so no bundle changes and nothing reloads: the status
    # object and the poller's log line must still say why the new version was refused.
    v1 = secrets.create("lb/https", certs["one"].secret_string())
    secrets.create("lb/tls13", certs["other"].secret_string())
    node = _LiveNode(secrets, tmp_path, moto)
    live, reloads, status = node.live, node.reloads, node.status
    assert node.first is not None
    assert status()["listeners"] == {}
    reloads.clear()
    v2 = secrets.rotate("lb/https", Cert(certs["one"].cert, certs["two"].key).secret_string())
    changed, error = live.poll_tls()
    assert changed is True and error is not None
    assert f"version {v2}" in error and "does not belong" in error and f"still serving version {v1}" in error
    assert set(status()["listeners"]) == {"https"} and f"version {v2}" in status()["listeners"]["https"]
    assert reloads == []  # the bundle in force did not change
    assert live.poll_tls() == (False, None)  # the same refusal is not reported again
    secrets.rotate("lb/https", certs["two"].secret_string())
    assert live.poll_tls() == (True, None)
    assert status()["listeners"] == {} and reloads == [live_config.RELOAD_HAPROXY]


def _serving(secrets: Secrets, certs: dict[str, Cert], tmp_path: Path) -> tuple[TlsStore, str]:
    """A node's TLS store serving both listeners of the sample; the https secret's version."""
    v1 = secrets.create("lb/https", certs["one"].secret_string())
    secrets.create("lb/tls13", certs["other"].secret_string())
    first = parse_config(_doc(tmp_path))
    store = TlsStore(secrets.client, first.paths)
    store.refresh(first)
    return store, v1


def _moved_to(tmp_path: Path, secret: str) -> NodeConfig:
    """The sample's document with the https listener moved to `secret`."""
    return parse_config(_doc(tmp_path, listeners=[
        {**lst, "tls": {**lst["tls"], "secret": secret}} if lst["name"] == "https" else lst
        for lst in _doc(tmp_path)["listeners"]]))


def test_a_listener_moved_to_a_bad_secret_keeps_serving_the_last_good_certificate(
        secrets: Secrets, certs: dict[str, Cert], tmp_path: Path) -> None:
    secrets.create("lb/https-next", "{}")
    store, v1 = _serving(secrets, certs, tmp_path)
    served = Path(store.paths.tls_bundle("https")).read_text()
    moved = _moved_to(tmp_path, "lb/https-next")
    assert store.refresh(moved) is False  # nothing new to serve: no reload
    assert Path(moved.paths.tls_bundle("https")).read_text() == served
    assert store.left_out(moved) == {}
    problem = store.problems(moved)["https"]
    assert problem.startswith("secret lb/https-next version ") and "certificate is missing" in problem
    assert problem.endswith(f"; still serving secret lb/https version {v1}")
    # A restarted agent knows the same (its state file), and serves the same.
    assert TlsStore(secrets.client, moved.paths).left_out(moved) == {}
    # Once the new secret holds a good certificate, it serves.
    secrets.rotate("lb/https-next", certs["two"].secret_string())
    assert store.refresh(moved) is True
    assert Path(moved.paths.tls_bundle("https")).read_text() != served
    assert store.problems(moved) == {} and store.states["https"].served_secret is None


def test_a_listener_moved_to_an_unreadable_secret_keeps_serving_too(
        secrets: Secrets, certs: dict[str, Cert], tmp_path: Path) -> None:
    store, _ = _serving(secrets, certs, tmp_path)
    moved = _moved_to(tmp_path, "lb/no-such-secret")
    store.refresh(moved)
    assert store.left_out(moved) == {}
    assert "ResourceNotFoundException" in store.problems(moved)["https"]
    assert "frontend https" in render_haproxy(moved, left_out=store.left_out(moved))


class _FailsOnce:
    """Secrets Manager that fails the next call to describe_secret, as a throttled or unreachable
    endpoint does, then answers as `client` does."""

    def __init__(self, client: Any) -> None:
        self._client, self.fail_next = client, False

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name == "describe_secret" and self.fail_next:
            self.fail_next = False

            def fail(**_: Any) -> Any:
                raise ConnectionError("the endpoint did not answer")

            return fail
        return attr


def test_a_read_error_clears_once_the_secret_answers_again(
        secrets: Secrets, certs: dict[str, Cert], tmp_path: Path) -> None:
    v1 = secrets.create("lb/https", certs["one"].secret_string())
    secrets.create("lb/tls13", certs["other"].secret_string())
    cfg = parse_config(_doc(tmp_path))
    client = _FailsOnce(secrets.client)
    store = TlsStore(client, cfg.paths)
    store.refresh(cfg)
    client.fail_next = True
    assert store.refresh(cfg) is False
    assert store.problems(cfg)["https"] == (f"secret lb/https: cannot read it: ConnectionError: the endpoint did "
                                            f"not answer; still serving version {v1}")
    assert store.left_out(cfg) == {}
    assert store.refresh(cfg) is False  # the same version answers: nothing to reload
    assert store.problems(cfg) == {}


def test_a_removed_tls_listener_leaves_no_bundle_and_no_key_behind(
        secrets: Secrets, certs: dict[str, Cert], tmp_path: Path) -> None:
    store, _ = _serving(secrets, certs, tmp_path)
    bundle = Path(store.paths.tls_bundle("https"))
    assert bundle.exists() and Path(store.paths.tls_dir, "https.json").exists()
    without = parse_config(_doc(tmp_path, listeners=[
        lst for lst in _doc(tmp_path)["listeners"] if lst["name"] != "https"]))
    store.refresh(without)
    assert not bundle.exists() and not Path(store.paths.tls_dir, "https.json").exists()
    assert "https" not in store.states and sorted(os.listdir(store.paths.tls_dir)) == ["tls13.json", "tls13.pem"]
