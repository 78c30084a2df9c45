"""Builds the node config document (see haproxy_ha_runtime.config) that the construct puts in user data."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from haproxy_ha.listener import Listener, split_backend
from haproxy_ha_runtime.config import SCHEMA_VERSION


@dataclass(frozen=True)
class NodeAddress:
    """What one node's config document says about a node: its name, ENI and primary IP (tokens allowed)."""

    name: str
    eni_id: str
    ip: str


def listener_document(listener: Listener, node_name: str) -> dict[str, Any]:
    """One entry of the document's `listeners` list.  Backend names are `srv1`, `srv2`, ..."""
    backends: list[dict[str, Any]] = []
    for i, backend in enumerate(listener.backends):
        parts = split_backend(backend)
        if parts is None:  # validation has already refused it; keep the builder total
            continue
        backends.append({"name": f"srv{i + 1}", "host": parts[0], "port": parts[1]})
    reply = listener.static_reply.replace("{node}", node_name) if listener.static_reply is not None else None
    return {
        "name": listener.resolved_name,
        "port": listener.port,
        "mode": listener.mode,
        "backends": backends,
        "check_path": listener.check_path,
        "static_reply": reply,
    }


def node_config_document(
    *,
    me: NodeAddress,
    peers: Sequence[NodeAddress],
    vip: str,
    route_table_ids: Sequence[str],
    region: str,
    vpc_id: str,
    priority: int,
    preempt: bool,
    virtual_router_id: int,
    profile: str,
    listeners: Sequence[Listener],
    stats_port: int,
) -> dict[str, Any]:
    """The document for node `me`.  `interface` is null: the node finds the interface that holds local_ip."""
    return {
        "version": SCHEMA_VERSION,
        "node_name": me.name,
        "vip": vip,
        "eni_id": me.eni_id,
        "local_ip": me.ip,
        "interface": None,
        "peers": [{"name": p.name, "ip": p.ip, "eni_id": p.eni_id} for p in peers],
        "route_table_ids": list(route_table_ids),
        "region": region,
        "vpc_id": vpc_id,
        "priority": priority,
        "preempt": preempt,
        "virtual_router_id": virtual_router_id,
        "profile": profile,
        "listeners": [listener_document(lst, me.name) for lst in listeners],
        "stats_port": stats_port,
    }
