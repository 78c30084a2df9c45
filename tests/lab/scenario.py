"""Failure scripts for the lab: parse a text file of steps, one a line, into a Scenario.

The whole file is checked before anything runs, and every problem is reported at once, each
naming the file, the line, the step, what was given and what is allowed:

    scenario.txt:4: expect: got 'routes at c'; allowed: routes at a|b within DURATION

Needs no root and starts nothing, so its tests run with the unit tests.  `SYNTAX` lists every
step; docs/lab.md copies it.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from haproxy_ha_runtime import metrics
from haproxy_ha_runtime.config import PROFILES
from haproxy_ha_runtime.lifecycle import HANDOVER_MARGIN_S

from .cloud import MAX_TABLES
from .topology import NODES

SERVICES = ("haproxy", "keepalived", "agent")
# Whose code: this checkout's, or the previous release's (releases/index.json, from its own commit).
RELEASES = ("this", "previous")
_RELEASE = "|".join(RELEASES)
VRRP_STATES = ("MASTER", "BACKUP", "FAULT", "UNKNOWN")
MAX_DURATION_S = 600.0
# The mark every script has: when the steps begin (once the client is under way).
START_MARK = "start"
DEFAULT_TABLES = 3
# `haproxy-ha failover` keeps trying for --deadline seconds (20 by default); a cli step may take
# this much longer (Python starting, the API's own timeouts) before the runner kills it.
CLI_DEFAULT_DEADLINE_S = 20.0
CLI_SLACK_S = 40.0
# A replace step waits for the hook (at most the drain timeout, plus slack) and for the new
# instance to boot and be ready; the runner allows this long for the boot.
REPLACE_BOOT_S = 90.0

_NODE = "|".join(NODES)
_DUR = r"(?:\d+(?:\.\d+)?|\.\d+)(?:ms|s)"
_COUNT = r"(?:(?P<op>at most|at least)\s+)?(?P<n>\d+)"
_NAME = r"[a-z][a-z0-9_-]{0,31}"
_ACTION = re.compile(r"^[A-Z][A-Za-z0-9]{1,63}$")
# The metrics a node's agent writes (metrics.py), which `expect metric` reads from its metrics file.
NODE_METRICS = (metrics.VRRP_MASTER, metrics.VRRP_BACKUP, metrics.VRRP_FAULT, metrics.HAPROXY_HEALTHY, metrics.ACTIVE,
                metrics.EC2_API_REACHABLE, metrics.FAILOVERS, metrics.FAILOVER_TIME, metrics.PLANNED_MOVES,
                metrics.PLANNED_MOVE_TIME, metrics.ROUTE_REPAIRS, metrics.ROUTE_REPAIR_TIME, metrics.REQUESTS,
                metrics.HTTP_5XX, metrics.CURRENT_SESSIONS, metrics.RESPONSE_TIME, metrics.SERVERS_UP, metrics.SERVERS)
_NUMBER = r"-?\d+(?:\.\d+)?"

# Every step, as the errors and docs/lab.md show it.
SYNTAX: dict[str, str] = {
    "lab": f"lab [profile={'|'.join(PROFILES)}] [preempt=on|off] [tables=1..{MAX_TABLES}] [drain=DURATION] "
           f"[backends=ip|dns] [tls=on|off] [release={_RELEASE}]",
    "kill": f"kill {'|'.join(SERVICES)} on {_NODE}",
    "stop": f"stop {'|'.join(SERVICES)} on {_NODE}",
    "start": f"start {'|'.join(SERVICES)} on {_NODE}",
    "link": f"link down|up on {_NODE}",
    "partition": "partition",
    "heal": "heal",
    "api": "api throttle|5xx for DURATION|N calls [of ACTION[,ACTION...]]; api down for DURATION; api ok",
    "delete": "delete route in table N",
    "instance": f"instance stop|start on {_NODE}",
    "replace": f"replace {_NODE} [with {_RELEASE} release]",
    "deploy": f"deploy documents of {_RELEASE} release",
    "request": "request slow DURATION",
    "config": "config add backend|add listener|bad",
    "dns": "dns answers be1|be2|be3[,...]",
    "tls": "tls rotate|bad|untrusted",
    "cli": f"cli status [--json]; cli failover --to {_NODE} [--dry-run] [--force] [--deadline SECONDS] [--json]",
    "wait": "wait DURATION",
    "mark": "mark NAME",
    "expect": "expect routes|client|vrrp|move|api|failed|moves|cli|slow|config|backend|port|metric|https|cert|tls|"
              "runtime ...",
}
EXPECT_SYNTAX: dict[str, str] = {
    "routes": f"routes at {_NODE} within DURATION",
    "client": f"client at {_NODE} within DURATION",
    "vrrp": f"vrrp {_NODE} {'|'.join(VRRP_STATES)} within DURATION",
    "move": f"move by {_NODE} converged within DURATION",
    "api": "api faults at least N within DURATION",
    "failed": "failed [at most|at least] N since MARK [apart from resets at a route switch]",
    "moves": "moves [at most|at least] N since MARK",
    "cli": "cli exit N",
    "slow": "slow answered within DURATION",
    "config": f"config applied|refused on {_NODE} within DURATION",
    "backend": "backend NAME answered within DURATION",
    "port": "port N answered within DURATION",
    "metric": f"metric NAME[=VALUE] on {_NODE} within DURATION; metric NAME on {_NODE} [at most|at least] N times "
              "since MARK",
    "https at": f"https at {_NODE} within DURATION",
    "https failed": "https failed [at most|at least] N since MARK [apart from resets at a route switch]",
    "https cert": "https cert N within DURATION",
    "cert": f"cert N on {_NODE} within DURATION",
    "tls": f"tls refused|clear on {_NODE} within DURATION",
    "runtime": f"runtime {_RELEASE} on {_NODE} within DURATION",
}
# The expects of the HTTPS client (a lab with tls=on): named by their first two words.
HTTPS_EXPECTS = ("https at", "https failed", "https cert")
# A request whose connection straddles the instant the VIP's next hop changes is reset
# (docs/lifecycle.md, graceful hand-over): a count of failures may leave those out, by saying so.
_APART = r"(?P<apart> apart from resets at a route switch)?"
_EXPECT_FORMS: dict[str, re.Pattern[str]] = {
    "routes": re.compile(rf"routes at (?P<node>{_NODE}) within (?P<dur>{_DUR})"),
    "client": re.compile(rf"client at (?P<node>{_NODE}) within (?P<dur>{_DUR})"),
    "vrrp": re.compile(rf"vrrp (?P<node>{_NODE}) (?P<state>(?i:{'|'.join(VRRP_STATES)})) within (?P<dur>{_DUR})"),
    "move": re.compile(rf"move by (?P<node>{_NODE}) converged within (?P<dur>{_DUR})"),
    "api": re.compile(rf"api faults at least (?P<n>\d+) within (?P<dur>{_DUR})"),
    "failed": re.compile(rf"failed {_COUNT} since (?P<mark>{_NAME}){_APART}"),
    "moves": re.compile(rf"moves {_COUNT} since (?P<mark>{_NAME})"),
    "cli": re.compile(r"cli exit (?P<n>\d+)"),
    "slow": re.compile(rf"slow answered within (?P<dur>{_DUR})"),
    "config": re.compile(rf"config (?P<state>applied|refused) on (?P<node>{_NODE}) within (?P<dur>{_DUR})"),
    "backend": re.compile(rf"backend (?P<name>be[1-9]) answered within (?P<dur>{_DUR})"),
    "port": re.compile(rf"port (?P<n>\d{{1,5}}) answered within (?P<dur>{_DUR})"),
    "metric": re.compile(rf"metric (?P<name>[A-Za-z][A-Za-z0-9]*)(?:=(?P<value>{_NUMBER}))? on (?P<node>{_NODE}) "
                         rf"(?:within (?P<dur>{_DUR})|{_COUNT} times? since (?P<mark>{_NAME}))"),
    "https at": re.compile(rf"https at (?P<node>{_NODE}) within (?P<dur>{_DUR})"),
    "https failed": re.compile(rf"https failed {_COUNT} since (?P<mark>{_NAME}){_APART}"),
    "https cert": re.compile(rf"https cert (?P<cert>\d{{1,3}}) within (?P<dur>{_DUR})"),
    "cert": re.compile(rf"cert (?P<cert>\d{{1,3}}) on (?P<node>{_NODE}) within (?P<dur>{_DUR})"),
    "tls": re.compile(rf"tls (?P<state>refused|clear) on (?P<node>{_NODE}) within (?P<dur>{_DUR})"),
    "runtime": re.compile(rf"runtime (?P<release>{_RELEASE}) on (?P<node>{_NODE}) within (?P<dur>{_DUR})"),
}
# Expects that watch something change; each must say how long it may take.
WAITING_EXPECTS = ("routes", "client", "vrrp", "move", "api", "slow", "config", "backend", "port", "metric",
                   "https at", "https cert", "cert", "tls", "runtime")
_BOUND_HINT = " (an expect that waits needs a bound: add 'within DURATION', e.g. 'within 2s')"
_DURATION_HELP = " (DURATION: a number with s or ms, such as 2s or 500ms)"


class ScriptError(ValueError):
    """A script that cannot run; `problems` has one line per mistake."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Setup:
    profile: str = "fast"
    preempt: bool = False
    tables: int = DEFAULT_TABLES
    drain_s: float = 10.0
    backends: str = "ip"
    tls: bool = False
    release: str = "this"


@dataclass(frozen=True)
class Step:
    """One line of a script.  `kind` is its first word; the other fields are those it uses."""

    line: int
    text: str
    kind: str
    verb: str = ""  # kill|stop|start, down|up, throttle|5xx|down|ok, rotate|bad|untrusted, the expect's subject,
    # or the release of deploy and of replace ... with
    node: str = ""
    service: str = ""
    seconds: float | None = None  # wait, api ... for DURATION, expect ... within DURATION
    count: int | None = None  # api ... for N calls, delete route in table N, expect counts, certificate N
    op: str = ""  # expect counts: "at most", "at least" or "exactly"
    state: str = ""  # expect vrrp, expect config and tls; the release of expect runtime
    mark: str = ""  # mark NAME, expect ... since NAME
    actions: tuple[str, ...] = ()  # api ... of ACTION,...
    args: tuple[str, ...] = ()  # cli
    name: str = ""  # expect backend NAME, expect metric NAME
    value: float | None = None  # expect metric NAME=VALUE
    apart: bool = False  # expect [https] failed ... apart from resets at a route switch

    @property
    def is_action(self) -> bool:
        """Actions change the lab; `within` counts from the start of the last one."""
        return self.kind not in ("wait", "mark", "expect")


@dataclass(frozen=True)
class Scenario:
    name: str
    setup: Setup
    steps: tuple[Step, ...] = field(default_factory=tuple)

    @property
    def fault_proxy(self) -> bool:
        """Throttling and 5xx come from the fault proxy, so the nodes talk to the API through it."""
        return any(s.kind == "api" and s.verb in ("throttle", "5xx") for s in self.steps)

    def budget_s(self) -> float:
        """An upper bound of the run time, for the client's own bound: every wait and every
        expect's bound, plus a generous allowance per step."""
        total = 30.0
        for s in self.steps:
            if s.kind == "wait" or (s.kind == "expect" and s.seconds is not None):
                total += s.seconds or 0.0
            total += (s.seconds or CLI_DEFAULT_DEADLINE_S) + CLI_SLACK_S if s.kind == "cli" else 10.0
            if s.kind == "replace":
                total += self.setup.drain_s + HANDOVER_MARGIN_S + 10 + REPLACE_BOOT_S
            elif s.kind == "request":
                total += s.seconds or 0.0
        return total


def _has_duration(text: str) -> bool:
    return re.search(rf"(?<![\w.]){_DUR}(?![\w.])", text) is not None


def parse_duration(text: str) -> float:
    return float(text[:-2]) / 1000 if text.endswith("ms") else float(text[:-1])


class _Parser:
    def __init__(self, name: str) -> None:
        self.name = name
        self.problems: list[str] = []
        self.setup = Setup()
        self.steps: list[Step] = []
        # What the lab looks like at each line, to catch steps that cannot apply.
        self.running = {(n, s) for n in NODES for s in SERVICES}
        self.link_down: set[str] = set()
        self.partitioned = False
        self.marks = {START_MARK}
        self.seen_cli = False
        self.seen_api_fault = False
        self.seen_lab = False
        self.seen_slow = False
        self.seen_config = False
        # The certificates the lab's TLS secret has had so far (certificate 1 at start).
        self.certs = 1

    def bad(self, line: int, step: str, got: str, allowed: str) -> None:
        self.problems.append(f"{self.name}:{line}: {step}: got {got!r}; allowed: {allowed}")

    def parse(self, text: str) -> Scenario:
        for number, raw in enumerate(text.splitlines(), start=1):
            content = " ".join(raw.split("#", 1)[0].split())
            if content:
                self.line(number, content)
        if not self.steps and not self.problems:
            self.problems.append(f"{self.name}: no steps; allowed steps: {', '.join(SYNTAX)}")
        if self.problems:
            raise ScriptError(self.problems)
        return Scenario(self.name, self.setup, tuple(self.steps))

    def line(self, n: int, content: str) -> None:
        kind, _, rest = content.partition(" ")
        handler = getattr(self, "_" + kind, None) if kind in SYNTAX else None
        if handler is None:
            self.problems.append(f"{self.name}:{n}: got {kind!r}; allowed steps: {', '.join(SYNTAX)}")
            return
        if kind == "lab":
            if self.steps or self.seen_lab:
                self.bad(n, kind, content, "one lab line, before every other step")
            else:
                self._lab(n, rest)
            self.seen_lab = True
            return
        step = handler(n, content, rest)
        if step is not None:
            self.steps.append(step)

    def _form(self, n: int, kind: str, rest: str, pattern: str) -> re.Match[str] | None:
        m = re.fullmatch(pattern, rest)
        if m is None:
            allowed = SYNTAX[kind].split(" ", 1)[1] if " " in SYNTAX[kind] else kind
            self.bad(n, kind, rest, allowed + (_DURATION_HELP if "DURATION" in allowed and not _has_duration(rest)
                                               else ""))
        return m

    def _duration(self, n: int, kind: str, text: str, allow_zero: bool) -> float | None:
        seconds = parse_duration(text)
        if seconds > MAX_DURATION_S or (seconds == 0 and not allow_zero):
            low = "0s" if allow_zero else "more than 0s"
            self.bad(n, kind, text, f"a duration from {low} to {MAX_DURATION_S:g}s, such as 2s or 500ms")
            return None
        return seconds

    # -- the steps -------------------------------------------------------------------------
    def _lab(self, n: int, rest: str) -> None:
        values: dict[str, str] = {}
        for item in rest.split():
            key, eq, value = item.partition("=")
            if not eq or key not in ("profile", "preempt", "tables", "drain", "backends", "tls", "release") \
                    or key in values:
                self.bad(n, "lab", item, "each of profile=, preempt=, tables=, drain=, backends=, tls=, release= at "
                                         "most once")
                continue
            values[key] = value
        profile = values.get("profile", Setup.profile)
        if profile not in PROFILES:
            self.bad(n, "lab", f"profile={profile}", f"profile={'|'.join(PROFILES)}")
        preempt = values.get("preempt", "off")
        if preempt not in ("on", "off"):
            self.bad(n, "lab", f"preempt={preempt}", "preempt=on|off")
        tables = values.get("tables", str(DEFAULT_TABLES))
        if not tables.isdigit() or not 1 <= int(tables) <= MAX_TABLES:
            self.bad(n, "lab", f"tables={tables}", f"tables=1..{MAX_TABLES}")
            tables = str(DEFAULT_TABLES)
        drain = values.get("drain", f"{Setup.drain_s:g}s")
        drain_s = Setup.drain_s
        if not re.fullmatch(_DUR, drain):
            self.bad(n, "lab", f"drain={drain}", "drain=DURATION" + _DURATION_HELP)
        else:
            drain_s = self._duration(n, "lab", drain, allow_zero=True) or 0.0
        backends = values.get("backends", Setup.backends)
        if backends not in ("ip", "dns"):
            self.bad(n, "lab", f"backends={backends}", "backends=ip|dns")
            backends = Setup.backends
        tls = values.get("tls", "off")
        if tls not in ("on", "off"):
            self.bad(n, "lab", f"tls={tls}", "tls=on|off")
        release = values.get("release", Setup.release)
        if release not in RELEASES:
            self.bad(n, "lab", f"release={release}", f"release={_RELEASE}")
            release = Setup.release
        self.setup = Setup(profile=profile, preempt=preempt == "on", tables=int(tables), drain_s=drain_s,
                           backends=backends, tls=tls == "on", release=release)

    def _service(self, n: int, content: str, rest: str) -> Step | None:
        kind = content.split(" ", 1)[0]
        m = self._form(n, kind, rest, rf"(?P<service>{'|'.join(SERVICES)}) on (?P<node>{_NODE})")
        if m is None:
            return None
        key = (m["node"], m["service"])
        if kind == "start" and key in self.running:
            self.bad(n, kind, rest, f"start a service that a kill or stop line ended ({m['service']} on "
                                    f"{m['node']} is running here)")
        elif kind != "start" and key not in self.running:
            self.bad(n, kind, rest, f"{kind} a running service ({m['service']} on {m['node']} was "
                                    "already ended; start it first)")
        (self.running.add if kind == "start" else self.running.discard)(key)
        return Step(n, content, kind, verb=kind, node=m["node"], service=m["service"])

    _kill = _stop = _start = _service

    def _link(self, n: int, content: str, rest: str) -> Step | None:
        m = self._form(n, "link", rest, rf"(?P<dir>down|up) on (?P<node>{_NODE})")
        if m is None:
            return None
        node, down = m["node"], m["dir"] == "down"
        if down == (node in self.link_down):
            self.bad(n, "link", rest, f"link {'up' if down else 'down'} on {node} (its link is "
                                      f"{'down' if down else 'up'} here)")
        (self.link_down.add if down else self.link_down.discard)(node)
        return Step(n, content, "link", verb=m["dir"], node=node)

    def _partition(self, n: int, content: str, rest: str) -> Step | None:
        if rest or self.partitioned:
            self.bad(n, "partition", content, "partition, with nothing after it, once until the next heal")
        self.partitioned = True
        return Step(n, content, "partition")

    def _heal(self, n: int, content: str, rest: str) -> Step | None:
        if rest or not self.partitioned:
            self.bad(n, "heal", content, "heal, with nothing after it, after a partition line")
        self.partitioned = False
        return Step(n, content, "heal")

    def _api(self, n: int, content: str, rest: str) -> Step | None:
        if rest == "ok":
            return Step(n, content, "api", verb="ok")
        m = re.fullmatch(rf"down for (?P<dur>{_DUR})", rest)
        if m:
            seconds = self._duration(n, "api", m["dur"], allow_zero=False)
            return Step(n, content, "api", verb="down", seconds=seconds)
        m = self._form(n, "api", rest, rf"(?P<mode>throttle|5xx) for (?:(?P<dur>{_DUR})|(?P<calls>\d+) calls?)"
                                       r"(?: of (?P<actions>\S+))?")
        if m is None:
            return None
        seconds = self._duration(n, "api", m["dur"], allow_zero=False) if m["dur"] else None
        calls = int(m["calls"]) if m["calls"] else None
        if calls is not None and not 1 <= calls <= 10000:
            self.bad(n, "api", m["calls"] + " calls", "1 to 10000 calls")
        actions = tuple(a for a in (m["actions"] or "").split(",") if a)
        wrong = [a for a in actions if not _ACTION.match(a)]
        if wrong or (m["actions"] and not actions):
            self.bad(n, "api", m["actions"], "EC2 action names such as ReplaceRoute,DescribeRouteTables")
        self.seen_api_fault = True
        return Step(n, content, "api", verb=m["mode"], seconds=seconds, count=calls, actions=actions)

    def _delete(self, n: int, content: str, rest: str) -> Step | None:
        m = self._form(n, "delete", rest, r"route in table (?P<n>\d+)")
        if m is None:
            return None
        table = int(m["n"])
        if not 1 <= table <= self.setup.tables:
            self.bad(n, "delete", rest, f"route in table 1..{self.setup.tables} (the lab has "
                                        f"{self.setup.tables} tables)")
        return Step(n, content, "delete", count=table)

    def _instance(self, n: int, content: str, rest: str) -> Step | None:
        m = self._form(n, "instance", rest, rf"(?P<verb>stop|start) on (?P<node>{_NODE})")
        if m is None:
            return None
        return Step(n, content, "instance", verb=m["verb"], node=m["node"])

    def _replace(self, n: int, content: str, rest: str) -> Step | None:
        m = self._form(n, "replace", rest, rf"(?P<node>{_NODE})(?: with (?P<release>{_RELEASE}) release)?")
        if m is None:
            return None
        node = m["node"]
        if node in self.link_down:
            self.bad(n, "replace", rest, f"replace a node whose link is up (link up on {node} first)")
        # A new instance runs every service.
        self.running |= {(node, s) for s in SERVICES}
        return Step(n, content, "replace", node=node, verb=m["release"] or "")

    def _deploy(self, n: int, content: str, rest: str) -> Step | None:
        m = self._form(n, "deploy", rest, rf"documents of (?P<release>{_RELEASE}) release")
        if m is None:
            return None
        self.seen_config = True  # expect config ... waits for what it wrote
        return Step(n, content, "deploy", verb=m["release"])

    def _request(self, n: int, content: str, rest: str) -> Step | None:
        m = self._form(n, "request", rest, rf"slow (?P<dur>{_DUR})")
        if m is None:
            return None
        self.seen_slow = True
        return Step(n, content, "request", verb="slow", seconds=self._duration(n, "request", m["dur"], False))

    def _config(self, n: int, content: str, rest: str) -> Step | None:
        m = self._form(n, "config", rest, r"add backend|add listener|bad")
        if m is None:
            return None
        self.seen_config = True
        return Step(n, content, "config", verb=rest)

    def _dns(self, n: int, content: str, rest: str) -> Step | None:
        m = self._form(n, "dns", rest, r"answers (?P<names>be[1-3](?:,be[1-3])*)")
        if m is None:
            return None
        if self.setup.backends != "dns":
            self.bad(n, "dns", rest, "dns answers ... in a lab with backends=dns (a backend given by name)")
        return Step(n, content, "dns", args=tuple(m["names"].split(",")))

    def _tls(self, n: int, content: str, rest: str) -> Step | None:
        m = self._form(n, "tls", rest, r"rotate|bad|untrusted")
        if m is None:
            return None
        self._needs_tls(n, "tls", rest)
        if rest != "bad":  # a bad version holds the current certificate with another key
            self.certs += 1
        return Step(n, content, "tls", verb=rest)

    def _needs_tls(self, n: int, kind: str, rest: str) -> None:
        if not self.setup.tls:
            self.bad(n, kind, rest, f"{kind} ... in a lab with tls=on (a TLS listener on port 443)")

    def _cli(self, n: int, content: str, rest: str) -> Step | None:
        try:
            args = shlex.split(rest)
        except ValueError as e:
            self.bad(n, "cli", rest, f"{SYNTAX['cli'].replace('cli ', '')} ({e})")
            return None
        self.seen_cli = True
        command, flags = (args[0], args[1:]) if args else ("", [])
        allowed = {"status": {"--json": 0},
                   "failover": {"--to": 1, "--dry-run": 0, "--force": 0, "--deadline": 1, "--json": 0}}
        if command not in allowed:
            self.bad(n, "cli", rest, "status|failover (the lab adds --vip)")
            return None
        given: dict[str, str] = {}
        i = 0
        problem = ""
        while i < len(flags) and not problem:
            flag = flags[i]
            if flag not in allowed[command] or flag in given:
                problem = f"{flag}: each of {', '.join(allowed[command])} at most once"
            elif allowed[command][flag] and i + 1 >= len(flags):
                problem = f"{flag} needs a value"
            else:
                given[flag] = flags[i + 1] if allowed[command][flag] else ""
                i += 1 + allowed[command][flag]
        if not problem and command == "failover":
            to, deadline = given.get("--to"), given.get("--deadline", f"{CLI_DEFAULT_DEADLINE_S:g}")
            if to not in NODES:
                problem = f"--to {_NODE} (given: {to})"
            elif not re.fullmatch(r"\d+(\.\d+)?", deadline) or not 0 < float(deadline) <= MAX_DURATION_S:
                problem = f"--deadline SECONDS, more than 0 and at most {MAX_DURATION_S:g} (given: {deadline})"
        if problem:
            form = next(f for f in SYNTAX["cli"].split("; ") if f.startswith("cli " + command))
            self.bad(n, "cli", rest, f"{form.removeprefix('cli ')}; {problem}")
            return None
        seconds = float(given["--deadline"]) if "--deadline" in given else None
        return Step(n, content, "cli", verb=command, args=tuple(args), seconds=seconds)

    def _wait(self, n: int, content: str, rest: str) -> Step | None:
        m = self._form(n, "wait", rest, _DUR)
        if m is None:
            return None
        return Step(n, content, "wait", seconds=self._duration(n, "wait", rest, allow_zero=False))

    def _mark(self, n: int, content: str, rest: str) -> Step | None:
        m = self._form(n, "mark", rest, _NAME)
        if m is None:
            return None
        self.marks.add(rest)
        return Step(n, content, "mark", mark=rest)

    def _expect(self, n: int, content: str, rest: str) -> Step | None:
        subject = rest.split(" ", 1)[0]
        if subject == "https":
            subject = " ".join(rest.split(" ", 2)[:2])
            if subject not in HTTPS_EXPECTS:
                self.bad(n, "expect", rest, "; ".join(EXPECT_SYNTAX[k] for k in HTTPS_EXPECTS))
                return None
        form = _EXPECT_FORMS.get(subject)
        if form is None:
            self.bad(n, "expect", rest, "; ".join(EXPECT_SYNTAX.values()))
            return None
        m = form.fullmatch(rest)
        if m is None:
            hint = (_BOUND_HINT if subject in WAITING_EXPECTS and " within " not in f" {rest} "
                    else _DURATION_HELP if "DURATION" in EXPECT_SYNTAX[subject] and not _has_duration(rest)
                    else "")
            self.bad(n, "expect", rest, EXPECT_SYNTAX[subject] + hint)
            return None
        groups = m.groupdict()
        seconds = self._duration(n, "expect", groups["dur"], allow_zero=True) if groups.get("dur") else None
        mark = groups.get("mark") or ""
        if mark and mark not in self.marks:
            self.bad(n, "expect", rest, f"{EXPECT_SYNTAX[subject]}, with a MARK that an earlier mark line set "
                                        f"({', '.join(sorted(self.marks))})")
        if subject == "cli" and not self.seen_cli:
            self.bad(n, "expect", rest, "expect cli exit N after a cli line")
        if subject == "config" and not self.seen_config:
            self.bad(n, "expect", rest, "expect config ... after a config or deploy line")
        if subject == "slow" and not self.seen_slow:
            self.bad(n, "expect", rest, "expect slow answered ... after a request slow line")
        if subject == "metric" and groups["name"] not in NODE_METRICS:
            self.bad(n, "expect", rest, f"{EXPECT_SYNTAX[subject]}, with a NAME that a node's agent writes "
                                        f"({', '.join(NODE_METRICS)})")
        if subject == "metric" and groups["value"] is not None and groups["mark"] is not None:
            self.bad(n, "expect", rest, f"{EXPECT_SYNTAX[subject]} (=VALUE only with within)")
        if subject == "api" and not self.seen_api_fault:
            self.bad(n, "expect", rest, "expect api faults ... after an api throttle|5xx line")
        if subject in (*HTTPS_EXPECTS, "cert", "tls"):
            self._needs_tls(n, "expect", rest)
        cert = groups.get("cert")
        if cert is not None and not 1 <= int(cert) <= self.certs:
            self.bad(n, "expect", rest, f"{EXPECT_SYNTAX[subject]}, with N from 1 to {self.certs} (the certificates "
                                        "made so far: 1 at start, one more for each tls rotate|untrusted line)")
        value = groups.get("value")
        count = groups.get("n") or cert
        return Step(n, content, "expect", verb=subject, node=groups.get("node") or "", name=groups.get("name") or "",
                    value=float(value) if value is not None else None,
                    state=(groups.get("state") or groups.get("release") or "").upper(), seconds=seconds,
                    count=int(count) if count else None,
                    op=groups.get("op") or ("at least" if subject == "api" else "exactly" if groups.get("n") else ""),
                    mark=mark, apart=bool(groups.get("apart")))


def parse(text: str, name: str = "<script>") -> Scenario:
    """Parse a whole script; raise ScriptError with every problem in it."""
    return _Parser(name).parse(text)


def parse_file(path: str | Path) -> Scenario:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ScriptError([f"{path}: cannot read it: {e}"]) from None
    return parse(text, path.name)
