"""Node health for `haproxy-ha status`: each node's VRRP state, HAProxy health and EC2 API
reachability, read back from the pair's CloudWatch metrics (haproxy_ha_runtime.metrics), with
the age of what was read.  Python 3.9, boto3, no CDK.

CloudWatch keeps the nodes' samples per minute: the latest minute that holds one is what is
shown, and its age is counted from the start of that minute.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from botocore.config import Config

from haproxy_ha_runtime import metrics

PERIOD_S = 60
# How far back to look for a node's latest minute; older than this is "no data".
LOOKBACK_S = 3600
# The VRRP states, in the order a tie between them is broken.
VRRP_STATES = (("MASTER", metrics.VRRP_MASTER), ("BACKUP", metrics.VRRP_BACKUP), ("FAULT", metrics.VRRP_FAULT))
# Health comes second to the routes: a few quick tries, not the route calls' patience.
_CONFIG = Config(retries={"mode": "standard", "total_max_attempts": 3}, connect_timeout=5, read_timeout=10)


@dataclass(frozen=True)
class Reading:
    """One signal of one node: its value in the latest minute that has one, and that minute's age."""

    value: float | None = None
    age_s: float | None = None


@dataclass(frozen=True)
class NodeHealth:
    """What a node's metrics last said: VRRP state ("MASTER", "BACKUP", "FAULT" or None for no
    data), and HAProxy health and EC2 API reachability (1 when every sample of that minute said so)."""

    node: str
    vrrp_state: str | None
    vrrp: Reading
    haproxy_healthy: Reading
    ec2_api_reachable: Reading

    def to_json(self) -> dict[str, Any]:
        """The node's health as `status --json` gives it."""
        return {
            "node": self.node,
            "vrrp": {"state": self.vrrp_state, "age_s": _rounded(self.vrrp.age_s)},
            "haproxy": {"healthy": _flag(self.haproxy_healthy), "age_s": _rounded(self.haproxy_healthy.age_s)},
            "ec2_api": {"reachable": _flag(self.ec2_api_reachable), "age_s": _rounded(self.ec2_api_reachable.age_s)},
        }


def _flag(reading: Reading) -> bool | None:
    return None if reading.value is None else reading.value >= 1


def _rounded(age: float | None) -> int | None:
    return None if age is None else round(age)


def client(session: Any) -> Any:
    """A CloudWatch client on the session's region and endpoint (AWS_ENDPOINT_URL included)."""
    return session.client("cloudwatch", config=_CONFIG)


def published_nodes(cloudwatch: Any, pair: str) -> list[str]:
    """The nodes that published a VRRP state under `pair` (CloudWatch lists two weeks of them)."""
    found = set()
    paginator = cloudwatch.get_paginator("list_metrics")
    for page in paginator.paginate(Namespace=metrics.NAMESPACE, MetricName=metrics.VRRP_MASTER,
                                   Dimensions=[{"Name": metrics.PAIR, "Value": pair}]):
        for metric in page.get("Metrics", []):
            for dim in metric.get("Dimensions", []):
                if dim["Name"] == metrics.NODE:
                    found.add(dim["Value"])
    return sorted(found)


def read(cloudwatch: Any, pair: str, nodes: Sequence[str], now: datetime.datetime | None = None
         ) -> list[NodeHealth]:
    """Each node's health from one GetMetricData call (paged): the average of each VRRP state
    metric, and the minimum of HAProxy health and EC2 API reachability, per minute."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    # Whole minutes, as CloudWatch stores them; the current minute is included.
    end = now.replace(second=0, microsecond=0) + datetime.timedelta(seconds=PERIOD_S)
    start = end - datetime.timedelta(seconds=LOOKBACK_S + PERIOD_S)
    wanted = [(metric, "Average") for _, metric in VRRP_STATES] + [
        (metrics.HAPROXY_HEALTHY, "Minimum"), (metrics.EC2_API_REACHABLE, "Minimum")]
    queries, keys = [], {}
    for i, node in enumerate(nodes):
        for j, (metric, stat) in enumerate(wanted):
            query_id = f"n{i}m{j}"
            keys[query_id] = (node, metric)
            queries.append({"Id": query_id, "ReturnData": True, "MetricStat": {
                "Metric": {"Namespace": metrics.NAMESPACE, "MetricName": metric, "Dimensions": [
                    {"Name": metrics.PAIR, "Value": pair}, {"Name": metrics.NODE, "Value": node}]},
                "Period": PERIOD_S, "Stat": stat}})
    latest: dict[Any, Reading] = {}
    token = None
    while queries:
        kwargs: dict[str, Any] = {"MetricDataQueries": queries, "StartTime": start, "EndTime": end,
                                  "ScanBy": "TimestampDescending"}
        if token:
            kwargs["NextToken"] = token
        answer = cloudwatch.get_metric_data(**kwargs)
        for result in answer.get("MetricDataResults", []):
            points = sorted(zip(result.get("Timestamps", []), result.get("Values", [])), reverse=True)
            key = keys[result["Id"]]
            if points and key not in latest:
                stamp, value = points[0]
                latest[key] = Reading(value=float(value), age_s=max(0.0, (now - stamp).total_seconds()))
        token = answer.get("NextToken")
        if not token:
            break
    return [_node_health(node, latest) for node in nodes]


def _node_health(node: str, latest: dict[Any, Reading]) -> NodeHealth:
    states = [(name, latest.get((node, metric), Reading())) for name, metric in VRRP_STATES]
    present = [(name, r) for name, r in states if r.value is not None]
    if present:
        newest = min(r.age_s or 0.0 for _, r in present)
        # The state the node reported most in its newest minute (a minute with a change holds two).
        candidates = [(name, r) for name, r in present if (r.age_s or 0.0) == newest]
        name, reading = max(candidates, key=lambda c: c[1].value or 0.0)
        state: str | None = name if (reading.value or 0.0) > 0 else None
        vrrp = Reading(value=reading.value, age_s=newest)
    else:
        state, vrrp = None, Reading()
    return NodeHealth(node=node, vrrp_state=state, vrrp=vrrp,
                      haproxy_healthy=latest.get((node, metrics.HAPROXY_HEALTHY), Reading()),
                      ec2_api_reachable=latest.get((node, metrics.EC2_API_REACHABLE), Reading()))


def age_text(age_s: float | None) -> str:
    """'42 s', '7 min', '2 h 5 min'."""
    if age_s is None:
        return "-"
    if age_s < 120:
        return f"{int(age_s)} s"
    minutes = int(age_s // 60)
    return f"{minutes} min" if minutes < 120 else f"{minutes // 60} h {minutes % 60} min"


def rows(health: Sequence[NodeHealth]) -> list[list[str]]:
    """The node table `status` prints: node, VRRP state, HAProxy, EC2 API, each with its age."""
    def cell(text: str, reading: Reading) -> str:
        return "no data" if reading.value is None else f"{text} ({age_text(reading.age_s)} ago)"

    table = []
    for h in health:
        table.append([
            h.node,
            cell(h.vrrp_state or "unknown", h.vrrp),
            cell("healthy" if _flag(h.haproxy_healthy) else "UNHEALTHY", h.haproxy_healthy),
            cell("reachable" if _flag(h.ec2_api_reachable) else "UNREACHABLE", h.ec2_api_reachable),
        ])
    return table
