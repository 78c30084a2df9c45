"""Data-plane benchmark: what HAProxy on the active node costs a request, in the network-namespace
lab, against a direct path to the same backend, with Debian's load generators and nginx backends.

    sudo .venv/bin/python bench/dataplane.py --json bench/results/dataplane.json

Paths, all from the client namespace, all HTTP/1.1 on kept-alive connections:
- direct: client -> router -> node a -> router -> nginx, forwarded by node a's kernel (the VIP's
  path minus HAProxy: topology.detour_via);
- vip: client -> router -> node a (HAProxy, port 80) -> router -> nginx;
- tls: the same through the lab's TLS listener (port 443, HAProxy terminating TLS).

For each path, `wrk` finds the saturating rate (requests/s, --seconds each), then `h2load --rps`
holds one fixed rate, half the VIP's median saturating rate, on every path, and p50/p99 come from
h2load's per-request log.  Each path runs --rounds times, the paths interleaved.  CPUs: the load
generators and nginx (one worker) on CPU_LOAD, the nodes' HAProxy on CPU_PROXY (so it starts one
thread); the lab's other processes (moto, the agents, keepalived) are not pinned.  Each saturation
run also records the CPU time per request of HAProxy's worker, nginx's worker, the load generator
and each CPU's softirq (where the time goes).  Every run is bounded in time (and h2load's in count,
by its rate), and sends only to lab addresses.  A run fails if the VIP moves during it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.failover import fmt, machine, markdown_table  # noqa: E402
from tests.lab import topology  # noqa: E402
from tests.lab.lab import Lab, LabError, LabOptions, _children, summarize  # noqa: E402

PATHS = ("direct", "vip", "tls")
CPU_LOAD = "0"
CPU_PROXY = "1"
TLS_PORT = 443
# The backend the direct path asks (HAProxy balances over be1 and be2, both served by one nginx).
DIRECT_BACKEND = topology.BACKEND_IPS[0]
WRK_CONNECTIONS = 32
H2LOAD_CLIENTS = 16


class ParseError(ValueError):
    """A load generator's output is not what this benchmark reads."""


# -- the load generators' output ---------------------------------------------------------------
_WRK_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)\s*$", re.M)
_WRK_TOTAL = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m),", re.M)
_WRK_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_WRK_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_H2_REQUESTS = re.compile(r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                          r"(\d+) errored, (\d+) timeout", re.M)
_H2_STATUS = re.compile(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", re.M)


def parse_wrk(text: str) -> dict[str, Any]:
    """wrk's summary: requests/s, requests, and the failures (socket errors and non-2xx/3xx)."""
    rps, total = _WRK_RPS.search(text), _WRK_TOTAL.search(text)
    if not rps or not total:
        raise ParseError(f"no 'Requests/sec' or 'N requests in' line in wrk's output: {text[-500:]!r}")
    sock = _WRK_SOCKET.search(text)
    non2xx = _WRK_NON2XX.search(text)
    errors = sum(int(n) for n in sock.groups()) if sock else 0
    return {"rps": float(rps[1]), "requests": int(total[1]),
            "errors": errors + (int(non2xx[1]) if non2xx else 0)}


def parse_h2load(text: str) -> dict[str, Any]:
    """h2load's summary: requests done and succeeded, and the failures (failed, errored, timed
    out, and any answer but 2xx)."""
    req, status = _H2_REQUESTS.search(text), _H2_STATUS.search(text)
    if not req or not status:
        raise ParseError(f"no 'requests:' or 'status codes:' line in h2load's output: {text[-500:]!r}")
    total, _started, done, succeeded, failed, errored, timeout = (int(g) for g in req.groups())
    ok = int(status[1])
    return {"requests": total, "done": done, "succeeded": succeeded,
            "errors": failed + errored + timeout + (succeeded - ok)}


def latency_ms(log: str) -> dict[str, float]:
    """p50 and p99 (ms) of the 2xx requests in h2load's --log-file (start in us since the epoch,
    status, duration in us, tab-separated)."""
    durations = []
    for n, line in enumerate(log.splitlines(), 1):
        fields = line.split("\t")
        if len(fields) < 3 or not fields[1].isdigit() or not fields[2].isdigit():
            raise ParseError(f"h2load log line {n}: got {line!r}; allowed: START<TAB>STATUS<TAB>MICROSECONDS")
        if 200 <= int(fields[1]) < 300:
            durations.append(int(fields[2]) / 1000)
    if len(durations) < 100:
        raise ParseError(f"h2load's log has {len(durations)} answered requests; p99 needs at least 100")
    cuts = statistics.quantiles(durations, n=100, method="inclusive")
    return {"p50_ms": round(cuts[49], 3), "p99_ms": round(cuts[98], 3)}


# -- CPU time: where it goes -------------------------------------------------------------------
def _softirq_ticks() -> dict[str, int]:
    """Per CPU (cpu0, cpu1, ...): jiffies spent in softirq (the lab's packet forwarding) since boot."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *values = line.split()
            if name.startswith("cpu") and name != "cpu":
                out[name] = int(values[6])  # user nice system idle iowait irq softirq
    return out


def _process_ticks(pids: list[int]) -> int:
    """User and system jiffies of these processes (all their threads)."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks


class CpuWatch:
    """CPU time over a run, in microseconds per request: the watched processes', the load
    generator's (this process's children that ended in the run), and each CPU's softirq time."""

    def __init__(self, processes: dict[str, list[int]]) -> None:
        self.processes = processes
        self.ticks: dict[str, int] = {}

    def __enter__(self) -> CpuWatch:
        self._soft = _softirq_ticks()
        self._procs = {name: _process_ticks(pids) for name, pids in self.processes.items()}
        self._children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return self

    def __exit__(self, *exc: Any) -> None:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        hz = os.sysconf("SC_CLK_TCK")
        self.seconds = {name: (_process_ticks(pids) - self._procs[name]) / hz for name, pids in self.processes.items()}
        self.seconds["loadgen"] = (children.ru_utime + children.ru_stime
                                   - self._children.ru_utime - self._children.ru_stime)
        self.seconds.update({f"{cpu}_softirq": (t - self._soft[cpu]) / hz for cpu, t in _softirq_ticks().items()})

    def per_request_us(self, requests: int) -> dict[str, float]:
        return {name: round(s * 1e6 / max(requests, 1), 1) for name, s in self.seconds.items()}


# -- running them in the lab -------------------------------------------------------------------
def _in_client(cmd: list[str], timeout_s: float) -> str:
    """Run `cmd` on CPU_LOAD in the client namespace; its output.  Killed after `timeout_s`."""
    full = ["ip", "netns", "exec", topology.CLIENT, "taskset", "-c", CPU_LOAD, *cmd]
    proc = subprocess.run(full, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise LabError(f"{cmd[0]} exited {proc.returncode}: {proc.stderr.strip()[-500:] or proc.stdout[-500:]}")
    return proc.stdout


def saturate(url: str, seconds: int, watch: dict[str, list[int]]) -> dict[str, Any]:
    """wrk on one thread, WRK_CONNECTIONS kept-alive connections, for `seconds`; and the CPU time
    each part spent per request."""
    with CpuWatch(watch) as cpu:
        out = _in_client(["wrk", "-t1", f"-c{WRK_CONNECTIONS}", f"-d{seconds}s", "--timeout", "2s", url],
                         timeout_s=seconds + 30)
    result = parse_wrk(out)
    if result["requests"] == 0:
        raise LabError(f"wrk got no answer from {url} in {seconds}s")
    return {**result, "cpu_us_per_request": cpu.per_request_us(result["requests"])}


def hold_rate(url: str, rate: int, seconds: int, log: Path) -> dict[str, Any]:
    """h2load (HTTP/1.1) holding `rate` requests/s over H2LOAD_CLIENTS connections for `seconds`,
    after a second of warm-up; p50 and p99 from its per-request log."""
    per_client = max(1, round(rate / H2LOAD_CLIENTS))
    log.unlink(missing_ok=True)
    out = _in_client(["h2load", "--h1", "-t1", f"-c{H2LOAD_CLIENTS}", f"--rps={per_client}", f"-D{seconds}",
                      "--warm-up-time=1", f"--log-file={log}", url], timeout_s=seconds + 30)
    result = parse_h2load(out)
    cipher = re.search(r"^Cipher: (\S+)", out, re.M)
    return {**result, "rate": per_client * H2LOAD_CLIENTS, **latency_ms(log.read_text()),
            **({"cipher": cipher[1]} if cipher else {})}


def admin(lab: Lab, node: str, command: str) -> str:
    """One command on HAProxy's admin socket on `node`; its answer ("" if it cannot be asked)."""
    path = lab.node_dir(node) / "run" / "haproxy.sock"
    data = b""
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(str(path))
            s.sendall(command.encode() + b"\n")
            while chunk := s.recv(65536):
                data += chunk
    except OSError:
        return ""
    return data.decode(errors="replace")


def parse_nbthread(info: str) -> int | None:
    """HAProxy's thread count, from `show info`."""
    found = re.search(r"^Nbthread: (\d+)$", info, re.M)
    return int(found[1]) if found else None


def parse_reuse(stat: str) -> dict[str, dict[str, int]]:
    """Each backend's server connections, from `show stat`: requests sent to its servers (stot),
    connections opened (connect) and reused (reuse).  Kept-alive connections to the backends show
    as few connects for many requests."""
    lines = stat.strip().splitlines()
    if not lines or not lines[0].startswith("# "):
        raise ParseError(f"show stat: got {stat[:200]!r}; allowed: CSV with a '# pxname,...' header")
    rows = csv.DictReader([lines[0][2:], *lines[1:]])
    return {r["pxname"]: {"requests": int(r["stot"] or 0), "connect": int(r["connect"] or 0),
                          "reuse": int(r["reuse"] or 0)}
            for r in rows if r["svname"] == "BACKEND" and r["pxname"] != "agent"}


def vip_node() -> str | None:
    """The node the router sends the VIP's traffic to now (the kernel route the emulator set)."""
    out = topology.ip("route", "get", topology.VIP, namespace=topology.ROUTER).stdout
    return next((n for n, net in topology.NODES.items() if f" via {net.ip} " in out), None)


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def run(paths: list[str], rounds: int, seconds: int, workdir: Path) -> dict[str, Any]:
    options = LabOptions(profile="default", poll_s=0.5, tls="tls" in paths, backend_server="nginx",
                         haproxy_cpus=CPU_PROXY, nginx_cpus=CPU_LOAD)
    lab = Lab(workdir, options)
    with lab:
        owner = lab.check_converged()
        topology.detour_via(topology.NODES[owner], [DIRECT_BACKEND])
        urls = {"direct": f"http://{DIRECT_BACKEND}:8080/", "vip": f"http://{topology.VIP}/",
                "tls": lab.tls.url if lab.tls else ""}

        def still_at_owner(path: str, what: str) -> None:
            # A busy node can miss its health probes and fail over; a figure from both nodes is no figure.
            now = vip_node()
            if now != owner:
                raise LabError(f"the VIP moved from node {owner} to {now} during the {path} {what} run; "
                               f"see {workdir / owner / 'agent.jsonl'}")

        def watch() -> dict[str, list[int]]:
            return {"haproxy": _children(lab.named[f"haproxy-{owner}"].pid),
                    "nginx": _children(lab.named["backends"].pid)}

        sat: dict[str, list[dict[str, Any]]] = {p: [] for p in paths}
        for r in range(rounds):
            for path in paths:
                result = saturate(urls[path], seconds, watch())
                still_at_owner(path, "saturation")
                sat[path].append(result)
                print(f"round {r + 1} {path:6} saturation: {result['rps']:.0f} requests/s, {result['errors']} errors; "
                      f"CPU us per request {result['cpu_us_per_request']}", flush=True)
        vip_rps = statistics.median(s["rps"] for s in sat.get("vip", sat["direct"]))
        rate = int(vip_rps / 2)
        held: dict[str, list[dict[str, Any]]] = {p: [] for p in paths}
        for r in range(rounds):
            for path in paths:
                result = hold_rate(urls[path], rate, seconds, workdir / f"h2load-{path}-{r + 1}.log")
                still_at_owner(path, "fixed-rate")
                held[path].append(result)
                print(f"round {r + 1} {path:6} at {result['rate']} requests/s: p50 {result['p50_ms']} ms, "
                      f"p99 {result['p99_ms']} ms, {result['errors']} errors", flush=True)
        threads = parse_nbthread(admin(lab, owner, "show info"))
        reuse = parse_reuse(admin(lab, owner, "show stat"))
    return {"node": owner, "haproxy_nbthread": threads, "backend_connections": reuse, "rate": rate, "urls": urls,
            "saturation": sat, "held": held}


def summary(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per path: medians (min-max) of each measure, and the ratios to the direct path's
    medians."""
    rows = []
    for path, sats in raw["saturation"].items():
        held = raw["held"][path]
        cpu = {name: statistics.median(s["cpu_us_per_request"][name] for s in sats)
               for name in sats[0]["cpu_us_per_request"]}
        rows.append({
            "path": path, "runs": len(sats),
            "rps": summarize([round(s["rps"]) for s in sats]),
            "p50_ms": summarize([h["p50_ms"] for h in held]),
            "p99_ms": summarize([h["p99_ms"] for h in held]),
            "errors": sum(s["errors"] for s in sats) + sum(h["errors"] for h in held),
            "cpu_us_per_request": cpu,
        })
    direct = next(r for r in rows if r["path"] == "direct")
    for row in rows:
        row["rps_ratio"] = ratio(row["rps"]["median"], direct["rps"]["median"])
        row["p50_ratio"] = ratio(row["p50_ms"]["median"], direct["p50_ms"]["median"])
        row["p99_ratio"] = ratio(row["p99_ms"]["median"], direct["p99_ms"]["median"])
        row["p99_added_ms"] = round(row["p99_ms"]["median"] - direct["p99_ms"]["median"], 3)
    return rows


def table(rows: list[dict[str, Any]], rate: int) -> str:
    head = ["path", "runs", "requests/s at saturation", "ratio", f"p50 ms at {rate}/s", "ratio", "p99 ms",
            "ratio", "p99 added ms"]
    body = [[r["path"], str(r["runs"]), fmt(r["rps"], "n"), f"{r['rps_ratio']:.2f}", fmt(r["p50_ms"]),
             f"{r['p50_ratio']:.2f}", fmt(r["p99_ms"]), f"{r['p99_ratio']:.2f}", f"{r['p99_added_ms']:+.3f}"]
            for r in rows]
    return markdown_table(head, body)


def cpu_table(rows: list[dict[str, Any]]) -> str:
    """Where the time goes at saturation: CPU microseconds per request, medians."""
    names = list(rows[0]["cpu_us_per_request"])
    body = [[r["path"], *(f"{r['cpu_us_per_request'][n]:.1f}" for n in names)] for r in rows]
    return markdown_table(["path", *names], body)


def load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True, help="write the results here")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each path and measure (default 3)")
    parser.add_argument("--seconds", type=int, default=5, help="each run's length (default 5)")
    parser.add_argument("--paths", default=",".join(PATHS), help="comma-separated (default: direct,vip,tls)")
    parser.add_argument("--keep", help="keep the lab's files in this folder")
    args = parser.parse_args(argv)
    paths = [p for p in args.paths.split(",") if p]
    bad = [p for p in paths if p not in PATHS]
    if bad or "direct" not in paths or not 1 <= args.rounds <= 10 or not 2 <= args.seconds <= 30:
        parser.error(f"--paths: got {args.paths!r}, --rounds {args.rounds}, --seconds {args.seconds}; allowed: "
                     f"paths from {', '.join(PATHS)} including direct, rounds 1..10, seconds 2..30")
    if os.geteuid() != 0:
        parser.error("the lab needs root (network namespaces): run it with sudo")
    if (os.cpu_count() or 1) < 2:
        parser.error("the benchmark pins the load generator and HAProxy to different CPUs: it needs 2")

    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="hhalab-dataplane-"))
    started = time.time()
    load_before = load()
    raw = run(paths, args.rounds, args.seconds, workdir)
    rows = summary(raw)
    result = {"machine": machine(), "load_before": load_before, "load_after": load(), "rounds": args.rounds,
              "seconds": args.seconds, "pinning": {"load_generator": f"CPU {CPU_LOAD}", "nginx": f"CPU {CPU_LOAD}",
                                                   "haproxy": f"CPU {CPU_PROXY}"},
              "rows": rows, **raw}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(f"Data plane in the lab: {args.rounds} run(s) of {args.seconds} s per path and measure; "
          f"median (min-max); ratios to the direct path's medians")
    print(f"machine: {machine()}; load average before {load_before}, after {result['load_after']}")
    print(f"wrk and h2load and nginx on CPU {CPU_LOAD}, HAProxy on CPU {CPU_PROXY} "
          f"({raw['haproxy_nbthread']} thread(s)); latency at {raw['rate']} requests/s, half the VIP's saturation")
    print(table(rows, raw["rate"]))
    reuse = "; ".join(f"{name}: {c['requests']} requests over {c['connect']} connections"
                      for name, c in raw["backend_connections"].items())
    print(f"HAProxy to nginx, whole run: {reuse}")
    print("\nCPU microseconds per request at saturation (medians): HAProxy's worker, nginx's, the load generator's, "
          "and each CPU's softirq time (the lab's packet forwarding)")
    print(cpu_table(rows))
    print(f"\nwrote {args.json}; lab files in {workdir}; took {time.time() - started:.0f}s")
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
