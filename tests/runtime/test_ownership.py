"""Who owns the VIP: the decision table, the peer's /state over HTTP, and the agent acting on
both against a moto server (DESIGN.md, "Who owns the VIP")."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from haproxy_ha_runtime import agent, ownership, peer, routes
from haproxy_ha_runtime.config import SCHEMA_VERSION, NodeConfig, parse_config
from haproxy_ha_runtime.tags import OPERATOR_CHOICE_TAG
from haproxy_ha_runtime.version import __version__
from tests.conftest import VIP, World, client_for, make_world, targets
from tests.runtime.samples import doc
from tests.support import serving
from tests.support.agent_tools import Log, wait_for
from tests.support.moto_server import free_port

ME, PEER, OTHER = "eni-00000000000000001", "eni-00000000000000002", "eni-00000000000000003"
HEALTHY_BACKUP = peer.PeerView(peer.REACHED, vrrp="BACKUP", healthy=True)
HEALTHY_MASTER = peer.PeerView(peer.REACHED, vrrp="MASTER", healthy=True)
SICK = peer.PeerView(peer.REACHED, vrrp="FAULT", healthy=False)


def at(eni: str | None, state: str = routes.ROUTE_ACTIVE) -> routes.VipRoute:
    return routes.VipRoute("rtb-00000000000000001", state, eni_id=eni)


@pytest.mark.parametrize(("view", "peer_view", "running", "choice", "expected"), [
    (at(ME), HEALTHY_MASTER, True, PEER, ownership.OK),
    (routes.VipRoute("rtb-00000000000000001", routes.ROUTE_MISSING), HEALTHY_BACKUP, True, None, ownership.MISSING),
    # A fault always wins.
    (at(PEER, routes.ROUTE_BLACKHOLE), HEALTHY_MASTER, True, PEER, ownership.TAKE),
    (at(OTHER), HEALTHY_MASTER, True, None, ownership.TAKE),
    (at(PEER), HEALTHY_MASTER, False, PEER, ownership.TAKE),
    (at(PEER), SICK, True, PEER, ownership.TAKE),
    (at(PEER), peer.PeerView(peer.HAPROXY_DOWN), True, PEER, ownership.TAKE),
    # Two healthy masters never take turns.
    (at(PEER), HEALTHY_MASTER, True, None, ownership.LEAVE),
    # An operator move holds: step down so that VRRP follows.
    (at(PEER), HEALTHY_BACKUP, True, PEER, ownership.STEP_DOWN),
    # A healthy peer that is neither MASTER nor chosen does not keep the routes.
    (at(PEER), HEALTHY_BACKUP, True, None, ownership.TAKE),
    (at(PEER), HEALTHY_BACKUP, True, ME, ownership.TAKE),
    # Cannot tell (a partition, or the peer's agent restarting): one move at most, so leave it.
    (at(PEER), peer.PeerView(peer.UNREACHABLE), True, None, ownership.LEAVE),
    (at(PEER), peer.PeerView(peer.AGENT_DOWN), True, None, ownership.LEAVE),
    (at(PEER), peer.PeerView(), True, None, ownership.LEAVE),
])
def test_decision_table(view: routes.VipRoute, peer_view: peer.PeerView, running: bool, choice: str | None,
                        expected: str) -> None:
    assert ownership.decide(view, ME, PEER, peer_view, running, choice) == expected


# -- the peer's /state, over loopback HTTP ------------------------------------------------------

def test_probe_reads_the_state_a_peer_serves() -> None:
    report: dict[str, Any] = {"node": "b", "vrrp": "MASTER", "healthy": True}
    server = peer.StateServer(0, lambda: report).start()
    try:
        view = peer.probe_peer("127.0.0.1", server.port, 1.0)
        assert (view.reach, view.vrrp, view.healthy) == (peer.REACHED, "MASTER", True)
        report.update(vrrp="FAULT", healthy=False)
        view = peer.probe_peer("127.0.0.1", server.port, 1.0)
        assert (view.reach, view.vrrp, view.healthy) == (peer.REACHED, "FAULT", False)
        assert view.unhealthy_haproxy and not view.healthy_haproxy
    finally:
        server.stop()


# What a 0.1.0 agent answers at /state: no runtime, no schema.
STATE_0_1_0 = {"node": "b", "vrrp": "BACKUP", "healthy": True, "stepped_down": False, "leaving": False,
               "eni_id": PEER}


def test_an_agent_answers_state_with_its_release_and_the_schema_it_reads(world: World, tmp_path: Path) -> None:
    a = agent.Agent(node_a(world, tmp_path), world.client, world.eni_a, Log())
    server = peer.StateServer(0, a.state_report).start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/state", timeout=2) as resp:
            answer = json.loads(resp.read())
    finally:
        server.stop()
        a.shutdown()
    assert (answer["runtime"], answer["schema"]) == (__version__, SCHEMA_VERSION)
    assert {k: v for k, v in answer.items() if k not in ("runtime", "schema")}.keys() == STATE_0_1_0.keys()


@pytest.mark.parametrize("answer", [
    STATE_0_1_0,
    {**STATE_0_1_0, "runtime": "0.2.0", "schema": 2},
    # A later release may add keys that this one does not know.
    {**STATE_0_1_0, "runtime": "9.0.0", "schema": 9, "zone": "eu-west-1a", "extra": {"nested": [1]}},
])
def test_probe_reads_the_keys_it_knows_whatever_else_a_peer_of_another_release_sends(answer: dict[str, Any]) -> None:
    server = peer.StateServer(0, lambda: answer).start()
    try:
        view = peer.probe_peer("127.0.0.1", server.port, 1.0)
    finally:
        server.stop()
    assert (view.reach, view.vrrp, view.healthy, view.stepped_down, view.leaving) == (
        peer.REACHED, "BACKUP", True, False, False)


@pytest.mark.parametrize("answer", [[], None, "MASTER", 1])
def test_probe_takes_an_answer_that_is_json_but_not_an_object_as_no_answer(answer: Any) -> None:
    # Raised, it would end the peer poller's thread, and the agent would act on its last view for good.
    server = peer.StateServer(0, lambda: answer).start()
    try:
        assert peer.probe_peer("127.0.0.1", server.port, 1.0).reach == peer.UNREACHABLE
    finally:
        server.stop()


def test_probe_tells_a_refused_port_from_a_silent_host_and_a_failing_agent() -> None:
    closed = free_port()
    assert peer.probe_peer("127.0.0.1", closed, 1.0).reach == peer.HAPROXY_DOWN
    # A host that accepts the connection but never answers: unreachable after the timeout.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    try:
        t0 = time.monotonic()
        assert peer.probe_peer("127.0.0.1", silent.getsockname()[1], 0.3).reach == peer.UNREACHABLE
        assert time.monotonic() - t0 < 5
    finally:
        silent.close()

    class Unavailable(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_error(503)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Unavailable)
    serving.in_thread(server)
    try:
        assert peer.probe_peer("127.0.0.1", server.server_address[1], 1.0).reach == peer.AGENT_DOWN
    finally:
        server.shutdown()
        server.server_close()


# -- the agent acting on it, against moto -------------------------------------------------------

def node_a(world: World, tmp: Path) -> NodeConfig:
    """This agent is node a (world.eni_a); its peer is node b (world.eni_b)."""
    return parse_config(doc(eni_id=world.eni_a, route_table_ids=world.tables, profile="fast",
                            peers=[{"name": "b", "ip": "192.0.2.20", "eni_id": world.eni_b}],
                            paths={"run_dir": str(tmp / "run")}))


@pytest.fixture
def world(moto: str) -> World:
    return make_world(client_for(moto), 3)


@pytest.fixture
def make_agent(world: World, tmp_path: Path) -> Iterator[Callable[..., tuple[agent.Agent, Log]]]:
    made: list[agent.Agent] = []

    def make(peer_view: peer.PeerView, stepped_down: bool = False) -> tuple[agent.Agent, Log]:
        log = Log()
        cfg = node_a(world, tmp_path)
        if stepped_down:
            # Where a stepped-down agent keeps that fact, so that a restarted one knows it too.
            Path(cfg.paths.run_dir).mkdir(parents=True, exist_ok=True)
            Path(cfg.paths.priority_file).write_text(f"{agent.STEP_DOWN_OFFSET}\n")
        a = agent.Agent(cfg, world.client, world.eni_a, log)
        made.append(a)
        assert a.stepped_down is stepped_down
        a.on_health(True)
        a.peer_views["b"] = peer_view  # what the peer poller last heard
        return a, log

    yield make
    for a in made:
        a.shutdown()


def _routes_at(world: World, eni: str) -> None:
    for t in world.tables:
        world.client.replace_route(RouteTableId=t, DestinationCidrBlock=VIP + "/32", NetworkInterfaceId=eni)


def _choose(world: World, eni: str) -> None:
    world.client.create_tags(Resources=[world.eni_a, world.eni_b], Tags=[{"Key": OPERATOR_CHOICE_TAG, "Value": eni}])


def _check_as_master(a: agent.Agent) -> None:
    """keepalived is MASTER and the agent checks who should own each route before it moves
    anything (what a restarted agent does, and what each repair tick does), then settles."""
    a.on_state(agent.MASTER, reason="keepalived was already MASTER when the agent started", resumed=True)
    wait_for(lambda: not a.busy)


def test_master_steps_down_when_the_operator_moved_the_routes_to_a_healthy_peer(
        world: World, make_agent: Callable[..., tuple[agent.Agent, Log]]) -> None:
    _choose(world, world.eni_b)
    _routes_at(world, world.eni_b)  # what `haproxy-ha failover --to b` did
    a, log = make_agent(HEALTHY_BACKUP)
    _check_as_master(a)
    assert set(targets(world.client, world.tables).values()) == {world.eni_b}  # nothing moved back
    assert log.of("step_down") and a.stepped_down
    # keepalived is told to leave MASTER now (health file), and to stay below the peer (priority file).
    assert a.track_value == "1\n" and a.priority_value == f"{agent.STEP_DOWN_OFFSET}\n"
    # Once keepalived has left MASTER and the peer is MASTER, the yield ends; the lower priority stays.
    a.on_state(agent.BACKUP)
    a.peer_views["b"] = HEALTHY_MASTER
    a.end_yield_if_done()
    assert a.track_value == "0\n" and a.stepped_down


def test_the_choice_dies_with_the_chosen_node(world: World, make_agent: Callable[..., tuple[agent.Agent, Log]]) -> None:
    """Case 1 of the issue: failover --to b, then b's HAProxy dies: node a takes the routes back."""
    _choose(world, world.eni_b)
    _routes_at(world, world.eni_b)
    a, log = make_agent(SICK, stepped_down=True)
    _check_as_master(a)
    assert set(targets(world.client, world.tables).values()) == {world.eni_a}
    assert not a.stepped_down and log.of("route_repair")


def test_a_restarted_agent_on_a_master_does_not_undo_an_operator_move(
        world: World, make_agent: Callable[..., tuple[agent.Agent, Log]]) -> None:
    """Case 2 of the issue: the agent resumes as MASTER; it checks before it moves anything."""
    _choose(world, world.eni_b)
    _routes_at(world, world.eni_b)
    a, log = make_agent(HEALTHY_BACKUP)
    a.on_state(agent.MASTER, reason="resumed", resumed=True)
    wait_for(lambda: not a.busy and bool(log.of("step_down")))
    assert set(targets(world.client, world.tables).values()) == {world.eni_b}
    assert not log.of("route_move")


def test_a_real_master_transition_takes_the_routes_at_once(
        world: World, make_agent: Callable[..., tuple[agent.Agent, Log]]) -> None:
    """A transition means the peer went silent or failed: the fast path asks nobody."""
    _routes_at(world, world.eni_b)
    a, log = make_agent(HEALTHY_MASTER, stepped_down=True)
    a.on_state(agent.MASTER)
    wait_for(lambda: bool(log.of("route_move")))
    assert set(targets(world.client, world.tables).values()) == {world.eni_a}
    assert not a.stepped_down


@pytest.mark.parametrize(("peer_view", "stop_peer", "choice", "moves"), [
    (HEALTHY_MASTER, False, None, False),  # split brain: never take turns
    (HEALTHY_BACKUP, False, None, True),  # the peer holds routes it is not MASTER for
    (peer.PeerView(peer.UNREACHABLE), False, None, False),  # a partition: the transition moved once already
    (peer.PeerView(peer.UNREACHABLE), True, None, True),  # ... unless EC2 says the peer is not running
    (peer.PeerView(peer.HAPROXY_DOWN), False, "b", True),  # the chosen node failed: a fault wins
])
def test_repair_takes_routes_only_from_a_peer_that_should_not_have_them(
        world: World, make_agent: Callable[..., tuple[agent.Agent, Log]], peer_view: peer.PeerView,
        stop_peer: bool, choice: str | None, moves: bool) -> None:
    _routes_at(world, world.eni_b)
    if choice:
        _choose(world, world.eni_b)
    if stop_peer:
        world.client.stop_instances(InstanceIds=[world.instance_b])
    a, _log = make_agent(peer_view)
    _check_as_master(a)
    assert set(targets(world.client, world.tables).values()) == {world.eni_a if moves else world.eni_b}


def test_a_node_whose_haproxy_fails_gives_its_routes_to_a_healthy_peer(
        world: World, make_agent: Callable[..., tuple[agent.Agent, Log]]) -> None:
    a, log = make_agent(HEALTHY_BACKUP)  # routes start at node a
    a.on_health(False)
    wait_for(lambda: bool(log.of("route_hand_over")))
    assert set(targets(world.client, world.tables).values()) == {world.eni_b}


def test_a_node_whose_haproxy_fails_keeps_its_routes_when_the_peer_is_sick_too(
        world: World, make_agent: Callable[..., tuple[agent.Agent, Log]]) -> None:
    a, log = make_agent(SICK)
    a.on_health(False)
    time.sleep(0.3)
    assert not a.busy and not log.of("route_hand_over")
    assert set(targets(world.client, world.tables).values()) == {world.eni_a}


def test_a_stepped_down_agent_remembers_it_across_a_restart(world: World, tmp_path: Path) -> None:
    cfg = node_a(world, tmp_path)
    Path(cfg.paths.run_dir).mkdir(parents=True)
    Path(cfg.paths.priority_file).write_text(f"{agent.STEP_DOWN_OFFSET}\n")
    a = agent.Agent(cfg, world.client, world.eni_a)
    try:
        assert a.stepped_down and a.priority_value == f"{agent.STEP_DOWN_OFFSET}\n"
    finally:
        a.shutdown()


def test_a_missing_route_is_created_by_the_real_reconciler_the_agent_invokes(
        moto: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The node role may only replace routes.  The agent invokes the reconciler Lambda (here the
    real handler behind a loopback stand-in for Lambda's Invoke API), which creates the route."""
    import json as _json

    from haproxy_ha_runtime.__main__ import _reconciler_invoker
    from tests.support import lambda_stand_in

    world = make_world(client_for(moto), 2)
    world.client.delete_route(RouteTableId=world.tables[1], DestinationCidrBlock=VIP + "/32")
    env = {"VIP": VIP, "ROUTE_TABLE_IDS": ",".join(world.tables), "AWS_ENDPOINT_URL": moto,
           "NODES": _json.dumps([{"name": "a", "eni_id": world.eni_a}, {"name": "b", "eni_id": world.eni_b}])}
    proc, url = lambda_stand_in.start(env, free_port())
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", url)
        cfg = parse_config(doc(eni_id=world.eni_a, route_table_ids=world.tables, profile="fast",
                               peers=[{"name": "b", "ip": "192.0.2.20", "eni_id": world.eni_b}],
                               reconciler="haproxy-ha-reconcile", paths={"run_dir": str(tmp_path / "run")}))
        invoke = _reconciler_invoker(cfg)
        assert invoke is not None
        log = Log()
        a = agent.Agent(cfg, world.client, world.eni_a, log, invoke_reconciler=invoke)
        a.on_health(True)
        try:
            _check_as_master(a)
        finally:
            a.shutdown()
        assert log.of("route_missing")[0]["reconciler"] == "invoked"
        wait_for(lambda: targets(world.client, world.tables)[world.tables[1]] == world.eni_a)
        # The stand-in records an invocation once the handler has returned, a moment after its write.
        wait_for(lambda: bool(lambda_stand_in.invocations(url)))
        (call,) = lambda_stand_in.invocations(url)
        assert call["function"] == "haproxy-ha-reconcile"
        assert call["event"]["missing_route_tables"] == [world.tables[1]]
    finally:
        lambda_stand_in.stop(proc)


def test_a_failing_node_asks_its_peer_again_before_it_hands_over(world: World, tmp_path: Path) -> None:
    """Both HAProxies fail a moment apart: the poller still remembers a healthy peer, but a fresh
    probe does not, so the routes stay where they are rather than go to a dead peer."""
    log = Log()
    asked: list[str] = []

    def probe(p: Any) -> peer.PeerView:
        asked.append(p.name)
        return SICK

    a = agent.Agent(node_a(world, tmp_path), world.client, world.eni_a, log, probe=probe)
    try:
        a.on_health(True)
        a.peer_views["b"] = HEALTHY_BACKUP  # what the poller saw a moment ago
        a.on_health(False)
        wait_for(lambda: bool(asked) and not a.busy)
    finally:
        a.shutdown()
    assert asked == ["b"] and not log.of("route_hand_over")
    assert set(targets(world.client, world.tables).values()) == {world.eni_a}


# -- a node that knows it cannot serve never keeps the routes --------------------------------

UNHEARD = peer.PeerView(peer.UNREACHABLE)


@pytest.mark.parametrize(("peer_view", "running", "gives"), [
    (HEALTHY_BACKUP, None, True),  # the peer serves: it takes them
    (HEALTHY_MASTER, False, True),  # what it says of itself outweighs a stale EC2 view
    (SICK, True, False),  # neither serves: a move would only drop connections
    (peer.PeerView(peer.HAPROXY_DOWN), True, False),
    (UNHEARD, True, True),  # a partition: a running peer is better than a node known to be dead
    (UNHEARD, False, False),
    (UNHEARD, None, False),  # EC2 cannot say either
])
def test_an_unhealthy_node_gives_its_routes_to_a_peer_that_may_serve(
        peer_view: peer.PeerView, running: bool | None, gives: bool) -> None:
    assert ownership.unhealthy_gives_to_peer(peer_view, running) is gives


def _unhealthy_holder(world: World, tmp_path: Path, heard: peer.PeerView) -> tuple[agent.Agent, Log]:
    """Node a holds every route; its HAProxy has just failed, and the peer answers as `heard`."""
    log = Log()
    a = agent.Agent(node_a(world, tmp_path), world.client, world.eni_a, log, probe=lambda _p: heard)
    a.peer_views["b"] = heard
    a.on_health(True)
    a.on_health(False)
    wait_for(lambda: not a.busy)
    return a, log


def test_a_dead_node_hands_its_routes_to_a_running_peer_it_cannot_hear(world: World, tmp_path: Path) -> None:
    a, log = _unhealthy_holder(world, tmp_path, UNHEARD)
    a.shutdown()
    assert set(targets(world.client, world.tables).values()) == {world.eni_b}
    (hand_over,) = log.of("route_hand_over")
    assert hand_over["reason"] == ("own HAProxy is unhealthy, and the peer cannot be heard but its instance is "
                                   "running")


def test_a_dead_node_keeps_its_routes_when_the_peer_it_cannot_hear_is_stopped_and_tries_again_later(
        world: World, tmp_path: Path) -> None:
    world.client.stop_instances(InstanceIds=[world.instance_b])
    a, log = _unhealthy_holder(world, tmp_path, UNHEARD)
    try:
        assert set(targets(world.client, world.tables).values()) == {world.eni_a}
        assert not log.of("route_hand_over")
        # The peer's instance runs again; the next repair tick hands the routes over.
        world.client.start_instances(InstanceIds=[world.instance_b])
        a.maybe_hand_over_unhealthy()
        wait_for(lambda: not a.busy)
        assert set(targets(world.client, world.tables).values()) == {world.eni_b}
        # Nothing is here any more: later ticks make no call.
        assert a.routes_here is False
        a.maybe_hand_over_unhealthy()
        assert not a.busy
    finally:
        a.shutdown()
