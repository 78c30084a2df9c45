"""Watch one failover: builds the lab, sends the client's requests to the VIP, breaks the active
node, and prints as it happens which node answers, with the nodes' transitions and route moves.

    sudo scripts/demo [--fault haproxy|keepalived|link] [--profile fast|default]

Each line covers 100 ms: one letter per request that finished in it, the node that answered
(a or b), or `x` for a failed request.  A request that times out shows as `x` when the client
gives up on it, half a second after it was sent.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .lab import Lab, LabError, LabOptions
from .topology import NODES

FAULTS: dict[str, tuple[str, Callable[[Lab], None]]] = {
    "haproxy": ("HAProxy on node a is killed (SIGKILL)", lambda lab: lab.kill_haproxy("a")),
    "keepalived": ("keepalived on node a is killed (SIGKILL)", lambda lab: lab.kill_keepalived("a", signal.SIGKILL)),
    "link": ("node a's network link goes down", lambda lab: lab.link_down("a")),
}
TICK_S = 0.1


class Printer:
    """Prints what happened since the last tick: client answers and the nodes' events."""

    def __init__(self, lab: Lab, run: Any, t0: float) -> None:
        self.lab, self.run, self.t0 = lab, run, t0
        self.seen_requests = 0
        self.seen_events: dict[str, int] = {"a": 0, "b": 0, "emulator": 0}

    def _events(self) -> list[tuple[float, str]]:
        out: list[tuple[float, str]] = []
        for node in ("a", "b"):
            events = self.lab.agent_events(node)
            for e in events[self.seen_events[node]:]:
                if e["event"] == "transition":
                    out.append((e["ts"], f"node {node}: keepalived says {e['old']} -> {e['new']}"))
                elif e["event"] == "health":
                    out.append((e["ts"], f"node {node}: HAProxy {'healthy' if e['healthy'] else 'NOT healthy'}"))
                elif e["event"] in ("route_move", "route_hand_over", "route_repair") and e.get("converged"):
                    out.append((e["ts"], f"node {node}: {e['event']} done in {e['duration_s'] * 1000:.0f} ms "
                                         f"({e.get('tables', '?')} tables)"))
            self.seen_events[node] = len(events)
        log = self.lab.emulator_log()
        for r in log[self.seen_events["emulator"]:]:
            if r.get("event") == "routes" and r.get("kernel_ts"):
                hop = r["kernel"]
                node = next((n for n, net in NODES.items() if net.ip == hop), hop)
                out.append((r["kernel_ts"], f"VPC router: client traffic for the VIP now goes to node {node}"))
        self.seen_events["emulator"] = len(log)
        return sorted(out)

    def tick(self) -> None:
        for ts, text in self._events():
            print(f"{ts - self.t0:+8.3f}s  ** {text}", flush=True)
        records = self.run.records()
        new = records[self.seen_requests:]
        self.seen_requests = len(records)
        letters = "".join(r.get("node") or "?" if not r.get("error") else "x" for r in new)
        print(f"{time.time() - self.t0:+8.3f}s  {letters}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/demo", description=__doc__.splitlines()[0])
    parser.add_argument("--fault", choices=sorted(FAULTS), default="haproxy")
    parser.add_argument("--profile", choices=["fast", "default"], default="fast")
    parser.add_argument("--before-s", type=float, default=1.0, help="watch this long before the fault")
    parser.add_argument("--after-s", type=float, default=2.5, help="and this long after it")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("the lab needs root (network namespaces): run it with sudo")
    workdir = Path(tempfile.mkdtemp(prefix="hhalab-demo-"))
    what, inject = FAULTS[args.fault]
    print(f"Building the lab ({args.profile} profile): namespaces for nodes a and b, a router and a client;\n"
          "moto as the EC2 API and a VPC-router emulator in the router; real HAProxy, keepalived and\n"
          f"the haproxy-ha agent on each node.  Files: {workdir}", flush=True)
    started = time.time()
    try:
        with Lab(workdir, LabOptions(profile=args.profile)) as lab:
            assert lab.state is not None
            print(f"Ready in {time.time() - started:.1f}s: node a is MASTER and all "
                  f"{len(lab.state.route_table_ids)} route tables point at its ENI {lab.state.eni['a']}.")
            print("The client sends a request to http://203.0.113.10/ every 10 ms; each letter is the node that "
                  "answered one, x a failed request\n"
                  "(a request that times out shows as x half a second after it was sent).\n", flush=True)
            run = lab.client(max_s=args.before_s + args.after_s + 5, timeout_s=0.5)
            t0 = time.time()
            printer = Printer(lab, run, t0)
            printer.seen_events = {"a": len(lab.agent_events("a")), "b": len(lab.agent_events("b")),
                                   "emulator": len(lab.emulator_log())}
            fault_at = t0 + args.before_s
            faulted = False
            fault_ts = fault_at
            while time.time() < fault_at + args.after_s:
                time.sleep(TICK_S)
                if not faulted and time.time() >= fault_at:
                    fault_ts = time.time()
                    inject(lab)
                    faulted = True
                    print(f"{fault_ts - t0:+8.3f}s  ** FAULT: {what}", flush=True)
                printer.tick()
            run.stop()
            printer.tick()
            records = run.records()
            after = [r for r in records if r["sent"] >= fault_ts]
            first_b = min((r["done"] for r in after if r.get("node") == "b" and not r.get("error")), default=None)
            print()
            if first_b is not None:
                print(f"Node b answered {first_b - fault_ts:.3f}s after the fault; "
                      f"{sum(1 for r in records if r.get('error'))} of {len(records)} requests failed.")
            else:
                print("Node b did not answer within the demo window.")
    except LabError as e:
        print(f"demo failed: {e}; see {workdir}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
