"""The resident agent's decisions, against a moto server over HTTP (and a fault proxy)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from haproxy_ha_runtime import agent
from haproxy_ha_runtime.config import NodeConfig, parse_config
from tests.conftest import VIP, World, client_for, make_world, targets
from tests.runtime.samples import doc
from tests.support.agent_tools import FakeHealth, JsonLog, Log, wait_for
from tests.support.moto_server import free_port


def _cfg(world: World, tmp: Path, **changes: Any) -> NodeConfig:
    base: dict[str, Any] = {"eni_id": world.eni_a, "route_table_ids": world.tables, "profile": "fast",
                            "peers": [{"name": "b", "ip": "192.0.2.20", "eni_id": world.eni_b}],
                            "paths": {"run_dir": str(tmp / "run")}}
    d = doc(**{**base, **changes})
    return parse_config(d)


def test_master_takes_over_every_table(moto: str, tmp_path: Path) -> None:
    world = make_world(client_for(moto), 5)
    world.client.stop_instances(InstanceIds=[world.instance_a])
    log = Log()
    # Node b becomes MASTER; its ENI is the target.
    a = agent.Agent(_cfg(world, tmp_path), world.client, world.eni_b, log)
    before = time.monotonic()
    a.on_state(agent.MASTER)
    wait_for(lambda: bool(log.of("route_move")))
    seen_s = time.monotonic() - before
    a.shutdown()
    (move,) = log.of("route_move")
    assert move["converged"] and move["moved"] == 5 and move["tables"] == 5
    # The times it reports nest: the first write comes after the transition, the move is part of
    # the time since the transition, and all of it within what this test saw from outside (the
    # slack is the 4-digit rounding).  Order only: no figure depends on how fast the machine is.
    assert 0 < move["first_write_after_s"] <= move["since_transition_s"]
    assert 0 < move["duration_s"] <= move["since_transition_s"] <= seen_s + 0.001
    assert set(targets(world.client, world.tables).values()) == {world.eni_b}


def test_agent_stops_writing_the_moment_it_is_not_master(proxy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    world = make_world(client_for(proxy.url), 4)
    proxy.state.set_fault("5xx", 1_000_000, ["ReplaceRoute"])
    log = Log()
    # The agent's client makes one attempt per call, so that each 5xx reaches the agent at once.
    a = agent.Agent(_cfg(world, tmp_path), client_for(proxy.url, max_attempts=1), world.eni_b, log)
    a.on_state(agent.MASTER)
    wait_for(lambda: proxy.state.stats()["calls"].get("ReplaceRoute", 0) >= 8)  # it is retrying
    a.on_state(agent.FAULT)
    # The take-over returns once its writes in flight have landed (its pool joins them): from
    # then on, nothing may write.
    wait_for(lambda: not a.busy)
    settled = proxy.state.stats()["calls"]["ReplaceRoute"]
    time.sleep(1.5)  # longer than take_over's longest pause between two rounds of writes (1 s)
    assert proxy.state.stats()["calls"]["ReplaceRoute"] == settled
    a.shutdown()
    assert any(e["cancelled"] for e in log.of("route_move"))
    assert set(targets(world.client, world.tables).values()) == {world.eni_a}


def test_master_keeps_trying_past_the_takeover_deadline(proxy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    world = make_world(client_for(proxy.url), 3)
    proxy.state.set_fault("5xx", 1_000_000, ["ReplaceRoute"])
    log = Log()
    cfg = _cfg(world, tmp_path, timing={"takeover_deadline_s": 0.5})
    a = agent.Agent(cfg, client_for(proxy.url, max_attempts=1), world.eni_b, log)
    a.on_state(agent.MASTER)
    time.sleep(3 * cfg.timing.takeover_deadline_s)  # the API fails for longer than the deadline
    assert a.busy and set(targets(world.client, world.tables).values()) == {world.eni_a}
    proxy.state.set_fault("none", 0, [])
    wait_for(lambda: any(e["converged"] for e in log.of("route_move")))
    a.shutdown()
    assert set(targets(world.client, world.tables).values()) == {world.eni_b}


def test_repair_fixes_blackholed_and_dead_node_routes_and_asks_the_reconciler_for_missing_ones(proxy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: E501
    c = client_for(proxy.url)
    world = make_world(c, 4)
    dead = make_world(c, 0)  # another node's ENI whose instance we stop
    c.stop_instances(InstanceIds=[dead.instance_a])
    c.replace_route(RouteTableId=world.tables[0], DestinationCidrBlock=VIP + "/32", NetworkInterfaceId=dead.eni_a)
    c.delete_route(RouteTableId=world.tables[1], DestinationCidrBlock=VIP + "/32")
    c.replace_route(RouteTableId=world.tables[2], DestinationCidrBlock=VIP + "/32", NetworkInterfaceId=dead.eni_b)
    proxy.state.blackhole = {dead.eni_b}  # tables[2]: blackhole
    # tables[3] points at world.eni_a, a running node this agent cannot reach: leave it alone.
    log = Log()
    asked: list[list[str]] = []
    # This agent is node b; its peer is node a (world.eni_a).
    cfg = _cfg(world, tmp_path, node_name="b", eni_id=world.eni_b,
               peers=[{"name": "a", "ip": "192.0.2.20", "eni_id": world.eni_a}])
    a = agent.Agent(cfg, c, world.eni_b, log, invoke_reconciler=asked.append)
    before = targets(c, world.tables)
    try:
        # The repair tick does nothing while this node is BACKUP ...
        a.on_health(True)
        a.on_state(agent.BACKUP)
        a.maybe_repair()
        wait_for(lambda: not a.busy)
        # ... nor while it is MASTER but its own HAProxy is unhealthy (no peer is known to be
        # healthy, so it hands nothing over either).
        a.on_health(False)
        a.on_state(agent.MASTER, reason="keepalived was already MASTER when the agent started", resumed=True)
        wait_for(lambda: not a.busy)
        a.maybe_repair()
        wait_for(lambda: not a.busy)
        assert targets(c, world.tables) == before and asked == []
        assert not log.of("route_repair") and not log.of("route_move")
        # Healthy and MASTER: the next tick repairs.
        a.on_health(True)
        a.maybe_repair()
        wait_for(lambda: not a.busy)
    finally:
        a.shutdown()
    # The node role may only replace routes: the missing one is the reconciler's to create.
    assert targets(c, world.tables) == {world.tables[0]: world.eni_b, world.tables[1]: None,
                                        world.tables[2]: world.eni_b, world.tables[3]: world.eni_a}
    assert sorted(log.of("route_repair")[0]["tables"]) == sorted([world.tables[0], world.tables[2]])
    assert asked == [[world.tables[1]]]


def test_losing_an_election_hands_routes_to_the_peer(moto: str, tmp_path: Path) -> None:
    world = make_world(client_for(moto), 3)
    log = Log()
    # This agent is node b; routes point at node a (its peer in this config is world.eni_a).
    cfg = _cfg(world, tmp_path, peers=[{"name": "a", "ip": "192.0.2.20", "eni_id": world.eni_a}], node_name="b")
    b = agent.Agent(cfg, world.client, world.eni_b, log)
    b.on_state(agent.MASTER)
    wait_for(lambda: bool(log.of("route_move")))
    assert set(targets(world.client, world.tables).values()) == {world.eni_b}
    b.on_state(agent.BACKUP)  # the partition healed and node a won
    wait_for(lambda: bool(log.of("route_hand_over")))
    b.shutdown()
    assert set(targets(world.client, world.tables).values()) == {world.eni_a}


def test_fifo_lines_become_states(tmp_path: Path) -> None:
    assert agent.parse_fifo_line('INSTANCE "haproxy_ha" MASTER 150') == agent.MASTER
    assert agent.parse_fifo_line('INSTANCE "haproxy_ha" FAULT 0') == agent.FAULT
    assert agent.parse_fifo_line('GROUP "g" MASTER') is None
    assert agent.parse_fifo_line("garbage") is None
    reader = agent.FifoReader(str(tmp_path / "run" / "fifo"))
    reader.open()
    writer = os.open(reader.path, os.O_WRONLY)
    os.write(writer, b'INSTANCE "haproxy_ha" BACKUP 150\nINSTANCE "haproxy_ha" MAS')
    assert reader.read_states() == [agent.BACKUP]
    os.write(writer, b'TER 150\n')
    assert reader.read_states() == [agent.MASTER]
    assert reader.read_states() == []
    os.close(writer)
    assert reader.read_states() is None  # keepalived went away
    reader.close()


def test_health_verdict_needs_fall_and_rise_in_a_row() -> None:
    h = agent.HealthCheck(port=1, timeout_s=0.1, fall=2, rise=3)
    assert h.update(False) and not h.healthy  # the first probe decides at once
    assert [h.update(ok) for ok in (True, True, True)] == [False, False, True] and h.healthy
    assert [h.update(ok) for ok in (False, True, False, False)] == [False, False, False, True]
    assert not h.healthy


def test_first_probe_of_a_healthy_node_reports_healthy_at_once() -> None:
    # An agent restarted on a healthy active node must not write "unhealthy" first.
    h = agent.HealthCheck(port=1, timeout_s=0.1, fall=2, rise=3)
    assert h.update(True) and h.healthy


@pytest.fixture
def health() -> Iterator[FakeHealth]:
    h = FakeHealth()
    yield h
    h.stop()


def test_run_loop_feeds_the_track_file_and_acts_on_the_fifo(moto: str, tmp_path: Path, health: FakeHealth) -> None:
    world = make_world(client_for(moto), 3)
    cfg = _cfg(world, tmp_path, stats_port=health.port, agent_port=free_port())
    # The runtime's own log_event writes every event, as the journal would get it.
    log = JsonLog()
    stop = threading.Event()
    # The peer's /state is asked of the fake HAProxy on loopback (it answers 404), never of 192.0.2.20.
    thread = threading.Thread(target=agent.run, args=(cfg, world.client, world.eni_b, stop, log),
                              kwargs={"peer_address": lambda p: ("127.0.0.1", health.port)})
    thread.start()
    try:
        track = Path(cfg.paths.track_file)
        wait_for(lambda: track.exists() and track.read_text() == "0\n")
        track.write_text("1\n")  # what keepalived does at start (init_file ... overwrite)
        wait_for(lambda: track.read_text() == "0\n")
        health.ok = False
        wait_for(lambda: track.read_text() == "1\n")
        health.ok = True
        wait_for(lambda: track.read_text() == "0\n")
        writer = os.open(cfg.paths.notify_fifo, os.O_WRONLY)
        os.write(writer, b'INSTANCE "haproxy_ha" MASTER 150\n')
        wait_for(lambda: bool(log.of("route_move")))
        assert set(targets(world.client, world.tables).values()) == {world.eni_b}
        os.close(writer)
        wait_for(lambda: any(e["event"] == "transition" and e["new"] == agent.UNKNOWN for e in log.events))
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    # Every line log_event wrote is one JSON object with a time and an event name.
    lines = log.stream.getvalue().splitlines()
    records = [json.loads(line) for line in lines]
    assert all(isinstance(r, dict) and isinstance(r["ts"], float) and r["event"] for r in records)
    events = [r["event"] for r in records]
    assert events[0] == "agent_start" and events[-1] == "agent_stop"
    assert {"health", "transition", "route_move"} <= set(events)
    (move,) = log.of("route_move")
    assert move["converged"] is True and move["tables"] == 3 and move["to_eni"] == world.eni_b


def test_fifo_held_by_another_process_sees_a_writer_come_and_go(tmp_path: Path) -> None:
    reader = agent.FifoReader(str(tmp_path / "run" / "fifo"))
    reader.open()
    try:
        assert not agent.fifo_held_by_another_process(reader.path)  # our own read end does not count
        writer = subprocess.Popen(["sh", "-c", f'exec 3>"{reader.path}"; exec sleep 30'])
        try:
            wait_for(lambda: agent.fifo_held_by_another_process(reader.path), timeout=5)
        finally:
            writer.kill()
            writer.wait(5)
        assert not agent.fifo_held_by_another_process(reader.path)
    finally:
        reader.close()
