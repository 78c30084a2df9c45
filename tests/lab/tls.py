"""The lab's TLS listener (`LabOptions(tls=True)`; `lab tls=on` in a script): a CA and server
certificates made with openssl in the run, the certificate kept as a Secrets Manager secret in the
lab's moto, and a listener on port 443 of both nodes that terminates TLS with it.

    with Lab(workdir, LabOptions(tls=True)) as lab:
        lab.tls.url            # https://203.0.113.10/: the VIP's TLS listener
        lab.tls.cafile         # the lab CA, to verify what the VIP serves
        lab.tls.rotate()       # a new version of the secret: the next certificate, same CA
        lab.tls.served("a")    # the number of the certificate node a's HAProxy serves now

What the nodes run is what ships: their documents name the secret in the listener's `tls`
object, `render` fetches it at boot, and each agent asks for its version every POLL_S (the
document's `tls_poll_s`) through AWS_ENDPOINT_URL_SECRETS_MANAGER, which points at moto.

The certificates are numbered in the order they are made: 1 at start, then one more for each
`rotate()` and `put_untrusted()`.  Each names the VIP's address and DNS_NAME, and lives one day.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3

from tests.support.certs import Cert, fingerprint_of, make_ca, make_server_cert

from . import topology

PORT = 443
LISTENER = "https"
SECRET = "haproxy-ha-lab/https"
# The certificates' DNS name, beside the VIP's address (a client may verify either).
DNS_NAME = "lb.lab.internal"
# How often the agents ask for the secret's version here (60 s by default).
POLL_S = 1.0
# What each version of the secret holds.
GOOD, BAD, UNTRUSTED = "good", "bad", "untrusted"


def listener(backends: list[dict[str, Any]]) -> dict[str, Any]:
    """The TLS listener of the nodes' documents: HTTP on PORT, with these backends."""
    return {"name": LISTENER, "port": PORT, "mode": "http", "check_path": "/",
            "backends": [dict(b) for b in backends], "tls": {"secret": SECRET}}


@dataclass(frozen=True)
class Version:
    """One version of the secret: its ID, what it holds, and the number of its certificate (a
    BAD version holds certificate `cert` with a key that does not belong to it)."""

    version_id: str
    kind: str
    cert: int


class LabTls:
    """The certificates and the secret of one lab run, under `folder`."""

    def __init__(self, folder: Path, vip: str, endpoint_url: str, region: str) -> None:
        self.folder = folder
        self.vip = vip
        self._endpoint_url = endpoint_url
        self._region = region
        self.ca: Cert | None = None
        # Certificate N is certs[N - 1].
        self.certs: list[Cert] = []
        self.versions: list[Version] = []
        self._client: Any = None

    @property
    def url(self) -> str:
        return f"https://{self.vip}/"

    @property
    def cafile(self) -> Path:
        assert self.ca is not None, "create() first"
        return self.ca.cert

    @property
    def latest(self) -> Version:
        """The secret's current version."""
        return self.versions[-1]

    def create(self) -> Version:
        """Make the CA and certificate 1, and the secret with it (in the router namespace, where
        moto runs)."""
        self.ca = make_ca(self.folder, "haproxy-ha lab CA")
        with topology.entered(topology.ROUTER):
            self._client = boto3.session.Session(aws_access_key_id="lab", aws_secret_access_key="lab").client(
                "secretsmanager", region_name=self._region, endpoint_url=self._endpoint_url)
            cert = self._next_cert(self.ca)
            version = self._client.create_secret(Name=SECRET, SecretString=cert.secret_string())["VersionId"]
        return self._record(version, GOOD)

    def rotate(self) -> Version:
        """A new version: the next certificate, from the lab CA."""
        assert self.ca is not None, "create() first"
        self._next_cert(self.ca)
        return self._put(self.certs[-1].secret_string(), GOOD)

    def put_bad(self) -> Version:
        """A new version that no node may serve: the current certificate with another key."""
        assert self.ca is not None, "create() first"
        other = make_server_cert(self.ca, self.folder, f"stray-key-{len(self.versions)}", ip=self.vip)
        current = self.certs[-1]
        return self._put(Cert(current.cert, other.key).secret_string(), BAD)

    def put_untrusted(self) -> Version:
        """A new version the nodes accept (a certificate with its own key), from a CA the lab's
        clients do not trust: they must refuse it."""
        stranger = make_ca(self.folder / f"stranger-{len(self.certs) + 1}", "not the lab CA")
        self._next_cert(stranger)
        return self._put(self.certs[-1].secret_string(), UNTRUSTED)

    def number_of(self, fingerprint: str | None) -> int | None:
        """The number of the certificate with this fingerprint (None: not one of the lab's)."""
        return next((i + 1 for i, c in enumerate(self.certs) if c.fingerprint() == fingerprint), None)

    def served(self, node: str, timeout_s: float = 1.0) -> int | None:
        """The number of the certificate node's HAProxy serves on PORT now, asked on the node's
        loopback (that node alone, whoever holds the VIP); None when no handshake completes, 0
        for a certificate that is not the lab's.  It does not verify: it asks what is served,
        trusted or not."""
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        try:
            with topology.entered(topology.NODES[node].namespace):
                raw = socket.create_connection(("127.0.0.1", PORT), timeout=timeout_s)
            with raw, context.wrap_socket(raw, server_hostname=self.vip) as tls:
                der = tls.getpeercert(binary_form=True)
        except OSError:
            return None
        return (self.number_of(fingerprint_of(der)) or 0) if der else None

    def ask(self, timeout_s: float = 1.0) -> dict[str, Any] | None:
        """One GET of `url` from the client namespace, verified against the lab CA: the node that
        answered, the certificate's number and the X-Forwarded-Proto the backend saw; None when
        it fails (verification included)."""
        context = ssl.create_default_context(cafile=str(self.cafile))
        with topology.entered(topology.CLIENT):
            conn = http.client.HTTPSConnection(self.vip, PORT, timeout=timeout_s, context=context)
            try:
                conn.connect()  # the socket opens in the client namespace, and stays there
            except OSError:
                conn.close()
                return None
        try:
            conn.request("GET", "/")
            resp = conn.getresponse()
            resp.read()
            assert conn.sock is not None
            der = conn.sock.getpeercert(binary_form=True)
            if resp.status != 200:
                return None
            return {"node": resp.getheader("X-Haproxy-Node"), "cert": self.number_of(fingerprint_of(der or b"")),
                    "proto": resp.getheader("X-Seen-Proto")}
        except (OSError, http.client.HTTPException):
            return None
        finally:
            conn.close()

    def _next_cert(self, ca: Cert) -> Cert:
        n = len(self.certs) + 1
        cert = make_server_cert(ca, self.folder, f"server-{n}", ip=self.vip, dns=DNS_NAME)
        self.certs.append(cert)
        return cert

    def _put(self, value: str, kind: str) -> Version:
        with topology.entered(topology.ROUTER):
            version = self._client.put_secret_value(SecretId=SECRET, SecretString=value)["VersionId"]
        return self._record(version, kind)

    def _record(self, version_id: str, kind: str) -> Version:
        version = Version(str(version_id), kind, len(self.certs))
        self.versions.append(version)
        return version
