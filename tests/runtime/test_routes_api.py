"""The route module against a moto server over HTTP, with faults from a proxy in front of it."""

from __future__ import annotations

import threading
import time

import pytest
from botocore.exceptions import ClientError

from haproxy_ha_runtime import routes
from tests.conftest import VIP, client_for, make_world, run_at_once, targets, vip_route_count


@pytest.mark.parametrize("n_tables", [1, 50])
def test_take_over_moves_every_table_and_verifies(moto: str, n_tables: int) -> None:
    world = make_world(client_for(moto), n_tables)
    result = routes.take_over(world.client, VIP, world.tables, world.eni_b)
    assert result.converged
    assert sorted(result.moved) == sorted(world.tables)
    assert set(targets(world.client, world.tables).values()) == {world.eni_b}


def test_take_over_creates_a_missing_route(moto: str) -> None:
    world = make_world(client_for(moto), 3)
    world.client.delete_route(RouteTableId=world.tables[1], DestinationCidrBlock=VIP + "/32")
    result = routes.take_over(world.client, VIP, world.tables, world.eni_b)
    assert result.converged
    actions = {t.route_table_id: t.action for t in result.tables}
    assert actions[world.tables[1]] == "created"
    assert actions[world.tables[0]] == "replaced"
    assert set(targets(world.client, world.tables).values()) == {world.eni_b}


def test_take_over_touches_only_the_vip_route(moto: str) -> None:
    world = make_world(client_for(moto), 2)
    c = world.client
    other = "198.51.100.0/24"
    c.create_route(RouteTableId=world.tables[0], DestinationCidrBlock=other, NetworkInterfaceId=world.eni_a)
    routes.take_over(c, VIP, world.tables, world.eni_b)
    table = c.describe_route_tables(RouteTableIds=[world.tables[0]])["RouteTables"][0]
    by_dest = {r.get("DestinationCidrBlock"): r for r in table["Routes"]}
    assert by_dest[other]["NetworkInterfaceId"] == world.eni_a
    assert by_dest[VIP + "/32"]["NetworkInterfaceId"] == world.eni_b


def test_take_over_reports_a_table_that_does_not_exist(moto: str) -> None:
    world = make_world(client_for(moto), 1)
    ghost = "rtb-0123456789abcdef0"
    result = routes.take_over(world.client, VIP, [*world.tables, ghost], world.eni_b, deadline_s=0.5)
    assert not result.converged
    bad = {t.route_table_id: t for t in result.tables if not t.ok}
    assert list(bad) == [ghost]
    assert bad[ghost].error


@pytest.mark.parametrize("mode", ["throttle", "5xx"])
def test_take_over_converges_through_injected_faults(proxy, mode: str) -> None:  # type: ignore[no-untyped-def]
    world = make_world(client_for(proxy.url, max_attempts=2), 10)
    # botocore retries each faulted call once; 15 faults exhaust that for 5 of the 10 tables,
    # so take_over's own loop has to write those again.
    proxy.state.set_fault(mode, 15, ["ReplaceRoute"])
    result = routes.take_over(world.client, VIP, world.tables, world.eni_b, deadline_s=15)
    assert result.converged, result.tables
    assert proxy.state.stats()["faults"]["ReplaceRoute"] == 15
    assert max(t.attempts for t in result.tables) == 2
    assert set(targets(world.client, world.tables).values()) == {world.eni_b}


def test_take_over_reports_failure_when_faults_outlast_the_bound(proxy) -> None:  # type: ignore[no-untyped-def]
    world = make_world(client_for(proxy.url, max_attempts=2), 4)
    proxy.state.set_fault("5xx", 10_000, ["ReplaceRoute", "CreateRoute"])
    t0 = time.monotonic()
    result = routes.take_over(world.client, VIP, world.tables, world.eni_b, deadline_s=1.0)
    elapsed = time.monotonic() - t0
    assert not result.converged and not result.cancelled
    assert all(not t.ok and t.error and "InternalError" in t.error for t in result.tables)
    assert elapsed < 5.0  # the bound, plus at most one call's own retries
    # Nothing was half-applied silently: every table still points where it did, and says so.
    proxy.state.set_fault("none", 0, [])
    assert set(targets(world.client, world.tables).values()) == {world.eni_a}


def test_take_over_stops_writing_once_cancelled(proxy) -> None:  # type: ignore[no-untyped-def]
    world = make_world(client_for(proxy.url, max_attempts=1), 3)
    proxy.state.set_fault("5xx", 10_000, ["ReplaceRoute"])
    go_on = threading.Event()
    go_on.set()
    timer = threading.Timer(0.5, go_on.clear)
    timer.start()
    result = routes.take_over(world.client, VIP, world.tables, world.eni_b, deadline_s=30,
                              should_continue=go_on.is_set)
    timer.cancel()
    assert result.cancelled
    writes_at_cancel = proxy.state.stats()["calls"]["ReplaceRoute"]
    time.sleep(0.5)
    assert proxy.state.stats()["calls"]["ReplaceRoute"] == writes_at_cancel


def test_take_over_rewrites_writes_that_answered_but_did_not_land(proxy) -> None:  # type: ignore[no-untyped-def]
    world = make_world(client_for(proxy.url), 5)
    # Three ReplaceRoutes answer 200 and change nothing: only reading the tables back shows it.
    proxy.state.set_fault("lose", 3, ["ReplaceRoute"])
    result = routes.take_over(world.client, VIP, world.tables, world.eni_b, deadline_s=5)
    assert result.converged, result.tables
    assert set(targets(world.client, world.tables).values()) == {world.eni_b}
    stats = proxy.state.stats()
    assert stats["faults"] == {"ReplaceRoute": 3}
    assert stats["calls"]["ReplaceRoute"] == 5 + 3  # each lost write written once more, no other
    assert sorted(t.attempts for t in result.tables) == [1, 1, 2, 2, 2]


def test_take_over_reports_writes_that_never_land(proxy) -> None:  # type: ignore[no-untyped-def]
    world = make_world(client_for(proxy.url), 3)
    c = world.client
    c.replace_route(RouteTableId=world.tables[0], DestinationCidrBlock=VIP + "/32", NetworkInterfaceId=world.eni_b)
    proxy.state.set_fault("lose", 10_000, ["ReplaceRoute", "CreateRoute"])
    t0 = time.monotonic()
    result = routes.take_over(c, VIP, world.tables, world.eni_b, deadline_s=0.5)
    assert time.monotonic() - t0 < 3.0
    assert not result.converged and not result.cancelled
    # tables[0] already pointed at b, so it verifies; the other two are named, with the reason.
    assert {t.route_table_id: t.error for t in result.tables if not t.ok} == {
        t: "route did not point at the ENI when verified" for t in world.tables[1:]}
    assert all(t.attempts >= 2 for t in result.tables[1:])  # it wrote them again until the deadline
    assert targets(c, world.tables) == {world.tables[0]: world.eni_b, world.tables[1]: world.eni_a,
                                        world.tables[2]: world.eni_a}


def test_blackholed_route_needs_repair_and_is_repaired(proxy) -> None:  # type: ignore[no-untyped-def]
    world = make_world(client_for(proxy.url), 3)
    proxy.state.blackhole = {world.eni_a}
    views = routes.describe_vip_routes(world.client, VIP, world.tables)
    assert {v.state for v in views.values()} == {routes.ROUTE_BLACKHOLE}
    live = {world.eni_a, world.eni_b}
    assert all(routes.needs_repair(v, live) for v in views.values())
    result = routes.take_over(world.client, VIP, world.tables, world.eni_b)
    assert result.converged
    assert {v.state for v in routes.describe_vip_routes(world.client, VIP, world.tables).values()} == {"active"}


def test_eni_owners_follow_the_attached_instance(moto: str) -> None:
    world = make_world(client_for(moto), 1)
    c = world.client

    def states(enis: list[str]) -> dict[str, str | None]:
        return {eni: owner.instance_state for eni, owner in routes.eni_owners(c, enis).items()}

    assert states([world.eni_a, world.eni_b]) == {world.eni_a: "running", world.eni_b: "running"}
    c.stop_instances(InstanceIds=[world.instance_b])
    assert states([world.eni_b, "eni-0123456789abcdef0"]) == {world.eni_b: "stopped", "eni-0123456789abcdef0": None}


def test_ensure_routes_creates_missing_and_never_repoints(moto: str) -> None:
    world = make_world(client_for(moto), 3)
    c = world.client
    # Failover moved one table to node b; another lost its route.
    c.replace_route(RouteTableId=world.tables[0], DestinationCidrBlock=VIP + "/32", NetworkInterfaceId=world.eni_b)
    c.delete_route(RouteTableId=world.tables[2], DestinationCidrBlock=VIP + "/32")
    for _ in range(2):
        result = routes.ensure_routes(c, VIP, world.tables, world.eni_a)
        assert result.converged
    assert targets(c, world.tables) == {world.tables[0]: world.eni_b, world.tables[1]: world.eni_a,
                                        world.tables[2]: world.eni_a}


def test_the_proxy_refuses_a_duplicate_create_route_as_ec2_does(moto: str, proxy) -> None:  # type: ignore[no-untyped-def]
    world = make_world(client_for(proxy.url), 1)
    kwargs = {"RouteTableId": world.tables[0], "DestinationCidrBlock": VIP + "/32", "NetworkInterfaceId": world.eni_b}
    with pytest.raises(ClientError) as caught:
        world.client.create_route(**kwargs)
    error = caught.value.response
    assert error["Error"]["Code"] == "RouteAlreadyExists"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert targets(world.client, world.tables) == {world.tables[0]: world.eni_a}
    assert proxy.state.stats()["route_exists"] == 1
    client_for(moto).create_route(**kwargs)  # moto itself accepts it: that is why the proxy refuses it


def test_ensure_routes_run_twice_at_once_creates_each_route_once(proxy) -> None:  # type: ignore[no-untyped-def]
    world = make_world(client_for(proxy.url), 3, with_routes=False)
    # Both runs read the tables before either creates: every route is created by one, refused to the other.
    proxy.state.release_together("CreateRoute", 2 * 3)
    results = run_at_once(*[lambda: routes.ensure_routes(client_for(proxy.url), VIP, world.tables, world.eni_a)] * 2)
    assert proxy.state.hook_errors == []
    assert proxy.state.stats()["route_exists"] == 3
    assert all(r.converged for r in results), [r.tables for r in results]
    for i, table in enumerate(world.tables):
        assert sorted(r.tables[i].action for r in results) == ["created", "unchanged"], table
    assert vip_route_count(world.client, world.tables) == dict.fromkeys(world.tables, 1)
    assert set(targets(world.client, world.tables).values()) == {world.eni_a}


def test_delete_routes_is_idempotent(moto: str) -> None:
    world = make_world(client_for(moto), 2)
    first = routes.delete_routes(world.client, VIP, world.tables)
    second = routes.delete_routes(world.client, VIP, world.tables)
    assert [t.action for t in first.tables] == ["deleted", "deleted"]
    assert [t.action for t in second.tables] == ["absent", "absent"]
    assert set(targets(world.client, world.tables).values()) == {None}


def test_find_vip_route_tables_scopes_to_the_vpc(moto: str) -> None:
    c = client_for(moto)
    one = make_world(c, 2)
    other = make_world(c, 1)
    assert set(routes.find_vip_route_tables(c, VIP, one.vpc_id)) == set(one.tables)
    assert set(routes.find_vip_route_tables(c, VIP)) == set(one.tables + other.tables)
    assert routes.find_vip_route_tables(c, "203.0.113.99", one.vpc_id) == {}


def test_call_counter_counts_every_request(moto: str) -> None:
    world = make_world(client_for(moto), 5)
    counter = routes.CallCounter(world.client)
    routes.take_over(world.client, VIP, world.tables, world.eni_b)
    assert counter.counts["ReplaceRoute"] == 5
    assert counter.counts["DescribeRouteTables"] == 1
