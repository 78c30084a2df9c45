"""The one place that moves VIP routes: parallel, idempotent, verified, retried within a bound.

The node agent, the Lambda and the operator CLI all call this module.  It only ever touches
the VIP's /32 route, and only ever targets an ENI (never an instance ID).

Retries live in two layers, and nowhere else:
- botocore (`make_client`: standard mode) retries each API call on throttling, 5xx and
  connection errors, with backoff, up to `max_attempts`;
- `take_over` retries the move: it writes again every table that did not verify, with a
  growing pause, until all verify, `deadline_s` passes or `should_continue()` turns False.
  The CLI and the Lambda give a deadline.  The agent gives none while it is MASTER, so it keeps
  trying for exactly as long as it is MASTER; its hand-over and repair give one (the new
  MASTER's take-over, or the next repair tick, tries again).
  A table that keeps answering that it cannot be written (it is gone, or this principal may not
  write it) is set aside after SET_ASIDE_AFTER such answers, so that it never holds the others;
  whoever called tries it again later (the agent at each repair tick).
`ensure_routes` and `delete_routes` make one call per table (with botocore's retries): the
custom resource then fails, and CloudFormation says why.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

ROUTE_MISSING = "missing"
ROUTE_ACTIVE = "active"
ROUTE_BLACKHOLE = "blackhole"

# Error codes that mean "the route is not there" / "the route is already there".  ReplaceRoute on
# a missing route answers InvalidParameterValue ("There is no route defined for ..."), so that
# code counts as not-found only with that message.
_NOT_FOUND = {"InvalidRoute.NotFound"}
_EXISTS = {"RouteAlreadyExists"}
_TABLE_GONE = {"InvalidRouteTableID.NotFound", "InvalidRouteTableId.NotFound"}
# Answers to a route write that say the table itself cannot be written: it is gone (or another
# account's), its ID is malformed, or this principal may not write it.  Throttling and 5xx say
# nothing about the table (botocore retries them), and a missing route (InvalidParameterValue,
# DESIGN fact 15) is in a table that can be written.  EC2 spells them InvalidRouteTableID.NotFound
# and InvalidRouteTableId.Malformed; both casings of each are taken.
_TABLE_UNUSABLE = _TABLE_GONE | {"InvalidRouteTableId.Malformed", "InvalidRouteTableID.Malformed",
                                 "UnauthorizedOperation", "AccessDenied"}
# How many such answers one take_over takes from a table before it sets the table aside and lets
# the others settle.  More than one, so that a single stray answer sets nothing aside; few, so
# that a table that cannot be written holds a MASTER's take-over for three round trips and
# take_over's first two pauses (at most 0.15 s), not for ever.  No bound here could wait out EC2's
# and IAM's eventual consistency (seconds, after a table is made or a policy changes): whoever
# called tries a set-aside table again later (the agent at each repair tick), and that covers it.
SET_ASIDE_AFTER = 3
# The action of a table that take_over set aside.
SET_ASIDE = "set_aside"

MAX_WORKERS = 32
_FILTER_CHUNK = 100


def make_client(region: str, endpoint_url: str | None = None, *, max_attempts: int = 3,
                connect_timeout: float = 2.0, read_timeout: float = 5.0, session: Any = None) -> Any:
    """An EC2 client with botocore's standard retry mode and a pool big enough for parallel calls.

    `max_attempts` counts every attempt of one call, the first included (botocore's
    `total_max_attempts`; its own `max_attempts` key counts retries only).  A given boto3
    `session` saves parsing the EC2 model again (tests make many clients; a node makes one).
    """
    config = Config(
        region_name=region,
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_pool_connections=MAX_WORKERS,
    )
    return (session or boto3.session.Session()).client("ec2", endpoint_url=endpoint_url, config=config)


class CallCounter:
    """Counts the HTTP requests a client sends (retries included), by operation."""

    def __init__(self, client: Any) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        client.meta.events.register("before-send.ec2", self._on_send)

    def _on_send(self, request: Any = None, **_: Any) -> None:
        # The operation name is not on the request; read it from the Action form field.
        body = getattr(request, "body", b"") or b""
        if isinstance(body, str):
            body = body.encode()
        action = "unknown"
        for part in body.split(b"&"):
            if part.startswith(b"Action="):
                action = part[len(b"Action="):].decode()
                break
        with self._lock:
            self.counts[action] += 1

    @property
    def total(self) -> int:
        """Requests sent so far, all operations together."""
        return sum(self.counts.values())


@dataclass(frozen=True)
class VipRoute:
    """What one route table says about the VIP."""

    route_table_id: str
    state: str  # active, blackhole or missing
    eni_id: str | None = None
    # A target that is not an ENI (instance, gateway...), shown by status; take_over replaces it.
    other_target: str | None = None
    vpc_id: str | None = None


@dataclass
class TableResult:
    """What one call of this module did to one route table's VIP route."""

    route_table_id: str
    ok: bool
    # unchanged, replaced, created, deleted, absent, failed, cancelled, or set_aside (take_over
    # gave up on a table that answered SET_ASIDE_AFTER times that it cannot be written; `error` says why)
    action: str
    attempts: int = 0
    elapsed_s: float = 0.0
    error: str | None = None


@dataclass
class MoveResult:
    """The outcome of one take_over, ensure_routes or delete_routes, table by table."""

    eni_id: str | None
    tables: list[TableResult]
    elapsed_s: float
    cancelled: bool = False
    errors: list[str] = field(default_factory=list)

    @property
    def converged(self) -> bool:
        """Did every table end as asked (and was the move not cancelled)?"""
        return not self.cancelled and all(t.ok for t in self.tables)

    @property
    def moved(self) -> list[str]:
        """The tables whose VIP route this call replaced or created."""
        return [t.route_table_id for t in self.tables if t.action in ("replaced", "created")]

    @property
    def set_aside(self) -> dict[str, str]:
        """The tables take_over set aside as tables it cannot write, each with the answer that said so."""
        return {t.route_table_id: t.error or "" for t in self.tables if t.action == SET_ASIDE}


def _code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def _route_not_found(err: ClientError) -> bool:
    code = _code(err)
    message = str(err.response.get("Error", {}).get("Message", ""))
    return code in _NOT_FOUND or (code == "InvalidParameterValue" and "no route defined" in message)


def _describe_error(err: Exception) -> str:
    if isinstance(err, ClientError):
        return f"{_code(err)}: {err.response.get('Error', {}).get('Message', '')}".strip()
    return f"{type(err).__name__}: {err}"


def _route_view(table: dict[str, Any], vip_cidr: str) -> VipRoute:
    rtb = table["RouteTableId"]
    for route in table.get("Routes", []):
        if route.get("DestinationCidrBlock") != vip_cidr:
            continue
        state = route.get("State", ROUTE_ACTIVE)
        eni = route.get("NetworkInterfaceId")
        other = None
        if not eni:
            for key in ("InstanceId", "GatewayId", "NatGatewayId", "TransitGatewayId",
                        "VpcPeeringConnectionId", "LocalGatewayId", "CarrierGatewayId"):
                if route.get(key):
                    other = f"{key}={route[key]}"
                    break
        return VipRoute(rtb, state, eni_id=eni, other_target=other, vpc_id=table.get("VpcId"))
    return VipRoute(rtb, ROUTE_MISSING, vpc_id=table.get("VpcId"))


def describe_vip_routes(client: Any, vip: str, route_table_ids: Sequence[str]) -> dict[str, VipRoute]:
    """The VIP route in each listed table.  A table that does not exist is left out of the result."""
    vip_cidr = vip + "/32"
    out: dict[str, VipRoute] = {}
    ids = list(dict.fromkeys(route_table_ids))
    paginator = client.get_paginator("describe_route_tables")
    for i in range(0, len(ids), _FILTER_CHUNK):
        chunk = ids[i:i + _FILTER_CHUNK]
        for page in paginator.paginate(Filters=[{"Name": "route-table-id", "Values": chunk}]):
            for table in page.get("RouteTables", []):
                out[table["RouteTableId"]] = _route_view(table, vip_cidr)
    return out


def find_vip_route_tables(client: Any, vip: str, vpc_id: str | None = None) -> dict[str, VipRoute]:
    """Every route table (in `vpc_id`, if given) that holds a route for the VIP's /32."""
    filters = [{"Name": "route.destination-cidr-block", "Values": [vip + "/32"]}]
    if vpc_id:
        filters.append({"Name": "vpc-id", "Values": [vpc_id]})
    out: dict[str, VipRoute] = {}
    for page in client.get_paginator("describe_route_tables").paginate(Filters=filters):
        for table in page.get("RouteTables", []):
            view = _route_view(table, vip + "/32")
            if view.state != ROUTE_MISSING:
                out[view.route_table_id] = view
    return out


@dataclass(frozen=True)
class EniOwner:
    """Who an ENI belongs to: the instance it is attached to, that instance's state, and tags."""

    eni_id: str
    instance_id: str | None = None
    instance_state: str | None = None
    eni_tags: dict[str, str] = field(default_factory=dict)
    instance_tags: dict[str, str] = field(default_factory=dict)


def _tags(items: list[dict[str, str]] | None) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in items or []}


def eni_owners(client: Any, eni_ids: Iterable[str]) -> dict[str, EniOwner]:
    """For each ENI, the instance it is attached to and that instance's state (None for an ENI
    that does not exist or is not attached).  Two calls, both filtered by ID."""
    enis = sorted(set(eni_ids))
    if not enis:
        return {}
    try:
        resp = client.describe_network_interfaces(
            Filters=[{"Name": "network-interface-id", "Values": enis}])
    except ClientError as e:
        if "NotFound" not in _code(e):
            raise
        resp = {}
    found = {ni["NetworkInterfaceId"]: ni for ni in resp.get("NetworkInterfaces", [])}
    attached = {eni: (ni.get("Attachment") or {}).get("InstanceId") for eni, ni in found.items()}
    instances: dict[str, dict[str, Any]] = {}
    instance_ids = sorted({i for i in attached.values() if i})
    if instance_ids:
        resp = client.describe_instances(Filters=[{"Name": "instance-id", "Values": instance_ids}])
        for reservation in resp.get("Reservations", []):
            for inst in reservation.get("Instances", []):
                instances[inst["InstanceId"]] = inst
    out: dict[str, EniOwner] = {}
    for eni in enis:
        instance_id = attached.get(eni)
        inst = instances.get(instance_id or "", {})
        out[eni] = EniOwner(
            eni_id=eni,
            instance_id=instance_id,
            instance_state=inst.get("State", {}).get("Name") if inst else None,
            eni_tags=_tags(found.get(eni, {}).get("TagSet")),
            instance_tags=_tags(inst.get("Tags")),
        )
    return out


def needs_repair(view: VipRoute, live_enis: set[str]) -> bool:
    """A route needs repair if it is missing, blackholed, or points at no live node's ENI.

    A route that points at a live node is never "repaired": two healthy masters must not take
    turns moving routes, since each move drops established connections.
    """
    return view.state != ROUTE_ACTIVE or view.eni_id is None or view.eni_id not in live_enis


def choose_target(views: Iterable[VipRoute], live_enis_in_order: Sequence[str]) -> str | None:
    """Where repaired routes should point: the live ENI that most healthy routes already use,
    ties broken by the given preference order; else the first live ENI."""
    live = list(live_enis_in_order)
    if not live:
        return None
    votes = Counter(v.eni_id for v in views if v.state == ROUTE_ACTIVE and v.eni_id in live)
    if votes:
        best = max(votes.values())
        return next(eni for eni in live if votes.get(eni) == best)
    return live[0]


def _route_missing(client: Any, table_id: str, vip_cidr: str, err: ClientError) -> bool:
    """Did ReplaceRoute fail because the table has no VIP route?  Real EC2 answers that with
    InvalidParameterValue, a code it uses for other mistakes too: look at the table, not at the
    message text."""
    code = _code(err)
    if code in _NOT_FOUND:
        return True
    if code != "InvalidParameterValue":
        return False
    views = describe_vip_routes(client, vip_cidr.split("/")[0], [table_id])
    return table_id in views and views[table_id].state == ROUTE_MISSING


def _point_route(client: Any, table_id: str, vip_cidr: str, eni_id: str, create_missing: bool = True) -> str:
    """Make one table's VIP route target `eni_id`; returns replaced, created, or missing (the
    route is not there and `create_missing` is False)."""
    try:
        client.replace_route(RouteTableId=table_id, DestinationCidrBlock=vip_cidr, NetworkInterfaceId=eni_id)
        return "replaced"
    except ClientError as e:
        if not _route_missing(client, table_id, vip_cidr, e):
            raise
    if not create_missing:
        return "missing"
    try:
        client.create_route(RouteTableId=table_id, DestinationCidrBlock=vip_cidr, NetworkInterfaceId=eni_id)
        return "created"
    except ClientError as e:
        if _code(e) not in _EXISTS:
            raise
    # Someone created it between our two calls: replace it.
    client.replace_route(RouteTableId=table_id, DestinationCidrBlock=vip_cidr, NetworkInterfaceId=eni_id)
    return "replaced"


def _always() -> bool:
    return True


def _pause(seconds: float, should_continue: Callable[[], bool]) -> None:
    """Sleep, but wake as soon as `should_continue` turns False."""
    end = time.monotonic() + seconds
    while should_continue() and time.monotonic() < end:
        time.sleep(min(0.02, max(0.0, end - time.monotonic())))


def _write(pool: ThreadPoolExecutor, client: Any, table_ids: Sequence[str], vip_cidr: str, eni_id: str,
           results: dict[str, TableResult], should_continue: Callable[[], bool],
           before_write: Callable[[], None], on_missing: Callable[[str], None] | None) -> list[str]:
    """Write each table's VIP route once, in parallel, and record the outcome in its result.
    Returns the tables that answered that they cannot be written (_TABLE_UNUSABLE)."""
    def write(table_id: str) -> bool:
        res = results[table_id]
        if not should_continue():
            return False
        before_write()
        res.attempts += 1
        try:
            res.action = _point_route(client, table_id, vip_cidr, eni_id, create_missing=on_missing is None)
            res.error = None
            if res.action == "missing":
                res.error = "the table has no VIP route to replace"
                assert on_missing is not None
                on_missing(table_id)
        except (ClientError, BotoCoreError) as e:
            res.action = "failed"
            res.error = _describe_error(e)
            return isinstance(e, ClientError) and _code(e) in _TABLE_UNUSABLE
        return False

    return [t for t, unusable in zip(table_ids, pool.map(write, table_ids)) if unusable]


def _verify(client: Any, vip: str, table_ids: Sequence[str], eni_id: str, results: dict[str, TableResult],
            start: float, errors: list[str]) -> list[str]:
    """Read the tables back in one call; mark those that point at `eni_id` ok, return the others."""
    try:
        views = describe_vip_routes(client, vip, table_ids)
    except (ClientError, BotoCoreError) as e:
        errors.append("verify: " + _describe_error(e))
        views = {}
    still: list[str] = []
    for t in table_ids:
        view = views.get(t)
        res = results[t]
        if view is not None and view.state == ROUTE_ACTIVE and view.eni_id == eni_id:
            res.ok = True
            res.elapsed_s = time.monotonic() - start
            if res.action == "failed":
                # The write failed but the route is right (an earlier try, or another writer).
                res.action = "unchanged" if res.attempts == 0 else "replaced"
        else:
            if view is None and res.error is None:
                res.error = "route table not found"
            still.append(t)
    return still


def _finish(eni_id: str, tables: list[str], pending: list[str], results: dict[str, TableResult], start: float,
            cancelled: bool, errors: list[str]) -> MoveResult:
    """Close the results of the tables that never verified, and gather them all in table order."""
    for t in pending:
        res = results[t]
        res.elapsed_s = time.monotonic() - start
        if cancelled:
            res.action = "cancelled"
        elif res.error is None:
            res.error = "route did not point at the ENI when verified"
    return MoveResult(eni_id, [results[t] for t in tables], time.monotonic() - start, cancelled, errors)


def take_over(client: Any, vip: str, route_table_ids: Sequence[str], eni_id: str, *,
              deadline_s: float | None = 10.0,
              should_continue: Callable[[], bool] = _always,
              on_first_write: Callable[[], None] | None = None,
              on_missing: Callable[[str], None] | None = None) -> MoveResult:
    """Make the VIP route in every table point at `eni_id`, and verify it.

    Writes go to all tables in parallel first (ReplaceRoute, or CreateRoute where the route is
    missing), then one DescribeRouteTables verifies them.  Tables that do not verify are
    written again with a growing pause, until all converge or `deadline_s` has passed (None:
    no deadline).  Each call also has botocore's standard retries.  `should_continue` is
    checked before every write; once it returns False nothing more is written and the result
    says `cancelled`.  With `on_missing`, a missing route is never created: `on_missing(table)`
    is called instead (a node may only replace routes; it asks the reconciler to create them),
    and the table is written again on the next round.  A table that has answered
    SET_ASIDE_AFTER times that it cannot be written is set aside (action `set_aside`) and not
    written again in this call; the others go on, and the result is not `converged`.
    """
    start = time.monotonic()
    deadline = None if deadline_s is None else start + deadline_s
    vip_cidr = vip + "/32"
    tables = list(dict.fromkeys(route_table_ids))
    results = {t: TableResult(t, ok=False, action="failed") for t in tables}
    pending = list(tables)
    errors: list[str] = []
    unusable: Counter[str] = Counter()
    first_write = threading.Event()
    pause = 0.05

    def before_write() -> None:
        if not first_write.is_set():
            first_write.set()
            if on_first_write is not None:
                on_first_write()

    with ThreadPoolExecutor(max_workers=max(1, min(MAX_WORKERS, len(tables))), thread_name_prefix="route") as pool:
        while pending and should_continue():
            unusable.update(_write(pool, client, pending, vip_cidr, eni_id, results, should_continue, before_write,
                                   on_missing))
            if not should_continue():
                break
            pending = _verify(client, vip, pending, eni_id, results, start, errors)
            for t in [t for t in pending if unusable[t] >= SET_ASIDE_AFTER]:
                results[t].action = SET_ASIDE
                results[t].elapsed_s = time.monotonic() - start
                pending.remove(t)
            if not pending or (deadline is not None and time.monotonic() + pause >= deadline):
                break
            _pause(pause * random.uniform(0.5, 1.0), should_continue)
            pause = min(pause * 2, 1.0)

    return _finish(eni_id, tables, pending, results, start, bool(pending) and not should_continue(), errors)


def _each_table(table_ids: Sequence[str], call: Callable[[str], str],
                tolerated: Callable[[ClientError], str | None]) -> list[TableResult]:
    """Run `call` (one API call; it returns its action) on every table in parallel, timed.

    A ClientError that `tolerated` names an action for is that action, done; any other error fails
    that table with its description.  The results keep the order of `table_ids`.
    """
    def one(table_id: str) -> TableResult:
        t0 = time.monotonic()
        try:
            action = call(table_id)
        except ClientError as e:
            done = tolerated(e)
            if done is not None:
                return TableResult(table_id, True, done, 1, time.monotonic() - t0)
            return TableResult(table_id, False, "failed", 1, time.monotonic() - t0, _describe_error(e))
        except BotoCoreError as e:
            return TableResult(table_id, False, "failed", 1, time.monotonic() - t0, _describe_error(e))
        return TableResult(table_id, True, action, 1, time.monotonic() - t0)

    with ThreadPoolExecutor(max_workers=max(1, min(MAX_WORKERS, len(table_ids)))) as pool:
        return list(pool.map(one, table_ids))


def ensure_routes(client: Any, vip: str, route_table_ids: Sequence[str], eni_id: str) -> MoveResult:
    """Create the VIP route where it is missing, pointing at `eni_id`.  Never re-points a route
    that exists (failover may have moved it).  Safe to run twice at once."""
    start = time.monotonic()
    vip_cidr = vip + "/32"
    tables = list(dict.fromkeys(route_table_ids))
    views = describe_vip_routes(client, vip, tables)
    settled = {t: TableResult(t, False, "failed", error="route table not found") for t in tables if t not in views}
    settled.update({t: TableResult(t, True, "unchanged") for t in tables
                    if t in views and views[t].state != ROUTE_MISSING})

    def create(table_id: str) -> str:
        client.create_route(RouteTableId=table_id, DestinationCidrBlock=vip_cidr, NetworkInterfaceId=eni_id)
        return "created"

    created = _each_table([t for t in tables if t not in settled], create,
                          lambda e: "unchanged" if _code(e) in _EXISTS else None)
    by_table = {**settled, **{r.route_table_id: r for r in created}}
    return MoveResult(eni_id, [by_table[t] for t in tables], time.monotonic() - start)


def delete_routes(client: Any, vip: str, route_table_ids: Sequence[str]) -> MoveResult:
    """Delete the VIP route from each table.  A route or table that is already gone is fine."""
    start = time.monotonic()
    vip_cidr = vip + "/32"

    def delete(table_id: str) -> str:
        client.delete_route(RouteTableId=table_id, DestinationCidrBlock=vip_cidr)
        return "deleted"

    results = _each_table(list(dict.fromkeys(route_table_ids)), delete,
                          lambda e: "absent" if _route_not_found(e) or _code(e) in _TABLE_GONE else None)
    return MoveResult(None, results, time.monotonic() - start)
