"""Failure scripts: the parser's errors (every mistake named with its line, before anything is
built), and the log readers the runner judges expects by.  No root: these run with the unit
tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from . import demo, observe
from .runner import check_answers, compare, count_answers, in_time, lab_options
from .scenario import SYNTAX, ScriptError, parse, parse_file

SCENARIOS = sorted((Path(__file__).parent / "scenarios").glob("*.txt"))


def problems(text: str) -> list[str]:
    with pytest.raises(ScriptError) as info:
        parse(text, "s.txt")
    return info.value.problems


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_every_scenario_file_parses_and_checks_something(path: Path) -> None:
    scenario = parse_file(path)
    assert any(s.kind == "expect" for s in scenario.steps)
    assert any(s.is_action for s in scenario.steps)


def test_the_scenario_files_use_every_kind_of_step() -> None:
    kinds = {s.kind for p in SCENARIOS for s in parse_file(p).steps} | {"lab"}
    assert kinds == set(SYNTAX)


def test_an_upgrade_script_names_whose_code_runs_and_writes() -> None:
    scenario = parse("lab release=previous\ndeploy documents of this release\nreplace a with this release\n"
                     "replace b\nexpect config applied on a within 5s\nexpect runtime this on a within 5s\n")
    assert scenario.setup.release == "previous"
    deploy, replace_a, replace_b, _, runtime = scenario.steps
    assert (deploy.kind, deploy.verb) == ("deploy", "this")
    assert (replace_a.node, replace_a.verb) == ("a", "this")
    assert (replace_b.node, replace_b.verb) == ("b", "")  # the release its instance runs already
    assert (runtime.verb, runtime.state, runtime.node, runtime.seconds) == ("runtime", "THIS", "a", 5.0)
    assert parse("expect client at a within 1s\n").setup.release == "this"


def test_a_script_parses_into_steps_with_file_line_numbers() -> None:
    scenario = parse("# a comment\n\nlab profile=default preempt=on tables=5\n"
                     "expect client at a within 5s   # trailing comment\n"
                     "mark fault\n"
                     "api throttle for 2s of ReplaceRoute\n"
                     "kill   keepalived   on a\n"
                     "expect vrrp b master within 500ms\n"
                     "expect failed at most 30 since fault\n"
                     "expect moves 1 since fault\n", "s.txt")
    assert scenario.setup.profile == "default" and scenario.setup.preempt and scenario.setup.tables == 5
    assert scenario.fault_proxy
    lines = [(s.line, s.kind) for s in scenario.steps]
    assert lines == [(4, "expect"), (5, "mark"), (6, "api"), (7, "kill"), (8, "expect"), (9, "expect"),
                     (10, "expect")]
    kill = scenario.steps[3]
    assert (kill.node, kill.service, kill.text) == ("a", "keepalived", "kill keepalived on a")
    vrrp = scenario.steps[4]
    assert (vrrp.state, vrrp.seconds) == ("MASTER", 0.5)
    failed, moves = scenario.steps[5], scenario.steps[6]
    assert (failed.op, failed.count, failed.mark) == ("at most", 30, "fault")
    assert (moves.op, moves.count) == ("exactly", 1)
    assert lab_options(scenario).fault_proxy and lab_options(scenario).tables == 5


def test_metric_expects_name_a_state_an_event_or_a_count() -> None:
    scenario = parse("mark fault\nkill haproxy on a\nexpect metric VrrpMaster=1 on b within 2s\n"
                     "expect metric FailoverTakeOverTime on b within 3s\n"
                     "expect metric PlannedMoves on b at most 0 times since fault\n"
                     "expect metric Failovers on b 1 time since fault\n", "s.txt")
    state, event, count, one = scenario.steps[2:]
    assert (state.verb, state.node, state.name, state.value, state.seconds) == ("metric", "b", "VrrpMaster", 1.0, 2.0)
    assert (event.name, event.value, event.seconds) == ("FailoverTakeOverTime", None, 3.0)
    assert (count.name, count.op, count.count, count.mark, count.seconds) == ("PlannedMoves", "at most", 0, "fault",
                                                                              None)
    assert (one.op, one.count) == ("exactly", 1)


def test_a_replaced_node_runs_every_service_again() -> None:
    scenario = parse("lab drain=2s\nkill haproxy on a\nreplace a\nkill haproxy on a\nrequest slow 2s\n"
                     "expect slow answered within 5s\n")
    assert scenario.setup.drain_s == 2.0
    assert [s.kind for s in scenario.steps] == ["kill", "replace", "kill", "request", "expect"]
    # Each replace allows for the drain, the launch and the boot; each slow request for its time.
    assert scenario.budget_s() > parse("kill haproxy on a\n").budget_s() + 2.0 + 2.0 + 90


def test_the_lab_line_is_optional_and_the_fault_proxy_only_comes_when_needed() -> None:
    scenario = parse("api down for 2s\nwait 1s\n")
    assert scenario.setup.profile == "fast" and scenario.setup.tables == 3 and not scenario.setup.preempt
    assert not scenario.fault_proxy


@pytest.mark.parametrize(("text", "expected"), [
    ("lab\nreboot a\n", "s.txt:2: got 'reboot'; allowed steps: lab, kill, stop, start, link, partition, heal, api, "
                         "delete, instance, replace, deploy, request, config, dns, tls, cli, wait, mark, expect"),
    ("dns answers be1\n", "s.txt:1: dns: got 'answers be1'; allowed: dns answers ... in a lab with backends=dns"),
    ("lab backends=dns\ndns answers be4\n", "s.txt:2: dns: got 'answers be4'; allowed: answers be1|be2|be3[,...]"),
    ("lab backends=names\n", "s.txt:1: lab: got 'backends=names'; allowed: backends=ip|dns"),
    ("config remove backend\n", "s.txt:1: config: got 'remove backend'; allowed: add backend|add listener|bad"),
    ("expect config applied on a within 2s\n", "s.txt:1: expect: got 'config applied on a within 2s'; allowed: "
                                               "expect config ... after a config or deploy line"),
    ("config bad\nexpect config done on a within 2s\n", "s.txt:2: expect: got 'config done on a within 2s'; "
                                                         "allowed: config applied|refused on a|b within DURATION"),
    ("replace c\n", "s.txt:1: replace: got 'c'; allowed: a|b [with this|previous release]"),
    ("replace a with next release\n",
     "s.txt:1: replace: got 'a with next release'; allowed: a|b [with this|previous release]"),
    ("deploy documents\n", "s.txt:1: deploy: got 'documents'; allowed: documents of this|previous release"),
    ("lab release=next\n", "s.txt:1: lab: got 'release=next'; allowed: release=this|previous"),
    ("expect runtime next on a within 2s\n", "s.txt:1: expect: got 'runtime next on a within 2s'; allowed: "
                                              "runtime this|previous on a|b within DURATION"),
    ("link down on a\nreplace a\n", "s.txt:2: replace: got 'a'; allowed: replace a node whose link is up"),
    ("request slow\n", "s.txt:1: request: got 'slow'; allowed: slow DURATION (DURATION: a number with s or ms"),
    ("request slow 0s\n", "s.txt:1: request: got '0s'; allowed: a duration from more than 0s to 600s"),
    ("expect slow answered within 2s\n", "s.txt:1: expect: got 'slow answered within 2s'; allowed: expect slow "
                                         "answered ... after a request slow line"),
    ("lab drain=5\n", "s.txt:1: lab: got 'drain=5'; allowed: drain=DURATION (DURATION: a number with s or ms"),
    ("instance reboot on a\n", "s.txt:1: instance: got 'reboot on a'; allowed: stop|start on a|b"),
    ("kill haproxy on c\n", "s.txt:1: kill: got 'haproxy on c'; allowed: haproxy|keepalived|agent on a|b"),
    ("kill nginx on a\n", "s.txt:1: kill: got 'nginx on a'; allowed: haproxy|keepalived|agent on a|b"),
    ("expect routes at c within 2s\n", "s.txt:1: expect: got 'routes at c within 2s'; allowed: routes at a|b "
                                        "within DURATION"),
    ("expect routes at c\n", "s.txt:1: expect: got 'routes at c'; allowed: routes at a|b within DURATION (an expect "
                              "that waits needs a bound"),
    ("\n\n\nexpect routes at b\n", "s.txt:4: expect: got 'routes at b'; allowed: routes at a|b within DURATION "
                                    "(an expect that waits needs a bound: add 'within DURATION', e.g. 'within 2s')"),
    ("expect vrrp a MASTER\n", "s.txt:1: expect: got 'vrrp a MASTER'; allowed: vrrp a|b "
                               "MASTER|BACKUP|FAULT|UNKNOWN within DURATION (an expect that waits needs a bound"),
    ("expect vrrp A master within 1s\n", "s.txt:1: expect: got 'vrrp A master within 1s'; allowed: vrrp a|b "
                                         "MASTER|BACKUP|FAULT|UNKNOWN within DURATION"),
    ("expect vrrp a SLAVE within 1s\n", "s.txt:1: expect: got 'vrrp a SLAVE within 1s'; allowed: vrrp a|b "
                                        "MASTER|BACKUP|FAULT|UNKNOWN within DURATION"),
    ("expect routes at b within 2\n", "s.txt:1: expect: got 'routes at b within 2'; allowed: routes at a|b within "
                                      "DURATION (DURATION: a number with s or ms"),
    ("expect routes at b within 601s\n", "s.txt:1: expect: got '601s'; allowed: a duration from 0s to 600s"),
    ("expect the best\n", "s.txt:1: expect: got 'the best'; allowed: routes at a|b within DURATION; client at"),
    ("expect moves 1\n", "s.txt:1: expect: got 'moves 1'; allowed: moves [at most|at least] N since MARK"),
    ("expect moves 1 since fault\n", "s.txt:1: expect: got 'moves 1 since fault'; allowed: moves [at most|at least] "
                                     "N since MARK, with a MARK that an earlier mark line set (start)"),
    ("expect failed at most 3 since start within 2s\n", "s.txt:1: expect: got 'failed at most 3 since start within "
                                                        "2s'; allowed: failed [at most|at least] N since MARK "
                                                        "[apart from resets at a route switch]"),
    ("expect cli exit 0\n", "s.txt:1: expect: got 'cli exit 0'; allowed: expect cli exit N after a cli line"),
    ("expect api faults at least 2 within 1s\n", "s.txt:1: expect: got 'api faults at least 2 within 1s'; allowed: "
                                                 "expect api faults ... after an api throttle|5xx line"),
    ("wait 5\n", "s.txt:1: wait: got '5'; allowed: DURATION (DURATION: a number with s or ms"),
    ("wait 0s\n", "s.txt:1: wait: got '0s'; allowed: a duration from more than 0s to 600s"),
    ("lab profile=slow\n", "s.txt:1: lab: got 'profile=slow'; allowed: profile=default|fast"),
    ("lab tables=0\n", "s.txt:1: lab: got 'tables=0'; allowed: tables=1..200"),
    ("lab preempt=yes\n", "s.txt:1: lab: got 'preempt=yes'; allowed: preempt=on|off"),
    ("lab colour=blue\n", "s.txt:1: lab: got 'colour=blue'; allowed: each of profile=, preempt=, tables=, drain=, "
                           "backends=, tls=, release= at most once"),
    ("lab tls=yes\n", "s.txt:1: lab: got 'tls=yes'; allowed: tls=on|off"),
    ("tls rotate\n", "s.txt:1: tls: got 'rotate'; allowed: tls ... in a lab with tls=on (a TLS listener on port 443)"),
    ("lab tls=on\ntls renew\n", "s.txt:2: tls: got 'renew'; allowed: rotate|bad|untrusted"),
    ("expect https at a within 2s\n", "s.txt:1: expect: got 'https at a within 2s'; allowed: expect ... in a lab with "
                                      "tls=on"),
    ("expect cert 1 on a within 2s\n", "s.txt:1: expect: got 'cert 1 on a within 2s'; allowed: expect ... in a lab "
                                       "with tls=on"),
    ("lab tls=on\nexpect https answered within 2s\n", "s.txt:2: expect: got 'https answered within 2s'; allowed: "
                                                       "https at a|b within DURATION; https failed [at most|at "
                                                       "least] N since MARK [apart from resets at a route switch]; "
                                                       "https cert N within DURATION"),
    ("lab tls=on\nexpect https at a\n", "s.txt:2: expect: got 'https at a'; allowed: https at a|b within DURATION (an "
                                         "expect that waits needs a bound"),
    ("lab tls=on\nexpect https failed 0\n", "s.txt:2: expect: got 'https failed 0'; allowed: https failed [at most|at "
                                             "least] N since MARK"),
    ("lab tls=on\ntls bad\nexpect https cert 2 within 5s\n", "s.txt:3: expect: got 'https cert 2 within 5s'; allowed: "
                                                               "https cert N within DURATION, with N from 1 to 1 (the "
                                                               "certificates made so far"),
    ("lab tls=on\nexpect cert 0 on b within 5s\n", "s.txt:2: expect: got 'cert 0 on b within 5s'; allowed: cert N on "
                                                    "a|b within DURATION, with N from 1 to 1"),
    ("lab tls=on\nexpect cert 1 on c within 5s\n", "s.txt:2: expect: got 'cert 1 on c within 5s'; allowed: cert N on "
                                                    "a|b within DURATION"),
    ("lab tls=on\nexpect tls applied on a within 5s\n", "s.txt:2: expect: got 'tls applied on a within 5s'; allowed: "
                                                         "tls refused|clear on a|b within DURATION"),
    ("wait 1s\nlab\n", "s.txt:2: lab: got 'lab'; allowed: one lab line, before every other step"),
    ("start haproxy on a\n", "s.txt:1: start: got 'haproxy on a'; allowed: start a service that a kill or stop line "
                             "ended (haproxy on a is running here)"),
    ("kill agent on b\nstop agent on b\n", "s.txt:2: stop: got 'agent on b'; allowed: stop a running service (agent "
                                           "on b was already ended; start it first)"),
    ("link up on a\n", "s.txt:1: link: got 'up on a'; allowed: link down on a (its link is up here)"),
    ("heal\n", "s.txt:1: heal: got 'heal'; allowed: heal, with nothing after it, after a partition line"),
    ("partition\npartition\n", "s.txt:2: partition: got 'partition'; allowed: partition, with nothing after it, once"),
    ("api throttle for 2 calls of replaceRoute\n", "s.txt:1: api: got 'replaceRoute'; allowed: EC2 action names"),
    ("api throttle forever\n", "s.txt:1: api: got 'throttle forever'; allowed: throttle|5xx for DURATION|N calls"),
    ("api down for 0s\n", "s.txt:1: api: got '0s'; allowed: a duration from more than 0s to 600s"),
    ("lab tables=2\ndelete route in table 3\n", "s.txt:2: delete: got 'route in table 3'; allowed: route in table "
                                                "1..2 (the lab has 2 tables)"),
    ("cli reboot\n", "s.txt:1: cli: got 'reboot'; allowed: status|failover (the lab adds --vip)"),
    ("cli failover --to c\n", "s.txt:1: cli: got 'failover --to c'; allowed: failover --to a|b [--dry-run] "
                              "[--force] [--deadline SECONDS] [--json]; --to a|b (given: c)"),
    ("cli failover\n", "s.txt:1: cli: got 'failover'; allowed: failover --to a|b [--dry-run] [--force] "
                       "[--deadline SECONDS] [--json]; --to a|b (given: None)"),
    ("cli failover --to b --quick\n", "s.txt:1: cli: got 'failover --to b --quick'; allowed: failover --to a|b "
                                      "[--dry-run] [--force] [--deadline SECONDS] [--json]; --quick: each of --to, "
                                      "--dry-run"),
    ("cli failover --to b --deadline soon\n", "s.txt:1: cli: got 'failover --to b --deadline soon'; allowed: failover"
                                              " --to a|b [--dry-run] [--force] [--deadline SECONDS] [--json]; "
                                              "--deadline SECONDS, more than 0 and at most 600 (given: soon)"),
    ("cli status --deadline 3\n", "s.txt:1: cli: got 'status --deadline 3'; allowed: status [--json]; --deadline: "
                                  "each of --json at most once"),
    ("mark Fault!\n", "s.txt:1: mark: got 'Fault!'; allowed: NAME"),
    ("expect metric Failover on b within 2s\n", "s.txt:1: expect: got 'metric Failover on b within 2s'; allowed: "
                                               "metric NAME[=VALUE] on a|b within DURATION; metric NAME on a|b [at "
                                               "most|at least] N times since MARK, with a NAME that a node's agent "
                                               "writes (VrrpMaster, VrrpBackup, VrrpFault, HaproxyHealthy, Active,"),
    ("expect metric Failovers on b\n", "s.txt:1: expect: got 'metric Failovers on b'; allowed: metric NAME[=VALUE] "
                                       "on a|b within DURATION; metric NAME on a|b [at most|at least] N times since "
                                       "MARK (an expect that waits needs a bound"),
    ("expect metric Failovers=1 on b 1 time since start\n", "s.txt:1: expect: got 'metric Failovers=1 on b 1 time "
                                                            "since start'; allowed: metric NAME[=VALUE] on a|b within "
                                                            "DURATION; metric NAME on a|b [at most|at least] N times "
                                                            "since MARK (=VALUE only with within)"),
    ("expect metric VrrpMaster=yes on b within 1s\n", "s.txt:1: expect: got 'metric VrrpMaster=yes on b within 1s';"
                                                      " allowed: metric NAME[=VALUE] on a|b within DURATION; "
                                                      "metric NAME on a|b [at most|at least] N times since MARK"),
    ("# only a comment\n\n", "s.txt: no steps; allowed steps: lab, kill"),
])
def test_fails_when_a_line_is_wrong_and_names_the_line_the_step_and_what_is_allowed(text: str,
                                                                                     expected: str) -> None:
    found = problems(text)
    assert len(found) == 1, found
    assert found[0].startswith(expected), found[0]
    if "DURATION" in found[0] and expected.endswith("DURATION"):
        assert found[0] == expected  # no hint about durations when the duration was right


def test_a_tls_lab_has_its_steps_and_numbers_its_certificates() -> None:
    scenario = parse("lab tls=on\nmark rotate\ntls rotate\ntls bad\ntls untrusted\n"
                     "expect cert 3 on b within 5s\nexpect https cert 2 within 10s\nexpect https at b within 2s\n"
                     "expect https failed at most 4 since rotate\nexpect tls refused on a within 3s\n"
                     "expect tls clear on b within 1s\n", "s.txt")
    assert scenario.setup.tls and lab_options(scenario).tls
    assert not parse("wait 1s\n").setup.tls and not lab_options(parse("wait 1s\n")).tls
    assert [(s.kind, s.verb) for s in scenario.steps[1:4]] == [("tls", "rotate"), ("tls", "bad"), ("tls", "untrusted")]
    cert, https_cert, https_at, https_failed, refused, clear = scenario.steps[4:]
    assert (cert.verb, cert.count, cert.node, cert.seconds) == ("cert", 3, "b", 5.0)
    assert (https_cert.verb, https_cert.count, https_cert.seconds) == ("https cert", 2, 10.0)
    assert (https_at.verb, https_at.node, https_at.seconds) == ("https at", "b", 2.0)
    assert (https_failed.verb, https_failed.op, https_failed.count, https_failed.mark) == ("https failed", "at most", 4,
                                                                                          "rotate")
    assert (refused.verb, refused.state, refused.node) == ("tls", "REFUSED", "a")
    assert (clear.verb, clear.state, clear.node, clear.seconds) == ("tls", "CLEAR", "b", 1.0)
    # A bad version makes no certificate: after rotate, bad and untrusted there are three.
    assert problems("lab tls=on\ntls rotate\ntls bad\ntls untrusted\nexpect cert 4 on a within 1s\n")[0].endswith(
        "with N from 1 to 3 (the certificates made so far: 1 at start, one more for each tls rotate|untrusted line)")


def test_every_mistake_is_reported_at_once_in_line_order() -> None:
    found = problems("lab profile=fast\nkill haproxy on c\nwait 2s\nexpect routes at b\nfly away\n")
    assert [p.split(":")[1] for p in found] == ["2", "4", "5"]


def test_a_file_that_cannot_be_read_is_a_script_error(tmp_path: Path) -> None:
    with pytest.raises(ScriptError, match="cannot read it"):
        parse_file(tmp_path / "missing.txt")


def test_the_steps_follow_the_state_of_the_lab_line_by_line() -> None:
    # A service ended and started again, a link down and up, a partition healed twice: all fine.
    scenario = parse("kill haproxy on a\nstart haproxy on a\nstop haproxy on a\nstart haproxy on a\n"
                     "link down on b\nlink up on b\npartition\nheal\npartition\nheal\n")
    assert len(scenario.steps) == 10


def test_the_demo_s_built_in_faults_are_scripts_too() -> None:
    for fault in demo.FAULTS:
        for profile in ("fast", "default"):
            scenario = parse(demo.builtin(fault, profile, 1.0, 2.5))
            assert scenario.setup.profile == profile
            assert [s.kind for s in scenario.steps if s.is_action] in (["kill"], ["link"])


def test_the_demo_checks_a_script_without_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.txt"
    good.write_text("lab\nkill haproxy on a\nexpect routes at b within 2s\n")
    assert demo.main(["--script", str(good), "--check"]) == 0
    assert "good.txt: 2 steps, ok" in capsys.readouterr().out
    bad = tmp_path / "bad.txt"
    bad.write_text("lab\nexpect routes at c\n")
    assert demo.main(["--script", str(bad), "--check"]) == 2
    assert "bad.txt:2: expect: got 'routes at c'" in capsys.readouterr().err


# -- the log readers ---------------------------------------------------------------------------
def test_vrrp_state_is_what_the_running_agent_last_logged() -> None:
    events = [{"event": "agent_start", "ts": 1.0}, {"event": "transition", "new": "BACKUP", "ts": 2.0},
              {"event": "transition", "new": "MASTER", "ts": 3.0}, {"event": "health", "ts": 4.0}]
    assert observe.vrrp_state(events) == ("MASTER", 3.0, "")
    # A restarted agent knows nothing yet: its predecessor's MASTER does not count.
    restarted = [*events, {"event": "agent_start", "ts": 5.0}]
    assert observe.vrrp_state(restarted) == ("UNKNOWN", 5.0, "agent started")
    resumed = [*restarted, {"event": "transition", "new": "MASTER", "ts": 6.0, "reason": "already MASTER"}]
    assert observe.vrrp_state(resumed) == ("MASTER", 6.0, "already MASTER")


def test_routes_agreed_says_since_when_the_tables_agree() -> None:
    log = [{"event": "routes", "ts": 1.0, "all": "eni-a"}, {"event": "routes", "ts": 2.0, "all": "eni-a"},
           {"event": "routes", "ts": 3.0, "all": None}, {"event": "routes", "ts": 4.0, "all": "eni-b"},
           {"event": "routes", "ts": 5.0, "all": "eni-b"}]
    assert observe.routes_agreed(log) == ("eni-b", 4.0)
    assert observe.routes_agreed(log[:3]) == (None, 3.0)
    # a -> (disagree) -> b is one move; a -> a after a repair is none.
    assert [r["ts"] for r in observe.route_changes(log)] == [4.0]
    repaired = [*log[:2], {"event": "routes", "ts": 3.0, "all": None}, {"event": "routes", "ts": 4.0, "all": "eni-a"}]
    assert observe.route_changes(repaired) == []
    assert observe.route_changes(log, after=4.5) == []


def test_the_client_s_answers_ignore_failures_but_not_another_node() -> None:
    records = [{"done": 1.0, "node": "a"}, {"done": 2.0, "node": "b"}, {"done": 2.5, "error": "timeout"},
               {"done": 3.0, "node": "b"}]
    assert observe.client_answered_by(records) == ("b", 2.0)
    assert observe.client_answered_by([*records, {"done": 4.0, "node": "a"}]) == ("a", 4.0)
    assert observe.client_answered_by([]) == (None, None)


def test_requests_sent_before_a_time_are_complete_only_when_none_is_in_flight() -> None:
    records = [{"i": 0, "sent": 1.0}, {"i": 2, "sent": 1.2}, {"i": 3, "sent": 2.5}]
    before, complete = observe.sent_before(records, 2.0)
    assert [r["i"] for r in before] == [0, 2] and not complete  # request 1 has not finished
    before, complete = observe.sent_before([*records, {"i": 1, "sent": 1.1, "error": "timeout"}], 2.0)
    assert len(before) == 3 and complete
    assert observe.sent_before(records[:2], 2.0)[1] is False  # nothing sent after 2.0 has finished yet


def test_a_failure_count_may_leave_out_only_resets_that_overlap_a_next_hop_change() -> None:
    steps = parse("mark m\nexpect failed 0 since m apart from resets at a route switch\n"
                  "expect failed 0 since m\n", "s.txt").steps
    assert [s.apart for s in steps[1:]] == [True, False]
    # The emulator changed the next hop between 10.0 (the poll's answer) and 10.002 (the command returned).
    switches = observe.kernel_switches([
        {"event": "routes", "ts": 5.0, "kernel_ts": 5.001}, {"event": "routes", "ts": 7.0, "kernel_ts": None},
        {"event": "routes", "ts": 10.0, "kernel_ts": 10.002}, {"event": "emulator_stop", "ts": 11.0}])
    assert switches == [(5.0, 5.001), (10.0, 10.002)]
    reset = {"sent": 9.999, "done": 10.004, "error": "ConnectionResetError"}
    assert observe.reset_at_a_switch(reset, switches)
    assert not observe.reset_at_a_switch({**reset, "error": "TimeoutError"}, switches)  # not a reset
    assert not observe.reset_at_a_switch({**reset, "sent": 10.003}, switches)  # after the change
    assert not observe.reset_at_a_switch({**reset, "done": 9.9995}, switches)  # before it
    assert not observe.reset_at_a_switch({"sent": 10.0, "done": 10.001, "status": 200}, switches)  # no failure


def _emf(ts: float, **values: float) -> dict[str, Any]:
    return {"_aws": {"Timestamp": int(ts * 1000), "CloudWatchMetrics": [
        {"Namespace": "HaproxyHa", "Dimensions": [["Pair", "Node"]], "Metrics": [{"Name": k} for k in values]}]},
            "Pair": "p", "Node": "b", **values}


def test_a_metric_s_state_is_its_latest_value_since_the_first_record_of_its_run() -> None:
    records = [_emf(1.0, VrrpBackup=1, VrrpMaster=0), _emf(2.0, Requests=5), _emf(3.0, VrrpBackup=0, VrrpMaster=1),
               _emf(63.0, VrrpBackup=0, VrrpMaster=1)]  # the periodic record restates it
    assert observe.metric_state(records, "VrrpMaster") == ("1", 3.0)
    assert observe.metric_state(records[:2], "VrrpMaster") == ("0", 1.0)
    assert observe.metric_state(records, "Failovers") == (None, None)
    # A name in a record's members but not among its metrics is no metric.
    assert observe.metric_state([{**_emf(1.0, Requests=1), "Failovers": 1}], "Failovers") == (None, None)


def test_a_metric_s_events_are_its_records_since_a_time() -> None:
    records = [_emf(1.0, Failovers=1, FailoverTakeOverTime=300.5), _emf(5.0, VrrpMaster=1),
               _emf(9.0, Failovers=1, FailoverTakeOverTime=120)]
    assert [ts for ts, _ in observe.metric_events(records, "Failovers")] == [1.0, 9.0]
    assert [r["FailoverTakeOverTime"] for _, r in observe.metric_events(records, "Failovers", after=2.0)] == [120]
    assert observe.metric_text(120.0) == "120" and observe.metric_text(300.5) == "300.5"


def test_counts_compare_as_the_script_says() -> None:
    assert compare("at most", 1, 1) and not compare("at most", 2, 1)
    assert compare("at least", 2, 1) and not compare("at least", 0, 1)
    assert compare("exactly", 0, 0) and not compare("exactly", 1, 0)


def test_the_answers_check_needs_an_answer_and_only_from_lab_nodes() -> None:
    assert check_answers([{"node": "a"}, {"error": "timeout"}, {"node": "b"}]) == "yes, all 2"
    for nobody in ([], [{"error": "timeout"}]):
        with pytest.raises(AssertionError, match="no answer at all"):
            check_answers(nobody)
    with pytest.raises(AssertionError, match=r"answers from \['None', 'c'\]"):
        check_answers([{"node": "a"}, {"node": "c"}, {}])
    # The HTTPS client's: and each reached the backend as HTTPS.
    assert check_answers([{"node": "a", "proto": "https"}, {"error": "SSLCertVerificationError"}], proto="https")
    with pytest.raises(AssertionError, match=r"X-Forwarded-Proto \['None', 'http'\], not only https"):
        check_answers([{"node": "a", "proto": "https"}, {"node": "b", "proto": "http"}, {"node": "a"}], proto="https")


def test_answers_are_counted_by_node_and_failures_apart() -> None:
    assert count_answers([{"node": "a"}, {"error": "timeout"}, {"node": "b"}, {"node": "b"}]) == {
        "requests": 4, "failed": 1, "answered": {"a": 1, "b": 2}}
    assert count_answers([]) == {"requests": 0, "failed": 0, "answered": {}}


def test_an_expect_holds_only_if_it_held_within_its_bound_and_still_holds() -> None:
    # The action was at 10.0 and the bound is 2 s.
    assert in_time("b", "b", 11.5, 10.0, 12.0) is True
    assert in_time("b", "b", 12.5, 10.0, 12.0) is False  # too late, and that cannot change
    assert in_time("b", "b", 3.0, 10.0, 12.0) is True  # it held before the action, and still does
    assert in_time("b", "a", 11.0, 10.0, 12.0) is None  # not (yet): keep watching until the bound
    assert in_time("UNKNOWN", "UNKNOWN", None, 10.0, 12.0) is None
