"""The construct used from other apps: a caller's three-AZ VPC, an isolated-only VPC, a large config, no env."""

from __future__ import annotations

import importlib.util
import json
from types import ModuleType
from typing import Any

import pytest
from aws_cdk import App, Stack, Token
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk.assertions import Annotations, Match, Template
from template_tools import REPO, heredoc, launch_template_ids, new_app, new_stack, node_documents, raw_user_data

from haproxy_ha import HaproxyHa, Listener
from haproxy_ha_cli import outputs
from haproxy_ha_runtime.config import parse_config

USER_DATA_LIMIT = 16384


def load_consumer_app() -> ModuleType:
    spec = importlib.util.spec_from_file_location("consumer_example_app", REPO / "consumer_example" / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def template_json(stack: Stack) -> dict[str, Any]:
    doc: dict[str, Any] = Template.from_stack(stack).to_json()
    return doc


def test_consumer_app_with_three_az_imported_vpc() -> None:
    consumer = load_consumer_app()
    stack = consumer.ConsumerStack(new_app(), "Consumer", env={"account": "123456789012", "region": "eu-west-1"})
    doc = template_json(stack)
    (cr,) = [v for v in doc["Resources"].values() if v["Type"] == "Custom::HaproxyHaVipRoutes"]
    tables = [f"rtb-0{t}00000000000000{az}" for t in "ab" for az in "abc"] + ["rtb-0c00000000000000a"]
    assert cr["Properties"]["RouteTableIds"] == tables
    # Nodes in the first two AZs' private subnets.
    subnets = sorted(v["Properties"]["SubnetId"] for v in doc["Resources"].values()
                     if v["Type"] == "AWS::EC2::NetworkInterface")
    assert subnets == ["subnet-0b00000000000000a", "subnet-0b00000000000000b"]
    # IAM scoped to exactly the caller's tables: the nodes replace, the Lambda creates, replaces and deletes.
    template = Template.from_json(doc)
    arns = [f"arn:aws:ec2:eu-west-1:123456789012:route-table/{t}" for t in tables]
    for actions in ("ec2:ReplaceRoute", ["ec2:CreateRoute", "ec2:DeleteRoute", "ec2:ReplaceRoute"]):
        template.has_resource_properties("AWS::IAM::Policy", {"PolicyDocument": {"Statement": Match.array_with([{
            "Action": actions, "Effect": "Allow", "Resource": arns}])}})
    # connections.allow_from opened the listener port to the caller's app security group.
    template.has_resource_properties("AWS::EC2::SecurityGroupIngress", {
        "IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "SourceSecurityGroupId": "sg-0123456789abcdef0"})
    # Its drain_timeout of 2 minutes holds a leaving node for that, plus a minute for the hand-over.
    hooks = [v["Properties"]["LifecycleHookSpecificationList"][0]["HeartbeatTimeout"] for v in doc["Resources"].values()
             if v["Type"] == "AWS::AutoScaling::AutoScalingGroup"]
    assert hooks == [180, 180]
    for document in node_documents(doc).values():
        config = parse_config(document)
        assert config.drain_timeout_s == 120.0
        assert config.vpc_id == "vpc-0a1b2c3d4e5f60718"
        assert [lst.name for lst in config.listeners] == ["web", "db"]
        assert config.listeners[0].backends[1].host == "10.20.11.11"


def test_isolated_only_vpc_puts_nodes_in_isolated_subnets_and_warns_about_endpoints(stack: Stack) -> None:
    vpc = ec2.Vpc.from_vpc_attributes(
        stack, "Isolated", vpc_id="vpc-0123456789abcdef0", vpc_cidr_block="10.30.0.0/16",
        availability_zones=["eu-west-1a", "eu-west-1b"],
        isolated_subnet_ids=["subnet-0d00000000000000a", "subnet-0d00000000000000b"],
        isolated_subnet_route_table_ids=["rtb-0d00000000000000a", "rtb-0d00000000000000b"],
    )
    lb = HaproxyHa(stack, "Lb", vip="192.168.254.10", vpc=vpc)
    assert lb.route_table_ids == ("rtb-0d00000000000000a", "rtb-0d00000000000000b")
    assert [n.availability_zone for n in lb.nodes] == ["eu-west-1a", "eu-west-1b"]
    Annotations.from_stack(stack).has_warning("/Test/Lb", Match.string_like_regexp("VPC endpoints"))
    Template.from_stack(stack).has_resource_properties("AWS::EC2::NetworkInterface", {
        "SubnetId": "subnet-0d00000000000000a", "SourceDestCheck": False})


def test_built_vpc_with_three_azs_routes_every_table_and_uses_two_azs(stack: Stack) -> None:
    lb = HaproxyHa(stack, "Lb", vip="192.168.254.10", max_azs=3, vpc_cidr="10.40.0.0/16", nat_gateways=0,
                   ec2_endpoint=True, node_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PUBLIC))
    assert len(lb.route_table_ids) == 6
    assert len({n.availability_zone for n in lb.nodes}) == 2
    doc = template_json(stack)
    (cr,) = [v for v in doc["Resources"].values() if v["Type"] == "Custom::HaproxyHaVipRoutes"]
    assert len(cr["Properties"]["RouteTableIds"]) == 6


def test_large_config_stays_under_the_user_data_limit(stack: Stack) -> None:
    listeners = [Listener(port=8000 + i, name=f"service-{i:02d}", check_path="/health/ready",
                          backends=tuple(f"backend-{i:02d}-{j}.apps.example.internal:{9000 + j}" for j in range(6)))
                 for i in range(8)]
    tables = [f"rtb-{i:017x}" for i in range(50)]
    HaproxyHa(stack, "Lb", vip="192.168.254.10", listeners=listeners, extra_route_table_ids=tables,
              timing_profile="fast", preempt=True, virtual_router_id=200)
    doc = template_json(stack)
    for logical_id in launch_template_ids(doc):
        size = len(raw_user_data(doc, logical_id).encode())
        assert size < USER_DATA_LIMIT, f"{logical_id} user data is {size} bytes"
    for document in node_documents(doc).values():
        config = parse_config(document)
        assert len(config.route_table_ids) == 54 and len(config.listeners) == 8
        assert config.profile == "fast" and config.preempt is True and config.virtual_router_id == 200


def test_fails_at_synth_when_the_user_data_would_exceed_the_ec2_limit(stack: Stack) -> None:
    """Long after-boot commands (the document is in S3, not in user data): EC2 would refuse the user
    data only at RunInstances; synth refuses it first."""
    lb = HaproxyHa(stack, "Lb", vip="192.168.254.10")
    lb.nodes[0].after_boot.add_commands(*(f"echo after-boot step {i:04d} >> /var/log/after-boot.log"
                                          for i in range(400)))
    with pytest.raises(Exception, match=r"node a's user data would be about \d+ bytes .*allowed: at most 16384"):
        template_json(stack)


def test_the_synth_check_counts_what_ec2_would_receive(stack: Stack) -> None:
    """The check's estimate is never below the real size: with after-boot commands that bring it
    near the limit, the resolved user data, with this test's stand-in values, is smaller than what
    the check counted."""
    from haproxy_ha.construct import _resolved_size

    lb = HaproxyHa(stack, "Lb", vip="192.168.254.10")
    lb.nodes[0].after_boot.add_commands(*(f"echo after-boot step {i:04d}" for i in range(280)))
    doc = template_json(stack)
    real = len(raw_user_data(doc, launch_template_ids(doc)[0]).encode())
    template = lb.nodes[0].launch_template.node.default_child
    assert isinstance(template, ec2.CfnLaunchTemplate)
    counted = _resolved_size(stack.resolve(template.launch_template_data.user_data)["Fn::Base64"])  # type: ignore[union-attr,index]
    assert real <= counted < USER_DATA_LIMIT


def test_env_agnostic_stack_resolves_region_at_deploy_and_warns_about_the_ami() -> None:
    stack = Stack(App(), "Agnostic")
    HaproxyHa(stack, "Lb", vip="192.168.254.10")
    doc = template_json(stack)
    for document in node_documents(doc).values():
        assert parse_config(document).region == "eu-west-1"  # {"Ref": "AWS::Region"} resolved by the stand-in
    Annotations.from_stack(stack).has_warning("/Agnostic", Match.string_like_regexp("AMI is resolved at deploy"))


def test_callers_can_add_commands_that_run_after_the_boot_script() -> None:
    stack = new_stack()
    lb = HaproxyHa(stack, "Lb", vip="192.168.254.10")
    # Added after the construct was built: user data is rendered at synth, so they still count.
    lb.nodes[0].after_boot.add_commands("echo extra-step")
    doc = template_json(stack)
    a, b = (raw_user_data(doc, t) for t in launch_template_ids(doc))
    assert heredoc(a, "HAPROXY_HA_AFTER_BOOT") == "#!/bin/bash\necho extra-step"
    assert heredoc(b, "HAPROXY_HA_AFTER_BOOT") == "#!/bin/bash"
    # The boot unit runs that script after boot.sh.
    unit = heredoc(a, "HAPROXY_HA_BOOT_UNIT").splitlines()
    starts = [line.removeprefix("ExecStart=") for line in unit if line.startswith("ExecStart=")]
    assert starts[-2:] == ["/usr/bin/bash /opt/haproxy-ha/boot.sh", "/usr/bin/bash /etc/haproxy-ha/after-boot.sh"]


def test_public_attributes(stack: Stack) -> None:
    lb = HaproxyHa(stack, "Lb", vip="192.168.254.10")
    assert lb.vip == "192.168.254.10"
    assert [n.name for n in lb.nodes] == ["a", "b"]
    node = lb.nodes[0]
    assert isinstance(node.auto_scaling_group, autoscaling.CfnAutoScalingGroup)
    assert isinstance(node.launch_template, ec2.LaunchTemplate)
    assert isinstance(node.role, iam.Role) and node.role is not lb.nodes[1].role
    assert node.auto_scaling_group_name == node.auto_scaling_group.auto_scaling_group_name
    assert not Token.is_unresolved(node.auto_scaling_group_name)
    assert lb.drain_timeout.to_seconds() == 30
    assert isinstance(lb.connections, ec2.Connections)
    assert lb.connections.security_groups == [lb.security_group]
    assert len(lb.route_table_ids) == 4


def test_the_construct_is_an_iconnectable_whose_rules_land_on_the_nodes_own_group(stack: Stack) -> None:
    lb = HaproxyHa(stack, "Lb", vip="192.168.254.10")
    other = ec2.SecurityGroup(stack, "Other", vpc=lb.vpc)
    # HaproxyHa itself (not only lb.connections) is what the caller hands to allow_to.
    other.connections.allow_to(lb, ec2.Port.tcp(8080))
    doc = template_json(stack)
    # The group every node ENI carries: a rule on any other group would let nothing in.
    groups = {json.dumps(g, sort_keys=True) for v in doc["Resources"].values()
              if v["Type"] == "AWS::EC2::NetworkInterface" for g in v["Properties"]["GroupSet"]}
    (node_group,) = (json.loads(g) for g in groups)
    other_id = stack.resolve(other.security_group_id)
    rules = [{k: v for k, v in r["Properties"].items() if k != "Description"} for r in doc["Resources"].values()
             if r["Type"] == "AWS::EC2::SecurityGroupIngress"
             and r["Properties"].get("SourceSecurityGroupId") == other_id]
    assert rules == [{"GroupId": node_group, "SourceSecurityGroupId": other_id, "IpProtocol": "tcp",
                      "FromPort": 8080, "ToPort": 8080}]


def test_x86_instance_type_gets_the_x86_ami(stack: Stack) -> None:
    HaproxyHa(stack, "Lb", vip="192.168.254.10", instance_type=ec2.InstanceType("t3.small"))
    # cdk.context.json pins the x86_64 AL2023 parameter to this placeholder AMI.
    Template.from_stack(stack).all_resources_properties("AWS::EC2::LaunchTemplate", {
        "LaunchTemplateData": Match.object_like({"ImageId": "ami-0b0b0b0b0b0b0b0b0", "InstanceType": "t3.small"})})


def test_add_outputs_publishes_what_the_cli_reads(stack: Stack) -> None:
    lb = HaproxyHa(stack, "Lb", vip="192.168.254.10")
    lb.add_outputs(prefix="Edge")
    doc = template_json(stack)
    keys = [outputs.VIP, outputs.VPC_ID, outputs.ROUTE_TABLE_IDS, outputs.node_eni_key("a"),
            outputs.node_eni_key("b"), outputs.METRICS_PAIR, outputs.DOCUMENTS_BUCKET]
    assert sorted(doc["Outputs"]) == sorted("Edge" + k for k in keys)
    assert doc["Outputs"]["EdgeMetricsPair"]["Value"] == lb.metrics_pair == "Test-Lb-" + lb.metrics_pair[-8:]
    assert doc["Outputs"]["EdgeVip"]["Value"] == "192.168.254.10"
    assert len(doc["Outputs"]["EdgeRouteTableIds"]["Value"]["Fn::Join"][1]) == 4
    assert doc["Outputs"]["EdgeNodeBEniId"]["Value"] == stack.resolve(lb.nodes[1].eni_id)
    assert doc["Outputs"]["EdgeDocumentsBucket"]["Value"] == stack.resolve(lb.config_bucket.bucket_name)


def test_add_outputs_refuses_a_bad_prefix_and_a_second_call(stack: Stack) -> None:
    lb = HaproxyHa(stack, "Lb", vip="192.168.254.10")
    with pytest.raises(ValueError, match=r"prefix: got 'Edge-1'; allowed: letters and digits"):
        lb.add_outputs(prefix="Edge-1")
    lb.add_outputs()
    with pytest.raises(ValueError, match=r"add_outputs: already called on Test/Lb"):
        lb.add_outputs(prefix="Other")
