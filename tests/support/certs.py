"""Test certificates, made with the openssl command line in the test that needs them (no key is
ever committed): a CA, server certificates it signs, and the Secrets Manager value for one."""

from __future__ import annotations

import hashlib
import json
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Cert:
    """A certificate and its key, as PEM files."""

    cert: Path
    key: Path

    def secret_string(self, chain: Path | None = None) -> str:
        """The SecretString a TLS listener's secret holds (haproxy_ha_runtime.tls)."""
        value = {"certificate": self.cert.read_text(), "private_key": self.key.read_text()}
        if chain is not None:
            value["chain"] = chain.read_text()
        return json.dumps(value)

    def bundle(self) -> str:
        """What HAProxy serves: the certificate, then the key."""
        return self.cert.read_text() + self.key.read_text()

    def fingerprint(self) -> str:
        """The certificate's SHA-256 fingerprint (hex, of its DER form): what a TLS client that
        was served it can compare (fingerprint_of)."""
        return fingerprint_of(ssl.PEM_cert_to_DER_cert(self.cert.read_text()))


def fingerprint_of(der: bytes) -> str:
    """The SHA-256 fingerprint (hex) of a certificate in DER form, as a TLS peer presents it."""
    return hashlib.sha256(der).hexdigest()


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_ca(folder: Path, name: str = "haproxy-ha test CA") -> Cert:
    """A self-signed CA (EC P-256, one day)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = Cert(folder / "ca.pem", folder / "ca.key")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
             "-subj", f"/CN={name}", "-keyout", str(ca.key), "-out", str(ca.cert),
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    return ca


def make_server_cert(ca: Cert, folder: Path, stem: str, ip: str | None = None, dns: str | None = None) -> Cert:
    """A server certificate for `ip` and/or `dns`, signed by `ca` (EC P-256, one day)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = Cert(folder / f"{stem}.pem", folder / f"{stem}.key")
    csr = folder / f"{stem}.csr"
    names = [f"IP:{ip}"] if ip else []
    names += [f"DNS:{dns}"] if dns else []
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj",
             f"/CN={dns or ip or stem}", "-keyout", str(out.key), "-out", str(csr))
    ext = folder / f"{stem}.ext"
    ext.write_text(f"subjectAltName={','.join(names or ['DNS:' + stem])}\nextendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key), "-CAcreateserial",
             "-days", "1", "-out", str(out.cert), "-extfile", str(ext))
    return out
