"""The route Lambda: owns the VIP routes as a CloudFormation custom resource (`on_event`), and
moves routes away from a node that is not running (`reconcile`, on EC2 state-change events and
on a schedule).  All route changes go through haproxy_ha_runtime.routes.
"""

from __future__ import annotations

import json
import os
import urllib.request
from typing import Any

from haproxy_ha_runtime import routes
from haproxy_ha_runtime.log import log_event

_client: Any = None

# How long one reconcile may keep retrying a route move (the function's timeout is longer).
RECONCILE_DEADLINE_S = 20.0


def _ec2() -> Any:
    global _client
    if _client is None:
        # The endpoint comes from boto3's own settings (AWS_ENDPOINT_URL), so tests can aim it.
        _client = routes.make_client(os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
    return _client


# -- custom resource ----------------------------------------------------------------------------

def physical_id(vip: str) -> str:
    """The custom resource's physical ID for the routes of `vip`."""
    # Stable across updates, so CloudFormation never replaces (deletes) the routes unless the
    # VIP itself changes.
    return f"haproxy-ha-vip-routes-{vip}"


def _props(props: dict[str, Any]) -> tuple[str, list[str], str]:
    problems = []
    vip = props.get("Vip")
    tables = props.get("RouteTableIds")
    eni = props.get("EniId")
    if not isinstance(vip, str) or not vip:
        problems.append(f"Vip: got {vip!r}; allowed: an IPv4 address")
    if not isinstance(tables, list) or not all(isinstance(t, str) for t in tables):
        problems.append(f"RouteTableIds: got {tables!r}; allowed: a list of route table IDs")
    if not isinstance(eni, str) or not eni.startswith("eni-"):
        problems.append(f"EniId: got {eni!r}; allowed: an ENI ID")
    if problems:
        raise ValueError("; ".join(problems))
    assert isinstance(vip, str) and isinstance(tables, list) and isinstance(eni, str)
    return vip, tables, eni


def _summary(result: routes.MoveResult) -> dict[str, str]:
    return {t.route_table_id: t.action for t in result.tables}


def _raise_unless_converged(what: str, result: routes.MoveResult) -> None:
    failed = {t.route_table_id: t.error for t in result.tables if not t.ok}
    if failed:
        raise RuntimeError(f"{what} failed for {len(failed)} route table(s): {json.dumps(failed)}")


def handle_custom_resource(event: dict[str, Any], client: Any) -> tuple[str, dict[str, Any]]:
    """Create: add the VIP route where missing.  Update: never re-point a route (failover may
    have moved it); add it to new tables and remove it from dropped ones.  Delete: remove it."""
    request = event["RequestType"]
    vip, tables, eni = _props(event["ResourceProperties"])
    if request == "Delete":
        result = routes.delete_routes(client, vip, tables)
        _raise_unless_converged("deleting VIP routes", result)
        log_event("custom_resource", request=request, vip=vip, tables=_summary(result))
        return event.get("PhysicalResourceId") or physical_id(vip), {}
    result = routes.ensure_routes(client, vip, tables, eni)
    _raise_unless_converged("creating VIP routes", result)
    summary = _summary(result)
    if request == "Update":
        old_vip, old_tables, _ = _props(event.get("OldResourceProperties", {}))
        dropped = [t for t in old_tables if t not in tables]
        if old_vip == vip and dropped:
            removed = routes.delete_routes(client, vip, dropped)
            _raise_unless_converged("removing VIP routes from dropped tables", removed)
            summary.update(_summary(removed))
        # A changed VIP gets a new physical ID; CloudFormation then deletes the old routes.
    log_event("custom_resource", request=request, vip=vip, tables=summary)
    return physical_id(vip), {"RouteTableCount": str(len(tables))}


def send_response(event: dict[str, Any], context: Any, status: str, physical: str,
                  data: dict[str, Any] | None = None, reason: str = "") -> None:
    """Answer CloudFormation for this event, at its pre-signed response URL."""
    stream = getattr(context, "log_stream_name", "the function's log")
    body = json.dumps({
        "Status": status,
        "Reason": (reason or f"See CloudWatch log stream {stream}")[:3500],
        "PhysicalResourceId": physical,
        "StackId": event["StackId"],
        "RequestId": event["RequestId"],
        "LogicalResourceId": event["LogicalResourceId"],
        "NoEcho": False,
        "Data": data or {},
    }).encode()
    req = urllib.request.Request(event["ResponseURL"], data=body, method="PUT",
                                 headers={"Content-Type": "", "Content-Length": str(len(body))})
    with urllib.request.urlopen(req, timeout=30) as resp:
        resp.read()


def on_event(event: dict[str, Any], context: Any) -> None:
    """Entry point for the custom resource.  Always answers CloudFormation, even on error, so a
    stack never hangs waiting for it."""
    vip = str(event.get("ResourceProperties", {}).get("Vip", "unknown"))
    fallback = event.get("PhysicalResourceId") or physical_id(vip)
    try:
        physical, data = handle_custom_resource(event, _ec2())
    except Exception as e:
        log_event("custom_resource_failed", request=event.get("RequestType"), error=str(e))
        send_response(event, context, "FAILED", fallback, reason=f"{type(e).__name__}: {e}")
        return
    send_response(event, context, "SUCCESS", physical, data)


# -- reconciler ---------------------------------------------------------------------------------

def _nodes_from_env() -> tuple[str, list[str], list[dict[str, str]]]:
    nodes = json.loads(os.environ["NODES"])
    tables = [t for t in os.environ["ROUTE_TABLE_IDS"].split(",") if t]
    return os.environ["VIP"], tables, nodes


def reconcile_routes(client: Any, vip: str, tables: list[str], nodes: list[dict[str, str]],
                     deadline_s: float = RECONCILE_DEADLINE_S) -> dict[str, Any]:
    """Move routes that are missing, blackholed, or point at a node that is not running, to a
    running node.  Routes at a running node are never moved.  Safe to run twice at once: both
    runs pick the same target from the same facts.

    Each node is `{"name": ..., "eni_id": ...}` (other keys are ignored).  A node is running when
    its ENI is attached to a running instance: the ENI outlives the instances that carry it.
    """
    views = routes.describe_vip_routes(client, vip, tables)
    owners = routes.eni_owners(client, [n["eni_id"] for n in nodes])
    state_of = {n["name"]: owners[n["eni_id"]].instance_state or "absent" for n in nodes}
    live = [n["eni_id"] for n in nodes if state_of[n["name"]] == "running"]
    report: dict[str, Any] = {
        "vip": vip,
        "node_states": state_of,
        "tables_not_found": [t for t in tables if t not in views],
    }
    broken = [t for t in tables if t in views and routes.needs_repair(views[t], set(live))]
    target = routes.choose_target(views.values(), live)
    report.update(broken=broken, target=target, moved=[])
    if broken and target is None:
        report["error"] = "no node is running: nothing to move the routes to"
    elif broken and target is not None:
        result = routes.take_over(client, vip, broken, target, deadline_s=deadline_s)
        report.update(moved=result.moved, converged=result.converged,
                      failed={t.route_table_id: t.error for t in result.tables if not t.ok})
    return report


def reconcile(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Entry point for EC2 state-change events and the schedule."""
    vip, tables, nodes = _nodes_from_env()
    detail = event.get("detail") or {}
    report = reconcile_routes(_ec2(), vip, tables, nodes)
    log_event("reconcile", trigger=event.get("detail-type", "schedule"), instance=detail.get("instance-id"),
              instance_state=detail.get("state"), **report)
    if report.get("error") or report.get("failed"):
        # Fail the invocation so it shows in the function's error metric (and is retried for events).
        raise RuntimeError(json.dumps(report))
    return report
