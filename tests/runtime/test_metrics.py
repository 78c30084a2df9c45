"""The node's metric records: every one a valid EMF document (tests/support/emf_spec.py) under the
names of metrics.py; when the agent writes its state; a take-over counted as a failover or as a
planned move; route repairs; the metrics file of a running agent, and its periodic EC2 call."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from haproxy_ha_runtime import agent, emf, metrics, peer, routes, telemetry
from haproxy_ha_runtime.config import SCHEMA_VERSION, NodeConfig, parse_config
from haproxy_ha_runtime.files import LineFile
from haproxy_ha_runtime.haproxy_stats import BackendSample, ListenerSample
from haproxy_ha_runtime.version import __version__
from tests.conftest import VIP, World, client_for, make_world, targets
from tests.runtime.samples import doc
from tests.support import emf_spec
from tests.support.agent_tools import FakeHealth, Log, wait_for
from tests.support.moto_server import free_port

PAIR = "prod-pair"


class Records:
    """Stands in for the metrics file: keeps each line, and checks it against the specification."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, text: str) -> None:
        assert emf_spec.problems(text) == [], text
        self.lines.append(text)

    def of(self, record: str) -> list[dict[str, Any]]:
        return [d for d in map(json.loads, self.lines) if d.get("record") == record]


# -- records ------------------------------------------------------------------------------------

def test_a_record_names_every_metric_and_dimension_as_a_member_of_its_root() -> None:
    rec = emf.record({metrics.PAIR: PAIR, metrics.NODE: "b"},
                     [emf.Metric(metrics.FAILOVERS, 1, emf.COUNT),
                      emf.Metric(metrics.FAILOVER_TIME, 412.5, emf.MILLISECONDS)],
                     {"record": "failover", "reason": "the peer does not answer"}, timestamp_ms=1_764_748_800_000)
    line = emf.line(rec)
    assert emf_spec.problems(line) == []
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["_aws"]["Timestamp"] == 1_764_748_800_000
    assert doc["_aws"]["CloudWatchMetrics"] == [{
        "Namespace": "HaproxyHa", "Dimensions": [["Pair", "Node"]],
        "Metrics": [{"Name": "Failovers", "Unit": "Count"}, {"Name": "FailoverTakeOverTime", "Unit": "Milliseconds"}]}]
    assert emf_spec.metrics_of(doc) == {"Failovers": 1, "FailoverTakeOverTime": 412.5}
    assert emf_spec.dimensions_of(doc) == [{"Pair": PAIR, "Node": "b"}]


def test_a_record_has_the_time_it_was_made_by_default() -> None:
    before = int(time.time() * 1000)
    rec = emf.record({metrics.PAIR: PAIR}, [emf.Metric(metrics.ROUTES_MOVED, 0, emf.COUNT)])
    assert before <= rec["_aws"]["Timestamp"] <= time.time() * 1000


@pytest.mark.parametrize(("dimensions", "values", "properties", "expected"), [
    ({"Pair": "p"}, [], None, "0 metrics"),
    ({"Pair": "p"}, [emf.Metric("Requests", float("nan"))], None, "not a finite number: ['Requests']"),
    ({"Pair": "p"}, [emf.Metric("Requests", True)], None, "not a finite number"),
    ({"Pair": ""}, [emf.Metric("Requests", 1)], None, "dimension without a value: ['Pair']"),
    ({"Pair": "p"}, [emf.Metric("Requests", 1), emf.Metric("Requests", 2)], None, "names used twice: ['Requests']"),
    ({"Pair": "p"}, [emf.Metric("Pair", 1)], None, "names used twice: ['Pair']"),
    ({"Pair": "p"}, [emf.Metric("Requests", 1)], {"Requests": "x"}, "names used twice: ['Requests']"),
    ({"Pair": "p"}, [emf.Metric(f"M{i}", i) for i in range(101)], None, "101 metrics"),
])
def test_fails_when_a_record_would_be_refused(dimensions: dict[str, str], values: list[emf.Metric],
                                              properties: dict[str, Any] | None, expected: str) -> None:
    with pytest.raises(ValueError, match="not a valid EMF record") as info:
        emf.record(dimensions, values, properties)
    assert expected in str(info.value)


def test_the_checker_refuses_what_the_specification_refuses() -> None:
    # The checker itself: a test that trusts it must see it fail.
    good = json.loads(emf.line(emf.record({"Pair": "p"}, [emf.Metric("Requests", 3, emf.COUNT)])))
    assert emf_spec.problems(json.dumps(good)) == []
    for broken, expected in [
        ({k: v for k, v in good.items() if k != "Requests"}, "metric 'Requests' is not a member of the root"),
        ({**good, "Pair": 7}, "dimension 'Pair' has no string value"),
        ({**good, "Requests": "3"}, "metric 'Requests' has no numeric value"),
        ({**good, "_aws": {**good["_aws"], "Timestamp": "now"}}, "_aws.Timestamp"),
        ({k: v for k, v in good.items() if k != "_aws"}, "no _aws object"),
    ]:
        assert any(expected in p for p in emf_spec.problems(json.dumps(broken))), broken
    bad_unit = json.loads(json.dumps(good))
    bad_unit["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Unit"] = "Requests"
    assert emf_spec.problems(json.dumps(bad_unit)) == ["metric 'Requests': unit 'Requests' is not one of CloudWatch's"]


def test_line_file_rotates_to_one_old_file(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "metrics.jsonl"
    f = LineFile(str(path), max_bytes=100)
    for i in range(12):
        f.write(json.dumps({"n": i, "pad": "x" * 20}))
    old = [json.loads(x)["n"] for x in Path(str(path) + ".1").read_text().splitlines()]
    new = [json.loads(x)["n"] for x in path.read_text().splitlines()]
    assert old + new == list(range(old[0], 12)) and new and old
    assert path.stat().st_size <= 100 and not Path(str(path) + ".2").exists()


# -- the state records ----------------------------------------------------------------------------

def test_state_is_written_when_it_changes_and_on_every_periodic_tick() -> None:
    out = Records()
    t = telemetry.Telemetry(PAIR, "a", out)
    assert t.state("UNKNOWN", None, False, None)
    assert not t.state("UNKNOWN", None, False, None)  # nothing changed
    assert t.state("BACKUP", True, False, True)
    assert t.state("BACKUP", True, False, True, force=True)  # the periodic record
    assert t.state("MASTER", True, True, True)
    first, backup, periodic, master = (emf_spec.metrics_of(d) for d in out.of("state"))
    # What is not known yet is left out, not reported as 0.
    assert first == {"VrrpMaster": 0, "VrrpBackup": 0, "VrrpFault": 0, "Active": 0}
    assert backup == periodic == {"VrrpMaster": 0, "VrrpBackup": 1, "VrrpFault": 0, "Active": 0,
                                  "HaproxyHealthy": 1, "Ec2ApiReachable": 1}
    assert master["VrrpMaster"] == 1 and master["Active"] == 1 and master["VrrpBackup"] == 0
    assert all(emf_spec.dimensions_of(d) == [{"Pair": PAIR, "Node": "a"}] for d in out.of("state"))


def test_the_state_record_carries_the_release_and_schema_as_properties_not_dimensions() -> None:
    out = Records()
    telemetry.Telemetry(PAIR, "a", out).state("BACKUP", True, False, True)
    (record,) = out.of("state")
    assert (record["runtime"], record["schema"]) == (__version__, SCHEMA_VERSION)
    # A dimension more would make each state metric a new one, which the alarms do not watch.
    assert emf_spec.dimensions_of(record) == [{"Pair": PAIR, "Node": "a"}]
    assert not {"runtime", "schema"} & set(emf_spec.metrics_of(record))


def test_haproxy_samples_become_one_record_per_listener_and_backend() -> None:
    out = Records()
    t = telemetry.Telemetry(PAIR, "a", out)
    t.haproxy([ListenerSample("web", 120, 3, 7), ListenerSample("pg", None, None, 2)],
              [BackendSample("web", 12, 1, 2), BackendSample("pg", None, 1, 1)])
    listeners, backends = out.of("listener"), out.of("backend")
    assert [(emf_spec.dimensions_of(d)[0]["Listener"], emf_spec.metrics_of(d)) for d in listeners] == [
        ("web", {"CurrentSessions": 7, "Requests": 120, "Http5xx": 3}),
        ("pg", {"CurrentSessions": 2}),  # first sample: no baseline for the counters yet
    ]
    assert [(emf_spec.dimensions_of(d)[0], emf_spec.metrics_of(d)) for d in backends] == [
        ({"Pair": PAIR, "Node": "a", "Backend": "web"}, {"ServersUp": 1, "Servers": 2, "ResponseTime": 12}),
        ({"Pair": PAIR, "Node": "a", "Backend": "pg"}, {"ServersUp": 1, "Servers": 1}),
    ]


def test_a_metrics_file_that_fails_is_logged_once_and_never_stops_the_agent() -> None:
    log = Log()

    def full_disk(_text: str) -> None:
        raise OSError(28, "No space left on device")

    t = telemetry.Telemetry(PAIR, "a", full_disk, log)
    t.state("BACKUP", True, False, True)
    t.take_over(telemetry.FAILOVER, 100.0, "x")
    assert [e["error"] for e in log.of("metrics_write_failed")] == ["[Errno 28] No space left on device"]


# -- failover or planned move ------------------------------------------------------------------

REACHED_HEALTHY = {"reach": peer.REACHED, "healthy": True}


@pytest.mark.parametrize(("view", "routes_were_here", "expected"), [
    # Faults: the peer is gone, its HAProxy failed, or its keepalived is gone or in FAULT.
    (peer.PeerView(peer.UNREACHABLE), False, (telemetry.FAILOVER, "the peer does not answer (unreachable)")),
    # The failing node handed the routes over itself before this one became MASTER: still a fault.
    (peer.PeerView(peer.HAPROXY_DOWN), True, (telemetry.FAILOVER, "the peer does not answer (haproxy-down)")),
    (peer.PeerView(peer.AGENT_DOWN), None, (telemetry.FAILOVER, "the peer does not answer (agent-down)")),
    (peer.PeerView(peer.REACHED, vrrp="FAULT", healthy=False), True,
     (telemetry.FAILOVER, "the peer's HAProxy is unhealthy")),
    (peer.PeerView(peer.REACHED, vrrp="UNKNOWN", healthy=True), False,
     (telemetry.FAILOVER, "the peer's keepalived is UNKNOWN")),
    (peer.PeerView(peer.REACHED, vrrp="FAULT", healthy=True, stepped_down=False), False,
     (telemetry.FAILOVER, "the peer's keepalived is FAULT")),
    # Planned: the peer gave the VIP away, whoever moved the routes.
    (peer.PeerView(peer.REACHED, vrrp="FAULT", healthy=True, stepped_down=True), True,
     (telemetry.PLANNED_MOVE, "the peer stepped down (an operator's move)")),
    (peer.PeerView(peer.REACHED, vrrp="FAULT", healthy=True, stepped_down=True, leaving=True), False,
     (telemetry.PLANNED_MOVE, "the peer is leaving (its instance is being terminated)")),
    (peer.PeerView(peer.REACHED, vrrp="BACKUP", healthy=True), False,
     (telemetry.PLANNED_MOVE, "the healthy peer lost an election (preemption)")),
    (peer.PeerView(peer.REACHED, vrrp="MASTER", healthy=True), False,
     (telemetry.PLANNED_MOVE, "the healthy peer lost an election (preemption)")),
    # The first election, with the routes already here (or not read yet): no move at all.
    (peer.PeerView(peer.REACHED, vrrp="BACKUP", healthy=True), True, None),
    (peer.PeerView(peer.REACHED, vrrp="BACKUP", healthy=True), None, None),
])
def test_take_over_kind(view: peer.PeerView, routes_were_here: bool | None, expected: tuple[str, str] | None) -> None:
    assert telemetry.classify_take_over(view, routes_were_here) == expected


class PeerState:
    """The peer's agent: serves /state on loopback, as the real one does behind its HAProxy."""

    def __init__(self, report: dict[str, Any]) -> None:
        self.report = report
        self.server = peer.StateServer(0, lambda: self.report).start()


@pytest.fixture
def world(moto: str) -> World:
    return make_world(client_for(moto), 3)


def _node_b(world: World, tmp: Path) -> NodeConfig:
    """This agent is node b (world.eni_b); its peer is node a, which holds the routes."""
    return parse_config(doc(node_name="b", eni_id=world.eni_b, route_table_ids=world.tables, profile="fast",
                            peers=[{"name": "a", "ip": "192.0.2.30", "eni_id": world.eni_a}],
                            pair_name=PAIR, paths={"run_dir": str(tmp / "run")}))


@pytest.fixture
def node_b(world: World, tmp_path: Path) -> Iterator[tuple[agent.Agent, Records, Log, PeerState]]:
    out, log = Records(), Log()
    peer_a = PeerState({"node": "a", "vrrp": "MASTER", "healthy": True, "stepped_down": False, "leaving": False})
    b = agent.Agent(_node_b(world, tmp_path), world.client, world.eni_b, log,
                    probe=lambda _p: peer.probe_peer("127.0.0.1", peer_a.server.port, 1.0),
                    metrics=telemetry.Telemetry(PAIR, "b", out, log))
    b.healthy = True
    try:
        yield b, out, log, peer_a
    finally:
        b.shutdown()
        peer_a.server.stop()


def test_a_take_over_from_a_peer_that_failed_is_a_failover_with_its_time(node_b: Any, world: World) -> None:
    b, out, log, peer_a = node_b
    peer_a.server.stop()  # node a is gone: its /state refuses
    b.on_state(agent.MASTER)
    wait_for(lambda: bool(out.of(telemetry.FAILOVER)))
    record = out.of(telemetry.FAILOVER)[0]
    values = emf_spec.metrics_of(record)
    move = log.of("route_move")[0]
    assert values["Failovers"] == 1
    # From keepalived's MASTER notice until every route was verified here: at least the move itself.
    assert move["duration_s"] * 1000 <= values["FailoverTakeOverTime"] < 5000
    assert record["reason"] == "the peer does not answer (haproxy-down)" and record["tables"] == 3
    assert emf_spec.dimensions_of(record) == [{"Pair": PAIR, "Node": "b"}]
    assert not out.of(telemetry.PLANNED_MOVE)
    assert log.of("failover")[0]["took_ms"] == values["FailoverTakeOverTime"]
    # The state records follow: MASTER, then active once the routes are verified here.
    states = [emf_spec.metrics_of(d) for d in out.of("state")]
    assert states[0]["VrrpMaster"] == 1 and states[0]["Active"] == 0
    assert states[-1]["VrrpMaster"] == 1 and states[-1]["Active"] == 1
    assert set(targets(world.client, world.tables).values()) == {world.eni_b}


@pytest.mark.parametrize(("report", "reason"), [
    ({"vrrp": "FAULT", "healthy": True, "stepped_down": True, "leaving": False},
     "the peer stepped down (an operator's move)"),
    ({"vrrp": "FAULT", "healthy": True, "stepped_down": True, "leaving": True},
     "the peer is leaving (its instance is being terminated)"),
])
def test_a_take_over_from_a_peer_that_stepped_down_is_a_planned_move(node_b: Any, world: World,
                                                                     report: dict[str, Any], reason: str) -> None:
    b, out, log, peer_a = node_b
    # The peer stepped down: it pointed the routes here first, then left MASTER.
    for t in world.tables:
        world.client.replace_route(RouteTableId=t, DestinationCidrBlock=VIP + "/32", NetworkInterfaceId=world.eni_b)
    peer_a.report.update(report)
    b.on_state(agent.MASTER)
    wait_for(lambda: bool(out.of(telemetry.PLANNED_MOVE)))
    record = out.of(telemetry.PLANNED_MOVE)[0]
    assert emf_spec.metrics_of(record)["PlannedMoves"] == 1 and emf_spec.metrics_of(record)["PlannedMoveTime"] >= 0
    assert record["reason"] == reason
    time.sleep(0.2)
    assert not out.of(telemetry.FAILOVER) and not log.of("failover")


def _ec2_check(b: agent.Agent, world: World) -> None:
    """What the periodic EC2 call tells the agent: where the routes are."""
    b.on_ec2_check(routes.describe_vip_routes(world.client, VIP, world.tables))


def test_the_first_election_with_the_routes_already_here_counts_nothing(node_b: Any, world: World) -> None:
    b, out, log, peer_a = node_b
    for t in world.tables:
        world.client.replace_route(RouteTableId=t, DestinationCidrBlock=VIP + "/32", NetworkInterfaceId=world.eni_b)
    _ec2_check(b, world)
    peer_a.report.update(vrrp="BACKUP")
    b.on_state(agent.MASTER)
    wait_for(lambda: bool(log.of("route_move")))
    time.sleep(0.3)  # the peer has been asked by now
    assert not out.of(telemetry.FAILOVER) and not out.of(telemetry.PLANNED_MOVE)
    assert emf_spec.metrics_of(out.of("state")[-1])["Active"] == 1


def test_preemption_by_a_node_that_read_the_routes_at_its_peer_is_a_planned_move(node_b: Any, world: World) -> None:
    b, out, _log, peer_a = node_b
    _ec2_check(b, world)  # the routes are at node a, which is healthy
    peer_a.report.update(vrrp="BACKUP")  # it lost the election to this node
    b.on_state(agent.MASTER)
    wait_for(lambda: bool(out.of(telemetry.PLANNED_MOVE)))
    assert out.of(telemetry.PLANNED_MOVE)[0]["reason"] == "the healthy peer lost an election (preemption)"
    assert out.of(telemetry.PLANNED_MOVE)[0]["routes_were_here"] is False
    assert not out.of(telemetry.FAILOVER)


def test_a_repair_counts_the_routes_it_rewrote_with_its_time(node_b: Any, world: World) -> None:
    b, out, _log, _peer_a = node_b
    dead = make_world(world.client, 0)  # a third ENI whose instance stops: a route there is wrong
    world.client.stop_instances(InstanceIds=[dead.instance_a])
    for t in world.tables:
        world.client.replace_route(RouteTableId=t, DestinationCidrBlock=VIP + "/32", NetworkInterfaceId=world.eni_b)
    world.client.replace_route(RouteTableId=world.tables[1], DestinationCidrBlock=VIP + "/32",
                               NetworkInterfaceId=dead.eni_a)
    with b._lock:
        b.state, b.generation = agent.MASTER, 1
    b.check_routes(1)
    repair = out.of("route_repair")
    assert [emf_spec.metrics_of(d)["RouteRepairs"] for d in repair] == [1]
    assert 0 < emf_spec.metrics_of(repair[0])["RouteRepairTime"] < 5000
    states = [emf_spec.metrics_of(d) for d in out.of("state")]
    # It read one route that was not its own (not active), then repaired it (active).
    assert [s["Active"] for s in states] == [0, 1]
    assert not out.of(telemetry.FAILOVER)


# -- a running agent's metrics file ----------------------------------------------------------------

@pytest.fixture
def health() -> Iterator[FakeHealth]:
    h = FakeHealth()
    yield h
    h.stop()


def _run(cfg: NodeConfig, client: Any, eni: str, log: Log, interval_s: float) -> tuple[threading.Thread,
                                                                                        threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(cfg, client, eni, stop, log),
                              kwargs={"peer_address": lambda p: ("127.0.0.1", cfg.stats_port),
                                      "metrics_interval_s": interval_s})
    thread.start()
    return thread, stop


def _file_records(path: str) -> list[dict[str, Any]]:
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []
    assert all(emf_spec.problems(line) == [] for line in lines)
    return [json.loads(line) for line in lines]


def test_a_running_agent_writes_its_state_periodically_with_the_ec2_api_reachable(
        world: World, tmp_path: Path, health: FakeHealth) -> None:
    cfg = parse_config(doc(node_name="b", eni_id=world.eni_b, route_table_ids=world.tables, profile="fast",
                           peers=[{"name": "a", "ip": "192.0.2.30", "eni_id": world.eni_a}], pair_name=PAIR,
                           stats_port=health.port, agent_port=free_port(),
                           paths={"run_dir": str(tmp_path / "run"), "log_dir": str(tmp_path / "logs")}))
    # No keepalived here: the agent is not MASTER, its HAProxy (the stand-in) answers, EC2 does.
    settled = {"VrrpMaster": 0, "VrrpBackup": 0, "VrrpFault": 0, "Active": 0, "HaproxyHealthy": 1,
               "Ec2ApiReachable": 1}
    thread, stop = _run(cfg, world.client, world.eni_b, Log(), 0.3)
    try:
        def repeated() -> list[dict[str, Any]]:
            return [d for d in _file_records(cfg.paths.metrics_log)
                    if d["record"] == "state" and emf_spec.metrics_of(d) == settled]
        wait_for(lambda: len(repeated()) >= 3)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    # A change writes a record at once (the first of these may be one); the state unchanged is
    # written again each interval, so three of them span at least one 0.3 s interval.
    times = [d["_aws"]["Timestamp"] for d in repeated()]
    assert times == sorted(times) and times[-1] - times[0] >= 299  # ms; the timer waits, never runs early


def test_a_node_whose_credentials_or_endpoint_fail_reports_the_ec2_api_unreachable(
        world: World, tmp_path: Path, health: FakeHealth) -> None:
    cfg = parse_config(doc(node_name="b", eni_id=world.eni_b, route_table_ids=world.tables, profile="fast",
                           peers=[{"name": "a", "ip": "192.0.2.30", "eni_id": world.eni_a}], pair_name=PAIR,
                           stats_port=health.port, agent_port=free_port(),
                           paths={"run_dir": str(tmp_path / "run"), "log_dir": str(tmp_path / "logs")}))
    # An endpoint where nothing listens, on loopback.
    dead = client_for(f"http://127.0.0.1:{free_port()}", max_attempts=1)
    log = Log()
    thread, stop = _run(cfg, dead, world.eni_b, log, 0.3)
    try:
        wait_for(lambda: any(emf_spec.metrics_of(d).get("Ec2ApiReachable") == 0
                             for d in _file_records(cfg.paths.metrics_log)))
    finally:
        stop.set()
        thread.join(10)
    assert [e["reachable"] for e in log.of("ec2_api")][:1] == [False]


def test_no_pair_name_no_metrics_file(world: World, tmp_path: Path, health: FakeHealth) -> None:
    cfg = parse_config(doc(node_name="b", eni_id=world.eni_b, route_table_ids=world.tables, profile="fast",
                           peers=[{"name": "a", "ip": "192.0.2.30", "eni_id": world.eni_a}],
                           stats_port=health.port, agent_port=free_port(),
                           paths={"run_dir": str(tmp_path / "run"), "log_dir": str(tmp_path / "logs")}))
    log = Log()
    thread, stop = _run(cfg, world.client, world.eni_b, log, 0.1)
    try:
        wait_for(lambda: bool(log.of("health")))
        time.sleep(0.5)
    finally:
        stop.set()
        thread.join(10)
    assert not Path(cfg.paths.metrics_log).exists() and not log.of("ec2_api")


def test_without_detailed_metrics_only_backend_servers_are_written() -> None:
    out = Records()
    t = telemetry.Telemetry(PAIR, "a", out)
    t.haproxy([ListenerSample("web", 120, 3, 7)], [BackendSample("web", 12, 1, 2)], detailed=False)
    assert not out.of("listener")
    assert [emf_spec.metrics_of(d) for d in out.of("backend")] == [{"ServersUp": 1, "Servers": 2}]
