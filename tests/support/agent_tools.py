"""What the agent tests share: a log that records the agent's events, a bounded wait, and a
stand-in for HAProxy's /healthz on loopback (the agent's own health probe target)."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from haproxy_ha_runtime.log import log_event
from tests.support import serving


class Log:
    """Pass as the agent's `log`: keeps every event as a dict."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: str, **fields: Any) -> None:
        self.events.append({"event": event, **fields})

    def of(self, name: str) -> list[dict[str, Any]]:
        """The events of one kind, in order."""
        return [e for e in self.events if e["event"] == name]


class JsonLog:
    """Pass as the agent's `log`: every event goes through the runtime's own `log_event` (what
    the journal gets) into `stream`.  `events` are its lines parsed back, so a line that is not
    one JSON object fails whoever reads them."""

    def __init__(self) -> None:
        self.stream = io.StringIO()

    def __call__(self, event: str, **fields: Any) -> None:
        log_event(event, stream=self.stream, **fields)

    @property
    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]

    def of(self, name: str) -> list[dict[str, Any]]:
        """The events of one kind, in order."""
        return [e for e in self.events if e["event"] == name]


def wait_for(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll `pred` until it holds; fail after `timeout` seconds."""
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


class FakeHealth:
    """HAProxy's /healthz on loopback, which a test turns on and off with `ok`."""

    def __init__(self) -> None:
        self.ok = True
        health = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200 if health.ok and self.path == "/healthz" else 503)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.server.server_address[1]
        serving.in_thread(self.server)

    def stop(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()
