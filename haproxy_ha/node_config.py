"""Builds each node's config document (see haproxy_ha_runtime.config) from the construct's props."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from haproxy_ha_runtime import config
from haproxy_ha_runtime.version import __version__


@dataclass(frozen=True)
class NodeLifecycle:
    """What one node's document says about its Auto Scaling group: the group's name and its
    termination hook (the agent completes it after the hand-over), how long requests in flight
    may drain, and whom to signal when the node is ready (the stack, and the group's logical ID)."""

    auto_scaling_group: str
    lifecycle_hook: str
    drain_timeout_s: float
    cfn_stack: str
    cfn_resource: str


@dataclass(frozen=True)
class NodeMetrics:
    """What one node's document says about its metrics and logs: the pair's name (the Pair
    dimension), whether HAProxy's per-listener metrics are published too, and the prefix of the
    log groups it ships to (haproxy_ha_runtime.shipping)."""

    pair_name: str
    detailed_metrics: bool
    log_group_prefix: str


@dataclass(frozen=True)
class NodeLiveConfig:
    """Where one node's document lives in S3, where the node writes its status beside it, and how
    often it polls the document and its TLS listeners' secrets (see haproxy_ha_runtime.live_config)."""

    config_bucket: str
    config_key: str
    status_key: str
    config_poll_s: float
    tls_poll_s: float


@dataclass(frozen=True)
class NodeAddress:
    """What one node's config document says about a node: its name, ENI and primary IP (tokens allowed)."""

    name: str
    eni_id: str
    ip: str


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
    listeners: Sequence[config.Listener],
    stats_port: int,
    reconciler: str | None = None,
    lifecycle: NodeLifecycle | None = None,
    live: NodeLiveConfig | None = None,
    metrics: NodeMetrics | None = None,
) -> dict[str, Any]:
    """The document for node `me`, with `{node}` in static replies filled in.  `interface` is
    null: the node finds the interface that holds local_ip.  `reconciler` is the function the
    agent invokes to create a missing route (its ARN; a token at synth time).  `lifecycle` names
    the node's group, hook and signal (None: a node in no group); `live` its object in S3 (None: a
    document that is only a file, as in the synth-time preview); `metrics` its pair's name, how
    much it publishes and where its logs go (None: no named pair, nothing ships)."""
    node_listeners = tuple(
        dataclasses.replace(lst, static_reply=lst.static_reply.replace("{node}", me.name))
        if lst.static_reply is not None else lst
        for lst in listeners
    )
    return config.to_document(config.NodeConfig(
        node_name=me.name,
        vip=vip,
        local_ip=me.ip,
        peers=tuple(config.Peer(name=p.name, ip=p.ip, eni_id=p.eni_id) for p in peers),
        route_table_ids=tuple(route_table_ids),
        region=region,
        listeners=node_listeners,
        eni_id=me.eni_id,
        vpc_id=vpc_id,
        reconciler=reconciler,
        **(dataclasses.asdict(lifecycle) if lifecycle is not None else {}),
        **(dataclasses.asdict(live) if live is not None else {}),
        **(dataclasses.asdict(metrics) if metrics is not None else {}),
        priority=priority,
        preempt=preempt,
        virtual_router_id=virtual_router_id,
        profile=profile,
        timing=config.PROFILES[profile],
        stats_port=stats_port,
        release=__version__,
    ))
