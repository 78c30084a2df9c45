"""Watch failures live: builds the lab, runs a failure script (or one built-in fault) while the
client sends requests to the VIP, and prints as it happens which node answers, each step with
its time, the nodes' transitions and the route moves.

    sudo scripts/demo --script FILE [--json OUT]
    sudo scripts/demo [--fault haproxy|keepalived|link] [--profile fast|default] [--json OUT]
    scripts/demo --script FILE --check      # only check the script (no root needed)

The script's steps are in docs/lab.md ("Try your own failure") and tests/lab/scenario.py.  Exit
codes: 0 every expect held and the lab converged; 1 it did not, or the lab failed; 2 a bad
script or bad options (before anything is built).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from haproxy_ha_runtime.config import PROFILES

from .lab import Lab, LabError
from .runner import Runner, lab_options, write_json
from .scenario import Scenario, ScriptError, parse, parse_file
from .tls import SECRET

FAULTS = {
    "haproxy": "kill haproxy on a   # HAProxy on the active node crashes (SIGKILL)",
    "keepalived": "kill keepalived on a   # keepalived on the active node crashes (SIGKILL, the whole tree)",
    "link": "link down on a   # the active node's network link goes down",
}


def builtin(fault: str, profile: str, before_s: float, after_s: float) -> str:
    """The script that `--fault` runs."""
    return (f"# scripts/demo --fault {fault} --profile {profile}\n"
            f"lab profile={profile}\n"
            "expect client at a within 10s\n"
            f"wait {before_s:g}s\n"
            "mark fault\n"
            f"{FAULTS[fault]}\n"
            f"wait {after_s:g}s\n"
            f"expect client at b within {after_s:g}s\n"
            f"expect routes at b within {after_s:g}s\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/demo", description=__doc__.splitlines()[0])
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--script", metavar="FILE", help="run this failure script")
    what.add_argument("--fault", choices=sorted(FAULTS), help="run one built-in fault on node a (default haproxy)")
    parser.add_argument("--profile", choices=sorted(PROFILES), help="with --fault: the timing profile (default fast)")
    parser.add_argument("--before-s", type=float, default=1.0, help="with --fault: watch this long before it")
    parser.add_argument("--after-s", type=float, default=2.5, help="with --fault: and this long after it")
    parser.add_argument("--json", metavar="OUT", help="write every step, its time and verdict here")
    parser.add_argument("--check", action="store_true", help="only check the script, build nothing")
    args = parser.parse_args(argv)
    if args.script and args.profile:
        parser.error("--profile goes with --fault; a script sets its own with 'lab profile=...'")
    text = None if args.script else builtin(args.fault or "haproxy", args.profile or "fast", args.before_s,
                                            args.after_s)
    try:
        scenario = parse_file(args.script) if text is None else parse(text, f"--fault {args.fault or 'haproxy'}")
    except ScriptError as e:
        print("\n".join(e.problems), file=sys.stderr)
        return 2
    if args.check:
        print(f"{scenario.name}: {len(scenario.steps)} steps, ok")
        return 0
    if os.geteuid() != 0:
        parser.error("the lab needs root (network namespaces): run it with sudo")
    return run(scenario, args.json, text)


def run(scenario: Scenario, json_out: str | None, builtin_text: str | None = None) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="hhalab-demo-"))
    s = scenario.setup
    print(f"Building the lab ({s.profile} profile, preempt {'on' if s.preempt else 'off'}, {s.tables} route "
          f"tables{', EC2 API behind the fault proxy' if scenario.fault_proxy else ''}): namespaces for nodes a\n"
          "and b, a router and a client; moto as the EC2 API and a VPC-router emulator in the router; real\n"
          f"HAProxy, keepalived and the haproxy-ha agent on each node.  Files: {workdir}", flush=True)
    if builtin_text:
        print("It runs this script (write your own and run it with --script FILE):\n    "
              + "\n    ".join(builtin_text.splitlines()))
    started = time.time()
    try:
        with Lab(workdir, lab_options(scenario)) as lab:
            assert lab.state is not None
            print(f"Ready in {time.time() - started:.1f}s: node a is MASTER and all "
                  f"{len(lab.state.route_table_ids)} route tables point at its ENI {lab.state.eni['a']}.\n"
                  "The client sends a request to http://203.0.113.10/ every 10 ms; each letter is the node that "
                  "answered one, x a failed request\n(a request that times out shows as x a second after it was "
                  "sent).", flush=True)
            if lab.tls is not None:
                print(f"With tls=on, a second client sends HTTPS to {lab.tls.url} every 40 ms, verified against the "
                      "lab CA\n(its letters follow `https` on each line; a request that fails verification is x); "
                      f"node a and b\nserve certificate 1 from the secret {SECRET} in moto's Secrets Manager.",
                      flush=True)
            print(flush=True)
            result = Runner(lab, scenario).run()
            if json_out:
                write_json(result, json_out)
                print(f"wrote {json_out}")
    except LabError as e:
        print(f"demo failed: {e}; see {workdir}", file=sys.stderr)
        return 1
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
