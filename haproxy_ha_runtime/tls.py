"""The TLS listeners' certificates: each listener's Secrets Manager secret, fetched (its current
version only), checked and written for HAProxy, and polled for a new version.

The secret's value is a SecretString holding a JSON object:

    {"certificate": "-----BEGIN CERTIFICATE-----...", "private_key": "-----BEGIN PRIVATE KEY-----...",
     "chain": "-----BEGIN CERTIFICATE-----..."}

`certificate` and `private_key` (unencrypted PEM, RSA or ECDSA) are required and must match;
`chain` (the intermediate certificates, PEM) is optional.  A version that is not such an object
is refused for that listener alone: the listener keeps serving the version it had (or, with none,
is left out of haproxy.cfg), and `problems` says why.  No key, and no part of a secret's value,
is ever logged or put in a problem.
"""

from __future__ import annotations

import json
import os
import ssl
import tempfile
from dataclasses import dataclass
from typing import Any

from .config import Listener, NodeConfig, Paths

SECRET_KEYS = ("certificate", "private_key", "chain")
_CERT_BEGIN = "-----BEGIN CERTIFICATE-----"


class InvalidMaterial(ValueError):
    """A secret's value is not a certificate and key that HAProxy could serve.  The message never
    holds any part of the value."""


def bundle(value: str) -> str:
    """The PEM file HAProxy serves (certificate, chain, key) for a secret's SecretString.  Raises
    InvalidMaterial when it is not the JSON object the module docstring describes."""
    try:
        doc = json.loads(value)
    except ValueError as e:
        # The parser's message quotes no part of the text (only where it stopped).
        raise InvalidMaterial(f"the SecretString is not JSON ({getattr(e, 'msg', 'bad JSON')})") from None
    if not isinstance(doc, dict):
        raise InvalidMaterial("the SecretString is not a JSON object with certificate and private_key")
    unknown = sorted(set(doc) - set(SECRET_KEYS))
    if unknown:
        raise InvalidMaterial(f"the SecretString has keys other than {', '.join(SECRET_KEYS)}: {', '.join(unknown)}")
    parts = []
    for key in SECRET_KEYS:
        text = doc.get(key)
        if text is None and key == "chain":
            continue
        if not isinstance(text, str) or "-----BEGIN " not in text:
            raise InvalidMaterial(f"{key} is missing or not PEM text")
        parts.append(text.strip() + "\n")
    cert, key = doc["certificate"], doc["private_key"]
    if not cert.lstrip().startswith(_CERT_BEGIN):
        raise InvalidMaterial("certificate does not start with a PEM certificate")
    if "PRIVATE KEY-----" not in key or "ENCRYPTED" in key:
        raise InvalidMaterial("private_key is not an unencrypted PEM private key")
    if doc.get("chain") is not None and not doc["chain"].lstrip().startswith(_CERT_BEGIN):
        raise InvalidMaterial("chain is not PEM certificates")
    # HAProxy reads the leaf certificate first, then the chain, then the key.
    return parts[0] + (parts[2] if len(parts) == 3 else "") + parts[1]


def _no_password() -> bytes:
    raise InvalidMaterial("private_key is encrypted")


def check_bundle(path: str) -> None:
    """Does OpenSSL load the bundle at `path` as a certificate with its own key?  Raises
    InvalidMaterial (OpenSSL's reason, which quotes no key) if not."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(path, password=_no_password)
    except ssl.SSLError as e:
        reason = e.reason or str(e.args[-1] if e.args else "unknown")
        if reason in ("KEY_VALUES_MISMATCH", "X509_CHECK_PRIVATE_KEY") or "mismatch" in reason.lower():
            raise InvalidMaterial("private_key does not belong to certificate") from None
        raise InvalidMaterial(f"OpenSSL cannot load the certificate and key ({reason})") from None


@dataclass
class SecretState:
    """What this node knows of one TLS listener's secret: the version last looked at, the version
    it serves (None: none, the listener is left out), and why the last one was refused.  When the
    listener moved to `secret` from another, the bundle of that other one (`served_secret`, version
    `served`) serves until `secret`'s current version is read and checked."""

    secret: str
    version: str | None = None
    served: str | None = None
    problem: str | None = None
    served_secret: str | None = None

    def serving(self) -> str:
        """What a problem adds about the certificate that still serves, if one does."""
        if self.served is None:
            return ""
        of = f"secret {self.served_secret} " if self.served_secret else ""
        return f"; still serving {of}version {self.served}"


class TlsStore:
    """Each TLS listener's certificate bundle under `paths.tls_dir`, kept at its secret's current
    version.  What it knows is kept in `<listener>.json` beside each bundle, so that a restarted
    agent does not fetch (and reload) again what boot already fetched."""

    def __init__(self, client: Any, paths: Paths) -> None:
        self.client = client
        self.paths = paths
        self.states: dict[str, SecretState] = {}
        if os.path.isdir(paths.tls_dir):
            for name in os.listdir(paths.tls_dir):
                if name.endswith(".json"):
                    try:
                        with open(os.path.join(paths.tls_dir, name), encoding="utf-8") as f:
                            self.states[name[:-5]] = SecretState(**json.load(f))
                    except (OSError, ValueError, TypeError):
                        continue

    def problems(self, cfg: NodeConfig) -> dict[str, str]:
        """Each TLS listener whose secret's current version this node refused, and why."""
        return {lst.name: state.problem for lst in _tls_listeners(cfg)
                if (state := self.states.get(lst.name)) is not None and state.problem is not None}

    def left_out(self, cfg: NodeConfig) -> dict[str, str]:
        """The TLS listeners that have no certificate to serve, and why: render leaves them out."""
        out = {}
        for lst in _tls_listeners(cfg):
            state = self.states.get(lst.name)
            if state is None or state.served is None or not os.path.exists(self.paths.tls_bundle(lst.name)):
                out[lst.name] = (state.problem if state is not None and state.problem
                                 else "its secret has not been read yet")
        return out

    def refresh(self, cfg: NodeConfig) -> bool:
        """Bring every TLS listener's bundle to its secret's current version.  True when a bundle
        changed (HAProxy must reload to serve it)."""
        os.makedirs(self.paths.tls_dir, mode=0o700, exist_ok=True)
        changed = False
        listeners = _tls_listeners(cfg)
        for lst in listeners:
            changed = self._refresh_one(lst) or changed
        wanted = {lst.name for lst in listeners}
        for name in sorted(set(self.states) - wanted):
            del self.states[name]
            for path in (self.paths.tls_bundle(name), self._state_path(name)):
                if os.path.exists(path):
                    os.unlink(path)
        return changed

    def _refresh_one(self, lst: Listener) -> bool:
        assert lst.tls is not None
        secret = lst.tls.secret
        state = self.states.get(lst.name)
        if state is None or state.secret != secret:
            # A new secret for this listener: what it serves came from another one, and serves on
            # until the new one's certificate is read and checked (a bad or unreadable new secret
            # must not take the listener off the node).
            before = state
            served_secret = (before.served_secret or before.secret) if before is not None and before.served else None
            state = SecretState(secret=secret, served=before.served if before is not None and served_secret else None,
                                served_secret=served_secret)
            self.states[lst.name] = state
        serving = state.serving()
        try:
            version = _current_version(self.client.describe_secret(SecretId=secret))
            if version is None:
                raise InvalidMaterial("the secret has no AWSCURRENT version")
            if version == state.version:
                if state.served == version and state.served_secret is None and state.problem is not None:
                    state.problem = None  # the secret answers again
                    self._save(lst.name, state)
                return False
            value = self.client.get_secret_value(SecretId=secret, VersionId=version)
        except InvalidMaterial as e:
            state.problem = f"secret {secret}: {e}{serving}"
            self._save(lst.name, state)
            return False
        except Exception as e:  # AccessDenied, not found, the endpoint does not answer: try again later
            state.problem = f"secret {secret}: cannot read it: {_error(e)}{serving}"
            self._save(lst.name, state)
            return False
        state.version = version
        try:
            if "SecretString" not in value:
                raise InvalidMaterial("the secret holds SecretBinary, not a SecretString")
            self._write_bundle(lst.name, bundle(value["SecretString"]))
        except InvalidMaterial as e:
            state.problem = f"secret {secret} version {version}: {e}{serving}"
            self._save(lst.name, state)
            return False
        state.served, state.served_secret, state.problem = version, None, None
        self._save(lst.name, state)
        return True

    def _write_bundle(self, listener: str, text: str) -> None:
        """Write the bundle (mode 0600 from the start), check it with OpenSSL, and only then put it
        where HAProxy reads it."""
        fd, tmp = tempfile.mkstemp(prefix=f".{listener}-", suffix=".pem", dir=self.paths.tls_dir)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            check_bundle(tmp)
            os.replace(tmp, self.paths.tls_bundle(listener))
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _state_path(self, listener: str) -> str:
        return f"{self.paths.tls_dir}/{listener}.json"

    def _save(self, listener: str, state: SecretState) -> None:
        tmp = self._state_path(listener) + ".new"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(state.__dict__, f)
        os.replace(tmp, self._state_path(listener))


def _tls_listeners(cfg: NodeConfig) -> list[Listener]:
    return [lst for lst in cfg.listeners if lst.tls is not None]


def _current_version(described: dict[str, Any]) -> str | None:
    for version, stages in (described.get("VersionIdsToStages") or {}).items():
        if "AWSCURRENT" in stages:
            return str(version)
    return None


def _error(e: Exception) -> str:
    """An AWS error's code and message (they never hold a secret's value)."""
    response = getattr(e, "response", None)
    if isinstance(response, dict) and "Error" in response:
        err = response["Error"]
        return f"{err.get('Code')}: {err.get('Message')}"
    return f"{type(e).__name__}: {e}"


def make_client(cfg: NodeConfig) -> Any:
    """A Secrets Manager client for the node's region (its endpoint: boto3's own settings, or
    AWS_ENDPOINT_URL_SECRETS_MANAGER where a test stands in for it)."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "secretsmanager", region_name=cfg.region,
        config=Config(retries={"mode": "standard", "total_max_attempts": 3}, connect_timeout=2, read_timeout=5))
