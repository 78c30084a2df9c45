"""The route Lambda's promises that the mutation run (scripts/mutate) found no test for: what the
reconciler logs, how long it may retry, which region its client uses, a table that vanishes while
it is marked.  Answers EC2 gives rarely come from botocore's Stubber: only the unit is meant there."""

from __future__ import annotations

import json
import socket
import threading
import time
import types
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from haproxy_ha_runtime import routes
from haproxy_ha_runtime.tags import ROUTES_DELETED_TAG
from tests.conftest import VIP, client_for, make_world, targets
from tests.support.lambda_stand_in import load_handler

handler = load_handler()


class _Context:
    log_stream_name = "test-stream"

    def __init__(self, remaining_s: float = 60.0) -> None:
        self._until = time.monotonic() + remaining_s

    def get_remaining_time_in_millis(self) -> int:
        return int((self._until - time.monotonic()) * 1000)


def _stubbed() -> tuple[Any, Stubber]:
    client = routes.make_client("us-east-1", "http://127.0.0.1:9", max_attempts=1)
    return client, Stubber(client)


def _env(monkeypatch: pytest.MonkeyPatch, tables: list[str], nodes: list[dict[str, str]]) -> None:
    monkeypatch.setenv("VIP", VIP)
    monkeypatch.setenv("ROUTE_TABLE_IDS", ",".join(tables))
    monkeypatch.setenv("NODES", json.dumps(nodes))


def _log_lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


# -- reconcile: how long it may keep retrying -------------------------------------------------------

@pytest.mark.parametrize(("remaining_s", "deadline_s"), [
    (60.0, 20.0),  # plenty of time: RECONCILE_DEADLINE_S
    (25.0, 15.0),  # the time left, less the reserve
    (10.5, 1.0),  # almost none: still one second to try
])
def test_reconcile_retries_no_longer_than_the_function_has_left(
        monkeypatch: pytest.MonkeyPatch, remaining_s: float, deadline_s: float) -> None:
    asked: list[float] = []

    def spy(client: Any, vip: str, tables: list[str], nodes: list[dict[str, str]],
            deadline_s: float = -1.0) -> dict[str, Any]:
        asked.append(deadline_s)
        return {"failed": {}, "moved": []}

    monkeypatch.setattr(handler, "reconcile_routes", spy)
    monkeypatch.setattr(handler, "_client", object())
    _env(monkeypatch, ["rtb-1"], [{"name": "a", "eni_id": "eni-a"}])
    handler.reconcile({}, _Context(remaining_s))
    assert asked == [pytest.approx(deadline_s, abs=0.2)]
    assert handler.RECONCILE_DEADLINE_S == 20.0 and handler.RESPONSE_RESERVE_S == 10.0


# -- reconcile: its log line says what woke it and what it found ------------------------------------

@pytest.mark.parametrize(("event", "trigger", "instance", "state"), [
    ({"detail-type": "EC2 Instance Terminate Successful",
      "detail": {"EC2InstanceId": "i-0aaa", "AutoScalingGroupName": "g"}}, "EC2 Instance Terminate Successful",
     "i-0aaa", None),
    ({"detail-type": "EC2 Instance State-change Notification",
      "detail": {"instance-id": "i-0bbb", "state": "stopping"}}, "EC2 Instance State-change Notification",
     "i-0bbb", "stopping"),
    ({}, "schedule", None, None),  # an agent's invocation carries no event of its own
])
def test_reconcile_logs_its_trigger_and_report(moto: str, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str], event: dict[str, Any],
                                               trigger: str, instance: str | None, state: str | None) -> None:
    world = make_world(client_for(moto), 2)
    world.client.stop_instances(InstanceIds=[world.instance_a])
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto)
    monkeypatch.setattr(handler, "_client", None)
    nodes = [{"name": "a", "eni_id": world.eni_a}, {"name": "b", "eni_id": world.eni_b}]
    _env(monkeypatch, world.tables, nodes)
    capsys.readouterr()
    report = handler.reconcile(event, _Context())
    (line,) = [r for r in _log_lines(capsys.readouterr().out) if r["event"] == "reconcile"]
    assert (line["trigger"], line["instance"], line["instance_state"]) == (trigger, instance, state)
    assert sorted(report["moved"]) == sorted(world.tables)
    # Every field of the report is in the line too.
    assert {k: line[k] for k in report} == json.loads(json.dumps(report))


# -- the function's client --------------------------------------------------------------------------

@pytest.mark.parametrize(("region", "default_region", "expected"), [
    ("eu-west-1", "us-west-2", "eu-west-1"),  # Lambda sets AWS_REGION: the function's own region
    (None, "us-west-2", "us-west-2"),
    (None, None, "us-east-1"),
])
def test_the_client_is_made_once_in_the_functions_region(
        monkeypatch: pytest.MonkeyPatch, region: str | None, default_region: str | None, expected: str) -> None:
    monkeypatch.setattr(handler, "_client", None)
    for name, value in (("AWS_REGION", region), ("AWS_DEFAULT_REGION", default_region)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    client = handler._ec2()
    assert client.meta.region_name == expected
    assert handler._ec2() is client


# -- the delete marker: a table that goes away while it is tagged -----------------------------------

def _rt(rtb: str) -> dict[str, Any]:
    return {"RouteTableId": rtb, "VpcId": "vpc-1", "Routes": []}


def _tag_call(tables: list[str]) -> dict[str, Any]:
    return {"Resources": tables, "Tags": [{"Key": ROUTES_DELETED_TAG, "Value": VIP}]}


def test_marking_looks_again_once_when_a_table_vanishes_meanwhile() -> None:
    client, stub = _stubbed()
    stub.add_response("describe_route_tables", {"RouteTables": [_rt("rtb-1"), _rt("rtb-2")]})
    stub.add_client_error("create_tags", "InvalidRouteTableID.NotFound", "gone", expected_params=_tag_call(
        ["rtb-1", "rtb-2"]))
    stub.add_response("describe_route_tables", {"RouteTables": [_rt("rtb-2")]})
    stub.add_response("create_tags", {}, _tag_call(["rtb-2"]))
    with stub:
        handler._mark_deleted(client, VIP, ["rtb-1", "rtb-2"])
        stub.assert_no_pending_responses()


@pytest.mark.parametrize("codes", [
    ["InvalidRouteTableID.NotFound", "InvalidRouteTableID.NotFound"],  # twice: give up, say why
    ["UnauthorizedOperation"],  # not a vanished table: no second look
])
def test_marking_fails_on_any_other_error_or_a_second_vanished_table(codes: list[str]) -> None:
    client, stub = _stubbed()
    for code in codes:
        stub.add_response("describe_route_tables", {"RouteTables": [_rt("rtb-1")]})
        stub.add_client_error("create_tags", code, "no")
    with stub, pytest.raises(ClientError, match=codes[-1]):
        handler._mark_deleted(client, VIP, ["rtb-1"])
    stub.assert_no_pending_responses()


# -- what CloudFormation and the log hear about a delete --------------------------------------------

def _delete_event(tables: list[str], eni: str, url: str = "http://127.0.0.1:1/unused") -> dict[str, Any]:
    return {"RequestType": "Delete", "ResponseURL": url, "PhysicalResourceId": f"haproxy-ha-vip-routes-{VIP}",
            "StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/s/1", "RequestId": "req-1",
            "LogicalResourceId": "VipRoutes",
            "ResourceProperties": {"Vip": VIP, "RouteTableIds": tables, "EniId": eni}}


def test_a_delete_that_fails_says_which_tables_and_why(proxy) -> None:  # type: ignore[no-untyped-def]
    world = make_world(client_for(proxy.url), 2)
    proxy.state.set_fault("5xx", 10_000, ["DeleteRoute"])
    with pytest.raises(RuntimeError) as e:
        handler.handle_custom_resource(_delete_event(world.tables, world.eni_a),
                                       client_for(proxy.url, max_attempts=1))
    failed = {t: "InternalError: An internal error has occurred." for t in world.tables}
    assert str(e.value) == f"deleting VIP routes failed for 2 route table(s): {json.dumps(failed)}"


def test_a_route_back_after_the_delete_is_deleted_again_and_logged(proxy, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(handler, "DELETE_SWEEP_AFTER_S", 0.3)
    world = make_world(client_for(proxy.url), 2)
    late = client_for(proxy.url)
    proxy.state.on_call("DeleteRoute", lambda: proxy.state.on_call("DescribeRouteTables", lambda: late.create_route(
        RouteTableId=world.tables[0], DestinationCidrBlock=VIP + "/32", NetworkInterfaceId=world.eni_b)))
    capsys.readouterr()
    t0 = time.monotonic()
    handler.handle_custom_resource(_delete_event(world.tables, world.eni_a), world.client)
    # The second look waits for a reconcile run that read the tables before they were marked.
    assert time.monotonic() - t0 >= 0.3
    (line,) = [r for r in _log_lines(capsys.readouterr().out) if r["event"] == "custom_resource"]
    assert line["request"] == "Delete" and line["vip"] == VIP
    assert line["tables"] == {world.tables[0]: "deleted again", world.tables[1]: "deleted"}


def test_a_route_back_that_cannot_be_deleted_fails_the_delete(proxy, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(handler, "DELETE_SWEEP_AFTER_S", 0.0)
    world = make_world(client_for(proxy.url), 1)
    late = client_for(proxy.url)

    def comes_back_for_good() -> None:
        late.create_route(RouteTableId=world.tables[0], DestinationCidrBlock=VIP + "/32",
                          NetworkInterfaceId=world.eni_b)
        proxy.state.set_fault("5xx", 10_000, ["DeleteRoute"])

    proxy.state.on_call("DeleteRoute", lambda: proxy.state.on_call("DescribeRouteTables", comes_back_for_good))
    with pytest.raises(RuntimeError, match=r"^deleting VIP routes that came back failed for 1 route table\(s\): "):
        handler.handle_custom_resource(_delete_event(world.tables, world.eni_a), client_for(proxy.url, max_attempts=1))


@pytest.fixture
def answers() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A loopback stand-in for CloudFormation's response URL: its URL, and the bodies it got."""
    got: list[dict[str, Any]] = []

    class H(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            # The pre-signed URL is signed for an empty Content-Type: anything else is refused.
            assert self.headers.get("Content-Type") == "", self.headers
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/r", got
    finally:
        server.shutdown()
        server.server_close()


def test_a_success_answer_points_at_the_functions_log_stream(answers: tuple[str, list[dict[str, Any]]]) -> None:
    url, got = answers
    event = _delete_event(["rtb-1"], "eni-1", url)
    handler.send_response(event, _Context(), "SUCCESS", "p", {"RouteTableCount": "1"})
    assert got == [{"Status": "SUCCESS", "Reason": "See CloudWatch log stream test-stream", "PhysicalResourceId": "p",
                    "StackId": event["StackId"], "RequestId": "req-1", "LogicalResourceId": "VipRoutes",
                    "NoEcho": False, "Data": {"RouteTableCount": "1"}}]


def test_on_event_success_points_at_the_functions_log_stream(moto: str, monkeypatch: pytest.MonkeyPatch,
                                                             answers: tuple[str, list[dict[str, Any]]]) -> None:
    url, got = answers
    world = make_world(client_for(moto), 1, with_routes=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto)
    monkeypatch.setattr(handler, "_client", None)
    event = _delete_event(world.tables, world.eni_a, url)
    event.update(RequestType="Create")
    del event["PhysicalResourceId"]
    handler.on_event(event, _Context())
    (body,) = got
    assert (body["Status"], body["Reason"]) == ("SUCCESS", "See CloudWatch log stream test-stream")


def test_an_answer_that_cannot_be_delivered_gives_up_in_bounded_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handler, "RESPONSE_TIMEOUT_S", 0.3)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts the connection, never answers
    outcome: list[BaseException] = []

    def send() -> None:
        try:
            handler.send_response(_delete_event(["rtb-1"], "eni-1", f"http://127.0.0.1:{silent.getsockname()[1]}/r"),
                                  _Context(), "SUCCESS", "p")
        except BaseException as e:  # checked below
            outcome.append(e)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    thread.join(5)
    silent.close()
    assert not thread.is_alive() and len(outcome) == 1 and isinstance(outcome[0], OSError)


# -- the custom resource: what it answers and logs --------------------------------------------------

def _create_event(world: Any, url: str, **props: Any) -> dict[str, Any]:
    event = _delete_event(world.tables, world.eni_a, url)
    event.update(RequestType="Create")
    del event["PhysicalResourceId"]
    event["ResourceProperties"].update(props)
    return event


@pytest.mark.parametrize(("props", "reason", "physical"), [
    ({"EniId": "i-0123"}, "ValueError: EniId: got 'i-0123'; allowed: an ENI ID", f"haproxy-ha-vip-routes-{VIP}"),
    ({"Vip": "", "RouteTableIds": "rtb-1", "EniId": 5},
     "ValueError: Vip: got ''; allowed: an IPv4 address; RouteTableIds: got 'rtb-1'; allowed: a list of route table "
     "IDs; EniId: got 5; allowed: an ENI ID", "haproxy-ha-vip-routes-"),
    ({"Vip": None, "RouteTableIds": ["rtb-1", 2]},
     "ValueError: Vip: got None; allowed: an IPv4 address; RouteTableIds: got ['rtb-1', 2]; allowed: a list of route "
     "table IDs", "haproxy-ha-vip-routes-None"),
])
def test_bad_properties_are_failed_with_every_problem_named(
        moto: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        answers: tuple[str, list[dict[str, Any]]], props: dict[str, Any], reason: str, physical: str) -> None:
    url, got = answers
    world = make_world(client_for(moto), 1, with_routes=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto)
    monkeypatch.setattr(handler, "_client", None)
    capsys.readouterr()
    handler.on_event(_create_event(world, url, **props), _Context())
    (body,) = got
    assert (body["Status"], body["Reason"], body["PhysicalResourceId"], body["Data"]) == (
        "FAILED", reason, physical, {})
    (line,) = [r for r in _log_lines(capsys.readouterr().out) if r["event"] == "custom_resource_failed"]
    assert (line["request"], "ValueError: " + line["error"]) == ("Create", reason)


def test_a_create_without_a_vip_answers_for_an_unknown_one(answers: tuple[str, list[dict[str, Any]]],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    url, got = answers
    monkeypatch.setattr(handler, "_client", object())
    event = _delete_event([], "eni-1", url)
    event.update(RequestType="Create", ResourceProperties={})
    del event["PhysicalResourceId"]
    handler.on_event(event, _Context())
    assert [(b["Status"], b["PhysicalResourceId"]) for b in got] == [("FAILED", "haproxy-ha-vip-routes-unknown")]


def test_an_answer_too_late_is_failed_with_the_budget_and_logged(proxy, monkeypatch, capsys,  # type: ignore[no-untyped-def]
                                                                 answers) -> None:
    url, got = answers
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    monkeypatch.setattr(handler, "_client", None)
    world = make_world(client_for(proxy.url), 1, with_routes=False)
    proxy.state.set_fault("delay", 1, ["DescribeRouteTables"], delay_s=1.5)
    capsys.readouterr()
    handler.on_event(_create_event(world, url), _Context(remaining_s=handler.RESPONSE_RESERVE_S + 0.35))
    (body,) = got
    assert (body["Status"], body["PhysicalResourceId"]) == ("FAILED", f"haproxy-ha-vip-routes-{VIP}")
    # The budget (a little under 0.35 s by then) is given to a tenth of a second, in the answer and the log.
    assert body["Reason"] == ("Create did not finish within 0.3 s, before the function's own timeout; the "
                              "function's log says how far it got")
    (line,) = [r for r in _log_lines(capsys.readouterr().out) if r["event"] == "custom_resource_failed"]
    assert (line["request"], line["error"], line["budget_s"]) == ("Create", "timed out", 0.3)


def test_create_and_update_log_what_they_did_to_each_table(moto: str, capsys: pytest.CaptureFixture[str]) -> None:
    world = make_world(client_for(moto), 2)
    c = world.client
    added = c.create_route_table(VpcId=world.vpc_id)["RouteTable"]["RouteTableId"]
    event = _create_event(world, "http://127.0.0.1:1/unused")
    event["ResourceProperties"]["RouteTableIds"] = [world.tables[0], added]
    capsys.readouterr()
    assert handler.handle_custom_resource(event, c) == (f"haproxy-ha-vip-routes-{VIP}", {"RouteTableCount": "2"})
    update = dict(event, RequestType="Update", OldResourceProperties=dict(
        event["ResourceProperties"], RouteTableIds=world.tables))
    handler.handle_custom_resource(update, c)
    lines = [r for r in _log_lines(capsys.readouterr().out) if r["event"] == "custom_resource"]
    assert [(r["request"], r["vip"], r["tables"]) for r in lines] == [
        ("Create", VIP, {world.tables[0]: "unchanged", added: "created"}),
        ("Update", VIP, {world.tables[0]: "unchanged", added: "unchanged", world.tables[1]: "deleted"}),
    ]


def test_an_update_to_a_new_vip_leaves_the_old_vips_dropped_tables_to_its_delete(moto: str) -> None:
    world = make_world(client_for(moto), 2)
    c = world.client
    new_vip = "203.0.113.20"
    update = _create_event(world, "http://127.0.0.1:1/unused", Vip=new_vip, RouteTableIds=world.tables[:1])
    update.update(RequestType="Update", PhysicalResourceId=f"haproxy-ha-vip-routes-{VIP}",
                  OldResourceProperties={"Vip": VIP, "RouteTableIds": world.tables, "EniId": world.eni_a})
    assert handler.handle_custom_resource(update, c)[0] == f"haproxy-ha-vip-routes-{new_vip}"
    # The old VIP's routes stay (CloudFormation deletes them with the old physical ID), unmarked.
    (dropped,) = c.describe_route_tables(RouteTableIds=[world.tables[1]])["RouteTables"]
    assert dropped.get("Tags", []) == []
    assert [r["NetworkInterfaceId"] for r in dropped["Routes"] if r.get("DestinationCidrBlock") == VIP + "/32"] == [
        world.eni_a]


def test_a_delete_without_a_physical_id_answers_for_the_vip(moto: str) -> None:
    world = make_world(client_for(moto), 1)
    event = _delete_event(world.tables, world.eni_a)
    del event["PhysicalResourceId"]
    assert handler.handle_custom_resource(event, world.client) == (f"haproxy-ha-vip-routes-{VIP}", {})


def test_a_long_reason_keeps_as_much_as_fits() -> None:
    event = _delete_event([], "eni-1")
    reason = "x\n\u00e9" * 3000
    raw = handler.response_body(event, _Context(), "FAILED", "p", reason=reason)
    kept = json.loads(raw)["Reason"].removesuffix(handler._TRUNCATED)
    assert reason.startswith(kept) and len(raw) <= handler.RESPONSE_LIMIT_BYTES
    one_more = json.loads(raw)
    one_more["Reason"] = reason[:len(kept) + 1] + handler._TRUNCATED
    assert len(json.dumps(one_more).encode()) > handler.RESPONSE_LIMIT_BYTES
    exact = "y" * (handler.RESPONSE_LIMIT_BYTES - len(handler.response_body(event, _Context(), "FAILED", "p",
                                                                            reason="y")) + 1)
    assert json.loads(handler.response_body(event, _Context(), "FAILED", "p", reason=exact))["Reason"] == exact


# -- the reconciler's report -----------------------------------------------------------------------

def test_the_reconcile_report_names_everything_it_found_and_did(moto: str) -> None:
    world = make_world(client_for(moto), 3)
    c = world.client
    c.stop_instances(InstanceIds=[world.instance_a])
    c.replace_route(RouteTableId=world.tables[2], DestinationCidrBlock=VIP + "/32", NetworkInterfaceId=world.eni_b)
    ghost = "rtb-0123456789abcdef0"
    nodes = [{"name": "a", "eni_id": world.eni_a}, {"name": "b", "eni_id": world.eni_b}]
    report = handler.reconcile_routes(c, VIP, [*world.tables, ghost], nodes)
    assert report == {
        "vip": VIP, "node_states": {"a": "stopped", "b": "running"}, "tables_not_found": [ghost],
        "broken": world.tables[:2], "target": world.eni_b, "moved": world.tables[:2], "skipped_changed": [],
        "skipped_deleted": [], "failed": {}, "converged": True,
    }
    again = handler.reconcile_routes(c, VIP, world.tables, nodes)
    assert again == {"vip": VIP, "node_states": {"a": "stopped", "b": "running"}, "tables_not_found": [],
                     "broken": [], "target": world.eni_b, "moved": [], "skipped_changed": [], "skipped_deleted": [],
                     "failed": {}}


def test_the_marker_is_looked_up_100_tables_a_call() -> None:
    ids = [f"rtb-{i:04d}" for i in range(150)]
    client, stub = _stubbed()
    for chunk, marked in ((ids[:100], ids[5:7]), (ids[100:], ids[120:121])):
        stub.add_response("describe_route_tables", {"RouteTables": [_rt(t) for t in marked]},
                          {"Filters": [{"Name": "route-table-id", "Values": chunk},
                                       {"Name": f"tag:{ROUTES_DELETED_TAG}", "Values": [VIP]}]})
    with stub:
        assert handler.marked_deleted(client, VIP, ids + ids[:3]) == {ids[5], ids[6], ids[120]}
        stub.assert_no_pending_responses()


def test_an_event_gets_one_answer_whoever_asks_first(answers: tuple[str, list[dict[str, Any]]]) -> None:
    url, got = answers
    answer = handler._Answer(_delete_event([], "eni-1", url), _Context())
    assert answer.send("SUCCESS", "p") is True
    assert answer.send("FAILED", "p", reason="too late") is False
    assert [b["Status"] for b in got] == ["SUCCESS"]


def test_a_failed_update_answers_for_the_resource_it_was_asked_about(answers: tuple[str, list[dict[str, Any]]],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    url, got = answers
    monkeypatch.setattr(handler, "_client", object())
    # An update to a new VIP that fails: the answer keeps the old physical ID, so CloudFormation
    # does not take the failure for a replacement.
    event = _delete_event(["rtb-1"], "i-0123", url)
    event.update(RequestType="Update", OldResourceProperties={"Vip": VIP, "RouteTableIds": ["rtb-1"],
                                                              "EniId": "eni-1"})
    event["ResourceProperties"]["Vip"] = "203.0.113.20"
    handler.on_event(event, _Context())
    assert [(b["Status"], b["PhysicalResourceId"]) for b in got] == [("FAILED", f"haproxy-ha-vip-routes-{VIP}")]


# -- the reconciler's rounds -----------------------------------------------------------------------

class _Clock:
    """Stands in for the reconciler's time (route_lambda's only; take_over keeps the real one): the
    clock moves only by the pauses between rounds, which are recorded rather than slept.  `on_pause`
    runs in each pause, as what happens in the world meanwhile.  Past `most_pauses` a pause fails
    the test: pauses that shrink would never reach the deadline."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, on_pause: Any = None, most_pauses: int = 20) -> None:
        self.now = 0.0
        self.pauses: list[float] = []
        self.on_pause = on_pause

        def sleep(seconds: float) -> None:
            assert len(self.pauses) < most_pauses, f"more than {most_pauses} pauses: {self.pauses}"
            self.pauses.append(seconds)
            self.now += seconds
            if self.on_pause is not None:
                self.on_pause()

        monkeypatch.setattr(handler, "time", types.SimpleNamespace(monotonic=lambda: self.now, sleep=sleep))


def _clock_after(pauses: list[float]) -> float:
    """The clock after these pauses, added one by one as _Clock adds them (so exactly)."""
    now = 0.0
    for p in pauses:
        now += p
    return now


# The pauses between rounds: 0.05 s, doubled after every round (up to 1 s, which these tests do not
# reach: every round costs four EC2 calls).
ROUND_PAUSES = [0.05, 0.1, 0.2, 0.4]


@pytest.mark.parametrize(("deadline_s", "taken"), [
    pytest.param(_clock_after(ROUND_PAUSES[:3]), 2, id="third-pause-ends-at-it"),
    pytest.param(0.4, 3, id="fourth-pause-ends-past-it"),  # at 0.75 s
])
def test_reconcile_pauses_a_doubling_time_between_rounds_until_the_deadline(
        proxy, monkeypatch: pytest.MonkeyPatch, deadline_s: float, taken: int) -> None:  # type: ignore[no-untyped-def]
    world = make_world(client_for(proxy.url, max_attempts=1), 1)
    world.client.stop_instances(InstanceIds=[world.instance_a])
    proxy.state.set_fault("5xx", 10_000, ["ReplaceRoute"])
    clock = _Clock(monkeypatch)
    nodes = [{"name": "a", "eni_id": world.eni_a}, {"name": "b", "eni_id": world.eni_b}]
    report = handler.reconcile_routes(world.client, VIP, world.tables, nodes, deadline_s=deadline_s)
    assert not report["converged"] and list(report["failed"]) == world.tables
    assert clock.pauses == ROUND_PAUSES[:taken]
    # A round before each pause and one after the last: the next pause would end at or past the deadline.
    assert proxy.state.stats()["calls"]["ReplaceRoute"] == taken + 1
    assert clock.now < deadline_s <= clock.now + ROUND_PAUSES[taken]


@pytest.mark.parametrize("how", ["the-master-moved-it", "an-earlier-write-landed-late"])
def test_a_table_already_at_the_target_when_a_round_reads_it_is_left_alone(
        moto, proxy, monkeypatch: pytest.MonkeyPatch, how: str) -> None:  # type: ignore[no-untyped-def]
    world = make_world(client_for(proxy.url), 1)
    c = world.client
    c.stop_instances(InstanceIds=[world.instance_a])
    nodes = [{"name": "a", "eni_id": world.eni_a}, {"name": "b", "eni_id": world.eni_b}]
    direct = client_for(moto)  # straight to moto: the proxy counts only the reconciler's calls

    def lands() -> None:
        direct.replace_route(RouteTableId=world.tables[0], DestinationCidrBlock=VIP + "/32",
                             NetworkInterfaceId=world.eni_b)

    if how == "the-master-moved-it":
        # b, the new MASTER, moves the table to itself while the reconciler reads the node states,
        # after its first read of the table: the first round finds it already at b.
        proxy.state.on_call("DescribeNetworkInterfaces", lands)
        clock = _Clock(monkeypatch)
    else:
        # The first round's write is answered but lost, so the round's verify finds the table at a;
        # the write lands during the pause, and the second round finds the table at b.
        proxy.state.set_fault("lose", 1, ["ReplaceRoute"])
        clock = _Clock(monkeypatch, on_pause=lands)
    report = handler.reconcile_routes(c, VIP, world.tables, nodes)
    assert proxy.state.hook_errors == []
    assert report["broken"] == world.tables and report["target"] == world.eni_b
    # Left alone, and no failure: not a table that changed under the reconciler.
    assert report["skipped_changed"] == [] and report["failed"] == {} and report["converged"]
    assert targets(c, world.tables) == {world.tables[0]: world.eni_b}
    writes = proxy.state.stats()["calls"].get("ReplaceRoute", 0)
    if how == "the-master-moved-it":
        assert (report["moved"], clock.pauses, writes) == ([], [], 0)
    else:
        # Its own write, which landed late, is what moved the table.
        assert (report["moved"], clock.pauses, writes) == (world.tables, [0.05], 1)
