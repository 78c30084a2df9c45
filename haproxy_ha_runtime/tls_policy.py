"""The TLS policies a listener may name, after the ELB security policies of the same names: the
protocol versions and ciphers each allows, written out once for the renderer and the checks."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TlsPolicy:
    """What HAProxy's bind line allows: `min_version`..`max_version` (HAProxy's names), the
    TLS 1.2 `ciphers` (OpenSSL names; empty when 1.2 is not allowed) and the TLS 1.3
    `ciphersuites`."""

    min_version: str
    max_version: str
    ciphers: tuple[str, ...]
    ciphersuites: tuple[str, ...]


_TLS13_SUITES = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256")

# As AWS lists them for these ELB policies (forward secrecy only: no RSA key exchange, no SHA-1).
POLICIES: dict[str, TlsPolicy] = {
    "ELBSecurityPolicy-TLS13-1-2-2021-06": TlsPolicy(
        "TLSv1.2", "TLSv1.3",
        ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
         "ECDHE-ECDSA-AES128-SHA256", "ECDHE-RSA-AES128-SHA256",
         "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
         "ECDHE-ECDSA-AES256-SHA384", "ECDHE-RSA-AES256-SHA384"),
        _TLS13_SUITES),
    "ELBSecurityPolicy-TLS13-1-2-Res-2021-06": TlsPolicy(
        "TLSv1.2", "TLSv1.3",
        ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
         "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384"),
        _TLS13_SUITES),
    "ELBSecurityPolicy-TLS13-1-3-2021-06": TlsPolicy("TLSv1.3", "TLSv1.3", (), _TLS13_SUITES),
}
# TLS 1.2 and 1.3, ELB's default for a new HTTPS listener.
DEFAULT_POLICY = "ELBSecurityPolicy-TLS13-1-2-2021-06"
