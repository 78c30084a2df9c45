"""The route module's promises that the mutation run (scripts/mutate) found no test for.

Decisions and answers EC2 gives rarely (a create race, an error code) run against botocore's
Stubber: only the unit is meant there.  The rest runs against moto, as test_routes_api.py does.
"""

from __future__ import annotations

import time
import types
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from botocore.stub import Stubber

from haproxy_ha_runtime import routes
from tests.conftest import VIP, client_for, make_world, targets

CIDR = VIP + "/32"


def _stubbed() -> tuple[Any, Stubber]:
    client = routes.make_client("us-east-1", "http://127.0.0.1:9", max_attempts=1)
    return client, Stubber(client)


def _table(rtb: str, *routes_: dict[str, Any], vpc: str = "vpc-1") -> dict[str, Any]:
    return {"RouteTableId": rtb, "VpcId": vpc, "Routes": list(routes_)}


# -- the client ------------------------------------------------------------------------------------

def test_the_client_uses_standard_retries_bounded_timeouts_and_a_pool_for_parallel_calls() -> None:
    c = routes.make_client("eu-west-1", "http://127.0.0.1:9")
    assert (c.meta.region_name, c.meta.endpoint_url) == ("eu-west-1", "http://127.0.0.1:9")
    assert c.meta.config.retries == {"mode": "standard", "total_max_attempts": 3}
    assert (c.meta.config.connect_timeout, c.meta.config.read_timeout) == (2.0, 5.0)
    assert c.meta.config.max_pool_connections == routes.MAX_WORKERS
    other = routes.make_client("eu-west-1", max_attempts=5, connect_timeout=0.5, read_timeout=1.5)
    assert other.meta.config.retries == {"mode": "standard", "total_max_attempts": 5}
    assert (other.meta.config.connect_timeout, other.meta.config.read_timeout) == (0.5, 1.5)


def test_the_client_comes_from_the_given_session() -> None:
    made: list[str] = []

    class Session(boto3.session.Session):
        def client(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            made.append(args[0])
            return super().client(*args, **kwargs)

    routes.make_client("us-east-1", session=Session())
    assert made == ["ec2"]


def test_the_call_counter_reads_the_action_of_each_request() -> None:
    client = routes.make_client("us-east-1", "http://127.0.0.1:9")
    counter = routes.CallCounter(client)
    for body in (b"Version=2016-11-15&Action=ReplaceRoute&X=1", "Action=ReplaceRoute", b"Action=DescribeVpcs",
                 b"", None, b"Version=1"):
        counter._on_send(request=types.SimpleNamespace(body=body))
    counter._on_send(request=types.SimpleNamespace())  # a request without a body at all
    assert counter.counts == {"ReplaceRoute": 2, "DescribeVpcs": 1, "unknown": 4}
    assert counter.total == 7


# -- what a table says about the VIP --------------------------------------------------------------

@pytest.mark.parametrize("key", ["InstanceId", "GatewayId", "NatGatewayId", "TransitGatewayId",
                                 "VpcPeeringConnectionId", "LocalGatewayId", "CarrierGatewayId"])
def test_a_vip_route_to_something_else_than_an_eni_names_its_target(key: str) -> None:
    table = _table("rtb-1", {"DestinationCidrBlock": "10.0.0.0/16", "GatewayId": "local", "State": "active"},
                   {"DestinationCidrBlock": CIDR, key: "x-0123", "State": "active"})
    assert routes._route_view(table, CIDR) == routes.VipRoute("rtb-1", "active", None, f"{key}=x-0123", "vpc-1")


def test_a_vip_route_without_a_state_is_active_and_an_eni_target_is_no_other_target() -> None:
    table = _table("rtb-1", {"DestinationCidrBlock": CIDR, "NetworkInterfaceId": "eni-1", "InstanceId": "i-1"})
    assert routes._route_view(table, CIDR) == routes.VipRoute("rtb-1", "active", "eni-1", None, "vpc-1")
    assert routes._route_view(_table("rtb-2"), CIDR) == routes.VipRoute("rtb-2", "missing", vpc_id="vpc-1")
    blackhole = _table("rtb-3", {"DestinationCidrBlock": CIDR, "NetworkInterfaceId": "eni-1", "State": "blackhole"})
    assert routes._route_view(blackhole, CIDR).state == routes.ROUTE_BLACKHOLE


def test_describe_asks_for_at_most_100_tables_a_call_and_each_once() -> None:
    ids = [f"rtb-{i:04d}" for i in range(150)]
    client, stub = _stubbed()
    for chunk in (ids[:100], ids[100:]):
        stub.add_response("describe_route_tables", {"RouteTables": [_table(t) for t in chunk]},
                          {"Filters": [{"Name": "route-table-id", "Values": chunk}]})
    with stub:
        views = routes.describe_vip_routes(client, VIP, ids + ids[:10])
        stub.assert_no_pending_responses()
    assert list(views) == ids and {v.state for v in views.values()} == {"missing"}


def test_find_reports_only_tables_whose_vip_route_it_can_see(moto: str) -> None:
    world = make_world(client_for(moto), 2)
    found = routes.find_vip_route_tables(world.client, VIP, world.vpc_id)
    assert found == {t: routes.VipRoute(t, "active", world.eni_a, None, world.vpc_id) for t in world.tables}


# -- who owns an ENI ------------------------------------------------------------------------------

def test_eni_owners_of_no_eni_asks_nothing() -> None:
    client, stub = _stubbed()
    with stub:
        assert routes.eni_owners(client, []) == {}


def test_eni_owners_carry_the_instance_and_both_tag_sets(moto: str) -> None:
    world = make_world(client_for(moto), 1)
    owners = routes.eni_owners(world.client, [world.eni_b, world.eni_a, world.eni_a])
    assert list(owners) == sorted([world.eni_a, world.eni_b])
    b = owners[world.eni_b]
    assert (b.eni_id, b.instance_id, b.instance_state) == (world.eni_b, world.instance_b, "running")
    assert b.eni_tags == {"haproxy-ha:node": "b"} and b.instance_tags == {"Name": "node-b"}


def test_eni_owners_treat_a_not_found_answer_as_no_owner_and_raise_on_others() -> None:
    client, stub = _stubbed()
    stub.add_client_error("describe_network_interfaces", "InvalidNetworkInterfaceID.NotFound", "gone")
    stub.add_client_error("describe_network_interfaces", "UnauthorizedOperation", "no")
    with stub:
        assert routes.eni_owners(client, ["eni-1"]) == {"eni-1": routes.EniOwner("eni-1")}
        with pytest.raises(Exception, match="UnauthorizedOperation"):
            routes.eni_owners(client, ["eni-1"])


@pytest.mark.parametrize("answer", [
    {"Reservations": []}, {}, {"Reservations": [{}]},
    {"Reservations": [{"Instances": [{"InstanceId": "i-1"}]}]},  # listed, but with no state
])
def test_an_eni_attached_to_an_instance_that_is_not_listed_has_no_state(answer: dict[str, Any]) -> None:
    client, stub = _stubbed()
    stub.add_response("describe_network_interfaces", {"NetworkInterfaces": [
        {"NetworkInterfaceId": "eni-1", "Attachment": {"InstanceId": "i-1"}, "TagSet": [{"Key": "k", "Value": "v"}]},
        {"NetworkInterfaceId": "eni-2"}]})
    stub.add_response("describe_instances", answer, {"Filters": [{"Name": "instance-id", "Values": ["i-1"]}]})
    with stub:
        owners = routes.eni_owners(client, ["eni-2", "eni-1"])
    assert owners == {"eni-1": routes.EniOwner("eni-1", "i-1", None, {"k": "v"}, {}),
                      "eni-2": routes.EniOwner("eni-2")}


# -- the decisions ---------------------------------------------------------------------------------

def _view(rtb: str, eni: str | None, state: str = "active") -> routes.VipRoute:
    return routes.VipRoute(rtb, state, eni)


def test_needs_repair_only_a_route_that_is_not_active_at_a_live_eni() -> None:
    live = {"eni-a", "eni-b"}
    assert not routes.needs_repair(_view("r", "eni-b"), live)
    assert routes.needs_repair(_view("r", "eni-b", "blackhole"), live)
    assert routes.needs_repair(_view("r", None, "missing"), live)
    assert routes.needs_repair(_view("r", None), live)  # active, but at something else than an ENI
    assert routes.needs_repair(_view("r", "eni-c"), live)


def test_choose_target_follows_the_majority_of_healthy_routes_then_the_preference() -> None:
    views = [_view("1", "eni-b"), _view("2", "eni-b"), _view("3", "eni-a"),
             _view("4", "eni-a", "blackhole"), _view("5", "eni-a", "blackhole"), _view("6", "eni-dead")]
    assert routes.choose_target(views, ["eni-a", "eni-b"]) == "eni-b"
    tie = [_view("1", "eni-b"), _view("2", "eni-a")]
    assert routes.choose_target(tie, ["eni-a", "eni-b"]) == "eni-a"
    assert routes.choose_target(tie, ["eni-b", "eni-a"]) == "eni-b"
    assert routes.choose_target([_view("1", "eni-dead"), _view("2", None, "missing")], ["eni-b", "eni-a"]) == "eni-b"
    assert routes.choose_target(tie, []) is None
    assert routes.choose_target(iter(tie), iter(["eni-b"])) == "eni-b"


# -- one table's write -----------------------------------------------------------------------------

def test_a_route_created_by_someone_else_between_replace_and_create_is_replaced() -> None:
    client, stub = _stubbed()
    params = {"RouteTableId": "rtb-1", "DestinationCidrBlock": CIDR, "NetworkInterfaceId": "eni-b"}
    stub.add_client_error("replace_route", "InvalidRoute.NotFound", "no route", expected_params=params)
    stub.add_client_error("create_route", "RouteAlreadyExists", "exists", expected_params=params)
    stub.add_response("replace_route", {}, params)
    with stub:
        assert routes._point_route(client, "rtb-1", CIDR, "eni-b") == "replaced"
        stub.assert_no_pending_responses()


def test_replace_route_on_a_missing_route_is_told_from_other_invalid_values_by_the_table() -> None:
    client, stub = _stubbed()
    # Real EC2's answer to ReplaceRoute on a missing route: the table shows no VIP route.
    stub.add_client_error("replace_route", "InvalidParameterValue", "There is no route defined for ...")
    stub.add_response("describe_route_tables", {"RouteTables": [_table("rtb-1")]})
    stub.add_response("create_route", {"Return": True})
    # The same code for another mistake: the route is there, so the error stands.
    stub.add_client_error("replace_route", "InvalidParameterValue", "bad ENI")
    stub.add_response("describe_route_tables", {"RouteTables": [
        _table("rtb-1", {"DestinationCidrBlock": CIDR, "NetworkInterfaceId": "eni-a", "State": "active"})]})
    # And a table that is not there at all.
    stub.add_client_error("replace_route", "InvalidParameterValue", "whatever")
    stub.add_response("describe_route_tables", {"RouteTables": []})
    stub.add_client_error("replace_route", "UnauthorizedOperation", "no")
    with stub:
        assert routes._point_route(client, "rtb-1", CIDR, "eni-b") == "created"
        for code in ("InvalidParameterValue", "InvalidParameterValue", "UnauthorizedOperation"):
            with pytest.raises(Exception, match=code):
                routes._point_route(client, "rtb-1", CIDR, "eni-b")
        stub.assert_no_pending_responses()


def test_a_missing_route_is_not_created_when_the_caller_may_only_replace() -> None:
    client, stub = _stubbed()
    stub.add_client_error("replace_route", "InvalidRoute.NotFound", "no route")
    # A create that fails otherwise than "it exists" is an error, not a replace.
    stub.add_client_error("replace_route", "InvalidRoute.NotFound", "no route")
    stub.add_client_error("create_route", "RouteLimitExceeded", "full")
    with stub:
        assert routes._point_route(client, "rtb-1", CIDR, "eni-b", create_missing=False) == "missing"
        with pytest.raises(Exception, match="RouteLimitExceeded"):
            routes._point_route(client, "rtb-1", CIDR, "eni-b")
        stub.assert_no_pending_responses()


# -- take_over -------------------------------------------------------------------------------------

def test_take_over_of_no_table_converges_at_once() -> None:
    client, stub = _stubbed()
    with stub:
        result = routes.take_over(client, VIP, [], "eni-b")
    assert result.converged and result.tables == [] and result.eni_id == "eni-b"


def test_take_over_result_names_each_table_once_in_order_with_its_time(moto: str) -> None:
    world = make_world(client_for(moto), 3)
    first: list[int] = []
    tables = [world.tables[2], world.tables[0], world.tables[2], world.tables[1]]
    result = routes.take_over(world.client, VIP, tables, world.eni_b, on_first_write=lambda: first.append(1))
    assert first == [1]
    assert [t.route_table_id for t in result.tables] == [world.tables[2], world.tables[0], world.tables[1]]
    assert all(t.ok and t.action == "replaced" and t.attempts == 1 and t.error is None for t in result.tables)
    assert all(0 < t.elapsed_s <= result.elapsed_s < 30 for t in result.tables)
    assert result.errors == [] and not result.cancelled and result.eni_id == world.eni_b


def test_take_over_names_what_did_not_converge(moto: str) -> None:
    world = make_world(client_for(moto), 1)
    ghost = "rtb-0123456789abcdef0"
    result = routes.take_over(world.client, VIP, [ghost], world.eni_b, deadline_s=0.0)
    (only,) = result.tables
    assert (only.ok, only.action, only.attempts) == (False, "failed", 1)
    assert only.error is not None and only.error.startswith("InvalidRouteTableID.NotFound")
    assert 0 < only.elapsed_s <= result.elapsed_s


def test_take_over_clears_a_failed_attempts_error_once_a_write_succeeds(proxy) -> None:  # type: ignore[no-untyped-def]
    world = make_world(client_for(proxy.url, max_attempts=1), 1)
    proxy.state.set_fault("5xx", 1, ["ReplaceRoute"])
    result = routes.take_over(world.client, VIP, world.tables, world.eni_b, deadline_s=10)
    (only,) = result.tables
    assert (only.ok, only.action, only.attempts, only.error) == (True, "replaced", 2, None)


def test_a_route_that_is_right_despite_a_failed_write_is_ok(proxy) -> None:  # type: ignore[no-untyped-def]
    world = make_world(client_for(proxy.url, max_attempts=1), 1)
    proxy.state.set_fault("5xx", 10_000, ["ReplaceRoute"])
    result = routes.take_over(world.client, VIP, world.tables, world.eni_a, deadline_s=10)
    (only,) = result.tables
    assert result.converged and (only.ok, only.action, only.attempts) == (True, "replaced", 1)


def test_a_failed_verify_is_reported_and_tried_again(proxy) -> None:  # type: ignore[no-untyped-def]
    world = make_world(client_for(proxy.url, max_attempts=1), 2)
    proxy.state.set_fault("5xx", 1, ["DescribeRouteTables"])
    result = routes.take_over(world.client, VIP, world.tables, world.eni_b, deadline_s=10)
    assert result.converged
    assert result.errors == ["verify: InternalError: An internal error has occurred."]
    assert [t.attempts for t in result.tables] == [2, 2]


def test_a_route_that_does_not_verify_says_so(proxy, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    world = make_world(client_for(proxy.url), 1)
    proxy.state.blackhole = {world.eni_b}  # every write lands, but the route never serves
    _Paced(monkeypatch, jitter=1.0)  # a clock that moves only by the pauses take_over asks for
    result = routes.take_over(world.client, VIP, world.tables, world.eni_b, deadline_s=0.3)
    (only,) = result.tables
    assert not result.converged and not result.cancelled
    assert (only.ok, only.action, only.error) == (False, "replaced", "route did not point at the ENI when verified")
    assert only.attempts == 3  # at 0, 0.05 and 0.15 s; the next would be at 0.35 s


def test_a_table_gone_before_the_verify_says_so(proxy) -> None:  # type: ignore[no-untyped-def]
    world = make_world(client_for(proxy.url), 1)
    c = world.client

    def drop_table() -> None:
        c.delete_route(RouteTableId=world.tables[0], DestinationCidrBlock=CIDR)
        c.delete_route_table(RouteTableId=world.tables[0])

    proxy.state.on_call("DescribeRouteTables", drop_table)
    result = routes.take_over(c, VIP, world.tables, world.eni_b, deadline_s=0.0)
    assert proxy.state.hook_errors == []
    (only,) = result.tables
    assert (only.ok, only.action, only.error) == (False, "replaced", "route table not found")


def test_a_cancelled_take_over_marks_what_it_left(proxy) -> None:  # type: ignore[no-untyped-def]
    world = make_world(client_for(proxy.url, max_attempts=1), 2)
    proxy.state.set_fault("5xx", 10_000, ["ReplaceRoute"])
    calls = {"n": 0}

    def go_on() -> bool:
        calls["n"] += 1
        return calls["n"] <= 3  # the loop, then each table's write; then stop

    result = routes.take_over(world.client, VIP, world.tables, world.eni_b, deadline_s=None, should_continue=go_on)
    assert result.cancelled and not result.converged
    assert [t.action for t in result.tables] == ["cancelled", "cancelled"]
    assert set(targets(world.client, world.tables).values()) == {world.eni_a}


def test_take_over_with_on_missing_asks_instead_of_creating(moto: str) -> None:
    world = make_world(client_for(moto), 2)
    world.client.delete_route(RouteTableId=world.tables[1], DestinationCidrBlock=CIDR)
    asked: list[str] = []
    result = routes.take_over(world.client, VIP, world.tables, world.eni_b, deadline_s=0.2, on_missing=asked.append)
    assert set(asked) == {world.tables[1]} and len(asked) >= 1
    missing = result.tables[1]
    assert (missing.ok, missing.action, missing.error) == (False, "missing", "the table has no VIP route to replace")
    assert targets(world.client, world.tables) == {world.tables[0]: world.eni_b, world.tables[1]: None}


# -- ensure_routes and delete_routes ---------------------------------------------------------------

def test_ensure_routes_reports_each_table_once_in_order(moto: str) -> None:
    world = make_world(client_for(moto), 2, with_routes=False)
    ghost = "rtb-0123456789abcdef0"
    result = routes.ensure_routes(world.client, VIP, [world.tables[1], ghost, world.tables[1], world.tables[0]],
                                  world.eni_b)
    assert [(t.route_table_id, t.ok, t.action, t.error) for t in result.tables] == [
        (world.tables[1], True, "created", None),
        (ghost, False, "failed", "route table not found"),
        (world.tables[0], True, "created", None),
    ]
    assert [t.attempts for t in result.tables if t.ok] == [1, 1]
    assert result.eni_id == world.eni_b and result.elapsed_s > 0


def test_ensure_routes_counts_a_route_created_meanwhile_as_unchanged_and_fails_on_other_errors() -> None:
    client, stub = _stubbed()
    stub.add_response("describe_route_tables", {"RouteTables": [_table("rtb-1")]})
    stub.add_client_error("create_route", "RouteAlreadyExists", "exists")
    stub.add_response("describe_route_tables", {"RouteTables": [_table("rtb-1")]})
    stub.add_client_error("create_route", "RouteLimitExceeded", "full")
    with stub:
        (ok,) = routes.ensure_routes(client, VIP, ["rtb-1"], "eni-b").tables
        (bad,) = routes.ensure_routes(client, VIP, ["rtb-1"], "eni-b").tables
    assert (ok.ok, ok.action, ok.attempts, ok.error) == (True, "unchanged", 1, None)
    assert (bad.ok, bad.action, bad.attempts, bad.error) == (False, "failed", 1, "RouteLimitExceeded: full")


def test_delete_routes_of_a_table_that_is_gone_is_absent_and_a_lost_connection_fails() -> None:
    client, stub = _stubbed()
    stub.add_client_error("delete_route", "InvalidRouteTableID.NotFound", "gone",
                          expected_params={"RouteTableId": "rtb-1", "DestinationCidrBlock": CIDR})
    stub.add_client_error("delete_route", "InvalidParameterValue", "There is no route defined for x")
    stub.add_client_error("delete_route", "UnauthorizedOperation", "no")
    with stub:
        results = [routes.delete_routes(client, VIP, ["rtb-1"]).tables[0] for _ in range(3)]
    assert [(r.route_table_id, r.ok, r.action, r.attempts) for r in results] == [
        ("rtb-1", True, "absent", 1), ("rtb-1", True, "absent", 1), ("rtb-1", False, "failed", 1)]
    assert results[2].error == "UnauthorizedOperation: no"
    assert all(0 < r.elapsed_s < 30 for r in results)  # each timed, a tolerated error too

    def unreachable(**_: Any) -> None:
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9")

    client.delete_route = unreachable
    (lost,) = routes.delete_routes(client, VIP, ["rtb-1"]).tables
    assert (lost.route_table_id, lost.ok, lost.action, lost.attempts) == ("rtb-1", False, "failed", 1)
    assert 0 <= lost.elapsed_s < 30
    assert lost.error is not None and lost.error.startswith("EndpointConnectionError: ")
    assert routes.delete_routes(client, VIP, []).tables == []


def test_find_asks_for_the_vip_route_in_the_vpc_and_takes_an_empty_answer() -> None:
    client, stub = _stubbed()
    stub.add_response("describe_route_tables", {}, {"Filters": [
        {"Name": "route.destination-cidr-block", "Values": [CIDR]}, {"Name": "vpc-id", "Values": ["vpc-1"]}]})
    stub.add_response("describe_route_tables", {}, {"Filters": [
        {"Name": "route.destination-cidr-block", "Values": [CIDR]}]})
    stub.add_response("describe_route_tables", {})
    with stub:
        assert routes.find_vip_route_tables(client, VIP, "vpc-1") == {}
        assert routes.find_vip_route_tables(client, VIP) == {}
        assert routes.describe_vip_routes(client, VIP, ["rtb-1"]) == {}
        stub.assert_no_pending_responses()


def test_only_a_missing_route_counts_as_not_found() -> None:
    def err(code: str | None, message: str | None) -> ClientError:
        error = {k: v for k, v in (("Code", code), ("Message", message)) if v is not None}
        return ClientError({"Error": error} if error else {}, "DeleteRoute")

    assert routes._route_not_found(err("InvalidRoute.NotFound", None))
    assert routes._route_not_found(err("InvalidParameterValue", "There is no route defined for '1.2.3.4/32'"))
    assert not routes._route_not_found(err("InvalidParameterValue", "Value (x) for parameter y is invalid"))
    assert not routes._route_not_found(err("InvalidParameterValue", None))
    assert not routes._route_not_found(err("SomethingElse", "There is no route defined for '1.2.3.4/32'"))
    assert not routes._route_not_found(err(None, None))


def test_ensure_and_delete_report_each_table_and_their_time(moto: str) -> None:
    world = make_world(client_for(moto), 2)
    world.client.delete_route(RouteTableId=world.tables[1], DestinationCidrBlock=CIDR)
    ensured = routes.ensure_routes(world.client, VIP, world.tables, world.eni_b)
    assert [(t.route_table_id, t.ok, t.action, t.attempts, t.error) for t in ensured.tables] == [
        (world.tables[0], True, "unchanged", 0, None), (world.tables[1], True, "created", 1, None)]
    assert 0 < ensured.elapsed_s < 30
    deleted = routes.delete_routes(world.client, VIP, world.tables)
    assert [(t.route_table_id, t.ok, t.action, t.attempts) for t in deleted.tables] == [
        (world.tables[0], True, "deleted", 1), (world.tables[1], True, "deleted", 1)]
    assert deleted.eni_id is None and 0 < deleted.elapsed_s < 30
    assert all(0 < t.elapsed_s <= deleted.elapsed_s for t in deleted.tables)


def test_an_error_is_described_by_its_code_and_message() -> None:
    assert routes._describe_error(ClientError({"Error": {"Code": "Throttling", "Message": "slow down"}}, "op")) == (
        "Throttling: slow down")
    assert routes._describe_error(ClientError({"Error": {"Code": "Throttling"}}, "op")) == "Throttling:"
    # An error without a code, or without any detail, says no more than it has.
    assert routes._describe_error(ClientError({"Error": {"Message": "odd"}}, "op")) == ": odd"
    assert routes._describe_error(ClientError({}, "op")) == ":"
    assert routes._describe_error(EndpointConnectionError(endpoint_url="http://x")) == (
        'EndpointConnectionError: Could not connect to the endpoint URL: "http://x"')


def test_a_pause_ends_soon_after_the_caller_stops_wanting_it() -> None:
    start = time.monotonic()
    routes._pause(1.0, lambda: time.monotonic() < start + 0.1)
    assert time.monotonic() - start < 0.8  # not the whole second
    start = time.monotonic()
    routes._pause(0.2, lambda: True)
    assert time.monotonic() - start >= 0.2


def test_a_table_already_right_that_was_not_written_is_unchanged(moto: str) -> None:
    world = make_world(client_for(moto), 1)
    # The caller stops wanting the move just as the table's write would start, then wants it again
    # (an agent that left MASTER and came back): the table was never written, and it is right.
    answers = iter([True, False])
    result = routes.take_over(world.client, VIP, world.tables, world.eni_a, deadline_s=5,
                              should_continue=lambda: next(answers, True))
    (only,) = result.tables
    assert result.converged and (only.ok, only.action, only.attempts) == (True, "unchanged", 0)


# -- take_over's pacing, on a clock the test moves -------------------------------------------------

# The pause between rounds before its jitter: 0.05 s, doubled after every round, at most 1 s.
BACKOFF = [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


class _Paced:
    """Stands in for take_over's time and jitter, in the route module only: the clock moves only
    by the pauses take_over asks for, each pause is recorded rather than slept, and each jitter
    draw returns the point `jitter` of the way through the range it was asked for (0: its low end,
    1: its high end).  The writes still go to EC2 (moto, through the fault proxy); each takes
    `write_s` on the clock."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, jitter: float, write_s: float = 0.0) -> None:
        self.now = 0.0
        self.jitter = jitter
        self.pauses: list[float] = []
        self.ranges: list[tuple[float, float]] = []
        self.writes: list[float] = []  # the clock at each table write
        point_route = routes._point_route

        def write(*args: Any, **kwargs: Any) -> str:
            self.writes.append(self.now)
            try:
                return point_route(*args, **kwargs)
            finally:
                self.now += write_s

        monkeypatch.setattr(routes, "time", types.SimpleNamespace(monotonic=lambda: self.now))
        monkeypatch.setattr(routes, "random", types.SimpleNamespace(uniform=self._uniform))
        monkeypatch.setattr(routes, "_pause", self._pause)
        monkeypatch.setattr(routes, "_point_route", write)

    def _uniform(self, low: float, high: float) -> float:
        self.ranges.append((low, high))
        return low + (high - low) * self.jitter

    def _pause(self, seconds: float, should_continue: Any) -> None:
        # Pauses that shrink would never reach a deadline: fail rather than hang.
        assert len(self.pauses) < 30, f"more than 30 pauses: {self.pauses[:10]}..."
        self.pauses.append(seconds)
        self.now += seconds


def _failing_table(proxy) -> Any:  # type: ignore[no-untyped-def]
    """One table whose every write fails (a 5xx, and no botocore retry, which would sleep)."""
    world = make_world(client_for(proxy.url, max_attempts=1), 1)
    proxy.state.set_fault("5xx", 10_000, ["ReplaceRoute"])
    return world


@pytest.mark.parametrize("jitter", [0.0, 1.0])
def test_take_over_pauses_half_to_all_of_a_doubling_pause_capped_at_a_second(
        proxy, monkeypatch: pytest.MonkeyPatch, jitter: float) -> None:  # type: ignore[no-untyped-def]
    world = _failing_table(proxy)
    paced = _Paced(monkeypatch, jitter)
    # No deadline: the caller stops wanting the move after len(BACKOFF) pauses.
    result = routes.take_over(world.client, VIP, world.tables, world.eni_b, deadline_s=None,
                              should_continue=lambda: len(paced.pauses) < len(BACKOFF))
    assert result.cancelled and not result.converged
    assert paced.ranges == [(0.5, 1.0)] * len(BACKOFF)
    assert paced.pauses == pytest.approx([p * (0.5 + 0.5 * jitter) for p in BACKOFF])
    # A round of writes before each pause; none after the last (the caller stopped wanting it).
    assert proxy.state.stats()["calls"]["ReplaceRoute"] == len(BACKOFF)
    assert result.tables[0].attempts == len(BACKOFF)


def _clock_after(pauses: list[float]) -> float:
    """The fake clock after these pauses, added one by one as _Paced adds them (so exactly)."""
    now = 0.0
    for p in pauses:
        now += p
    return now


@pytest.mark.parametrize("deadline_s", [
    pytest.param(2.0, id="sixth-pause-ends-past-it"),  # by 0.55 s
    pytest.param(_clock_after(BACKOFF[:6]), id="sixth-pause-ends-at-it"),
    pytest.param(_clock_after(BACKOFF[:6]) + 0.01, id="sixth-pause-ends-before-it"),
])
def test_take_over_takes_no_pause_that_would_end_at_or_past_the_deadline(
        proxy, monkeypatch: pytest.MonkeyPatch, deadline_s: float) -> None:  # type: ignore[no-untyped-def]
    world = _failing_table(proxy)
    paced = _Paced(monkeypatch, jitter=1.0)  # each pause is then its whole backoff
    result = routes.take_over(world.client, VIP, world.tables, world.eni_b, deadline_s=deadline_s)
    assert not result.converged and not result.cancelled
    taken = 6 if deadline_s > _clock_after(BACKOFF[:6]) else 5
    assert paced.pauses == BACKOFF[:taken]
    # A round of writes at the start and after each pause, every one before the deadline, and the
    # next pause would have ended at or past it.
    assert paced.writes == [_clock_after(BACKOFF[:n]) for n in range(taken + 1)]
    assert paced.writes[-1] < deadline_s <= paced.writes[-1] + BACKOFF[taken]


def test_take_over_gives_up_after_ten_seconds_by_default(proxy, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    world = _failing_table(proxy)
    paced = _Paced(monkeypatch, jitter=1.0, write_s=1.0)  # a slow API: each round takes a second
    result = routes.take_over(world.client, VIP, world.tables, world.eni_b)
    assert not result.converged and not result.cancelled
    # Rounds start at 0, 1.05, 2.15, 3.35, 4.75, 6.55 and 8.55 s; the last ends at 9.55 s, and the
    # next would start at 10.55 s, past the 10 s.
    assert paced.pauses == BACKOFF[:6]
    assert paced.writes == pytest.approx([0.0, 1.05, 2.15, 3.35, 4.75, 6.55, 8.55])
    assert paced.now == pytest.approx(9.55)
