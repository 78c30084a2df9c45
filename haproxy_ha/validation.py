"""Synth-time checks of HaproxyHa props: every problem is collected and reported in one error."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aws_cdk import Token

from haproxy_ha.listener import Listener, split_backend
from haproxy_ha_runtime.config import HOST_RE, NAME_RE, PATH_RE, PROFILES, RTB_RE

# The node runtime checks the document with the same patterns and profiles: one source for both.
TIMING_PROFILES = tuple(PROFILES)


class HaproxyHaPropsError(ValueError):
    """HaproxyHa was given props it cannot build.  `problems` lists every one of them."""

    def __init__(self, construct_path: str, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join("  - " + p for p in self.problems)
        super().__init__(f"HaproxyHa {construct_path}: {len(self.problems)} invalid prop(s):\n{lines}")


@dataclass
class Problems:
    """Collects problems as `prop: got X; allowed: Y` lines."""

    items: list[str] = field(default_factory=list)

    def bad(self, prop: str, value: Any, allowed: str) -> None:
        self.items.append(f"{prop}: got {value!r}; allowed: {allowed}")

    def add(self, line: str) -> None:
        self.items.append(line)


def is_token(value: Any) -> bool:
    return isinstance(value, str) and Token.is_unresolved(value)


def parse_vip(problems: Problems, vip: Any) -> ipaddress.IPv4Address | None:
    """The VIP as an address, or None after recording why it is not one."""
    if is_token(vip):
        problems.bad("vip", vip, "a literal IPv4 address known at synth time, not a token")
        return None
    try:
        addr = ipaddress.IPv4Address(vip)
    except (ipaddress.AddressValueError, ValueError, TypeError):
        problems.bad("vip", vip, "a single IPv4 address such as 192.168.254.10 (no prefix length)")
        return None
    if (addr.is_multicast or addr.is_unspecified or addr.is_loopback or addr.is_link_local
            or addr.is_reserved or addr == ipaddress.IPv4Address("255.255.255.255")):
        problems.bad("vip", vip, "a unicast IPv4 address (not loopback, link-local, multicast, reserved or 0.0.0.0)")
        return None
    return addr


def check_vip_outside(problems: Problems, vip: ipaddress.IPv4Address, cidrs: Sequence[tuple[str, str]]) -> None:
    """`cidrs` are (where it comes from, CIDR) pairs; tokens were filtered out by the caller."""
    for source, cidr in cidrs:
        try:
            net = ipaddress.IPv4Network(cidr, strict=False)
        except (ipaddress.AddressValueError, ipaddress.NetmaskValueError, ValueError):
            continue  # reported where that CIDR is checked
        if vip in net:
            problems.add(
                f"vip: got {str(vip)!r}, which lies inside {source} {cidr}; "
                "allowed: an address outside every VPC CIDR (the VIP is an overlay address)"
            )


def check_cidrs(problems: Problems, prop: str, cidrs: Sequence[str]) -> None:
    for i, cidr in enumerate(cidrs):
        if is_token(cidr):
            continue
        try:
            ipaddress.IPv4Network(cidr, strict=True)
        except (ipaddress.AddressValueError, ipaddress.NetmaskValueError, ValueError, TypeError):
            problems.bad(f"{prop}[{i}]", cidr, "an IPv4 CIDR such as 10.0.0.0/16, with no host bits set")


def check_port(problems: Problems, prop: str, port: Any) -> bool:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        problems.bad(prop, port, "a whole number from 1 to 65535")
        return False
    return True


def check_listeners(problems: Problems, listeners: Sequence[Listener], stats_port: Any) -> None:
    if not listeners:
        problems.bad("listeners", list(listeners), "at least one Listener")
        return
    ports: dict[int, str] = {}
    names: dict[str, str] = {}
    for i, lst in enumerate(listeners):
        where = f"listeners[{i}]"
        if not isinstance(lst, Listener):
            problems.bad(where, lst, "a haproxy_ha.Listener")
            continue
        if check_port(problems, where + ".port", lst.port):
            if lst.port in ports:
                problems.bad(where + ".port", lst.port, f"a port no other listener uses ({ports[lst.port]} has it)")
            else:
                ports[lst.port] = where
            if lst.port == stats_port:
                problems.bad(where + ".port", lst.port, f"a port other than stats_port {stats_port}")
        if lst.mode not in ("http", "tcp"):
            problems.bad(where + ".mode", lst.mode, "'http' or 'tcp'")
        if lst.name is not None and (not isinstance(lst.name, str) or not NAME_RE.match(lst.name)):
            problems.bad(where + ".name", lst.name, "1-32 lower-case letters, digits or '-', starting with one "
                                                    "of the first two")
        name = lst.resolved_name
        if isinstance(name, str):
            if name in names:
                problems.bad(where + ".name", name, f"a name no other listener uses ({names[name]} has it)")
            names[name] = where
        if not isinstance(lst.check_path, str) or not PATH_RE.match(lst.check_path):
            problems.bad(where + ".check_path", lst.check_path, "an absolute URL path such as /healthz, no spaces")
        if lst.static_reply is not None:
            if (not isinstance(lst.static_reply, str) or not lst.static_reply
                    or '"' in lst.static_reply or "\n" in lst.static_reply):
                problems.bad(where + ".static_reply", lst.static_reply,
                             "a non-empty one-line text without double quotes")
            if lst.mode != "http":
                problems.bad(where + ".static_reply", lst.static_reply, "only on a listener with mode 'http'")
        check_backends(problems, where, lst)


def check_backends(problems: Problems, where: str, lst: Listener) -> None:
    if isinstance(lst.backends, str) or not isinstance(lst.backends, (list, tuple)):
        problems.bad(where + ".backends", lst.backends, 'a sequence of "host:port" strings')
        return
    if not lst.backends and lst.static_reply is None:
        problems.bad(where + ".backends", list(lst.backends),
                     'at least one "host:port" backend, or a static_reply instead')
    for j, backend in enumerate(lst.backends):
        bw = f"{where}.backends[{j}]"
        parts = split_backend(backend) if isinstance(backend, str) else None
        if parts is None:
            problems.bad(bw, backend, '"host:port", e.g. "10.0.2.15:8080" or "app.internal:80"')
            continue
        host, port = parts
        if not HOST_RE.match(host):
            problems.bad(bw, backend, "a host that is an IPv4 address or a DNS name, then :port")
        if not 1 <= port <= 65535:
            problems.bad(bw, backend, "a port from 1 to 65535 after the ':'")


def check_route_table_ids(problems: Problems, prop: str, ids: Sequence[str]) -> None:
    for i, rtb in enumerate(ids):
        if is_token(rtb):
            continue
        if not isinstance(rtb, str) or not RTB_RE.match(rtb):
            problems.bad(f"{prop}[{i}]", rtb, "a route table ID such as rtb-0123456789abcdef0")
