"""The pair's observability in the template: the pair's name, log groups and retention, the alarms
(metric, statistic, period, threshold, evaluation, missing data, actions), the dashboard's widgets,
the saved queries, the CloudTrail route-write alarm; and the props' checks."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import pytest
from aws_cdk import App, Duration, Stack, Token
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sns as sns
from aws_cdk.assertions import Template
from cdk_nag import AwsSolutionsChecks
from constructs import Construct
from template_tools import PLACEHOLDER_ENV, REPO, STACK_ID, Resolver, new_app, new_stack, node_documents

from haproxy_ha import HaproxyHa, HaproxyHaPropsError, Listener, observability
from haproxy_ha.construct import PAIR_NAME_MAX
from haproxy_ha_runtime import config, metrics, reconcile_metrics, shipping
from haproxy_ha_runtime.config import parse_config
from haproxy_ha_runtime.problems import Problems

VIP = "192.168.254.10"
LISTENERS = [
    Listener(port=80, name="web", backends=("10.0.1.10:8080", "10.0.2.10:8080"), check_path="/healthz"),
    Listener(port=81, name="hello", static_reply="hello from {node}"),
    Listener(port=5432, name="pg", mode="tcp", backends=("10.0.1.20:5432",)),
]
# Every name a node, the reconciler or the CloudTrail filter publishes.
CONTRACT_NAMES = {v for k, v in vars(metrics).items() if k.isupper() and isinstance(v, str)} - {
    metrics.NAMESPACE, metrics.PAIR, metrics.NODE, metrics.LISTENER, metrics.BACKEND}
PLANNED = {metrics.PLANNED_MOVES, metrics.PLANNED_MOVE_TIME, metrics.ROUTE_REPAIRS, metrics.ROUTE_REPAIR_TIME,
           metrics.ROUTES_MOVED}


@dataclass
class Synth:
    stack: Stack
    lb: HaproxyHa
    doc: dict[str, Any]

    def pair(self) -> str:
        return self.lb.metrics_pair

    def alarms(self) -> dict[str, dict[str, Any]]:
        """Alarm properties by the alarm's path under Observability/Alarms ("Degraded", "BackendDown/web")."""
        found = {}
        for alarm in self.lb.alarms.all():
            path = alarm.node.path.split("/Observability/Alarms/", 1)[1]
            found[path] = self.doc["Resources"][self.stack.get_logical_id(alarm.node.default_child)]  # type: ignore[arg-type]
        return found

    def of_type(self, rtype: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.doc["Resources"].items() if v["Type"] == rtype}


def synth(stack: Stack, **props: Any) -> Synth:
    lb = HaproxyHa(stack, "Lb", vip=VIP, **props)
    return Synth(stack, lb, Template.from_stack(stack).to_json())


@pytest.fixture(scope="module")
def full() -> Synth:
    """Three listeners (HTTP with backends, a static reply, TCP), a topic, a CloudTrail log group
    and non-default degraded_after and retention."""
    stack = new_stack()
    return synth(stack, listeners=LISTENERS, alarm_topic=sns.Topic(stack, "Pager"),
                 cloudtrail_log_group=logs.LogGroup.from_log_group_name(stack, "Trail", "cloudtrail-events"),
                 degraded_after=Duration.minutes(20), log_retention=logs.RetentionDays.TWO_WEEKS)


@pytest.fixture(scope="module")
def lean() -> Synth:
    """The same listeners with the detailed HAProxy metrics off, and nothing else given."""
    return synth(new_stack(), listeners=LISTENERS, detailed_metrics=False)


def metric_stats(alarm: dict[str, Any]) -> list[tuple[str, dict[str, Any], str, int]]:
    """(metric name, dimensions, statistic, period) of every metric the alarm reads."""
    props = alarm["Properties"]
    stats = [m["MetricStat"] for m in props.get("Metrics", []) if "MetricStat" in m]
    return [(s["Metric"]["MetricName"], {d["Name"]: d["Value"] for d in s["Metric"]["Dimensions"]}, s["Stat"],
             s["Period"]) for s in stats]


def expression(alarm: dict[str, Any]) -> str | None:
    (returned,) = [m for m in alarm["Properties"]["Metrics"] if m.get("ReturnData", True)]
    return returned.get("Expression")


def shape(alarm: dict[str, Any]) -> tuple[str, float, int, int, str]:
    p = alarm["Properties"]
    return (p["ComparisonOperator"], p["Threshold"], p["EvaluationPeriods"], p["DatapointsToAlarm"],
            p["TreatMissingData"])


LT, GE = "LessThanThreshold", "GreaterThanOrEqualToThreshold"


# --- the pair's name ------------------------------------------------------------------------------

def test_the_pair_is_named_for_its_stack_and_path_and_goes_into_both_documents(app_doc: dict[str, Any]) -> None:
    docs = node_documents(app_doc)
    pair = next(iter(docs.values()))["pair_name"]
    assert re.fullmatch(r"HaproxyHa-HaproxyHa-[0-9a-f]{8}", pair)
    # The log groups' prefix adds the stack instance: the first 8 hex digits of the stack's ID.
    prefix = f"/haproxy-ha/{pair}/{STACK_ID.rsplit('/', 1)[1][:8]}"
    assert [(d["pair_name"], d["detailed_metrics"], d["log_group_prefix"]) for d in docs.values()] == [
        (pair, True, prefix)] * 2
    assert "metrics_pair" not in next(iter(docs.values()))
    parsed = [parse_config(d) for d in docs.values()]
    assert [(c.pair_name, c.log_group_prefix) for c in parsed] == [(pair, prefix)] * 2


def test_pair_names_differ_between_stacks_and_pairs_and_fit_with_the_longest_stack_name() -> None:
    app = new_app()
    one, two = new_stack(app, "One"), new_stack(app, "Two")
    first, second = HaproxyHa(one, "Lb", vip=VIP), HaproxyHa(two, "Lb", vip=VIP)
    third = HaproxyHa(Construct(two, "a.b"), "Lb", vip="192.168.254.11", vpc=second.vpc)
    deep: Construct = Stack(App(), "S", stack_name="s" * 128, env=PLACEHOLDER_ENV)
    for i in range(4):
        deep = Construct(deep, f"Level{i}-" + "x" * 40)
    longest = HaproxyHa(deep, "Lb", vip=VIP)
    names = [lb.metrics_pair for lb in (first, second, third, longest)]
    assert len(set(names)) == 4
    assert names[:2] == ["One-Lb-" + names[0][-8:], "Two-Lb-" + names[1][-8:]]
    assert len(names[3]) <= PAIR_NAME_MAX and names[3].startswith("s" * 128 + "-Level0-")
    assert all(config.PAIR_NAME_RE.fullmatch(n) for n in names)
    # Each prefix is the pair's name and the stack instance, known at deploy time; with the
    # preview's placeholder, as long as a real one, every prefix passes the node's own check,
    # the longest too.
    lbs = (first, second, third, longest)
    assert [Stack.of(lb).resolve(lb.log_group_prefix)["Fn::Join"][1][0] for lb in lbs] == [
        f"/haproxy-ha/{n}/" for n in names]
    prefixes = [observability.preview_log_group_prefix(n) for n in names]
    assert prefixes == [f"/haproxy-ha/{n}/00000000" for n in names]
    checked = Problems()
    assert [config.check_log_group_prefix(checked, p) for p in prefixes] == prefixes and not checked.items
    assert len(shipping.log_group(prefixes[3], "keepalived")) <= 512


def test_the_reconciler_gets_the_pairs_name_for_its_metrics(app_doc: dict[str, Any]) -> None:
    (reconcile,) = [v for k, v in app_doc["Resources"].items()
                    if v["Type"] == "AWS::Lambda::Function" and "Reconcile" in k]
    pair = next(iter(node_documents(app_doc).values()))["pair_name"]
    assert reconcile["Properties"]["Environment"]["Variables"][reconcile_metrics.PAIR_NAME_ENV] == pair
    assert reconcile_metrics.PAIR_NAME_ENV == "PAIR_NAME"


def test_detailed_metrics_off_reaches_the_documents(lean: Synth) -> None:
    assert lean.lb.detailed_metrics is False
    assert [d["detailed_metrics"] for d in node_documents(lean.doc).values()] == [False, False]


# --- log groups -----------------------------------------------------------------------------------

# Another instance of the stack named Test: made again after the first failed to create, or was deleted.
OTHER_STACK_ID = "arn:aws:cloudformation:eu-west-1:123456789012:stack/Test/9d3e1f70-e0a1-11f0-9a4b-0a1b2c3d4e5f"
# What CloudFormation leaves behind when it deletes a resource under these policies.
KEPT = ("Retain", "RetainExceptOnCreate")


def pair_log_groups(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in doc["Resources"].items()
            if v["Type"] == "AWS::Logs::LogGroup" and k.startswith("HaproxyHaObservability")}


def log_group_names(doc: dict[str, Any], stack_id: str) -> set[str]:
    """The pair's log groups' names in one instance of the stack."""
    resolver = Resolver(doc, stack_id)
    return {resolver.resolve(g["Properties"]["LogGroupName"]) for g in pair_log_groups(doc).values()}


def kept_names(doc: dict[str, Any], stack_id: str) -> set[tuple[str, str]]:
    """(type, name) of each resource that CloudFormation leaves behind when it deletes it, in one
    instance of the stack: every name property it is given (one that CloudFormation makes up is
    new each time)."""
    resolver = Resolver(doc, stack_id)
    return {(r["Type"], resolver.resolve(value)) for r in doc["Resources"].values()
            if r.get("DeletionPolicy") in KEPT
            for key, value in r.get("Properties", {}).items() if key.endswith("Name")}


def test_four_log_groups_named_as_the_node_ships_keep_events_for_the_retention_given(
        app_doc: dict[str, Any], full: Synth) -> None:
    default = pair_log_groups(app_doc)
    assert sorted(re.sub(r"[0-9A-F]{8}$", "", k) for k in default) == [
        f"HaproxyHaObservability{s}" for s in ("AgentLogs", "HaproxyLogs", "KeepalivedLogs", "MetricsLogs")]
    prefix = next(iter(node_documents(app_doc).values()))["log_group_prefix"]
    assert log_group_names(app_doc, STACK_ID) == {shipping.log_group(prefix, kind) for kind in shipping.LOG_GROUPS}
    assert [g["Properties"]["RetentionInDays"] for g in default.values()] == [30] * 4
    given = [full.doc["Resources"][full.stack.get_logical_id(g.node.default_child)]  # type: ignore[arg-type]
             for g in full.lb.log_groups.all()]
    assert [g["Properties"]["LogGroupName"] for g in given] == [
        full.stack.resolve(f"{full.lb.log_group_prefix}/{kind}")
        for kind in ("agent", "metrics", "haproxy", "keepalived")]
    assert [g["Properties"]["RetentionInDays"] for g in given] == [14] * 4


@pytest.mark.parametrize("stack_id", [STACK_ID, OTHER_STACK_ID])
def test_the_node_ships_each_file_to_a_group_the_stack_made(app_doc: dict[str, Any], stack_id: str) -> None:
    """The CloudWatch agent's config that a node renders from its document names only the stack's
    groups, in whichever instance of the stack."""
    made = log_group_names(app_doc, stack_id)
    for document in node_documents(app_doc, stack_id).values():
        rendered = json.loads(shipping.render_cloudwatch_agent(parse_config(document)))
        shipped = {c["log_group_name"] for c in rendered["logs"]["logs_collected"]["files"]["collect_list"]}
        assert shipped == made


def test_the_log_groups_are_named_for_the_stack_instance(app_doc: dict[str, Any]) -> None:
    """PREFIX is /haproxy-ha/<pair>/<the first 8 hex digits of the UUID that ends the stack's ID>:
    the same for the life of a stack (an update keeps its ID), new for a stack made again under
    the same name."""
    pair = next(iter(node_documents(app_doc).values()))["pair_name"]
    for stack_id in (STACK_ID, OTHER_STACK_ID):
        instance = stack_id.rsplit("/", 1)[1].split("-")[0]
        assert re.fullmatch(r"[0-9a-f]{8}", instance)
        assert log_group_names(app_doc, stack_id) == {f"/haproxy-ha/{pair}/{instance}/{kind}"
                                                      for kind in shipping.LOG_GROUPS}


def test_the_log_groups_outlive_the_stack_and_a_replacement(app_doc: dict[str, Any]) -> None:
    """A pair's logs stay when its stack is deleted, or an update replaces its groups (an upgrade
    from 0.1.0 does), and expire by their retention.  So do a failed create's, which say why its
    nodes never signalled."""
    groups = pair_log_groups(app_doc)
    assert len(groups) == 4
    assert {(g["DeletionPolicy"], g["UpdateReplacePolicy"]) for g in groups.values()} == {("Retain", "Retain")}


def test_a_stack_made_again_under_its_name_takes_no_name_that_an_earlier_one_left_behind(
        app_doc: dict[str, Any]) -> None:
    """A retry after a failed first deploy, and a deploy after `cdk destroy`, make the stack anew
    under the same name, with a new ID, while what the earlier one kept is still there: nothing
    it keeps on delete may be named alike in both.  Nor may it take a name that release 0.1.0
    kept, for a stack of that release deleted and made again with this one."""
    first, again = kept_names(app_doc, STACK_ID), kept_names(app_doc, OTHER_STACK_ID)
    assert {("AWS::Logs::LogGroup", n) for n in log_group_names(app_doc, STACK_ID)} <= first
    assert not first & again
    release = json.loads((REPO / "releases" / "0.1.0" / "HaproxyHa.template.json").read_text())
    assert len(kept_names(release, STACK_ID)) == 4
    assert not kept_names(release, STACK_ID) & first


@pytest.mark.parametrize("node", ["A", "B"])
def test_a_node_of_release_0_1_0_may_ship_to_that_releases_groups_until_an_upgrade_replaces_it(
        app_doc: dict[str, Any], node: str) -> None:
    """Its CloudWatch agent's config names them until the node is replaced, and the upgrade
    changes the roles first: the grant on those names, exactly those of this stack's 0.1.0
    template, keeps its events and the EMF records the alarms read shipping through the upgrade."""
    release = json.loads((REPO / "releases" / "0.1.0" / "HaproxyHa.template.json").read_text())
    old_names = {g["Properties"]["LogGroupName"] for g in pair_log_groups(release).values()}
    (policy,) = [v for k, v in app_doc["Resources"].items()
                 if v["Type"] == "AWS::IAM::Policy" and k.startswith(f"HaproxyHaNode{node}Role")]
    by_name = [r for st in policy["Properties"]["PolicyDocument"]["Statement"]
               if "logs:PutLogEvents" in st["Action"] for r in st["Resource"] if isinstance(r, str)]
    arn = re.compile(r"arn:aws:logs:eu-west-1:123456789012:log-group:(?P<name>.+):\*")
    assert {arn.fullmatch(r)["name"] for r in by_name} == old_names  # type: ignore[index]
    assert len(by_name) == 4


def test_the_documents_are_written_once_the_log_groups_they_name_exist(app_doc: dict[str, Any]) -> None:
    """The documents name the groups by the stack's ID, not by a reference to them: they wait for
    them, so that no node ships to a group that does not exist yet (an upgrade from 0.1.0 makes them)."""
    (documents,) = [v for v in app_doc["Resources"].values() if v["Type"] == "Custom::HaproxyHaNodeDocuments"]
    assert set(pair_log_groups(app_doc)) <= set(documents["DependsOn"])


# --- alarms ---------------------------------------------------------------------------------------

def test_the_pair_alarms_read_the_contract_metrics_with_their_statistic_threshold_and_missing_data(
        full: Synth) -> None:
    pair, alarms = full.pair(), full.alarms()
    nodes = [{"Pair": pair, "Node": n} for n in ("a", "b")]
    both = "FILL(node_a, 0) + FILL(node_b, 0)"
    expected = {
        # Fewer than two healthy nodes for degraded_after; a dead node publishes nothing, so no data breaches.
        "Degraded": (both, [(metrics.HAPROXY_HEALTHY, d, "Minimum", 60) for d in nodes], (LT, 2, 20, 20, "breaching")),
        # No node owned the VIP for two minutes (a node writes every 60 s, not on the minute, so one
        # minute may hold none of its records); both silent is the worst case, so no data breaches.
        "NoActiveNode": (both, [(metrics.ACTIVE, d, "Maximum", 60) for d in nodes], (LT, 1, 2, 2, "breaching")),
        # Any failover in a minute; no data is no failover.
        "Failover": (both, [(metrics.FAILOVERS, d, "Sum", 60) for d in nodes], (GE, 1, 1, 1, "notBreaching")),
        # Only listeners with backends: no node saw one of their servers up for two minutes.
        **{f"BackendDown/{name}": (
            "MAX([FILL(node_a, 0), FILL(node_b, 0)])",
            [(metrics.SERVERS_UP, {**d, "Backend": name}, "Maximum", 60) for d in nodes],
            (LT, 1, 2, 2, "notBreaching")) for name in ("web", "pg")},
        # Per node, three minutes with no successful call; a silent node is the degraded alarm's.
        **{f"Ec2ApiUnreachable/{n}": (None, [(metrics.EC2_API_REACHABLE, d, "Maximum", 60)],
                                      (LT, 1, 3, 3, "notBreaching")) for n, d in zip("ab", nodes, strict=True)},
    }
    assert set(alarms) == set(expected) | {"RouteAudit/Alarm"}
    for path, (expr, reads, alarm_shape) in expected.items():
        assert expression(alarms[path]) == expr, path
        assert metric_stats(alarms[path]) == reads, path
        assert shape(alarms[path]) == alarm_shape, path
        assert alarms[path]["Properties"]["AlarmDescription"].startswith(f"haproxy-ha pair {pair}: ")


def test_no_alarm_reads_a_planned_move_and_every_metric_is_the_contracts(app_doc: dict[str, Any], full: Synth,
                                                                          lean: Synth) -> None:
    read = set()
    for doc in (app_doc, full.doc, lean.doc):
        for alarm in (v for v in doc["Resources"].values() if v["Type"] == "AWS::CloudWatch::Alarm"):
            read |= {name for name, *_ in metric_stats(alarm)}
    assert read <= CONTRACT_NAMES | {observability.ROUTE_WRITES_NOT_VIP}
    assert not read & PLANNED
    assert metrics.FAILOVERS in read


def test_the_default_app_has_no_backend_alarm_for_a_static_reply_and_no_route_audit(app_doc: dict[str, Any]) -> None:
    alarms = [k for k, v in app_doc["Resources"].items() if v["Type"] == "AWS::CloudWatch::Alarm"]
    assert sorted(re.sub(r"[0-9A-F]{8}$", "", k) for k in alarms) == sorted(
        f"HaproxyHaObservabilityAlarms{a}" for a in ("Degraded", "NoActiveNode", "Failover", "Ec2ApiUnreachablea",
                                                     "Ec2ApiUnreachableb"))
    assert not [v for v in app_doc["Resources"].values() if v["Type"] == "AWS::Logs::MetricFilter"]
    assert all("AlarmActions" not in app_doc["Resources"][k]["Properties"] for k in alarms)


def test_alarms_notify_the_topic_and_lasting_conditions_notify_their_end(full: Synth) -> None:
    topic = {"Ref": full.stack.get_logical_id(full.stack.node.find_child("Pager").node.default_child)}  # type: ignore[arg-type]
    events = {"Failover", "RouteAudit/Alarm"}
    for path, alarm in full.alarms().items():
        props = alarm["Properties"]
        assert props["AlarmActions"] == [topic], path
        assert props.get("OKActions") == (None if path in events else [topic]), path


def test_alarms_come_after_the_vip_routes_so_a_first_deploy_and_a_teardown_page_nobody(full: Synth) -> None:
    routes = full.stack.get_logical_id(full.lb.vip_routes.node.default_child)  # type: ignore[arg-type]
    assert all(routes in alarm["DependsOn"] for alarm in full.alarms().values())


def test_route_writes_not_to_the_vip_are_counted_from_cloudtrail_per_role_and_alarm(full: Synth) -> None:
    (metric_filter,) = full.of_type("AWS::Logs::MetricFilter").values()
    props = metric_filter["Properties"]
    assert props["LogGroupName"] == "cloudtrail-events"
    roles = [full.stack.get_logical_id(r.node.default_child)  # type: ignore[arg-type]
             for r in (full.lb.nodes[0].role, full.lb.nodes[1].role, full.lb.route_function.role)]
    arns = " || ".join(f'($.userIdentity.sessionContext.sessionIssuer.arn = "att-{r}-Arn")' for r in roles)
    assert Resolver(full.doc).resolve(props["FilterPattern"]) == (
        '{ ($.eventSource = "ec2.amazonaws.com") && (($.eventName = "CreateRoute") || ($.eventName = "ReplaceRoute")'
        f' || ($.eventName = "DeleteRoute")) && ({arns}) && (($.requestParameters.destinationCidrBlock != '
        f'"{VIP}/32") || ($.requestParameters.destinationCidrBlock NOT EXISTS)) }}')
    assert props["MetricTransformations"] == [{
        "MetricNamespace": metrics.NAMESPACE, "MetricName": observability.ROUTE_WRITES_NOT_VIP, "MetricValue": "1",
        "Dimensions": [{"Key": "Role", "Value": "$.userIdentity.sessionContext.sessionIssuer.userName"}]}]
    alarm = full.alarms()["RouteAudit/Alarm"]
    assert expression(alarm) == "FILL(role0, 0) + FILL(role1, 0) + FILL(role2, 0)"
    assert metric_stats(alarm) == [(observability.ROUTE_WRITES_NOT_VIP, {"Role": {"Ref": r}}, "Sum", 300)
                                   for r in roles]
    assert shape(alarm) == (GE, 1, 1, 1, "notBreaching")


def test_the_route_write_pattern_fits_the_1024_characters_of_a_filter_with_the_longest_role_names() -> None:
    arn = "arn:aws-us-gov:iam::123456789012:role/" + "r" * 64
    assert len(observability.route_write_pattern("255.255.255.254", [arn] * 3).log_pattern_string) <= 1024


# --- dashboard ------------------------------------------------------------------------------------

def widgets(s: Synth) -> list[dict[str, Any]]:
    (dashboard,) = s.of_type("AWS::CloudWatch::Dashboard").values()
    body = json.loads(Resolver(s.doc).resolve(dashboard["Properties"]["DashboardBody"]))
    return list(body["widgets"])


def graphed(widget: dict[str, Any]) -> list[tuple[str, dict[str, str], str]]:
    """(metric name, dimensions, statistic) of each metric in a graph widget."""
    out = []
    for m in widget["properties"].get("metrics", []):
        *names, options = m
        assert names[0] == metrics.NAMESPACE
        out.append((names[1], dict(zip(names[2::2], names[3::2], strict=True)),
                    options.get("stat", "Average")))  # the dashboard omits its default
    return out


def by_title(s: Synth) -> dict[str, list[tuple[str, dict[str, str], str]]]:
    return {w["properties"]["title"]: graphed(w) for w in widgets(s) if w["type"] == "metric"}


def test_the_dashboard_shows_who_is_active_failovers_take_over_times_health_and_api_per_node(full: Synth) -> None:
    graphs, pair = by_title(full), full.pair()

    def per_node(name: str, stat: str, **dims: str) -> list[tuple[str, dict[str, str], str]]:
        return [(name, {"Node": n, "Pair": pair, **dims}, stat) for n in "ab"]

    assert graphs["Active node (owns the VIP, healthy)"] == per_node(metrics.ACTIVE, "Maximum")
    assert graphs["VRRP: MASTER (left), FAULT (right)"] == (per_node(metrics.VRRP_MASTER, "Maximum")
                                                             + per_node(metrics.VRRP_FAULT, "Maximum"))
    assert graphs["Failovers and planned moves"] == (per_node(metrics.FAILOVERS, "Sum")
                                                      + per_node(metrics.PLANNED_MOVES, "Sum"))
    assert graphs["Take-over time (ms)"] == (per_node(metrics.FAILOVER_TIME, "Maximum")
                                              + per_node(metrics.PLANNED_MOVE_TIME, "Maximum"))
    assert graphs["HAProxy healthy"] == per_node(metrics.HAPROXY_HEALTHY, "Minimum")
    assert graphs["EC2 API reachable (own role)"] == per_node(metrics.EC2_API_REACHABLE, "Minimum")
    # Requests, 5xx and latency per HTTP listener; sessions for each; servers up where there are servers.
    assert graphs["web: requests (left), 5xx (right)"] == (per_node(metrics.REQUESTS, "Sum", Listener="web")
                                                            + per_node(metrics.HTTP_5XX, "Sum", Listener="web"))
    assert graphs["web: response time (ms)"] == per_node(metrics.RESPONSE_TIME, "Average", Backend="web")
    assert graphs["web: servers up (left), servers (right)"] == (
        per_node(metrics.SERVERS_UP, "Minimum", Backend="web") + per_node(metrics.SERVERS, "Maximum", Backend="web"))
    for name in ("web", "hello", "pg"):
        assert graphs[f"{name}: sessions"] == per_node(metrics.CURRENT_SESSIONS, "Maximum", Listener=name)
    assert "hello: servers up (left), servers (right)" not in graphs
    assert "pg: requests (left), 5xx (right)" not in graphs and "pg: response time (ms)" not in graphs
    assert graphs["Reconciler: routes not at a healthy node (left), routes moved (right)"] == [
        (metrics.ROUTES_NOT_AT_HEALTHY_NODE, {"Pair": pair}, "Maximum"), (metrics.ROUTES_MOVED, {"Pair": pair}, "Sum")]
    every = [m for ms in graphs.values() for m in ms]
    assert {name for name, *_ in every} <= CONTRACT_NAMES
    assert {dims["Pair"] for _, dims, _ in every} == {pair}


def test_the_dashboard_lists_every_alarm_and_fits_its_grid(full: Synth) -> None:
    (status,) = [w for w in widgets(full) if w["type"] == "alarm"]
    alarm_ids = [full.stack.get_logical_id(a.node.default_child) for a in full.lb.alarms.all()]  # type: ignore[arg-type]
    assert status["properties"]["alarms"] == [f"att-{a}-Arn" for a in alarm_ids]
    assert len(alarm_ids) == 8
    assert all(w["x"] + w["width"] <= 24 for w in widgets(full))


def test_without_detailed_metrics_the_dashboard_keeps_backend_health_and_drops_traffic(lean: Synth) -> None:
    shown = {name for ms in by_title(lean).values() for name, *_ in ms}
    assert not shown & {metrics.REQUESTS, metrics.HTTP_5XX, metrics.CURRENT_SESSIONS, metrics.RESPONSE_TIME}
    assert {metrics.SERVERS_UP, metrics.SERVERS, metrics.ACTIVE} <= shown
    # The alarms do not depend on the detailed metrics.
    assert set(lean.alarms()) == {"Degraded", "NoActiveNode", "Failover", "BackendDown/web", "BackendDown/pg",
                                  "Ec2ApiUnreachable/a", "Ec2ApiUnreachable/b"}


# --- saved queries ---------------------------------------------------------------------------------

def test_the_saved_queries_are_the_docs_and_read_the_right_log_groups(full: Synth) -> None:
    pair, q = full.pair(), full.lb.log_queries
    group = {k: {"Ref": full.stack.get_logical_id(g.node.default_child)}  # type: ignore[arg-type]
             for k, g in (("agent", full.lb.log_groups.agent), ("haproxy", full.lb.log_groups.haproxy))}
    expected = [
        (q.failovers, f"haproxy-ha/{pair}/failovers", observability.failovers_query(), group["agent"]),
        (q.errors_5xx_by_backend, f"haproxy-ha/{pair}/5xx by backend", observability.errors_5xx_query(),
         group["haproxy"]),
        *((q.state_changes[n], f"haproxy-ha/{pair}/node {n} states", observability.state_changes_query(n),
           group["agent"]) for n in "ab"),
    ]
    readme = (REPO / "docs" / "observability.md").read_text()
    for definition, name, query, log_group in expected:
        props = full.doc["Resources"][full.stack.get_logical_id(definition.node.default_child)]["Properties"]  # type: ignore[arg-type]
        assert (props["Name"], props["QueryString"], props["LogGroupNames"]) == (name, query.to_string(), [log_group])
    for text in (observability.failovers_query().to_string(), observability.errors_5xx_query().to_string(),
                 observability.state_changes_query("a").to_string()):
        assert f"```\n{text}\n```" in readme


# --- template checks on the fuller construct -------------------------------------------------------

def test_the_full_construct_has_no_unacknowledged_cdk_nag_finding(full: Synth) -> None:
    report = AwsSolutionsChecks(full.stack.node.root, verbose=True).validate_scope(full.lb)  # type: ignore[arg-type]
    findings = [f"{v.rule_name} at {', '.join(r.construct_path for r in v.violating_resources)}"
                for v in report.violations]
    assert report.success, findings


def test_the_full_construct_passes_cfn_lint(full: Synth, tmp_path: Any) -> None:
    from test_template_checks import cfn_lint

    path = tmp_path / "Full.template.json"
    path.write_text(json.dumps(full.doc))
    result = cfn_lint(path)
    assert not result.returncode & 3, result.stdout + result.stderr


# --- props ----------------------------------------------------------------------------------------

def problems(stack: Stack, **props: Any) -> list[str]:
    with pytest.raises(HaproxyHaPropsError) as e:
        HaproxyHa(stack, "Lb", vip=VIP, **props)
    return e.value.problems


@pytest.mark.parametrize(("props", "expected"), [
    ({"log_retention": 30}, "log_retention: got 30; allowed: a logs.RetentionDays, such as RetentionDays.ONE_MONTH"),
    ({"degraded_after": 15}, "degraded_after: got 15; allowed: a Duration of whole minutes from 2 to 1440, such as "
                             "Duration.minutes(15)"),
    ({"degraded_after": Duration.seconds(90)}, "degraded_after: got '1 minute 30 seconds'; allowed: a Duration of "
                                               "whole minutes from 2 to 1440"),
    ({"degraded_after": Duration.seconds(0)}, "degraded_after: got '0 seconds'; allowed: a Duration of whole minutes"),
    ({"degraded_after": Duration.minutes(1)}, "degraded_after: got '1 minute'; allowed: a Duration of whole minutes "
                                              "from 2 to 1440"),
    ({"degraded_after": Duration.days(2)}, "degraded_after: got '2 days'; allowed: a Duration of whole minutes"),
    ({"detailed_metrics": "yes"}, "detailed_metrics: got 'yes'; allowed: true or false"),
    ({"alarm_topic": "arn:aws:sns:eu-west-1:123456789012:pager"},
     "alarm_topic: got 'arn:aws:sns:eu-west-1:123456789012:pager'; allowed: an sns.ITopic"),
    ({"cloudtrail_log_group": "cloudtrail-events"},
     "cloudtrail_log_group: got 'cloudtrail-events'; allowed: a logs.ILogGroup that a CloudTrail trail delivers to"),
])
def test_fails_when_an_observability_prop_is_bad(stack: Stack, props: dict[str, Any], expected: str) -> None:
    found = problems(stack, **props)
    assert len(found) == 1 and found[0].startswith(expected), found


def test_fails_when_degraded_after_is_a_token(stack: Stack) -> None:
    minutes = Token.as_number({"Ref": "Minutes"})
    (found,) = problems(stack, degraded_after=Duration.minutes(minutes))
    assert found.startswith("degraded_after: got ") and found.endswith("allowed: a Duration known at synth time, "
                                                                       "not a token")


def test_fails_with_every_observability_problem_at_once_next_to_the_others(stack: Stack) -> None:
    found = problems(stack, log_retention="month", degraded_after=Duration.seconds(30), detailed_metrics=None,
                     alarm_topic=1, cloudtrail_log_group=2, stats_port=0)
    assert [p.split(":")[0] for p in found] == ["stats_port", "log_retention", "degraded_after", "detailed_metrics",
                                                "alarm_topic", "cloudtrail_log_group"]
