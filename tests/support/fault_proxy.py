"""An HTTP proxy in front of the moto server that injects EC2 API faults on demand.

It forwards every request to the upstream and can, for the next N calls of chosen actions,
answer with throttling (RequestLimitExceeded), a 5xx, or a delay instead.  It can also report
a route as `blackhole` in DescribeRouteTables answers, which moto never does but AWS does when a
route's target ENI belongs to a stopped or terminated instance.

    python -m tests.support.fault_proxy --listen 127.0.0.1:5100 --upstream http://127.0.0.1:5000

Control: POST /_fault {"mode": "throttle"|"5xx"|"delay"|"none", "count": N, "actions": [...],
"delay_s": S}; POST /_blackhole {"eni_ids": [...]}; GET /_stats -> {"calls": {action: n},
"faults": {action: n}}; POST /_reset.

In this process, `FaultState.on_call(action, hook)` runs `hook` once, in the proxy's thread, before
the next call of that action goes upstream: the call is held for as long as the hook runs, so a
test can change the world while a client waits for an answer (a slow DescribeInstances).
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_ERRORS = {
    "throttle": (503, "RequestLimitExceeded", "Request limit exceeded."),
    "5xx": (500, "InternalError", "An internal error has occurred."),
}


class FaultState:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        # When each call arrived (time.time()), by action: the benchmarks read these.
        self.arrivals: dict[str, list[float]] = {}
        # One-shot hooks by action (see on_call), and what they raised.
        self.hooks: dict[str, Callable[[], None]] = {}
        self.hook_errors: list[BaseException] = []
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.mode = "none"
            self.remaining = 0
            self.actions: set[str] = set()
            self.delay_s = 0.0
            self.blackhole: set[str] = set()
            self.calls.clear()
            self.faults.clear()
            self.arrivals.clear()
            self.hooks.clear()
            self.hook_errors.clear()

    def set_fault(self, mode: str, count: int, actions: list[str], delay_s: float = 0.0) -> None:
        if mode not in ("none", "delay", *_ERRORS):
            raise ValueError(f"mode: got {mode!r}; allowed: none, delay, throttle, 5xx")
        with self.lock:
            self.mode, self.remaining, self.actions, self.delay_s = mode, count, set(actions), delay_s

    def take(self, action: str) -> str | None:
        """Count a call; return the fault to inject for it, if any."""
        with self.lock:
            self.calls[action] += 1
            self.arrivals.setdefault(action, []).append(time.time())
            if self.mode == "none" or self.remaining <= 0 or (self.actions and action not in self.actions):
                return None
            self.remaining -= 1
            self.faults[action] += 1
            return self.mode

    def on_call(self, action: str, hook: Callable[[], None]) -> None:
        """Run `hook` once, before the next call of `action` is forwarded (after any injected delay)."""
        with self.lock:
            self.hooks[action] = hook

    def run_hook(self, action: str) -> None:
        """Run and forget the hook set for `action`, if any; what it raises is kept in hook_errors."""
        with self.lock:
            hook = self.hooks.pop(action, None)
        if hook is None:
            return
        try:
            hook()
        except BaseException as e:  # surfaced by the test through hook_errors
            with self.lock:
                self.hook_errors.append(e)

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {"calls": dict(self.calls), "faults": dict(self.faults)}


def _action(body: bytes) -> str:
    params = urllib.parse.parse_qs(body.decode(errors="replace"))
    return params.get("Action", ["unknown"])[0]


def _blackhole(xml: bytes, enis: set[str]) -> bytes:
    def fix(m: re.Match[bytes]) -> bytes:
        item = m.group(0)
        if any(b"<networkInterfaceId>" + e.encode() + b"</networkInterfaceId>" in item for e in enis):
            return item.replace(b"<state>active</state>", b"<state>blackhole</state>")
        return item
    return re.sub(rb"<item>(?:(?!<item>).)*?<state>active</state>.*?</item>", fix, xml, flags=re.S)


def make_handler(upstream: str, state: FaultState) -> type[BaseHTTPRequestHandler]:
    target = urllib.parse.urlsplit(upstream)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _reply(self, status: int, body: bytes, ctype: str = "text/xml") -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _control(self, body: bytes) -> None:
            try:
                req = json.loads(body or b"{}")
                if self.path == "/_fault":
                    state.set_fault(req.get("mode", "none"), int(req.get("count", 0)),
                                    list(req.get("actions", [])), float(req.get("delay_s", 0)))
                elif self.path == "/_blackhole":
                    with state.lock:
                        state.blackhole = set(req.get("eni_ids", []))
                elif self.path == "/_reset":
                    state.reset()
            except (ValueError, TypeError) as e:
                self._reply(400, str(e).encode(), "text/plain")
                return
            self._reply(200, json.dumps(state.stats()).encode(), "application/json")

        def do_GET(self) -> None:
            if self.path == "/_stats":
                self._reply(200, json.dumps(state.stats()).encode(), "application/json")
            else:
                self._forward(b"")

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path.startswith("/_"):
                self._control(body)
                return
            self._forward(body)

        def _forward(self, body: bytes) -> None:
            action = _action(body)
            fault = state.take(action)
            if fault == "delay":
                time.sleep(state.delay_s)
            elif fault is not None:
                status, code, message = _ERRORS[fault]
                xml = (f'<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>{code}</Code>'
                       f"<Message>{message}</Message></Error></Errors><RequestID>fault-proxy</RequestID></Response>")
                self._reply(status, xml.encode())
                return
            state.run_hook(action)
            conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                with state.lock:
                    enis = set(state.blackhole)
                if enis and action == "DescribeRouteTables":
                    data = _blackhole(data, enis)
                self._reply(resp.status, data, resp.getheader("Content-Type", "text/xml"))
            finally:
                conn.close()

    return Handler


class FaultProxy:
    """Run the proxy on a thread (for tests in this process)."""

    def __init__(self, upstream: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.state = FaultState()
        self.server = ThreadingHTTPServer((host, port), make_handler(upstream, self.state))
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:5100", help="HOST:PORT to listen on")
    parser.add_argument("--upstream", required=True, help="the moto server URL")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    proxy = FaultProxy(args.upstream, host, int(port))
    print(f"fault proxy on {proxy.url} -> {args.upstream}", flush=True)
    proxy.server.serve_forever()


if __name__ == "__main__":
    main()
