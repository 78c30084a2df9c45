"""Awkward values in a document: each is refused by name, or reaches the real HAProxy exactly as
written.  Nothing is passed through raw to be re-read differently (a comment, an escape, an
environment variable)."""

from __future__ import annotations

import http.client
import http.server
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from haproxy_ha_runtime.config import ConfigError, parse_config
from haproxy_ha_runtime.render import render_haproxy
from tests.conftest import require
from tests.runtime.samples import doc
from tests.support import serving
from tests.support.moto_server import free_port

REFUSED: list[tuple[dict[str, Any], str]] = [
    ({"name": "health", "port": 80, "static_reply": "x"}, "listeners[0].name: got 'health'"),
    ({"name": "web", "port": 22, "static_reply": "x"}, "listeners[0].port: got 22"),
    *[({"name": "web", "port": 80, "check_path": path, "backends": [{"name": "b", "host": "h", "port": 1}]},
       f"listeners[0].check_path: got {path!r}")
      for path in ['/a"b', "/a'b", "/a\\b", "/a#b", "/a$b", "/a b", "/a\tb"]],
    *[({"name": "web", "port": 80, "static_reply": reply}, f"listeners[0].static_reply: got {reply!r}")
      for reply in ['say "hi"', "it's", "a\\b", "costs $5", "${HOME}", "two\nlines", "a\rb", "a\tb", ""]],
]


# Each case's ID is its expected problem with the characters a node ID cannot hold (the backslash
# pytest escapes, quotes, control characters) made plain, so that `pytest ID` (and mutmut) finds it.
@pytest.mark.parametrize(("listener", "expected"), REFUSED,
                         ids=[f"{i}-" + re.sub(r"[^\w.\[\]:,;=$/ -]", "_", e) for i, (_, e) in enumerate(REFUSED)])
def test_fails_when_a_listener_value_would_break_or_change_haproxy_cfg(listener: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(doc(listeners=[listener]))
    assert any(p.startswith(expected + "; allowed: ") for p in e.value.problems), e.value.problems


# Accepted, and awkward for a config file: each must arrive byte for byte.
REPLIES = ["a#b", "100% sure", "café ünïcode", "{braces} [brackets] (parens)", "<b>&amp;</b> ; , . : ! ? * + = ~ @ |",
           "served by node a"]
CHECK_PATHS = ["/healthz", "/a%20b", "/x?y=1&z=2", "/(a)[b]{c}~!*+,;=:@"]


@pytest.fixture(scope="module")
def haproxy_bin() -> str:
    found = shutil.which("haproxy")
    require("haproxy (Debian package haproxy)", found is not None)
    assert found is not None
    return found


class _Recorder(http.server.BaseHTTPRequestHandler):
    paths: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).paths.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[int, list[str]]]:
    handler = type("Recorder", (_Recorder,), {"paths": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    serving.in_thread(server)
    try:
        yield server.server_address[1], handler.paths
    finally:
        server.shutdown()
        server.server_close()


def _run_haproxy(haproxy_bin: str, text: str, tmp: Path) -> subprocess.Popen[bytes]:
    if os.geteuid() != 0:  # only root may drop to the haproxy user; the rest of the file is as rendered
        text = "".join(line for line in text.splitlines(keepends=True)
                       if line.strip() not in ("user haproxy", "group haproxy"))
    cfg = tmp / "haproxy.cfg"
    cfg.write_text(text)
    check = subprocess.run([haproxy_bin, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    return subprocess.Popen([haproxy_bin, "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def _get(port: int, deadline: float) -> bytes:
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/")
            return conn.getresponse().read()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
        finally:
            conn.close()


def test_awkward_values_reach_haproxy_exactly_as_written(haproxy_bin: str, recorder: tuple[int, list[str]],
                                                         tmp_path: Path) -> None:
    backend_port, seen_paths = recorder
    reply_ports = [free_port() for _ in REPLIES]
    listeners: list[dict[str, Any]] = [
        {"name": f"reply{i}", "port": port, "static_reply": reply}
        for i, (port, reply) in enumerate(zip(reply_ports, REPLIES, strict=True))
    ] + [
        {"name": f"check{i}", "port": free_port(), "check_path": path,
         "backends": [{"name": "rec", "host": "127.0.0.1", "port": backend_port}]}
        for i, path in enumerate(CHECK_PATHS)
    ]
    cfg = parse_config(doc(listeners=listeners, stats_port=free_port(), paths={
        "run_dir": str(tmp_path), "log_socket": str(tmp_path / "log.sock")}))
    proc = _run_haproxy(haproxy_bin, render_haproxy(cfg), tmp_path)
    try:
        deadline = time.monotonic() + 10
        bodies = [_get(port, deadline).decode() for port in reply_ports]
        assert bodies == [reply + "\n" for reply in REPLIES]
        # HAProxy checks each backend at once, then every second: every path arrives as written.
        while set(CHECK_PATHS) - set(seen_paths) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert set(seen_paths) == set(CHECK_PATHS)
    finally:
        _stop(proc)
