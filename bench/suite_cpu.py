#!/usr/bin/env python3
"""Where the non-lab test suite's CPU goes: runs it once and prints CPU seconds by process kind.

Run from the repository root: `.venv/bin/python bench/suite_cpu.py [-- PYTEST ARGS]`.  It starts
`python -m pytest -m "not lab" -n 2` (what `scripts/test` runs before the lab), and every half
second reads the CPU time of each process under it from /proc.  A process that lives less than
half a second may be missed, so the figures are a lower bound.  The table groups the processes by
what they are (the xdist workers, Node.js under jsii, the moto servers, cfn-lint, ...).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE_S = 0.5
TICKS = os.sysconf("SC_CLK_TCK")

# (kind, words that a command line holds): the first match names the process.
KINDS: list[tuple[str, tuple[str, ...]]] = [
    ("moto servers", ("moto_server",)),
    ("cfn-lint", ("cfn-lint",)),
    ("Node.js (jsii: aws-cdk-lib)", ("node ", "jsii-runtime")),
    ("python -m haproxy_ha_runtime (boot commands)", ("haproxy_ha_runtime",)),
    ("AWS CLI and Lambda stand-ins", ("aws_cli_stand_in", "lambda_stand_in")),
    ("HAProxy, keepalived, rsyslogd", ("haproxy ", "keepalived", "rsyslogd")),
    ("wheel build (pip)", ("pip",)),
    ("xdist workers", ("python -u -c",)),
    ("pytest (controller)", ("-m pytest",)),
    ("python -c (import probes)", ("python -c", "python -B -c")),
]


def kind_of(command: str) -> str:
    for kind, words in KINDS:
        if any(w in command for w in words):
            return kind
    return "other"


def _stat(pid: str) -> tuple[str, float, str] | None:
    """(parent pid, CPU seconds, start time) of a process, or None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[1], (int(fields[11]) + int(fields[12])) / TICKS, fields[19]


def _command(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ").strip()
    except OSError:
        return ""


def sample(root: int, seen: dict[tuple[str, str], list]) -> None:
    """Record the CPU time of every process under `root` (keyed by pid and start time)."""
    stats = {pid: s for pid in os.listdir("/proc") if pid.isdigit() and (s := _stat(pid)) is not None}
    under = {str(root)}
    changed = True
    while changed:  # the descendants of root, however deep
        changed = False
        for pid, (ppid, _cpu, _start) in stats.items():
            if ppid in under and pid not in under:
                under.add(pid)
                changed = True
    for pid in under:
        if pid not in stats:
            continue
        _ppid, cpu, start = stats[pid]
        key = (pid, start)
        if key in seen:
            seen[key][0] = cpu
        else:
            seen[key] = [cpu, _command(pid)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pytest_args", nargs="*", help="more arguments for pytest (after --)")
    args = parser.parse_args()
    env = {**os.environ, "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20"}
    command = [sys.executable, "-m", "pytest", "-q", "-m", "not lab", "-n", "2", "-p", "no:cacheprovider",
               *args.pytest_args]
    seen: dict[tuple[str, str], list] = {}
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        with subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT) as proc:
            while proc.poll() is None:
                sample(proc.pid, seen)
                time.sleep(SAMPLE_S)
        out.seek(0)
        last = out.read().strip().splitlines()[-1:] or ["(no output)"]
    wall = time.perf_counter() - start
    by_kind: dict[str, list[float]] = {}
    for cpu, cmd in seen.values():
        entry = by_kind.setdefault(kind_of(cmd), [0.0, 0])
        entry[0] += cpu
        entry[1] += 1
    total = sum(cpu for cpu, _n in by_kind.values())
    print(f"pytest: {last[0]}")
    print(f"wall {wall:.0f} s, CPU {total:.0f} s (2 cores give at most {2 * wall:.0f} s)\n")
    print(f"| {'process kind':<46} | processes | CPU s | share |")
    print(f"|{'-' * 48}|-----------|-------|-------|")
    for kind, (cpu, n) in sorted(by_kind.items(), key=lambda kv: -kv[1][0]):
        print(f"| {kind:<46} | {n:>9} | {cpu:>5.1f} | {100 * cpu / total:>4.0f} % |")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
