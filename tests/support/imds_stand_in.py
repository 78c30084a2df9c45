"""Stand-in for the instance metadata service (IMDSv2 only), on loopback: the ENI of the primary
MAC, the instance ID, and `autoscaling/target-lifecycle-state`, which moto does not serve.

In a test, `FakeImds()` serves from a thread.  The lab runs one per instance, in the node's
namespace, where the group's plan for the instance is the text of a file that the lab writes:

    python -m tests.support.imds_stand_in --port 9254 --eni-id eni-1 --instance-id i-1 \
        --lifecycle-file /tmp/lab/a/lifecycle-state
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.support import serving


class FakeImds:
    """Serves IMDSv2 with a session token; `lifecycle_state` is what the group plans (None: 404)."""

    def __init__(self, eni_id: str = "eni-0123456789abcdef0", instance_id: str = "i-0123456789abcdef0",
                 port: int = 0, lifecycle_file: Path | None = None) -> None:
        self.tokens_issued = 0
        self.valid_tokens: set[str] = set()
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.lifecycle_state: str | None = None

        def lifecycle_state() -> str | None:
            if lifecycle_file is None:
                return self.lifecycle_state
            try:
                return lifecycle_file.read_text().strip() or None
            except FileNotFoundError:
                return None

        values = {
            "/latest/meta-data/mac": lambda: "0a:1b:2c:3d:4e:5f",
            "/latest/meta-data/network/interfaces/macs/0a:1b:2c:3d:4e:5f/interface-id": lambda: eni_id,
            "/latest/meta-data/instance-id": lambda: instance_id,
            "/latest/meta-data/autoscaling/target-lifecycle-state": lifecycle_state,
        }
        fake = self

        class H(BaseHTTPRequestHandler):
            def _send(self, status: int, body: str) -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self) -> None:
                fake.requests.append(("PUT", self.path, {k.lower(): v for k, v in self.headers.items()}))
                fake.tokens_issued += 1
                token = f"token-{fake.tokens_issued}"
                fake.valid_tokens.add(token)
                self._send(200, token)

            def do_GET(self) -> None:
                fake.requests.append(("GET", self.path, {k.lower(): v for k, v in self.headers.items()}))
                value = values.get(self.path, lambda: None)()
                # IMDSv2 only: no token, no answer.  As on EC2, every token issued stays good (for its
                # TTL; the tests revoke one to stand for an expired one), whoever else asked for one since.
                if self.headers.get("X-aws-ec2-metadata-token") not in fake.valid_tokens:
                    self._send(401, "")
                elif value is None:
                    self._send(404, "")
                else:
                    self._send(200, value)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        serving.in_thread(self.server)

    def stop(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--eni-id", required=True)
    parser.add_argument("--instance-id", required=True)
    parser.add_argument("--lifecycle-file", type=Path, required=True,
                        help="autoscaling/target-lifecycle-state is this file's text (no file: 404)")
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    imds = FakeImds(args.eni_id, args.instance_id, port=args.port, lifecycle_file=args.lifecycle_file)
    print(f"IMDS stand-in for {args.instance_id} at {imds.url}", flush=True)
    stop.wait()
    imds.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
