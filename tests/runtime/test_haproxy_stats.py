"""HAProxy's numbers per listener and backend, sampled from the stats socket of a real HAProxy (the
config rendered from a document): requests and 5xx since the last sample, across a restart,
sessions, response time, servers up; and the samples as metric records."""

from __future__ import annotations

import dataclasses
import http.client
import json
import shutil
import socket
import subprocess
import threading
import time
import types
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from haproxy_ha_runtime import agent, haproxy_stats, telemetry
from haproxy_ha_runtime.config import NodeConfig, parse_config
from haproxy_ha_runtime.render import render_haproxy
from tests.conftest import require
from tests.runtime.samples import doc
from tests.support import emf_spec
from tests.support.agent_tools import wait_for
from tests.support.moto_server import free_port

LISTENERS = [("web", "http"), ("pg", "tcp"), ("hello", "http")]
BACKENDS = [("web", "http"), ("pg", "tcp")]


class _Backend:
    """Answers /fail with 500 and anything else with 200, each after 40 ms."""

    def __init__(self) -> None:
        class H(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                time.sleep(0.04)
                self.send_response(500 if self.path == "/fail" else 200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


class _HAProxy:
    def __init__(self, binary: str, cfg: NodeConfig, workdir: Path) -> None:
        text = render_haproxy(cfg)
        # Not root-only in spirit: run as whoever runs the test.
        text = "".join(line for line in text.splitlines(keepends=True)
                       if line.strip() not in ("user haproxy", "group haproxy"))
        self.conf = workdir / "haproxy.cfg"
        self.conf.write_text(text)
        self.binary = binary
        self.cfg = cfg
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        sock = Path(self.cfg.paths.haproxy_socket)
        if sock.exists():
            sock.unlink()
        self.proc = subprocess.Popen([self.binary, "-db", "-f", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: sock.exists())

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def answer(self) -> str:
        return haproxy_stats.query(self.cfg.paths.haproxy_socket, haproxy_stats.SAMPLE_COMMAND)


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[tuple[_HAProxy, dict[str, int]]]:
    binary = shutil.which("haproxy")
    require("the haproxy binary (Debian package haproxy)", binary is not None)
    assert binary is not None
    backend = _Backend()
    ports = {"web": free_port(), "pg": free_port(), "hello": free_port()}
    closed = free_port()  # a server that never answers its health check
    cfg = parse_config(doc(stats_port=free_port(), agent_port=free_port(),
                           paths={"run_dir": str(tmp_path), "log_socket": str(tmp_path / "log")},
                           listeners=[
                               {"name": "web", "port": ports["web"], "check_path": "/",
                                "backends": [{"name": "up", "host": "127.0.0.1", "port": backend.port},
                                             {"name": "gone", "host": "127.0.0.1", "port": closed}]},
                               {"name": "pg", "port": ports["pg"], "mode": "tcp",
                                "backends": [{"name": "db", "host": "127.0.0.1", "port": backend.port}]},
                               {"name": "hello", "port": ports["hello"], "static_reply": "hello"}]))
    h = _HAProxy(binary, cfg, tmp_path)
    h.start()
    try:
        yield h, ports
    finally:
        h.stop()
        backend.server.shutdown()


def _get(port: int, path: str = "/") -> int:
    # A request the web listener may send to the server that is gone: HAProxy answers 503 then.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def _tcp_request(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        while s.recv(4096):
            pass


def test_samples_count_requests_and_5xx_since_the_last_sample_across_a_restart(
        haproxy: tuple[_HAProxy, dict[str, int]]) -> None:
    h, ports = haproxy
    sampler = haproxy_stats.Sampler()

    def sample() -> tuple[dict[str, haproxy_stats.ListenerSample], dict[str, haproxy_stats.BackendSample]]:
        listeners, backends = sampler.sample(h.answer(), LISTENERS, BACKENDS)
        return {s.name: s for s in listeners}, {s.name: s for s in backends}

    # Only the server that answers is up (HAProxy marks the other down after two failed checks).
    wait_for(lambda: sample()[1]["web"].servers_up == 1)
    listeners, backends = sample()
    # No baseline yet on the first sample, none needed for what is current.
    assert backends["web"].servers == 2 and backends["pg"] == haproxy_stats.BackendSample("pg", None, 1, 1)
    assert set(listeners) == {"web", "pg", "hello"}

    statuses = [_get(ports["web"], p) for p in ("/", "/", "/fail", "/", "/fail")]
    assert statuses == [200, 200, 500, 200, 500]
    for _ in range(2):
        _tcp_request(ports["pg"])
    assert _get(ports["hello"]) == 200
    listeners, backends = sample()
    assert (listeners["web"].requests, listeners["web"].http_5xx) == (5, 2)
    assert (listeners["pg"].requests, listeners["pg"].http_5xx) == (2, None)  # TCP: connections, no 5xx
    assert (listeners["hello"].requests, listeners["hello"].http_5xx) == (1, 0)
    # The backend answers after 40 ms: HAProxy's average of its last requests says about that.
    assert backends["web"].response_time_ms is not None and 30 <= backends["web"].response_time_ms < 1000
    assert backends["pg"].response_time_ms is None

    # Nothing since: zero, not the totals again.
    listeners, _ = sample()
    assert (listeners["web"].requests, listeners["web"].http_5xx) == (0, 0)

    # A new process counts from 0 again; what it counted is all new (never a negative delta).
    h.stop()
    h.start()
    # (A new process starts its servers UP: wait until the one that is gone is DOWN again,
    # looking with a sampler of its own.)
    wait_for(lambda: haproxy_stats.Sampler().sample(h.answer(), LISTENERS, BACKENDS)[1][0].servers_up == 1)
    assert [_get(ports["web"], p) for p in ("/fail", "/")] == [500, 200]
    listeners, _ = sample()
    assert (listeners["web"].requests, listeners["web"].http_5xx) == (2, 1)
    listeners, _ = sample()
    assert listeners["web"].requests == 0


def test_current_sessions_count_the_connections_open_now(haproxy: tuple[_HAProxy, dict[str, int]]) -> None:
    h, ports = haproxy
    sampler = haproxy_stats.Sampler()
    idle = [socket.create_connection(("127.0.0.1", ports["pg"]), timeout=5) for _ in range(3)]
    try:
        def sessions() -> int:
            listeners, _ = sampler.sample(h.answer(), LISTENERS, BACKENDS)
            return next(s.current_sessions for s in listeners if s.name == "pg")
        wait_for(lambda: sessions() == 3)
    finally:
        for s in idle:
            s.close()
    wait_for(lambda: sessions() == 0)


def test_samples_become_valid_metric_records(haproxy: tuple[_HAProxy, dict[str, int]]) -> None:
    h, ports = haproxy
    sampler = haproxy_stats.Sampler()
    sampler.sample(h.answer(), LISTENERS, BACKENDS)
    _get(ports["web"], "/fail")
    # HAProxy counts a request when its stream ends, which may come after the client has the
    # answer: on a busy machine, wait until the frontend shows it.
    wait_for(lambda: any(r["pxname"] == "web" and r["svname"] == "FRONTEND" and r.get("hrsp_5xx") == "1"
                         for r in haproxy_stats.parse_stat(h.answer())))
    lines: list[str] = []
    telemetry.Telemetry("prod", "a", lines.append).haproxy(*sampler.sample(h.answer(), LISTENERS, BACKENDS))
    assert all(emf_spec.problems(line) == [] for line in lines)
    docs = [json.loads(line) for line in lines]
    web = next(d for d in docs if d.get("Listener") == "web")
    assert emf_spec.metrics_of(web)["Http5xx"] == 1 and emf_spec.metrics_of(web)["Requests"] == 1
    assert sorted(d.get("Listener") or d.get("Backend") for d in docs) == ["hello", "pg", "pg", "web", "web"]


def test_fails_clearly_on_an_answer_that_is_not_show_stat() -> None:
    with pytest.raises(RuntimeError, match="unexpected answer from HAProxy's stats socket"):
        haproxy_stats.Sampler().sample("Unknown command, but maybe one of the following ones is a better match",
                                       LISTENERS, BACKENDS)


def test_without_detailed_metrics_the_agent_still_writes_each_backends_servers_up(
        haproxy: tuple[_HAProxy, dict[str, int]]) -> None:
    """The stack's backend-down alarms read ServersUp whatever detailed_metrics says."""
    h, _ports = haproxy
    lines: list[str] = []
    fake = types.SimpleNamespace(cfg=dataclasses.replace(h.cfg, detailed_metrics=False),
                                 metrics=telemetry.Telemetry("prod", "a", lines.append),
                                 report_state=lambda force: None)
    stop = threading.Event()
    watcher = threading.Thread(target=agent._watch_metrics, args=(fake, 0.2, stop))
    watcher.start()
    try:
        # The "gone" server is marked down by its health checks after a moment.
        wait_for(lambda: any(d.get("Backend") == "web" and emf_spec.metrics_of(d)["ServersUp"] == 1
                             for d in map(json.loads, list(lines))))
    finally:
        stop.set()
        watcher.join(10)
    docs = [json.loads(line) for line in lines]
    assert docs and all(d["record"] == "backend" for d in docs)
    assert {d["Backend"] for d in docs} == {"web", "pg"}
    assert all(set(emf_spec.metrics_of(d)) == {"ServersUp", "Servers"} for d in docs)
    assert {d["Backend"]: emf_spec.metrics_of(d)["Servers"] for d in docs} == {"web": 2, "pg": 1}
