"""The `Listener` prop type: one HAProxy front end on the VIP and the backends it sends to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


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
