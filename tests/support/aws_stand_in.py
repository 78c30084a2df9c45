"""Stand-in, on loopback, for the Auto Scaling and CloudFormation calls that moto answers with
500 or does not model: CompleteLifecycleAction, RecordLifecycleActionHeartbeat, SetInstanceHealth
(recorded, so that a test can see the node asked to be replaced) and SignalResource.

Both are Query-protocol APIs: the action is in the form body.  Point a client at it with
AWS_ENDPOINT_URL_AUTOSCALING / AWS_ENDPOINT_URL_CLOUDFORMATION, or `endpoint_url`.
"""

from __future__ import annotations

import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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

    def __init__(self) -> None:
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

            def _send(self, status: int, body: str) -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/xml")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        serving.in_thread(self.server)

    def of(self, action: str) -> list[dict[str, str]]:
        """The parameters of every call of `action` so far."""
        return [params for a, params in self.calls if a == action]

    def stop(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()
