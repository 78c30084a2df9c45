"""Failover scenarios in the lab: real HAProxy, keepalived and the agent in network namespaces,
moto as the EC2 API, and a VPC-router emulator that routes the client's traffic by moto's table.

Node a (priority 150) starts as the active node; node b (100) is the standby.  The `fast`
profile is used unless a scenario needs another.  The fixture checks, after every scenario, that
every VIP route points at a node whose HAProxy is healthy, that the tables agree, and that no
process or namespace is left.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable

import pytest

from . import topology
from .lab import Lab, LabError, wait_until

pytestmark = pytest.mark.lab

# Generous bounds: they catch a failover that did not happen or waited for a slow path (a
# repair tick, a retry back-off), without failing on a loaded CI machine.  bench/failover.py
# measures the real figures.
FAST_FAILOVER_BOUND_S = 2.0


def _quiet_for(lab: Lab, seconds: float, since: float) -> None:
    """Watch for `seconds`, then assert that no route moved after `since`."""
    time.sleep(seconds)
    moves = lab.route_changes(since)
    assert not moves, f"routes moved when they should have stayed: {moves}"


def test_haproxy_crash_on_active_node_moves_routes_to_standby(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab()
    result = lab.failover(lambda: lab.kill_haproxy("a"), survivor="b", scenario="haproxy-crash")
    print(result)
    assert result.fault_to_client_s is not None and result.fault_to_client_s < FAST_FAILOVER_BOUND_S
    assert result.fault_to_route_s is not None and result.fault_to_route_s < FAST_FAILOVER_BOUND_S
    assert result.route_moves == 1
    assert lab.vrrp_state("a") == "FAULT"
    assert lab.vrrp_state("b") == "MASTER"
    assert lab.route_owner() == "b"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_keepalived_stop_on_active_node_moves_routes_to_standby(make_lab: Callable[..., Lab],
                                                                sig: signal.Signals) -> None:
    lab = make_lab()
    result = lab.failover(lambda: lab.kill_keepalived("a", sig), survivor="b", scenario="keepalived-" + sig.name)
    print(result)
    assert result.fault_to_client_s is not None and result.fault_to_client_s < FAST_FAILOVER_BOUND_S
    assert result.route_moves == 1
    # The agent on a heard keepalived go away (FIFO closed), so it does not act as MASTER.
    assert lab.vrrp_state("a") == "UNKNOWN"
    assert lab.vrrp_state("b") == "MASTER"
    if sig == signal.SIGTERM:
        # A clean stop sends a priority-0 advert: b need not wait for the master-down timer.
        assert result.fault_to_master_s is not None and result.fault_to_master_s < 0.3


def test_link_down_on_active_node_moves_routes_to_standby(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab()
    result = lab.failover(lambda: lab.link_down("a"), survivor="b", scenario="link-down")
    print(result)
    assert result.fault_to_client_s is not None and result.fault_to_client_s < FAST_FAILOVER_BOUND_S
    assert result.route_moves == 1
    assert lab.route_owner() == "b"


@pytest.mark.parametrize("preempt", [False, True], ids=["nopreempt", "preempt"])
def test_failed_node_comes_back_without_flapping(make_lab: Callable[..., Lab], preempt: bool) -> None:
    lab = make_lab(preempt=preempt)
    lab.failover(lambda: lab.link_down("a"), survivor="b", scenario="link-down")
    back = time.time()
    lab.link_up("a")
    if not preempt:
        # a rejoins as BACKUP and stays there: moving the route back would drop connections.
        lab_wait(lambda: lab.vrrp_state("a") == "BACKUP", 5, "node a to rejoin as BACKUP")
        _quiet_for(lab, 2.0, back)
        assert lab.vrrp_state("b") == "MASTER"
        assert lab.route_owner() == "b"
    else:
        # a has the higher priority and may preempt: the route moves back, exactly once.
        lab.wait_master("a", timeout_s=5)
        lab.wait_routes("a", timeout_s=10)
        time.sleep(2.0)
        moves = lab.route_changes(back)
        assert len(moves) == 1, f"expected one move back to a, saw {moves}"
        assert lab.vrrp_state("b") == "BACKUP"
        assert lab.route_owner() == "a"


def test_partition_between_nodes_moves_at_most_once_and_converges_after_healing(
        make_lab: Callable[..., Lab]) -> None:
    lab = make_lab()
    start = time.time()
    run = lab.client(max_s=20)
    try:
        lab.partition()
        # b stops hearing a and becomes MASTER too: two masters, both healthy.
        lab.wait_master("b", timeout_s=5)
        time.sleep(3.0)
        during = lab.route_changes(start)
        assert len(during) <= 1, f"routes flapped during the partition: {during}"
        assert lab.vrrp_state("a") == "MASTER"
        assert lab.route_owner() in ("a", "b")
        healed = time.time()
        lab.heal()
        # The lower priority gives way; every table ends at the one master.
        lab_wait(lambda: {lab.vrrp_state("a"), lab.vrrp_state("b")} == {"MASTER", "BACKUP"}, 5,
                 "one master after healing")
        master = "a" if lab.vrrp_state("a") == "MASTER" else "b"
        lab.wait_routes(master, timeout_s=10)
        time.sleep(2.0)
        after = lab.route_changes(healed)
        assert len(after) <= 1, f"routes flapped after healing: {after}"
        assert lab.vrrp_state(master) == "MASTER"
        assert lab.route_owner() == master
    finally:
        records = run.stop()
    answered = {r.get("node") for r in records if not r.get("error")}
    assert answered <= {"a", "b"}


@pytest.mark.parametrize("mode", ["throttle", "5xx"])
def test_api_faults_during_failover_still_converge_within_bound(make_lab: Callable[..., Lab], mode: str) -> None:
    lab = make_lab(fault_proxy=True)
    n_faults = 2 * len(lab.state.route_table_ids) if lab.state else 6

    def inject() -> None:
        lab.fault_proxy("/_fault", {"mode": mode, "count": n_faults,
                                    "actions": ["ReplaceRoute", "CreateRoute", "DescribeRouteTables"]})
        lab.kill_haproxy("a")

    result = lab.failover(inject, survivor="b", scenario=f"haproxy-crash-{mode}", timeout_s=30)
    print(result)
    stats = lab.fault_proxy("/_stats")
    assert sum(stats["faults"].values()) == n_faults, stats
    deadline = 10.0  # the fast profile's takeover_deadline_s
    assert result.fault_to_route_s is not None and result.fault_to_route_s < deadline + FAST_FAILOVER_BOUND_S
    assert result.route_moves == 1
    move = result.agent_route_move
    assert move is not None and move["converged"], move


def test_many_route_tables_all_converge(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab(tables=50)
    assert lab.state is not None and len(lab.state.route_table_ids) == 50
    result = lab.failover(lambda: lab.kill_haproxy("a"), survivor="b", scenario="haproxy-crash-50-tables")
    print(result)
    lab.wait_routes("b", timeout_s=10)
    move = result.agent_route_move
    assert move is not None and move["converged"] and move["tables"] == 50, move
    assert result.fault_to_route_s is not None and result.fault_to_route_s < 5.0


def test_both_haproxy_down_no_flapping_then_route_follows_the_one_that_recovers(
        make_lab: Callable[..., Lab]) -> None:
    lab = make_lab()
    start = time.time()
    lab.kill_haproxy("b")
    lab_wait(lambda: lab.vrrp_state("b") == "FAULT", 5, "node b to enter FAULT")
    lab.kill_haproxy("a")
    lab_wait(lambda: lab.vrrp_state("a") == "FAULT", 5, "node a to enter FAULT")
    # Nobody is healthy: nobody may move the routes.
    _quiet_for(lab, 2.0, start)
    assert lab.route_owner() == "a"
    recovered = time.time()
    lab.start_haproxy("b")
    lab.wait_master("b", timeout_s=5)
    lab.wait_routes("b", timeout_s=10)
    time.sleep(1.0)
    moves = lab.route_changes(recovered)
    assert len(moves) == 1, f"expected one move to b, saw {moves}"
    assert lab.vrrp_state("a") == "FAULT"


def lab_wait(pred: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)


def test_agent_restarted_on_the_active_node_resumes_as_master_and_repairs(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab()
    since = time.time()
    lab.restart_agent("a")
    # keepalived does not report an unchanged state; the agent must recognise MASTER by itself.
    wait_until(lambda: any("already MASTER" in str(e.get("reason")) for e in lab.transitions("a", since)),
              10, "the restarted agent on node a to resume as MASTER")
    assert lab.vrrp_state("b") == "BACKUP"
    assert lab.state is not None
    lab.delete_vip_route(lab.state.route_table_ids[0])
    lab.wait_routes("a", timeout_s=10)  # the MASTER's repair tick puts the route back
    assert not lab.route_changes(since), "routes must not move away from a healthy master"


def test_leftovers_of_a_crashed_run_are_removed_by_name(make_lab: Callable[..., Lab]) -> None:
    # A crashed run leaves a namespace with a process in it; the next run must still start.
    topology.ip("netns", "add", topology.CLIENT)
    stray = subprocess.Popen(["ip", "netns", "exec", topology.CLIENT, "sleep", "120"])
    try:
        lab = make_lab()
        assert stray.wait(5) is not None, "the leftover process was not ended"
        assert lab.ask_vip() == "a"
    finally:
        if stray.poll() is None:
            stray.kill()
            stray.wait()
