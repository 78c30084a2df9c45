"""Stand-in for Lambda's Invoke API, which moto can serve only with Docker: a loopback HTTP server
that runs the real route Lambda (`lambda/handler.py`, whose logic is
`haproxy_ha_runtime/route_lambda.py`) in this process for each invocation.

    python -m tests.support.lambda_stand_in --port PORT [--host ADDRESS]

Its environment is the function's: VIP, ROUTE_TABLE_IDS, NODES, and AWS_ENDPOINT_URL (moto).
It answers `POST /2015-03-31/functions/{name}/invocations` as Lambda does: 202 for an "Event"
invocation (run after the answer), 200 with the handler's result otherwise.  Every invocation
is also kept, and `GET /invocations` lists them for the tests.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

from tests.support import processes

REPO = Path(__file__).resolve().parents[2]
_PATH = re.compile(r"^/2015-03-31/functions/([^/]+)/invocations$")


def load_handler() -> ModuleType:
    """The module behind the route Lambda's entry points, `haproxy_ha_runtime.route_lambda`.

    The function's entry file, `lambda/handler.py`, is loaded by path (`lambda` is a Python
    keyword) and must hand out that module's `on_event` and `reconcile` themselves, so what runs
    here is what the function runs.  The module, not the entry file, is returned: it holds the
    state and settings a test may change (its cached client, its pauses).
    """
    spec = importlib.util.spec_from_file_location("route_lambda_handler", REPO / "lambda" / "handler.py")
    assert spec and spec.loader
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    logic = importlib.import_module("haproxy_ha_runtime.route_lambda")
    for name in ("on_event", "reconcile"):
        assert getattr(entry, name) is getattr(logic, name), f"lambda/handler.py: {name} is not route_lambda's"
    return logic


class _Context:
    """What Lambda hands the handler: the time left (the reconciler's 50 s timeout) and its log stream."""

    log_stream_name = "lambda-stand-in"

    def __init__(self, timeout_s: float = 50.0) -> None:
        self._end = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._end - time.monotonic()) * 1000))


def serve(port: int, host: str = "127.0.0.1") -> None:
    handler = load_handler()
    invocations: list[dict[str, Any]] = []
    lock = threading.Lock()

    def run(name: str, event: dict[str, Any]) -> Any:
        record: dict[str, Any] = {"function": name, "event": event}
        try:
            record["result"] = handler.reconcile(event, _Context())
        except Exception as e:  # a failed invocation, as Lambda records it
            record["error"] = f"{type(e).__name__}: {e}"
        with lock:
            invocations.append(record)
        return record.get("result", {"errorMessage": record.get("error")})

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            match = _PATH.match(self.path.split("?")[0])
            if not match:
                self.send_error(404)
                return
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            event = json.loads(body or b"{}")
            if self.headers.get("X-Amz-Invocation-Type") == "Event":
                threading.Thread(target=run, args=(match.group(1), event), daemon=True).start()
                self._answer(202, b"")
            else:
                self._answer(200, json.dumps(run(match.group(1), event), default=str).encode())

        def do_GET(self) -> None:
            with lock:
                self._answer(200, json.dumps(invocations, default=str).encode())

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    ThreadingHTTPServer((host, port), Handler).serve_forever()


def start(env: dict[str, str], port: int, timeout_s: float = 20.0) -> tuple[subprocess.Popen[bytes], str]:
    """Run the stand-in as its own process with the function's environment; returns it and its URL."""
    url = f"http://127.0.0.1:{port}"
    proc = processes.start([sys.executable, "-m", "tests.support.lambda_stand_in", "--port", str(port)],
                           url + "/invocations", "the Lambda stand-in",
                           env={**os.environ, "PYTHONPATH": str(REPO), **env}, cwd=REPO, timeout_s=timeout_s)
    return proc, url


def invocations(url: str) -> list[dict[str, Any]]:
    """Every invocation so far, with its event and result (or error)."""
    with urllib.request.urlopen(url + "/invocations", timeout=5) as resp:
        data: list[dict[str, Any]] = json.loads(resp.read())
        return data


stop = processes.stop


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (the lab's API address)")
    args = parser.parse_args()
    serve(args.port, args.host)
