"""Failover benchmark: time from a fault on the active node until the standby owns every route
and answers the client, in the network-namespace lab (real HAProxy, keepalived and agent).

    sudo .venv/bin/python bench/failover.py --runs 5 --json bench/results/failover.json

Scenarios: haproxy-crash (SIGKILL HAProxy on the active node), keepalived-crash (SIGKILL its
keepalived), link-down (its link goes down).  Each run builds a fresh lab.  The fault time is
taken just before the fault is injected; fault_to_route_s ends when the VPC-router emulator
first reads every table pointing at the survivor from the API (it polls every --poll-s);
fault_to_client_s ends when the first request answered by the survivor completes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.lab.lab import Failover, Lab, LabError, LabOptions, summarize  # noqa: E402

SCENARIOS: dict[str, Callable[[Lab], None]] = {
    "haproxy-crash": lambda lab: lab.kill_haproxy("a"),
    "keepalived-crash": lambda lab: lab.kill_keepalived("a", signal.SIGKILL),
    "link-down": lambda lab: lab.link_down("a"),
}
PROFILES = ("default", "fast")


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{platform.system()} {platform.release()}, {os.cpu_count()} CPUs ({cpu})"


def run_once(scenario: str, profile: str, poll_s: float, workdir: Path) -> Failover:
    with Lab(workdir, LabOptions(profile=profile, poll_s=poll_s)) as lab:
        return lab.failover(lambda: SCENARIOS[scenario](lab), survivor="b", scenario=scenario)


def fmt(stats: dict[str, Any], unit: str = "s") -> str:
    """A summary (median, min, max) as one table cell: seconds to the millisecond, or a count."""
    if stats["median"] is None:
        return "n/a"
    if unit == "s":
        return f"{stats['median']:.3f} ({stats['min']:.3f}-{stats['max']:.3f})"
    return f"{stats['median']:g} ({stats['min']:g}-{stats['max']:g})"


def markdown_table(head: list[str], body: list[list[str]]) -> str:
    """A Markdown table, as docs/lab.md shows the benchmarks."""
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(b) + " |" for b in body]
    return "\n".join(lines)


def table(rows: list[dict[str, Any]]) -> str:
    head = ["scenario", "profile", "runs", "fault_to_route_s", "fault_to_client_s", "failed_requests"]
    body = [[r["scenario"], r["profile"], str(r["runs"]), fmt(r["fault_to_route_s"]),
             fmt(r["fault_to_client_s"]), fmt(r["failed_requests"], "n")] for r in rows]
    return markdown_table(head, body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per scenario and profile (default 5)")
    parser.add_argument("--json", required=True, help="write the results here")
    parser.add_argument("--profiles", default=",".join(PROFILES), help="comma-separated (default: default,fast)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated (default: all three)")
    parser.add_argument("--poll-s", type=float, default=0.02, help="VPC-router emulator poll interval (default 0.02)")
    parser.add_argument("--keep", help="keep each run's lab files under this folder")
    args = parser.parse_args(argv)
    profiles = [p for p in args.profiles.split(",") if p]
    scenarios = [s for s in args.scenarios.split(",") if s]
    bad = [p for p in profiles if p not in PROFILES] + [s for s in scenarios if s not in SCENARIOS]
    if bad or not 1 <= args.runs <= 100:
        parser.error(f"unknown profile or scenario {bad}, or --runs outside 1..100; "
                     f"profiles: {', '.join(PROFILES)}; scenarios: {', '.join(SCENARIOS)}")
    if os.geteuid() != 0:
        parser.error("the lab needs root (network namespaces): run it with sudo")

    keep = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="hhalab-bench-"))
    rows: list[dict[str, Any]] = []
    started = time.time()
    for scenario in scenarios:
        for profile in profiles:
            results: list[Failover] = []
            errors: list[str] = []
            for i in range(args.runs):
                try:
                    r = run_once(scenario, profile, args.poll_s, keep / f"{scenario}-{profile}-{i + 1}")
                except LabError as e:
                    errors.append(str(e))
                    print(f"{scenario:17} {profile:8} run {i + 1}: FAILED: {e}", flush=True)
                    continue
                results.append(r)
                print(f"{scenario:17} {profile:8} run {i + 1}: to route {r.fault_to_route_s}s, "
                      f"to client {r.fault_to_client_s}s, to MASTER {r.fault_to_master_s}s, "
                      f"failed requests {r.failed_requests}", flush=True)
            rows.append({
                "scenario": scenario,
                "profile": profile,
                "runs": len(results),
                "fault_to_route_s": summarize([r.fault_to_route_s for r in results if r.fault_to_route_s is not None]),
                "fault_to_client_s": summarize([r.fault_to_client_s for r in results
                                                if r.fault_to_client_s is not None]),
                "failed_requests": summarize([float(r.failed_requests) for r in results]),
                "fault_to_master_s": summarize([r.fault_to_master_s for r in results
                                                if r.fault_to_master_s is not None]),
                "poll_s": args.poll_s,
                "failed_runs": errors,
            })
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    print()
    print(f"Failover in the lab, {args.runs} run(s) each, emulator polling every {args.poll_s * 1000:g} ms; "
          "median (min-max)")
    print(f"machine: {machine()}")
    print(table(rows))
    print(f"\nwrote {args.json}; lab files in {keep}; took {time.time() - started:.0f}s")
    return 1 if any(r["failed_runs"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
