"""The HaproxyHa construct: two HAProxy nodes in two AZs behind one overlay VIP, with the VIP routes they move."""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import jsii
from aws_cdk import (
    Acknowledgment,
    Annotations,
    ArnFormat,
    Aws,
    CfnAutoScalingRollingUpdate,
    CfnCreationPolicy,
    CfnOutput,
    CfnResourceSignal,
    CfnTag,
    CfnUpdatePolicy,
    CustomResource,
    Duration,
    Fn,
    IStableStringProducer,
    Lazy,
    RemovalPolicy,
    Stack,
    Token,
    Validations,
)
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_route53 as route53
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_assets as s3_assets
from aws_cdk import aws_sns as sns
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import custom_resources as cr
from constructs import Construct, IDependable, IValidation

from haproxy_ha import limits, observability, preview
from haproxy_ha.assets import (
    AFTER_BOOT_PATH,
    BOOT_ENV_PATH,
    BOOT_UNIT,
    FETCH_SCRIPT,
    USER_DATA_FILES,
    lambda_code_dir,
    node_files_dir,
    user_data_file,
)
from haproxy_ha.listener import Listener, preview_secrets, with_secrets
from haproxy_ha.node_config import NodeAddress, NodeLifecycle, NodeLiveConfig, NodeMetrics, node_config_document
from haproxy_ha.validation import (
    DEFAULT_CERTIFICATE_POLL_INTERVAL,
    DEFAULT_CONFIG_POLL_INTERVAL,
    DEFAULT_DRAIN_TIMEOUT,
    HaproxyHaPropsError,
    check_dns_name,
    check_observability,
    check_props,
    check_vip_outside,
    is_token,
    lookup_pending,
)
from haproxy_ha_cli import outputs
from haproxy_ha_runtime import config, lifecycle
from haproxy_ha_runtime.document_keys import STATUS_KEY, document_key, written_keys
from haproxy_ha_runtime.problems import Problems
from haproxy_ha_runtime.tags import NODE_TAG, ROUTES_DELETED_TAG

DEFAULT_INSTANCE_TYPE = "t4g.small"
DEFAULT_VPC_CIDR = "10.0.0.0/16"
DEFAULT_MAX_AZS = 2
DEFAULT_LISTENERS: tuple[Listener, ...] = (Listener(port=80, static_reply="haproxy-ha: served by node {node}"),)
NODE_NAMES = ("a", "b")
# keepalived priorities: node "a" wins the first election, which matches where the routes start.
NODE_PRIORITIES = (150, 100)
# Auto Scaling's own events for a node's group that can leave a route at a node that no longer
# runs (or find one running again); the reconciler also runs every minute.
NODE_GROUP_EVENTS = (
    "EC2 Instance-terminate Lifecycle Action",
    "EC2 Instance Terminate Successful",
    "EC2 Instance Launch Successful",
)
# The custom resource's handler answers FAILED 10 s before its own timeout (RESPONSE_RESERVE_S in
# haproxy_ha_runtime/route_lambda.py), and CloudFormation gives up on an answer after the service timeout, not
# after the default hour.
ON_EVENT_TIMEOUT = Duration.minutes(2)
VIP_ROUTES_SERVICE_TIMEOUT = Duration.minutes(5)
RECONCILE_TIMEOUT = Duration.seconds(50)

# The nodes' documents (a custom resource on the Provider framework): the waiter asks the nodes'
# status objects this often, and gives the nodes their poll interval plus this margin (an apply,
# an agent that restarts on its new document, an instance in service that is still booting)
# before it fails the deploy, naming what each node reports.
CONFIG_QUERY_INTERVAL = Duration.seconds(5)
CONFIG_APPLY_MARGIN_S = 300
# The framework gives up this much after the waiter would have (its own message only says "Operation
# timed out"), and CloudFormation this much after the framework would have answered.
CONFIG_FRAMEWORK_MARGIN_S = 60
CONFIG_SERVICE_MARGIN_S = 120
CONFIG_WRITER_TIMEOUT = Duration.seconds(60)
CONFIG_WAITER_TIMEOUT = Duration.seconds(30)

# How long a new instance may take to say it is ready (boot.sh's `ready` waits 15 minutes, after
# the packages are installed): the creation policy's signal timeout and the rolling update's
# pause, so a node that never signals fails the deploy in this time.
SIGNAL_TIMEOUT = Duration.minutes(20)
# The termination hook holds a leaving instance for its drain, plus this for the hand-over around
# it (the routes move to the peer before the drain, the hook is completed after it): the agent's
# own bound (haproxy_ha_runtime/lifecycle.py).
HANDOVER_MARGIN_S = lifecycle.HANDOVER_MARGIN_S
# Auto Scaling's bounds for a lifecycle hook's heartbeat timeout.
HEARTBEAT_TIMEOUT_BOUNDS_S = (30, 7200)
LIFECYCLE_HOOK_NAME = "haproxy-ha-drain"
# The processes AWS recommends suspending during a rolling update, so that the group does not
# replace or rebalance instances while CloudFormation replaces them.
ROLLING_UPDATE_SUSPENDED = ("HealthCheck", "ReplaceUnhealthy", "AZRebalance", "AlarmNotification",
                            "ScheduledActions")
# An Auto Scaling group name is at most 255 characters, a stack name at most 128.
GROUP_NAME_MAX = 255
# The pair's name (the Pair dimension) goes into log and query names, which leave less room.
PAIR_NAME_MAX = 200
STACK_NAME_MAX = 128

# The first commands of each node's user data, before it writes the node's files.  User data runs
# once per instance; the boot unit it starts runs boot.sh, and then the commands callers add with
# `node.after_boot.add_commands(...)`, at every boot.
NODE_PREPARE_COMMANDS: tuple[str, ...] = (
    "set -euo pipefail",
    "install -d -m 0755 /etc/haproxy-ha /var/lib/haproxy-ha /usr/local/libexec/haproxy-ha",
)


@dataclass(frozen=True)
class HaproxyHaNode:
    """One HAProxy node: its name ("a" or "b"), its Auto Scaling group of one instance and the
    launch template of that instance, its persistent ENI, its role and its AZ."""

    name: str
    auto_scaling_group: autoscaling.CfnAutoScalingGroup
    launch_template: ec2.LaunchTemplate
    network_interface: ec2.CfnNetworkInterface
    role: iam.Role
    availability_zone: str
    # Commands added here run after boot.sh, in the boot unit, at every boot.
    after_boot: ec2.UserData

    @property
    def auto_scaling_group_name(self) -> str:
        """The group's name: a physical name, known at synth time."""
        name = self.auto_scaling_group.auto_scaling_group_name
        assert name is not None
        return name

    @property
    def eni_id(self) -> str:
        """The ENI the VIP routes target when this node is active; each instance of the group gets it as device 0."""
        return self.network_interface.ref

    @property
    def private_ip(self) -> str:
        """The ENI's primary address: VRRP unicast goes to and from it."""
        return self.network_interface.attr_primary_private_ip_address


@dataclass(frozen=True)
class _Placement:
    """Where the nodes run and which route tables get the VIP route."""

    node_subnets: list[ec2.ISubnet]
    route_table_ids: tuple[str, ...]


@dataclass(frozen=True)
class _RouteFunctions:
    """The Lambda functions that own and repair the VIP routes, and the scope they live in."""

    scope: Construct
    on_event: lambda_.Function
    reconcile: lambda_.Function


@dataclass(frozen=True)
class _ConfigStore:
    """Where the nodes' documents live (the bucket), and the Provider that writes them and waits
    for the nodes: its waiter for `wait_s`, the framework itself for `total_s`."""

    scope: Construct
    bucket: s3.Bucket
    provider: cr.Provider
    wait_s: float
    poll_s: float
    total_s: float


@dataclass(frozen=True)
class _NodeSettings:
    """What both nodes' documents share besides the VIP and the tables."""

    listeners: tuple[config.Listener, ...]
    preempt: bool
    virtual_router_id: int
    stats_port: int
    metrics: NodeMetrics | None = None


@jsii.implements(ec2.IConnectable)
class HaproxyHa(Construct):
    """A highly available HAProxy pair on an overlay VIP.

    Two nodes in two AZs run HAProxy and keepalived (unicast VRRPv3) on Amazon Linux 2023.  Each
    node is an Auto Scaling group of one instance, which gets the node's persistent ENI (source/dest
    check off) as its primary interface, so a replaced instance keeps the node's address.  Every
    client route table holds a /32 route for the VIP that targets the active node's ENI; the
    active node moves the routes on failover, and a Lambda owns the routes (creates them on
    deploy, removes them on delete) and repairs routes that point at a node that is not running.
    Deploys wait for each new instance to say it is ready, and replace one node at a time.  Each
    node's config document lives in S3 (``config_bucket``): the running nodes apply a new version
    (new listeners or backends replace nothing), and the deploy waits until they have.

    Allow a client in: ``lb.connections.allow_from(app_sg, ec2.Port.tcp(80))``.
    """

    vip: str
    """The overlay VIP, as a literal IPv4 address."""
    vpc: ec2.IVpc
    """The VPC the nodes run in: the caller's, or the one built here."""
    listeners: tuple[Listener, ...]
    """The listeners HAProxy serves on the VIP, as given (or the default)."""
    timing_profile: str
    """The VRRP timing profile, "default" or "fast"."""
    route_table_ids: tuple[str, ...]
    """Every route table that holds the VIP /32 route."""
    route_table_arns: tuple[str, ...]
    """Their ARNs: the only resources the route-moving IAM actions are granted on."""
    security_group: ec2.SecurityGroup
    """The nodes' security group (VRRP and the stats port between the nodes, listeners from clients)."""
    node_files: s3_assets.Asset
    """The asset that carries boot.sh, the systemd units and the node runtime."""
    nodes: tuple[HaproxyHaNode, ...]
    """Node "a" and node "b"."""
    route_function: lambda_.Function
    """The custom resource's handler: creates the VIP routes on deploy, removes them on delete."""
    reconcile_function: lambda_.Function
    """The reconciler: moves routes away from a stopped node, repairs blackholed or missing ones."""
    vip_routes: CustomResource
    """The custom resource that owns the VIP routes."""
    ec2_endpoint: ec2.InterfaceVpcEndpoint | None
    """The EC2 interface endpoint in the node subnets (``ec2_endpoint=True``), else None."""
    drain_timeout: Duration
    """How long a leaving node lets requests in flight finish."""
    metrics_pair: str
    """The pair's name, unique in its account and region: the Pair dimension of its metrics."""
    detailed_metrics: bool
    """Whether the nodes publish HAProxy's per-listener requests, 5xx, response times and sessions."""
    log_group_prefix: str
    """The prefix of the pair's log groups, ``/haproxy-ha/<metrics_pair>/<stack instance>``, which both
    nodes' documents name.  The stack instance is the first 8 hex digits of the stack's ID, so this
    is a token: a stack made again under the same name gets new groups."""
    log_groups: observability.HaproxyHaLogGroups
    """The pair's four log groups, ``<log_group_prefix>/agent|metrics|haproxy|keepalived``."""
    alarms: observability.HaproxyHaAlarms
    """The pair's alarms (see docs/observability.md)."""
    dashboard: cloudwatch.Dashboard
    """The pair's dashboard."""
    log_queries: observability.HaproxyHaLogQueries
    """The saved Logs Insights queries an operator runs first."""
    dns_name: str | None
    """The VIP's DNS name (``dns_name``), or None."""
    hosted_zone: route53.IHostedZone | None
    """The private hosted zone that holds the VIP's A record (``hosted_zone``, or the one made for
    ``dns_name``), or None."""
    config_poll_interval: Duration
    """How often each node polls its document in S3."""
    certificate_poll_interval: Duration
    """How often each node asks for its TLS listeners' secrets' versions."""
    config_bucket: s3.Bucket
    """The bucket of the nodes' documents (``nodes/<a|b>/node.json``) and status objects
    (``nodes/<a|b>/status.json``)."""
    config_documents: CustomResource
    """The custom resource that writes the nodes' documents and waits until the nodes in service apply them."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        vip: str,
        vpc: ec2.IVpc | None = None,
        listeners: Sequence[Listener] | None = None,
        allowed_cidrs: Sequence[str] | None = None,
        instance_type: ec2.InstanceType | None = None,
        machine_image: ec2.IMachineImage | None = None,
        node_subnets: ec2.SubnetSelection | None = None,
        client_subnets: ec2.SubnetSelection | None = None,
        extra_route_table_ids: Sequence[str] = (),
        reserved_cidrs: Sequence[str] = (),
        timing_profile: Literal["default", "fast"] = "default",
        preempt: bool = config.default("preempt"),
        virtual_router_id: int = config.default("virtual_router_id"),
        stats_port: int = config.default("stats_port"),
        max_azs: int | None = None,
        vpc_cidr: str | None = None,
        nat_gateways: int | None = None,
        ec2_endpoint: bool = False,
        drain_timeout: Duration | None = None,
        log_retention: logs.RetentionDays | None = None,
        alarm_topic: sns.ITopic | None = None,
        degraded_after: Duration | None = None,
        detailed_metrics: bool = True,
        cloudtrail_log_group: logs.ILogGroup | None = None,
        dns_name: str | None = None,
        hosted_zone: route53.IHostedZone | None = None,
        config_poll_interval: Duration | None = None,
        certificate_poll_interval: Duration | None = None,
    ) -> None:
        """Create the pair.

        :param vip: The overlay VIP, one IPv4 address outside every CIDR of the VPC.
        :param vpc: The VPC to run in. Default: a new VPC (``max_azs`` AZs, a public and a private
            subnet per AZ, one route table per subnet, one NAT gateway per AZ).
        :param listeners: What HAProxy serves on the VIP. Default: port 80 answering
            "haproxy-ha: served by node <a|b>".
        :param allowed_cidrs: Who may reach the listener ports. Default: the VPC's primary CIDR.
        :param instance_type: Node instance type; the AMI architecture follows it. Default: t4g.small (Graviton).
        :param machine_image: Node AMI. Default: the latest Amazon Linux 2023 for the instance
            type's architecture, cached in cdk.context.json when the stack has an account and region.
        :param node_subnets: Where the nodes run; the first subnet of two different AZs is used.
            Default: the VPC's private subnets (with egress if any, else isolated).
        :param client_subnets: Subnets whose route tables get the VIP route. Default: every subnet of the VPC.
        :param extra_route_table_ids: More route tables that need the VIP route, e.g. the main route
            table when subnets are implicitly associated with it. Default: none.
        :param reserved_cidrs: More CIDRs the VIP must stay out of (secondary VPC CIDRs, peered
            networks). Default: none besides the VPC's primary CIDR.
        :param timing_profile: "default" (1 s VRRP adverts) or "fast" (VRRPv3 0.1 s adverts). Default: "default".
        :param preempt: Let node "a" take the VIP back when it recovers. Default: false (nopreempt;
            each move drops established connections).
        :param virtual_router_id: VRRP router ID, 1-255, unique among VRRP pairs that can hear each other. Default: 51.
        :param stats_port: HAProxy's stats/health port, reachable only from the nodes. Default: 8404.
        :param max_azs: Only without ``vpc``: AZs of the new VPC, at least 2. Default: 2.
        :param vpc_cidr: Only without ``vpc``: CIDR of the new VPC. Default: 10.0.0.0/16.
        :param nat_gateways: Only without ``vpc``: NAT gateways of the new VPC. Default: one per AZ,
            so that the surviving node still reaches the EC2 API when an AZ fails. Fewer than one
            per node AZ gets a warning. 0 only with ``ec2_endpoint=True``: the private subnets are
            then isolated, and the construct adds an S3 gateway endpoint (node files, documents, packages)
            next to the EC2 endpoint. Session Manager (ssm, ssmmessages, ec2messages) and the
            agent's call to the reconciler (lambda) then need interface endpoints you add.
        :param ec2_endpoint: Add an EC2 interface endpoint (private DNS on) in the node subnets,
            reachable from the node security group only, so that a take-over does not depend on
            NAT or on the AZ a NAT gateway lives in. Do not set it in a VPC that already has an EC2
            endpoint with private DNS. Default: false (the nodes reach EC2 through NAT).
        :param drain_timeout: How long a node that leaves its group (a replacement, a new AMI)
            lets the requests in flight finish, after it has handed the routes to its peer, before
            it lets the group terminate it. 0 to 3600 seconds. Default: 30 seconds.
        :param log_retention: How long the pair's log groups (the agent's events, its metric records,
            HAProxy's and keepalived's logs) keep events.
            Default: one month.
        :param alarm_topic: Where the alarms notify (their ALARM state; and OK for the conditions that
            last). Default: no notification; the alarms are still there to see and to hook up.
        :param degraded_after: How long the pair may have fewer than two healthy nodes before the
            degraded alarm fires: longer than a node's replacement takes. Whole minutes, 2 to 1440 (a
            node writes its health every 60 s, not on the minute: one minute may hold none).
            Default: 15 minutes.
        :param detailed_metrics: Whether the nodes publish HAProxy's per-listener requests, 5xx,
            response times and sessions (backend health is published either way). Default: true.
        :param cloudtrail_log_group: A log group that a CloudTrail trail of this account and region
            delivers to: an alarm then fires when a node or route-Lambda role writes a route whose
            destination is not the VIP /32. Default: none, and no such alarm.
        :param dns_name: A DNS name for the VIP, e.g. "lb.internal.example": an A record in
            ``hosted_zone``, or in a private hosted zone of that name made for it and associated
            with the VPC. The record never changes: failover moves routes, not the address.
            Default: none.
        :param hosted_zone: A private hosted zone of the VPC (yours) to put the ``dns_name``
            record in; ``dns_name`` must lie in it. Default: a zone made for ``dns_name``.
        :param config_poll_interval: How often each node polls its document in S3 for a new
            version (a listener or backend change reaches the nodes this way, replacing nothing).
            A deploy that changes the documents waits up to this plus 5 minutes for the nodes to
            apply them. 1 to 300 seconds. Default: 10 seconds.
        :param certificate_poll_interval: How often each node asks Secrets Manager for the
            current version of each TLS listener's secret; a rotated certificate reaches HAProxy
            within this, by a live reload. 1 second to 1 day. Default: 60 seconds.
        """
        super().__init__(scope, id)
        stack = Stack.of(self)
        listeners = tuple(listeners) if listeners is not None else DEFAULT_LISTENERS

        # 1. Check the props.  Those that shape a VPC built here are checked before it is built.
        problems = Problems()
        checked = check_props(
            problems, vip=vip, listeners=listeners, vpc_given=vpc is not None, max_azs=max_azs,
            vpc_cidr=vpc_cidr, nat_gateways=nat_gateways, reserved_cidrs=reserved_cidrs,
            allowed_cidrs=allowed_cidrs, extra_route_table_ids=extra_route_table_ids,
            timing_profile=timing_profile, preempt=preempt, virtual_router_id=virtual_router_id,
            stats_port=stats_port, ec2_endpoint=ec2_endpoint, drain_timeout=drain_timeout,
            config_poll_interval=config_poll_interval, certificate_poll_interval=certificate_poll_interval)
        check_dns_name(problems, dns_name, hosted_zone)
        observed = check_observability(
            problems, log_retention=log_retention, degraded_after=degraded_after, detailed_metrics=detailed_metrics,
            alarm_topic=alarm_topic, cloudtrail_log_group=cloudtrail_log_group)
        # The pair's name (the Pair dimension of its metrics), from the stack's name and the
        # construct's path, so unique to the pair; and its log groups' prefix, which the nodes'
        # documents carry: the pair's name and the stack's instance, so unique to this stack's life.
        pair = _group_name(stack.stack_name, _path_in_stack(self), PAIR_NAME_MAX)
        log_group_prefix = observability.check_log_group_prefix(problems, stack, pair)
        built_vpc = vpc is None
        if problems and built_vpc:
            raise HaproxyHaPropsError(self.node.path, problems.items)
        s3_endpoint: ec2.GatewayVpcEndpoint | None = None
        if vpc is None:
            vpc, s3_endpoint = self._build_vpc(max_azs or DEFAULT_MAX_AZS, vpc_cidr or DEFAULT_VPC_CIDR, nat_gateways)
        # The literal CIDR of a VPC built here, rather than its token, keeps the checks and rules readable.
        known_cidr = (vpc_cidr or DEFAULT_VPC_CIDR) if built_vpc else vpc.vpc_cidr_block

        # 2. Place the nodes and find the route tables; the VPC may add problems of its own.
        if checked.vip is not None:
            self._check_vip_in_vpc(problems, checked.vip, vpc, known_cidr, reserved_cidrs, built_vpc)
        placement = _place(problems, vpc, node_subnets, client_subnets, extra_route_table_ids)
        if problems:
            raise HaproxyHaPropsError(self.node.path, problems.items)
        tls = any(lst.certificate is not None for lst in listeners)
        self._warn_about_egress(vpc, placement.node_subnets, built_vpc, nat_gateways, ec2_endpoint, tls=tls)
        assert checked.vip is not None and checked.drain_timeout_s is not None and checked.config_poll_s is not None
        assert checked.tls_poll_s is not None
        assert observed.log_retention is not None and observed.degraded_after_minutes is not None
        assert observed.detailed_metrics is not None and log_group_prefix is not None

        self.vip = str(checked.vip)
        self.vpc = vpc
        self.listeners = listeners
        self.timing_profile = timing_profile
        self.drain_timeout = drain_timeout if drain_timeout is not None else DEFAULT_DRAIN_TIMEOUT
        self.config_poll_interval = (config_poll_interval if config_poll_interval is not None
                                     else DEFAULT_CONFIG_POLL_INTERVAL)
        self.certificate_poll_interval = (certificate_poll_interval if certificate_poll_interval is not None
                                          else DEFAULT_CERTIFICATE_POLL_INTERVAL)
        self.route_table_ids = placement.route_table_ids
        self.route_table_arns = tuple(
            stack.format_arn(service="ec2", resource="route-table", resource_name=rtb,
                             arn_format=ArnFormat.SLASH_RESOURCE_NAME)
            for rtb in self.route_table_ids
        )

        # 3. Build: security group, endpoints, node files, the ENIs, the route Lambdas (the nodes'
        #    documents name the reconciler), the documents' bucket and Provider, the nodes, their
        #    documents (the groups wait for them), then the routes' custom resource and the triggers.
        self.security_group = self._security_group(vpc, known_cidr, listeners, allowed_cidrs, stats_port)
        self._connections = ec2.Connections(security_groups=[self.security_group])
        self.ec2_endpoint = (self._interface_endpoint("Ec2Endpoint", ec2.InterfaceVpcEndpointAwsService.EC2,
                                                      vpc, placement.node_subnets, "the EC2 API")
                             if ec2_endpoint else None)
        # A VPC built with no NAT gateway has nothing else: a deploy needs the nodes' signal to
        # CloudFormation, and a graceful replacement needs Auto Scaling.
        isolated_endpoints = self._isolated_endpoints(vpc, placement.node_subnets, tls) if s3_endpoint else []
        self.node_files = s3_assets.Asset(self, "NodeFiles", path=str(node_files_dir()))
        enis = self._network_interfaces(placement.node_subnets)
        functions = self._route_functions(enis, pair)
        self.route_function = functions.on_event
        self.reconcile_function = functions.reconcile
        instance_type = instance_type or ec2.InstanceType(DEFAULT_INSTANCE_TYPE)
        # Observability (issue 13): the pair's name and its log groups come before the nodes' documents.
        observability_scope = Construct(self, "Observability")
        self.metrics_pair = pair
        self.detailed_metrics = observed.detailed_metrics
        self.log_group_prefix = log_group_prefix
        self.log_groups = observability.make_log_groups(observability_scope, log_group_prefix, observed.log_retention)
        settings = _NodeSettings(with_secrets(checked.listeners, listeners), preempt, virtual_router_id, stats_port,
                                 NodeMetrics(pair, observed.detailed_metrics, log_group_prefix))
        endpoints = [e for e in (self.ec2_endpoint, s3_endpoint, *isolated_endpoints) if e is not None]
        store = self._config_store(checked.config_poll_s)
        self.config_bucket = store.bucket
        self.nodes = self._nodes(
            enis, placement.node_subnets, instance_type, machine_image or _default_image(stack, instance_type),
            functions.reconcile, endpoints, store.bucket)
        self.config_documents = self._config_documents(store, settings, functions.reconcile, checked.tls_poll_s,
                                                       self.log_groups)
        self.vip_routes = self._vip_routes(functions)
        self._reconcile_triggers(functions)
        self.alarms, self.dashboard, self.log_queries = self._observe(
            observability_scope, checked.listeners, observed.degraded_after_minutes, alarm_topic, cloudtrail_log_group)
        self.dns_name, self.hosted_zone = dns_name, None
        if dns_name is not None:
            self.hosted_zone = self._vip_record(vpc, dns_name, hosted_zone)

        # 4. Show what will run: each node's rendered files, written into the cloud assembly at synth.
        self.node.add_validation(preview.NodeFilesWriter(self, self._preview_files(settings)))

    @property
    def connections(self) -> ec2.Connections:
        """The nodes' security group, as `ec2.IConnectable`: `lb.connections.allow_from(app_sg, ec2.Port.tcp(80))`."""
        return self._connections

    # --- observability: grants, alarms, dashboard, queries (haproxy_ha/observability.py) -----------

    def _observe(self, scope: Construct, listeners: Sequence[config.Listener], degraded_after_minutes: int,
                 topic: sns.ITopic | None, cloudtrail_log_group: logs.ILogGroup | None,
                 ) -> tuple[observability.HaproxyHaAlarms, cloudwatch.Dashboard, observability.HaproxyHaLogQueries]:
        stack = Stack.of(self)
        old_groups = observability.release_0_1_0_log_group_arns(stack, self.metrics_pair)
        for n in self.nodes:
            observability.grant_node_telemetry(n.role, self.log_groups, old_groups)
            Validations.of(n.role).acknowledge(*(
                _ack(f"AwsSolutions-IAM5[Resource::{_nag_arn(stack, arn)}]",
                     "Release 0.1.0's log groups of this pair, by their exact names, for a node of that release "
                     "until an upgrade replaces it: the wildcard stands for their log streams, as in a log "
                     "group's own ARN.")
                for arn in old_groups))
        names = tuple(n.name for n in self.nodes)
        pair_metrics = observability.PairMetrics(self.metrics_pair, names)
        alarms = observability.make_alarms(
            Construct(scope, "Alarms"), pair_metrics, listeners,
            observability.AlarmSettings(
                degraded_after_minutes=degraded_after_minutes, topic=topic, cloudtrail_log_group=cloudtrail_log_group,
                vip=self.vip, route_roles=[*(n.role for n in self.nodes), self._route_role()]),
            after=self.vip_routes)
        dashboard = observability.make_dashboard(scope, pair_metrics, self.vip, listeners, alarms,
                                                 self.detailed_metrics)
        queries = observability.make_log_queries(scope, self.metrics_pair, names, self.log_groups)
        return alarms, dashboard, queries

    def _check_reconciler_environment(self, variables: dict[str, str]) -> None:
        """Lambda's 4 KB environment: the reconciler's holds every route table ID."""
        size = limits.environment_size(Stack.of(self), variables)
        if size > limits.LAMBDA_ENVIRONMENT_LIMIT:
            raise HaproxyHaPropsError(self.node.path, [
                f"client_subnets and extra_route_table_ids: got {len(self.route_table_ids)} route tables, which make "
                f"the reconciler's environment {size} bytes; allowed: at most {limits.LAMBDA_ENVIRONMENT_LIMIT} "
                "(Lambda's limit), about 170 tables: fewer tables (a table shared by several subnets counts once)"])

    def _route_role(self) -> iam.IRole:
        role = self.route_function.role
        assert role is not None
        return role

    # --- checks that need the VPC -------------------------------------------------------------------

    def _check_vip_in_vpc(self, problems: Problems, vip: ipaddress.IPv4Address, vpc: ec2.IVpc, known_cidr: str,
                          reserved_cidrs: Sequence[str], built_vpc: bool) -> None:
        # A lookup's stand-in CIDR is no VPC's: the VIP is checked against the real one after the lookup.
        vpc_cidrs = [] if lookup_pending(vpc.vpc_id) else [("the VPC CIDR", known_cidr)]
        cidrs = vpc_cidrs + [("reserved_cidrs", c) for c in reserved_cidrs]
        check_vip_outside(problems, vip, [(s, c) for s, c in cidrs if not is_token(c)])
        if is_token(vpc.vpc_cidr_block) and not built_vpc:
            Annotations.of(self).add_warning_v2(
                "haproxy-ha:vpc-cidr-unknown",
                "The VPC CIDR is not known at synth time, so the VIP could not be checked against it. "
                "Make sure the VIP lies outside every VPC CIDR.",
            )
        if not vip.is_private:
            Annotations.of(self).add_warning_v2(
                "haproxy-ha:public-vip",
                f"vip {vip} is a public address: clients in the VPC can no longer reach the real host "
                "with that address. A private address outside the VPC CIDRs is usually the better choice.",
            )

    def _warn_about_egress(self, vpc: ec2.IVpc, node_subnets: Sequence[ec2.ISubnet], built_vpc: bool,
                           nat_gateways: int | None, ec2_endpoint: bool, tls: bool) -> None:
        if built_vpc and nat_gateways is not None and 0 < nat_gateways < len(NODE_NAMES) and not ec2_endpoint:
            Annotations.of(self).add_warning_v2(
                "haproxy-ha:nat-per-node-az",
                f"nat_gateways={nat_gateways} is fewer than one per node AZ: when the AZ of a NAT gateway "
                "fails, the surviving node cannot reach the EC2 API through it, and cannot move the routes. "
                "Keep one NAT gateway per AZ, or set ec2_endpoint=True.",
            )
        isolated_ids = {s.subnet_id for s in vpc.isolated_subnets}
        if not node_subnets or not all(s.subnet_id in isolated_ids for s in node_subnets):
            return
        s3_added = built_vpc and nat_gateways == 0
        added_interfaces = (["EC2"] if ec2_endpoint else []) + (
            ["CloudFormation", "Auto Scaling", "CloudWatch Logs", *(["Secrets Manager"] if tls else [])]
            if s3_added else [])
        added = (["an S3 gateway endpoint"] if s3_added else []) + (
            [f"{'interface endpoints' if len(added_interfaces) > 1 else 'an interface endpoint'} for "
             f"{_listed(added_interfaces)}"] if added_interfaces else [])
        interfaces = ([] if ec2_endpoint else ["ec2 (route moves)"]) + ([] if s3_added else [
            "cloudformation (a new node's ready signal: without it every deploy fails)",
            "autoscaling (the termination hook and the health report)",
            "logs (the nodes' logs and metric records: without it no metric arrives and the alarms fire)",
            *(["secretsmanager (the TLS listeners' certificates: without it no TLS listener is served, and a "
               "new node is not ready)"] if tls else [])]) + [
            "ssm, ssmmessages and ec2messages (Session Manager)",
            "lambda (the agent asks the reconciler to create a missing route)"]
        needed = ([] if s3_added else ["an S3 gateway endpoint (node files, the nodes' documents and the Amazon "
                                       "Linux repositories)"]) \
            + ["interface endpoints for " + ", ".join(interfaces)]
        Annotations.of(self).add_warning_v2(
            "haproxy-ha:isolated-nodes",
            "The nodes run in isolated subnets, so they reach AWS only through VPC endpoints. "
            + (f"This construct added {' and '.join(added)}. " if added else "")
            + f"Still needed: {'; '.join(needed)}.",
        )

    # --- VPC and security group -------------------------------------------------------------------

    def _build_vpc(self, max_azs: int, cidr: str, nat_gateways: int | None
                   ) -> tuple[ec2.Vpc, ec2.GatewayVpcEndpoint | None]:
        """The VPC, and the S3 gateway endpoint it has when it has no NAT gateway."""
        # With no NAT gateway (allowed only with ec2_endpoint=True), the private subnets have no
        # egress: they are isolated, and an S3 gateway endpoint serves the node files, the nodes'
        # documents and packages.
        private = ec2.SubnetType.PRIVATE_ISOLATED if nat_gateways == 0 else ec2.SubnetType.PRIVATE_WITH_EGRESS
        vpc = ec2.Vpc(
            self,
            "Vpc",
            ip_addresses=ec2.IpAddresses.cidr(cidr),
            max_azs=max_azs,
            # None: one NAT gateway per AZ.  A node moves the routes through the EC2 API, so the
            # survivor of an AZ failure must not reach that API through a NAT in the failed AZ.
            nat_gateways=nat_gateways,
            subnet_configuration=[
                ec2.SubnetConfiguration(name="Public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24),
                ec2.SubnetConfiguration(name="Private", subnet_type=private, cidr_mask=24),
            ],
            # Rejected packets are what a wrong security group (VRRP, listeners) looks like.
            flow_logs={"Rejects": ec2.FlowLogOptions(traffic_type=ec2.FlowLogTrafficType.REJECT)},
        )
        if nat_gateways == 0:
            return vpc, vpc.add_gateway_endpoint("S3", service=ec2.GatewayVpcEndpointAwsService.S3)
        return vpc, None

    def _interface_endpoint(self, id: str, service: ec2.InterfaceVpcEndpointAwsService, vpc: ec2.IVpc,
                            node_subnets: Sequence[ec2.ISubnet], what: str) -> ec2.InterfaceVpcEndpoint:
        endpoint = ec2.InterfaceVpcEndpoint(
            self,
            id,
            vpc=vpc,
            service=service,
            subnets=ec2.SubnetSelection(subnets=list(node_subnets)),
            private_dns_enabled=True,
            # Only the nodes: not the whole VPC CIDR (open=True would allow that).
            open=False,
        )
        endpoint.connections.allow_default_port_from(self.security_group, f"haproxy-ha nodes: {what}")
        return endpoint

    def _isolated_endpoints(self, vpc: ec2.IVpc, node_subnets: Sequence[ec2.ISubnet],
                            tls: bool) -> list[ec2.InterfaceVpcEndpoint]:
        """What a new node needs in a VPC built with no NAT gateway, besides EC2 and S3: CloudFormation
        for its ready signal (without it, every deploy fails), Auto Scaling for its termination hook,
        CloudWatch Logs for its logs and metrics (without it the alarms fire), and, with a TLS
        listener, Secrets Manager for its certificate (without it the listener is not served)."""
        endpoints = [
            self._interface_endpoint("CloudFormationEndpoint", ec2.InterfaceVpcEndpointAwsService.CLOUDFORMATION,
                                     vpc, node_subnets, "the ready signal to CloudFormation"),
            self._interface_endpoint("AutoScalingEndpoint", ec2.InterfaceVpcEndpointAwsService.AUTOSCALING,
                                     vpc, node_subnets, "the termination hook and health report"),
            self._interface_endpoint("LogsEndpoint", ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_LOGS,
                                     vpc, node_subnets, "the nodes' logs and metric records"),
        ]
        if tls:
            endpoints.append(self._interface_endpoint(
                "SecretsManagerEndpoint", ec2.InterfaceVpcEndpointAwsService.SECRETS_MANAGER, vpc, node_subnets,
                "the TLS listeners' certificates"))
        return endpoints

    def _security_group(
        self,
        vpc: ec2.IVpc,
        vpc_cidr: str,
        listeners: Sequence[Listener],
        allowed_cidrs: Sequence[str] | None,
        stats_port: int,
    ) -> ec2.SecurityGroup:
        sg = ec2.SecurityGroup(
            self,
            "SecurityGroup",
            vpc=vpc,
            description="haproxy-ha nodes: VRRP between the nodes, listeners from allowed CIDRs",
            # Backends may live anywhere; the nodes also reach S3, EC2, SSM and the package repositories.
            allow_all_outbound=True,
        )
        sg.add_ingress_rule(sg, ec2.Port(protocol=ec2.Protocol.VRRP, string_representation="VRRP"),
                            "VRRP (IP protocol 112) between the haproxy-ha nodes")
        sg.add_ingress_rule(sg, ec2.Port.tcp(stats_port), "HAProxy stats and health, between the nodes only")
        cidrs = list(allowed_cidrs) if allowed_cidrs is not None else [vpc_cidr]
        for cidr in cidrs:
            for lst in listeners:
                sg.add_ingress_rule(ec2.Peer.ipv4(cidr), ec2.Port.tcp(lst.port),
                                    f"haproxy-ha listener {lst.resolved_name}")
        if any(is_token(c) for c in cidrs):
            Validations.of(sg).acknowledge(_ack(
                "AwsSolutions-EC23",
                "Listener ingress comes from the VPC CIDR or caller-given CIDRs, which are tokens at synth "
                "time; literal CIDRs are checked, and 0.0.0.0/0 is never the default.",
            ))
        return sg

    # --- nodes ------------------------------------------------------------------------------------

    def _network_interfaces(self, subnets: Sequence[ec2.ISubnet]) -> list[ec2.CfnNetworkInterface]:
        return [self._network_interface(name, subnet) for name, subnet in zip(NODE_NAMES, subnets, strict=False)]

    def _documents(self, addresses: Sequence[NodeAddress], settings: _NodeSettings, *, route_table_ids: Sequence[str],
                   region: str, vpc_id: str, reconciler: str, lifecycles: Sequence[NodeLifecycle],
                   live: Sequence[NodeLiveConfig] | None = None) -> list[dict[str, Any]]:
        """Each node's config document, in NODE_NAMES order."""
        return [
            node_config_document(
                me=me,
                peers=[a for a in addresses if a.name != me.name],
                vip=self.vip,
                route_table_ids=route_table_ids,
                region=region,
                vpc_id=vpc_id,
                reconciler=reconciler,
                lifecycle=lifecycles[i],
                live=live[i] if live is not None else None,
                priority=NODE_PRIORITIES[i],
                preempt=settings.preempt,
                virtual_router_id=settings.virtual_router_id,
                profile=self.timing_profile,
                listeners=settings.listeners,
                stats_port=settings.stats_port,
                metrics=settings.metrics,
            )
            for i, me in enumerate(addresses)
        ]

    def _lifecycles(self, nodes: Sequence[HaproxyHaNode], cfn_stack: str) -> list[NodeLifecycle]:
        """What each node's document says about its group: its name, hook, drain and signal."""
        stack = Stack.of(self)
        return [
            NodeLifecycle(
                auto_scaling_group=n.auto_scaling_group_name,
                lifecycle_hook=LIFECYCLE_HOOK_NAME,
                drain_timeout_s=self.drain_timeout.to_milliseconds() / 1000,
                cfn_stack=cfn_stack,
                cfn_resource=stack.get_logical_id(n.auto_scaling_group),
            )
            for n in nodes
        ]

    def _nodes(
        self,
        enis: Sequence[ec2.CfnNetworkInterface],
        subnets: Sequence[ec2.ISubnet],
        instance_type: ec2.InstanceType,
        machine_image: ec2.IMachineImage,
        reconcile: lambda_.IFunction,
        endpoints: Sequence[ec2.IVpcEndpoint],
        bucket: s3.IBucket,
    ) -> tuple[HaproxyHaNode, ...]:
        stack = Stack.of(self)
        nodes: list[HaproxyHaNode] = []
        for name, eni, subnet in zip(NODE_NAMES, enis, subnets, strict=False):
            scope = self._node_scope(name)
            group_name = _group_name(stack.stack_name, _path_in_stack(scope))
            role = self._node_role(scope, name, group_name, reconcile, bucket)
            after_boot = ec2.UserData.for_linux()
            # The document is not in user data: the boot fetches it from its fixed key, so a new
            # document changes neither the launch template nor the group.
            script = ec2.UserData.for_linux()
            script.add_commands(*self._user_data_commands(
                bucket.s3_url_for_object(document_key(name)), after_boot))
            # Checked at synth, once callers have added their after-boot commands too.
            self.node.add_validation(_UserDataLimit(stack, name, script))
            template = self._launch_template(scope, eni, role, instance_type, machine_image, script)
            # The instance calls AWS with the role's policies from its first boot, and fetches
            # through NAT or the endpoints: it starts only once they exist.
            group = self._group(scope, name, group_name, subnet.availability_zone, template,
                                [role, subnet.internet_connectivity_established, *endpoints])
            nodes.append(HaproxyHaNode(
                name=name, auto_scaling_group=group, launch_template=template, network_interface=eni, role=role,
                availability_zone=subnet.availability_zone, after_boot=after_boot))
        # One node at a time: node b's group is created, and rolled on an update, only once node
        # a's new instance has signalled that it serves.
        nodes[1].auto_scaling_group.node.add_dependency(nodes[0].auto_scaling_group)
        return tuple(nodes)

    def _preview_files(self, settings: _NodeSettings) -> dict[str, dict[str, str]]:
        """Each node's haproxy.cfg and keepalived.conf, rendered from its document with placeholders
        for what only the deploy knows (see haproxy_ha/preview.py)."""
        ips = preview.placeholder_ips(self.vip, len(NODE_NAMES))
        # The log groups' prefix holds the stack's ID, which exists only once the stack does.
        assert settings.metrics is not None
        metrics = dataclasses.replace(settings.metrics,
                                      log_group_prefix=observability.preview_log_group_prefix(settings.metrics.pair_name))
        settings = dataclasses.replace(settings, listeners=preview_secrets(settings.listeners), metrics=metrics)
        addresses = [NodeAddress(name=name, eni_id=preview.placeholder_eni(name), ip=ip)
                     for name, ip in zip(NODE_NAMES, ips, strict=True)]
        # A lookup's stand-in IDs are placeholders too: the synthesis after the lookup checks the real ones.
        pending = lookup_pending(self.vpc.vpc_id)
        documents = self._documents(
            addresses, settings, route_table_ids=preview.placeholder_tables(self.route_table_ids, pending),
            region=preview.literal_or(Stack.of(self).region, preview.PLACEHOLDER_REGION),
            vpc_id=preview.PLACEHOLDER_VPC if pending else preview.literal_or(self.vpc.vpc_id, preview.PLACEHOLDER_VPC),
            reconciler=preview.PLACEHOLDER_RECONCILER,
            lifecycles=[dataclasses.replace(lc, auto_scaling_group=preview.literal_or(
                            lc.auto_scaling_group, preview.placeholder_group(n.name)))
                        for n, lc in zip(self.nodes, self._lifecycles(self.nodes, preview.PLACEHOLDER_STACK),
                                         strict=True)])
        try:
            return {name: preview.render_node_files(doc) for name, doc in zip(NODE_NAMES, documents, strict=True)}
        except config.ConfigError as e:
            # What the props passed on (an imported VPC's IDs, say) fails the node's own checks.
            raise HaproxyHaPropsError(self.node.path, e.problems) from None

    def _user_data_commands(self, document_url: str, after_boot: ec2.UserData) -> list[str]:
        """Write the boot unit and what it reads (where the node files and the node's document
        are), then start the unit without waiting for it: cloud-init returns, and systemd retries
        a boot that fails."""
        files = (
            (BOOT_ENV_PATH, "HAPROXY_HA_BOOT_ENV",
             f"NODE_FILES_URL={self.node_files.s3_object_url}\nNODE_CONFIG_URL={document_url}\n"
             f"AWS_REGION={Stack.of(self).region}"),
            (USER_DATA_FILES[FETCH_SCRIPT], "HAPROXY_HA_FETCH_SCRIPT", user_data_file(FETCH_SCRIPT).rstrip("\n")),
            # Rendered at synth, so that commands callers add later still count.
            (AFTER_BOOT_PATH, "HAPROXY_HA_AFTER_BOOT", Lazy.string(_RenderUserData(after_boot))),
            (USER_DATA_FILES[BOOT_UNIT], "HAPROXY_HA_BOOT_UNIT", user_data_file(BOOT_UNIT).rstrip("\n")),
            *((USER_DATA_FILES[name], marker, user_data_file(name).rstrip("\n")) for name, marker in (
                ("haproxy-ha-boot-failed.service", "HAPROXY_HA_BOOT_FAILED_UNIT"),
                ("boot-failed.sh", "HAPROXY_HA_BOOT_FAILED_SCRIPT"))),
        )
        commands = list(NODE_PREPARE_COMMANDS)
        for path, marker, text in files:
            commands += [f"cat > {path} <<'{marker}'", text, marker]
        return [*commands, "systemctl daemon-reload", f"systemctl enable {BOOT_UNIT}",
                f"systemctl start --no-block {BOOT_UNIT}"]

    def _launch_template(self, scope: Construct, eni: ec2.CfnNetworkInterface, role: iam.Role,
                         instance_type: ec2.InstanceType, machine_image: ec2.IMachineImage,
                         user_data: ec2.UserData) -> ec2.LaunchTemplate:
        template = ec2.LaunchTemplate(
            scope,
            "LaunchTemplate",
            machine_image=machine_image,
            instance_type=instance_type,
            role=role,
            user_data=user_data,
            http_tokens=ec2.LaunchTemplateHttpTokens.REQUIRED,
            http_endpoint=True,
            # Nothing on the node runs in a container, so one hop reaches IMDS.
            http_put_response_hop_limit=1,
            block_devices=[ec2.BlockDevice(
                device_name="/dev/xvda",
                volume=ec2.BlockDeviceVolume.ebs(8, encrypted=True, volume_type=ec2.EbsDeviceVolumeType.GP3),
            )],
        )
        cfn = template.node.default_child
        assert isinstance(cfn, ec2.CfnLaunchTemplate)
        # The node's persistent ENI is each instance's primary interface (device 0), so the VIP
        # routes and the peer's VRRP unicast never need to learn about a new instance.  The subnet
        # and the security groups come from the ENI; it must outlive every instance that carries it.
        cfn.add_property_override("LaunchTemplateData.NetworkInterfaces", [
            {"DeviceIndex": 0, "NetworkInterfaceId": eni.ref, "DeleteOnTermination": False}])
        return template

    def _group(self, scope: Construct, name: str, group_name: str, availability_zone: str,
               template: ec2.LaunchTemplate, after: Sequence[IDependable]) -> autoscaling.CfnAutoScalingGroup:
        drain_s = self.drain_timeout.to_milliseconds() / 1000
        low, high = HEARTBEAT_TIMEOUT_BOUNDS_S
        heartbeat_s = min(high, max(low, math.ceil(drain_s) + HANDOVER_MARGIN_S))
        assert template.launch_template_id is not None
        group = autoscaling.CfnAutoScalingGroup(
            scope,
            "Group",
            # A physical name: the node's document names it, and the document is in the launch
            # template that the group refers to, so a Ref would be a cycle.
            auto_scaling_group_name=group_name,
            min_size="1",
            max_size="1",
            desired_capacity="1",
            # A group whose launch template names an existing ENI gives AZs, not subnets: the
            # ENI decides the subnet.
            availability_zones=[availability_zone],
            launch_template=autoscaling.CfnAutoScalingGroup.LaunchTemplateSpecificationProperty(
                launch_template_id=template.launch_template_id, version=template.latest_version_number),
            health_check_type="EC2",
            # The ENI holds one instance at a time: a replacement terminates the old instance
            # before it launches the new one.
            instance_maintenance_policy=autoscaling.CfnAutoScalingGroup.InstanceMaintenancePolicyProperty(
                min_healthy_percentage=0, max_healthy_percentage=100),
            # A leaving instance hands the routes to its peer, drains, then completes this hook;
            # if it cannot, the group goes on when the heartbeat times out.
            lifecycle_hook_specification_list=[autoscaling.CfnAutoScalingGroup.LifecycleHookSpecificationProperty(
                lifecycle_hook_name=LIFECYCLE_HOOK_NAME,
                lifecycle_transition="autoscaling:EC2_INSTANCE_TERMINATING",
                default_result="CONTINUE",
                heartbeat_timeout=heartbeat_s,
            )],
            # The CLI finds a node by this tag on its ENI or its instance.
            tags=[autoscaling.CfnAutoScalingGroup.TagPropertyProperty(
                key=NODE_TAG, value=name, propagate_at_launch=True)],
        )
        signal_timeout = SIGNAL_TIMEOUT.to_iso_string()
        # A new group, and each instance a rolling update launches, counts only once its node
        # says it serves (`ready` signals); one that never does fails the deploy, which rolls back.
        group.cfn_options.creation_policy = CfnCreationPolicy(
            resource_signal=CfnResourceSignal(count=1, timeout=signal_timeout))
        group.cfn_options.update_policy = CfnUpdatePolicy(auto_scaling_rolling_update=CfnAutoScalingRollingUpdate(
            max_batch_size=1,
            # The group holds one instance, and its ENI cannot be on two: replace, do not add.
            min_instances_in_service=0,
            wait_on_resource_signals=True,
            pause_time=signal_timeout,
            suspend_processes=list(ROLLING_UPDATE_SUSPENDED),
        ))
        group.node.add_dependency(*after)
        Validations.of(group).acknowledge(_ack(
            "AwsSolutions-AS3",
            "Auto Scaling sends this group's launch, termination and lifecycle-hook events to EventBridge, "
            "where a rule of this construct hands them to the reconciler; an SNS topic that nobody subscribes "
            "to would add nothing. Operators who want mail add their own EventBridge rule on these events."))
        return group

    def _node_role(self, scope: Construct, name: str, group_name: str, reconcile: lambda_.IFunction,
                   bucket: s3.IBucket) -> iam.Role:
        stack = Stack.of(self)
        role = iam.Role(
            scope,
            "Role",
            assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            description=f"haproxy-ha node {name}: move the VIP routes of this stack's route tables, "
                        "hand over and signal in its own Auto Scaling group",
            managed_policies=[iam.ManagedPolicy.from_aws_managed_policy_name("AmazonSSMManagedInstanceCore")],
        )
        # ReplaceRoute only (DESIGN.md, fact 1): a missing route is the reconciler's to create.
        self._grant_routes(role, ["ec2:ReplaceRoute"])
        # Exactly the function: Function.grant_invoke would add its versions and aliases (ARN:*).
        role.add_to_principal_policy(iam.PolicyStatement(
            actions=["lambda:InvokeFunction"], resources=[reconcile.function_arn]))
        # Exactly the objects this node reads, rather than grant_read's bucket-wide wildcards: the
        # node files, and its own documents (never the peer's): its schema's and the one before,
        # which an older release's writer may write last (a rollback); and the one it writes, its status.
        role.add_to_principal_policy(iam.PolicyStatement(
            actions=["s3:GetObject"],
            resources=[self.node_files.bucket.arn_for_objects(self.node_files.s3_object_key),
                       *(bucket.arn_for_objects(key) for key in written_keys(document_key(name)))],
        ))
        role.add_to_principal_policy(iam.PolicyStatement(
            actions=["s3:PutObject"], resources=[bucket.arn_for_objects(STATUS_KEY.format(node=name))]))
        # Its own group only: the group's ID in its ARN is unknown before it exists, its name is not.
        group_arn = stack.format_arn(service="autoscaling", resource="autoScalingGroup",
                                     resource_name=f"*:autoScalingGroupName/{group_name}",
                                     arn_format=ArnFormat.COLON_RESOURCE_NAME)
        role.add_to_principal_policy(iam.PolicyStatement(
            actions=["autoscaling:CompleteLifecycleAction", "autoscaling:SetInstanceHealth"],
            resources=[group_arn],
        ))
        role.add_to_principal_policy(iam.PolicyStatement(
            actions=["cloudformation:SignalResource"], resources=[Aws.STACK_ID]))
        # GetSecretValue and DescribeSecret on exactly the TLS listeners' secrets: the secret's own
        # grant.  A secret with its own KMS key also needs kms:Decrypt on that key, through Secrets
        # Manager only.  grant_read gives it for a key made in the app (in the key's policy), but
        # for an imported key (Key.from_key_arn) it adds nothing: that statement is added here.
        for lst in self.listeners:
            if lst.certificate is not None:
                lst.certificate.grant_read(role)
                key = lst.certificate.encryption_key
                if key is not None:
                    role.add_to_principal_policy(iam.PolicyStatement(
                        actions=["kms:Decrypt"], resources=[key.key_arn],
                        conditions={"StringEquals": {
                            "kms:ViaService": f"secretsmanager.{stack.region}.{stack.url_suffix}"}},
                    ))
        Validations.of(role).acknowledge(
            _ack("AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/AmazonSSMManagedInstanceCore]",
                 "Session Manager access instead of SSH: AWS maintains this minimal policy for the SSM agent."),
            _ack("AwsSolutions-IAM5[Resource::*]",
                 "ec2:DescribeRouteTables, DescribeInstances and DescribeNetworkInterfaces support no "
                 "resource-level permissions; the mutating route calls are scoped to this stack's tables."),
            _ack(f"AwsSolutions-IAM5[Resource::{_nag_arn(stack, group_arn)}]",
                 "An Auto Scaling group's ARN holds its ID, a UUID known only once the group exists; the "
                 "wildcard stands for that ID alone, and the ARN names this node's group by its unique name."),
        )
        return role

    def _grant_routes(self, role: iam.IRole, actions: list[str]) -> None:
        role.add_to_principal_policy(iam.PolicyStatement(actions=actions, resources=list(self.route_table_arns)))
        role.add_to_principal_policy(iam.PolicyStatement(
            actions=["ec2:DescribeRouteTables", "ec2:DescribeInstances", "ec2:DescribeNetworkInterfaces"],
            resources=["*"],
        ))

    def _network_interface(self, name: str, subnet: ec2.ISubnet) -> ec2.CfnNetworkInterface:
        scope = self._node_scope(name)
        return ec2.CfnNetworkInterface(
            scope,
            "Eni",
            subnet_id=subnet.subnet_id,
            group_set=[self.security_group.security_group_id],
            # The node receives traffic for the VIP, which is not its own address.
            source_dest_check=False,
            description=f"haproxy-ha node {name}: the VIP routes target this ENI while the node is active",
            # The operator CLI finds a node by this tag: `haproxy-ha failover --to a`.
            tags=[CfnTag(key=NODE_TAG, value=name)],
        )

    def _node_scope(self, name: str) -> Construct:
        existing = self.node.try_find_child(f"Node{name.upper()}")
        return existing if isinstance(existing, Construct) else Construct(self, f"Node{name.upper()}")

    # --- the nodes' documents: in S3, written and waited for by a custom resource -------------------

    def _config_store(self, poll_s: float) -> _ConfigStore:
        """The bucket of the nodes' documents, and the Provider whose handlers write them
        (config_handler.on_event) and wait until the nodes in service applied them (is_complete)."""
        scope = Construct(self, "Config")
        bucket = s3.Bucket(
            scope,
            "Bucket",
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            # Unversioned, and deleted with the stack: it holds only the two documents and the two
            # status objects, which the documents' custom resource deletes when it is deleted.  It
            # is deleted after both groups (they depend on it), so no node writes after it.
            removal_policy=RemovalPolicy.DESTROY,
        )
        documents = [bucket.arn_for_objects(key) for n in NODE_NAMES for key in written_keys(document_key(n))]
        statuses = [bucket.arn_for_objects(STATUS_KEY.format(node=n)) for n in NODE_NAMES]
        writer = self._config_function(scope, "Writer", "config_handler.on_event", CONFIG_WRITER_TIMEOUT,
                                       "write the nodes' documents; remove them and the status objects on delete", [
            # GetObject: a document an older release cannot be given keeps its body, and gets this
            # write's metadata by a copy onto itself (haproxy_ha_runtime/document_keys.py).
            iam.PolicyStatement(actions=["s3:PutObject", "s3:GetObject"], resources=documents),
            iam.PolicyStatement(actions=["s3:DeleteObject"], resources=documents + statuses),
        ])
        waiter = self._config_function(scope, "Waiter", "config_handler.is_complete", CONFIG_WAITER_TIMEOUT,
                                       "wait until the nodes in service applied their new documents", [
            iam.PolicyStatement(actions=["s3:GetObject"], resources=statuses),
            # Without it S3 answers a status object that is not there yet with 403, not 404.
            iam.PolicyStatement(actions=["s3:ListBucket"], resources=[bucket.bucket_arn]),
            iam.PolicyStatement(actions=["autoscaling:DescribeAutoScalingGroups"], resources=["*"]),
        ])
        wait_s = poll_s + CONFIG_APPLY_MARGIN_S
        # The framework counts its tries as total / interval, and refuses a total that is not a multiple.
        interval_s = CONFIG_QUERY_INTERVAL.to_seconds()
        total_s = math.ceil((wait_s + CONFIG_FRAMEWORK_MARGIN_S) / interval_s) * interval_s
        provider = cr.Provider(
            scope,
            "Provider",
            on_event_handler=writer,
            is_complete_handler=waiter,
            query_interval=CONFIG_QUERY_INTERVAL,
            total_timeout=Duration.seconds(total_s),
            log_group=logs.LogGroup(scope, "ProviderLogs", retention=logs.RetentionDays.ONE_MONTH),
            disable_waiter_state_machine_logging=False,
            waiter_state_machine_log_options=cr.LogOptions(
                destination=logs.LogGroup(scope, "WaiterStateMachineLogs", retention=logs.RetentionDays.ONE_MONTH),
                level=sfn.LogLevel.ALL),
        )
        stack = Stack.of(self)
        Validations.of(bucket).acknowledge(_ack(
            "AwsSolutions-S1",
            "The bucket holds only the two node documents and the nodes' status objects. Its only writers are "
            "this construct's writer function (the two document keys) and each node's role (its own status key), "
            "each granted exactly those object ARNs; the writer logs every version it writes."))
        assert waiter.role is not None
        Validations.of(waiter.role).acknowledge(_ack(
            "AwsSolutions-IAM5[Resource::*]",
            "autoscaling:DescribeAutoScalingGroups supports no resource-level permissions; the waiter only reads "
            "the two node groups' instances in service, by name."))
        Validations.of(scope).acknowledge(_ack(
            "AwsSolutions-L1",
            "The writer and waiter are pinned to Python 3.12, as the route functions are, so a CDK upgrade never "
            "changes their runtime unseen; the runtime code they run is kept Python 3.9-clean (ruff, vermin)."))
        Validations.of(provider).acknowledge(
            _ack("AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
                 "AWSLambdaBasicExecutionRole]",
                 "The Provider framework's own functions take AWS's minimal managed policy to write their logs; "
                 "their other grants (invoking this construct's two functions, starting the waiter) are scoped "
                 "to those resources by the framework."),
            _ack("AwsSolutions-IAM5[Resource::*]",
                 "The waiter state machine's role holds the CloudWatch Logs delivery actions that Step Functions "
                 "logging needs (CreateLogDelivery and the like), which support no resource-level permissions."),
            # The framework grants invoke on each function it calls, versions and aliases included:
            # its onEvent and isComplete call ours, its waiter state machine calls its own two.
            *(_ack(f"AwsSolutions-IAM5[Resource::<{stack.get_logical_id(_cfn(fn))}.Arn>:*]",
                   f"The Provider framework may invoke {fn.node.id} (versions and aliases included), a function of "
                   "this construct's own custom resource; nothing else is granted.")
              for fn in (writer, waiter, *_framework_functions(provider, "framework-isComplete",
                                                               "framework-onTimeout"))),
            _ack("AwsSolutions-SF2",
                 "The waiter state machine only calls the waiter function every few seconds until the nodes "
                 "report; every event of its executions is logged to CloudWatch Logs, which shows each call."),
        )
        return _ConfigStore(scope, bucket, provider, wait_s, poll_s, total_s)

    def _config_function(self, scope: Construct, id: str, handler: str, timeout: Duration, what: str,
                         statements: Sequence[iam.PolicyStatement]) -> lambda_.Function:
        role = iam.Role(scope, f"{id}Role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
                        description=f"haproxy-ha documents: {what}")
        for statement in statements:
            role.add_to_principal_policy(statement)
        log_group = logs.LogGroup(scope, f"{id}Logs", retention=logs.RetentionDays.ONE_MONTH)
        log_group.grant_write(role)
        return lambda_.Function(
            scope,
            f"{id}Function",
            runtime=lambda_.Runtime.PYTHON_3_12,
            architecture=lambda_.Architecture.ARM_64,
            handler=handler,
            code=lambda_.Code.from_asset(str(lambda_code_dir())),
            role=role,
            timeout=timeout,
            memory_size=256,
            log_group=log_group,
            # Lambda allows 256 characters; a deep construct path is cut.
            description=f"haproxy-ha {handler}: the nodes' documents of {self.node.path}"[:256],
        )

    def _config_documents(self, store: _ConfigStore, settings: _NodeSettings, reconcile: lambda_.IFunction,
                          tls_poll_s: float, log_groups: observability.HaproxyHaLogGroups) -> CustomResource:
        """The custom resource that writes each node's document to its fixed key and waits for the
        nodes in service; the groups depend on it, so a new instance boots with the new document."""
        stack = Stack.of(self)
        addresses = [NodeAddress(name=n.name, eni_id=n.eni_id, ip=n.private_ip) for n in self.nodes]
        live = [NodeLiveConfig(config_bucket=store.bucket.bucket_name, config_key=document_key(n.name),
                               status_key=STATUS_KEY.format(node=n.name), config_poll_s=store.poll_s,
                               tls_poll_s=tls_poll_s)
                for n in self.nodes]
        documents = self._documents(addresses, settings, route_table_ids=self.route_table_ids, region=stack.region,
                                    vpc_id=self.vpc.vpc_id, reconciler=reconcile.function_arn,
                                    lifecycles=self._lifecycles(self.nodes, Aws.STACK_ID), live=live)
        properties = {
            "Bucket": store.bucket.bucket_name,
            "WaitSeconds": store.wait_s,
            "Nodes": [{
                "Name": n.name,
                "Key": document_key(n.name),
                "StatusKey": STATUS_KEY.format(node=n.name),
                "AutoScalingGroupName": n.auto_scaling_group_name,
                # JSON text: CloudFormation would hand every number and boolean over as a string.
                "Document": stack.to_json_string(document),
            } for n, document in zip(self.nodes, documents, strict=True)],
        }
        size = limits.waiter_input_size(stack, properties)
        if size > limits.STEP_FUNCTIONS_INPUT_LIMIT:
            raise HaproxyHaPropsError(self.node.path, [
                f"listeners: got {len(settings.listeners)} listener(s) with "
                f"{sum(len(lst.backends) for lst in settings.listeners)} backend(s), whose documents make a deploy's "
                f"waiter input about {size} bytes; allowed: at most {limits.STEP_FUNCTIONS_INPUT_LIMIT} (Step "
                "Functions' limit; an update carries both nodes' documents, old and new): fewer listeners or "
                "backends, or backends by DNS name (one entry for many servers)"])
        resource = CustomResource(
            store.scope,
            "Documents",
            service_token=store.provider.service_token,
            resource_type="Custom::HaproxyHaNodeDocuments",
            # After the framework's own timeout, which comes after the waiter's.
            service_timeout=Duration.seconds(store.total_s + CONFIG_SERVICE_MARGIN_S),
            properties=properties,
        )
        for n in self.nodes:
            n.auto_scaling_group.node.add_dependency(resource)
            # The nodes read what the documents name (a new TLS listener's secret, a new key) with
            # their roles' grants: those come first, or a running node is refused what it may read.
            resource.node.add_dependency(n.role)
        # The documents name the log groups by their prefix, which refers to the stack, not to
        # them: the groups come first, or a node would ship to groups that do not exist yet.
        resource.node.add_dependency(*log_groups.all())
        return resource

    # --- VIP routes: the Lambda that owns and repairs them -----------------------------------------

    def _route_functions(self, enis: Sequence[ec2.CfnNetworkInterface], pair: str) -> _RouteFunctions:
        scope = Construct(self, "Routes")
        role = iam.Role(
            scope,
            "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description="haproxy-ha route Lambda: own and repair the VIP routes of this stack's route tables",
        )
        self._grant_routes(role, ["ec2:CreateRoute", "ec2:ReplaceRoute", "ec2:DeleteRoute"])
        # The stack's delete marks each table before it deletes the route, and a create unmarks it:
        # only that tag, on exactly these tables (Null: a DeleteTags without tags would drop them all).
        role.add_to_principal_policy(iam.PolicyStatement(
            actions=["ec2:CreateTags", "ec2:DeleteTags"],
            resources=list(self.route_table_arns),
            conditions={"ForAllValues:StringEquals": {"aws:TagKeys": [ROUTES_DELETED_TAG]},
                        "Null": {"aws:TagKeys": "false"}},
        ))
        code = lambda_.Code.from_asset(str(lambda_code_dir()))
        # Each node by name and ENI only, never by instance or group: the groups depend on this
        # function (their documents name it), and the ENI outlives the instances that carry it.
        nodes_json = Stack.of(self).to_json_string([
            {"name": name, "eni_id": eni.ref} for name, eni in zip(NODE_NAMES, enis, strict=True)
        ])
        reconcile_env = {
            "VIP": self.vip,
            "ROUTE_TABLE_IDS": Fn.join(",", list(self.route_table_ids)),
            "NODES": nodes_json,
            # The reconciler's metrics carry the Pair dimension too (the dashboard's last graph).
            observability.RECONCILER_PAIR_VARIABLE: pair,
        }
        self._check_reconciler_environment(reconcile_env)
        functions: dict[str, lambda_.Function] = {}
        for fid, handler, timeout, env in (
            ("OnEvent", "handler.on_event", ON_EVENT_TIMEOUT, {}),
            ("Reconcile", "handler.reconcile", RECONCILE_TIMEOUT, reconcile_env),
        ):
            log_group = logs.LogGroup(scope, f"{fid}Logs", retention=logs.RetentionDays.ONE_MONTH)
            fn = lambda_.Function(
                scope,
                f"{fid}Function",
                runtime=lambda_.Runtime.PYTHON_3_12,
                architecture=lambda_.Architecture.ARM_64,
                handler=handler,
                code=code,
                role=role,
                timeout=timeout,
                memory_size=256,
                environment=env or None,
                log_group=log_group,
                description=f"haproxy-ha {handler}: VIP routes of {self.node.path}",
            )
            log_group.grant_write(role)
            functions[fid] = fn
        Validations.of(scope).acknowledge(
            _ack("AwsSolutions-IAM5[Resource::*]",
                 "ec2:DescribeRouteTables, DescribeInstances and DescribeNetworkInterfaces support no "
                 "resource-level permissions; the mutating route calls are scoped to this stack's tables."),
            _ack("AwsSolutions-L1",
                 "Pinned to Python 3.12 so a CDK upgrade never changes the runtime unseen; the shared route "
                 "module is kept Python 3.9-clean (ruff py39 target, vermin) for the nodes, so it runs on any "
                 "newer runtime too."),
        )
        return _RouteFunctions(scope, functions["OnEvent"], functions["Reconcile"])

    def _vip_routes(self, functions: _RouteFunctions) -> CustomResource:
        vip_routes = CustomResource(
            functions.scope,
            "VipRoutes",
            # The handler answers CloudFormation itself: no Provider framework in between.
            service_token=functions.on_event.function_arn,
            resource_type="Custom::HaproxyHaVipRoutes",
            service_timeout=VIP_ROUTES_SERVICE_TIMEOUT,
            properties={
                "Vip": self.vip,
                "RouteTableIds": list(self.route_table_ids),
                "EniId": self.nodes[0].eni_id,
            },
        )
        # Routes are created after both nodes serve (their groups wait for the signals) and
        # removed before the groups go.
        for n in self.nodes:
            vip_routes.node.add_dependency(n.auto_scaling_group)
        return vip_routes

    def _reconcile_triggers(self, functions: _RouteFunctions) -> None:
        # By group name, not instance: the groups replace instances, and the reconciler finds each
        # node's instance through its ENI.  (The groups' names are literals: no dependency on them.)
        group_rule = events.Rule(
            functions.scope,
            "NodeGroupChange",
            description="haproxy-ha: repair the VIP routes when a node's instance leaves or arrives",
            event_pattern=events.EventPattern(
                source=["aws.autoscaling"],
                detail_type=list(NODE_GROUP_EVENTS),
                detail={"AutoScalingGroupName": [n.auto_scaling_group_name for n in self.nodes]},
            ),
        )
        group_rule.add_target(targets.LambdaFunction(functions.reconcile))
        schedule = events.Rule(
            functions.scope,
            "Schedule",
            description="haproxy-ha: repair blackholed or missing VIP routes",
            schedule=events.Schedule.rate(Duration.minutes(1)),
        )
        schedule.add_target(targets.LambdaFunction(functions.reconcile))

    def _vip_record(self, vpc: ec2.IVpc, dns_name: str, zone: route53.IHostedZone | None) -> route53.IHostedZone:
        """The VIP's A record, in the caller's zone or in a private zone of exactly that name (so
        that no other name of a parent domain is shadowed in the VPC)."""
        if zone is None:
            zone = route53.PrivateHostedZone(self, "Zone", zone_name=dns_name, vpc=vpc,
                                             comment=f"haproxy-ha: the VIP of {self.node.path}")
        route53.ARecord(self, "VipRecord", zone=zone, record_name=dns_name + ".",
                        target=route53.RecordTarget.from_ip_addresses(self.vip), ttl=Duration.seconds(300),
                        comment="haproxy-ha VIP: failover moves routes, never this address")
        return zone

    def add_outputs(self, prefix: str = "") -> tuple[CfnOutput, ...]:
        """Publish, as outputs of this construct's stack, what ``haproxy-ha status|failover --stack
        NAME`` reads: ``Vip``, ``VpcId``, ``RouteTableIds``, ``NodeAEniId``, ``NodeBEniId``,
        ``MetricsPair`` and ``DocumentsBucket``.

        :param prefix: Put before each output key, when one stack holds more than one pair (give
            the CLI ``--output-prefix`` too). Letters and digits. Default: none.
        """
        if not isinstance(prefix, str) or not outputs.PREFIX_RE.match(prefix):
            raise ValueError(f"prefix: got {prefix!r}; allowed: letters and digits (the start of an output key)")
        if self.node.try_find_child("Outputs") is not None:
            raise ValueError(f"add_outputs: already called on {self.node.path}; allowed: once per construct")
        scope = Construct(self, "Outputs")
        made: list[CfnOutput] = []
        for key, value, description in (
            (outputs.VIP, self.vip, "The VIP: curl http://VIP/ from inside the VPC"),
            (outputs.VPC_ID, self.vpc.vpc_id, "The VPC of the nodes and of the route tables"),
            (outputs.ROUTE_TABLE_IDS, Fn.join(",", list(self.route_table_ids)),
             "Route tables that hold the VIP /32 route"),
            *((outputs.node_eni_key(n.name), n.eni_id, f"Node {n.name} ENI (VIP route target)") for n in self.nodes),
            (outputs.METRICS_PAIR, self.metrics_pair, "The pair's name: the Pair dimension of its metrics"),
            (outputs.DOCUMENTS_BUCKET, self.config_bucket.bucket_name,
             "The bucket of the nodes' config documents and status objects"),
        ):
            output = CfnOutput(scope, key, value=value, description=description)
            output.override_logical_id(prefix + key)
            made.append(output)
        return tuple(made)


# EC2 refuses user data over 16 KB (before its base64), and only at RunInstances: the deploy
# would fail late, with the group waiting for a signal that never comes.
USER_DATA_LIMIT_BYTES = 16384
# A deploy-time value (an ENI ID, an address, an ARN, the stack ID) counted at its longest.
_DEPLOY_TIME_VALUE_BYTES = 160


@jsii.implements(IValidation)
class _UserDataLimit:
    """Refuses, at synth, a node whose user data would exceed EC2's limit."""

    def __init__(self, stack: Stack, node: str, user_data: ec2.UserData) -> None:
        self._stack = stack
        self._node = node
        self._user_data = user_data

    def validate(self) -> list[str]:
        size = _resolved_size(self._stack.resolve(self._user_data.render()))
        if size <= USER_DATA_LIMIT_BYTES:
            return []
        return [f"node.after_boot: node {self._node}'s user data would be about {size} bytes (deploy-time "
                f"values counted at {_DEPLOY_TIME_VALUE_BYTES} bytes each); allowed: at most "
                f"{USER_DATA_LIMIT_BYTES} bytes, EC2's limit. Use shorter after-boot commands, or have them "
                "fetch a script"]


def _resolved_size(value: Any) -> int:
    """Bytes of a resolved CloudFormation string: literal parts as they are, each intrinsic at
    its longest likely value."""
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, dict) and set(value) == {"Fn::Join"}:
        separator, parts = value["Fn::Join"]
        return sum(_resolved_size(p) for p in parts) + len(separator.encode()) * max(0, len(parts) - 1)
    return _DEPLOY_TIME_VALUE_BYTES


@jsii.implements(IStableStringProducer)
class _RenderUserData:
    """Renders a UserData at synth time, after every command has been added."""

    def __init__(self, user_data: ec2.UserData) -> None:
        self._user_data = user_data

    def produce(self) -> str:
        return self._user_data.render()


def _listed(items: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _framework_functions(provider: cr.Provider, *ids: str) -> list[lambda_.Function]:
    """The Provider framework's own functions, by their construct IDs."""
    found = [provider.node.find_child(i) for i in ids]
    assert all(isinstance(f, lambda_.Function) for f in found), found
    return [f for f in found if isinstance(f, lambda_.Function)]


def _cfn(function: lambda_.Function) -> lambda_.CfnFunction:
    child = function.node.default_child
    assert isinstance(child, lambda_.CfnFunction)
    return child


def _ack(rule_id: str, reason: str) -> Acknowledgment:
    return Acknowledgment(id=rule_id, reason=reason)


def _nag_arn(stack: Stack, arn: str) -> str:
    """An ARN as cdk-nag names it in a finding: each pseudo parameter as <AWS::Name>."""
    resolved = stack.resolve(arn)
    if isinstance(resolved, str):
        return resolved
    parts = resolved["Fn::Join"][1]
    return "".join(p if isinstance(p, str) else f"<{p['Ref']}>" for p in parts)


def _path_in_stack(scope: Construct) -> str:
    """The construct's path below its stack, e.g. HaproxyHa/NodeA."""
    stack_path = Stack.of(scope).node.path
    return scope.node.path[len(stack_path) + 1:] if stack_path else scope.node.path


def _group_name(stack_name: str, path: str, max_len: int = GROUP_NAME_MAX) -> str:
    """A node group's physical name (or, with a shorter `max_len`, the pair's name): the stack's
    name, the path in the stack (cut to fit `max_len` characters with a stack name of up to 128)
    and a hash of that path.  Stack names are unique in an account and region, and paths in a
    stack, so the name is too."""
    readable = re.sub(r"[^A-Za-z0-9]+", "-", path).strip("-")
    digest = hashlib.sha256(path.encode()).hexdigest()[:8]
    room = max_len - STACK_NAME_MAX - len(digest) - 2
    return f"{stack_name}-{readable[:room].rstrip('-')}-{digest}"


def _route_table_id(subnet: ec2.ISubnet) -> str | None:
    """The subnet's route table ID; None for an imported subnet that was given none."""
    try:
        table = subnet.route_table
        return table.route_table_id if table is not None else None
    except RuntimeError:  # jsii refuses to hand back the undefined ID of an imported subnet
        return None


def _place(problems: Problems, vpc: ec2.IVpc, node_subnets: ec2.SubnetSelection | None,
           client_subnets: ec2.SubnetSelection | None, extra_route_table_ids: Sequence[str]) -> _Placement:
    """One node subnet in each of two AZs, and the route tables of the client subnets plus the extra ones."""
    placement = _one_subnet_per_az(vpc.select_subnets(**_selection_kwargs(node_subnets)).subnets)
    if len(placement) < 2:
        azs = ", ".join(s.availability_zone for s in placement) or "none"
        problems.add(
            f"node_subnets: got subnets in {len(placement)} availability zone(s) ({azs}); "
            "allowed: a selection with subnets in at least two AZs, so that each node runs in its own AZ"
        )
    route_table_ids: list[str] = []
    for subnet in _client_subnets(vpc, client_subnets):
        rtb = _route_table_id(subnet)
        if rtb is None:
            problems.add(
                f"client_subnets: subnet {subnet.subnet_id} has no route table ID; allowed: subnets whose "
                "route table is known (pass the *_subnet_route_table_ids to Vpc.from_vpc_attributes), "
                "or list the tables in extra_route_table_ids"
            )
            continue
        route_table_ids.append(rtb)
    route_table_ids.extend(extra_route_table_ids)
    if not route_table_ids:
        problems.add("client_subnets: got no route tables; allowed: a selection with at least one subnet, "
                     "or route tables in extra_route_table_ids")
    return _Placement(node_subnets=placement, route_table_ids=tuple(dict.fromkeys(route_table_ids)))


def _selection_kwargs(selection: ec2.SubnetSelection | None) -> dict[str, Any]:
    if selection is None:
        return {}
    return {
        "availability_zones": selection.availability_zones,
        "one_per_az": selection.one_per_az,
        "subnet_filters": selection.subnet_filters,
        "subnet_group_name": selection.subnet_group_name,
        "subnets": selection.subnets,
        "subnet_type": selection.subnet_type,
    }


def _one_subnet_per_az(subnets: Sequence[ec2.ISubnet]) -> list[ec2.ISubnet]:
    """The first subnet of each AZ, in the VPC's order."""
    seen: dict[str, ec2.ISubnet] = {}
    for subnet in subnets:
        seen.setdefault(subnet.availability_zone, subnet)
    return list(seen.values())


def _client_subnets(vpc: ec2.IVpc, selection: ec2.SubnetSelection | None) -> list[ec2.ISubnet]:
    if selection is None:
        return [*vpc.public_subnets, *vpc.private_subnets, *vpc.isolated_subnets]
    return list(vpc.select_subnets(**_selection_kwargs(selection)).subnets)


def _default_image(stack: Stack, instance_type: ec2.InstanceType) -> ec2.IMachineImage:
    cpu = (ec2.AmazonLinuxCpuType.ARM_64 if instance_type.architecture == ec2.InstanceArchitecture.ARM_64
           else ec2.AmazonLinuxCpuType.X86_64)
    # A deploy-time lookup would pick up each new AMI release and replace both nodes (one at a
    # time) on whatever deploy comes next.  Pin it in the context instead, so that a new AMI is a
    # change someone makes on purpose; that needs a stack with a known account and region.
    env_known = not Token.is_unresolved(stack.account) and not Token.is_unresolved(stack.region)
    if not env_known:
        Annotations.of(stack).add_warning_v2(
            "haproxy-ha:ami-not-pinned",
            "The stack has no account/region, so the Amazon Linux 2023 AMI is resolved at deploy time: "
            "a later deploy after a new AMI release replaces both nodes, one at a time. Give the stack an "
            "env, or pass machine_image.",
        )
    return ec2.MachineImage.latest_amazon_linux2023(cpu_type=cpu, cached_in_context=env_known)
