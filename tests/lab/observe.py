"""What the lab's logs say: the JSON lines of the agents, the VPC-router emulator and the client,
read as they grow, and the questions the lab and the failure scripts ask of them.

Every answer that is a state also says since when it has held (wall-clock seconds, the same
clock as the logs), so that a check can tell whether it held within a bound.  Pure functions of
the records: they need no root, and the unit tests feed them records directly.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

Record = dict[str, Any]


class JsonLines:
    """A JSON-lines file that another process appends to.  Each read parses only what was added
    since the last one, and only whole lines.  Safe to share between threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""
        self._records: list[Record] = []
        self._lock = threading.Lock()

    def records(self) -> list[Record]:
        with self._lock:
            try:
                with open(self.path, "rb") as f:
                    f.seek(self._offset)
                    data = f.read()
            except FileNotFoundError:
                return list(self._records)
            self._offset += len(data)
            *lines, self._partial = (self._partial + data).split(b"\n")
            for line in lines:
                if line.startswith(b"{"):
                    try:
                        self._records.append(json.loads(line))
                    except ValueError:
                        continue
            return list(self._records)


def vrrp_state(events: Iterable[Record]) -> tuple[str, float | None, str]:
    """The VRRP state the node's agent last logged, since when, and why (the transition's
    reason).  An agent that (re)starts knows nothing until keepalived tells it, or until it
    recognises MASTER by itself: UNKNOWN."""
    state, since, reason = "UNKNOWN", None, ""
    for e in events:
        if e.get("event") == "agent_start":
            state, since, reason = "UNKNOWN", e["ts"], "agent started"
        elif e.get("event") == "transition":
            state, since, reason = str(e["new"]), e["ts"], str(e.get("reason", ""))
    return state, since, reason


def routes_agreed(log: Iterable[Record]) -> tuple[str | None, float | None]:
    """The ENI every watched table points at in the emulator's latest reading (None when they
    disagree or a route is not active), and since when the tables have agreed on it."""
    agreed, since = None, None
    for r in log:
        if r.get("event") != "routes":
            continue
        now = r.get("all")
        if now != agreed:
            agreed, since = now, r["ts"]
    return agreed, since


def route_changes(log: Iterable[Record], after: float = 0.0) -> list[Record]:
    """Each emulator reading, at or after `after`, in which the tables agree on another ENI than
    the one they last agreed on: the route moves as the API shows them.  A moment of
    disagreement in between is part of one move."""
    out: list[Record] = []
    current = None
    for r in log:
        if r.get("event") != "routes":
            continue
        agreed = r.get("all")
        if agreed and agreed != current:
            if current is not None and r["ts"] >= after:
                out.append(r)
            current = agreed
    return out


# What the lab client records for a connection the peer reset.
RESET_ERRORS = ("ConnectionResetError",)


def kernel_switches(log: Iterable[Record]) -> list[tuple[float, float]]:
    """Each time the emulator changed the VIP's next hop: from the poll's answer that made it
    change to the return of its `ip route replace`.  The change happened in between."""
    return [(r["ts"], r["kernel_ts"]) for r in log if r.get("event") == "routes" and r.get("kernel_ts")]


def reset_at_a_switch(record: Record, switches: Iterable[tuple[float, float]]) -> bool:
    """A request reset while it overlapped a next-hop change: its first packets reached one node
    and its next ones the other, which has no such connection and resets it."""
    return record.get("error") in RESET_ERRORS and any(
        record["sent"] <= end and record["done"] >= start for start, end in switches)


def client_answered_by(records: Iterable[Record]) -> tuple[str | None, float | None]:
    """The node that gave the client its latest answer, and since when it has given every
    answer: the finish time of the first of its unbroken run.  Failed requests do not break
    the run (a request sent before a move may time out after it)."""
    node, since = None, None
    for r in records:
        if r.get("error"):
            continue
        if r.get("node") != node:
            node, since = r.get("node"), r["done"]
    return node, since


def sent_before(records: list[Record], t: float) -> tuple[list[Record], bool]:
    """The requests the client sent before `t`, and whether all of them have finished.  The
    client numbers requests in the order it sends them, so they are complete once a request sent
    at or after `t` has finished and every lower number is there."""
    later = [r["i"] for r in records if r["sent"] >= t]
    before = [r for r in records if r["sent"] < t]
    return before, bool(later) and len(before) == min(later)


def _metrics_of(record: Record) -> dict[str, Any]:
    """The metrics an EMF record carries, by name."""
    directives = (record.get("_aws") or {}).get("CloudWatchMetrics") or []
    return {m["Name"]: record.get(m["Name"]) for d in directives for m in d.get("Metrics", [])}


def metric_text(value: Any) -> str:
    """A metric's value as a script writes it: 1, not 1.0."""
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def metric_state(records: Iterable[Record], name: str) -> tuple[str | None, float | None]:
    """The latest value of metric `name` in a node's metric records (as metric_text), and since
    when it has had that value: the time of the first record of its unbroken run (the agent
    writes its state again every minute, and whenever it changes)."""
    value, since = None, None
    for r in records:
        metrics = _metrics_of(r)
        if name not in metrics:
            continue
        now = metric_text(metrics[name])
        if now != value:
            value, since = now, r["_aws"]["Timestamp"] / 1000.0
    return value, since


def metric_events(records: Iterable[Record], name: str, after: float = 0.0) -> list[tuple[float, Record]]:
    """Each record that carries metric `name`, written at or after `after`, with its time."""
    out = []
    for r in records:
        if name in _metrics_of(r):
            ts = r["_aws"]["Timestamp"] / 1000.0
            if ts >= after:
                out.append((ts, r))
    return out
