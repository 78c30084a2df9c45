"""The Lambda handlers against a moto server over HTTP."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import REPO, VIP, World, client_for, make_world, targets


def _load_handler() -> ModuleType:
    spec = importlib.util.spec_from_file_location("route_lambda_handler", REPO / "lambda" / "handler.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


handler = _load_handler()


class _Context:
    log_stream_name = "test-stream"


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


@pytest.fixture
def cfn_responses() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A local stand-in for CloudFormation's pre-signed response URL."""
    got: list[dict[str, Any]] = []

    class H(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
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


def test_create_run_twice_at_once_succeeds(moto: str) -> None:
    world = make_world(client_for(moto), 10, with_routes=False)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            handler.handle_custom_resource(_event("Create", world), client_for(moto))
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert set(targets(world.client, world.tables).values()) == {world.eni_a}


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


def test_reconcile_twice_at_once_agrees(moto: str) -> None:
    world = make_world(client_for(moto), 20)
    world.client.stop_instances(InstanceIds=[world.instance_a])
    reports: list[dict[str, Any]] = []
    threads = [threading.Thread(target=lambda: reports.append(
        handler.reconcile_routes(client_for(moto), VIP, world.tables, _nodes(world)))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r["target"] for r in reports] == [world.eni_b, world.eni_b]
    assert set(targets(world.client, world.tables).values()) == {world.eni_b}


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


def test_reconcile_fails_loudly_when_no_node_runs(moto: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    world = make_world(client_for(moto), 2)
    world.client.stop_instances(InstanceIds=[world.instance_a, world.instance_b])
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto)
    monkeypatch.setattr(handler, "_client", None)
    monkeypatch.setenv("VIP", VIP)
    monkeypatch.setenv("ROUTE_TABLE_IDS", ",".join(world.tables))
    monkeypatch.setenv("NODES", json.dumps(_nodes(world)))
    with pytest.raises(RuntimeError, match="no node is running"):
        handler.reconcile({"detail-type": "Scheduled Event"}, _Context())
    assert set(targets(world.client, world.tables).values()) == {world.eni_a}
