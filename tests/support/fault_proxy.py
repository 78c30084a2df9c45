"""An HTTP proxy in front of the moto server that injects EC2 API faults on demand.

It forwards every request to the upstream and can, for the next N calls of chosen actions,
answer with throttling (RequestLimitExceeded), a 5xx, or a delay instead, or lose a route write
(`lose`: ReplaceRoute or CreateRoute answered 200 as EC2 does, but never forwarded: a write that
succeeds and does not land).  It can also report a route as `blackhole` in DescribeRouteTables
answers, which moto never does but AWS does when a route's target ENI belongs to a stopped or
terminated instance.  And it can refuse the route writes to chosen route tables as IAM refuses
a write to a table the role may not write (HTTP 403, `UnauthorizedOperation`), which moto never
does (it checks no policy); lifting the refusal is a permission fixed.

Always on, in every mode: a CreateRoute whose table already has a route for the same IPv4
destination is refused as EC2 refuses it (HTTP 400, `RouteAlreadyExists`) and not forwarded.
moto accepts such a duplicate silently when the target is an ENI, so without this no race
between two creators would ever fail here as it does on AWS.  The proxy asks the upstream
(DescribeRouteTables, one table) and forwards under one lock, so two CreateRoutes at once
cannot both pass.  IPv6 and prefix-list destinations are forwarded unchecked.

    python -m tests.support.fault_proxy --listen 127.0.0.1:5100 --upstream http://127.0.0.1:5000

Control: POST /_fault {"mode": "throttle"|"5xx"|"delay"|"lose"|"none", "count": N,
"actions": [...], "delay_s": S}; POST /_blackhole {"eni_ids": [...]}; POST /_refuse
{"route_table_ids": [...]} (an empty list lifts it); GET /_stats ->
{"calls": {action: n}, "faults": {action: n}, "route_exists": n}; POST /_reset.

In this process, `FaultState.on_call(action, hook, times=1)` runs `hook` before each of the next
`times` calls of that action goes upstream, in the proxy's thread: the call is held for as long as
the hook runs, so a test can change the world while a client waits for an answer (a slow
DescribeInstances), or hold calls until all of them have arrived (`release_together`), so that
they race for certain.
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
# The writes that `lose` answers without forwarding; EC2 answers both with <return>true</return>.
_LOSABLE = {"ReplaceRoute", "CreateRoute"}
# What EC2 answers a write that IAM does not allow (the message is shorter than EC2's, which also
# carries an encoded authorization message).
_UNAUTHORIZED = (403, "UnauthorizedOperation", "You are not authorized to perform this operation.")


def _error_xml(code: str, message: str) -> bytes:
    """An error body as EC2 sends it (botocore reads Response/Errors/Error)."""
    return (f'<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>{code}</Code>'
            f"<Message>{message}</Message></Error></Errors><RequestID>fault-proxy</RequestID></Response>").encode()


def _success_xml(action: str, version: str) -> bytes:
    """EC2's answer to a route write that worked."""
    return (f'<?xml version="1.0" encoding="UTF-8"?><{action}Response xmlns="http://ec2.amazonaws.com/doc/{version}/">'
            f"<requestId>fault-proxy</requestId><return>true</return></{action}Response>").encode()


class FaultState:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        # When each call arrived (time.time()), by action: the benchmarks read these.
        self.arrivals: dict[str, list[float]] = {}
        # Hooks by action, with how many more calls each runs for (see on_call), and what they raised.
        self.hooks: dict[str, tuple[Callable[[], object], int]] = {}
        self.hook_errors: list[BaseException] = []
        # CreateRoutes refused as duplicates (RouteAlreadyExists); create_lock makes check and forward one step.
        self.route_exists = 0
        self.create_lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.mode = "none"
            self.remaining = 0
            self.actions: set[str] = set()
            self.delay_s = 0.0
            self.blackhole: set[str] = set()
            # Route tables whose route writes (_LOSABLE) are refused: UnauthorizedOperation.
            self.refused: set[str] = set()
            self.calls.clear()
            self.faults.clear()
            self.arrivals.clear()
            self.hooks.clear()
            self.hook_errors.clear()
            self.route_exists = 0

    def set_fault(self, mode: str, count: int, actions: list[str], delay_s: float = 0.0) -> None:
        if mode not in ("none", "delay", "lose", *_ERRORS):
            raise ValueError(f"mode: got {mode!r}; allowed: none, delay, lose, throttle, 5xx")
        if mode == "lose" and not set(actions) <= _LOSABLE:
            raise ValueError(f"actions: got {sorted(actions)!r} for lose; allowed: {sorted(_LOSABLE)}")
        with self.lock:
            self.mode, self.remaining, self.actions, self.delay_s = mode, count, set(actions), delay_s

    def take(self, action: str) -> str | None:
        """Count a call; return the fault to inject for it, if any."""
        with self.lock:
            self.calls[action] += 1
            self.arrivals.setdefault(action, []).append(time.time())
            if self.mode == "none" or self.remaining <= 0 or (self.actions and action not in self.actions):
                return None
            if self.mode == "lose" and action not in _LOSABLE:
                return None
            self.remaining -= 1
            self.faults[action] += 1
            return self.mode

    def on_call(self, action: str, hook: Callable[[], object], times: int = 1) -> None:
        """Run `hook` before each of the next `times` calls of `action` is forwarded (after any
        injected delay); each call runs it in its own thread, so the calls can wait for each other."""
        with self.lock:
            self.hooks[action] = (hook, times)

    def release_together(self, action: str, calls: int, timeout_s: float = 5.0) -> None:
        """Hold each of the next `calls` calls of `action` until all of them have arrived, then forward
        them at once: they race for certain.  If they do not all arrive within `timeout_s`, the held
        ones go on and hook_errors says so (BrokenBarrierError)."""
        self.on_call(action, threading.Barrier(calls, timeout=timeout_s).wait, times=calls)

    def run_hook(self, action: str) -> None:
        """Run the hook set for `action`, if any, and forget it after its last call; what it raises
        is kept in hook_errors."""
        with self.lock:
            hook, times = self.hooks.pop(action, (None, 0))
            if times > 1:
                assert hook is not None
                self.hooks[action] = (hook, times - 1)
        if hook is None:
            return
        try:
            hook()
        except BaseException as e:  # surfaced by the test through hook_errors
            with self.lock:
                self.hook_errors.append(e)

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {"calls": dict(self.calls), "faults": dict(self.faults), "route_exists": self.route_exists}


def _params(body: bytes) -> dict[str, str]:
    """A Query-style request's form fields (the first value of each)."""
    return {k: v[0] for k, v in urllib.parse.parse_qs(body.decode(errors="replace")).items()}


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
                elif self.path == "/_refuse":
                    with state.lock:
                        state.refused = set(req.get("route_table_ids", []))
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

        def _upstream(self, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, str]:
            conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                return resp.status, resp.read(), resp.getheader("Content-Type", "text/xml")
            finally:
                conn.close()

        def _route_exists(self, params: dict[str, str]) -> bool:
            """Does the CreateRoute's table already have a route for its IPv4 destination?"""
            table, cidr = params.get("RouteTableId"), params.get("DestinationCidrBlock")
            if not table or not cidr:
                return False
            query = urllib.parse.urlencode({"Action": "DescribeRouteTables", "RouteTableId.1": table,
                                            "Version": params.get("Version", "2016-11-15")}).encode()
            # moto picks the service, account and region from the Authorization header; it checks no signature.
            headers = {"Content-Type": "application/x-www-form-urlencoded",
                       "Authorization": self.headers.get("Authorization", "")}
            status, data, _ = self._upstream(query, headers)
            return status == 200 and f"<destinationCidrBlock>{cidr}</destinationCidrBlock>".encode() in data

        def _create_route(self, body: bytes, headers: dict[str, str], params: dict[str, str]) -> tuple[int, bytes, str]:
            """Forward a CreateRoute, or refuse it as EC2 does when the route is already there."""
            with state.create_lock:
                if not self._route_exists(params):
                    return self._upstream(body, headers)
            with state.lock:
                state.route_exists += 1
            message = f"The route identified by {params['DestinationCidrBlock']} already exists."
            return 400, _error_xml("RouteAlreadyExists", message), "text/xml"

        def _forward(self, body: bytes) -> None:
            params = _params(body)
            action = params.get("Action", "unknown")
            fault = state.take(action)
            if fault == "delay":
                time.sleep(state.delay_s)
            elif fault == "lose":
                self._reply(200, _success_xml(action, params.get("Version", "2016-11-15")))
                return
            elif fault is not None:
                status, code, message = _ERRORS[fault]
                self._reply(status, _error_xml(code, message))
                return
            with state.lock:
                refused = action in _LOSABLE and params.get("RouteTableId") in state.refused
                if refused:
                    state.faults[action] += 1
            if refused:
                self._reply(_UNAUTHORIZED[0], _error_xml(*_UNAUTHORIZED[1:]))
                return
            state.run_hook(action)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            if action == "CreateRoute":
                status, data, ctype = self._create_route(body, headers, params)
            else:
                status, data, ctype = self._upstream(body, headers)
            with state.lock:
                enis = set(state.blackhole)
            if enis and action == "DescribeRouteTables":
                data = _blackhole(data, enis)
            self._reply(status, data, ctype)

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
