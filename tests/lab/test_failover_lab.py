"""Failover scenarios in the lab: real HAProxy, keepalived and the agent in network namespaces,
moto as the EC2 API, and a VPC-router emulator that routes the client's traffic by moto's table.

Each scenario is a failure script in tests/lab/scenarios/ (the same files `scripts/demo --script`
runs), so the tests and the scripts cannot drift apart.  Node a (priority 150) starts as the
active node; node b (100) is the standby.  After every script the runner checks that every VIP
route points at one node whose HAProxy is healthy, that the tables agree and that the client
reaches that node, and that every answer came from a lab node; the fixture checks convergence
again and that no process or namespace is left.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from . import topology
from .lab import Lab
from .runner import Runner, lab_options, write_json
from .scenario import parse_file

pytestmark = pytest.mark.lab

SCENARIOS = sorted((Path(__file__).parent / "scenarios").glob("*.txt"))


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario(make_lab: Callable[..., Lab], path: Path, tmp_path: Path) -> None:
    scenario = parse_file(path)
    lab = make_lab(**lab_options(scenario).__dict__)
    result = Runner(lab, scenario, out=sys.stdout).run()
    write_json(result, tmp_path / "result.json")
    assert result.steps and all(s.ran for s in result.steps)
    # Answers came, and only from lab nodes: a subset check alone also passes when nobody answered.
    assert result.answered and set(result.answered) <= set(topology.NODES), result.answered
    assert result.ok, "\n".join(f"{path.name}:{s.line}: {s.step}: {s.error or s.seen.get('text')}"
                                for s in result.failures)


# Stays pytest code: what it checks happens before a lab exists (a crashed run's leftovers), and
# a script always starts from a freshly built lab.
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
