"""A node's life in its group: drain counted by the real HAProxy, readiness, the termination
hook (hand over, drain, complete), asking to be replaced, and the CloudFormation signal.
IMDS, CompleteLifecycleAction, SetInstanceHealth and SignalResource are stand-ins
(tests/support), EC2 is moto."""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import pytest

from haproxy_ha_runtime import agent, lifecycle, peer, telemetry
from haproxy_ha_runtime.config import NodeConfig, parse_config
from haproxy_ha_runtime.imds import Imds
from haproxy_ha_runtime.render import render_haproxy
from haproxy_ha_runtime.tls import TlsStore
from tests.conftest import World, client_for, make_world, require, targets
from tests.runtime.samples import doc
from tests.support import serving
from tests.support.agent_tools import FakeHealth, Log, wait_for
from tests.support.aws_stand_in import AwsStandIn
from tests.support.fault_proxy import FaultProxy
from tests.support.imds_stand_in import FakeImds
from tests.support.moto_server import free_port


class _SlowBackend:
    """A backend that holds each request until `release` is set."""

    def __init__(self) -> None:
        self.release = threading.Event()
        slow = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/slow":
                    slow.release.wait(10)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.server.server_address[1]
        serving.in_thread(self.server)


@pytest.fixture
def haproxy_with_slow_backend(tmp_path: Path) -> Iterator[tuple[NodeConfig, _SlowBackend, int]]:
    binary = shutil.which("haproxy")
    require("the haproxy binary (Debian package haproxy)", binary is not None)
    assert binary is not None
    backend = _SlowBackend()
    port = free_port()
    cfg = parse_config(doc(stats_port=free_port(), paths={"run_dir": str(tmp_path), "log_socket": str(tmp_path / "l")},
                           listeners=[{"name": "web", "port": port, "check_path": "/",
                                       "backends": [{"name": "slow", "host": "127.0.0.1", "port": backend.port}]}]))
    text = render_haproxy(cfg)
    text = "".join(line for line in text.splitlines(keepends=True) if line.strip() not in ("user haproxy",
                                                                                            "group haproxy"))
    (tmp_path / "haproxy.cfg").write_text(text)
    proc = subprocess.Popen([binary, "-db", "-f", str(tmp_path / "haproxy.cfg")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: Path(cfg.paths.haproxy_socket).exists())
        yield cfg, backend, port
    finally:
        backend.release.set()
        proc.terminate()
        proc.wait(10)
        backend.server.shutdown()
        backend.server.server_close()


def test_drain_waits_for_the_request_in_flight_and_no_longer(
        haproxy_with_slow_backend: tuple[NodeConfig, _SlowBackend, int]) -> None:
    cfg, backend, port = haproxy_with_slow_backend
    sessions = lambda: lifecycle.requests_in_flight(cfg.paths.haproxy_socket, ["web"])  # noqa: E731
    assert sessions() == 0
    answers: list[int] = []

    def request() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/slow")
        answers.append(conn.getresponse().status)
        conn.close()

    client = threading.Thread(target=request)
    client.start()
    wait_for(lambda: sessions() == 1)
    drained, waited = lifecycle.drain(sessions, timeout_s=0.5, poll_s=0.05)
    assert not drained and waited >= 0.5  # still in flight: drain gives up at its timeout
    threading.Timer(0.3, backend.release.set).start()
    drained, waited = lifecycle.drain(sessions, timeout_s=10, poll_s=0.05)
    client.join(10)
    assert drained and waited < 10 and answers == [200]  # the request finished, and was answered


def _frontend_sessions(socket_path: str, name: str) -> int:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(socket_path)
        s.sendall(b"show stat -1 1 -1\n")
        text = b"".join(iter(lambda: s.recv(65536), b"")).decode()
    lines = text.splitlines()
    header = lines[0].lstrip("# ").split(",")
    row = next(line.split(",") for line in lines[1:] if line.startswith(name + ",FRONTEND,"))
    return int(row[header.index("scur")])


def test_an_idle_keep_alive_connection_is_no_request_in_flight(
        haproxy_with_slow_backend: tuple[NodeConfig, _SlowBackend, int]) -> None:
    # After the VIP's routes move, the client's FIN for such a connection goes to the peer, so the
    # old node would hold it until `timeout client`: the drain must not wait for it.
    cfg, backend, port = haproxy_with_slow_backend
    backend.release.set()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200 and not resp.will_close  # HTTP/1.1: the connection stays open
        assert _frontend_sessions(cfg.paths.haproxy_socket, "web") == 1
        assert lifecycle.requests_in_flight(cfg.paths.haproxy_socket, ["web"]) == 0
        drained, waited = lifecycle.drain(lambda: lifecycle.requests_in_flight(cfg.paths.haproxy_socket, ["web"]), 5)
        assert drained and waited < 1
    finally:
        conn.close()


def test_drain_ends_at_once_when_haproxy_is_gone(tmp_path: Path) -> None:
    # "At once" against a 20 s timeout: half of it is room for any stall of a busy machine, and a
    # drain that waited for its timeout would still be 10 s over the bound.
    drained, waited = lifecycle.drain(lambda: lifecycle.requests_in_flight(str(tmp_path / "none.sock"), ["web"]), 20)
    assert drained and waited < 10


# -- readiness -------------------------------------------------------------------------------------

OWN_READY = peer.PeerView(peer.REACHED, vrrp="BACKUP", healthy=True)


@pytest.mark.parametrize(("own", "peer_view", "peer_replaced", "ec2_ok", "expected"), [
    (OWN_READY, OWN_READY, False, True, []),
    (peer.PeerView(peer.REACHED, vrrp="MASTER", healthy=True), None, False, True, []),
    (peer.PeerView(peer.REACHED, vrrp="BACKUP", healthy=False), OWN_READY, False, True,
     ["HAProxy does not answer its health check"]),
    (peer.PeerView(peer.REACHED, vrrp="FAULT", healthy=True), OWN_READY, False, True,
     ["keepalived is FAULT, not BACKUP or MASTER"]),
    (OWN_READY, peer.PeerView(peer.UNREACHABLE), False, True, ["the peer is not heard (unreachable)"]),
    (OWN_READY, peer.PeerView(peer.UNREACHABLE), True, True, []),  # the peer is being replaced too
    (OWN_READY, OWN_READY, False, False, ["a read-only EC2 call with this node's credentials failed"]),
    (peer.PeerView(peer.HAPROXY_DOWN), OWN_READY, False, True, ["the agent does not answer at /state (haproxy-down)"]),
])
def test_ready_means_healthy_in_vrrp_hearing_the_peer_and_reaching_ec2(
        own: peer.PeerView, peer_view: peer.PeerView | None, peer_replaced: bool, ec2_ok: bool,
        expected: list[str]) -> None:
    assert lifecycle.ready_problems(own, peer_view, peer_replaced, ec2_ok) == expected


def test_a_tls_listener_the_document_names_and_the_node_does_not_serve_keeps_it_from_ready() -> None:
    not_served = {"https": "secret lb/https: cannot read it: ResourceNotFoundException: no such secret"}
    assert lifecycle.ready_problems(OWN_READY, OWN_READY, False, True, not_served) == [
        "TLS listener https is not served: secret lb/https: cannot read it: ResourceNotFoundException: no such secret"]


def test_the_tls_listeners_the_agent_left_out_are_what_ready_sees(tmp_path: Path) -> None:
    """ready reads what the agent knows from its state files, with no client of its own."""
    cfg = parse_config(doc(listeners=[
        {"name": "web", "port": 80, "backends": [{"name": "w1", "host": "192.0.2.50", "port": 8080}]},
        {"name": "https", "port": 443, "static_reply": "hello", "tls": {"secret": "lb/https"}}],
        paths={"run_dir": str(tmp_path)}))
    assert TlsStore(None, cfg.paths).left_out(cfg) == {"https": "its secret has not been read yet"}


# -- the termination hook, asking to be replaced, and the signal, with stand-ins -------------------

@pytest.fixture
def stand_ins() -> Iterator[tuple[FakeImds, AwsStandIn, FakeHealth]]:
    imds, aws, health = FakeImds(instance_id="i-0aaaaaaaaaaaaaaa1"), AwsStandIn(), FakeHealth()
    yield imds, aws, health
    imds.stop()
    aws.stop()
    health.stop()


def _platform(imds: FakeImds, aws: AwsStandIn) -> lifecycle.Platform:
    client = Imds(imds.url)

    def state() -> str | None:
        return imds.lifecycle_state

    return lifecycle.Platform(
        instance_id=lambda: client.get("instance-id"), lifecycle_state=state,
        client=lambda service: boto3.session.Session().client(service, region_name="us-east-1", endpoint_url=aws.url))


def _node_a(world: World, tmp: Path, health_port: int, **changes: Any) -> NodeConfig:
    return parse_config(doc(**{
        "eni_id": world.eni_a, "route_table_ids": world.tables, "profile": "fast", "stats_port": health_port,
        "agent_port": free_port(), "peers": [{"name": "b", "ip": "192.0.2.20", "eni_id": world.eni_b}],
        "auto_scaling_group": "hha-node-a", "lifecycle_hook": "hand-over", "drain_timeout_s": 1,
        "paths": {"run_dir": str(tmp / "run")}, **changes}))


class Peer:
    """Node b's agent as node a hears it at GET /state: `view` is what it says (healthy BACKUP)."""

    def __init__(self) -> None:
        self.view: dict[str, Any] = {"node": "b", "vrrp": "BACKUP", "healthy": True, "stepped_down": False,
                                     "leaving": False}
        self.server = peer.StateServer(0, lambda: dict(self.view)).start()

    def address(self, _p: Any) -> tuple[str, int]:
        return "127.0.0.1", self.server.port


@pytest.fixture
def peer_b() -> Iterator[Peer]:
    b = Peer()
    yield b
    b.server.stop()


def _run(cfg: NodeConfig, world: World, platform: lifecycle.Platform, log: Log, peer_b: Peer,
         client: Any = None) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(cfg, client or world.client, world.eni_a, stop, log), kwargs={
        "platform": platform, "peer_address": peer_b.address})
    thread.start()
    return thread, stop


def test_a_terminating_node_hands_over_drains_then_completes_the_hook(
        moto: str, tmp_path: Path, stand_ins: tuple[FakeImds, AwsStandIn, FakeHealth], peer_b: Peer) -> None:
    imds, aws, health = stand_ins
    world = make_world(client_for(moto), 3)  # the routes start at node a
    cfg = _node_a(world, tmp_path, health.port)
    log = Log()
    thread, stop = _run(cfg, world, _platform(imds, aws), log, peer_b)
    try:
        wait_for(lambda: bool(log.of("health")))
        time.sleep(0.5)
        assert not aws.calls and set(targets(world.client, world.tables).values()) == {world.eni_a}
        imds.lifecycle_state = "Terminated"
        wait_for(lambda: bool(log.of("lifecycle_complete")))  # logged once the call has returned
        order = [e["event"] for e in log.events if e["event"] in
                 ("terminating", "route_hand_over", "drained", "lifecycle_complete")]
        assert order == ["terminating", "route_hand_over", "drained", "lifecycle_complete"]
        assert set(targets(world.client, world.tables).values()) == {world.eni_b}
        assert aws.of("CompleteLifecycleAction") == [{
            "LifecycleHookName": "hand-over", "AutoScalingGroupName": "hha-node-a",
            "InstanceId": "i-0aaaaaaaaaaaaaaa1", "LifecycleActionResult": "CONTINUE"}]
        # keepalived is told "unhealthy" until the end, so the peer stays MASTER.
        assert Path(cfg.paths.track_file).read_text() == "1\n"
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def test_a_leaving_node_keeps_the_vip_while_its_peer_cannot_serve_and_hands_it_over_once_it_can(
        moto: str, tmp_path: Path, stand_ins: tuple[FakeImds, AwsStandIn, FakeHealth], peer_b: Peer) -> None:
    imds, aws, health = stand_ins
    world = make_world(client_for(moto), 3)
    cfg = _node_a(world, tmp_path, health.port)
    log = Log()
    peer_b.view["healthy"] = False  # b's HAProxy is down
    thread, stop = _run(cfg, world, _platform(imds, aws), log, peer_b)
    try:
        wait_for(lambda: bool(log.of("health")))
        imds.lifecycle_state = "Terminated"
        wait_for(lambda: bool(log.of("leave_held")))
        assert log.of("leave_held")[0]["reason"] == "peer b's HAProxy is not healthy"
        # It keeps the VIP, and keeps serving: no route moved, no hook completed, not yielding.
        assert set(targets(world.client, world.tables).values()) == {world.eni_a}
        assert not aws.of("CompleteLifecycleAction")
        assert Path(cfg.paths.track_file).read_text() == "0\n"
        # b is leaving too, then fit: each reason is said once, and then the VIP goes to b.
        peer_b.view.update(healthy=True, leaving=True)
        wait_for(lambda: len(log.of("leave_held")) == 2)
        assert log.of("leave_held")[1]["reason"] == "peer b is leaving too"
        assert not aws.of("CompleteLifecycleAction")
        peer_b.view["leaving"] = False
        wait_for(lambda: bool(log.of("lifecycle_complete")))
        assert set(targets(world.client, world.tables).values()) == {world.eni_b}
        order = [e["event"] for e in log.events if e["event"] in ("route_hand_over", "drained", "lifecycle_complete")]
        assert order == ["route_hand_over", "drained", "lifecycle_complete"]
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def test_a_leaving_node_completes_its_hook_only_once_the_routes_are_at_its_peer_while_the_api_throttles(
        moto: str, proxy: FaultProxy, tmp_path: Path, stand_ins: tuple[FakeImds, AwsStandIn, FakeHealth],
        peer_b: Peer) -> None:
    imds, aws, health = stand_ins
    world = make_world(client_for(moto), 3)
    cfg = _node_a(world, tmp_path, health.port)
    log = Log()
    thread, stop = _run(cfg, world, _platform(imds, aws), log, peer_b, client=client_for(proxy.url))
    try:
        wait_for(lambda: bool(log.of("health")))
        # Every EC2 call of the hand-over throttled, 40 answers in all: the first reads and writes,
        # and the retries, fail for a while.
        proxy.state.set_fault("throttle", 40, [])
        imds.lifecycle_state = "Terminated"
        wait_for(lambda: bool(log.of("lifecycle_complete")), timeout=60)
        # Completed only once every route is verified at b, however long the API took.
        assert set(targets(world.client, world.tables).values()) == {world.eni_b}
        done = [e for e in log.events if e["event"] in ("route_hand_over", "leave_held", "lifecycle_complete")]
        assert done[-1]["event"] == "lifecycle_complete" and any(
            e["event"] == "route_hand_over" and e["converged"] for e in done)
        assert sum(proxy.state.stats()["faults"].values()) == 40
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def test_a_leaving_node_gives_up_holding_the_vip_at_the_deadline_and_says_why(
        moto: str, tmp_path: Path, stand_ins: tuple[FakeImds, AwsStandIn, FakeHealth]) -> None:
    _imds, _aws, health = stand_ins
    world = make_world(client_for(moto), 2)
    log = Log()
    records: list[str] = []
    a = agent.Agent(_node_a(world, tmp_path, health.port), world.client, world.eni_a, log,
                    probe=lambda _p: peer.PeerView(peer.UNREACHABLE),
                    metrics=telemetry.Telemetry("pair", "a", records.append, log))
    held: list[str | None] = []
    try:
        why = a.leave(time.monotonic() + 0.3, on_held=held.append)
    finally:
        a.shutdown()
    assert why == held[0] == "peer b does not answer (unreachable)"
    # Said once, in the log and in one metric record (the reason as a property).
    assert [e["reason"] for e in log.of("leave_held")] == [why]
    (record,) = [json.loads(r) for r in records if '"hand_over_held"' in r]
    assert record["HandOversHeld"] == 1 and record["reason"] == why
    assert set(targets(world.client, world.tables).values()) == {world.eni_a}
    assert a.leaving is True and a.yield_until == 0.0  # it never yielded: it kept the VIP


def test_a_node_whose_haproxy_stays_down_asks_its_group_to_replace_it(
        moto: str, tmp_path: Path, stand_ins: tuple[FakeImds, AwsStandIn, FakeHealth], peer_b: Peer) -> None:
    imds, aws, health = stand_ins
    world = make_world(client_for(moto), 1)
    cfg = _node_a(world, tmp_path, health.port, replace_unhealthy_after_s=1)
    log = Log()
    thread, stop = _run(cfg, world, _platform(imds, aws), log, peer_b)
    try:
        wait_for(lambda: bool(log.of("health")))
        health.ok = False
        t0 = time.monotonic()
        wait_for(lambda: bool(aws.of("SetInstanceHealth")))
        assert time.monotonic() - t0 >= 1  # not before the bound
        time.sleep(0.5)
        assert aws.of("SetInstanceHealth") == [{"InstanceId": "i-0aaaaaaaaaaaaaaa1", "HealthStatus": "Unhealthy",
                                                "ShouldRespectGracePeriod": "false"}]  # asked once
    finally:
        stop.set()
        thread.join(10)


def test_a_node_that_recovers_in_time_is_not_replaced(
        moto: str, tmp_path: Path, stand_ins: tuple[FakeImds, AwsStandIn, FakeHealth], peer_b: Peer) -> None:
    imds, aws, health = stand_ins
    world = make_world(client_for(moto), 1)
    cfg = _node_a(world, tmp_path, health.port, replace_unhealthy_after_s=2)
    log = Log()
    thread, stop = _run(cfg, world, _platform(imds, aws), log, peer_b)
    try:
        wait_for(lambda: bool(log.of("health")))
        health.ok = False
        wait_for(lambda: any(e.get("healthy") is False for e in log.of("health")))
        health.ok = True
        wait_for(lambda: log.of("health")[-1].get("healthy") is True)
        time.sleep(2.5)
        assert not aws.of("SetInstanceHealth")
    finally:
        stop.set()
        thread.join(10)


def test_the_signal_names_the_stack_the_group_and_the_instance(
        stand_ins: tuple[FakeImds, AwsStandIn, FakeHealth]) -> None:
    _imds, aws, _health = stand_ins
    cfn = boto3.session.Session().client("cloudformation", region_name="us-east-1", endpoint_url=aws.url)
    cfg = parse_config(doc(cfn_stack="HaproxyHa", cfn_resource="NodeAGroup1234ABCD"))
    lifecycle.signal(cfn, cfg, "i-0aaaaaaaaaaaaaaa1", success=True)
    lifecycle.signal(cfn, cfg, "i-0aaaaaaaaaaaaaaa1", success=False)
    lifecycle.signal(cfn, parse_config(doc()), "i-0aaaaaaaaaaaaaaa1", success=True)  # no stack: no call
    assert aws.of("SignalResource") == [
        {"StackName": "HaproxyHa", "LogicalResourceId": "NodeAGroup1234ABCD", "UniqueId": "i-0aaaaaaaaaaaaaaa1",
         "Status": status} for status in ("SUCCESS", "FAILURE")]


def test_a_signal_nobody_waits_for_is_no_failure_but_other_errors_are(
        stand_ins: tuple[FakeImds, AwsStandIn, FakeHealth]) -> None:
    """Outside a deploy (the group replaced the node by itself, or it rebooted) CloudFormation
    refuses the signal: the node is still ready.  A real failure still raises."""
    from botocore.exceptions import ClientError

    _imds, aws, _health = stand_ins
    cfn = boto3.session.Session().client("cloudformation", region_name="us-east-1", endpoint_url=aws.url,
                                         config=botocore.config.Config(retries={"total_max_attempts": 1}))
    cfg = parse_config(doc(cfn_stack="HaproxyHa", cfn_resource="NodeAGroup1234ABCD"))
    aws.refuse.add("SignalResource")
    assert lifecycle.signal(cfn, cfg, "i-0aaaaaaaaaaaaaaa1", success=True) is False
    aws.refuse.clear()
    assert lifecycle.signal(cfn, cfg, "i-0aaaaaaaaaaaaaaa1", success=True) is True
    aws.fail.add("SignalResource")
    with pytest.raises(ClientError):
        lifecycle.signal(cfn, cfg, "i-0aaaaaaaaaaaaaaa1", success=True)


class _SlowWrites:
    """A client whose route writes each take `delay_s` before they reach EC2 (moto)."""

    def __init__(self, client: Any, delay_s: float) -> None:
        self._client, self._delay_s = client, delay_s

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name != "replace_route":
            return attr

        def slow(**kwargs: Any) -> Any:
            time.sleep(self._delay_s)
            return attr(**kwargs)

        return slow


def test_a_take_over_still_running_when_the_node_leaves_points_no_table_back_at_it(
        moto: str, tmp_path: Path, stand_ins: tuple[FakeImds, AwsStandIn, FakeHealth]) -> None:
    _imds, _aws, health = stand_ins
    world = make_world(client_for(moto), 4)
    for table in world.tables:  # b holds the VIP; a is about to take it
        world.client.replace_route(RouteTableId=table, DestinationCidrBlock=f"{doc()['vip']}/32",
                                   NetworkInterfaceId=world.eni_b)
    log = Log()
    fit = peer.PeerView(peer.REACHED, vrrp="BACKUP", healthy=True, leaving=False)
    a = agent.Agent(_node_a(world, tmp_path, health.port), _SlowWrites(world.client, 0.4), world.eni_a, log,
                    probe=lambda _p: fit)
    try:
        a.on_health(True)
        a.on_state(agent.MASTER)
        wait_for(lambda: a.busy)  # the take-over's writes are on their way
        assert a.leave(time.monotonic() + 30) is None
        assert not a.busy
        time.sleep(0.6)  # longer than a write takes: one still in flight would have landed
        assert set(targets(world.client, world.tables).values()) == {world.eni_b}
    finally:
        a.shutdown()
    assert log.of("route_move")[0]["cancelled"] is True
