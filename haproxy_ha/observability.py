"""The pair's observability, stack side (issue 13): its log groups, what the node roles may
publish, the alarms, the dashboard and the saved Logs Insights queries.

The metric names and dimensions are haproxy_ha_runtime.metrics'.  The nodes write them as EMF
records (haproxy_ha_runtime.telemetry), which the CloudWatch agent ships to PREFIX/metrics, where
CloudWatch Logs makes the metrics; the reconciler prints its record to its own function's log.
The Pair dimension is the document's `pair_name` (the construct's `metrics_pair`).  Every alarm and
graph reads them at a one-minute period: a node writes its state and HAProxy's numbers every 60 s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from aws_cdk import ArnFormat, Duration, Fn, RemovalPolicy, Stack
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sns as sns
from constructs import Construct, IDependable

from haproxy_ha import preview
from haproxy_ha_runtime import config, metrics, reconcile_metrics, shipping
from haproxy_ha_runtime.problems import Problems

PERIOD = Duration.minutes(1)
# A node with no successful EC2 call for this many minutes fires its alarm: one failed call is
# not an outage, and a node checks about once a minute, the BACKUP too.
API_UNREACHABLE_MINUTES = 3
# CloudTrail delivers to CloudWatch Logs minutes after the call: a longer period lets a late
# event still fall in a period that the alarm evaluates.
ROUTE_AUDIT_PERIOD = Duration.minutes(5)
# What the CloudTrail metric filter counts, in the pair's namespace, per role that wrote (the
# role's name as the dimension, since a metric filter's dimensions come from the event).
ROUTE_WRITES_NOT_VIP = "RouteWritesNotVip"
ROLE = "Role"
ROUTE_WRITE_EVENTS = ("CreateRoute", "ReplaceRoute", "DeleteRoute")
# The reconciler finds the pair's name (its metrics' Pair dimension) in this environment variable.
RECONCILER_PAIR_VARIABLE = reconcile_metrics.PAIR_NAME_ENV
# The pair's log groups are LOG_GROUP_ROOT/<pair>/<stack instance>/<kind> (shipping.LOG_GROUPS).
LOG_GROUP_ROOT = "/haproxy-ha"
# A node writes its state and samples HAProxy every 60 s, not on the minute: now and then a
# minute holds no record of a node.  The alarms that count a missing node as 0 need two minutes
# (validation.DEGRADED_AFTER_MIN_MINUTES is the same for degraded_after).
GAP_PROOF_MINUTES = 2
# The Logs Insights queries list this many events at most.
QUERY_LIMIT = 50
# HAProxy's `option httplog` line: "... [accept date] frontend backend/server TR/Tw/Tc/Tr/Ta
# status ...".  Five timers, so that a tcplog line (three timers, then a byte count) never matches.
HTTPLOG_PARSE = (r"/\] (?<frontend>\S+) (?<backend>[^\s\/]+)\/(?<server>\S+) (?:[+-]?\d+\/){4}[+-]?\d+ "
                 r"(?<status>\d{3}) /")


@dataclass(frozen=True)
class HaproxyHaLogGroups:
    """The pair's log groups in CloudWatch Logs, PREFIX/<kind>; both nodes ship to each (a stream
    per node and instance)."""

    agent: logs.LogGroup
    """The agent's JSON events (PREFIX/agent): transitions, failovers, route writes."""
    metrics: logs.LogGroup
    """The agent's EMF metric records (PREFIX/metrics), from which CloudWatch makes the metrics."""
    haproxy: logs.LogGroup
    """HAProxy's access log (PREFIX/haproxy)."""
    keepalived: logs.LogGroup
    """keepalived's log (PREFIX/keepalived): elections and VRRP state changes."""

    def all(self) -> tuple[logs.LogGroup, ...]:
        """Every log group of the pair, in shipping.LOG_GROUPS order."""
        return (self.agent, self.metrics, self.haproxy, self.keepalived)


@dataclass(frozen=True)
class HaproxyHaAlarms:
    """The pair's alarms.  None of them reads a planned move (a step-down, a node leaving through
    its termination hook, an operator's move), so a rolling replacement pages nobody."""

    degraded: cloudwatch.Alarm
    """Fewer than two healthy nodes for longer than ``degraded_after``."""
    no_active_node: cloudwatch.Alarm
    """No healthy node owned the VIP (MASTER, HAProxy healthy, every route at it) for a minute."""
    failover: cloudwatch.Alarm
    """A fault moved the VIP."""
    backend_down: Mapping[str, cloudwatch.Alarm]
    """By listener name, for each listener with backends: no node saw any of its servers up for a minute."""
    ec2_api_unreachable: Mapping[str, cloudwatch.Alarm]
    """By node name: the node's read-only EC2 calls all failed for three minutes."""
    route_write_not_vip: cloudwatch.Alarm | None
    """With ``cloudtrail_log_group``: a route write by the node or route-Lambda roles whose
    destination is not the VIP /32."""

    def all(self) -> tuple[cloudwatch.Alarm, ...]:
        """Every alarm, in a fixed order."""
        return (self.degraded, self.no_active_node, self.failover, *self.backend_down.values(),
                *self.ec2_api_unreachable.values(), *((self.route_write_not_vip,) if self.route_write_not_vip else ()))


@dataclass(frozen=True)
class HaproxyHaLogQueries:
    """Saved Logs Insights queries (the console lists them under haproxy-ha/PAIR/)."""

    failovers: logs.QueryDefinition
    """The last failovers, with each take-over time (agent log group)."""
    errors_5xx_by_backend: logs.QueryDefinition
    """5xx answers counted by backend, server and status (HAProxy log group)."""
    state_changes: Mapping[str, logs.QueryDefinition]
    """By node name: that node's VRRP state changes, with the reason (agent log group)."""


@dataclass(frozen=True)
class PairMetrics:
    """The pair's metrics as CloudWatch metrics of one period, by node, listener and backend."""

    pair: str
    nodes: tuple[str, ...]

    def node(self, name: str, node: str, statistic: str, label: str | None = None) -> cloudwatch.Metric:
        """One node's metric (dimensions Pair, Node)."""
        return self._metric(name, {metrics.NODE: node}, statistic, label or f"node {node}")

    def listener(self, name: str, listener: str, node: str, statistic: str, label: str) -> cloudwatch.Metric:
        """A listener's metric on one node (dimensions Pair, Node, Listener)."""
        return self._metric(name, {metrics.NODE: node, metrics.LISTENER: listener}, statistic, label)

    def backend(self, name: str, backend: str, node: str, statistic: str, label: str) -> cloudwatch.Metric:
        """A backend's metric on one node (dimensions Pair, Node, Backend)."""
        return self._metric(name, {metrics.NODE: node, metrics.BACKEND: backend}, statistic, label)

    def of_pair(self, name: str, statistic: str, label: str) -> cloudwatch.Metric:
        """A metric of the whole pair (dimension Pair: the reconciler's)."""
        return self._metric(name, {}, statistic, label)

    def _metric(self, name: str, dimensions: dict[str, str], statistic: str, label: str) -> cloudwatch.Metric:
        return cloudwatch.Metric(namespace=metrics.NAMESPACE, metric_name=name,
                                 dimensions_map={metrics.PAIR: self.pair, **dimensions}, statistic=statistic,
                                 period=PERIOD, label=label)

    def total(self, per_node: Mapping[str, cloudwatch.IMetric], label: str) -> cloudwatch.MathExpression:
        """The sum over the nodes, a node with no data counting 0: a dead node publishes nothing."""
        using = {f"node_{n}": m for n, m in per_node.items()}
        return cloudwatch.MathExpression(expression=" + ".join(f"FILL({i}, 0)" for i in using),
                                         using_metrics=using, period=PERIOD, label=label)

    def best(self, per_node: Mapping[str, cloudwatch.IMetric], label: str) -> cloudwatch.MathExpression:
        """The highest value any node saw, a node with no data counting 0."""
        using = {f"node_{n}": m for n, m in per_node.items()}
        return cloudwatch.MathExpression(expression="MAX([" + ", ".join(f"FILL({i}, 0)" for i in using) + "])",
                                         using_metrics=using, period=PERIOD, label=label)


def stack_instance(stack: Stack) -> str:
    """The first 8 hex digits of the UUID that ends the stack's ID (arn:...:stack/NAME/UUID), a
    token that CloudFormation resolves.  A stack made again under the same name, after a failed
    create or a delete, has a new ID: its groups never take the names of those an earlier one left
    behind.  An update keeps the ID, so a stack in service keeps its groups."""
    return Fn.select(0, Fn.split("-", Fn.select(2, Fn.split("/", stack.stack_id))))


def log_group_prefix(pair: str, instance: str) -> str:
    """LOG_GROUP_ROOT/<pair>/<instance>: the prefix of the pair's log groups, which each node's
    document carries (`log_group_prefix`)."""
    return f"{LOG_GROUP_ROOT}/{pair}/{instance}"


def preview_log_group_prefix(pair: str) -> str:
    """The prefix as the synth-time preview shows it: the stack instance is its placeholder."""
    return log_group_prefix(pair, preview.PLACEHOLDER_STACK_INSTANCE)


def check_log_group_prefix(problems: Problems, stack: Stack, pair: str) -> str | None:
    """The prefix of the pair's log groups in `stack` (a token), or None when the node's own rule
    refuses it.  The rule reads it with the preview's placeholder, as long as a real stack
    instance, in the instance's place."""
    checked = config.check_log_group_prefix(
        problems, preview_log_group_prefix(pair), "log group prefix (from the stack's name and the construct's path)")
    return log_group_prefix(pair, stack_instance(stack)) if checked is not None else None


# The construct IDs of the log groups, by kind (shipping.LOG_GROUPS).
_LOG_GROUP_IDS = {"agent": "AgentLogs", "metrics": "MetricsLogs", "haproxy": "HaproxyLogs",
                  "keepalived": "KeepalivedLogs"}


def make_log_groups(scope: Construct, prefix: str, retention: logs.RetentionDays) -> HaproxyHaLogGroups:
    """The groups the nodes ship to, PREFIX/agent|metrics|haproxy|keepalived (the names the node
    renders into the CloudWatch agent's config, which creates no group), each kept for `retention`.

    They stay when the stack is deleted, or when an update replaces them: a pair's logs outlive
    it, and expire by their retention.  So do those of a create that failed, which say why its
    nodes never signalled.  What stays never blocks a later create, because PREFIX holds the stack
    instance (stack_instance): a stack made again gets new names."""
    return HaproxyHaLogGroups(**{
        kind: logs.LogGroup(scope, _LOG_GROUP_IDS[kind], log_group_name=shipping.log_group(prefix, kind),
                            retention=retention, removal_policy=RemovalPolicy.RETAIN)
        for kind in shipping.LOG_GROUPS})


# What a node's CloudWatch agent does in a group it ships to.
_SHIP_ACTIONS = ("logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams")


def release_0_1_0_log_group_arns(stack: Stack, pair: str) -> tuple[str, ...]:
    """The ARNs of the groups that release 0.1.0 made for the pair, LOG_GROUP_ROOT/<pair>/<kind>,
    each with its streams (:*) as a log group's own ARN has them.  An upgrade from 0.1.0 replaces
    them, and they stay, no longer the stack's."""
    return tuple(stack.format_arn(service="logs", resource="log-group",
                                  resource_name=f"{shipping.log_group(f'{LOG_GROUP_ROOT}/{pair}', kind)}:*",
                                  arn_format=ArnFormat.COLON_RESOURCE_NAME)
                 for kind in shipping.LOG_GROUPS)


def grant_node_telemetry(role: iam.IRole, log_groups: HaproxyHaLogGroups, release_0_1_0_groups: Sequence[str]) -> None:
    """What a node's CloudWatch agent needs to ship its files: a stream of its own in each of the
    pair's groups, and its events there.  Nothing else: the groups exist (it creates none and sets
    no retention), its config has no metrics section, and the node's metrics are EMF lines in
    PREFIX/metrics (no PutMetricData).

    The same on the groups that release 0.1.0 named (`release_0_1_0_groups`, by ARN).  A node of
    that release ships there until an upgrade replaces it (its CloudWatch agent's config is
    rendered at boot), and the upgrade changes the roles before it replaces the nodes: without
    this, the old nodes' events during the upgrade (their hand-overs) and their EMF records,
    which the alarms read, would stop reaching CloudWatch, and no_active_node would page.  Drop it
    once 0.1.0 is no longer a release to upgrade from."""
    for group in log_groups.all():
        group.grant(role, *_SHIP_ACTIONS)
    role.add_to_principal_policy(iam.PolicyStatement(actions=list(_SHIP_ACTIONS), resources=list(release_0_1_0_groups)))


@dataclass(frozen=True)
class AlarmSettings:
    """What the alarms need besides the metrics."""

    degraded_after_minutes: int
    topic: sns.ITopic | None
    # The CloudTrail log group, the VIP and the roles whose route writes it watches; None: no such alarm.
    cloudtrail_log_group: logs.ILogGroup | None
    vip: str
    route_roles: Sequence[iam.IRole]


class _AlarmMaker:
    """Makes each alarm with the pair's description prefix and the topic's actions."""

    def __init__(self, pair: str, topic: sns.ITopic | None) -> None:
        self._pair = pair
        self._topic = topic

    def __call__(self, scope: Construct, id: str, metric: cloudwatch.IMetric, threshold: float, *, below: bool,
                 periods: int, missing: cloudwatch.TreatMissingData, description: str,
                 lasting: bool = True) -> cloudwatch.Alarm:
        """`below`: alarm under the threshold, else at or above it.  `lasting`: a condition that
        ends (its end is notified too), not an event."""
        made = cloudwatch.Alarm(
            scope, id, metric=metric, threshold=threshold,
            comparison_operator=(cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD if below
                                 else cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD),
            evaluation_periods=periods, datapoints_to_alarm=periods, treat_missing_data=missing,
            alarm_description=f"haproxy-ha pair {self._pair}: {description}")
        if self._topic is not None:
            made.add_alarm_action(cloudwatch_actions.SnsAction(self._topic))
            if lasting:
                made.add_ok_action(cloudwatch_actions.SnsAction(self._topic))
        return made


def make_alarms(scope: Construct, pm: PairMetrics, listeners: Sequence[config.Listener], settings: AlarmSettings,
                after: IDependable) -> HaproxyHaAlarms:
    """The pair's alarms, created after `after` (the VIP routes: the nodes serve by then) and
    deleted before it, so that neither a first deploy nor a teardown pages."""
    scope.node.add_dependency(after)
    alarm = _AlarmMaker(pm.pair, settings.topic)
    breaching, not_breaching = cloudwatch.TreatMissingData.BREACHING, cloudwatch.TreatMissingData.NOT_BREACHING
    minutes = settings.degraded_after_minutes
    degraded = alarm(
        scope, "Degraded",
        pm.total({n: pm.node(metrics.HAPROXY_HEALTHY, n, "Minimum") for n in pm.nodes}, "healthy nodes"),
        len(pm.nodes), below=True, periods=minutes, missing=breaching,
        description=f"fewer than {len(pm.nodes)} healthy nodes for {minutes} minutes, longer than a node's "
                    "replacement takes. A node that publishes nothing counts as unhealthy. Look at the node's "
                    "Auto Scaling group and its boot.")
    no_active = alarm(
        scope, "NoActiveNode",
        pm.total({n: pm.node(metrics.ACTIVE, n, "Maximum") for n in pm.nodes}, "nodes that own the VIP"),
        1, below=True, periods=GAP_PROOF_MINUTES, missing=breaching,
        description=f"no healthy node owned the VIP for {GAP_PROOF_MINUTES} minutes (none was MASTER with HAProxy "
                    "healthy and "
                    "every route at it, or none published). Clients of the VIP are not served: run "
                    "haproxy-ha status.")
    failover = alarm(
        scope, "Failover",
        pm.total({n: pm.node(metrics.FAILOVERS, n, "Sum") for n in pm.nodes}, "failovers"),
        1, below=False, periods=1, missing=not_breaching, lasting=False,
        description="a fault moved the VIP to the other node (planned moves are not counted). Find out why "
                    "the old node failed: the saved failovers query, then that node's state changes.")
    backend_scope = Construct(scope, "BackendDown")
    backend_down = {
        lst.name: alarm(
            backend_scope, lst.name,
            pm.best({n: pm.backend(metrics.SERVERS_UP, lst.name, n, "Maximum", f"servers up, node {n}")
                     for n in pm.nodes}, f"{lst.name}: servers up"),
            1, below=True, periods=GAP_PROOF_MINUTES, missing=not_breaching,
            description=f"every server of listener {lst.name}'s backend was down for {GAP_PROOF_MINUTES} minutes, "
                        "as every node "
                        "saw it: the listener answers 503.")
        for lst in listeners if lst.backends
    }
    api_scope = Construct(scope, "Ec2ApiUnreachable")
    api = {
        n: alarm(
            api_scope, n, pm.node(metrics.EC2_API_REACHABLE, n, "Maximum"),
            1, below=True, periods=API_UNREACHABLE_MINUTES, missing=not_breaching,
            description=f"node {n}'s read-only EC2 calls with its own role all failed for "
                        f"{API_UNREACHABLE_MINUTES} minutes: it could not move the VIP routes. Check its NAT "
                        "gateway or EC2 endpoint, and its role.")
        for n in pm.nodes
    }
    route_write = (_route_write_alarm(Construct(scope, "RouteAudit"), settings, alarm)
                   if settings.cloudtrail_log_group is not None else None)
    return HaproxyHaAlarms(degraded=degraded, no_active_node=no_active, failover=failover, backend_down=backend_down,
                           ec2_api_unreachable=api, route_write_not_vip=route_write)


def route_write_pattern(vip: str, role_arns: Sequence[str]) -> logs.IFilterPattern:
    """CloudTrail events of a route write by one of `role_arns` whose destination is not the VIP
    /32 (an IPv6 or prefix-list destination has no destinationCidrBlock at all).  With three
    roles of the longest names it is about 760 characters, within the 1024 a filter may have."""
    pattern = logs.FilterPattern
    destination = "$.requestParameters.destinationCidrBlock"
    return pattern.all(
        pattern.string_value("$.eventSource", "=", "ec2.amazonaws.com"),
        pattern.any(*(pattern.string_value("$.eventName", "=", e) for e in ROUTE_WRITE_EVENTS)),
        pattern.any(*(pattern.string_value("$.userIdentity.sessionContext.sessionIssuer.arn", "=", arn)
                      for arn in role_arns)),
        pattern.any(pattern.string_value(destination, "!=", f"{vip}/32"), pattern.not_exists(destination)),
    )


def _route_write_alarm(scope: Construct, settings: AlarmSettings, alarm: _AlarmMaker) -> cloudwatch.Alarm:
    assert settings.cloudtrail_log_group is not None
    logs.MetricFilter(
        scope, "Filter",
        log_group=settings.cloudtrail_log_group,
        filter_pattern=route_write_pattern(settings.vip, [r.role_arn for r in settings.route_roles]),
        metric_namespace=metrics.NAMESPACE,
        metric_name=ROUTE_WRITES_NOT_VIP,
        metric_value="1",
        dimensions={ROLE: "$.userIdentity.sessionContext.sessionIssuer.userName"},
    )
    per_role = {f"role{i}": cloudwatch.Metric(namespace=metrics.NAMESPACE, metric_name=ROUTE_WRITES_NOT_VIP,
                                              dimensions_map={ROLE: r.role_name}, statistic="Sum",
                                              period=ROUTE_AUDIT_PERIOD)
                for i, r in enumerate(settings.route_roles)}
    writes = cloudwatch.MathExpression(expression=" + ".join(f"FILL({i}, 0)" for i in per_role),
                                       using_metrics=per_role, period=ROUTE_AUDIT_PERIOD,
                                       label="route writes not to the VIP /32")
    return alarm(scope, "Alarm", writes, 1, below=False, periods=1, missing=cloudwatch.TreatMissingData.NOT_BREACHING,
                 lasting=False,
                 description=f"a node or route-Lambda role wrote a route whose destination is not the VIP "
                             f"{settings.vip}/32 (CloudTrail). haproxy-ha never does: find the call in CloudTrail.")


def make_dashboard(scope: Construct, pm: PairMetrics, vip: str, listeners: Sequence[config.Listener],
                   alarms: HaproxyHaAlarms, detailed_metrics: bool) -> cloudwatch.Dashboard:
    """One dashboard for the pair: who is active, failovers and take-over times, node health and
    EC2 API reachability, each listener's traffic (with detailed metrics) and backend health, and
    what the reconciler found."""

    def graph(title: str, left: Sequence[cloudwatch.IMetric], right: Sequence[cloudwatch.IMetric] = (),
              width: int = 12, left_label: str | None = None, right_label: str | None = None,
              zero_to_one: bool = False) -> cloudwatch.GraphWidget:
        axis = cloudwatch.YAxisProps(min=0, max=1, show_units=False) if zero_to_one else \
            cloudwatch.YAxisProps(min=0, label=left_label, show_units=False)
        return cloudwatch.GraphWidget(title=title, left=list(left), right=list(right), width=width, height=6,
                                      left_y_axis=axis,
                                      right_y_axis=cloudwatch.YAxisProps(min=0, label=right_label, show_units=False))

    def per_node(name: str, statistic: str, what: str = "") -> list[cloudwatch.IMetric]:
        return [pm.node(name, n, statistic, f"{what}node {n}") for n in pm.nodes]

    rows: list[list[cloudwatch.IWidget]] = [
        [cloudwatch.TextWidget(
            markdown=f"## haproxy-ha pair {pm.pair}\nVIP `{vip}`. Metrics in namespace `{metrics.NAMESPACE}`, "
                     f"dimension `{metrics.PAIR}` = `{pm.pair}`. Failovers are faults; planned moves (a "
                     "replacement, an operator's move) are shown apart and never alarm.",
            width=24, height=2)],
        [cloudwatch.AlarmStatusWidget(alarms=list(alarms.all()), title="Alarms", width=24, height=3)],
        [graph("Active node (owns the VIP, healthy)", per_node(metrics.ACTIVE, "Maximum"), zero_to_one=True),
         graph("VRRP: MASTER (left), FAULT (right)", per_node(metrics.VRRP_MASTER, "Maximum", "MASTER, "),
               per_node(metrics.VRRP_FAULT, "Maximum", "FAULT, "))],
        [graph("Failovers and planned moves", per_node(metrics.FAILOVERS, "Sum", "failovers, ")
               + per_node(metrics.PLANNED_MOVES, "Sum", "planned, "), left_label="count"),
         graph("Take-over time (ms)", per_node(metrics.FAILOVER_TIME, "Maximum", "failover, ")
               + per_node(metrics.PLANNED_MOVE_TIME, "Maximum", "planned, "), left_label="ms")],
        [graph("HAProxy healthy", per_node(metrics.HAPROXY_HEALTHY, "Minimum"), zero_to_one=True),
         graph("EC2 API reachable (own role)", per_node(metrics.EC2_API_REACHABLE, "Minimum"), zero_to_one=True)],
    ]
    for lst in listeners:
        row: list[cloudwatch.IWidget] = []
        # Requests, 5xx and response times are HTTP's; a TCP listener has sessions.
        http = lst.mode == "http"
        if detailed_metrics and http:
            row.append(graph(
                f"{lst.name}: requests (left), 5xx (right)",
                [pm.listener(metrics.REQUESTS, lst.name, n, "Sum", f"requests, node {n}") for n in pm.nodes],
                [pm.listener(metrics.HTTP_5XX, lst.name, n, "Sum", f"5xx, node {n}") for n in pm.nodes], width=6))
        if detailed_metrics:
            row.append(graph(
                f"{lst.name}: sessions",
                [pm.listener(metrics.CURRENT_SESSIONS, lst.name, n, "Maximum", f"node {n}") for n in pm.nodes],
                width=6))
            if lst.backends and http:
                row.append(graph(
                    f"{lst.name}: response time (ms)",
                    [pm.backend(metrics.RESPONSE_TIME, lst.name, n, "Average", f"node {n}") for n in pm.nodes],
                    width=6, left_label="ms"))
        if lst.backends:
            row.append(graph(
                f"{lst.name}: servers up (left), servers (right)",
                [pm.backend(metrics.SERVERS_UP, lst.name, n, "Minimum", f"up, node {n}") for n in pm.nodes],
                [pm.backend(metrics.SERVERS, lst.name, n, "Maximum", f"servers, node {n}") for n in pm.nodes],
                width=6))
        if row:
            rows.append(row)
    rows.append([graph("Reconciler: routes not at a healthy node (left), routes moved (right)",
                       [pm.of_pair(metrics.ROUTES_NOT_AT_HEALTHY_NODE, "Maximum", "not at a healthy node")],
                       [pm.of_pair(metrics.ROUTES_MOVED, "Sum", "moved")], width=24)])
    return cloudwatch.Dashboard(scope, "Dashboard", widgets=rows, default_interval=Duration.hours(3))


def failovers_query() -> logs.QueryString:
    """The last failovers, newest first, as the agent that took over logged them (event
    "failover" in PREFIX/agent): the node, how long the take-over took (ms) and why it was a fault."""
    return logs.QueryString(fields=["@timestamp", "node", "took_ms", "reason"],
                            filter_statements=['event = "failover"'],
                            sort="@timestamp desc", limit=QUERY_LIMIT)


def errors_5xx_query() -> logs.QueryString:
    """5xx answers in HAProxy's access log (PREFIX/haproxy: rsyslog's file format, then HAProxy's
    httplog line), counted by backend, server and status."""
    return logs.QueryString(parse_statements=[f"@message {HTTPLOG_PARSE}"],
                            filter_statements=["status like /^5/"],
                            stats_statements=["count(*) as answers_5xx by backend, server, status"],
                            sort="answers_5xx desc")


def state_changes_query(node: str) -> logs.QueryString:
    """One node's VRRP state changes as its agent logged them (event "transition"), newest first."""
    return logs.QueryString(fields=["@timestamp", "old", "new", "reason"],
                            filter_statements=[f'event = "transition" and node = "{node}"'],
                            sort="@timestamp desc", limit=QUERY_LIMIT)


def make_log_queries(scope: Construct, pair: str, nodes: Sequence[str],
                     log_groups: HaproxyHaLogGroups) -> HaproxyHaLogQueries:
    """The three queries an operator runs first, saved under haproxy-ha/PAIR/ in Logs Insights."""

    def saved(parent: Construct, id: str, name: str, query: logs.QueryString,
              group: logs.LogGroup) -> logs.QueryDefinition:
        return logs.QueryDefinition(parent, id, query_definition_name=f"haproxy-ha/{pair}/{name}",
                                    query_string=query, log_groups=[group])

    states = Construct(scope, "StateChangesQuery")
    return HaproxyHaLogQueries(
        failovers=saved(scope, "FailoversQuery", "failovers", failovers_query(), log_groups.agent),
        errors_5xx_by_backend=saved(scope, "Errors5xxQuery", "5xx by backend", errors_5xx_query(),
                                    log_groups.haproxy),
        state_changes={n: saved(states, n, f"node {n} states", state_changes_query(n), log_groups.agent)
                       for n in nodes},
    )
