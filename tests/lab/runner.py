"""Runs a failure script (scenario.py) in a lab that is up: the client sends to the VIP the whole
time, each step runs in turn and shows with its time, and every expect gets a verdict.  Then the
checks that hold after every scenario: every route points at one node whose HAProxy is healthy,
the tables agree, the client reaches that node through the VIP, and every answer came from a
lab node.

    result = Runner(lab, parse_file("tests/lab/scenarios/haproxy-crash.txt")).run()

Each line of the live strip covers 100 ms: one letter per request that finished in it, the node
that answered (a or b), or `x` for a failed request.  A request that times out shows as `x` when
the client gives up on it, a second after it was sent.  In a lab with a TLS listener (`lab
tls=on`), a second client sends HTTPS to the VIP, verified against the lab CA, and its requests
follow on the same line after `https`.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from haproxy_ha_runtime import config_lambda

from . import lab as lab_module
from . import observe
from . import tls as lab_tls
from .lab import ClientRun, Lab, LabOptions, wait_until
from .scenario import CLI_DEFAULT_DEADLINE_S, CLI_SLACK_S, REPLACE_BOOT_S, START_MARK, WAITING_EXPECTS, Scenario, Step
from .topology import NODES, VIP

TICK_S = 0.1
CLIENT_INTERVAL_S = 0.01
CLIENT_TIMEOUT_S = 1.0
# The HTTPS client (lab tls=on): a TLS handshake per request, each verified in Python, so a
# quarter of the plain client's rate (the plain one covers every reload at 100 a second too).
HTTPS_INTERVAL_S = 0.04
# A log line reaches us a moment after what it records: look this long past a bound before
# calling it missed (the verdict still compares the logged times with the bound).
GRACE_S = 0.25
POLL_S = 0.02
API_POLL_S = 0.05
# How long a moves count waits for the emulator's log to show the routes the API shows.
EMULATOR_CATCH_UP_S = 3.0
_SIGNALS = {"kill": signal.SIGKILL, "stop": signal.SIGTERM}
# A verdict still open: the expect keeps watching until its bound.
_OPEN = None


def lab_options(scenario: Scenario) -> LabOptions:
    s = scenario.setup
    return LabOptions(profile=s.profile, preempt=s.preempt, tables=s.tables, fault_proxy=scenario.fault_proxy,
                      drain_timeout_s=s.drain_s, backends=s.backends, tls=s.tls, release=s.release)


def compare(op: str, value: int, n: int) -> bool:
    return {"at most": value <= n, "at least": value >= n, "exactly": value == n}[op]


def check_answers(records: list[dict[str, Any]], proto: str | None = None) -> str:
    """Every answer the client got came from a lab node (and, with `proto`, reached the backend
    with that X-Forwarded-Proto), and there was one at least: a check over no answers would pass
    whatever happened."""
    answered = [r for r in records if not r.get("error")]
    if not answered:
        raise AssertionError("the client got no answer at all")
    others = {str(r.get("node")) for r in answered} - set(NODES)
    if others:
        raise AssertionError(f"answers from {sorted(others)}")
    if proto is not None:
        protos = {r.get("proto") for r in answered} - {proto}
        if protos:
            raise AssertionError(f"the backend saw X-Forwarded-Proto {sorted(map(str, protos))}, not only {proto}")
    return f"yes, all {len(answered)}"


def count_answers(records: list[dict[str, Any]]) -> dict[str, Any]:
    """How many requests, how many failed, and who answered the rest."""
    answered: dict[str, int] = {}
    for r in records:
        if not r.get("error"):
            answered[str(r.get("node"))] = answered.get(str(r.get("node")), 0) + 1
    return {"requests": len(records), "failed": sum(1 for r in records if r.get("error")), "answered": answered}


def in_time(want: str, now: str | None, since: float | None, ref: float, deadline: float) -> bool | None:
    """Did `want` hold in time?  `now` is what holds now, and has since `since` (what held before
    the action at `ref` counts from `ref`).  True: it holds, and has since `deadline` at the
    latest.  False: it holds, but only since later, so it cannot have held in time.  None: it does
    not hold (yet)."""
    if now != want or since is None:
        return None
    return max(since, ref) <= deadline


@dataclass
class StepResult:
    line: int
    step: str
    kind: str
    start_ts: float = 0.0
    start_s: float = 0.0
    duration_s: float = 0.0
    ran: bool = True
    ok: bool = True
    held: bool | None = None  # expects only
    seen: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class RunResult:
    scenario: str
    lab: dict[str, Any]
    t0: float
    steps: list[StepResult]
    end: list[StepResult]
    requests: int
    failed_requests: int
    answered: dict[str, int]
    route_moves: list[dict[str, Any]]
    # The HTTPS client's requests, failed and answered (count_answers), in a lab with tls=on.
    https: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.steps + self.end)

    @property
    def failures(self) -> list[StepResult]:
        return [s for s in self.steps + self.end if not s.ok]

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        for s in out["steps"] + out["end"]:
            if s["kind"] != "expect":
                del s["held"]
            s["start_ts"], s["start_s"], s["duration_s"] = (round(s["start_ts"], 4), round(s["start_s"], 4),
                                                           round(s["duration_s"], 4))
        return out


class Printer(threading.Thread):
    """Prints, every 100 ms, the client's answers and the nodes' events since the last tick."""

    def __init__(self, runner: Runner) -> None:
        super().__init__(name="strip", daemon=True)
        self.runner = runner
        self.lab = runner.lab
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self.seen_requests = 0
        self.seen_https = 0
        self.seen = {n: len(self.lab.agent_events(n)) for n in NODES}
        self.seen_emulator = len(self.lab.emulator_log())

    def run(self) -> None:
        while not self.stopping.wait(TICK_S):
            self.tick()

    def stop(self) -> None:
        self.stopping.set()
        self.join(5)
        self.tick(on_time=False)

    def _events(self) -> list[tuple[float, str]]:
        out: list[tuple[float, str]] = []
        for node in NODES:
            events = self.lab.agent_events(node)
            for e in events[self.seen[node]:]:
                text = _describe_event(e)
                if text:
                    out.append((e["ts"], f"node {node}: {text}"))
            self.seen[node] = len(events)
        log = self.lab.emulator_log()
        for r in log[self.seen_emulator:]:
            if r.get("event") == "routes" and r.get("kernel_ts"):
                hop = r["kernel"]
                to = next((f"now goes to node {n}" for n, net in NODES.items() if net.ip == hop),
                          f"is now dropped ({hop})")
                out.append((r["kernel_ts"], f"VPC router: client traffic for the VIP {to}"))
        self.seen_emulator = len(log)
        return sorted(out)

    def tick(self, on_time: bool = True) -> None:
        """Print what happened since the last tick: on time, every 100 ms, even if no request
        finished; or when the runner is about to print a step, so that the output stays in time
        order."""
        with self._lock:
            for ts, text in self._events():
                self.runner.say(ts, f"** {text}")
            records = self.runner.client.records()
            new = records[self.seen_requests:]
            self.seen_requests = len(records)
            https: list[dict[str, Any]] = []
            if self.runner.https is not None:
                records = self.runner.https.records()
                https = records[self.seen_https:]
                self.seen_https = len(records)
            if new or https or on_time:
                self.runner.say(time.time(), _letters(new) + (f"  https {_letters(https)}" if https else ""))


def _letters(records: list[dict[str, Any]]) -> str:
    return "".join("x" if r.get("error") else r.get("node") or "?" for r in records)


def _metric_context(record: dict[str, Any], shown: str) -> str:
    """What else a take-over's or repair's metric record says: its time and its reason."""
    times = [f"{k} = {record[k]:g} ms" for k in ("FailoverTakeOverTime", "PlannedMoveTime", "RouteRepairTime")
             if k != shown and isinstance(record.get(k), (int, float))]
    reason = f" ({record['reason']})" if record.get("reason") else ""
    return (", " + ", ".join(times) if times else "") + reason


def _describe_event(e: dict[str, Any]) -> str | None:
    event = e["event"]
    if event == "transition":
        return f"keepalived says {e['old']} -> {e['new']}"
    if event == "health":
        return f"HAProxy {'healthy' if e['healthy'] else 'NOT healthy'}"
    if event == "agent_start":
        return "agent started"
    if event == "agent_stop":
        return "agent stopped"
    if event == "terminating":
        return f"the group is terminating this instance: hand over, then drain (at most {e['drain_timeout_s']:g} s)"
    if event == "drained":
        return (f"drained in {e['waited_s']:.2f} s" if e["drained"]
                else f"requests still in flight after {e['waited_s']:.2f} s: terminating anyway")
    if event == "lifecycle_complete":
        return "termination hook completed: the group may terminate the instance"
    if event == "step_down":
        return "stepped down"
    if event in ("failover", "planned_move"):
        return f"{event.replace('_', ' ')} counted, take-over {e['took_ms']:.0f} ms ({e['reason']})"
    if event == "config_applied":
        reloaded = [n for n in ("haproxy", "keepalived") if e.get(f"{n}_reloaded")]
        return f"config {e['version'][:8]} applied" + (f", reloaded {' and '.join(reloaded)}" if reloaded else "")
    if event == "config_refused":
        return f"config {e['version'][:8]} REFUSED: {(e.get('reason') or '')[:160]}"
    if event in ("route_move", "route_hand_over", "route_repair"):
        if e.get("converged"):
            moved = e["moved"] if "moved" in e else len(e.get("tables") or [])
            return f"{event} done in {e['duration_s'] * 1000:.0f} ms ({moved} tables written)"
        if not e.get("cancelled"):
            return f"{event} did NOT converge in {e['duration_s']:.2f} s: {e.get('failed') or ''}"
    return None


class Runner:
    def __init__(self, lab: Lab, scenario: Scenario, out: IO[str] | None = None) -> None:
        assert lab.state is not None, "start the lab first"
        self.lab = lab
        self.state = lab.state
        self.scenario = scenario
        self.out = out or sys.stdout
        self._say_lock = threading.Lock()
        self.t0 = 0.0
        self.marks: dict[str, float] = {}
        # `within` counts from the start of the last action (not wait, mark or expect).
        self.ref = 0.0
        self.ref_line = 0
        self.cli_exit: int | None = None
        # API faults that end by themselves: the generation of the one in force, and its timer.
        self._api_lock = threading.Lock()
        self._proxy_fault = 0
        self._proxy_baseline = 0
        self._down = 0
        self._timers: list[threading.Timer] = []
        self.printer: Printer | None = None
        # Requests kept in flight by `request slow` lines: each a dict that its thread fills in.
        self.slow: list[dict[str, Any]] = []
        # The HTTPS client, in a lab with a TLS listener.
        self.https: ClientRun | None = None

    def say(self, ts: float, text: str) -> None:
        with self._say_lock:
            print(f"{ts - self.t0:+8.3f}s  {text}", file=self.out, flush=True)

    def say_step(self, text: str) -> None:
        """A step's line, after everything the strip has not shown yet."""
        if self.printer is not None:
            self.printer.tick(on_time=False)
        self.say(time.time(), text)

    # -- the run ---------------------------------------------------------------------------
    def run(self) -> RunResult:
        self.client = self.lab.client(interval_s=CLIENT_INTERVAL_S, max_s=self.scenario.budget_s(),
                                      timeout_s=CLIENT_TIMEOUT_S)
        if self.scenario.setup.tls:
            self.https = self.lab.client(interval_s=HTTPS_INTERVAL_S, max_s=self.scenario.budget_s(),
                                         timeout_s=CLIENT_TIMEOUT_S, tls=True)
        # The steps start once the clients are under way (a Python process takes a moment to start).
        wait_until(self.client.records, 10, "the client's first request")
        if self.https is not None:
            wait_until(self.https.records, 10, "the HTTPS client's first request")
        self.t0 = self.ref = time.time()
        self.marks = {START_MARK: self.t0}
        printer = self.printer = Printer(self)
        printer.start()
        results: list[StepResult] = []
        try:
            for i, step in enumerate(self.scenario.steps):
                result = self._run(step)
                results.append(result)
                if not result.ok and step.kind != "expect":
                    self.say_step(f"line {step.line} failed: the steps after it do not run")
                    results += [StepResult(s.line, s.text, s.kind, ran=False, ok=False, error="not run")
                                for s in self.scenario.steps[i + 1:]]
                    break
            self._end_api_faults()
            end = self._end_checks()
        finally:
            for timer in self._timers:
                timer.cancel()
            records = self.client.stop()
            https = self.https.stop() if self.https is not None else None
            printer.stop()
        plain = count_answers(records)
        moves = [{"at_s": round(r["ts"] - self.t0, 4), "to": self.state.node_of(r["all"])}
                 for r in self.lab.route_changes(self.t0)]
        run = RunResult(
            scenario=self.scenario.name, lab=asdict(self.scenario.setup) | {"fault_proxy": self.scenario.fault_proxy},
            t0=round(self.t0, 4), steps=results, end=end, requests=plain["requests"],
            failed_requests=plain["failed"], answered=plain["answered"], route_moves=moves,
            https=count_answers(https) if https is not None else None)
        self._summary(run)
        return run

    def _run(self, step: Step) -> StepResult:
        start = time.time()
        result = StepResult(step.line, step.text, step.kind, start_ts=start, start_s=start - self.t0)
        if step.is_action:
            self.ref, self.ref_line = start, step.line
        if step.kind != "expect":
            self.say_step(f"line {step.line}: {step.text}")
        try:
            if step.kind == "expect":
                held, seen = self._expect(step, start)
                result.held = result.ok = held
                result.seen = seen
            else:
                getattr(self, "_do_" + step.kind)(step, result)
        except Exception as e:  # a step that cannot be done fails the run; the lab still tears down
            result.ok = False
            result.error = f"{type(e).__name__}: {e}"
        result.duration_s = time.time() - start
        if step.kind == "expect":
            verdict = "held" if result.held else "DID NOT HOLD"
            self.say_step(f"line {step.line}: {step.text}: {verdict}: {result.seen.get('text', '')}"
                     + (f" ({result.error})" if result.error else ""))
        elif result.error:
            self.say_step(f"line {step.line}: FAILED: {result.error}")
        return result

    # -- actions ---------------------------------------------------------------------------
    def _do_kill(self, step: Step, result: StepResult) -> None:
        self.lab.signal_service(step.node, step.service, _SIGNALS[step.kind])

    _do_stop = _do_kill

    def _do_start(self, step: Step, result: StepResult) -> None:
        self.lab.start_service(step.node, step.service)
        if step.service == "agent":
            # Until the new agent logs its start, its log still tells the old one's state.
            wait_until(lambda: any(e["event"] == "agent_start" and e["ts"] >= result.start_ts
                                   for e in self.lab.agent_events(step.node)),
                       15, f"the agent on node {step.node} to start")

    def _do_link(self, step: Step, result: StepResult) -> None:
        (self.lab.link_down if step.verb == "down" else self.lab.link_up)(step.node)

    def _do_partition(self, step: Step, result: StepResult) -> None:
        self.lab.partition()

    def _do_heal(self, step: Step, result: StepResult) -> None:
        self.lab.heal()

    def _do_delete(self, step: Step, result: StepResult) -> None:
        assert step.count is not None
        table = self.state.route_table_ids[step.count - 1]
        self.lab.delete_vip_route(table)
        result.seen = {"table": table}

    def _do_instance(self, step: Step, result: StepResult) -> None:
        # The EC2 instance state only (what the reconciler, the CLI and the agents read from the
        # API); the node's processes keep running, as an instance stop never shows in a namespace.
        result.seen = {"instance": self.lab.set_instance_state(step.node, running=step.verb == "start")}

    def _do_replace(self, step: Step, result: StepResult) -> None:
        result.seen = self.lab.replace(step.node, boot_timeout_s=REPLACE_BOOT_S, release=step.verb or None)
        r = result.seen
        self.say_step(f"   | node {step.node}: {r['old_instance']} -> {r['new_instance']}: hook {r['hook_s']:.2f} s "
                      f"(drained: {r['drained']}, {r['drain_s']} s), launch {r['launch_s']:.2f} s "
                      f"({r['launch_tries']} tries), boot to ready {r['boot_s']:.2f} s")

    def _do_request(self, step: Step, result: StepResult) -> None:
        record: dict[str, Any] = {"line": step.line, "sent": time.time()}
        self.slow.append(record)
        ms = int((step.seconds or 0.0) * 1000)
        thread = threading.Thread(target=self.lab.slow_request, args=(ms, record), name=f"slow-{step.line}",
                                  daemon=True)
        thread.start()
        # Until the request is at a node, it is not in flight there.
        wait_until(lambda: self.lab.slow_request_sent(record), 5, "the slow request to reach a node")

    def _do_dns(self, step: Step, result: StepResult) -> None:
        self.lab.set_dns_answers(list(step.args))

    def _do_tls(self, step: Step, result: StepResult) -> None:
        assert self.lab.tls is not None
        put = {"rotate": self.lab.tls.rotate, "bad": self.lab.tls.put_bad,
               "untrusted": self.lab.tls.put_untrusted}[step.verb]()
        result.seen = {"version": put.version_id, "kind": put.kind, "cert": put.cert}
        what = {lab_tls.GOOD: f"certificate {put.cert}, from the lab CA",
                lab_tls.BAD: f"certificate {put.cert} with a key that does not belong to it",
                lab_tls.UNTRUSTED: f"certificate {put.cert}, from a CA the clients do not trust"}[put.kind]
        self.say_step(f"   | secret {lab_tls.SECRET} version {put.version_id[:8]}: {what}")

    def _do_config(self, step: Step, result: StepResult) -> None:
        result.seen = {"versions": self.lab.change_config(step.verb)}

    def _do_deploy(self, step: Step, result: StepResult) -> None:
        result.seen = {"versions": self.lab.deploy_documents(step.verb)}
        for node, keys in result.seen["versions"].items():
            self.say_step(f"   | node {node}: " + ", ".join(f"{k} {etag[:8]}" for k, etag in keys.items()))

    def _do_wait(self, step: Step, result: StepResult) -> None:
        time.sleep(step.seconds or 0.0)

    def _do_mark(self, step: Step, result: StepResult) -> None:
        self.marks[step.mark] = result.start_ts

    def _do_cli(self, step: Step, result: StepResult) -> None:
        args = [*step.args, "--vip", VIP]
        proc = self.lab.cli(args, timeout_s=(step.seconds or CLI_DEFAULT_DEADLINE_S) + CLI_SLACK_S)
        self.cli_exit = proc.returncode
        output = (proc.stdout + proc.stderr).rstrip()
        for line in output.splitlines():
            self.say_step("   | " + line)
        self.say_step(f"   | (exit {proc.returncode})")
        result.seen = {"exit": proc.returncode, "output": output}

    def _do_api(self, step: Step, result: StepResult) -> None:
        if step.verb == "ok":
            self._end_api_faults()
            return
        if step.verb == "down":
            with self._api_lock:
                self._down += 1
                gen = self._down
                self.lab.api_down()
            self._after(step, lambda: self._end_down(gen, step.line))
            return
        with self._api_lock:
            self._proxy_fault += 1
            gen = self._proxy_fault
            self._proxy_baseline = self._faults_so_far()
            # A fault for a time is a fault for ever more calls, ended by a timer.
            self.lab.fault_proxy("/_fault", {"mode": step.verb, "count": step.count or 10**9,
                                             "actions": list(step.actions)})
        if step.seconds is not None:
            self._after(step, lambda: self._end_proxy_fault(gen, step.line))

    def _after(self, step: Step, fn: Callable[[], None]) -> None:
        timer = threading.Timer(step.seconds or 0.0, fn)
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    def _faults_so_far(self) -> int:
        return sum(self.lab.fault_proxy("/_stats")["faults"].values())

    def _end_proxy_fault(self, gen: int, line: int) -> None:
        def end() -> None:
            if gen == self._proxy_fault:  # else a later api line replaced this fault
                self._proxy_fault += 1
                self.lab.fault_proxy("/_fault", {"mode": "none"})
                self.say_step(f"line {line}: the API fault ends")
        self._on_timer(end, line)

    def _end_down(self, gen: int, line: int) -> None:
        def end() -> None:
            if gen == self._down:
                self._down += 1
                self.lab.api_up()
                self.say_step(f"line {line}: the API answers again")
        self._on_timer(end, line)

    def _on_timer(self, fn: Callable[[], None], line: int) -> None:
        with self._api_lock:
            try:
                fn()
            except Exception as e:  # the run goes on; the end of the run lifts every fault again
                self.say_step(f"line {line}: could not end the API fault: {type(e).__name__}: {e}")

    def _end_api_faults(self) -> None:
        for timer in self._timers:
            timer.cancel()
        with self._api_lock:
            self._down += 1
            self.lab.api_up()
            if self.scenario.fault_proxy:
                self._proxy_fault += 1
                self.lab.fault_proxy("/_fault", {"mode": "none"})

    # -- expects ---------------------------------------------------------------------------
    def _emulator_caught_up(self) -> None:
        """Moves are counted from the emulator's log, which trails the API by a poll (more on a
        busy machine); "routes at" reads the API.  So that one does not race the other, wait
        (bounded) until the log's last agreement is the one the API shows now."""
        deadline = time.time() + EMULATOR_CATCH_UP_S
        while time.time() < deadline:
            try:
                owner = self.lab.route_owner()
            except Exception:  # the lab's own view of the API failed: count what the log has
                return
            logged = [r.get("all") for r in self.lab.emulator_log() if r.get("event") == "routes"]
            agreed = next((eni for eni in reversed(logged) if eni), None)
            if owner is None or (agreed is not None and self.state.node_of(agreed) == owner):
                return
            time.sleep(API_POLL_S)

    def _expect(self, step: Step, start: float) -> tuple[bool, dict[str, Any]]:
        subject = step.verb
        if subject == "metric" and step.seconds is None:
            return self._metric_count(step)
        if subject in WAITING_EXPECTS:
            assert step.seconds is not None
            deadline = self.ref + step.seconds
            probe: Callable[[Step, float], tuple[bool | None, dict[str, Any]]] = getattr(
                self, "_probe_" + subject.replace(" ", "_"))
            while True:
                held, seen = probe(step, deadline)
                if held is not None:
                    return held, seen
                if time.time() > deadline + GRACE_S:
                    return False, seen
                # Files are cheap to read; the API is one moto process that the nodes need too.
                time.sleep(POLL_S if subject in ("client", "vrrp", "move", "metric", "https at", "https cert")
                           else API_POLL_S)
        if subject == "moves":
            self._emulator_caught_up()
            changes = self.lab.route_changes(self.marks[step.mark])
            to = [self.state.node_of(r["all"]) for r in changes]
            held = compare(step.op, len(changes), step.count or 0)
            return held, {"moves": len(changes), "to": to,
                          "at_s": [round(r["ts"] - self.t0, 4) for r in changes],
                          "text": f"{len(changes)} move(s) since mark {step.mark}" + (f" (to {', '.join(to)})"
                                                                                      if to else "")}
        if subject == "failed":
            return self._failed(step, start, self.client)
        if subject == "https failed":
            assert self.https is not None
            return self._failed(step, start, self.https, "HTTPS requests")
        held = self.cli_exit == step.count
        return held, {"exit": self.cli_exit, "text": f"the last cli line exited {self.cli_exit}"}

    def _after_text(self, at: float) -> str:
        return f"{max(0.0, at - self.ref):.3f}s after line {self.ref_line}" if self.ref_line else \
            f"{at - self.t0:.3f}s after the start"

    def _verdict(self, want: str, now: str | None, since: float | None, deadline: float, key: str,
                 label: str) -> tuple[bool | None, dict[str, Any]]:
        """`now` is what the logs say holds, since `since`: it held in time if it has held since
        the bound at the latest (counting from the last action)."""
        held = in_time(want, now, since, self.ref, deadline)
        if held is None or since is None:
            return _OPEN, {key: now, "text": f"{label} {now} when last seen"}
        at = max(since, self.ref)
        return held, {key: now, "after_s": round(at - self.ref, 4), "text": f"{label} {now} {self._after_text(at)}"}

    def _probe_routes(self, step: Step, deadline: float) -> tuple[bool | None, dict[str, Any]]:
        # The API says where the routes are now (the emulator's log may be a poll behind, and
        # would not yet show, say, a route just deleted); the emulator's log says since when.
        now = time.time()
        views = self.lab.views()
        owner = self.lab.route_owner(views)
        if owner != step.node:
            tables = {t: (self.state.node_of(v.eni_id) if v.eni_id else v.state) for t, v in views.items()}
            text = f"routes at {owner}" if owner else f"the tables disagree or are not active: {tables}"
            return _OPEN, {"routes": owner, "tables": tables, "text": text}
        eni, since = observe.routes_agreed(self.lab.emulator_log())
        if eni == self.state.eni[step.node] and since is not None:
            at = max(since, self.ref)
        elif now <= deadline:
            at = now
            # A mark on the next line must not count this move again when the log catches up.
            self._emulator_caught_up()
        else:
            return _OPEN, {"routes": owner, "text": f"routes at {owner}; the emulator has not read it yet"}
        return at <= deadline, {"routes": owner, "after_s": round(at - self.ref, 4),
                                "text": f"routes at {owner} {self._after_text(at)}"}

    def _probe_vrrp(self, step: Step, deadline: float) -> tuple[bool | None, dict[str, Any]]:
        state, since, reason = observe.vrrp_state(self.lab.agent_events(step.node))
        held, seen = self._verdict(step.state, state, since, deadline, "vrrp", f"node {step.node} is")
        seen["reason"] = reason
        seen["text"] += f" ({reason})" if reason else ""
        return held, seen

    def _probe_client(self, step: Step, deadline: float) -> tuple[bool | None, dict[str, Any]]:
        node, since = observe.client_answered_by(self.client.records())
        return self._verdict(step.node, node, since, deadline, "client", "client answered by")

    def _probe_https_at(self, step: Step, deadline: float) -> tuple[bool | None, dict[str, Any]]:
        assert self.https is not None
        node, since = observe.client_answered_by(self.https.records())
        return self._verdict(step.node, node, since, deadline, "https", "HTTPS client answered by")

    def _probe_https_cert(self, step: Step, deadline: float) -> tuple[bool | None, dict[str, Any]]:
        assert self.https is not None and self.lab.tls is not None
        want = self.lab.tls.fingerprints[(step.count or 0) - 1]
        served = [r for r in self.https.records() if not r.get("error") and r.get("cert") == want
                  and r["done"] >= self.ref]
        if not served:
            return _OPEN, {"cert": None, "text": f"no HTTPS answer with certificate {step.count} since line "
                                                 f"{self.ref_line}"}
        first = min(served, key=lambda r: r["done"])
        return first["done"] <= deadline, {
            "cert": step.count, "serial": first.get("serial"), "after_s": round(first["done"] - self.ref, 4),
            "text": f"the HTTPS client was served certificate {step.count} (serial {first.get('serial')}) by node "
                    f"{first.get('node')} {self._after_text(first['done'])}"}

    def _probe_cert(self, step: Step, deadline: float) -> tuple[bool | None, dict[str, Any]]:
        assert self.lab.tls is not None
        served = self.lab.tls.served(step.node)
        text = ("no TLS handshake" if served is None else "a certificate that is not the lab's" if served == 0
                else f"certificate {served}")
        if served != step.count:
            return _OPEN, {"cert": served, "text": f"node {step.node}'s HAProxy serves {text}"}
        now = time.time()
        return now <= deadline + GRACE_S, {"cert": served, "text": f"node {step.node}'s HAProxy serves {text} "
                                                                   f"{self._after_text(now)}"}

    def _probe_tls(self, step: Step, deadline: float) -> tuple[bool | None, dict[str, Any]]:
        assert self.lab.tls is not None
        status = self.lab.config_status(step.node) or {}
        reason = (status.get("listeners") or {}).get(lab_tls.LISTENER)
        latest = self.lab.tls.latest.version_id
        said = f"says listener {lab_tls.LISTENER}: {reason[:300]}" if reason else "names no listener"
        seen: dict[str, Any] = {"listeners": status.get("listeners"), "text": f"node {step.node}'s status {said}"}
        if not status:
            return _OPEN, {**seen, "text": f"node {step.node} has written no status"}
        if step.state == "CLEAR":
            if reason is not None:
                return _OPEN, seen
            # The node rewrites its status for other reasons too: its time says when it was
            # written, not since when the listener has been clear.  Seen now, then.
            at = time.time()
        elif reason is None or f"version {latest}" not in reason:
            return _OPEN, seen
        else:
            # A refusal of the latest version is written once, when the node finds it.
            at = max(float(status["ts"]), self.ref)
        seen["after_s"] = round(at - self.ref, 4)
        seen["text"] += f", {self._after_text(at)}"
        return at <= deadline + GRACE_S, seen

    def _probe_move(self, step: Step, deadline: float) -> tuple[bool | None, dict[str, Any]]:
        moves = [e for e in self.lab.agent_events(step.node) if e["event"] == "route_move" and e["ts"] >= self.ref]
        if not moves:
            return _OPEN, {"move": None, "text": f"node {step.node} logged no route move"}
        e = moves[0]
        tables = len(self.state.route_table_ids)
        held = bool(e["converged"]) and e["tables"] == tables and e["ts"] <= deadline
        seen = {"move": {k: e.get(k) for k in ("converged", "attempt", "tables", "moved", "duration_s", "failed")},
                "after_s": round(e["ts"] - self.ref, 4),
                "text": f"node {step.node}'s first route move {'converged' if e['converged'] else 'did NOT converge'}"
                        f" on {e['tables']} of {tables} tables, {self._after_text(e['ts'])}"}
        return held, seen

    def _probe_slow(self, step: Step, deadline: float) -> tuple[bool | None, dict[str, Any]]:
        done = [r for r in self.slow if "done" in r]
        failed = [r for r in done if r.get("error")]
        seen = {"slow": [{k: r.get(k) for k in ("line", "node", "status", "error")} for r in self.slow],
                "text": f"{len(done)} of {len(self.slow)} slow requests finished, {len(failed)} failed"
                        + "".join(f" (line {r['line']}: {r['error']})" for r in failed)}
        if failed:
            return False, seen
        if len(done) < len(self.slow):
            return _OPEN, seen
        last = max(r["done"] for r in done)
        nodes = ", ".join(str(r.get("node")) for r in done)
        seen["text"] += f" (answered by {nodes}), the last {self._after_text(last)}"
        return last <= deadline, seen

    def _probe_config(self, step: Step, deadline: float) -> tuple[bool | None, dict[str, Any]]:
        status = self.lab.config_status(step.node) or {}
        key, want = self.lab.expected_document(step.node)
        # As the waiter of the release that wrote it reads the status: the previous release's
        # reads `version` alone; this one's, the version at the key the node reads.
        follows = (status.get("version") == want if self.lab.writer == lab_module.PREVIOUS
                   else config_lambda.honours(status, key, want))
        # A node that says which key it applied (this release) must have applied that one: in a
        # rollback, the older key, even when its body is the same as the downgrade it had.
        follows = follows and status.get("key", key) == key
        which = f"the latest version of {key}" if follows else "another version"
        seen = {"status": status, "text": f"node {step.node}'s status: {status.get('state')} of {which}"
                                          + (f" ({status['reason'][:300]})" if status.get("reason") else "")}
        if not follows:
            return _OPEN, seen
        at = float(status["ts"])
        seen["after_s"] = round(at - self.ref, 4)
        seen["text"] += f", {self._after_text(at)}"
        return status.get("state") == step.state.lower() and at <= deadline + GRACE_S, seen

    def _probe_runtime(self, step: Step, deadline: float) -> tuple[bool | None, dict[str, Any]]:
        want = self.lab.release_version(step.state.lower())
        got = self.lab.runtime_version(step.node)
        seen: dict[str, Any] = {"runtime": got, "text": f"node {step.node}'s status says runtime {got}"}
        if got != want:
            return _OPEN, seen
        return time.time() <= deadline + GRACE_S, seen

    def _probe_backend(self, step: Step, deadline: float) -> tuple[bool | None, dict[str, Any]]:
        answers = [r for r in self.client.records() if r.get("backend") == step.name and r["done"] >= self.ref]
        if not answers:
            return _OPEN, {"backend": None, "text": f"no answer from backend {step.name} since line {self.ref_line}"}
        first = min(r["done"] for r in answers)
        return first <= deadline, {"backend": step.name, "after_s": round(first - self.ref, 4),
                                   "text": f"backend {step.name} answered {self._after_text(first)}"}

    def _probe_port(self, step: Step, deadline: float) -> tuple[bool | None, dict[str, Any]]:
        node = self.lab.ask_vip(port=step.count or 0)
        if node is None:
            return _OPEN, {"node": None, "text": f"port {step.count} of the VIP did not answer"}
        now = time.time()
        return now <= deadline + GRACE_S, {"node": node, "text": f"port {step.count} answered by node {node} "
                                                                 f"{self._after_text(now)}"}

    def _probe_metric(self, step: Step, deadline: float) -> tuple[bool | None, dict[str, Any]]:
        records = self.lab.metric_records(step.node)
        label = f"node {step.node}'s {step.name}"
        if step.value is not None:
            # A state: its latest value, since when the node has said so.
            value, since = observe.metric_state(records, step.name)
            return self._verdict(observe.metric_text(step.value), value, since, deadline, "metric", f"{label} is")
        # An event: a record of it written since the last action.
        events = observe.metric_events(records, step.name, after=self.ref)
        if not events:
            return _OPEN, {"metric": None, "text": f"{label}: no record since line {self.ref_line}"}
        ts, record = events[0]
        return ts <= deadline, {"metric": record, "after_s": round(ts - self.ref, 4),
                                "text": f"{label} = {observe.metric_text(record.get(step.name))}"
                                        + _metric_context(record, step.name) + f", written {self._after_text(ts)}"}

    def _metric_count(self, step: Step) -> tuple[bool, dict[str, Any]]:
        events = observe.metric_events(self.lab.metric_records(step.node), step.name, after=self.marks[step.mark])
        held = compare(step.op, len(events), step.count or 0)
        return held, {"records": len(events), "text": f"{len(events)} record(s) of node {step.node}'s {step.name} "
                                                      f"since mark {step.mark}"}

    def _probe_api(self, step: Step, deadline: float) -> tuple[bool | None, dict[str, Any]]:
        faults = self._faults_so_far() - self._proxy_baseline
        seen = {"faults": faults, "text": f"the API answered {faults} call(s) with a fault"}
        return (True if faults >= (step.count or 0) else _OPEN), seen

    def _failed(self, step: Step, start: float, client: ClientRun,
                what: str = "requests") -> tuple[bool, dict[str, Any]]:
        # Count every request sent before this line, so wait for those still in flight: each
        # ends by the client's timeouts (connect, then read).
        end = time.time() + 2 * CLIENT_TIMEOUT_S + 1.0
        while True:
            before, complete = observe.sent_before(client.records(), start)
            if complete or time.time() > end or client.proc.poll() is not None:
                break
            time.sleep(0.05)
        mark = self.marks[step.mark]
        sent = [r for r in before if r["sent"] >= mark]
        errors = [r for r in sent if r.get("error")]
        switches = observe.kernel_switches(self.lab.emulator_log()) if step.apart else []
        cut = [r for r in errors if observe.reset_at_a_switch(r, switches)]
        failed = len(errors) - len(cut)
        held = compare(step.op, failed, step.count or 0)
        text = f"{failed} of {len(sent)} {what} sent since mark {step.mark} failed"
        if step.apart:
            text += f", apart from {len(cut)} reset at a route switch" + "".join(
                f" (sent at {r['sent'] - self.t0:+.3f}s)" for r in cut)
        return held, {"failed": failed, "reset_at_switch": len(cut), "sent": len(sent), "complete": complete,
                      "text": text + ("" if complete else " (some still in flight)")}

    # -- after every script ----------------------------------------------------------------
    def _end_checks(self) -> list[StepResult]:
        checks: list[tuple[str, Callable[[], str]]] = [
            ("every route points at one node whose HAProxy is healthy, and the client reaches it through the VIP",
             lambda: f"converged on node {self.lab.check_converged()}"),
            ("every answer the client got came from a lab node", self._answers_from_lab_nodes),
        ]
        if self.https is not None:
            checks += [
                ("the TLS listener answers through the VIP, its certificate verified against the lab CA",
                 self._https_answers),
                ("every HTTPS answer came from a lab node, and reached the backend with X-Forwarded-Proto https",
                 lambda: check_answers(self.https.records() if self.https else [], proto="https")),
            ]
        out = []
        for text, check in checks:
            start = time.time()
            result = StepResult(0, text, "end", start_ts=start, start_s=start - self.t0)
            try:
                result.seen = {"text": check()}
            except Exception as e:
                result.ok = False
                result.error = f"{type(e).__name__}: {e}"
            result.duration_s = time.time() - start
            self.say_step(f"end: {text}: " + (result.seen["text"] if result.ok else f"NO: {result.error}"))
            out.append(result)
        return out

    def _answers_from_lab_nodes(self) -> str:
        return check_answers(self.client.records())

    def _https_answers(self) -> str:
        assert self.lab.tls is not None
        answer = self.lab.tls.ask()
        if answer is None:
            raise AssertionError(f"no verified answer from {self.lab.tls.url}")
        return f"node {answer['node']}, certificate {answer['cert']}"

    def _summary(self, r: RunResult) -> None:
        answered = ", ".join(f"{n} {c}" for n, c in sorted(r.answered.items())) or "nobody"
        moves = ", ".join(f"to {m['to']} at {m['at_s']:+.3f}s" for m in r.route_moves) or "none"
        expects = [s for s in r.steps if s.kind == "expect"]
        https = ""
        if r.https is not None:
            by = ", ".join(f"{n} {c}" for n, c in sorted(r.https["answered"].items())) or "nobody"
            https = f" HTTPS: {r.https['requests']} requests, {r.https['failed']} failed; answered by {by}."
        print(f"\n{r.requests} requests, {r.failed_requests} failed; answered by {answered}.{https} "
              f"Route moves: {moves}.", file=self.out)
        if r.ok:
            print(f"{r.scenario}: every expect held ({len(expects)}), and the lab converged.", file=self.out)
        else:
            lines = ", ".join(str(s.line) if s.line else "end" for s in r.failures)
            print(f"{r.scenario}: FAILED at line(s) {lines}.", file=self.out)
        self.out.flush()


def write_json(result: RunResult, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result.to_json(), indent=2) + "\n")
