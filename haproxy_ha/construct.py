"""The HaproxyHa construct: two HAProxy nodes in two AZs behind one overlay VIP, with the VIP routes they move."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import jsii
from aws_cdk import (
    Acknowledgment,
    Annotations,
    ArnFormat,
    CfnOutput,
    CfnTag,
    CustomResource,
    Duration,
    Fn,
    IStableStringProducer,
    Lazy,
    Stack,
    Tags,
    Token,
    Validations,
)
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3_assets as s3_assets
from constructs import Construct

from haproxy_ha import preview
from haproxy_ha.assets import NODE_CONFIG_PATH, NODE_FILES_DIR, lambda_code_dir, node_files_dir
from haproxy_ha.listener import Listener
from haproxy_ha.node_config import NodeAddress, node_config_document
from haproxy_ha.validation import HaproxyHaPropsError, check_props, check_vip_outside, is_token
from haproxy_ha_cli import outputs
from haproxy_ha_runtime import config
from haproxy_ha_runtime.problems import Problems
from haproxy_ha_runtime.tags import NODE_TAG, ROUTES_DELETED_TAG

DEFAULT_INSTANCE_TYPE = "t4g.small"
DEFAULT_VPC_CIDR = "10.0.0.0/16"
DEFAULT_MAX_AZS = 2
DEFAULT_LISTENERS: tuple[Listener, ...] = (Listener(port=80, static_reply="haproxy-ha: served by node {node}"),)
NODE_NAMES = ("a", "b")
# keepalived priorities: node "a" wins the first election, which matches where the routes start.
NODE_PRIORITIES = (150, 100)
INSTANCE_STOP_STATES = ("stopping", "stopped", "shutting-down", "terminated")
# The custom resource's handler answers FAILED 10 s before its own timeout (RESPONSE_RESERVE_S in
# lambda/handler.py), and CloudFormation gives up on an answer after the service timeout, not
# after the default hour.
ON_EVENT_TIMEOUT = Duration.minutes(2)
VIP_ROUTES_SERVICE_TIMEOUT = Duration.minutes(5)
RECONCILE_TIMEOUT = Duration.seconds(50)

# cloud-init runs user-data scripts once per instance by default.  A props change updates the
# user data of a stopped-and-started instance, so the script must run on every boot to apply it.
CLOUD_CONFIG_EVERY_BOOT = "#cloud-config\ncloud_final_modules:\n- [scripts-user, always]\n"

# The first commands of each node's user data, before the node's config document is written.
# Commands that callers add with `node.user_data.add_commands(...)` run after boot.sh.
NODE_PREPARE_COMMANDS: tuple[str, ...] = (
    "set -euo pipefail",
    f"install -d -m 0755 {NODE_FILES_DIR} /etc/haproxy-ha /var/lib/haproxy-ha",
)


@dataclass(frozen=True)
class HaproxyHaNode:
    """One HAProxy node: its name ("a" or "b"), instance, ENI and AZ."""

    name: str
    instance: ec2.Instance
    network_interface: ec2.CfnNetworkInterface
    availability_zone: str
    # The shell script part of the user data; commands added here run after boot.sh.
    user_data: ec2.UserData

    @property
    def eni_id(self) -> str:
        """The ENI the VIP routes target when this node is active."""
        return self.network_interface.ref

    @property
    def private_ip(self) -> str:
        """The ENI's primary address: VRRP unicast goes to and from it."""
        return self.network_interface.attr_primary_private_ip_address

    @property
    def instance_id(self) -> str:
        """The node's EC2 instance."""
        return self.instance.instance_id


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
class _NodeSettings:
    """What both nodes' documents share besides the VIP and the tables."""

    listeners: tuple[config.Listener, ...]
    preempt: bool
    virtual_router_id: int
    stats_port: int


@jsii.implements(ec2.IConnectable)
class HaproxyHa(Construct):
    """A highly available HAProxy pair on an overlay VIP.

    Two Amazon Linux 2023 instances in two AZs run HAProxy and keepalived (unicast VRRPv3).  Each
    node has its own ENI with source/dest check off.  Every client route table holds a /32 route
    for the VIP that targets the active node's ENI; the active node moves the routes on failover,
    and a Lambda owns the routes (creates them on deploy, removes them on delete) and repairs
    routes that point at a stopped node.

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
    node_role: iam.Role
    """The nodes' instance role."""
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
            then isolated, and the construct adds an S3 gateway endpoint (node files and packages)
            next to the EC2 endpoint. Session Manager (ssm, ssmmessages, ec2messages) and the
            agent's call to the reconciler (lambda) then need interface endpoints you add.
        :param ec2_endpoint: Add an EC2 interface endpoint (private DNS on) in the node subnets,
            reachable from the node security group only, so that a take-over does not depend on
            NAT or on the AZ a NAT gateway lives in. Do not set it in a VPC that already has an EC2
            endpoint with private DNS. Default: false (the nodes reach EC2 through NAT).
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
            stats_port=stats_port, ec2_endpoint=ec2_endpoint)
        built_vpc = vpc is None
        if problems and built_vpc:
            raise HaproxyHaPropsError(self.node.path, problems.items)
        if vpc is None:
            vpc = self._build_vpc(max_azs or DEFAULT_MAX_AZS, vpc_cidr or DEFAULT_VPC_CIDR, nat_gateways)
        # The literal CIDR of a VPC built here, rather than its token, keeps the checks and rules readable.
        known_cidr = (vpc_cidr or DEFAULT_VPC_CIDR) if built_vpc else vpc.vpc_cidr_block

        # 2. Place the nodes and find the route tables; the VPC may add problems of its own.
        if checked.vip is not None:
            self._check_vip_in_vpc(problems, checked.vip, vpc, known_cidr, reserved_cidrs, built_vpc)
        placement = _place(problems, vpc, node_subnets, client_subnets, extra_route_table_ids)
        if problems:
            raise HaproxyHaPropsError(self.node.path, problems.items)
        self._warn_about_egress(vpc, placement.node_subnets, built_vpc, nat_gateways, ec2_endpoint)
        assert checked.vip is not None

        self.vip = str(checked.vip)
        self.vpc = vpc
        self.listeners = listeners
        self.timing_profile = timing_profile
        self.route_table_ids = placement.route_table_ids
        self.route_table_arns = tuple(
            stack.format_arn(service="ec2", resource="route-table", resource_name=rtb,
                             arn_format=ArnFormat.SLASH_RESOURCE_NAME)
            for rtb in self.route_table_ids
        )

        # 3. Build: security group, node role and files, the ENIs, the route Lambdas (the nodes'
        #    documents name the reconciler), the nodes, then the custom resource and the triggers.
        self.security_group = self._security_group(vpc, known_cidr, listeners, allowed_cidrs, stats_port)
        self._connections = ec2.Connections(security_groups=[self.security_group])
        self.ec2_endpoint = self._ec2_endpoint(vpc, placement.node_subnets) if ec2_endpoint else None
        self.node_role = self._node_role()
        self.node_files = self._node_files(self.node_role)
        enis = self._network_interfaces(placement.node_subnets)
        functions = self._route_functions(enis)
        self._grant_invoke(self.node_role, functions.reconcile)
        self.route_function = functions.on_event
        self.reconcile_function = functions.reconcile
        instance_type = instance_type or ec2.InstanceType(DEFAULT_INSTANCE_TYPE)
        settings = _NodeSettings(checked.listeners, preempt, virtual_router_id, stats_port)
        self.nodes = self._nodes(
            enis, placement.node_subnets, instance_type, machine_image or _default_image(stack, instance_type),
            settings, functions.reconcile.function_arn)
        self.vip_routes = self._vip_routes(functions)
        self._reconcile_triggers(functions)

        # 4. Show what will run: each node's rendered files, written into the cloud assembly at synth.
        self.node.add_validation(preview.NodeFilesWriter(self, self._preview_files(settings)))

    @property
    def connections(self) -> ec2.Connections:
        """The nodes' security group, as `ec2.IConnectable`: `lb.connections.allow_from(app_sg, ec2.Port.tcp(80))`."""
        return self._connections

    # --- checks that need the VPC -------------------------------------------------------------------

    def _check_vip_in_vpc(self, problems: Problems, vip: ipaddress.IPv4Address, vpc: ec2.IVpc, known_cidr: str,
                          reserved_cidrs: Sequence[str], built_vpc: bool) -> None:
        cidrs = [("the VPC CIDR", known_cidr)] + [("reserved_cidrs", c) for c in reserved_cidrs]
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
                           nat_gateways: int | None, ec2_endpoint: bool) -> None:
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
        added = [what for what, made in (("an S3 gateway endpoint", s3_added),
                                         ("an EC2 interface endpoint", ec2_endpoint)) if made]
        interfaces = ([] if ec2_endpoint else ["ec2 (route moves)"]) + [
            "ssm, ssmmessages and ec2messages (Session Manager)",
            "lambda (the agent asks the reconciler to create a missing route)"]
        needed = ([] if s3_added else ["an S3 gateway endpoint (node files and the Amazon Linux repositories)"]) \
            + ["interface endpoints for " + ", ".join(interfaces)]
        Annotations.of(self).add_warning_v2(
            "haproxy-ha:isolated-nodes",
            "The nodes run in isolated subnets, so they reach AWS only through VPC endpoints. "
            + (f"This construct added {' and '.join(added)}. " if added else "")
            + f"Still needed: {'; '.join(needed)}.",
        )

    # --- VPC and security group -------------------------------------------------------------------

    def _build_vpc(self, max_azs: int, cidr: str, nat_gateways: int | None) -> ec2.Vpc:
        # With no NAT gateway (allowed only with ec2_endpoint=True), the private subnets have no
        # egress: they are isolated, and an S3 gateway endpoint serves the node files and packages.
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
            vpc.add_gateway_endpoint("S3", service=ec2.GatewayVpcEndpointAwsService.S3)
        return vpc

    def _ec2_endpoint(self, vpc: ec2.IVpc, node_subnets: Sequence[ec2.ISubnet]) -> ec2.InterfaceVpcEndpoint:
        endpoint = ec2.InterfaceVpcEndpoint(
            self,
            "Ec2Endpoint",
            vpc=vpc,
            service=ec2.InterfaceVpcEndpointAwsService.EC2,
            subnets=ec2.SubnetSelection(subnets=list(node_subnets)),
            private_dns_enabled=True,
            # Only the nodes: not the whole VPC CIDR (open=True would allow that).
            open=False,
        )
        endpoint.connections.allow_default_port_from(self.security_group, "haproxy-ha nodes: the EC2 API")
        return endpoint

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

    def _node_files(self, role: iam.IRole) -> s3_assets.Asset:
        files = s3_assets.Asset(self, "NodeFiles", path=str(node_files_dir()))
        # Exactly the one object the nodes download, rather than Asset.grant_read's bucket-wide wildcards.
        role.add_to_principal_policy(iam.PolicyStatement(
            actions=["s3:GetObject"],
            resources=[files.bucket.arn_for_objects(files.s3_object_key)],
        ))
        return files

    def _network_interfaces(self, subnets: Sequence[ec2.ISubnet]) -> list[ec2.CfnNetworkInterface]:
        return [self._network_interface(name, subnet) for name, subnet in zip(NODE_NAMES, subnets, strict=False)]

    def _documents(self, addresses: Sequence[NodeAddress], settings: _NodeSettings, *, route_table_ids: Sequence[str],
                   region: str, vpc_id: str, reconciler: str) -> list[dict[str, Any]]:
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
                priority=NODE_PRIORITIES[i],
                preempt=settings.preempt,
                virtual_router_id=settings.virtual_router_id,
                profile=self.timing_profile,
                listeners=settings.listeners,
                stats_port=settings.stats_port,
            )
            for i, me in enumerate(addresses)
        ]

    def _nodes(
        self,
        enis: Sequence[ec2.CfnNetworkInterface],
        subnets: Sequence[ec2.ISubnet],
        instance_type: ec2.InstanceType,
        machine_image: ec2.IMachineImage,
        settings: _NodeSettings,
        reconciler: str,
    ) -> tuple[HaproxyHaNode, ...]:
        stack = Stack.of(self)
        addresses = [NodeAddress(name=name, eni_id=eni.ref, ip=eni.attr_primary_private_ip_address)
                     for name, eni in zip(NODE_NAMES, enis, strict=True)]
        documents = self._documents(addresses, settings, route_table_ids=self.route_table_ids, region=stack.region,
                                    vpc_id=self.vpc.vpc_id, reconciler=reconciler)
        nodes: list[HaproxyHaNode] = []
        for name, eni, subnet, document in zip(NODE_NAMES, enis, subnets, documents, strict=False):
            instance, script = self._instance(name, eni, subnet, instance_type, machine_image,
                                              stack.to_json_string(document))
            nodes.append(HaproxyHaNode(name=name, instance=instance, network_interface=eni,
                                       availability_zone=subnet.availability_zone, user_data=script))
        # One node at a time: a props change stops and starts each instance, and the other must keep serving.
        nodes[1].instance.node.add_dependency(nodes[0].instance)
        return tuple(nodes)

    def _preview_files(self, settings: _NodeSettings) -> dict[str, dict[str, str]]:
        """Each node's haproxy.cfg and keepalived.conf, rendered from its document with placeholders
        for what only the deploy knows (see haproxy_ha/preview.py)."""
        ips = preview.placeholder_ips(self.vip, len(NODE_NAMES))
        addresses = [NodeAddress(name=name, eni_id=preview.placeholder_eni(name), ip=ip)
                     for name, ip in zip(NODE_NAMES, ips, strict=True)]
        documents = self._documents(
            addresses, settings, route_table_ids=preview.placeholder_tables(self.route_table_ids),
            region=preview.literal_or(Stack.of(self).region, preview.PLACEHOLDER_REGION),
            vpc_id=preview.literal_or(self.vpc.vpc_id, preview.PLACEHOLDER_VPC),
            reconciler=preview.PLACEHOLDER_RECONCILER)
        return {name: preview.render_node_files(doc) for name, doc in zip(NODE_NAMES, documents, strict=True)}

    def _node_role(self) -> iam.Role:
        role = iam.Role(
            self,
            "NodeRole",
            assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            description="haproxy-ha node: move the VIP routes of this stack's route tables",
            managed_policies=[iam.ManagedPolicy.from_aws_managed_policy_name("AmazonSSMManagedInstanceCore")],
        )
        # ReplaceRoute only (DESIGN.md, fact 1): a missing route is the reconciler's to create.
        self._grant_routes(role, ["ec2:ReplaceRoute"])
        Validations.of(role).acknowledge(
            _ack("AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/AmazonSSMManagedInstanceCore]",
                 "Session Manager access instead of SSH: AWS maintains this minimal policy for the SSM agent."),
            _ack("AwsSolutions-IAM5[Resource::*]",
                 "ec2:DescribeRouteTables, DescribeInstances and DescribeNetworkInterfaces support no "
                 "resource-level permissions; the mutating route calls are scoped to this stack's tables."),
        )
        return role

    def _grant_routes(self, role: iam.IRole, actions: list[str]) -> None:
        role.add_to_principal_policy(iam.PolicyStatement(actions=actions, resources=list(self.route_table_arns)))
        role.add_to_principal_policy(iam.PolicyStatement(
            actions=["ec2:DescribeRouteTables", "ec2:DescribeInstances", "ec2:DescribeNetworkInterfaces"],
            resources=["*"],
        ))

    def _grant_invoke(self, role: iam.IRole, reconcile: lambda_.IFunction) -> None:
        # Exactly the function: Function.grant_invoke would add its versions and aliases (ARN:*).
        role.add_to_principal_policy(iam.PolicyStatement(
            actions=["lambda:InvokeFunction"], resources=[reconcile.function_arn]))

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

    def _instance(
        self,
        name: str,
        eni: ec2.CfnNetworkInterface,
        subnet: ec2.ISubnet,
        instance_type: ec2.InstanceType,
        machine_image: ec2.IMachineImage,
        document_json: str,
    ) -> tuple[ec2.Instance, ec2.UserData]:
        script = ec2.UserData.for_linux()
        script.add_commands(*NODE_PREPARE_COMMANDS)
        zip_path = "/var/lib/haproxy-ha/node-files.zip"
        script.add_commands(
            "export AWS_RETRY_MODE=standard AWS_MAX_ATTEMPTS=10",
            f"aws s3 cp --only-show-errors --region {Stack.of(self).region} "
            f"{self.node_files.s3_object_url} {zip_path}",
            f"rm -rf {NODE_FILES_DIR}.new",
            f"python3 -m zipfile -e {zip_path} {NODE_FILES_DIR}.new",
            f"rm -rf {NODE_FILES_DIR} && mv {NODE_FILES_DIR}.new {NODE_FILES_DIR}",
            f"cat > {NODE_CONFIG_PATH} <<'HAPROXY_HA_NODE_CONFIG'",
            document_json,
            "HAPROXY_HA_NODE_CONFIG",
            f"bash {NODE_FILES_DIR}/boot.sh",
        )
        user_data = ec2.MultipartUserData()
        user_data.add_part(ec2.MultipartBody.from_raw_body(
            content_type='text/cloud-config; charset="utf-8"', body=CLOUD_CONFIG_EVERY_BOOT))
        # A raw part, not add_user_data_part: that one base64-encodes the script, which costs a
        # third more of the 16 KB.  Rendered lazily, so commands added to `script` later still count.
        user_data.add_part(ec2.MultipartBody.from_raw_body(
            content_type='text/x-shellscript; charset="utf-8"', body=Lazy.string(_RenderUserData(script))))

        instance = ec2.Instance(
            self._node_scope(name),
            "Instance",
            vpc=self.vpc,
            vpc_subnets=ec2.SubnetSelection(subnets=[subnet]),
            instance_type=instance_type,
            machine_image=machine_image,
            role=self.node_role,
            security_group=self.security_group,
            user_data=user_data,
            http_tokens=ec2.HttpTokens.REQUIRED,
            http_endpoint=True,
            http_put_response_hop_limit=1,
            block_devices=[ec2.BlockDevice(
                device_name="/dev/xvda",
                volume=ec2.BlockDeviceVolume.ebs(8, encrypted=True, volume_type=ec2.EbsDeviceVolumeType.GP3),
            )],
        )
        Tags.of(instance).add(NODE_TAG, name)
        cfn = instance.node.default_child
        assert isinstance(cfn, ec2.CfnInstance)
        # The node's own ENI is device 0, so its primary IP is the node's address and the VIP
        # routes target an ENI that survives an instance stop.  Subnet, AZ and groups come from the ENI.
        cfn.add_property_override("NetworkInterfaces", [{"DeviceIndex": "0", "NetworkInterfaceId": eni.ref}])
        cfn.add_property_deletion_override("SubnetId")
        cfn.add_property_deletion_override("SecurityGroupIds")
        cfn.add_property_deletion_override("AvailabilityZone")
        Validations.of(instance).acknowledge(
            _ack("AwsSolutions-EC28",
                 "Failover is decided by VRRP in under a few seconds; one-minute CloudWatch metrics would add "
                 "cost without helping it. Basic monitoring stays on."),
            _ack("AwsSolutions-EC29",
                 "The pair is a fixed two-node HA group with ENIs the routes target, not an Auto Scaling group; "
                 "termination protection would block stack updates and deletes."),
        )
        return instance, script

    # --- VIP routes: the Lambda that owns and repairs them -----------------------------------------

    def _route_functions(self, enis: Sequence[ec2.CfnNetworkInterface]) -> _RouteFunctions:
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
        # Each node by name and ENI only, never by instance: the instances depend on this function
        # (their documents name it), and the ENI outlives the instances that carry it.
        nodes_json = Stack.of(self).to_json_string([
            {"name": name, "eni_id": eni.ref} for name, eni in zip(NODE_NAMES, enis, strict=True)
        ])
        functions: dict[str, lambda_.Function] = {}
        for fid, handler, timeout, env in (
            ("OnEvent", "handler.on_event", ON_EVENT_TIMEOUT, {}),
            ("Reconcile", "handler.reconcile", RECONCILE_TIMEOUT, {
                "VIP": self.vip,
                "ROUTE_TABLE_IDS": Fn.join(",", list(self.route_table_ids)),
                "NODES": nodes_json,
            }),
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
        # Routes are created after both nodes exist and removed before they go.
        for n in self.nodes:
            vip_routes.node.add_dependency(n.instance)
        return vip_routes

    def _reconcile_triggers(self, functions: _RouteFunctions) -> None:
        state_rule = events.Rule(
            functions.scope,
            "NodeStateChange",
            description="haproxy-ha: move the VIP routes away from a node that stops",
            event_pattern=events.EventPattern(
                source=["aws.ec2"],
                detail_type=["EC2 Instance State-change Notification"],
                detail={"instance-id": [n.instance_id for n in self.nodes],
                        "state": list(INSTANCE_STOP_STATES)},
            ),
        )
        state_rule.add_target(targets.LambdaFunction(functions.reconcile))
        schedule = events.Rule(
            functions.scope,
            "Schedule",
            description="haproxy-ha: repair blackholed or missing VIP routes",
            schedule=events.Schedule.rate(Duration.minutes(1)),
        )
        schedule.add_target(targets.LambdaFunction(functions.reconcile))

    def add_outputs(self, prefix: str = "") -> tuple[CfnOutput, ...]:
        """Publish, as outputs of this construct's stack, what ``haproxy-ha status|failover --stack
        NAME`` reads: ``Vip``, ``VpcId``, ``RouteTableIds``, ``NodeAEniId`` and ``NodeBEniId``.

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
        ):
            output = CfnOutput(scope, key, value=value, description=description)
            output.override_logical_id(prefix + key)
            made.append(output)
        return tuple(made)


@jsii.implements(IStableStringProducer)
class _RenderUserData:
    """Renders a UserData at synth time, after every command has been added."""

    def __init__(self, user_data: ec2.UserData) -> None:
        self._user_data = user_data

    def produce(self) -> str:
        return self._user_data.render()


def _ack(rule_id: str, reason: str) -> Acknowledgment:
    return Acknowledgment(id=rule_id, reason=reason)


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
    # A deploy-time lookup would pick up each new AMI release and replace the nodes; replacing a
    # node whose ENI is device 0 fails while the old instance holds it.  Pin it in the context
    # instead, which needs a stack with a known account and region.
    env_known = not Token.is_unresolved(stack.account) and not Token.is_unresolved(stack.region)
    if not env_known:
        Annotations.of(stack).add_warning_v2(
            "haproxy-ha:ami-not-pinned",
            "The stack has no account/region, so the Amazon Linux 2023 AMI is resolved at deploy time: "
            "a later deploy after a new AMI release will try to replace the nodes. Give the stack an env, "
            "or pass machine_image.",
        )
    return ec2.MachineImage.latest_amazon_linux2023(cpu_type=cpu, cached_in_context=env_known)
