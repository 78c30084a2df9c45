"""The Lambda handlers against a moto server over HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from haproxy_ha_runtime.tags import ROUTES_DELETED_TAG
from tests.conftest import REPO, VIP, World, client_for, make_world, run_at_once, targets, vip_route_count
from tests.support.lambda_stand_in import load_handler

handler = load_handler()


class _Context:
    log_stream_name = "test-stream"

    def __init__(self, remaining_s: float = 60.0) -> None:
        self._until = time.monotonic() + remaining_s

    def get_remaining_time_in_millis(self) -> int:
        return int((self._until - time.monotonic()) * 1000)


@pytest.fixture(autouse=True)
def _no_sweep_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    """The delete's second look waits for in-flight reconcile runs; here none is, unless a test says so."""
    monkeypatch.setattr(handler, "DELETE_SWEEP_AFTER_S", 0.0)


def _event(request: str, world: World, tables: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    event = {
        "RequestType": request,
        "ResponseURL": "http://127.0.0.1:1/unused",
        "StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/s/1",
        "RequestId": "req-1",
        "LogicalResourceId": "VipRoutes",
        "ResourceProperties": {"Vip": VIP, "RouteTableIds": tables or world.tables, "EniId": world.eni_a},
    }
    event.update(extra)
    return event


class _Responses(list[dict[str, Any]]):
    """The answers received, with each raw body and its arrival time."""

    def __init__(self) -> None:
        super().__init__()
        self.raw: list[bytes] = []
        self.times: list[float] = []


@pytest.fixture
def cfn_responses() -> Iterator[tuple[str, _Responses]]:
    """A local stand-in for CloudFormation's pre-signed response URL."""
    got = _Responses()

    class H(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            raw = self.rfile.read(int(self.headers["Content-Length"]))
            got.raw.append(raw)
            got.times.append(time.monotonic())
            got.append(json.loads(raw))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), H)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/response", got
    finally:
        server.shutdown()
        server.server_close()


def test_create_twice_adds_missing_routes_and_keeps_existing_ones(moto: str) -> None:
    world = make_world(client_for(moto), 3, with_routes=False)
    c = world.client
    # A route that already exists (pointing at node b) must neither fail the create nor move.
    c.create_route(RouteTableId=world.tables[0], DestinationCidrBlock=VIP + "/32", NetworkInterfaceId=world.eni_b)
    for _ in range(2):
        physical, _data = handler.handle_custom_resource(_event("Create", world), c)
        assert physical == f"haproxy-ha-vip-routes-{VIP}"
    assert targets(c, world.tables) == {world.tables[0]: world.eni_b, world.tables[1]: world.eni_a,
                                        world.tables[2]: world.eni_a}


def _twice_at_once(url: str, event: dict[str, Any]) -> None:
    """Run the custom resource's handler on `event` twice at once, each with its own client."""
    run_at_once(*[lambda: handler.handle_custom_resource(event, client_for(url))] * 2)


def test_create_run_twice_at_once_succeeds(proxy) -> None:  # type: ignore[no-untyped-def]
    world = make_world(client_for(proxy.url), 3, with_routes=False)
    # Both runs find every route missing before either creates one: for each table one CreateRoute
    # wins and the other is refused with RouteAlreadyExists, as on AWS.
    proxy.state.release_together("CreateRoute", 2 * 3)
    _twice_at_once(proxy.url, _event("Create", world))
    assert proxy.state.hook_errors == []
    assert proxy.state.stats()["route_exists"] == 3
    assert vip_route_count(world.client, world.tables) == dict.fromkeys(world.tables, 1)
    assert set(targets(world.client, world.tables).values()) == {world.eni_a}


def test_update_run_twice_at_once_succeeds(proxy) -> None:  # type: ignore[no-untyped-def]
    world = make_world(client_for(proxy.url), 3)
    added = world.client.create_route_table(VpcId=world.vpc_id)["RouteTable"]["RouteTableId"]
    kept = [world.tables[0], world.tables[1], added]
    event = _event("Update", world, kept, PhysicalResourceId=f"haproxy-ha-vip-routes-{VIP}",
                   OldResourceProperties=_event("Create", world)["ResourceProperties"])
    # Both create the added table's route at once (one is refused), and both delete the dropped one's.
    proxy.state.release_together("CreateRoute", 2)
    proxy.state.release_together("DeleteRoute", 2)
    _twice_at_once(proxy.url, event)
    assert proxy.state.hook_errors == []
    assert proxy.state.stats()["route_exists"] == 1
    assert vip_route_count(world.client, kept) == dict.fromkeys(kept, 1)
    assert targets(world.client, [*kept, world.tables[2]]) == {
        world.tables[0]: world.eni_a, world.tables[1]: world.eni_a, added: world.eni_a, world.tables[2]: None}


def test_delete_run_twice_at_once_succeeds(proxy) -> None:  # type: ignore[no-untyped-def]
    world = make_world(client_for(proxy.url), 3)
    # Every route is deleted by one run; the other's DeleteRoute finds it gone.
    proxy.state.release_together("DeleteRoute", 2 * 3)
    _twice_at_once(proxy.url, _event("Delete", world, PhysicalResourceId=f"haproxy-ha-vip-routes-{VIP}"))
    assert proxy.state.hook_errors == []
    assert set(targets(world.client, world.tables).values()) == {None}
    assert all(_tags(world.client, t) == {ROUTES_DELETED_TAG: VIP} for t in world.tables)


def test_update_never_repoints_a_moved_route(moto: str) -> None:
    world = make_world(client_for(moto), 3)
    c = world.client
    c.replace_route(RouteTableId=world.tables[0], DestinationCidrBlock=VIP + "/32", NetworkInterfaceId=world.eni_b)
    new_table = c.create_route_table(VpcId=world.vpc_id)["RouteTable"]["RouteTableId"]
    kept = [world.tables[0], world.tables[1], new_table]
    event = _event("Update", world, kept, PhysicalResourceId=f"haproxy-ha-vip-routes-{VIP}",
                   OldResourceProperties=_event("Create", world)["ResourceProperties"])
    for _ in range(2):
        handler.handle_custom_resource(event, c)
    assert targets(c, [*kept, world.tables[2]]) == {
        world.tables[0]: world.eni_b,  # moved by failover: left alone
        world.tables[1]: world.eni_a,
        new_table: world.eni_a,  # added table: created
        world.tables[2]: None,  # dropped table: removed
    }


def test_delete_twice_removes_the_routes(moto: str) -> None:
    world = make_world(client_for(moto), 3)
    event = _event("Delete", world, PhysicalResourceId=f"haproxy-ha-vip-routes-{VIP}")
    for _ in range(2):
        handler.handle_custom_resource(event, world.client)
    assert set(targets(world.client, world.tables).values()) == {None}


def test_on_event_answers_cloudformation(moto: str, cfn_responses, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    url, got = cfn_responses
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto)
    monkeypatch.setattr(handler, "_client", None)
    world = make_world(client_for(moto), 2, with_routes=False)
    handler.on_event(_event("Create", world, ResponseURL=url), _Context())
    assert got[-1]["Status"] == "SUCCESS"
    assert got[-1]["PhysicalResourceId"] == f"haproxy-ha-vip-routes-{VIP}"
    assert set(targets(world.client, world.tables).values()) == {world.eni_a}


def test_on_event_reports_bad_properties_as_failed(moto: str, cfn_responses, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    url, got = cfn_responses
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto)
    monkeypatch.setattr(handler, "_client", None)
    world = make_world(client_for(moto), 1, with_routes=False)
    event = _event("Create", world, ResponseURL=url)
    event["ResourceProperties"]["EniId"] = "i-0123"
    handler.on_event(event, _Context())
    assert got[-1]["Status"] == "FAILED"
    assert "EniId" in got[-1]["Reason"] and "i-0123" in got[-1]["Reason"]


def _nodes(world: World) -> list[dict[str, str]]:
    return [{"name": "a", "eni_id": world.eni_a}, {"name": "b", "eni_id": world.eni_b}]


def test_reconcile_moves_routes_away_from_a_stopped_node(moto: str) -> None:
    world = make_world(client_for(moto), 4)
    world.client.stop_instances(InstanceIds=[world.instance_a])
    report = handler.reconcile_routes(world.client, VIP, world.tables, _nodes(world))
    assert sorted(report["moved"]) == sorted(world.tables)
    assert set(targets(world.client, world.tables).values()) == {world.eni_b}


def test_reconcile_leaves_routes_at_a_running_node(moto: str) -> None:
    world = make_world(client_for(moto), 3)
    c = world.client
    c.replace_route(RouteTableId=world.tables[0], DestinationCidrBlock=VIP + "/32", NetworkInterfaceId=world.eni_b)
    report = handler.reconcile_routes(c, VIP, world.tables, _nodes(world))
    assert report["moved"] == []
    assert targets(c, world.tables)[world.tables[0]] == world.eni_b


def test_reconcile_repairs_missing_and_blackholed_routes(proxy) -> None:  # type: ignore[no-untyped-def]
    world = make_world(client_for(proxy.url), 3)
    c = world.client
    c.replace_route(RouteTableId=world.tables[0], DestinationCidrBlock=VIP + "/32", NetworkInterfaceId=world.eni_b)
    c.delete_route(RouteTableId=world.tables[1], DestinationCidrBlock=VIP + "/32")
    proxy.state.blackhole = {world.eni_a}  # tables[2] points at a blackholed ENI
    report = handler.reconcile_routes(c, VIP, world.tables, _nodes(world))
    assert sorted(report["moved"]) == sorted(world.tables[1:])
    assert set(targets(c, world.tables).values()) == {world.eni_b}


def test_reconcile_twice_at_once_agrees(proxy) -> None:  # type: ignore[no-untyped-def]
    world = make_world(client_for(proxy.url), 6)
    c = world.client
    c.stop_instances(InstanceIds=[world.instance_a])
    for t in world.tables[:2]:
        c.delete_route(RouteTableId=t, DestinationCidrBlock=VIP + "/32")
    # Both runs find the two routes missing and create them at once: one create each is refused.
    proxy.state.release_together("CreateRoute", 2 * 2)
    reports = run_at_once(*[lambda: handler.reconcile_routes(client_for(proxy.url), VIP, world.tables,
                                                             _nodes(world))] * 2)
    assert proxy.state.hook_errors == []
    assert proxy.state.stats()["route_exists"] == 2
    assert [(r["target"], r["failed"], r["converged"]) for r in reports] == [(world.eni_b, {}, True)] * 2
    assert vip_route_count(c, world.tables) == dict.fromkeys(world.tables, 1)
    assert set(targets(c, world.tables).values()) == {world.eni_b}


def test_reconcile_knows_each_node_by_its_eni(moto: str) -> None:
    world = make_world(client_for(moto), 2)
    c = world.client
    c.stop_instances(InstanceIds=[world.instance_b])
    subnet = c.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [world.vpc_id]}])["Subnets"][0]["SubnetId"]
    spare = c.create_network_interface(SubnetId=subnet)["NetworkInterface"]["NetworkInterfaceId"]
    nodes = [
        # Keys other than name and eni_id are ignored: a stale instance ID changes nothing.
        {"name": "a", "eni_id": world.eni_a, "instance_id": "i-0123456789abcdef0"},
        {"name": "b", "eni_id": world.eni_b},
        {"name": "spare", "eni_id": spare},  # an ENI that no instance carries
        {"name": "gone", "eni_id": "eni-0123456789abcdef0"},  # an ENI that does not exist
    ]
    report = handler.reconcile_routes(c, VIP, world.tables, nodes)
    assert report["node_states"] == {"a": "running", "b": "stopped", "spare": "absent", "gone": "absent"}
    assert report["moved"] == []
    assert set(targets(c, world.tables).values()) == {world.eni_a}


def test_the_handler_does_not_load_the_agent() -> None:
    # The Lambda needs the route module and the logger, not the node agent (nor its /proc scan).
    code = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('h', sys.argv[1]); "
            "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module); "
            "assert 'haproxy_ha_runtime.routes' in sys.modules; "
            "assert 'haproxy_ha_runtime.agent' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code, str(REPO / "lambda" / "handler.py")], check=True, cwd=REPO,
                   timeout=60)


def _reconcile_env(monkeypatch: pytest.MonkeyPatch, url: str, world: World) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    monkeypatch.setattr(handler, "_client", None)
    monkeypatch.setenv("VIP", VIP)
    monkeypatch.setenv("ROUTE_TABLE_IDS", ",".join(world.tables))
    monkeypatch.setenv("NODES", json.dumps(_nodes(world)))


def test_reconcile_reports_no_running_node_without_raising(moto: str, monkeypatch: pytest.MonkeyPatch) -> None:
    world = make_world(client_for(moto), 2)
    world.client.stop_instances(InstanceIds=[world.instance_a, world.instance_b])
    _reconcile_env(monkeypatch, moto, world)
    for _ in range(2):  # every minute, the same quiet report
        report = handler.reconcile({"detail-type": "Scheduled Event"}, _Context())
        assert report["state"] == "no node is running: nothing to move the routes to"
        assert report["node_states"] == {"a": "stopped", "b": "stopped"}
        assert report["failed"] == {} and report["moved"] == []
    assert set(targets(world.client, world.tables).values()) == {world.eni_a}


def test_reconcile_raises_when_a_move_it_attempted_failed(proxy, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    world = make_world(client_for(proxy.url), 2)
    world.client.stop_instances(InstanceIds=[world.instance_a])
    _reconcile_env(monkeypatch, proxy.url, world)
    proxy.state.set_fault("5xx", 10_000, ["ReplaceRoute"])
    with pytest.raises(RuntimeError, match="InternalError"):
        handler.reconcile({"detail-type": "Scheduled Event"}, _Context(remaining_s=handler.RESPONSE_RESERVE_S + 1))
    assert set(targets(world.client, world.tables).values()) == {world.eni_a}


def test_reconcile_writes_again_a_move_that_did_not_land(proxy) -> None:  # type: ignore[no-untyped-def]
    world = make_world(client_for(proxy.url), 3)
    world.client.stop_instances(InstanceIds=[world.instance_a])
    proxy.state.set_fault("lose", 2, ["ReplaceRoute"])
    report = handler.reconcile_routes(world.client, VIP, world.tables, _nodes(world), deadline_s=5)
    assert proxy.state.stats()["faults"] == {"ReplaceRoute": 2}
    assert report["failed"] == {} and report["converged"]
    assert set(targets(world.client, world.tables).values()) == {world.eni_b}


def test_reconcile_raises_naming_the_tables_whose_move_never_landed(proxy, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    world = make_world(client_for(proxy.url), 2)
    world.client.stop_instances(InstanceIds=[world.instance_a])
    _reconcile_env(monkeypatch, proxy.url, world)
    proxy.state.set_fault("lose", 10_000, ["ReplaceRoute", "CreateRoute"])
    with pytest.raises(RuntimeError) as caught:
        handler.reconcile({"detail-type": "Scheduled Event"}, _Context(remaining_s=handler.RESPONSE_RESERVE_S + 1))
    failed = json.loads(str(caught.value))["failed"]
    assert failed == dict.fromkeys(world.tables, "route did not point at the ENI when verified")
    assert set(targets(world.client, world.tables).values()) == {world.eni_a}


# --- a stale view: a new MASTER moves the routes while the reconciler reads node states -------------

@pytest.mark.parametrize("slow_call", ["DescribeNetworkInterfaces", "DescribeInstances"])
def test_reconcile_leaves_alone_tables_that_changed_since_it_read_them(moto, proxy, slow_call) -> None:  # type: ignore[no-untyped-def]
    world = make_world(client_for(proxy.url), 4)
    c = world.client
    # Two tables lost their route (both nodes run): the reconciler will pick node a, which the
    # remaining routes point at.
    for t in world.tables[:2]:
        c.delete_route(RouteTableId=t, DestinationCidrBlock=VIP + "/32")
    master = client_for(moto)  # straight to moto: the proxy counts only the reconciler's calls

    def b_becomes_master() -> None:
        # While the reconciler waits for its answer, b takes every table (the lost ones come back
        # at b, as the reconciler itself or an operator would have made them).
        for t in world.tables[:2]:
            master.create_route(RouteTableId=t, DestinationCidrBlock=VIP + "/32", NetworkInterfaceId=world.eni_b)
        for t in world.tables[2:]:
            master.replace_route(RouteTableId=t, DestinationCidrBlock=VIP + "/32", NetworkInterfaceId=world.eni_b)

    proxy.state.on_call(slow_call, b_becomes_master)
    before = proxy.state.stats()["calls"]
    report = handler.reconcile_routes(c, VIP, world.tables, _nodes(world))
    assert proxy.state.hook_errors == []
    assert report["target"] == world.eni_a and report["broken"] == world.tables[:2]
    assert report["skipped_changed"] == world.tables[:2]
    assert report["moved"] == [] and report["failed"] == {}
    assert set(targets(c, world.tables).values()) == {world.eni_b}
    calls = proxy.state.stats()["calls"]
    assert [calls.get(a, 0) - before.get(a, 0) for a in ("ReplaceRoute", "CreateRoute")] == [0, 0]


def test_reconcile_still_repairs_tables_that_did_not_change(proxy) -> None:  # type: ignore[no-untyped-def]
    world = make_world(client_for(proxy.url), 3)
    c = world.client
    for t in world.tables[:2]:
        c.delete_route(RouteTableId=t, DestinationCidrBlock=VIP + "/32")
    other = client_for(proxy.url)
    proxy.state.on_call("DescribeInstances", lambda: other.create_route(
        RouteTableId=world.tables[0], DestinationCidrBlock=VIP + "/32", NetworkInterfaceId=world.eni_b))
    report = handler.reconcile_routes(c, VIP, world.tables, _nodes(world))
    assert report["skipped_changed"] == [world.tables[0]] and report["moved"] == [world.tables[1]]
    assert targets(c, world.tables) == {world.tables[0]: world.eni_b, world.tables[1]: world.eni_a,
                                        world.tables[2]: world.eni_a}


# --- teardown: the stack's Delete marks the tables, and nothing recreates the routes ---------------

def _tags(client: Any, table: str) -> dict[str, str]:
    (rt,) = client.describe_route_tables(RouteTableIds=[table])["RouteTables"]
    return {t["Key"]: t["Value"] for t in rt.get("Tags", [])}


def test_delete_marks_exactly_the_stack_tables_then_reconcile_leaves_no_route(moto: str) -> None:
    world = make_world(client_for(moto), 3)
    c = world.client
    outsider = c.create_route_table(VpcId=world.vpc_id)["RouteTable"]["RouteTableId"]
    handler.handle_custom_resource(_event("Delete", world, PhysicalResourceId=f"haproxy-ha-vip-routes-{VIP}"), c)
    assert all(_tags(c, t) == {ROUTES_DELETED_TAG: VIP} for t in world.tables)
    assert ROUTES_DELETED_TAG not in _tags(c, outsider)
    # The agents and the reconciler still run while the stack goes away; node a has just stopped.
    c.stop_instances(InstanceIds=[world.instance_a])
    report = handler.reconcile_routes(c, VIP, world.tables, _nodes(world))
    assert report["broken"] == world.tables and report["skipped_deleted"] == world.tables
    assert report["moved"] == [] and report["failed"] == {}
    assert set(targets(c, world.tables).values()) == {None}


def test_reconcile_moves_no_route_in_a_table_marked_deleted(moto: str) -> None:
    world = make_world(client_for(moto), 2)
    c = world.client
    c.stop_instances(InstanceIds=[world.instance_a])
    c.create_tags(Resources=[world.tables[0]], Tags=[{"Key": ROUTES_DELETED_TAG, "Value": VIP}])
    report = handler.reconcile_routes(c, VIP, world.tables, _nodes(world))
    assert report["skipped_deleted"] == [world.tables[0]] and report["moved"] == [world.tables[1]]
    assert targets(c, world.tables) == {world.tables[0]: world.eni_a, world.tables[1]: world.eni_b}


def test_reconcile_ignores_the_marker_of_another_vip(moto: str) -> None:
    world = make_world(client_for(moto), 1)
    c = world.client
    c.stop_instances(InstanceIds=[world.instance_a])
    c.create_tags(Resources=world.tables, Tags=[{"Key": ROUTES_DELETED_TAG, "Value": "198.51.100.7"}])
    assert handler.reconcile_routes(c, VIP, world.tables, _nodes(world))["moved"] == world.tables


def test_delete_removes_a_route_that_comes_back_before_its_second_look(proxy, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(handler, "DELETE_SWEEP_AFTER_S", 0.05)
    world = make_world(client_for(proxy.url), 2)
    late = client_for(proxy.url)

    def late_reconcile_write() -> None:
        # A reconcile run that read the tables before they were marked writes after the delete.
        late.create_route(RouteTableId=world.tables[0], DestinationCidrBlock=VIP + "/32",
                          NetworkInterfaceId=world.eni_b)

    # The first DescribeRouteTables after the deletes is the second look: the route is back by then.
    proxy.state.on_call("DeleteRoute", lambda: proxy.state.on_call("DescribeRouteTables", late_reconcile_write))
    _physical, _data = handler.handle_custom_resource(
        _event("Delete", world, PhysicalResourceId=f"haproxy-ha-vip-routes-{VIP}"), world.client)
    assert proxy.state.hook_errors == []
    assert set(targets(world.client, world.tables).values()) == {None}


def test_create_after_a_delete_removes_the_marker_and_adds_the_routes(moto: str) -> None:
    world = make_world(client_for(moto), 2)
    c = world.client
    c.create_tags(Resources=world.tables, Tags=[{"Key": "Name", "Value": "kept"}])
    handler.handle_custom_resource(_event("Delete", world, PhysicalResourceId=f"haproxy-ha-vip-routes-{VIP}"), c)
    handler.handle_custom_resource(_event("Create", world), c)
    assert all(_tags(c, t) == {"Name": "kept"} for t in world.tables)
    assert set(targets(c, world.tables).values()) == {world.eni_a}
    c.stop_instances(InstanceIds=[world.instance_a])
    assert sorted(handler.reconcile_routes(c, VIP, world.tables, _nodes(world))["moved"]) == sorted(world.tables)


def test_create_keeps_another_vips_marker(moto: str) -> None:
    world = make_world(client_for(moto), 1, with_routes=False)
    c = world.client
    c.create_tags(Resources=world.tables, Tags=[{"Key": ROUTES_DELETED_TAG, "Value": "198.51.100.7"}])
    handler.handle_custom_resource(_event("Create", world), c)
    assert _tags(c, world.tables[0]) == {ROUTES_DELETED_TAG: "198.51.100.7"}


def test_update_unmarks_added_tables_and_marks_dropped_ones(moto: str) -> None:
    world = make_world(client_for(moto), 2)
    c = world.client
    added = c.create_route_table(VpcId=world.vpc_id)["RouteTable"]["RouteTableId"]
    c.create_tags(Resources=[added], Tags=[{"Key": ROUTES_DELETED_TAG, "Value": VIP}])  # from an earlier delete
    event = _event("Update", world, [world.tables[0], added], PhysicalResourceId=f"haproxy-ha-vip-routes-{VIP}",
                   OldResourceProperties=_event("Create", world)["ResourceProperties"])
    handler.handle_custom_resource(event, c)
    assert ROUTES_DELETED_TAG not in _tags(c, added)
    assert _tags(c, world.tables[1]) == {ROUTES_DELETED_TAG: VIP}
    assert targets(c, [world.tables[0], added, world.tables[1]]) == {
        world.tables[0]: world.eni_a, added: world.eni_a, world.tables[1]: None}


# --- what CloudFormation receives -----------------------------------------------------------------

def _check_body(got: dict[str, Any], raw: bytes, status: str, physical: str) -> None:
    assert len(raw) <= 4096
    assert got["Status"] == status, got.get("Reason")
    assert got["PhysicalResourceId"] == physical
    assert (got["StackId"], got["RequestId"], got["LogicalResourceId"]) == (
        "arn:aws:cloudformation:us-east-1:123456789012:stack/s/1", "req-1", "VipRoutes")


def test_on_event_answers_create_update_and_delete(moto: str, cfn_responses, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    url, got = cfn_responses
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto)
    monkeypatch.setattr(handler, "_client", None)
    world = make_world(client_for(moto), 3, with_routes=False)
    c = world.client
    physical = f"haproxy-ha-vip-routes-{VIP}"
    create = _event("Create", world, ResponseURL=url)
    handler.on_event(create, _Context())
    _check_body(got[-1], got.raw[-1], "SUCCESS", physical)
    assert got[-1]["Data"] == {"RouteTableCount": "3"}

    update = _event("Update", world, world.tables[:2], ResponseURL=url, PhysicalResourceId=physical,
                    OldResourceProperties=create["ResourceProperties"])
    handler.on_event(update, _Context())
    _check_body(got[-1], got.raw[-1], "SUCCESS", physical)
    assert got[-1]["Data"] == {"RouteTableCount": "2"}

    # A changed VIP: a new physical ID, so CloudFormation then deletes the old one's routes.
    new_vip = "203.0.113.20"
    changed = _event("Update", world, world.tables[:2], ResponseURL=url, PhysicalResourceId=physical,
                     OldResourceProperties=update["ResourceProperties"])
    changed["ResourceProperties"] = dict(changed["ResourceProperties"], Vip=new_vip)
    handler.on_event(changed, _Context())
    _check_body(got[-1], got.raw[-1], "SUCCESS", f"haproxy-ha-vip-routes-{new_vip}")
    assert set(targets(c, world.tables[:2], vip=new_vip).values()) == {world.eni_a}

    old = _event("Delete", world, world.tables[:2], ResponseURL=url, PhysicalResourceId=physical)
    handler.on_event(old, _Context())
    _check_body(got[-1], got.raw[-1], "SUCCESS", physical)
    assert set(targets(c, world.tables).values()) == {None}
    assert set(targets(c, world.tables[:2], vip=new_vip).values()) == {world.eni_a}
    assert len(got) == 4


def test_on_event_deletes_from_a_table_that_no_longer_exists(moto: str, cfn_responses, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    url, got = cfn_responses
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto)
    monkeypatch.setattr(handler, "_client", None)
    world = make_world(client_for(moto), 2)
    c = world.client
    c.delete_route(RouteTableId=world.tables[0], DestinationCidrBlock=VIP + "/32")
    c.delete_route_table(RouteTableId=world.tables[0])
    handler.on_event(_event("Delete", world, ResponseURL=url, PhysicalResourceId=f"haproxy-ha-vip-routes-{VIP}"),
                     _Context())
    _check_body(got[-1], got.raw[-1], "SUCCESS", f"haproxy-ha-vip-routes-{VIP}")
    assert targets(c, world.tables[1:]) == {world.tables[1]: None}
    assert _tags(c, world.tables[1]) == {ROUTES_DELETED_TAG: VIP}


def test_response_body_stays_under_4_kb_after_json_escaping() -> None:
    event = {"StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/s/1", "RequestId": "req-1",
             "LogicalResourceId": "VipRoutes"}
    # Each of these characters takes 2 to 6 bytes once JSON-escaped.
    reason = 'RuntimeError: "rtb-0" \\ failed\n\u00e9é\x01\t' * 400
    raw = handler.response_body(event, _Context(), "FAILED", "haproxy-ha-vip-routes-x", reason=reason)
    assert 4000 < len(raw) <= 4096
    body = json.loads(raw)
    assert body["Reason"].endswith("[truncated; the function's log has the whole reason]")
    kept = body["Reason"].removesuffix(" [truncated; the function's log has the whole reason]")
    assert reason.startswith(kept) and len(kept) > 500
    short = handler.response_body(event, _Context(), "FAILED", "p", reason="EniId: got 'i-0123'")
    assert json.loads(short)["Reason"] == "EniId: got 'i-0123'"


def test_on_event_answers_failed_before_the_function_times_out(proxy, cfn_responses, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    url, got = cfn_responses
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    monkeypatch.setattr(handler, "_client", None)
    world = make_world(client_for(proxy.url), 2, with_routes=False)
    # The work's first call, and each retry of it, is held until the test lets it go: order, not a
    # wall-clock bound, shows that the answer did not wait for the work.
    release = threading.Event()
    proxy.state.on_call("DescribeRouteTables", lambda: release.wait(60), times=3)
    # The function has 0.4 s left before its reserve for the answer: that is all the work may take.
    context = _Context(remaining_s=handler.RESPONSE_RESERVE_S + 0.4)
    t0 = time.monotonic()
    worker = threading.Thread(target=handler.on_event, args=(_event("Create", world, ResponseURL=url), context),
                              daemon=True)
    worker.start()
    try:
        # Generous: the timer fires after 0.4 s; only a machine stalled for most of a minute misses this.
        deadline = time.monotonic() + 45
        while not got and time.monotonic() < deadline:
            time.sleep(0.01)
        # The answer came while the work's call was still held ...
        assert not release.is_set() and proxy.state.calls["DescribeRouteTables"] >= 1
        assert [a["Status"] for a in got] == ["FAILED"], "no FAILED while the work was held: it waited for the work"
        assert "did not finish within 0.4 s" in got[0]["Reason"]
    finally:
        release.set()
        worker.join(timeout=60)
    assert not worker.is_alive() and not proxy.state.hook_errors
    assert len(got) == 1, "one answer only: the late SUCCESS must not follow the FAILED"
    # ... and not before the budget was spent: a timer never fires early, whatever the load.
    assert got.times[0] - t0 >= 0.4
