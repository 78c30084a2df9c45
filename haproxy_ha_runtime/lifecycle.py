"""A node's life in its Auto Scaling group of one: say when it is ready (CloudFormation signal),
leave gracefully when it is about to be terminated (hand over, drain, complete the lifecycle
hook), and ask to be replaced when its HAProxy cannot be recovered."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Callable

from botocore.exceptions import ClientError

from . import haproxy_stats, peer, routes
from .config import NodeConfig

# The termination hook holds a leaving instance for its drain_timeout plus this: the hand-over's
# time.  The construct sets the hook's heartbeat timeout from it; the agent hands over within it,
# less COMPLETE_SLACK_S to complete the hook before the group stops waiting.
HANDOVER_MARGIN_S = 60
COMPLETE_SLACK_S = 5
# What IMDS says in autoscaling/target-lifecycle-state when the group is terminating us.
TERMINATED = "Terminated"


def requests_in_flight(socket_path: str, backends: Iterable[str], timeout_s: float = 2.0) -> int:
    """Requests in flight now, from HAProxy's `show stat`: for each of the listeners' backends,
    the sessions at its servers and those queued for one.  An idle keep-alive connection is no
    request in flight: it holds a front-end session, but no back-end one (HTTP), so it cannot
    hold up a drain.  In TCP mode each connection is both."""
    names = set(backends)
    rows = haproxy_stats.parse_stat(haproxy_stats.query(socket_path, "show stat -1 2 -1", timeout_s),
                                    need=("pxname", "svname", "scur", "qcur"))
    total = 0
    for row in rows:
        if row["svname"] == "BACKEND" and row["pxname"] in names:
            total += int(row.get("scur") or 0) + int(row.get("qcur") or 0)
    return total


def drain(sessions: Callable[[], int], timeout_s: float, poll_s: float = 0.2) -> tuple[bool, float]:
    """Wait until no request is in flight, or `timeout_s`; returns (drained, seconds waited)."""
    start = time.monotonic()
    while True:
        try:
            if sessions() == 0:
                return True, time.monotonic() - start
        except OSError:
            return True, time.monotonic() - start  # HAProxy is gone: nothing left to drain
        if time.monotonic() - start >= timeout_s:
            return False, time.monotonic() - start
        time.sleep(poll_s)


def ready_problems(own: peer.PeerView, peer_view: peer.PeerView | None, peer_replaced: bool,
                   ec2_ok: bool, not_served: Mapping[str, str] | None = None) -> list[str]:
    """What still keeps this node from being ready (empty: ready).  Ready means: the config was
    accepted (the caller got this far), HAProxy answers, keepalived is BACKUP or MASTER, the peer
    is heard unless it is being replaced, a read-only EC2 call works with our credentials, and
    every listener the document names is served (`not_served`: the TLS listeners left out, and
    why: a node that would serve without them is not what the deploy asked for)."""
    problems = [f"TLS listener {name} is not served: {why}" for name, why in sorted((not_served or {}).items())]
    if own.reach != peer.REACHED:
        problems.append(f"the agent does not answer at /state ({own.reach})")
    else:
        if own.healthy is not True:
            problems.append("HAProxy does not answer its health check")
        if own.vrrp not in ("BACKUP", "MASTER"):
            problems.append(f"keepalived is {own.vrrp}, not BACKUP or MASTER")
    if peer_view is not None and not peer_replaced and peer_view.reach != peer.REACHED:
        problems.append(f"the peer is not heard ({peer_view.reach})")
    if not ec2_ok:
        problems.append("a read-only EC2 call with this node's credentials failed")
    return problems


def ec2_works(cfg: NodeConfig, client: Any) -> bool:
    """Can this node read its route tables (the call a take-over needs first)?"""
    try:
        routes.describe_vip_routes(client, cfg.vip, cfg.route_table_ids)
        return True
    except Exception:
        return False


def peer_being_replaced(client: Any, peer_eni: str | None) -> bool:
    """Is the peer's ENI without a running instance (its group is replacing it)?"""
    if peer_eni is None:
        return True
    owner = routes.eni_owners(client, [peer_eni]).get(peer_eni)
    return owner is None or owner.instance_state != "running"


def signal(cfn: Any, cfg: NodeConfig, instance_id: str, success: bool) -> bool:
    """Tell CloudFormation whether this instance came up (the group's creation and update
    policies wait for it).  Returns False when nobody was waiting: outside a deploy (the group
    replaced a node by itself, or the node rebooted) CloudFormation refuses the signal with a
    ValidationError, and that is no failure of the node."""
    if cfg.cfn_stack is None or cfg.cfn_resource is None:
        return False
    try:
        cfn.signal_resource(StackName=cfg.cfn_stack, LogicalResourceId=cfg.cfn_resource, UniqueId=instance_id,
                            Status="SUCCESS" if success else "FAILURE")
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") == "ValidationError":
            return False
        raise
    return True


def complete_termination(autoscaling: Any, cfg: NodeConfig, instance_id: str) -> None:
    """Let the group terminate this instance now (CONTINUE the termination hook)."""
    autoscaling.complete_lifecycle_action(
        LifecycleHookName=cfg.lifecycle_hook, AutoScalingGroupName=cfg.auto_scaling_group,
        InstanceId=instance_id, LifecycleActionResult="CONTINUE")


def report_unhealthy(autoscaling: Any, instance_id: str) -> None:
    """Ask the group to replace this instance: its HAProxy could not be recovered."""
    autoscaling.set_instance_health(InstanceId=instance_id, HealthStatus="Unhealthy",
                                    ShouldRespectGracePeriod=False)


@dataclass(frozen=True)
class Platform:
    """What the agent asks of the instance and of AWS besides EC2: its instance ID and the
    group's plan for it (IMDS), and clients for other services.  Tests stand in for each."""

    instance_id: Callable[[], str]
    lifecycle_state: Callable[[], str | None]
    client: Callable[[str], Any]


def aws_platform(cfg: NodeConfig) -> Platform:
    """IMDSv2 and boto3 clients (their endpoints from boto3's own settings)."""
    import boto3
    from botocore.config import Config

    from .imds import Imds, ImdsError

    imds = Imds()
    session = boto3.session.Session()
    config = Config(retries={"mode": "standard", "total_max_attempts": 5}, connect_timeout=2, read_timeout=10)

    def lifecycle_state() -> str | None:
        try:
            return imds.get("autoscaling/target-lifecycle-state")
        except ImdsError:
            return None  # not in a group (yet): IMDS answers 404

    def client(service: str) -> Any:
        return session.client(service, region_name=cfg.region, config=config)  # type: ignore[call-overload]

    return Platform(instance_id=lambda: imds.get("instance-id"), lifecycle_state=lifecycle_state, client=client)
