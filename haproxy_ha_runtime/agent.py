"""The resident node agent: feeds keepalived's track_file from HAProxy health, and moves the VIP
routes on MASTER transitions read from keepalived's notify FIFO, with one warm EC2 client.
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import selectors
import stat
import subprocess
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any, Callable

from . import haproxy_stats, lifecycle, live_config, ownership, peer, routes, runtime_info, systemd, telemetry
from . import tls as tls_certs
from .config import NodeConfig, Peer
from .files import LineFile, read_text, write_atomically
from .log import log_event
from .render import marker_address
from .tags import OPERATOR_CHOICE_TAG

MASTER = "MASTER"
BACKUP = "BACKUP"
FAULT = "FAULT"
STOP = "STOP"
# keepalived is not running (or we have not heard from it): never act as MASTER then.
UNKNOWN = "UNKNOWN"
_STATES = {MASTER, BACKUP, FAULT, STOP}


def parse_fifo_line(line: str) -> str | None:
    """The state in a keepalived notify line such as `INSTANCE "haproxy_ha" MASTER 150`."""
    parts = line.split()
    if len(parts) >= 3 and parts[0] == "INSTANCE" and parts[2] in _STATES:
        return parts[2]
    return None


class HealthCheck:
    """Is local HAProxy answering its monitor URI?  Namespace-local: HTTP to 127.0.0.1."""

    def __init__(self, port: int, timeout_s: float, fall: int, rise: int) -> None:
        self.port = port
        self.timeout_s = timeout_s
        self.fall = fall
        self.rise = rise
        # None until the first probe, which decides at once: an agent restarted on a healthy node
        # must not report it unhealthy while it waits for `rise` successes (that would cause a failover).
        self.healthy: bool | None = None
        self._streak = 0

    def probe(self) -> bool:
        """One probe: did GET /healthz answer 200 within the timeout?"""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout_s)
        try:
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    def update(self, ok: bool) -> bool:
        """Feed one probe result; returns True when the health verdict changes."""
        if self.healthy is None:
            self.healthy = ok
            return True
        if ok == self.healthy:
            self._streak = 0
            return False
        self._streak += 1
        if self._streak >= (self.rise if ok else self.fall):
            self.healthy = ok
            self._streak = 0
            return True
        return False


class FifoReader:
    """Reads keepalived's notify FIFO without blocking.  An EOF means keepalived went away."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None
        self._buf = b""

    def open(self) -> int:
        """Open the FIFO for reading (making it first if it is missing); returns its descriptor."""
        try:
            if not stat.S_ISFIFO(os.stat(self.path).st_mode):
                raise RuntimeError(f"{self.path} exists and is not a FIFO")
        except FileNotFoundError:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            os.mkfifo(self.path, 0o600)
        self.fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        return self.fd

    def read_states(self) -> list[str] | None:
        """States from the lines available now; None on EOF (the writer closed the FIFO)."""
        assert self.fd is not None
        try:
            chunk = os.read(self.fd, 65536)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                return []
            raise
        if not chunk:
            return None
        self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        states = [parse_fifo_line(raw.decode(errors="replace")) for raw in lines]
        return [s for s in states if s is not None]

    def close(self) -> None:
        """Close the FIFO and drop any partial line."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self._buf = b""


def _stamp(into: list[float]) -> None:
    into.append(time.monotonic())


def marker_on_lo(marker_cidr: str) -> bool:
    """Is keepalived's marker address on lo?  keepalived adds it only while MASTER."""
    out = subprocess.run(["ip", "-j", "-4", "addr", "show", "dev", "lo"], check=True,
                         capture_output=True, text=True).stdout
    ip = marker_cidr.split("/")[0]
    return any(a.get("local") == ip for link in json.loads(out) for a in link.get("addr_info", []))


def fifo_held_by_another_process(path: str) -> bool:
    """Does a process other than this one hold the FIFO open (keepalived, when it runs)?"""
    target = os.stat(path)
    me = str(os.getpid())
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or pid == me:
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                st = os.stat(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if st.st_ino == target.st_ino and st.st_dev == target.st_dev:
                return True
    return False


def ensure_vip(vip: str) -> None:
    """Put the VIP on lo (idempotent), so this node answers for it once the route points here."""
    subprocess.run(["ip", "addr", "replace", vip + "/32", "dev", "lo"], check=True)


# Written to the priority file while this node has stepped down: keepalived adds it to the
# priority (clamped to 1), so the node stays below its peer, with preempt on or off.
STEP_DOWN_OFFSET = -253


class Agent:
    """Route decisions.  Only a MASTER moves routes to itself, and it stops the moment it is
    not MASTER any more: every write checks the state generation it was started for."""

    def __init__(self, cfg: NodeConfig, client: Any, eni_id: str,
                 log: Callable[..., None] = log_event,
                 invoke_reconciler: Callable[[list[str]], None] | None = None,
                 probe: Callable[[Peer], peer.PeerView] | None = None,
                 metrics: telemetry.Telemetry | None = None) -> None:
        self.cfg = cfg
        # Where this agent's metric records go (None: it writes none).
        self.metrics = metrics
        # Asks a peer for its /state now (the poller keeps `peer_views` fresh with it).
        self.probe = probe
        self.client = client
        self.eni_id = eni_id
        self.log = log
        self.state = UNKNOWN
        self.generation = 0
        # Own HAProxy health, as the run loop last judged it (None: not probed yet).
        self.healthy: bool | None = None
        # Did the routes this agent last read (or wrote and verified) all point here?  Tables set
        # aside are left out of "all"; with every table set aside, no route points here.
        self.routes_here: bool | None = None
        # The route tables that this node, as MASTER, found it cannot write (the route module set
        # them aside: gone, or not its role's to write), with the answer that said so.  The other
        # tables converge without them, and each repair tick tries them again.  Only a MASTER
        # keeps any: they are the MASTER's to retry.
        self.tables_set_aside: dict[str, str] = {}
        # Did the last read-only EC2 call with this node's credentials work (None: not tried yet)?
        self.ec2_ok: bool | None = None
        # Stepped down: the priority file holds STEP_DOWN_OFFSET.  Kept in that file, so that a
        # restarted agent knows it too.
        self.stepped_down = read_text(cfg.paths.priority_file) == f"{STEP_DOWN_OFFSET}\n"
        # While yielding, the health file says "unhealthy", so keepalived leaves MASTER at once.
        self.yield_until = 0.0
        self.peer_views: dict[str, peer.PeerView] = {}
        # The group is terminating this instance: it never takes the routes again.
        self.leaving = False
        self._invoke_reconciler = invoke_reconciler
        self._reconciler_asked_at = -1e9
        self._lock = threading.Lock()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="routes")
        self._job: Future[None] | None = None
        self._state_changed_at = time.monotonic()
        # A new document changed what only a new agent can take: the run loop ends, and
        # `python -m haproxy_ha_runtime agent` exits 75 so that systemd starts it again.
        self.restart_requested = False

    # -- state -------------------------------------------------------------------------------
    def on_state(self, new_state: str, reason: str = "notify_fifo", resumed: bool = False) -> None:
        """Take in keepalived's state.  On MASTER, move the routes here at once (a transition
        means the peer went silent or failed); on MASTER -> BACKUP, hand them to the peer.  A
        MASTER found at start (`resumed`) first checks who should own the routes instead."""
        with self._lock:
            old = self.state
            if new_state == old:
                return
            self.state = new_state
            self.generation += 1
            gen = self.generation
            self._state_changed_at = time.monotonic()
            if new_state != MASTER:
                self.tables_set_aside = {}
        self.log("transition", node=self.cfg.node_name, old=old, new=new_state, reason=reason)
        self.report_state()
        if new_state == MASTER and not self.leaving:
            self._submit(self.check_routes if resumed else self._take_over, gen)
        elif new_state == BACKUP and old == MASTER:
            # We lost an election to a live peer (a healed partition, or preemption): the peer
            # is MASTER now, so hand it the routes that still point here.
            self._submit(self._hand_over, gen)

    def state_report(self) -> dict[str, Any]:
        """What this agent tells its peer at GET /state.  A peer reads the keys it knows and
        ignores the rest (peer.probe_peer), so a key added here is safe with an older peer."""
        return {"node": self.cfg.node_name, "vrrp": self.state, "healthy": self.healthy,
                "stepped_down": self.stepped_down, "leaving": self.leaving, "eni_id": self.eni_id,
                **runtime_info.reported()}

    @property
    def active(self) -> bool:
        """This node serves the VIP: MASTER, HAProxy healthy, and every route it last read is its own."""
        return self.state == MASTER and self.healthy is True and self.routes_here is True

    def report_state(self, force: bool = False) -> None:
        """Write the state metrics if they changed (or `force`: the periodic record)."""
        if self.metrics is not None:
            self.metrics.state(self.state, self.healthy, self.active, self.ec2_ok, force=force,
                               tables_set_aside=sorted(self.tables_set_aside))

    def on_ec2_check(self, views: dict[str, routes.VipRoute] | None) -> None:
        """Take in the periodic read-only EC2 call: the routes it read (None: the call failed)."""
        ok = views is not None
        if ok != self.ec2_ok:
            self.log("ec2_api", node=self.cfg.node_name, reachable=ok)
        self.ec2_ok = ok
        if views is not None and not self.busy:
            # The routes as read now (route work in progress will say so itself when it ends).
            self.routes_here = self._all_writable_here(views)
        self.report_state()

    def _writable(self) -> list[str]:
        """The route tables of the document that are not set aside."""
        return [t for t in self.cfg.route_table_ids if t not in self.tables_set_aside]

    def _all_writable_here(self, views: dict[str, routes.VipRoute]) -> bool:
        """Does every table that is not set aside point here (and is there one)?"""
        writable = self._writable()
        return bool(writable) and _all_here(views, writable, self.eni_id)

    def _note_tables(self, gen: int, set_aside: dict[str, str], writable: Sequence[str]) -> None:
        """Keep `tables_set_aside` while this is still the MASTER of `gen`: add `set_aside`
        (table: why), drop the tables just found `writable` (verified here).  A change is
        logged and written to the state record."""
        with self._lock:
            if self.generation != gen or self.state != MASTER:
                return
            before = self.tables_set_aside
            now = {t: why for t, why in before.items() if t not in writable}
            now.update(set_aside)
            self.tables_set_aside = now
        added = {t: why for t, why in set_aside.items() if t not in before}
        back = sorted(t for t in before if t not in now)
        if added:
            self.log("route_tables_set_aside", node=self.cfg.node_name, tables=added, set_aside=len(now),
                     retry_every_s=self.cfg.timing.repair_interval_s)
        if back:
            self.log("route_tables_back", node=self.cfg.node_name, tables=back, set_aside=len(now))
        if added or back:
            self.report_state()

    @property
    def track_value(self) -> str:
        """What keepalived's health track file should hold: 0 healthy, 1 not (or yielding)."""
        yielding = time.monotonic() < self.yield_until
        return "0\n" if self.healthy and not yielding else "1\n"

    @property
    def priority_value(self) -> str:
        """What keepalived's priority file should hold."""
        return f"{STEP_DOWN_OFFSET if self.stepped_down else 0}\n"

    def _current(self, gen: int, state: str) -> Callable[[], bool]:
        return lambda: self.generation == gen and self.state == state

    def _submit(self, fn: Callable[[int], None], gen: int) -> None:
        self._job = self._worker.submit(fn, gen)

    @property
    def busy(self) -> bool:
        """Is route work (a take-over, hand-over or repair) still running?"""
        return self._job is not None and not self._job.done()

    def _peer(self) -> tuple[Peer | None, peer.PeerView]:
        """The one peer with an ENI, and what we last heard from it."""
        peers = [p for p in self.cfg.peers if p.eni_id]
        if len(self.cfg.peers) != 1 or len(peers) != 1:
            return None, peer.PeerView()
        return peers[0], self.peer_views.get(peers[0].name, peer.PeerView())

    def _ask_reconciler(self, tables: list[str]) -> None:
        """Routes are missing, and this node may only replace routes: ask the reconciler (at
        most once per repair interval)."""
        now = time.monotonic()
        if now - self._reconciler_asked_at < self.cfg.timing.repair_interval_s:
            return
        self._reconciler_asked_at = now
        if self._invoke_reconciler is None:
            self.log("route_missing", node=self.cfg.node_name, tables=tables, reconciler=None)
            return
        try:
            self._invoke_reconciler(tables)
            self.log("route_missing", node=self.cfg.node_name, tables=tables, reconciler="invoked")
        except Exception as e:
            self.log("route_missing", node=self.cfg.node_name, tables=tables, reconciler="failed",
                     error=str(e))

    def _ask_reconciler_for(self, table_id: str) -> None:
        """take_over's on_missing: one table at a time."""
        self._ask_reconciler([table_id])

    # -- route work (runs on the worker thread) ---------------------------------------------
    def _take_over(self, gen: int) -> None:
        still_master = self._current(gen, MASTER)
        if not still_master():
            return
        t0 = time.monotonic()
        noticed_at = self._state_changed_at
        routes_were_here = self.routes_here
        first_write: list[float] = []
        # This node is active now: it no longer stays below its peer.
        self.stepped_down = False
        # No deadline: a MASTER keeps trying until every table is its own, and stops the moment it
        # is not MASTER any more (see the routes module for where the retries live).  A table that
        # cannot be written is set aside, so that it never holds the others (the repair tick
        # tries it again).
        result = routes.take_over(
            self.client, self.cfg.vip, self.cfg.route_table_ids, self.eni_id,
            deadline_s=None, should_continue=still_master, on_first_write=partial(_stamp, first_write),
            on_missing=self._ask_reconciler_for)
        self._note_tables(gen, result.set_aside, [t.route_table_id for t in result.tables if t.ok])
        self.log(
            "route_move", node=self.cfg.node_name, to_eni=self.eni_id,
            attempts=max((t.attempts for t in result.tables), default=0),
            converged=result.converged, cancelled=result.cancelled,
            duration_s=round(result.elapsed_s, 4),
            first_write_after_s=round(first_write[0] - t0, 4) if first_write else None,
            since_transition_s=round(time.monotonic() - self._state_changed_at, 4),
            moved=len(result.moved), tables=len(result.tables),
            failed={t.route_table_id: t.error for t in result.tables if not t.ok and t.error},
            set_aside=sorted(result.set_aside))
        # Done: every table is here, but those set aside, and at least one is.
        settled = (not result.cancelled and any(t.ok for t in result.tables)
                   and all(t.ok or t.action == routes.SET_ASIDE for t in result.tables))
        if settled:
            self.routes_here = True
            self.report_state()
            if self.metrics is not None:
                took_ms = (time.monotonic() - noticed_at) * 1000.0
                threading.Thread(target=self._count_take_over, args=(routes_were_here, len(result.tables), took_ms),
                                 name="take-over-kind", daemon=True).start()

    def _count_take_over(self, routes_were_here: bool | None, tables: int, took_ms: float) -> None:
        """Ask the peer how it is now, and count the take-over as a failover or a planned move
        (telemetry.classify_take_over).  Off the route worker: the probe may wait for an answer."""
        p, view = self._peer()
        if p is not None and self.probe is not None:
            view = self.probe(p)
        verdict = telemetry.classify_take_over(view, routes_were_here)
        if verdict is None or self.metrics is None:
            return
        kind, reason = verdict
        self.log(kind, node=self.cfg.node_name, took_ms=round(took_ms, 1), reason=reason, tables=tables,
                 peer_reach=view.reach, peer_vrrp=view.vrrp)
        self.metrics.take_over(kind, took_ms, reason, tables=tables, routes_were_here=routes_were_here,
                               peer_reach=view.reach, peer_vrrp=view.vrrp)

    def _mine(self, views: dict[str, routes.VipRoute]) -> list[str]:
        """The tables whose VIP route points at this node."""
        return [t for t, v in views.items() if v.eni_id == self.eni_id]

    def _give_routes_to_peer(self, reason: str, should_continue: Callable[[], bool],
                             mine: list[str] | None = None, deadline_s: float | None = None
                             ) -> routes.MoveResult | None:
        """Point every route that targets this node at the peer (`mine`: those tables, when the
        caller has just read them), within `deadline_s` (default: the take-over deadline).  The
        move's result; None when none was here, or the move could not start (logged)."""
        p, _view = self._peer()
        if p is None:
            return None  # With several peers we cannot tell which one to give them to.
        assert p.eni_id is not None
        if mine is None:
            try:
                mine = self._mine(routes.describe_vip_routes(self.client, self.cfg.vip, self.cfg.route_table_ids))
            except Exception as e:
                self.log("hand_over_failed", node=self.cfg.node_name, reason=reason, error=str(e))
                return None
        if not mine:
            self.routes_here = False
            self.report_state()
            return None
        if not should_continue():
            return None
        result = routes.take_over(
            self.client, self.cfg.vip, mine, p.eni_id,
            deadline_s=self.cfg.timing.takeover_deadline_s if deadline_s is None else deadline_s,
            should_continue=should_continue)
        if result.moved:
            self.routes_here = False
            self.report_state()
        self.log("route_hand_over", node=self.cfg.node_name, reason=reason, to_eni=p.eni_id,
                 converged=result.converged, cancelled=result.cancelled, duration_s=round(result.elapsed_s, 4),
                 moved=len(result.moved))
        return result

    def _peer_instance_state(self, p: Peer) -> str | None:
        """The state of the instance that carries the peer's ENI (None: no instance does); EC2's
        errors reach the caller."""
        assert p.eni_id is not None
        owner = routes.eni_owners(self.client, [p.eni_id]).get(p.eni_id)
        return None if owner is None else owner.instance_state

    def _hand_over(self, gen: int) -> None:
        self._give_routes_to_peer("lost the election", self._current(gen, BACKUP))

    def on_health(self, healthy: bool) -> None:
        """Take in the run loop's health verdict.  A node whose HAProxy fails gives its routes to
        a healthy peer at once, rather than waiting for the peer to notice."""
        self.healthy = healthy
        self.report_state()
        _p, view = self._peer()
        if not healthy and not view.unhealthy_haproxy and not self.busy:
            self._submit(lambda _gen: self._hand_over_unhealthy(), self.generation)

    def maybe_hand_over_unhealthy(self) -> None:
        """On a repair tick: a node whose HAProxy does not serve, and which may still hold routes
        (an earlier hand-over failed, or the peer could not take them then), tries again."""
        if self.healthy is False and self.routes_here is not False and not self.leaving and not self.busy:
            self._submit(lambda _gen: self._hand_over_unhealthy(), self.generation)

    def _hand_over_unhealthy(self) -> None:
        p, view = self._peer()
        if p is None or p.eni_id is None:
            return
        if self.probe is not None:
            # The poller's view may be a fraction of a second old, and both HAProxies may have
            # failed together: ask the peer again before handing it anything.
            view = self.probe(p)
            self.peer_views[p.name] = view
        peer_running = None
        reason = "own HAProxy is unhealthy"
        if not view.healthy_haproxy and not view.unhealthy_haproxy:
            # The peer cannot be heard: what EC2 says of its instance decides (ownership).
            try:
                state = self._peer_instance_state(p)
                peer_running = None if state is None else state == "running"
            except Exception as e:
                self.log("hand_over_failed", node=self.cfg.node_name, reason=reason, error=str(e))
                return
            reason = "own HAProxy is unhealthy, and the peer cannot be heard but its instance is running"
        if ownership.unhealthy_gives_to_peer(view, peer_running):
            self._give_routes_to_peer(reason, lambda: self.healthy is False)

    def step_down(self, gen: int) -> None:
        """The one way a healthy node gives up the VIP: point every route at the healthy peer,
        stay below its priority, and leave MASTER now so that the peer takes over VRRP."""
        still_master = self._current(gen, MASTER)
        self._give_routes_to_peer("step down", still_master)
        if not still_master():
            return
        self.stepped_down = True
        # Report "unhealthy" to keepalived for a moment: it leaves MASTER with a priority-0
        # advert, and the peer becomes MASTER at once.  The run loop ends the yield as soon as
        # the peer says it is MASTER.
        self.yield_until = time.monotonic() + 3 * self.cfg.timing.advert_int_s + 2.0
        p, _view = self._peer()
        self.log("step_down", node=self.cfg.node_name, peer=p.name if p is not None else None)

    def end_yield_if_done(self) -> None:
        """Stop yielding once keepalived has left MASTER and the peer has taken it over."""
        if self.yield_until and not self.leaving and self.state != MASTER and self._peer()[1].vrrp == MASTER:
            self.yield_until = 0.0

    def leave(self, deadline: float, pause: Callable[[float], object] = time.sleep,
              on_held: Callable[[str | None], None] | None = None) -> str | None:
        """This instance is about to be terminated (`deadline`: time.monotonic() by which the hook
        must be completed).  Returns None once every route is verified at the peer (or none was
        here), else why not by the deadline.

        It never takes the routes again, and a take-over still running is cancelled and waited
        for, so that no late write points a table back here.  It hands the VIP only to a peer fit
        to serve (peer_unfit); until then it keeps the VIP and serves, and says why.  Once the peer
        is fit it steps down for good (keepalived hears "unhealthy" until the end, so the peer is
        MASTER) and points every route at it, keeping at it while the API throttles or the peer
        is slow, until every route is verified there.  `on_held` hears each new reason it holds
        the VIP for, and None once it is handed over (the status object says so)."""
        with self._lock:
            self.leaving = True
            self.generation += 1  # a running take-over sees it and stops
        job = self._job
        if job is not None:
            try:
                job.result(timeout=max(0.0, deadline - time.monotonic()))
            except Exception as e:  # a take-over that failed has stopped all the same
                self.log("leave_wait_failed", node=self.cfg.node_name, error=str(e))
        said: str | None = None

        def handed_over() -> None:
            # For good: keepalived hears "unhealthy" until the end, so the peer stays MASTER.
            self.stepped_down = True
            self.yield_until = float("inf")
            if said is not None and on_held is not None:
                on_held(None)

        interval = min(1.0, self.cfg.timing.repair_interval_s)
        while time.monotonic() < deadline:
            try:
                mine = self._mine(routes.describe_vip_routes(self.client, self.cfg.vip, self.cfg.route_table_ids))
            except Exception as e:
                why = f"the route tables cannot be read: {e}"
            else:
                if not mine:  # nothing to hand over, whatever the peer's state
                    self.routes_here = False
                    self.report_state()
                    handed_over()
                    return None
                unfit = self.peer_unfit()
                if unfit is not None:
                    why = unfit
                    if self.yield_until == float("inf"):
                        # The peer stopped being fit mid-way: serve again, and let keepalived elect us.
                        self.yield_until = 0.0
                else:
                    self.stepped_down = True
                    self.yield_until = float("inf")
                    result = self._give_routes_to_peer(
                        "instance terminating", lambda: True, mine=mine,
                        deadline_s=max(0.0, min(self.cfg.timing.takeover_deadline_s, deadline - time.monotonic())))
                    if result is None or result.converged:
                        handed_over()
                        return None
                    failed = {t.route_table_id: t.error for t in result.tables if not t.ok}
                    why = f"{len(failed)} route table(s) not yet at peer {self.cfg.peers[0].name}: " + "; ".join(
                        f"{t}: {e or 'not verified'}" for t, e in sorted(failed.items()))
            if why != said:
                said = why
                self.log("leave_held", node=self.cfg.node_name, reason=why,
                         left_s=round(max(0.0, deadline - time.monotonic()), 1))
                if self.metrics is not None:
                    self.metrics.hand_over_held(why)
                if on_held is not None:
                    on_held(why)
            pause(min(interval, max(0.0, deadline - time.monotonic())))
        return said or "the hook's deadline came first"

    def peer_unfit(self) -> str | None:
        """Why the peer cannot take the VIP from a leaving node (None: it can), by the rules of an
        operator's move: its agent answers, its HAProxy is healthy, it is not leaving itself, and
        its instance is running."""
        p, view = self._peer()
        if p is None or p.eni_id is None:
            return "no one peer with an ENI to hand the VIP to"
        if self.probe is not None:
            view = self.probe(p)
            self.peer_views[p.name] = view
        if view.reach != peer.REACHED:
            return f"peer {p.name} does not answer ({view.reach})"
        if view.healthy is not True:
            return f"peer {p.name}'s HAProxy is not healthy"
        if view.leaving:
            return f"peer {p.name} is leaving too"
        try:
            state = self._peer_instance_state(p)
        except Exception as e:
            return f"peer {p.name}'s instance cannot be read: {e}"
        if state != "running":
            return f"peer {p.name}'s instance is not running ({state or 'no instance'})"
        return None

    def check_routes(self, gen: int) -> None:
        """While MASTER: decide for every table who should own its route (ownership.decide),
        then take, step down, or ask the reconciler for a missing route."""
        still_master = self._current(gen, MASTER)
        if not still_master() or not self.healthy or self.leaving:
            return
        p, view = self._peer()
        peer_eni = p.eni_id if p is not None else None
        try:
            views = routes.describe_vip_routes(self.client, self.cfg.vip, self.cfg.route_table_ids)
            owners = routes.eni_owners(self.client, [self.eni_id] + ([peer_eni] if peer_eni else []))
        except Exception as e:
            self.log("repair_check_failed", node=self.cfg.node_name, error=str(e))
            return
        peer_owner = owners.get(peer_eni) if peer_eni else None
        peer_running = None if peer_owner is None else peer_owner.instance_state == "running"
        choice = next((o.eni_tags[OPERATOR_CHOICE_TAG] for o in owners.values()
                       if OPERATOR_CHOICE_TAG in o.eni_tags), None)
        verdicts = {t: ownership.decide(v, self.eni_id, peer_eni, view, peer_running, choice)
                    for t, v in views.items()}
        here = [t for t, verdict in verdicts.items() if verdict == ownership.OK]
        # A table that a describe by its ID leaves out is gone, or not this account's: set it aside.
        self._note_tables(gen, {t: "route table not found" for t in self.cfg.route_table_ids if t not in views},
                          here)
        self.routes_here = self._all_writable_here(views)
        self.report_state()
        missing = [t for t, verdict in verdicts.items() if verdict == ownership.MISSING]
        if missing:
            self._ask_reconciler(missing)
        take = [t for t, verdict in verdicts.items() if verdict == ownership.TAKE]
        if take and still_master():
            self.stepped_down = False
            # Tables set aside before, tried again and still not writable, are no news: no log line.
            only_set_aside = all(t in self.tables_set_aside for t in take)
            result = self._repair(gen, take, still_master)
            if result.moved and self.metrics is not None:
                self.metrics.route_repair(len(result.moved), result.elapsed_s * 1000.0, converged=result.converged,
                                          peer_reach=view.reach, peer_vrrp=view.vrrp, peer_running=peer_running)
            if result.moved or not only_set_aside:
                self.log("route_repair", node=self.cfg.node_name, to_eni=self.eni_id, tables=take,
                         converged=result.converged, duration_s=round(result.elapsed_s, 4),
                         peer=view.reach, peer_vrrp=view.vrrp, peer_running=peer_running,
                         set_aside=sorted(t for t in take if t in self.tables_set_aside))
            here += [t.route_table_id for t in result.tables if t.ok]
            writable = self._writable()
            if writable and all(t in here for t in writable):
                self.routes_here = True
                self.report_state()
        elif ownership.STEP_DOWN in verdicts.values() and still_master():
            self.step_down(gen)
        elif all(v == ownership.OK for v in verdicts.values()):
            # Every route is here and this node is MASTER: it is the active one, not stepped down.
            self.stepped_down = False

    def _repair(self, gen: int, take: list[str], still_master: Callable[[], bool]) -> routes.MoveResult:
        """Point the tables `take` here, each within the take-over deadline, but a table set aside
        before with one write and one read back (deadline 0): a table that still cannot be written
        costs one write a repair tick, and one that can again is repaired.  One result for both,
        in `take`'s order."""
        fresh = [t for t in take if t not in self.tables_set_aside]
        again = [t for t in take if t in self.tables_set_aside]
        parts = [routes.take_over(self.client, self.cfg.vip, tables, self.eni_id, deadline_s=deadline_s,
                                  should_continue=still_master, on_missing=self._ask_reconciler_for)
                 for tables, deadline_s in ((fresh, self.cfg.timing.takeover_deadline_s), (again, 0.0)) if tables]
        by_table = {r.route_table_id: r for part in parts for r in part.tables}
        result = routes.MoveResult(self.eni_id, [by_table[t] for t in take], sum(p.elapsed_s for p in parts),
                                   any(p.cancelled for p in parts), [e for p in parts for e in p.errors])
        self._note_tables(gen, result.set_aside, [t.route_table_id for t in result.tables if t.ok])
        return result

    def maybe_repair(self) -> None:
        """Start a repair, if this node is MASTER and no route work is running."""
        with self._lock:
            gen, state = self.generation, self.state
        if state == MASTER and not self.busy:
            self._submit(self.check_routes, gen)

    def shutdown(self) -> None:
        """Stop: cancel route work in progress (it sees the state change) and wait for it."""
        with self._lock:
            self.state = STOP
            self.generation += 1
        self._worker.shutdown(wait=True)


def _poll_peers(agent: Agent, probe: Callable[[Peer], peer.PeerView], interval_s: float,
                stop: threading.Event) -> None:
    """Keep `agent.peer_views` fresh: one /state probe per peer every `interval_s`."""
    while not stop.is_set():
        started = time.monotonic()
        for p in agent.cfg.peers:
            agent.peer_views[p.name] = probe(p)
        stop.wait(max(0.0, interval_s - (time.monotonic() - started)))


def _ask_replacement(cfg: NodeConfig, platform: lifecycle.Platform, log: Callable[..., None]) -> None:
    try:
        lifecycle.report_unhealthy(platform.client("autoscaling"), platform.instance_id())
        log("replacement_asked", node=cfg.node_name, unhealthy_for_s=cfg.replace_unhealthy_after_s)
    except Exception as e:
        log("replacement_ask_failed", node=cfg.node_name, error=str(e))


def _watch_config(agent: Agent, live: live_config.LiveConfig, stop: threading.Event,
                  log: Callable[..., None]) -> None:
    """Poll the node's document in S3 and apply each new version (live_config)."""
    while True:
        try:
            outcome = live.poll_once()
        except Exception as e:  # S3 does not answer: try again at the next poll
            log("config_poll_failed", node=agent.cfg.node_name, error=str(e))
            outcome = None
        if outcome is not None:
            log("config_" + outcome.state, node=agent.cfg.node_name, version=outcome.version, reason=outcome.reason,
                haproxy_reloaded=outcome.haproxy_reloaded, keepalived_reloaded=outcome.keepalived_reloaded,
                restart_agent=outcome.restart_agent)
            if outcome.cfg is not None and not outcome.restart_agent:
                agent.cfg = outcome.cfg  # only AGENT_LIVE_FIELDS differ: the listeners, the drain
            if outcome.restart_agent:
                agent.restart_requested = True
                stop.set()
                return
        if stop.wait(live.cfg.config_poll_s):
            return


def _watch_tls(agent: Agent, store: tls_certs.TlsStore, live: live_config.LiveConfig | None, document_path: str,
               stop: threading.Event, log: Callable[..., None]) -> None:
    """Every tls_poll_s, bring the TLS listeners' certificates to their secrets' current versions;
    a new one reaches HAProxy through a reload (live_config.apply_tls)."""
    while not stop.wait(agent.cfg.tls_poll_s):
        cfg = agent.cfg  # live config may have changed the listeners
        try:
            if live is not None:
                changed, error = live.poll_tls()
            else:
                changed, error = live_config.apply_tls(cfg, store, document_path)
        except Exception as e:  # never let the poller die: try again at the next poll
            log("tls_poll_failed", node=cfg.node_name, error=str(e))
            continue
        if changed:
            # Versions and problems only: never any part of a secret's value.
            log("tls_" + ("refused" if error else "applied"), node=cfg.node_name, reason=error,
                versions={name: s.served for name, s in store.states.items()}, problems=store.problems(cfg))


def _watch_metrics(agent: Agent, interval_s: float, stop: threading.Event) -> None:
    """Every `interval_s`: the state record, and HAProxy's numbers: each backend's servers up
    always (the stack's backend-down alarms read them), per listener and response times unless
    the document turns them off (detailed_metrics)."""
    sampler = haproxy_stats.Sampler()
    while True:
        agent.report_state(force=True)
        cfg = agent.cfg  # live config may have changed the listeners
        if agent.metrics is not None:
            try:
                answer = haproxy_stats.query(cfg.paths.haproxy_socket, haproxy_stats.SAMPLE_COMMAND)
                listeners, backends = sampler.sample(
                    answer, [(lst.name, lst.mode) for lst in cfg.listeners],
                    [(lst.name, lst.mode) for lst in cfg.listeners if lst.backends and lst.static_reply is None])
                agent.metrics.haproxy(listeners, backends, detailed=cfg.detailed_metrics)
            except (OSError, RuntimeError):
                pass  # HAProxy does not answer: its health metric says so
        if stop.wait(interval_s):
            return


def _all_here(views: dict[str, routes.VipRoute], tables: Sequence[str], eni_id: str) -> bool:
    """Does every table's VIP route point at `eni_id`, active?"""
    return all(t in views and views[t].state == routes.ROUTE_ACTIVE and views[t].eni_id == eni_id for t in tables)


def _watch_ec2(agent: Agent, interval_s: float, stop: threading.Event) -> None:
    """Every `interval_s`, one read-only EC2 call with this node's credentials (MASTER and BACKUP
    alike), so that a survivor that could not take over is known before it is needed: the call a
    take-over needs first (DescribeRouteTables of its tables).  What it reads tells a BACKUP
    where the routes were before it becomes MASTER."""
    while True:
        cfg = agent.cfg
        try:
            views: dict[str, routes.VipRoute] | None = routes.describe_vip_routes(agent.client, cfg.vip,
                                                                                cfg.route_table_ids)
        except Exception:
            views = None
        agent.on_ec2_check(views)
        if stop.wait(interval_s):
            return


def _watch_lifecycle(agent: Agent, platform: lifecycle.Platform, interval_s: float, stop: threading.Event,
                     log: Callable[..., None], live: live_config.LiveConfig | None = None) -> None:
    """When the group is about to terminate this instance: hand over, drain, complete the hook."""
    while not stop.wait(interval_s):
        cfg = agent.cfg  # live config may have changed the listeners
        try:
            state = platform.lifecycle_state()
        except Exception as e:
            log("lifecycle_check_failed", node=cfg.node_name, error=str(e))
            continue
        if state != lifecycle.TERMINATED:
            continue
        log("terminating", node=cfg.node_name, drain_timeout_s=cfg.drain_timeout_s)
        # The hook holds the instance for the drain plus HANDOVER_MARGIN_S: the hand-over may take
        # the margin (less a few seconds to complete the hook), the drain its own time after it.
        why = agent.leave(time.monotonic() + lifecycle.HANDOVER_MARGIN_S - lifecycle.COMPLETE_SLACK_S,
                          on_held=live.note_leaving if live is not None else None)
        if why is not None:
            log("leave_gave_up", node=cfg.node_name, reason=why)
        drained, waited = lifecycle.drain(
            partial(lifecycle.requests_in_flight, cfg.paths.haproxy_socket,
                    [lst.name for lst in cfg.listeners if lst.backends and lst.static_reply is None]),
            cfg.drain_timeout_s)
        log("drained", node=cfg.node_name, drained=drained, waited_s=round(waited, 3))
        while not stop.is_set():
            try:
                lifecycle.complete_termination(platform.client("autoscaling"), cfg, platform.instance_id())
                log("lifecycle_complete", node=cfg.node_name)
                return
            except Exception as e:
                log("lifecycle_complete_failed", node=cfg.node_name, error=str(e))
                stop.wait(interval_s)
        return


def run(cfg: NodeConfig, client: Any, eni_id: str, stop: threading.Event | None = None,
        log: Callable[..., None] = log_event,
        invoke_reconciler: Callable[[list[str]], None] | None = None,
        peer_address: Callable[[Peer], tuple[str, int]] | None = None,
        platform: lifecycle.Platform | None = None, live: live_config.LiveConfig | None = None,
        tls: tls_certs.TlsStore | None = None, document_path: str | None = None,
        metrics_interval_s: float = telemetry.INTERVAL_S) -> Agent:
    """The agent's main loop: health ticks, FIFO lines, repair ticks, until `stop` is set.
    Returns the agent (its `restart_requested` says why it stopped).

    Beside it run the peer poller (the peer's /state, through its stats port, or wherever
    `peer_address` says), the server of this agent's own /state on 127.0.0.1, and, with `live`,
    the poller of the node's document in S3, and, with `tls`, the poller of the TLS listeners'
    secrets (which re-renders from `document_path`).  With a `pair_name` in the document, the
    agent writes metric records to its metrics file (telemetry): its state and HAProxy's numbers
    every `metrics_interval_s`, after a read-only EC2 call as often, and every change and event.
    """
    stop = stop or threading.Event()
    t = cfg.timing
    address = peer_address or (lambda p: (p.ip, cfg.stats_port))
    probe_timeout_s = min(1.0, max(0.2, 2 * t.advert_int_s))

    def probe(p: Peer) -> peer.PeerView:
        return peer.probe_peer(*address(p), probe_timeout_s)

    metrics = (telemetry.Telemetry(cfg.pair_name, cfg.node_name, LineFile(cfg.paths.metrics_log).write, log)
               if cfg.pair_name else None)
    agent = Agent(cfg, client, eni_id, log, invoke_reconciler, probe, metrics)
    health = HealthCheck(cfg.stats_port, timeout_s=max(0.05, min(0.5, t.health_interval_s)),
                         fall=t.health_fall, rise=t.health_rise)
    server = peer.StateServer(cfg.agent_port, agent.state_report).start()
    poller_stop = threading.Event()
    poller = threading.Thread(
        target=_poll_peers, name="peer-poller", daemon=True,
        args=(agent, probe, min(1.0, max(0.2, 4 * t.health_interval_s)), poller_stop))
    poller.start()
    watcher = None
    if cfg.auto_scaling_group and cfg.lifecycle_hook and platform is not None:
        watcher = threading.Thread(target=_watch_lifecycle, name="lifecycle", daemon=True,
                                   args=(agent, platform, min(5.0, t.repair_interval_s), poller_stop, log, live))
        watcher.start()
    # Metrics only: the state and HAProxy's numbers, and the periodic EC2 call.
    side_threads = [] if metrics is None else [
        threading.Thread(target=_watch_metrics, name="metrics", daemon=True,
                         args=(agent, metrics_interval_s, poller_stop)),
        threading.Thread(target=_watch_ec2, name="ec2-check", daemon=True,
                         args=(agent, metrics_interval_s, poller_stop)),
    ]
    config_watcher = None
    if live is not None:
        config_watcher = threading.Thread(target=_watch_config, name="live-config", daemon=True,
                                          args=(agent, live, poller_stop, log))
    tls_watcher = None
    if tls is not None and document_path is not None:
        tls_watcher = threading.Thread(target=_watch_tls, name="tls", daemon=True,
                                       args=(agent, tls, live, document_path, poller_stop, log))
    unhealthy_since: float | None = None
    replacement_asked = False
    fifo = FifoReader(cfg.paths.notify_fifo)
    sel = selectors.DefaultSelector()
    sel.register(fifo.open(), selectors.EVENT_READ)
    next_health = time.monotonic()
    next_repair = time.monotonic() + t.repair_interval_s
    log("agent_start", node=cfg.node_name, eni=eni_id, vip=cfg.vip, tables=len(cfg.route_table_ids),
        profile=cfg.profile, advert_int_s=t.advert_int_s, health_interval_s=t.health_interval_s,
        stepped_down=agent.stepped_down)
    # keepalived reports a state only when it changes.  If this agent was restarted while
    # keepalived is MASTER, no line will come: recognise that state from keepalived's marker
    # address on lo, but only while a running keepalived holds the FIFO (a crashed one leaves
    # the marker behind).  It is not a transition: check who should own the routes first.
    resumed_master = marker_on_lo(marker_address(cfg)) and fifo_held_by_another_process(cfg.paths.notify_fifo)
    notifier = systemd.Notifier()
    # The FIFO is open and /state is served: keepalived (ordered after this unit) may start.
    notifier.ready()
    if config_watcher is not None:
        config_watcher.start()
    if tls_watcher is not None:
        tls_watcher.start()
    for thread in side_threads:
        thread.start()
    try:
        while not stop.is_set() and not agent.restart_requested:
            # A loop that stalls stops these pings, and systemd restarts the agent (WatchdogSec).
            notifier.ping()
            now = time.monotonic()
            if now >= next_health:
                ok = health.probe()
                if health.update(ok):
                    log("health", node=cfg.node_name, healthy=health.healthy)
                    agent.on_health(bool(health.healthy))
                    if resumed_master:
                        resumed_master = False
                        agent.on_state(MASTER, reason="keepalived was already MASTER when the agent started",
                                       resumed=True)
                agent.end_yield_if_done()
                unhealthy_since = None if health.healthy else (unhealthy_since or now)
                if (unhealthy_since is not None and not replacement_asked and platform is not None
                        and cfg.auto_scaling_group and now - unhealthy_since >= cfg.replace_unhealthy_after_s):
                    # systemd gave up restarting HAProxy, or it keeps failing: let the group replace us.
                    replacement_asked = True
                    threading.Thread(target=_ask_replacement, args=(cfg, platform, log), daemon=True).start()
                # keepalived resets the health file when it starts (init_file ... overwrite):
                # re-check both files on every tick, not only when the verdict changes.
                for path, value in ((cfg.paths.track_file, agent.track_value),
                                    (cfg.paths.priority_file, agent.priority_value)):
                    if read_text(path) != value:
                        write_atomically(path, value)
                next_health = max(next_health + t.health_interval_s, time.monotonic())
            if now >= next_repair:
                agent.maybe_repair()
                agent.maybe_hand_over_unhealthy()
                next_repair = now + t.repair_interval_s
            timeout = max(0.0, min(next_health, next_repair) - time.monotonic())
            for _key, _ in sel.select(timeout):
                states = fifo.read_states()
                if states is None:
                    # keepalived closed the FIFO (stopped or crashed): we are not MASTER now.
                    agent.on_state(UNKNOWN, reason="keepalived closed the notify FIFO")
                    sel.unregister(fifo.fd)  # type: ignore[arg-type]
                    fifo.close()
                    sel.register(fifo.open(), selectors.EVENT_READ)
                    continue
                for state in states:
                    agent.on_state(state)
    finally:
        notifier.stopping()
        poller_stop.set()
        server.stop()
        sel.close()
        fifo.close()
        agent.shutdown()
        poller.join(5)
        if watcher is not None:
            watcher.join(5)
        if config_watcher is not None:
            config_watcher.join(5)
        if tls_watcher is not None:
            tls_watcher.join(5)
        for thread in side_threads:
            thread.join(5)
        log("agent_stop", node=cfg.node_name, restart_requested=agent.restart_requested)
    return agent
