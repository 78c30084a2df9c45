"""The node agent's promises that mutation testing found untested (docs/testing.md, "Mutation score"):
the FIFO reader, the health probe, what the agent logs and reports, route work cancelled by a new
state, the hand-over's deadline, and the run loop's threads, against moto over HTTP."""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import pytest

from haproxy_ha_runtime import agent, lifecycle, live_config, peer, telemetry
from haproxy_ha_runtime.config import NodeConfig, Peer, parse_config
from haproxy_ha_runtime.tags import OPERATOR_CHOICE_TAG
from haproxy_ha_runtime.tls import TlsStore
from tests.conftest import VIP, World, client_for, make_world, targets
from tests.runtime.samples import doc
from tests.runtime.test_metrics import Records
from tests.support.agent_tools import FakeHealth, Log, wait_for
from tests.support.aws_stand_in import AwsStandIn
from tests.support.moto_server import free_port

PAIR = "hha-test"
HEALTHY_BACKUP = peer.PeerView(peer.REACHED, vrrp="BACKUP", healthy=True)


def _node(world: World, tmp: Path, name: str = "a", **changes: Any) -> NodeConfig:
    """Node a holds world.eni_a and its peer b world.eni_b; node b the other way round."""
    me, other = (world.eni_a, world.eni_b) if name == "a" else (world.eni_b, world.eni_a)
    base: dict[str, Any] = {"node_name": name, "eni_id": me, "route_table_ids": world.tables, "profile": "fast",
                            "peers": [{"name": "b" if name == "a" else "a", "ip": "192.0.2.20", "eni_id": other}],
                            "paths": {"run_dir": str(tmp / "run"), "log_dir": str(tmp / "logs")}}
    return parse_config(doc(**{**base, **changes}))


def _routes_at(world: World, eni: str) -> None:
    for t in world.tables:
        world.client.replace_route(RouteTableId=t, DestinationCidrBlock=VIP + "/32", NetworkInterfaceId=eni)


def _open_writer(path: str) -> int:
    """keepalived's end of the FIFO.  Non-blocking: with no reader (an agent that died) it fails
    at once with ENXIO rather than hang."""
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    os.set_blocking(fd, True)
    return fd


def _writer_when_read(path: str) -> int:
    """Wait until the agent holds the FIFO open for reading, then open keepalived's end."""
    got: list[int] = []

    def attempt() -> bool:
        try:
            got.append(_open_writer(path))
        except OSError as e:
            if e.errno not in (errno.ENXIO, errno.ENOENT):
                raise
        return bool(got)

    wait_for(attempt, timeout=5)
    return got[0]


@pytest.fixture
def world(moto: str) -> World:
    return make_world(client_for(moto), 3)


@pytest.fixture
def health() -> Iterator[FakeHealth]:
    h = FakeHealth()
    yield h
    h.stop()


# -- health probe, FIFO, marker: units against the real kernel and a loopback server ------------

def test_the_health_probe_fails_when_haproxy_does_not_answer_or_answers_503(health: FakeHealth) -> None:
    assert agent.HealthCheck(health.port, 0.5, 1, 1).probe() is True
    health.ok = False
    assert agent.HealthCheck(health.port, 0.5, 1, 1).probe() is False
    assert agent.HealthCheck(free_port(), 0.5, 1, 1).probe() is False  # nothing listens: refused


def test_the_fifo_is_made_for_its_owner_only_and_opened_again_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "run" / "notify.fifo"
    reader = agent.FifoReader(str(path))
    old_umask = os.umask(0o022)  # the usual umask: a FIFO made without a mode would be 0644
    try:
        fd = reader.open()
    finally:
        os.umask(old_umask)
    # Only the agent's own user (keepalived runs as root, as the agent does) may write states into it.
    assert stat.S_ISFIFO(path.stat().st_mode) and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert fd == reader.fd and fd is not None
    writer = _open_writer(str(path))  # a reader holds it: keepalived's open succeeds
    os.write(writer, b'INSTANCE "haproxy_ha" MASTER 150\n')
    assert reader.read_states() == [agent.MASTER]
    os.close(writer)
    assert reader.read_states() is None
    reader.close()
    # keepalived restarted: the FIFO that is already there is opened again, not refused.
    reader.open()
    writer = _open_writer(str(path))
    os.write(writer, b'INSTANCE "haproxy_ha" BACKUP 150\n')
    assert reader.read_states() == [agent.BACKUP]
    os.close(writer)
    reader.close()


def test_a_regular_file_where_the_fifo_belongs_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notify.fifo"
    path.write_text("not a fifo\n")
    with pytest.raises(RuntimeError, match="exists and is not a FIFO"):
        agent.FifoReader(str(path)).open()


def test_a_line_that_is_not_utf8_does_not_stop_the_fifo_reader(tmp_path: Path) -> None:
    reader = agent.FifoReader(str(tmp_path / "fifo"))
    reader.open()
    writer = _open_writer(reader.path)
    try:
        os.write(writer, b'INSTANCE "\xff\xfe" FAULT 0\nINSTANCE "haproxy_ha" MASTER 150\n')
        assert reader.read_states() == [agent.FAULT, agent.MASTER]
    finally:
        os.close(writer)
        reader.close()


def test_the_marker_is_found_on_lo_by_its_address_without_the_prefix() -> None:
    assert agent.marker_on_lo("127.0.0.1/8") is True  # lo always has it
    assert agent.marker_on_lo("127.0.0.254/32") is False


def _poll_until(run: Callable[[threading.Event], None], until: Callable[[], bool]) -> None:
    """Run one of the agent's pollers (`run(stop)`) in a thread until `until` holds (at most 5 s),
    then stop it and wait for it to end."""
    stop = threading.Event()
    thread = threading.Thread(target=run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(until, timeout=5)
    finally:
        stop.set()
        thread.join(5)


def test_the_peer_poller_keeps_asking_every_interval() -> None:
    asked: list[float] = []
    holder = types.SimpleNamespace(cfg=types.SimpleNamespace(peers=[Peer(name="b", ip="192.0.2.20")]),
                                   peer_views={})

    def probe(_p: Any) -> peer.PeerView:
        asked.append(time.monotonic())
        return HEALTHY_BACKUP

    _poll_until(lambda stop: agent._poll_peers(holder, probe, 0.02, stop), lambda: len(asked) >= 3)
    assert holder.peer_views == {"b": HEALTHY_BACKUP}


# -- what the agent logs and reports --------------------------------------------------------------

def test_a_transition_is_logged_with_its_node_and_reason(world: World, tmp_path: Path) -> None:
    log = Log()
    a = agent.Agent(_node(world, tmp_path), world.client, world.eni_a, log)
    try:
        a.on_state(agent.BACKUP)  # a FIFO line
        a.on_state(agent.FAULT, reason="keepalived closed the notify FIFO")
    finally:
        a.shutdown()
    assert [(e["node"], e["old"], e["new"], e["reason"]) for e in log.of("transition")] == [
        ("a", agent.UNKNOWN, agent.BACKUP, "notify_fifo"),
        ("a", agent.BACKUP, agent.FAULT, "keepalived closed the notify FIFO")]


def test_the_periodic_state_record_is_written_even_when_nothing_changed(world: World, tmp_path: Path) -> None:
    out, log = Records(), Log()
    a = agent.Agent(_node(world, tmp_path, pair_name=PAIR), world.client, world.eni_a, log,
                    metrics=telemetry.Telemetry(PAIR, "a", out, log))
    try:
        a.report_state()
        a.report_state()  # nothing changed: no record
        assert len(out.of("state")) == 1
        a.report_state(force=True)  # the periodic one
        assert len(out.of("state")) == 2
        # An EC2 call that fails is logged once, with the node it failed on.
        a.on_ec2_check(None)
        a.on_ec2_check(None)
    finally:
        a.shutdown()
    assert log.of("ec2_api") == [{"event": "ec2_api", "node": "a", "reachable": False}]


def test_a_leaving_node_says_so_at_its_state(world: World, tmp_path: Path) -> None:
    fit = peer.PeerView(peer.REACHED, vrrp="BACKUP", healthy=True, leaving=False)
    a = agent.Agent(_node(world, tmp_path), world.client, world.eni_a, Log(), probe=lambda _p: fit)
    server = peer.StateServer(0, a.state_report).start()
    try:
        assert peer.probe_peer("127.0.0.1", server.port, 2.0).leaving is False
        assert a.leave(time.monotonic() + 10) is None
        view = peer.probe_peer("127.0.0.1", server.port, 2.0)
    finally:
        server.stop()
        a.shutdown()
    # The peer counts the take-over that follows as a planned move, not a failover.
    assert view.leaving is True and view.stepped_down is True
    assert set(targets(world.client, world.tables).values()) == {world.eni_b}


def _resume_as_master(a: agent.Agent, peer_view: peer.PeerView | None = None) -> None:
    """A restarted agent whose keepalived is already MASTER: HAProxy healthy, the peer as
    `peer_view` (if given), then resumed; returns once its route check is done."""
    a.on_health(True)
    if peer_view is not None:
        a.peer_views["b"] = peer_view
    a.on_state(agent.MASTER, reason="resumed", resumed=True)
    wait_for(lambda: not a.busy)


def _route_at_a_dead_eni(world: World, table: str) -> None:
    """Point `table`'s VIP route at the ENI of an instance that is stopped: a route the MASTER repairs."""
    dead = make_world(world.client, 0)
    world.client.stop_instances(InstanceIds=[dead.instance_a])
    world.client.replace_route(RouteTableId=table, DestinationCidrBlock=VIP + "/32", NetworkInterfaceId=dead.eni_a)


def _missing_route(world: World) -> None:
    world.client.delete_route(RouteTableId=world.tables[1], DestinationCidrBlock=VIP + "/32")


def test_a_missing_route_with_no_reconciler_is_logged_for_the_operator(world: World, tmp_path: Path) -> None:
    _missing_route(world)
    log = Log()
    a = agent.Agent(_node(world, tmp_path), world.client, world.eni_a, log)
    try:
        _resume_as_master(a)
    finally:
        a.shutdown()
    assert log.of("route_missing") == [
        {"event": "route_missing", "node": "a", "tables": [world.tables[1]], "reconciler": None}]


def test_a_reconciler_that_fails_is_logged_as_failed_with_its_error(world: World, tmp_path: Path) -> None:
    _missing_route(world)
    log = Log()

    def invoke(_tables: list[str]) -> None:
        raise RuntimeError("lambda:InvokeFunction denied")

    a = agent.Agent(_node(world, tmp_path), world.client, world.eni_a, log, invoke_reconciler=invoke)
    try:
        _resume_as_master(a)
    finally:
        a.shutdown()
    assert log.of("route_missing") == [
        {"event": "route_missing", "node": "a", "tables": [world.tables[1]], "reconciler": "failed",
         "error": "lambda:InvokeFunction denied"}]


def test_a_repair_logs_and_counts_what_it_knew_of_the_peer_and_its_time_in_ms(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The take-over is the real one against moto; only the elapsed time it reports is set (2.5 s),
    so that RouteRepairTime, in ms, off by a factor of 0.1 % shows past the record's 0.1 ms rounding."""
    real_take_over = agent.routes.take_over

    def take_over(*args: Any, **kwargs: Any) -> Any:
        return dataclasses.replace(real_take_over(*args, **kwargs), elapsed_s=2.5)

    monkeypatch.setattr(agent.routes, "take_over", take_over)
    _route_at_a_dead_eni(world, world.tables[0])
    out, log = Records(), Log()
    a = agent.Agent(_node(world, tmp_path, pair_name=PAIR), world.client, world.eni_a, log,
                    metrics=telemetry.Telemetry(PAIR, "a", out, log))
    try:
        _resume_as_master(a, HEALTHY_BACKUP)
    finally:
        a.shutdown()
    (repair,) = log.of("route_repair")
    assert repair["tables"] == [world.tables[0]] and repair["converged"] is True
    assert (repair["peer"], repair["peer_vrrp"], repair["peer_running"]) == (peer.REACHED, "BACKUP", True)
    assert repair["duration_s"] == 2.5
    (record,) = out.of("route_repair")
    assert (record["peer_reach"], record["peer_vrrp"], record["peer_running"]) == (peer.REACHED, "BACKUP", True)
    assert (record["RouteRepairTime"], record["RouteRepairs"]) == (2500.0, 1)
    assert set(targets(world.client, world.tables).values()) == {world.eni_a}


def test_a_step_down_yields_for_three_adverts_and_two_seconds_at_most(world: World, tmp_path: Path) -> None:
    """keepalived is told "unhealthy" until the peer says it is MASTER, or, if it never does,
    until three adverts and 2 s have passed: the bound is read from the agent, bracketed by the
    clock before and after the check that stepped down (a second apart would need a check that
    took a second)."""
    world.client.create_tags(Resources=[world.eni_a, world.eni_b],
                             Tags=[{"Key": OPERATOR_CHOICE_TAG, "Value": world.eni_b}])
    _routes_at(world, world.eni_b)  # what `haproxy-ha failover --to b` did
    log = Log()
    a = agent.Agent(_node(world, tmp_path), world.client, world.eni_a, log)
    try:
        before = time.monotonic()
        _resume_as_master(a, HEALTHY_BACKUP)
        after = time.monotonic()
        assert log.of("step_down") and a.track_value == "1\n"
        fallback = 3 * a.cfg.timing.advert_int_s + 2.0
        assert before + fallback <= a.yield_until <= after + fallback
    finally:
        a.shutdown()


def test_a_node_whose_peer_has_no_eni_still_repairs(world: World, tmp_path: Path) -> None:
    """A peer without an ENI (the document allows it): no peer to ask about, but a route at a dead
    ENI is still this MASTER's to take."""
    _route_at_a_dead_eni(world, world.tables[2])
    log = Log()
    cfg = _node(world, tmp_path, peers=[{"name": "b", "ip": "192.0.2.20"}])
    a = agent.Agent(cfg, world.client, world.eni_a, log)
    try:
        _resume_as_master(a)
    finally:
        a.shutdown()
    assert [e["tables"] for e in log.of("route_repair")] == [[world.tables[2]]]
    assert not log.of("repair_check_failed")
    assert set(targets(world.client, world.tables).values()) == {world.eni_a}


# -- route work and the state generation ----------------------------------------------------------

def test_a_take_over_is_cancelled_by_a_new_state_even_when_master_comes_back(proxy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """MASTER, FAULT, MASTER again while the first take-over retries: the first one was started
    for a MASTER that ended, so it stops (cancelled); the second one moves the routes."""
    world = make_world(client_for(proxy.url), 2)
    proxy.state.set_fault("5xx", 1_000_000, ["ReplaceRoute"])
    log = Log()
    b = agent.Agent(_node(world, tmp_path, "b"), client_for(proxy.url, max_attempts=1), world.eni_b, log)
    try:
        b.on_state(agent.MASTER)
        wait_for(lambda: proxy.state.stats()["calls"].get("ReplaceRoute", 0) >= 4)  # retrying
        b.on_state(agent.FAULT)
        b.on_state(agent.MASTER)
        wait_for(lambda: bool(log.of("route_move")))
        proxy.state.set_fault("none", 0, [])
        wait_for(lambda: len(log.of("route_move")) == 2)
    finally:
        b.shutdown()
    first, second = log.of("route_move")
    assert first["cancelled"] is True and first["converged"] is False
    assert first["attempts"] >= 2  # how often the slowest table was written
    assert second["converged"] is True and second["attempts"] >= 1
    assert set(targets(world.client, world.tables).values()) == {world.eni_b}


def test_a_hand_over_keeps_trying_past_the_take_over_deadline_and_gives_up_at_the_hooks(  # type: ignore[no-untyped-def]
        proxy, tmp_path: Path) -> None:
    """A terminating node keeps handing its routes over while the API fails, but not beyond the
    hook's own deadline: the group is waiting."""
    world = make_world(client_for(proxy.url), 2)
    proxy.state.set_fault("5xx", 1_000_000, ["ReplaceRoute"])
    log = Log()
    cfg = _node(world, tmp_path, timing={"takeover_deadline_s": 0.5})
    fit = peer.PeerView(peer.REACHED, vrrp="BACKUP", healthy=True, leaving=False)
    a = agent.Agent(cfg, client_for(proxy.url, max_attempts=1), world.eni_a, log, probe=lambda _p: fit)
    try:
        why = a.leave(time.monotonic() + 2.0)
    finally:
        proxy.state.set_fault("none", 0, [])
        a.shutdown()
    hand_overs = log.of("route_hand_over")
    assert len(hand_overs) >= 2  # once per take-over deadline (0.5 s), again and again until the hook's
    assert all(h["converged"] is False and h["reason"] == "instance terminating" for h in hand_overs)
    assert why is not None and why.startswith("2 route table(s) not yet at peer b: ")
    assert set(targets(world.client, world.tables).values()) == {world.eni_a}


def test_a_node_whose_haproxy_fails_says_why_it_hands_over(world: World, tmp_path: Path) -> None:
    log = Log()
    a = agent.Agent(_node(world, tmp_path), world.client, world.eni_a, log)
    try:
        a.on_health(True)
        a.peer_views["b"] = HEALTHY_BACKUP
        a.on_health(False)
        wait_for(lambda: not a.busy)
    finally:
        a.shutdown()
    assert [e["reason"] for e in log.of("route_hand_over")] == ["own HAProxy is unhealthy"]
    assert set(targets(world.client, world.tables).values()) == {world.eni_b}


def _failover_node_b(world: World, tmp: Path, probe: Any) -> tuple[agent.Agent, Records]:
    out, log = Records(), Log()
    b = agent.Agent(_node(world, tmp, "b", pair_name=PAIR), world.client, world.eni_b, log, probe=probe,
                    metrics=telemetry.Telemetry(PAIR, "b", out, log))
    b.healthy = True
    return b, out


def test_a_take_over_is_counted_from_a_fresh_answer_of_the_right_peer(world: World, tmp_path: Path) -> None:
    asked: list[str] = []

    def probe(p: Any) -> peer.PeerView:
        asked.append(p.name)
        return {"a": peer.PeerView(peer.HAPROXY_DOWN)}[p.name]

    b, out = _failover_node_b(world, tmp_path, probe)
    b.peer_views["a"] = HEALTHY_BACKUP  # stale: the fresh answer is what counts
    try:
        b.on_state(agent.MASTER)
        wait_for(lambda: bool(out.of(telemetry.FAILOVER)))
    finally:
        b.shutdown()
    assert asked == ["a"]
    assert out.of(telemetry.FAILOVER)[0]["reason"] == "the peer does not answer (haproxy-down)"


def test_without_a_probe_a_take_over_is_counted_from_what_the_poller_heard(world: World, tmp_path: Path) -> None:
    b, out = _failover_node_b(world, tmp_path, None)
    b.peer_views["a"] = peer.PeerView(peer.HAPROXY_DOWN)
    try:
        b.on_state(agent.MASTER)
        wait_for(lambda: bool(out.of(telemetry.FAILOVER)))
    finally:
        b.shutdown()
    assert out.of(telemetry.FAILOVER)[0]["reason"] == "the peer does not answer (haproxy-down)"


# -- the pollers: config, TLS, lifecycle, replacement ---------------------------------------------

class _Live:
    """Stands in for live_config.LiveConfig, the poller's source (the poller is the unit here)."""

    def __init__(self, cfg: NodeConfig, outcomes: list[Any]) -> None:
        self.cfg = cfg
        self.outcomes = outcomes
        self.tls_polls = 0

    def poll_once(self) -> live_config.Outcome | None:
        if not self.outcomes:
            return None
        o = self.outcomes.pop(0)
        if isinstance(o, Exception):
            raise o
        return o  # type: ignore[no-any-return]

    def poll_tls(self) -> tuple[bool, str | None]:
        self.tls_polls += 1
        if self.tls_polls == 1:
            raise RuntimeError("secretsmanager: connection refused")
        return False, None


def test_the_config_poller_logs_each_version_applies_it_and_restarts_when_it_must(world: World, tmp_path: Path) -> None:
    cfg = dataclasses.replace(_node(world, tmp_path), config_poll_s=0.01)
    new_cfg = dataclasses.replace(cfg, drain_timeout_s=7.0)
    live = _Live(cfg, [RuntimeError("s3: timed out"),
                       live_config.Outcome("v2", live_config.APPLIED, haproxy_reloaded=True, cfg=new_cfg),
                       live_config.Outcome("v3", live_config.APPLIED, reason="priority changed",
                                           keepalived_reloaded=True, restart_agent=True, cfg=new_cfg)])
    holder = types.SimpleNamespace(cfg=cfg, restart_requested=False)
    log, stop = Log(), threading.Event()
    thread = threading.Thread(target=agent._watch_config, args=(holder, live, stop, log), daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive() and stop.is_set() and holder.restart_requested is True
    assert holder.cfg is new_cfg  # v2 applied; v3 is for the restarted agent
    assert log.events == [
        {"event": "config_poll_failed", "node": "a", "error": "s3: timed out"},
        {"event": "config_" + live_config.APPLIED, "node": "a", "version": "v2", "reason": None,
         "haproxy_reloaded": True, "keepalived_reloaded": False, "restart_agent": False},
        {"event": "config_" + live_config.APPLIED, "node": "a", "version": "v3", "reason": "priority changed",
         "haproxy_reloaded": False, "keepalived_reloaded": True, "restart_agent": True}]


def test_the_tls_poller_logs_a_failed_poll_and_keeps_polling(world: World, tmp_path: Path) -> None:
    cfg = dataclasses.replace(_node(world, tmp_path), tls_poll_s=0.01)
    live = _Live(cfg, [])
    log = Log()
    _poll_until(lambda stop: agent._watch_tls(types.SimpleNamespace(cfg=cfg), TlsStore(None, cfg.paths), live,
                                              "unused.json", stop, log),
                lambda: live.tls_polls >= 3)
    assert log.of("tls_poll_failed") == [
        {"event": "tls_poll_failed", "node": "a", "error": "secretsmanager: connection refused"}]


def test_without_live_config_the_tls_poller_refreshes_its_own_store(world: World, tmp_path: Path) -> None:
    cfg = dataclasses.replace(_node(world, tmp_path), tls_poll_s=0.01)
    refreshed: list[str] = []

    class Store(TlsStore):
        def refresh(self, c: NodeConfig) -> bool:
            refreshed.append(c.node_name)
            return super().refresh(c)

    log = Log()
    _poll_until(lambda stop: agent._watch_tls(types.SimpleNamespace(cfg=cfg), Store(None, cfg.paths), None,
                                              str(tmp_path / "node.json"), stop, log),
                lambda: len(refreshed) >= 3)
    assert not log.events  # no TLS listener: nothing changed, nothing failed


def _autoscaling(aws: AwsStandIn) -> Any:
    return boto3.session.Session().client("autoscaling", region_name="us-east-1", endpoint_url=aws.url,
                                          config=botocore.config.Config(retries={"total_max_attempts": 1}))


def test_the_termination_hook_logs_each_step_with_the_node(world: World, tmp_path: Path) -> None:
    aws = AwsStandIn()
    aws.fail.add("CompleteLifecycleAction")
    cfg = _node(world, tmp_path, auto_scaling_group="hha-node-a", lifecycle_hook="hand-over", drain_timeout_s=1)
    answers: list[Any] = [RuntimeError("IMDS: timed out"), None, "Terminated"]

    def state() -> str | None:
        a = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(a, Exception):
            raise a
        return a  # type: ignore[no-any-return]

    events = Log()

    def log(event: str, **fields: Any) -> None:
        events(event, **fields)
        if event == "lifecycle_complete_failed":
            aws.fail.clear()  # the next try succeeds

    fit = peer.PeerView(peer.REACHED, vrrp="BACKUP", healthy=True, leaving=False)
    a = agent.Agent(cfg, world.client, world.eni_a, events, probe=lambda _p: fit)
    platform = lifecycle.Platform(instance_id=lambda: "i-0aaaaaaaaaaaaaaa1", lifecycle_state=state,
                                  client=lambda _service: _autoscaling(aws))
    stop = threading.Event()
    thread = threading.Thread(target=agent._watch_lifecycle, args=(a, platform, 0.01, stop, log), daemon=True)
    try:
        thread.start()
        thread.join(10)
        assert not thread.is_alive()
    finally:
        stop.set()
        a.shutdown()
        aws.stop()
    steps = [e for e in events.events if e["event"] in (
        "lifecycle_check_failed", "terminating", "drained", "lifecycle_complete_failed", "lifecycle_complete")]
    assert [(e["event"], e["node"]) for e in steps] == [
        ("lifecycle_check_failed", "a"), ("terminating", "a"), ("drained", "a"),
        ("lifecycle_complete_failed", "a"), ("lifecycle_complete", "a")]
    assert steps[0]["error"] == "IMDS: timed out" and steps[1]["drain_timeout_s"] == 1
    assert "CompleteLifecycleAction" in steps[3]["error"]  # the AWS error, as botocore words it
    assert len(aws.of("CompleteLifecycleAction")) == 2


def test_a_failed_replacement_request_is_logged_with_its_error(world: World, tmp_path: Path) -> None:
    aws = AwsStandIn()
    aws.fail.add("SetInstanceHealth")
    log = Log()
    try:
        agent._ask_replacement(_node(world, tmp_path, auto_scaling_group="hha-node-a"), lifecycle.Platform(
            instance_id=lambda: "i-0aaaaaaaaaaaaaaa1", lifecycle_state=lambda: None,
            client=lambda _service: _autoscaling(aws)), log)
    finally:
        aws.stop()
    (failed,) = log.of("replacement_ask_failed")
    assert failed["node"] == "a" and "SetInstanceHealth" in failed["error"]
    assert not log.of("replacement_asked")


# -- the run loop ---------------------------------------------------------------------------------

def _cpu_s(thread: threading.Thread) -> float:
    """CPU seconds the thread has used so far (Linux: /proc/self/task/<tid>/stat)."""
    fields = Path(f"/proc/self/task/{thread.native_id}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Platform:
    """The group's plan for this instance, as IMDS would give it; records each question."""

    def __init__(self) -> None:
        self.asked = 0

    def lifecycle_state(self) -> str:
        self.asked += 1
        return "Terminated"


def test_the_run_loop_reads_the_fifo_again_after_keepalived_restarts(world: World, tmp_path: Path,
                                                                    health: FakeHealth) -> None:
    cfg = _node(world, tmp_path, "b", stats_port=health.port, agent_port=free_port())
    cfg = dataclasses.replace(cfg, tls_poll_s=0.01, config_poll_s=0.01)
    log, stop = Log(), threading.Event()
    live = _Live(cfg, [])
    thread = threading.Thread(target=agent.run, args=(cfg, world.client, world.eni_b, stop, log), kwargs={
        "peer_address": lambda p: ("127.0.0.1", free_port()), "live": live,
        "tls": TlsStore(None, cfg.paths), "document_path": str(tmp_path / "node.json")})
    thread.start()
    try:
        writer = _writer_when_read(cfg.paths.notify_fifo)
        os.write(writer, b'INSTANCE "haproxy_ha" BACKUP 100\n')
        wait_for(lambda: any(e["new"] == agent.BACKUP for e in log.of("transition")))
        os.close(writer)  # keepalived stops ...
        wait_for(lambda: any(e["new"] == agent.UNKNOWN for e in log.of("transition")))
        writer = _writer_when_read(cfg.paths.notify_fifo)  # ... and starts again
        os.write(writer, b'INSTANCE "haproxy_ha" MASTER 100\n')
        wait_for(lambda: bool(log.of("route_move")))
        os.close(writer)
        wait_for(lambda: live.tls_polls >= 2)  # the TLS poller runs beside the loop
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert [(e["new"], e["reason"]) for e in log.of("transition")][:3] == [
        (agent.BACKUP, "notify_fifo"), (agent.UNKNOWN, "keepalived closed the notify FIFO"),
        (agent.MASTER, "notify_fifo")]
    assert set(targets(world.client, world.tables).values()) == {world.eni_b}
    (start,) = log.of("agent_start")
    assert start["health_interval_s"] == cfg.timing.health_interval_s and start["stepped_down"] is False


def test_the_run_loop_hands_over_to_the_peer_it_hears_at_its_address(world: World, tmp_path: Path,
                                                                    health: FakeHealth) -> None:
    """The peer poller asks the peer's /state where `peer_address` says; a node whose HAProxy fails
    gives the routes to the healthy peer it heard.  A platform without a lifecycle hook is never
    asked about termination."""
    report = {"node": "b", "vrrp": "BACKUP", "healthy": True, "stepped_down": False, "leaving": False}
    peer_b = peer.StateServer(0, lambda: report).start()
    cfg = _node(world, tmp_path, stats_port=health.port, agent_port=free_port(), auto_scaling_group="hha-node-a",
                timing={"repair_interval_s": 0.2})
    platform = _Platform()
    log, stop = Log(), threading.Event()
    thread = threading.Thread(target=agent.run, args=(cfg, world.client, world.eni_a, stop, log), kwargs={
        "peer_address": lambda p: ("127.0.0.1", peer_b.port),
        "platform": lifecycle.Platform(instance_id=lambda: "i-0aaaaaaaaaaaaaaa1",
                                       lifecycle_state=platform.lifecycle_state,
                                       client=lambda _s: pytest.fail("no AWS call expected"))})
    thread.start()
    try:
        wait_for(lambda: bool(log.of("health")))
        time.sleep(0.3)  # the poller (every 0.2 s) has heard the peer
        health.ok = False
        wait_for(lambda: bool(log.of("route_hand_over")))
        # Three lifecycle intervals (0.2 s each) in which a wrongly started watcher would have asked.
        time.sleep(0.6)
    finally:
        stop.set()
        thread.join(10)
        peer_b.stop()
    assert not thread.is_alive()
    assert [e["reason"] for e in log.of("route_hand_over")][:1] == ["own HAProxy is unhealthy"]
    assert set(targets(world.client, world.tables).values()) == {world.eni_b}
    assert platform.asked == 0 and not log.of("terminating")


def test_a_restarted_agent_on_a_master_checks_then_repairs_once_per_interval(
        proxy, tmp_path: Path, health: FakeHealth, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """keepalived was MASTER when the agent started: it checks who should own the routes (a
    repair), rather than take them as on a transition; and it checks once per repair interval."""
    world = make_world(client_for(proxy.url), 2)
    _routes_at(world, world.eni_b)  # the peer holds them; its HAProxy is down (its port refuses)
    monkeypatch.setattr(agent, "marker_on_lo", lambda _cidr: True)
    monkeypatch.setattr(agent, "fifo_held_by_another_process", lambda _path: True)
    interval = 0.4
    cfg = _node(world, tmp_path, stats_port=health.port, agent_port=free_port(),
                timing={"repair_interval_s": interval})
    log, stop = Log(), threading.Event()
    thread = threading.Thread(target=agent.run, args=(cfg, client_for(proxy.url), world.eni_a, stop, log),
                              kwargs={"peer_address": lambda p: ("127.0.0.1", free_port())})
    thread.start()
    try:
        wait_for(lambda: bool(log.of("route_repair") or log.of("route_move")))
        before = proxy.state.stats()["calls"].get("DescribeRouteTables", 0)
        cpu_before, t0 = _cpu_s(thread), time.monotonic()
        time.sleep(1.0)
        cpu = _cpu_s(thread) - cpu_before
        during = proxy.state.stats()["calls"].get("DescribeRouteTables", 0) - before
        window = time.monotonic() - t0
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert not log.of("route_move") and log.of("route_repair")[0]["tables"] == world.tables
    assert log.of("transition")[0]["reason"] == "keepalived was already MASTER when the agent started"
    # One repair check (one read) per interval: at most one more than the window holds intervals.
    assert during <= window / interval + 1, (during, window)
    # Between ticks the loop waits in select: 20 health probes a second cost it a few ms each.  A
    # loop whose next repair is always due never waits: it spins, taking all the CPU it gets (at
    # least half a second in this second, even on a loaded 2-core machine).
    assert cpu < 0.3, cpu
    assert set(targets(world.client, world.tables).values()) == {world.eni_a}
