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
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any, Callable

from . import routes
from .config import NodeConfig
from .files import read_text, write_atomically
from .log import log_event
from .render import marker_address

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


class Agent:
    """Route decisions.  Only a MASTER moves routes to itself, and it stops the moment it is
    not MASTER any more: every write checks the state generation it was started for."""

    def __init__(self, cfg: NodeConfig, client: Any, eni_id: str,
                 log: Callable[..., None] = log_event) -> None:
        self.cfg = cfg
        self.client = client
        self.eni_id = eni_id
        self.log = log
        self.state = UNKNOWN
        self.generation = 0
        self._lock = threading.Lock()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="routes")
        self._job: Future[None] | None = None
        self._state_changed_at = time.monotonic()

    # -- state -------------------------------------------------------------------------------
    def on_state(self, new_state: str, reason: str = "notify_fifo") -> None:
        """Take in keepalived's state; on MASTER start moving the routes here, on MASTER -> BACKUP
        hand them to the peer."""
        with self._lock:
            old = self.state
            if new_state == old:
                return
            self.state = new_state
            self.generation += 1
            gen = self.generation
            self._state_changed_at = time.monotonic()
        self.log("transition", node=self.cfg.node_name, old=old, new=new_state, reason=reason)
        if new_state == MASTER:
            self._submit(self._take_over, gen)
        elif new_state == BACKUP and old == MASTER:
            # We lost an election to a live peer (a healed partition, or preemption): the peer
            # is MASTER now, so hand it the routes that still point here.
            self._submit(self._hand_over, gen)

    def _current(self, gen: int, state: str) -> Callable[[], bool]:
        return lambda: self.generation == gen and self.state == state

    def _submit(self, fn: Callable[[int], None], gen: int) -> None:
        self._job = self._worker.submit(fn, gen)

    @property
    def busy(self) -> bool:
        """Is route work (a take-over, hand-over or repair) still running?"""
        return self._job is not None and not self._job.done()

    # -- route work (runs on the worker thread) ---------------------------------------------
    def _take_over(self, gen: int) -> None:
        still_master = self._current(gen, MASTER)
        if not still_master():
            return
        t0 = time.monotonic()
        first_write: list[float] = []
        # No deadline: a MASTER keeps trying until every table is its own, and stops the moment it
        # is not MASTER any more (see the routes module for where the retries live).
        result = routes.take_over(
            self.client, self.cfg.vip, self.cfg.route_table_ids, self.eni_id,
            deadline_s=None, should_continue=still_master, on_first_write=partial(_stamp, first_write))
        self.log(
            "route_move", node=self.cfg.node_name, to_eni=self.eni_id,
            attempts=max((t.attempts for t in result.tables), default=0),
            converged=result.converged, cancelled=result.cancelled,
            duration_s=round(result.elapsed_s, 4),
            first_write_after_s=round(first_write[0] - t0, 4) if first_write else None,
            since_transition_s=round(time.monotonic() - self._state_changed_at, 4),
            moved=len(result.moved), tables=len(result.tables),
            failed={t.route_table_id: t.error for t in result.tables if not t.ok and t.error})

    def _hand_over(self, gen: int) -> None:
        peers = [p for p in self.cfg.peers if p.eni_id]
        if len(self.cfg.peers) != 1 or len(peers) != 1:
            return  # With several peers we cannot tell which one won; the winner's repair will do.
        still_backup = self._current(gen, BACKUP)
        try:
            views = routes.describe_vip_routes(self.client, self.cfg.vip, self.cfg.route_table_ids)
        except Exception as e:
            self.log("hand_over_failed", node=self.cfg.node_name, error=str(e))
            return
        mine = [t for t, v in views.items() if v.eni_id == self.eni_id]
        if not mine or not still_backup():
            return
        peer_eni = peers[0].eni_id
        assert peer_eni is not None
        result = routes.take_over(self.client, self.cfg.vip, mine, peer_eni,
                                  deadline_s=self.cfg.timing.takeover_deadline_s, should_continue=still_backup)
        self.log("route_hand_over", node=self.cfg.node_name, to_eni=peer_eni, converged=result.converged,
                 cancelled=result.cancelled, duration_s=round(result.elapsed_s, 4), moved=len(result.moved))

    def repair(self, gen: int) -> None:
        """While MASTER: point missing, blackholed or dead-node routes here.  A route at a live
        peer is left alone (split brain is harmless while every route points at a live node)."""
        still_master = self._current(gen, MASTER)
        if not still_master():
            return
        try:
            views = routes.describe_vip_routes(self.client, self.cfg.vip, self.cfg.route_table_ids)
            elsewhere = {v.eni_id for v in views.values()
                         if v.state == routes.ROUTE_ACTIVE and v.eni_id and v.eni_id != self.eni_id}
            states = routes.instance_states_by_eni(self.client, elsewhere) if elsewhere else {}
        except Exception as e:
            self.log("repair_check_failed", node=self.cfg.node_name, error=str(e))
            return
        live = {self.eni_id} | {eni for eni, s in states.items() if s == "running"}
        missing_tables = [t for t in self.cfg.route_table_ids if t not in views]
        broken = [t for t, v in views.items() if routes.needs_repair(v, live)]
        if missing_tables:
            self.log("repair_tables_not_found", node=self.cfg.node_name, tables=missing_tables)
        if not broken or not still_master():
            return
        result = routes.take_over(self.client, self.cfg.vip, broken, self.eni_id,
                                  deadline_s=self.cfg.timing.takeover_deadline_s, should_continue=still_master)
        self.log("route_repair", node=self.cfg.node_name, to_eni=self.eni_id, tables=broken,
                 converged=result.converged, duration_s=round(result.elapsed_s, 4))

    def maybe_repair(self) -> None:
        """Start a repair, if this node is MASTER and no route work is running."""
        with self._lock:
            gen, state = self.generation, self.state
        if state == MASTER and not self.busy:
            self._submit(self.repair, gen)

    def shutdown(self) -> None:
        """Stop: cancel route work in progress (it sees the state change) and wait for it."""
        with self._lock:
            self.state = STOP
            self.generation += 1
        self._worker.shutdown(wait=True)


def run(cfg: NodeConfig, client: Any, eni_id: str, stop: threading.Event | None = None,
        log: Callable[..., None] = log_event) -> None:
    """The agent's main loop: health ticks, FIFO lines, repair ticks, until `stop` is set."""
    stop = stop or threading.Event()
    t = cfg.timing
    agent = Agent(cfg, client, eni_id, log)
    health = HealthCheck(cfg.stats_port, timeout_s=max(0.05, min(0.5, t.health_interval_s)),
                         fall=t.health_fall, rise=t.health_rise)
    track_value: str | None = None
    fifo = FifoReader(cfg.paths.notify_fifo)
    sel = selectors.DefaultSelector()
    sel.register(fifo.open(), selectors.EVENT_READ)
    next_health = time.monotonic()
    next_repair = time.monotonic() + t.repair_interval_s
    log("agent_start", node=cfg.node_name, eni=eni_id, vip=cfg.vip, tables=len(cfg.route_table_ids),
        profile=cfg.profile, advert_int_s=t.advert_int_s, health_interval_s=t.health_interval_s)
    # keepalived reports a state only when it changes.  If this agent was restarted while
    # keepalived is MASTER, no line will come: recognise that state from keepalived's marker
    # address on lo, but only while a running keepalived holds the FIFO (a crashed one leaves
    # the marker behind).
    if marker_on_lo(marker_address(cfg)) and fifo_held_by_another_process(cfg.paths.notify_fifo):
        agent.on_state(MASTER, reason="keepalived was already MASTER when the agent started")
    try:
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_health:
                ok = health.probe()
                if health.update(ok):
                    log("health", node=cfg.node_name, healthy=health.healthy)
                track_value = "0\n" if health.healthy else "1\n"
                # keepalived resets the file when it starts (init_file ... overwrite): re-check
                # the content on every tick, not only when the verdict changes.
                if read_text(cfg.paths.track_file) != track_value:
                    write_atomically(cfg.paths.track_file, track_value)
                next_health = max(next_health + t.health_interval_s, time.monotonic())
            if now >= next_repair:
                agent.maybe_repair()
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
        sel.close()
        fifo.close()
        agent.shutdown()
        log("agent_stop", node=cfg.node_name)
