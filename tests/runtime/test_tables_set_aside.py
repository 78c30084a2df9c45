"""A route table that cannot be written (deleted, not this VPC's, or not the role's to write) is set
aside after a bound, so that the others converge; a table that is only throttled, or only lacks
its route, is never set aside; a node's state record counts and names the tables it set aside
(issue 20, item 6).

The route module runs against moto over HTTP: a deleted table there answers
InvalidRouteTableID.NotFound as EC2 does.  The fault proxy throttles.  The codes moto never sends
go through botocore's Stubber, where only the unit is meant.  No test waits on the wall clock to
see that something stopped: each counts the calls that named the table.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.stub import Stubber

from haproxy_ha_runtime import metrics, routes, telemetry
from tests.conftest import VIP, client_for, make_world, targets
from tests.support import emf_spec
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
