"""The `Listener` prop type, and how it becomes the `listeners` part of the node config document."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from aws_cdk import Duration, Token
from aws_cdk import aws_secretsmanager as secretsmanager

from haproxy_ha_runtime import config
from haproxy_ha_runtime.config import HealthCheck as _DocumentHealthCheck
from haproxy_ha_runtime.problems import Problems
from haproxy_ha_runtime.tls_policy import DEFAULT_POLICY

_DEFAULT_CHECK = _DocumentHealthCheck()


@dataclass(frozen=True)
class HealthCheck:
    """How HAProxy checks a listener's backend servers, with the fields of an ELB target group's
    health check.  A check runs every `interval` and gets `timeout` to answer once connected (at
    most `interval`); a server is up after `healthy_threshold_count` good checks in a row and
    down after `unhealthy_threshold_count` bad ones.  For `mode="http"`, the check is a GET of
    `path` (default: the listener's `check_path`), good when its status is in
    `healthy_http_codes`, in ELB's syntax ("200", "200,202", "200-299")."""

    interval: Duration = field(default_factory=lambda: Duration.seconds(_DEFAULT_CHECK.interval_s))
    timeout: Duration = field(default_factory=lambda: Duration.seconds(_DEFAULT_CHECK.timeout_s))
    healthy_threshold_count: int = _DEFAULT_CHECK.healthy_threshold
    unhealthy_threshold_count: int = _DEFAULT_CHECK.unhealthy_threshold
    healthy_http_codes: str = _DEFAULT_CHECK.status_codes
    path: str | None = None


@dataclass(frozen=True)
class Listener:
    """A port on the VIP that HAProxy listens on, and where it sends the traffic.

    `backends` are "host:port" strings (an IPv4 address or a DNS name).  A listener with
    `static_reply` answers every HTTP request itself with that text and needs no backend;
    `{node}` in the text is replaced by the name of the node that answered ("a" or "b"),
    which makes failover visible with `curl`.

    With `certificate`, the listener terminates TLS: the secret's SecretString is JSON
    `{"certificate": PEM, "private_key": PEM, "chain": PEM}` (chain optional), which each node
    reads itself (the key never reaches the template or user data), and each node's role may
    read exactly that secret.  `ssl_policy` names the protocol versions and ciphers as the ELB
    security policy of that name does (default: TLS 1.2 and 1.3,
    "ELBSecurityPolicy-TLS13-1-2-2021-06").  `backend_tls` re-encrypts to the servers, without
    verifying their certificates (as an ALB does).  A tcp listener without `certificate` passes
    TLS through untouched.
    """

    port: int
    backends: tuple[str, ...] = ()
    mode: Literal["http", "tcp"] = "http"
    name: str | None = None
    check_path: str = "/"
    static_reply: str | None = None
    health_check: HealthCheck | None = None
    certificate: secretsmanager.ISecret | None = None
    ssl_policy: str = DEFAULT_POLICY
    backend_tls: bool = False

    @property
    def resolved_name(self) -> str:
        """The name HAProxy uses for this listener: `name`, or `port-<port>`."""
        return self.name if self.name is not None else f"port-{self.port}"


def split_backend(backend: str) -> tuple[str, int] | None:
    """Split "host:port" into its parts, or return None if it has no numeric port."""
    host, sep, port = backend.rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    return host, int(port)


def listener_documents(problems: Problems, listeners: Sequence[Any]) -> list[Any]:
    """The document's `listeners` list for these props, for the runtime's `check_listeners`.

    Only what is particular to the props is checked here (each item is a Listener, each backend
    a "host:port" string).  Every other rule is the runtime's; its problems with a backend's
    host or port are reported against the "host:port" prop (`listeners[0].backends[1]`).
    Backend names are `srv1`, `srv2`, ...
    """
    out: list[Any] = []
    for i, lst in enumerate(listeners):
        where = f"listeners[{i}]"
        if not isinstance(lst, Listener):
            problems.bad(where, lst, "a haproxy_ha.Listener")
            continue
        check_path: Any = lst.check_path
        health_check = None
        if lst.health_check is not None:
            health_check, path = _health_check_document(problems, f"{where}.health_check", lst.health_check)
            if path is not None:
                if lst.check_path != "/":
                    problems.bad(f"{where}.health_check.path", path,
                                 f"None when check_path is set (check_path is {lst.check_path!r})")
                problems.alias(f"{where}.check_path", f"{where}.health_check.path", path)
                check_path = path
        out.append({
            "name": lst.resolved_name,
            "port": lst.port,
            "mode": lst.mode,
            "backends": _backend_documents(problems, where, lst.backends),
            "check_path": check_path,
            "static_reply": lst.static_reply,
            "health_check": health_check,
            "tls": _tls_document(problems, where, lst),
        })
    return out


def _tls_document(problems: Problems, where: str, lst: Listener) -> Any:
    """The document's `tls` object for a listener's TLS props (None without a certificate).  A
    secret's ARN that is a token is checked as a name here; `with_secrets` puts the ARN back."""
    if lst.certificate is None:
        for prop, value, unset in (("ssl_policy", lst.ssl_policy, DEFAULT_POLICY), ("backend_tls", lst.backend_tls,
                                                                                    False)):
            if value != unset:
                problems.bad(f"{where}.{prop}", value, "only with a certificate")
        return None
    # jsii interfaces are not runtime-checkable: an ISecret is what has a secret_arn and grant_read.
    if not isinstance(getattr(lst.certificate, "secret_arn", None), str) or not hasattr(lst.certificate,
                                                                                        "grant_read"):
        problems.bad(f"{where}.certificate", lst.certificate, "a secretsmanager.ISecret, or None")
        return None
    arn = lst.certificate.secret_arn
    problems.alias(f"{where}.tls.policy", f"{where}.ssl_policy", lst.ssl_policy)
    problems.alias(f"{where}.tls.backend_tls", f"{where}.backend_tls", lst.backend_tls)
    return {"secret": "token-secret" if Token.is_unresolved(arn) else arn, "policy": lst.ssl_policy,
            "backend_tls": lst.backend_tls}


def with_secrets(checked: Sequence[config.Listener], listeners: Sequence[Listener]) -> tuple[config.Listener, ...]:
    """The checked listeners, each TLS one naming its certificate's ARN (a token, maybe)."""
    arns = {lst.resolved_name: lst.certificate.secret_arn for lst in listeners if lst.certificate is not None}
    return tuple(dataclasses.replace(lst, tls=dataclasses.replace(lst.tls, secret=arns[lst.name]))
                 if lst.tls is not None and lst.name in arns else lst for lst in checked)


def _seconds(problems: Problems, where: str, value: Any) -> Any:
    """A Duration prop as the document's seconds (anything else as it is, for the runtime's rule)."""
    if not isinstance(value, Duration):
        problems.bad(where, value, "a Duration, such as Duration.seconds(5)")
        return None
    if value.is_unresolved():
        problems.bad(where, value.to_string(), "a Duration known at synth time, not a token")
        return None
    return value.to_milliseconds() / 1000


def _health_check_document(problems: Problems, where: str, check: Any) -> tuple[Any, Any]:
    """The document's `health_check` object for a HealthCheck prop, and its path (or None).
    The runtime's rules check it; their problems name the prop's fields."""
    if not isinstance(check, HealthCheck):
        problems.bad(where, check, "a haproxy_ha.HealthCheck")
        return None, None
    fields = {"interval_s": ("interval", check.interval), "timeout_s": ("timeout", check.timeout),
              "healthy_threshold": ("healthy_threshold_count", check.healthy_threshold_count),
              "unhealthy_threshold": ("unhealthy_threshold_count", check.unhealthy_threshold_count),
              "status_codes": ("healthy_http_codes", check.healthy_http_codes)}
    doc: dict[str, Any] = {}
    for key, (prop, value) in fields.items():
        if key.endswith("_s"):
            if isinstance(value, Duration):
                shown = value.to_string() if value.is_unresolved() else value.to_human_string()
                problems.alias(f"{where}.{key}", f"{where}.{prop}", shown)
            value = _seconds(problems, f"{where}.{prop}", value)
        else:
            problems.alias(f"{where}.{key}", f"{where}.{prop}", value)
        if value is not None:
            doc[key] = value
    return doc, check.path


def _backend_documents(problems: Problems, where: str, backends: Any) -> Any:
    if isinstance(backends, str) or not isinstance(backends, (list, tuple)):
        problems.bad(where + ".backends", backends, 'a sequence of "host:port" strings')
        return []
    out: list[dict[str, Any]] = []
    for j, backend in enumerate(backends):
        bw = f"{where}.backends[{j}]"
        # The document's backends[j] is reported as this prop, once at most.
        problems.alias(bw, bw, backend)
        parts = split_backend(backend) if isinstance(backend, str) else None
        if parts is None:
            problems.bad(bw, backend, '"host:port", e.g. "10.0.2.15:8080" or "app.internal:80"')
        host, port = parts if parts is not None else (None, None)
        out.append({"name": f"srv{j + 1}", "host": host, "port": port})
    return out


def preview_secrets(checked: Sequence[config.Listener]) -> tuple[config.Listener, ...]:
    """The listeners with each secret ARN that is a token replaced by a name, for the synth-time
    preview (the node reads the secret, so the preview needs only a valid name)."""
    return tuple(dataclasses.replace(lst, tls=dataclasses.replace(lst.tls, secret="known-at-deploy"))
                 if lst.tls is not None and Token.is_unresolved(lst.tls.secret) else lst for lst in checked)
