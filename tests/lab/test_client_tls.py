"""The lab's HTTPS client against a TLS server on loopback: it verifies the certificate against the
CA it is given (a failed verification is a failed request), and records which certificate it was
served.  No root: these run with the unit tests."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import ssl
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require
from tests.support import serving
from tests.support.certs import Cert, make_ca, make_server_cert

from . import client


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Cert]:
    require("the openssl command (Debian package openssl)", shutil.which("openssl") is not None)
    folder = tmp_path_factory.mktemp("certs")
    ca = make_ca(folder)
    return {"ca": ca, "loopback": make_server_cert(ca, folder, "loopback", ip="127.0.0.1"),
            "elsewhere": make_server_cert(ca, folder, "elsewhere", dns="elsewhere.internal"),
            "stranger": make_ca(folder / "stranger", "not the lab CA")}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("X-Haproxy-Node", "t")
        self.send_header("X-Seen-Proto", "https")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _TlsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, served: Cert) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(str(served.cert), str(served.key))

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = super().get_request()
        sock.settimeout(2)
        # The handshake runs in the handler's thread (on the first read), not in the accept loop.
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that refuses our certificate ends the handshake: expected here


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[_TlsServer] = []

    def start(served: Cert) -> str:
        server = _TlsServer(served)
        servers.append(server)
        serving.in_thread(server)
        return f"https://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _run(url: str, cafile: Path | None, n: int = 3) -> list[dict[str, Any]]:
    out = io.StringIO()
    asyncio.run(client.run(url, 0.01, n, 5.0, 2.0, out, str(cafile) if cafile else None))
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_verified_answer_records_the_certificate_served(serve: Any, certs: dict[str, Cert]) -> None:
    records = _run(serve(certs["loopback"]), certs["ca"].cert)
    assert len(records) == 3
    for r in records:
        assert r["error"] is None and r["node"] == "t" and r["proto"] == "https"
        assert r["cert"] == certs["loopback"].fingerprint() and r["serial"]


@pytest.mark.parametrize(("served", "ca"), [("loopback", "stranger"), ("elsewhere", "ca")],
                         ids=["another-ca", "another-name"])
def test_a_certificate_that_does_not_verify_is_a_failed_request(serve: Any, certs: dict[str, Cert], served: str,
                                                                ca: str) -> None:
    records = _run(serve(certs[served]), certs[ca].cert)
    assert len(records) == 3
    assert {r["error"] for r in records} == {"SSLCertVerificationError"}
    assert not any(r.get("node") or r.get("cert") for r in records)


def test_an_https_url_needs_a_ca_file_and_a_plain_one_takes_none(certs: dict[str, Cert]) -> None:
    with pytest.raises(ValueError, match="https://HOST"):
        _run("https://127.0.0.1:9/", None)
    with pytest.raises(ValueError, match="with a CA file"):
        _run("http://127.0.0.1:9/", certs["ca"].cert)
