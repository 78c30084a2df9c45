"""The route Lambda: owns the VIP routes as a CloudFormation custom resource (`on_event`), and
moves routes away from a node that is not running (`reconcile`, on EC2 state-change events and
on a schedule).  All route changes go through haproxy_ha_runtime.routes.

`lambda/handler.py` is the function's entry point and only re-exports `on_event` and `reconcile`
from here: this module is importable by name (`lambda` is a Python keyword), so tests and
mutation testing reach the same code the function runs.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request
from collections.abc import Sequence
from typing import Any

from botocore.exceptions import ClientError

from haproxy_ha_runtime import reconcile_metrics, routes
from haproxy_ha_runtime.log import log_event
from haproxy_ha_runtime.tags import ROUTES_DELETED_TAG

_client: Any = None

# How long one reconcile may keep retrying a route move (the function's timeout is longer).
RECONCILE_DEADLINE_S = 20.0
# CloudFormation refuses a response body over 4096 bytes.
RESPONSE_LIMIT_BYTES = 4096
# The custom resource answers FAILED this long before the function's own timeout, so that the
# answer (one PUT, bounded by RESPONSE_TIMEOUT_S) always goes out.
RESPONSE_RESERVE_S = 10.0
RESPONSE_TIMEOUT_S = 8.0
# After deleting the routes, look once more this much later: a reconcile run that read the tables
# before they were marked may have written a route in the meantime.
DELETE_SWEEP_AFTER_S = 2.0
_TRUNCATED = " [truncated; the function's log has the whole reason]"
_TAG_CHUNK = 100


def _ec2() -> Any:
    global _client
    if _client is None:
        # The endpoint comes from boto3's own settings (AWS_ENDPOINT_URL), so tests can aim it.
        _client = routes.make_client(os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
    return _client


def _remaining_s(context: Any) -> float:
    return float(context.get_remaining_time_in_millis()) / 1000.0


# -- the marker a stack delete leaves on each table -----------------------------------------------

def _chunks(items: Sequence[str]) -> list[list[str]]:
    return [list(items[i:i + _TAG_CHUNK]) for i in range(0, len(items), _TAG_CHUNK)]


def marked_deleted(client: Any, vip: str, route_table_ids: Sequence[str]) -> set[str]:
    """The tables that carry ROUTES_DELETED_TAG for `vip`: the stack deleted their VIP route, and
    nothing may create or move it there again.  One filtered DescribeRouteTables per 100 tables."""
    marked: set[str] = set()
    paginator = client.get_paginator("describe_route_tables")
    for chunk in _chunks(list(dict.fromkeys(route_table_ids))):
        filters = [{"Name": "route-table-id", "Values": chunk},
                   {"Name": f"tag:{ROUTES_DELETED_TAG}", "Values": [vip]}]
        for page in paginator.paginate(Filters=filters):
            marked.update(t["RouteTableId"] for t in page.get("RouteTables", []))
    return marked


def _existing(client: Any, vip: str, tables: Sequence[str]) -> list[str]:
    views = routes.describe_vip_routes(client, vip, tables)
    return [t for t in tables if t in views]


def _mark_deleted(client: Any, vip: str, tables: Sequence[str]) -> None:
    """Tag the tables that still exist with ROUTES_DELETED_TAG = vip."""
    for attempt in range(2):
        existing = _existing(client, vip, tables)
        try:
            for chunk in _chunks(existing):
                client.create_tags(Resources=chunk, Tags=[{"Key": ROUTES_DELETED_TAG, "Value": vip}])
            return
        except ClientError as e:
            # A table deleted between the describe and the tag: look again, once.
            if "NotFound" not in str(e.response.get("Error", {}).get("Code", "")) or attempt:
                raise


def _unmark(client: Any, vip: str, tables: Sequence[str]) -> None:
    """Remove this VIP's ROUTES_DELETED_TAG from the tables (another VIP's marker stays)."""
    for chunk in _chunks(_existing(client, vip, tables)):
        client.delete_tags(Resources=chunk, Tags=[{"Key": ROUTES_DELETED_TAG, "Value": vip}])


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


def _delete(client: Any, vip: str, tables: list[str]) -> dict[str, str]:
    """Mark the tables, then delete their VIP routes, then delete any route that came back."""
    _mark_deleted(client, vip, tables)
    result = routes.delete_routes(client, vip, tables)
    _raise_unless_converged("deleting VIP routes", result)
    summary = _summary(result)
    if DELETE_SWEEP_AFTER_S > 0:
        time.sleep(DELETE_SWEEP_AFTER_S)
    back = [t for t, v in routes.describe_vip_routes(client, vip, tables).items() if v.state != routes.ROUTE_MISSING]
    if back:
        again = routes.delete_routes(client, vip, back)
        _raise_unless_converged("deleting VIP routes that came back", again)
        summary.update({t: "deleted again" for t in back})
    return summary


def handle_custom_resource(event: dict[str, Any], client: Any) -> tuple[str, dict[str, Any]]:
    """Create: add the VIP route where missing.  Update: never re-point a route (failover may
    have moved it); add it to new tables and remove it from dropped ones.  Delete: remove it.

    Before a route is deleted, its table is tagged ROUTES_DELETED_TAG = VIP, and the reconciler
    leaves such a table alone, so nothing recreates the routes while the stack goes away.
    Create and Update remove that tag before they add routes.
    """
    request = event["RequestType"]
    vip, tables, eni = _props(event["ResourceProperties"])
    if request == "Delete":
        summary = _delete(client, vip, tables)
        log_event("custom_resource", request=request, vip=vip, tables=summary)
        return event.get("PhysicalResourceId") or physical_id(vip), {}
    _unmark(client, vip, tables)
    result = routes.ensure_routes(client, vip, tables, eni)
    _raise_unless_converged("creating VIP routes", result)
    summary = _summary(result)
    if request == "Update":
        old_vip, old_tables, _ = _props(event.get("OldResourceProperties", {}))
        dropped = [t for t in old_tables if t not in tables]
        if old_vip == vip and dropped:
            summary.update(_delete(client, vip, dropped))
        # A changed VIP gets a new physical ID; CloudFormation then deletes the old routes.
    log_event("custom_resource", request=request, vip=vip, tables=summary)
    return physical_id(vip), {"RouteTableCount": str(len(tables))}


def response_body(event: dict[str, Any], context: Any, status: str, physical: str,
                  data: dict[str, Any] | None = None, reason: str = "") -> bytes:
    """The JSON answer to CloudFormation, at most RESPONSE_LIMIT_BYTES long: the reason is cut
    (with a note) until the body, JSON escaping included, fits."""
    stream = getattr(context, "log_stream_name", "the function's log")
    fields = {
        "Status": status,
        "Reason": "",
        "PhysicalResourceId": physical,
        "StackId": event["StackId"],
        "RequestId": event["RequestId"],
        "LogicalResourceId": event["LogicalResourceId"],
        "NoEcho": False,
        "Data": data or {},
    }
    reason = reason or f"See CloudWatch log stream {stream}"

    def body(text: str) -> bytes:
        return json.dumps(dict(fields, Reason=text)).encode()

    whole = body(reason)
    if len(whole) <= RESPONSE_LIMIT_BYTES:
        return whole
    # The longest prefix of the reason that fits with the note (escaping can only grow with it).
    low, high = 0, len(reason)
    while low < high:
        mid = (low + high + 1) // 2
        if len(body(reason[:mid] + _TRUNCATED)) <= RESPONSE_LIMIT_BYTES:
            low = mid
        else:
            high = mid - 1
    return body(reason[:low] + _TRUNCATED)


def send_response(event: dict[str, Any], context: Any, status: str, physical: str,
                  data: dict[str, Any] | None = None, reason: str = "") -> None:
    """Answer CloudFormation for this event, at its pre-signed response URL."""
    body = response_body(event, context, status, physical, data, reason)
    req = urllib.request.Request(event["ResponseURL"], data=body, method="PUT",
                                 headers={"Content-Type": "", "Content-Length": str(len(body))})
    with urllib.request.urlopen(req, timeout=RESPONSE_TIMEOUT_S) as resp:
        resp.read()


class _Answer:
    """Sends CloudFormation one answer for an event, whoever asks first: the handler or the timer."""

    def __init__(self, event: dict[str, Any], context: Any) -> None:
        self._event = event
        self._context = context
        self._lock = threading.Lock()
        self._sent = False

    def send(self, status: str, physical: str, data: dict[str, Any] | None = None, reason: str = "") -> bool:
        with self._lock:
            if self._sent:
                return False
            self._sent = True
        send_response(self._event, self._context, status, physical, data, reason)
        return True


def on_event(event: dict[str, Any], context: Any) -> None:
    """Entry point for the custom resource.  Always answers CloudFormation, even on error, so a
    stack never hangs waiting for it: FAILED at the latest RESPONSE_RESERVE_S before the
    function's own timeout, if the work has not finished by then."""
    vip = str(event.get("ResourceProperties", {}).get("Vip", "unknown"))
    fallback = event.get("PhysicalResourceId") or physical_id(vip)
    answer = _Answer(event, context)
    budget_s = max(0.0, _remaining_s(context) - RESPONSE_RESERVE_S)

    def too_late() -> None:
        if answer.send("FAILED", fallback, reason=(
                f"{event.get('RequestType')} did not finish within {budget_s:.1f} s, before the function's "
                "own timeout; the function's log says how far it got")):
            log_event("custom_resource_failed", request=event.get("RequestType"), error="timed out",
                      budget_s=round(budget_s, 1))

    timer = threading.Timer(budget_s, too_late)
    timer.daemon = True
    timer.start()
    try:
        physical, data = handle_custom_resource(event, _ec2())
    except Exception as e:
        log_event("custom_resource_failed", request=event.get("RequestType"), error=str(e))
        answer.send("FAILED", fallback, reason=f"{type(e).__name__}: {e}")
    else:
        answer.send("SUCCESS", physical, data)
    finally:
        # If the timer is answering right now, let it finish before the function returns (and freezes).
        timer.cancel()
        timer.join()


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

    EC2 has no compare-and-set for routes, and the view can go stale while the node states are
    read: a new MASTER may move the routes meanwhile.  So each round of writes first reads the
    tables again, and leaves alone every table whose VIP route changed since the first read, or
    that carries ROUTES_DELETED_TAG for this VIP (the stack is going away).  What remains is a
    window of one round trip, which the MASTER's own repair closes.
    """
    start = time.monotonic()
    first = routes.describe_vip_routes(client, vip, tables)
    owners = routes.eni_owners(client, [n["eni_id"] for n in nodes])
    state_of = {n["name"]: owners[n["eni_id"]].instance_state or "absent" for n in nodes}
    live = [n["eni_id"] for n in nodes if state_of[n["name"]] == "running"]
    broken = [t for t in tables if t in first and routes.needs_repair(first[t], set(live))]
    target = routes.choose_target(first.values(), live)
    report: dict[str, Any] = {
        "vip": vip,
        "node_states": state_of,
        "tables_not_found": [t for t in tables if t not in first],
        "broken": broken,
        "target": target,
        "moved": [],
        "skipped_changed": [],
        "skipped_deleted": [],
        "failed": {},
    }
    if not broken:
        return report
    if target is None:
        # A state, not an error: both nodes stopped (for maintenance, say).  Nothing can be done
        # until one runs, and raising every minute would only bury the real failures.
        report["state"] = "no node is running: nothing to move the routes to"
        return report

    moved: dict[str, None] = {}
    failed: dict[str, str | None] = {}
    pending = list(broken)
    pause = 0.05
    while pending:
        now = routes.describe_vip_routes(client, vip, pending)
        marked = marked_deleted(client, vip, pending)
        todo = []
        for t in pending:
            view = now.get(t)
            if t in marked:
                report["skipped_deleted"].append(t)
            elif view is not None and view.state == routes.ROUTE_ACTIVE and view.eni_id == target:
                pass  # already there: an earlier round's write, or the MASTER's
            elif view != first[t]:
                report["skipped_changed"].append(t)
            else:
                todo.append(t)
                continue
            failed.pop(t, None)
        if not todo:
            break
        # One write and one verify per round (deadline 0): a retry must read the table again first.
        result = routes.take_over(client, vip, todo, target, deadline_s=0.0)
        moved.update(dict.fromkeys(result.moved))
        # What this round could not fix (a table an earlier round failed but this one fixed is no failure).
        failed = {r.route_table_id: r.error for r in result.tables if not r.ok}
        pending = [r.route_table_id for r in result.tables if not r.ok]
        if not pending or time.monotonic() + pause >= start + deadline_s:
            break
        time.sleep(pause)
        pause = min(pause * 2, 1.0)
    report.update(moved=list(moved), failed=failed, converged=not failed)
    return report


def reconcile(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Entry point for the node groups' Auto Scaling events, the schedule, and the agents.

    Raises only when a move it attempted failed, so that the function's error metric counts
    real failures: no running node is a state it reports, not an error.
    """
    vip, tables, nodes = _nodes_from_env()
    detail = event.get("detail") or {}
    deadline_s = max(1.0, min(RECONCILE_DEADLINE_S, _remaining_s(context) - RESPONSE_RESERVE_S))
    report = reconcile_routes(_ec2(), vip, tables, nodes, deadline_s=deadline_s)
    reconcile_metrics.emit(report, trigger=event.get("detail-type", "schedule"))
    # Auto Scaling's events name the instance EC2InstanceId; EC2's, instance-id.
    instance = detail.get("EC2InstanceId") or detail.get("instance-id")
    log_event("reconcile", trigger=event.get("detail-type", "schedule"), instance=instance,
              instance_state=detail.get("state"), **report)
    if report["failed"]:
        # Fail the invocation so it shows in the function's error metric (and is retried for events).
        raise RuntimeError(json.dumps(report))
    return report
