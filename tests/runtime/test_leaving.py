"""What keeps a leaving node (its instance is being terminated) from taking the VIP back, and what
counts as a request in flight while it drains: the guards that mutation testing found untested.
EC2 is moto over HTTP."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from haproxy_ha_runtime import agent, lifecycle, peer
from haproxy_ha_runtime.config import NodeConfig, parse_config
from tests.conftest import World, client_for, make_world, targets
from tests.runtime.samples import doc
from tests.support.agent_tools import Log, wait_for

VIP = str(doc()["vip"])
FIT = peer.PeerView(peer.REACHED, vrrp="BACKUP", healthy=True, leaving=False)


@pytest.fixture
def world(moto: str) -> World:
    return make_world(client_for(moto), 3)


def _node_a(world: World, tmp: Path) -> NodeConfig:
    return parse_config(doc(eni_id=world.eni_a, route_table_ids=world.tables, profile="fast",
                            peers=[{"name": "b", "ip": "192.0.2.20", "eni_id": world.eni_b}],
                            paths={"run_dir": str(tmp / "run")}))


def _left(world: World, tmp: Path, log: Log) -> agent.Agent:
    """Node a, healthy, after it left: every route at b."""
    a = agent.Agent(_node_a(world, tmp), world.client, world.eni_a, log, probe=lambda _p: FIT)
    a.on_health(True)
    assert a.leave(time.monotonic() + 10) is None
    assert set(targets(world.client, world.tables).values()) == {world.eni_b}
    return a


def test_a_leaving_node_that_keepalived_makes_master_takes_no_route(world: World, tmp_path: Path) -> None:
    log = Log()
    a = _left(world, tmp_path, log)
    try:
        a.on_state(agent.MASTER)
        wait_for(lambda: not a.busy)
    finally:
        a.shutdown()
    assert not log.of("route_move")
    assert set(targets(world.client, world.tables).values()) == {world.eni_b}


def test_a_leaving_master_s_repair_tick_takes_no_route(world: World, tmp_path: Path) -> None:
    log = Log()
    a = _left(world, tmp_path, log)
    try:
        with a._lock:  # MASTER, as keepalived may still say while the node leaves
            a.state, a.generation = agent.MASTER, a.generation + 1
        a.check_routes(a.generation)
    finally:
        a.shutdown()
    assert set(targets(world.client, world.tables).values()) == {world.eni_b}
    assert not log.of("route_move") and not log.of("route_repair")


def test_a_leaving_node_yields_until_the_end_even_once_its_peer_is_master(world: World, tmp_path: Path) -> None:
    a = _left(world, tmp_path, Log())
    try:
        a.peer_views["b"] = peer.PeerView(peer.REACHED, vrrp="MASTER", healthy=True)
        a.on_state(agent.BACKUP)
        a.end_yield_if_done()
        assert a.track_value == "1\n" and a.priority_value == f"{agent.STEP_DOWN_OFFSET}\n"
    finally:
        a.shutdown()


def _stats_socket(path: Path, answer: str) -> threading.Thread:
    """A stand-in for HAProxy's stats socket that answers one command with `answer`."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def serve() -> None:
        with server:
            conn, _ = server.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(answer.encode())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(("scur", "qcur", "expected"), [(0, 3, 3), (2, 0, 2), (2, 3, 5)])
def test_a_request_queued_for_a_server_is_in_flight(tmp_path: Path, scur: int, qcur: int, expected: int) -> None:
    answer = (f"# pxname,svname,qcur,scur,\nweb,BACKEND,{qcur},{scur},\nweb,FRONTEND,,9,\n"
              "other,BACKEND,4,4,\n\n")
    thread = _stats_socket(tmp_path / "stats.sock", answer)
    assert lifecycle.requests_in_flight(str(tmp_path / "stats.sock"), ["web"]) == expected
    thread.join(5)

