"""The `Listener` prop type, and how it becomes the `listeners` part of the node config document."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from haproxy_ha_runtime.problems import Problems


@dataclass(frozen=True)
class Listener:
    """A port on the VIP that HAProxy listens on, and where it sends the traffic.

    `backends` are "host:port" strings (an IPv4 address or a DNS name).  A listener with
    `static_reply` answers every HTTP request itself with that text and needs no backend;
    `{node}` in the text is replaced by the name of the node that answered ("a" or "b"),
    which makes failover visible with `curl`.
    """

    port: int
    backends: tuple[str, ...] = ()
    mode: Literal["http", "tcp"] = "http"
    name: str | None = None
    check_path: str = "/"
    static_reply: str | None = None

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
        out.append({
            "name": lst.resolved_name,
            "port": lst.port,
            "mode": lst.mode,
            "backends": _backend_documents(problems, where, lst.backends),
            "check_path": lst.check_path,
            "static_reply": lst.static_reply,
        })
    return out


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
