"""Benchmark: take_over across 1, 10, 50 and 100 route tables against a moto server, and the
time from a MASTER line written to keepalived's notify FIFO to the agent's first ReplaceRoute.

    .venv/bin/python bench/takeover.py [--runs 5] [--json FILE]

Everything runs on loopback: a moto server (subprocess), a counting proxy in front of it, and
the agent as a separate process reading a real FIFO.  No AWS account is needed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_EC2_METADATA_DISABLED": "true"})

from haproxy_ha_runtime import routes  # noqa: E402
from tests.conftest import VIP, client_for, make_world  # noqa: E402
from tests.support import moto_server  # noqa: E402
from tests.support.fault_proxy import FaultProxy  # noqa: E402
from tests.support.moto_server import free_port  # noqa: E402


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def bench_take_over(url: str, sizes: list[int], runs: int) -> list[dict[str, Any]]:
    rows = []
    for n in sizes:
        client = client_for(url)
        world = make_world(client, n)
        counter = routes.CallCounter(client)
        times, calls = [], []
        targets = [world.eni_b, world.eni_a]
        for i in range(runs):
            counter.counts.clear()
            t0 = time.perf_counter()
            result = routes.take_over(client, VIP, world.tables, targets[i % 2])
            times.append(time.perf_counter() - t0)
            calls.append(counter.total)
            if not result.converged:
                raise SystemExit(f"take_over did not converge for {n} tables: {result.tables}")
        rows.append({"tables": n, "runs": runs, "converge_s": _stats(times),
                     "api_calls": _stats([float(c) for c in calls])})
    return rows


AGENT = """
import json, sys, threading, signal
from haproxy_ha_runtime import agent, config, routes
cfg = config.load_config(sys.argv[1])
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
# The peer is not there: probe a closed loopback port, never the document's address.
agent.run(cfg, routes.make_client(cfg.region, cfg.endpoint_url), cfg.eni_id, stop,
          peer_address=lambda p: ("127.0.0.1", int(sys.argv[2])))
"""


def bench_fifo_to_write(moto_url: str, runs: int, n_tables: int = 10) -> dict[str, Any]:
    """The agent runs as its own process, as on a node (the same code, minus putting the VIP on lo)."""
    proxy = FaultProxy(moto_url).start()
    tmp = Path(tempfile.mkdtemp(prefix="hha-bench-"))
    proc = None
    try:
        world = make_world(client_for(proxy.url), n_tables)
        doc = {
            "node_name": "b", "vip": VIP, "eni_id": world.eni_b, "local_ip": "192.0.2.20", "interface": "lo",
            "peers": [{"name": "a", "ip": "192.0.2.10", "eni_id": world.eni_a}], "route_table_ids": world.tables,
            "region": "us-east-1", "endpoint_url": proxy.url, "profile": "fast",
            "stats_port": free_port(),  # nothing listens: the agent reports unhealthy, which moves nothing
            "agent_port": free_port(),
            "listeners": [{"name": "web", "port": 80, "static_reply": "bench"}],
            "paths": {"run_dir": str(tmp / "run")},
        }
        (tmp / "node.json").write_text(json.dumps(doc))
        with open(tmp / "agent.log", "w") as agent_log:
            proc = subprocess.Popen([sys.executable, "-c", AGENT, str(tmp / "node.json"), str(free_port())], cwd=REPO,
                                    stdout=agent_log, stderr=subprocess.STDOUT)
        fifo = tmp / "run" / "keepalived.fifo"
        for _ in range(100):
            if fifo.exists():
                break
            time.sleep(0.05)
        writer = os.open(fifo, os.O_WRONLY)
        latencies, converge = [], []
        for _ in range(runs):
            proxy.state.reset()
            os.write(writer, b'INSTANCE "haproxy_ha" BACKUP 100\n')
            time.sleep(0.3)
            routes.take_over(client_for(moto_url), VIP, world.tables, world.eni_a)  # put the routes back
            proxy.state.reset()
            t0 = time.time()
            os.write(writer, b'INSTANCE "haproxy_ha" MASTER 100\n')
            deadline = time.monotonic() + 10
            while "ReplaceRoute" not in proxy.state.arrivals and time.monotonic() < deadline:
                time.sleep(0.001)
            first = proxy.state.arrivals["ReplaceRoute"][0]
            latencies.append(first - t0)
            deadline = time.monotonic() + 10
            while proxy.state.calls.get("DescribeRouteTables", 0) < 1 and time.monotonic() < deadline:
                time.sleep(0.001)
            converge.append(proxy.state.arrivals["DescribeRouteTables"][0] - t0)
        os.close(writer)
        return {"tables": n_tables, "runs": runs, "fifo_to_first_replace_route_s": _stats(latencies),
                "fifo_to_verify_call_s": _stats(converge)}
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        proxy.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="take_over and FIFO-to-ReplaceRoute benchmark (moto on loopback)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sizes", default="1,10,50,100")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    moto, url = moto_server.start()
    try:
        rows = bench_take_over(url, [int(s) for s in args.sizes.split(",")], args.runs)
        fifo = bench_fifo_to_write(url, args.runs)
    finally:
        moto_server.stop(moto)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(f"take_over against moto on loopback ({machine}), {args.runs} runs each")
    print(f"{'tables':>6}  {'median s':>9}  {'min s':>7}  {'max s':>7}  {'API calls':>9}")
    for r in rows:
        c = r["converge_s"]
        calls = r["api_calls"]["median"]
        print(f"{r['tables']:>6}  {c['median']:>9.3f}  {c['min']:>7.3f}  {c['max']:>7.3f}  {calls:>9.0f}")
    f = fifo["fifo_to_first_replace_route_s"]
    v = fifo["fifo_to_verify_call_s"]
    print(f"\nMASTER written to the notify FIFO -> first ReplaceRoute at the API ({fifo['tables']} tables): "
          f"median {f['median'] * 1000:.1f} ms (min {f['min'] * 1000:.1f}, max {f['max'] * 1000:.1f})")
    print(f"MASTER written -> verifying DescribeRouteTables at the API: median {v['median'] * 1000:.1f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "take_over": rows, "fifo": fifo}, indent=2))


if __name__ == "__main__":
    main()
