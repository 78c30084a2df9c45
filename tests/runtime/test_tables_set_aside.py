"""A route table that cannot be written (deleted, not this VPC's, or not the role's to write) is set
aside after a bound, so that the others converge and repair goes on; a table that is only
throttled, or only lacks its route, is never set aside; a MASTER says which tables it set aside
(a log event, and its state record), tries them again at each repair tick, and repairs one once
it can be written.

The route module and the agent run against moto over HTTP: a deleted table there answers
InvalidRouteTableID.NotFound as EC2 does.  The fault proxy throttles, and refuses the writes to
one table as IAM would (UnauthorizedOperation).  The codes moto never sends go through botocore's
Stubber, where only the unit is meant.  No test waits on the wall clock to see that something
stopped: each counts the calls that named the table, and runs the repair ticks itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from botocore.stub import Stubber

from haproxy_ha_runtime import agent, metrics, peer, routes, telemetry
from haproxy_ha_runtime.config import NodeConfig, parse_config
from tests.conftest import VIP, World, client_for, make_world, targets
from tests.runtime.samples import doc
from tests.support import emf_spec
from tests.support.agent_tools import Log, wait_for
from tests.support.table_calls import TableCalls

# Guards for the tests: a take_over that never set a table aside would otherwise write it for
# ever, as the MASTER gives no deadline.  Far above what a table may cost.
RUNAWAY_WRITES = 20
RUNAWAY_S = 5.0


# -- the route module ------------------------------------------------------------------------------

def test_take_over_sets_aside_a_deleted_table_and_converges_the_others(moto: str) -> None:
    world = make_world(client_for(moto), 4)
    gone = world.tables[2]
    world.client.delete_route_table(RouteTableId=gone)
    calls = TableCalls(world.client)
    result = routes.take_over(world.client, VIP, world.tables, world.eni_b, deadline_s=None,
                              should_continue=lambda: calls.of(gone, "ReplaceRoute") < RUNAWAY_WRITES)
    assert not result.cancelled and not result.converged
    assert list(result.set_aside) == [gone]
    assert result.set_aside[gone].startswith("InvalidRouteTableID.NotFound: ")
    assert calls.of(gone, "ReplaceRoute") == routes.SET_ASIDE_AFTER
    others = [t for t in world.tables if t != gone]
    assert [t.route_table_id for t in result.tables if t.ok] == others
    assert set(targets(world.client, others).values()) == {world.eni_b}


def test_take_over_never_sets_aside_a_table_the_api_throttles(proxy) -> None:  # type: ignore[no-untyped-def]
    # One attempt a call, so that every throttle reaches take_over; both tables are throttled for
    # two rounds more than a table that cannot be written is allowed.
    world = make_world(client_for(proxy.url, max_attempts=1), 2)
    throttles = 2 * (routes.SET_ASIDE_AFTER + 2)
    proxy.state.set_fault("throttle", throttles, ["ReplaceRoute"])
    result = routes.take_over(world.client, VIP, world.tables, world.eni_b, deadline_s=None,
                              should_continue=lambda: proxy.state.stats()["calls"].get("ReplaceRoute", 0) < 50)
    assert result.converged and result.set_aside == {}
    assert proxy.state.stats()["faults"] == {"ReplaceRoute": throttles}
    assert [t.attempts for t in result.tables] == [routes.SET_ASIDE_AFTER + 3] * 2
    assert set(targets(world.client, world.tables).values()) == {world.eni_b}


def test_take_over_keeps_asking_for_a_missing_route_and_never_sets_its_table_aside(moto: str) -> None:
    # EC2 answers ReplaceRoute on a missing route with InvalidParameterValue (DESIGN fact 15), as
    # moto does: the table can be written, and its route is the reconciler's to create.
    world = make_world(client_for(moto), 2)
    world.client.delete_route(RouteTableId=world.tables[0], DestinationCidrBlock=VIP + "/32")
    asked: list[str] = []
    result = routes.take_over(world.client, VIP, world.tables, world.eni_b, deadline_s=2.0, on_missing=asked.append)
    assert len(asked) > routes.SET_ASIDE_AFTER and set(asked) == {world.tables[0]}
    assert result.set_aside == {}
    assert [t.action for t in result.tables] == ["missing", "replaced"]


def _stubbed() -> tuple[Any, Stubber]:
    client = routes.make_client("us-east-1", "http://127.0.0.1:9", max_attempts=1)
    return client, Stubber(client)


def _table_at(eni: str) -> dict[str, Any]:
    return {"RouteTables": [{"RouteTableId": "rtb-1", "VpcId": "vpc-1", "Routes": [
        {"DestinationCidrBlock": VIP + "/32", "NetworkInterfaceId": eni, "State": "active"}]}]}


@pytest.mark.parametrize("code", ["InvalidRouteTableID.NotFound", "InvalidRouteTableId.Malformed",
                                  "UnauthorizedOperation", "AccessDenied"])
def test_each_answer_that_the_table_cannot_be_written_sets_it_aside_after_the_bound(code: str) -> None:
    client, stub = _stubbed()
    for _ in range(routes.SET_ASIDE_AFTER):
        stub.add_client_error("replace_route", service_error_code=code, service_message="said so", http_status_code=400)
        stub.add_response("describe_route_tables", _table_at("eni-a"))
    with stub:
        # The deadline only guards the test: past the stubbed answers, a take_over that did not set
        # the table aside would meet errors of the Stubber's, and write again until it.
        result = routes.take_over(client, VIP, ["rtb-1"], "eni-b", deadline_s=RUNAWAY_S)
        stub.assert_no_pending_responses()
    assert result.set_aside == {"rtb-1": f"{code}: said so"}
    assert (result.tables[0].action, result.tables[0].attempts) == (routes.SET_ASIDE, routes.SET_ASIDE_AFTER)
    assert not result.converged and not result.cancelled


@pytest.mark.parametrize(("code", "status"), [("RequestLimitExceeded", 503), ("Throttling", 400),
                                              ("InternalError", 500), ("ServiceUnavailable", 503)])
def test_answers_that_say_nothing_about_the_table_never_set_it_aside(code: str, status: int) -> None:
    client, stub = _stubbed()
    for _ in range(routes.SET_ASIDE_AFTER + 1):
        stub.add_client_error("replace_route", service_error_code=code, http_status_code=status)
        stub.add_response("describe_route_tables", _table_at("eni-a"))
    stub.add_response("replace_route", {})
    stub.add_response("describe_route_tables", _table_at("eni-b"))
    with stub:
        result = routes.take_over(client, VIP, ["rtb-1"], "eni-b", deadline_s=None)
        stub.assert_no_pending_responses()
    assert result.converged and result.set_aside == {}
    assert result.tables[0].attempts == routes.SET_ASIDE_AFTER + 2


# -- the state record ------------------------------------------------------------------------------

PAIR = "set-aside"


class StateRecords:
    """Stands in for the metrics file: keeps each record, checked against the EMF specification."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def __call__(self, text: str) -> None:
        assert emf_spec.problems(text) == [], text
        self.records.append(json.loads(text))

    @property
    def last_state(self) -> dict[str, Any]:
        return [r for r in self.records if r.get("record") == "state"][-1]


def test_the_state_record_counts_and_names_the_tables_set_aside_only_while_there_are_some() -> None:
    out = StateRecords()
    t = telemetry.Telemetry(PAIR, "b", out)
    assert t.state("MASTER", True, True, True)
    assert t.state("MASTER", True, True, True, tables_set_aside=["rtb-1", "rtb-2"])  # a change
    assert not t.state("MASTER", True, True, True, tables_set_aside=["rtb-1", "rtb-2"])
    assert t.state("MASTER", True, True, True, tables_set_aside=["rtb-2"])
    assert t.state("MASTER", True, True, True)
    records = [r for r in out.records if r["record"] == "state"]
    assert [emf_spec.metrics_of(r).get(metrics.ROUTE_TABLES_SET_ASIDE) for r in records] == [None, 2, 1, None]
    assert [r.get("tables_set_aside") for r in records] == [None, ["rtb-1", "rtb-2"], ["rtb-2"], None]
    # No new dimension: the same Pair and Node as every node metric.
    assert all(emf_spec.dimensions_of(r) == [{"Pair": PAIR, "Node": "b"}] for r in records)


# -- the agent -------------------------------------------------------------------------------------

HEALTHY_BACKUP = peer.PeerView(peer.REACHED, vrrp="BACKUP", healthy=True)


def _node_b(world: World, tmp: Path) -> NodeConfig:
    """This agent is node b (world.eni_b); its peer is node a, which holds the routes at first."""
    return parse_config(doc(node_name="b", eni_id=world.eni_b, route_table_ids=world.tables, profile="fast",
                            peers=[{"name": "a", "ip": "192.0.2.30", "eni_id": world.eni_a}],
                            pair_name=PAIR, paths={"run_dir": str(tmp / "run")}))


def _master(a: agent.Agent) -> None:
    """HAProxy healthy, then a MASTER transition; returns once the take-over has ended."""
    a.on_health(True)
    a.on_state(agent.MASTER)
    wait_for(lambda: not a.busy)


def _repair_tick(a: agent.Agent) -> None:
    a.maybe_repair()
    wait_for(lambda: not a.busy)


def test_a_master_sets_a_deleted_table_aside_converges_the_rest_and_keeps_repairing(moto: str, tmp_path: Path) -> None:
    c = client_for(moto)
    world = make_world(c, 4)
    gone = world.tables[1]
    others = [t for t in world.tables if t != gone]
    c.delete_route_table(RouteTableId=gone)
    calls = TableCalls(c)
    out, log = StateRecords(), Log()
    a = agent.Agent(_node_b(world, tmp_path), c, world.eni_b, log, metrics=telemetry.Telemetry(PAIR, "b", out, log))
    try:
        # Before the fix the take-over never ended: it wrote the deleted table about once a second.
        _master(a)
        assert set(targets(c, others).values()) == {world.eni_b}
        assert calls.of(gone, "ReplaceRoute") == routes.SET_ASIDE_AFTER
        (event,) = log.of("route_tables_set_aside")
        assert list(event["tables"]) == [gone] and event["tables"][gone].startswith("InvalidRouteTableID.NotFound")
        (move,) = log.of("route_move")
        assert move["set_aside"] == [gone] and move["moved"] == len(others)
        # Reported in the state record, and this node is the active one for every other table.
        state = out.last_state
        assert emf_spec.metrics_of(state)[metrics.ROUTE_TABLES_SET_ASIDE] == 1
        assert state["tables_set_aside"] == [gone] and state["Active"] == 1
        # The take-over still counts (the peer did not answer: a failover).
        wait_for(lambda: any(r.get("record") == telemetry.FAILOVER for r in out.records))

        # Repair goes on: a route at a stopped node's ENI is taken back at the next tick, and the
        # table set aside, which no read returns, costs no write.
        dead = make_world(c, 0)
        c.stop_instances(InstanceIds=[dead.instance_a])
        c.replace_route(RouteTableId=others[2], DestinationCidrBlock=VIP + "/32", NetworkInterfaceId=dead.eni_a)
        for _ in range(3):
            _repair_tick(a)
        assert set(targets(c, others).values()) == {world.eni_b}
        assert calls.of(gone, "ReplaceRoute") == routes.SET_ASIDE_AFTER
        assert [e["tables"] for e in log.of("route_repair")] == [[others[2]]]
        assert len(log.of("route_tables_set_aside")) == 1  # said once, not at every tick
        assert a.tables_set_aside.keys() == {gone} and a.active

        # A node that is not MASTER keeps nothing set aside: the tables are the next MASTER's.
        a.on_state(agent.FAULT)
        assert a.tables_set_aside == {} and metrics.ROUTE_TABLES_SET_ASIDE not in out.last_state
    finally:
        a.shutdown()


def test_a_resumed_master_sets_aside_a_table_its_read_does_not_return(moto: str, tmp_path: Path) -> None:
    c = client_for(moto)
    world = make_world(c, 3)
    gone = world.tables[0]
    c.delete_route_table(RouteTableId=gone)
    for t in world.tables[1:]:
        c.replace_route(RouteTableId=t, DestinationCidrBlock=VIP + "/32", NetworkInterfaceId=world.eni_b)
    log = Log()
    a = agent.Agent(_node_b(world, tmp_path), c, world.eni_b, log)
    try:
        a.on_health(True)
        a.on_state(agent.MASTER, reason="resumed", resumed=True)
        wait_for(lambda: not a.busy)
        _repair_tick(a)
    finally:
        a.shutdown()
    assert log.of("route_tables_set_aside") == [{
        "event": "route_tables_set_aside", "node": "b", "tables": {gone: "route table not found"}, "set_aside": 1,
        "retry_every_s": a.cfg.timing.repair_interval_s}]
    assert not log.of("route_repair") and a.routes_here is True


def test_a_master_never_sets_aside_a_table_the_api_throttles(proxy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    world = make_world(client_for(proxy.url), 3)
    # Every write of four rounds throttled; one attempt a call, so that each reaches the take-over.
    throttles = 3 * (routes.SET_ASIDE_AFTER + 1)
    proxy.state.set_fault("throttle", throttles, ["ReplaceRoute"])
    log = Log()
    a = agent.Agent(_node_b(world, tmp_path), client_for(proxy.url, max_attempts=1), world.eni_b, log)
    try:
        _master(a)
    finally:
        a.shutdown()
    assert proxy.state.stats()["faults"] == {"ReplaceRoute": throttles}
    (move,) = log.of("route_move")
    assert move["converged"] and move["set_aside"] == [] and move["attempts"] == routes.SET_ASIDE_AFTER + 2
    assert not log.of("route_tables_set_aside") and a.tables_set_aside == {}
    assert set(targets(world.client, world.tables).values()) == {world.eni_b}


def test_a_table_whose_permission_is_fixed_is_repaired_at_the_next_repair_tick(proxy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    c = client_for(proxy.url)
    world = make_world(c, 3)
    locked = world.tables[0]
    proxy.state.refused = {locked}  # the role may not write it (IAM)
    calls = TableCalls(c)
    out, log = StateRecords(), Log()
    a = agent.Agent(_node_b(world, tmp_path), c, world.eni_b, log, metrics=telemetry.Telemetry(PAIR, "b", out, log))
    # The peer is a healthy BACKUP: the route the locked table keeps at it is this MASTER's to take.
    a.peer_views["a"] = HEALTHY_BACKUP
    try:
        _master(a)
        assert a.tables_set_aside.keys() == {locked}
        assert a.tables_set_aside[locked].startswith("UnauthorizedOperation")
        assert calls.of(locked, "ReplaceRoute") == routes.SET_ASIDE_AFTER
        assert targets(c, world.tables) == {locked: world.eni_a, **dict.fromkeys(world.tables[1:], world.eni_b)}
        # While it stays refused, each repair tick writes it once, and logs nothing new.
        for tick in range(1, 4):
            _repair_tick(a)
            assert calls.of(locked, "ReplaceRoute") == routes.SET_ASIDE_AFTER + tick
        assert len(log.of("route_tables_set_aside")) == 1 and not log.of("route_repair")
        assert out.last_state["tables_set_aside"] == [locked]

        # The permission is fixed: the next tick repairs the table, with no restart.
        proxy.state.refused = set()
        _repair_tick(a)
        assert set(targets(c, world.tables).values()) == {world.eni_b}
        assert log.of("route_tables_back") == [{"event": "route_tables_back", "node": "b", "tables": [locked],
                                                "set_aside": 0}]
        assert log.of("route_repair")[-1]["tables"] == [locked]
        assert a.tables_set_aside == {} and a.active
        state = out.last_state
        assert metrics.ROUTE_TABLES_SET_ASIDE not in state and "tables_set_aside" not in state and state["Active"] == 1
    finally:
        a.shutdown()
