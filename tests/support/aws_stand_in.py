"""Stand-in, on loopback, for the Auto Scaling and CloudFormation calls that moto answers with
500 or does not model: CompleteLifecycleAction, RecordLifecycleActionHeartbeat, SetInstanceHealth
(recorded, so that a test can see the node asked to be replaced) and SignalResource.

Both are Query-protocol APIs: the action is in the form body.  Point a client at it with
AWS_ENDPOINT_URL_AUTO_SCALING / AWS_ENDPOINT_URL_CLOUDFORMATION, or `endpoint_url`.

In a test, `AwsStandIn()` serves from a thread.  The lab runs it as a process, which appends each
call to a JSON-lines file:

    python -m tests.support.aws_stand_in --host 192.0.2.254 --port 5003 --log calls.jsonl
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.support import serving

_NS = {
    "CompleteLifecycleAction": "http://autoscaling.amazonaws.com/doc/2011-01-01/",
    "RecordLifecycleActionHeartbeat": "http://autoscaling.amazonaws.com/doc/2011-01-01/",
    "SetInstanceHealth": "http://autoscaling.amazonaws.com/doc/2011-01-01/",
    "SignalResource": "http://cloudformation.amazonaws.com/doc/2010-05-15/",
}


class AwsStandIn:
    """Records each call as (action, params) in `calls`; `fail` names actions to answer with 500,
    `refuse` actions to answer as AWS refuses a request (400 ValidationError: for SignalResource,
    a resource that waits for no signal)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, log: Path | None = None) -> None:
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.fail: set[str] = set()
        self.refuse: set[str] = set()
        stand_in = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                params = {k: v[0] for k, v in urllib.parse.parse_qs(body).items()}
                action = params.pop("Action", "")
                params.pop("Version", None)
                if action not in _NS:
                    self._send(400, f"<ErrorResponse><Error><Code>InvalidAction</Code><Message>{action} is not "
                                    "stood in for</Message></Error></ErrorResponse>")
                    return
                stand_in.calls.append((action, params))
                if log is not None:
                    with open(log, "a", encoding="utf-8") as f:
                        f.write(json.dumps({"ts": round(time.time(), 4), "action": action, **params}) + "\n")
                if action in stand_in.refuse:
                    self._send(400, "<ErrorResponse><Error><Type>Sender</Type><Code>ValidationError</Code><Message>"
                                    "Resource is in CREATE_COMPLETE state and can not be signaled</Message></Error>"
                                    "</ErrorResponse>")
                    return
                if action in stand_in.fail:
                    self._send(500, "<ErrorResponse><Error><Code>InternalFailure</Code><Message>injected"
                                    "</Message></Error></ErrorResponse>")
                    return
                self._send(200, f'<{action}Response xmlns="{_NS[action]}"><{action}Result/>'
                                f"<ResponseMetadata><RequestId>stand-in</RequestId></ResponseMetadata>"
                                f"</{action}Response>")

            def do_GET(self) -> None:
                self._send(200, "stand-in for Auto Scaling and CloudFormation")  # for readiness probes

            def _send(self, status: int, body: str) -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/xml")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, port), H)
        self.url = f"http://{host}:{self.server.server_address[1]}"
        serving.in_thread(self.server)

    def of(self, action: str) -> list[dict[str, str]]:
        """The parameters of every call of `action` so far."""
        return [params for a, params in self.calls if a == action]

    def stop(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", type=Path, required=True, help="append each call here, as a JSON line")
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stand_in = AwsStandIn(args.host, args.port, args.log)
    print(f"Auto Scaling and CloudFormation stand-in at {stand_in.url}", flush=True)
    stop.wait()
    stand_in.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
