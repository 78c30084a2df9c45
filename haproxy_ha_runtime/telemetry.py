"""What the agent tells CloudWatch about its node, as EMF records (emf.py) under the names of
metrics.py:
- its state: VRRP MASTER, BACKUP or FAULT, its HAProxy's health, whether it is the active node,
  whether the EC2 API answers, the route tables it set aside as tables it cannot write (only
  while there are some), and (as properties, not metrics) its runtime's release and the document
  schema it reads.  Written every minute and whenever it changes;
- each take-over when it happens, as a failover (a fault moved the VIP here) or as a planned move
  (the peer stepped down, for an operator's move or because its instance is leaving, or lost an
  election to this node), with its time; and each route repair, with its time;
- HAProxy's numbers per listener and per backend (haproxy_stats), every minute; with
  detailed_metrics off, only each backend's servers up and servers.

How a take-over is told apart: the new MASTER asks its peer (GET /state, as the agents always
do) right after the routes are here.  A peer that says it stepped down gave the VIP away on
purpose; a healthy peer in BACKUP or MASTER lost an election (preemption); anything else (no
answer, HAProxy down, keepalived gone or in FAULT without stepping down) is a fault.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Callable

from . import emf, metrics, peer, runtime_info
from .haproxy_stats import BackendSample, ListenerSample

FAILOVER = "failover"
PLANNED_MOVE = "planned_move"
# How often the agent writes its state (besides every change) and samples HAProxy: CloudWatch's
# standard resolution.
INTERVAL_S = 60.0


def classify_take_over(view: peer.PeerView, routes_were_here: bool | None) -> tuple[str, str] | None:
    """Was a take-over a failover or a planned move, and why?  `view` is what the peer said just
    after it; `routes_were_here` is whether the routes the agent last read before it pointed here
    already (None: it had not read them).  None: nothing failed, and nothing says the routes
    moved (the first election, with the routes already here)."""
    if view.reach == peer.REACHED and view.stepped_down:
        return PLANNED_MOVE, ("the peer is leaving (its instance is being terminated)" if view.leaving
                              else "the peer stepped down (an operator's move)")
    if view.healthy_haproxy and view.vrrp in ("MASTER", "BACKUP"):
        # Without a reading of where the routes were, nothing says they moved: count nothing.
        if routes_were_here is False:
            return PLANNED_MOVE, "the healthy peer lost an election (preemption)"
        return None
    if view.reach != peer.REACHED:
        return FAILOVER, f"the peer does not answer ({view.reach})"
    if view.healthy is not True:
        return FAILOVER, "the peer's HAProxy is unhealthy"
    return FAILOVER, f"the peer's keepalived is {view.vrrp or 'not running'}"


class Telemetry:
    """Writes one node's EMF records, one line each, with `write` (the metrics file on a node)."""

    def __init__(self, pair: str, node: str, write: Callable[[str], None],
                 log: Callable[..., None] | None = None) -> None:
        self.dimensions = {metrics.PAIR: pair, metrics.NODE: node}
        self._write = write
        self._log = log
        self._lock = threading.Lock()
        self._last_state: tuple[Any, ...] | None = None
        self._failing = False

    def _emit(self, values: Sequence[emf.Metric], properties: dict[str, Any],
              dimensions: dict[str, str] | None = None) -> None:
        text = emf.line(emf.record(dimensions or self.dimensions, values, properties))
        try:
            self._write(text)
            self._failing = False
        except OSError as e:
            # Metrics must never stop the agent; say so once per spell of failures.
            if not self._failing and self._log is not None:
                self._log("metrics_write_failed", node=self.dimensions[metrics.NODE], error=str(e))
            self._failing = True

    def state(self, vrrp: str, healthy: bool | None, active: bool, ec2_ok: bool | None,
              force: bool = False, tables_set_aside: Sequence[str] = ()) -> bool:
        """Write the node's state if it changed since the last record (or `force`: the periodic
        one).  What is not known yet (health before the first probe, the API before the first
        call) is left out, and so are set-aside tables while there are none.  Returns whether it
        wrote."""
        key = (vrrp, healthy, active, ec2_ok, tuple(tables_set_aside))
        with self._lock:
            if key == self._last_state and not force:
                return False
            self._last_state = key
            values = [emf.Metric(metrics.VRRP_MASTER, int(vrrp == "MASTER")),
                      emf.Metric(metrics.VRRP_BACKUP, int(vrrp == "BACKUP")),
                      emf.Metric(metrics.VRRP_FAULT, int(vrrp == "FAULT")),
                      emf.Metric(metrics.ACTIVE, int(active))]
            if healthy is not None:
                values.append(emf.Metric(metrics.HAPROXY_HEALTHY, int(healthy)))
            if ec2_ok is not None:
                values.append(emf.Metric(metrics.EC2_API_REACHABLE, int(ec2_ok)))
            # The release and schema ride along as properties, never as dimensions: a dimension
            # more would make every state metric a new one, and the alarms would watch the old.
            properties: dict[str, Any] = {"record": "state", "vrrp": vrrp, **runtime_info.reported()}
            if tables_set_aside:
                values.append(emf.Metric(metrics.ROUTE_TABLES_SET_ASIDE, len(tables_set_aside), emf.COUNT))
                properties["tables_set_aside"] = list(tables_set_aside)
            self._emit(values, properties)
        return True

    def take_over(self, kind: str, took_ms: float, reason: str, **properties: Any) -> None:
        """A failover or a planned move to this node, and how long it took (ms)."""
        count, time_name = ((metrics.FAILOVERS, metrics.FAILOVER_TIME) if kind == FAILOVER
                            else (metrics.PLANNED_MOVES, metrics.PLANNED_MOVE_TIME))
        with self._lock:
            self._emit([emf.Metric(count, 1, emf.COUNT), emf.Metric(time_name, round(took_ms, 1), emf.MILLISECONDS)],
                       {"record": kind, "reason": reason, **properties})

    def route_repair(self, repaired: int, took_ms: float, **properties: Any) -> None:
        """Routes this MASTER found wrong and rewrote, and how long that took (ms)."""
        with self._lock:
            self._emit([emf.Metric(metrics.ROUTE_REPAIRS, repaired, emf.COUNT),
                        emf.Metric(metrics.ROUTE_REPAIR_TIME, round(took_ms, 1), emf.MILLISECONDS)],
                       {"record": "route_repair", **properties})

    def hand_over_held(self, reason: str) -> None:
        """This node is leaving, and keeps the VIP: its peer is not fit to take it (`reason`)."""
        with self._lock:
            self._emit([emf.Metric(metrics.HAND_OVERS_HELD, 1, emf.COUNT)], {"record": "hand_over_held",
                                                                            "reason": reason})

    def haproxy(self, listeners: Sequence[ListenerSample], backends: Sequence[BackendSample],
                detailed: bool = True) -> None:
        """One record per listener and per backend.  A counter without a baseline yet (the first
        sample) is left out.  Not `detailed`: only each backend's servers up and servers (the
        stack's alarms read them), no listener record and no response time."""
        with self._lock:
            for lst in listeners if detailed else ():
                values = [emf.Metric(metrics.CURRENT_SESSIONS, lst.current_sessions, emf.COUNT)]
                if lst.requests is not None:
                    values.append(emf.Metric(metrics.REQUESTS, lst.requests, emf.COUNT))
                if lst.http_5xx is not None:
                    values.append(emf.Metric(metrics.HTTP_5XX, lst.http_5xx, emf.COUNT))
                self._emit(values, {"record": "listener"}, {**self.dimensions, metrics.LISTENER: lst.name})
            for b in backends:
                values = [emf.Metric(metrics.SERVERS_UP, b.servers_up, emf.COUNT),
                          emf.Metric(metrics.SERVERS, b.servers, emf.COUNT)]
                if detailed and b.response_time_ms is not None:
                    values.append(emf.Metric(metrics.RESPONSE_TIME, b.response_time_ms, emf.MILLISECONDS))
                self._emit(values, {"record": "backend"}, {**self.dimensions, metrics.BACKEND: b.name})

