"""The VPC-router emulator: runs in the router namespace, polls moto's route tables and sets the
kernel route for the VIP to the node whose ENI the client's table names, as the VPC router would.

    python -m tests.lab.emulator --endpoint http://192.0.2.254:5000 --vip 203.0.113.10 \
        --client-table rtb-... --tables rtb-...,rtb-... --eni eni-...=192.0.2.10 --eni ...

It writes one JSON line each time what it sees changes: `ts` (when the poll's answer arrived),
`tables` (each watched table's ENI, or its state when it has no active ENI route), `all` (the ENI
every watched table agrees on, else null) and `kernel` (the next hop it set, or "blackhole").
A route that names no known node, or is blackholed or missing, drops the traffic, as in a VPC.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from haproxy_ha_runtime import routes


def _view_value(view: routes.VipRoute | None) -> str:
    if view is None:
        return "no-table"
    if view.state == routes.ROUTE_ACTIVE and view.eni_id:
        return view.eni_id
    return view.state


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--vip", required=True)
    parser.add_argument("--client-table", required=True, help="the table of the client's subnet")
    parser.add_argument("--tables", default="", help="comma-separated tables to watch and log as well")
    parser.add_argument("--eni", action="append", default=[], metavar="ENI=NEXT_HOP")
    parser.add_argument("--poll-s", type=float, default=0.02)
    parser.add_argument("--full-every", type=int, default=1,
                        help="read all watched tables every N polls (the client's table every poll)")
    parser.add_argument("--max-s", type=float, default=3600.0, help="exit after this long in any case")
    args = parser.parse_args(argv)

    next_hop = dict(spec.split("=", 1) for spec in args.eni)
    watched = [t for t in args.tables.split(",") if t]
    if args.client_table not in watched:
        watched.insert(0, args.client_table)
    # One attempt per poll: the next poll is the retry.
    client = routes.make_client(args.region, args.endpoint, max_attempts=1, connect_timeout=0.5, read_timeout=2)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def log(**record: Any) -> None:
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()

    kernel: str | None = None
    last: dict[str, str] = {}
    agreed: str | None = None
    polls = 0
    errors = 0
    end = time.monotonic() + args.max_s
    log(event="emulator_start", ts=round(time.time(), 4), watched=len(watched), poll_s=args.poll_s)
    while not stop.is_set() and time.monotonic() < end:
        t0 = time.monotonic()
        full = polls % max(1, args.full_every) == 0
        polls += 1
        try:
            views = routes.describe_vip_routes(client, args.vip, watched if full else [args.client_table])
        except Exception as e:  # the API is down or faulty: keep the last route, as a VPC would
            errors += 1
            if errors <= 5 or errors % 100 == 0:
                log(event="poll_failed", ts=round(time.time(), 4), error=str(e), errors=errors)
            stop.wait(args.poll_s)
            continue
        ts = time.time()
        seen = dict(last) if not full else {}
        for t in (watched if full else [args.client_table]):
            seen[t] = _view_value(views.get(t))
        client_view = views.get(args.client_table)
        hop = "blackhole"
        if client_view is not None and client_view.state == routes.ROUTE_ACTIVE and client_view.eni_id in next_hop:
            hop = next_hop[client_view.eni_id]
        kernel_ts = None
        if hop != kernel:
            cmd = ["ip", "route", "replace"] + (
                ["blackhole", args.vip + "/32"] if hop == "blackhole" else [args.vip + "/32", "via", hop])
            subprocess.run(cmd, check=True)
            kernel_ts = round(time.time(), 4)
            kernel = hop
        if seen != last or kernel_ts is not None:
            if full:
                values = set(seen.values())
                agreed = values.pop() if len(values) == 1 and len(seen) == len(watched) else None
            log(event="routes", ts=round(ts, 4), tables=seen, all=agreed, kernel=kernel, kernel_ts=kernel_ts)
            last = seen
        stop.wait(max(0.0, args.poll_s - (time.monotonic() - t0)))
    log(event="emulator_stop", ts=round(time.time(), 4), polls=polls, errors=errors)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
