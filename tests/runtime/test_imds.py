"""The IMDSv2 client against a stand-in metadata server on loopback."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from haproxy_ha_runtime.imds import Imds, ImdsError


class FakeImds:
    def __init__(self) -> None:
        self.tokens_issued = 0
        self.requests: list[tuple[str, str, dict[str, str]]] = []
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
                self._send(200, f"token-{fake.tokens_issued}")

            def do_GET(self) -> None:
                fake.requests.append(("GET", self.path, {k.lower(): v for k, v in self.headers.items()}))
                if self.headers.get("X-aws-ec2-metadata-token") != f"token-{fake.tokens_issued}":
                    self._send(401, "")  # IMDSv2 only: no token, no answer
                elif self.path == "/latest/meta-data/mac":
                    self._send(200, "0a:1b:2c:3d:4e:5f")
                elif self.path == "/latest/meta-data/network/interfaces/macs/0a:1b:2c:3d:4e:5f/interface-id":
                    self._send(200, "eni-0123456789abcdef0")
                else:
                    self._send(404, "")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def imds() -> Iterator[FakeImds]:
    fake = FakeImds()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def test_reads_the_primary_eni_with_a_session_token(imds: FakeImds) -> None:
    client = Imds(imds.url)
    assert client.primary_eni_id() == "eni-0123456789abcdef0"
    put = [r for r in imds.requests if r[0] == "PUT"]
    assert len(put) == 1 and put[0][2]["x-aws-ec2-metadata-token-ttl-seconds"] == "21600"


def test_token_is_renewed_before_it_expires(imds: FakeImds) -> None:
    now = [1000.0]
    client = Imds(imds.url, ttl_s=120, clock=lambda: now[0])
    client.get("mac")
    now[0] += 30
    client.get("mac")
    assert imds.tokens_issued == 1
    now[0] += 40  # 70 s into a 120 s token: inside the renewal margin
    client.get("mac")
    assert imds.tokens_issued == 2


def test_fails_clearly_when_imds_is_unreachable() -> None:
    with pytest.raises(ImdsError, match=r"IMDSv2 token request to http://127\.0\.0\.1:9 failed"):
        Imds("http://127.0.0.1:9", timeout_s=0.5).primary_eni_id()


def test_fails_when_ttl_is_out_of_range() -> None:
    with pytest.raises(ValueError, match="ttl_s: got 0; allowed: 1 to 21600 seconds"):
        Imds(ttl_s=0)
