"""Node lifecycle benchmark: a node replaced by its Auto Scaling group, and a crashed HAProxy that
comes back, in the network-namespace lab (real HAProxy, keepalived and agent), each run a failure
script from tests/lab/scenarios/ in a fresh lab.

    sudo .venv/bin/python bench/lifecycle.py --runs 3 --json bench/results/lifecycle.json

Scenarios, and what `duration_s` and `route_move_s` measure in each:
- replace-backup: the standby's instance replaced.  duration_s: from the group planning the
  termination to the new instance's signal to CloudFormation (hook, terminate, launch with the
  ENI, boot, ready).  route_move_s: n/a (no route moves).
- replace-active: the VIP holder's instance replaced, with a slow request in flight.  duration_s:
  as above.  route_move_s: from the group planning the termination until every route points at
  the peer (the hand-over).
- haproxy-comeback: HAProxy on the active node is killed, and started again a second later.
  duration_s: from its restart until node a is BACKUP again.  route_move_s: from the kill until
  every route points at the peer (the failover).
- config-live: a backend, then a listener, added to both nodes' documents in S3.  duration_s:
  from the new objects to both nodes serving the new backend (both status objects say applied;
  each node writes its status after HAProxy's reload), the agents polling every second.
  route_move_s: n/a.
failed_requests counts the client's failures over the whole script (a request every 10 ms).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.failover import fmt, machine, markdown_table  # noqa: E402
from tests.lab.lab import Lab, LabError, summarize  # noqa: E402
from tests.lab.runner import Runner, RunResult, StepResult, lab_options  # noqa: E402
from tests.lab.scenario import parse_file  # noqa: E402

SCENARIO_DIR = REPO / "tests" / "lab" / "scenarios"


def _step(run: RunResult, kind: str, text: str = "") -> StepResult:
    return next(s for s in run.steps if s.kind == kind and text in s.step)


def _first_move_after(run: RunResult, step: StepResult) -> float | None:
    moves = [m["at_s"] for m in run.route_moves if m["at_s"] >= step.start_s]
    return round(moves[0] - step.start_s, 4) if moves else None


def _replace(run: RunResult) -> tuple[float | None, float | None]:
    step = _step(run, "replace")
    return step.seen.get("total_s"), _first_move_after(run, step)


def _comeback(run: RunResult) -> tuple[float | None, float | None]:
    rejoined = _step(run, "expect", "vrrp a BACKUP").seen.get("after_s")
    return rejoined, _first_move_after(run, _step(run, "kill"))


def _config(run: RunResult) -> tuple[float | None, float | None]:
    first = _step(run, "config")
    applied = [s.seen.get("after_s") for s in run.steps
               if s.kind == "expect" and s.step.startswith("expect config applied") and s.start_s >= first.start_s]
    times = [t for t in applied[:2] if t is not None]  # both nodes, for the first change
    return (max(times) if len(times) == 2 else None), None


# Each scenario's measures: (duration_s, route_move_s) from its run.
SCENARIOS: dict[str, Callable[[RunResult], tuple[float | None, float | None]]] = {
    "replace-backup": _replace,
    "replace-active": _replace,
    "haproxy-comeback": _comeback,
    "config-live": _config,
}


def run_once(scenario: str, workdir: Path) -> tuple[RunResult, str]:
    script = parse_file(SCENARIO_DIR / f"{scenario}.txt")
    out = io.StringIO()
    with Lab(workdir, lab_options(script)) as lab:
        result = Runner(lab, script, out=out).run()
    return result, out.getvalue()


def table(rows: list[dict[str, Any]]) -> str:
    head = ["scenario", "runs", "duration_s", "route_move_s", "failed_requests"]
    body = [[r["scenario"], str(r["runs"]), fmt(r["duration_s"]), fmt(r["route_move_s"]),
             fmt(r["failed_requests"], "n")] for r in rows]
    return markdown_table(head, body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario (default 3)")
    parser.add_argument("--json", required=True, help="write the results here")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated (default: all)")
    parser.add_argument("--keep", help="keep each run's lab files under this folder")
    args = parser.parse_args(argv)
    scenarios = [s for s in args.scenarios.split(",") if s]
    bad = [s for s in scenarios if s not in SCENARIOS]
    if bad or not 1 <= args.runs <= 100:
        parser.error(f"unknown scenario {bad}, or --runs outside 1..100; scenarios: {', '.join(SCENARIOS)}")
    if os.geteuid() != 0:
        parser.error("the lab needs root (network namespaces): run it with sudo")

    keep = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="hhalab-lifecycle-"))
    rows: list[dict[str, Any]] = []
    started = time.time()
    for scenario in scenarios:
        durations: list[float] = []
        moves: list[float] = []
        failed: list[float] = []
        errors: list[str] = []
        for i in range(args.runs):
            workdir = keep / f"{scenario}-{i + 1}"
            try:
                result, transcript = run_once(scenario, workdir)
            except LabError as e:
                errors.append(str(e))
                print(f"{scenario:17} run {i + 1}: FAILED: {e}", flush=True)
                continue
            (workdir / "transcript.txt").write_text(transcript)
            if not result.ok:
                lines = ", ".join(str(s.line) or "end" for s in result.failures)
                errors.append(f"run {i + 1}: the script failed at line(s) {lines}; see {workdir / 'transcript.txt'}")
                print(f"{scenario:17} run {i + 1}: FAILED at line(s) {lines}", flush=True)
                continue
            duration, move = SCENARIOS[scenario](result)
            if duration is not None:
                durations.append(duration)
            if move is not None:
                moves.append(move)
            failed.append(float(result.failed_requests))
            print(f"{scenario:17} run {i + 1}: duration {duration}s, route move {move}s, "
                  f"failed requests {result.failed_requests} of {result.requests}", flush=True)
        rows.append({"scenario": scenario, "runs": len(failed), "duration_s": summarize(durations),
                     "route_move_s": summarize(moves), "failed_requests": summarize(failed),
                     "failed_runs": errors})
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    print()
    print(f"Node lifecycle in the lab (fast profile), {args.runs} run(s) each; median (min-max)")
    print(f"machine: {machine()}")
    print(table(rows))
    print(f"\nwrote {args.json}; lab files in {keep}; took {time.time() - started:.0f}s")
    return 1 if any(r["failed_runs"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
