"""The network the surviving node needs to move the routes: NAT per AZ, or an EC2 endpoint."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from aws_cdk import App, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk.assertions import Annotations, Match, Template
from cdk_nag import AwsSolutionsChecks
from template_tools import new_app, new_stack

from haproxy_ha import HaproxyHa, Listener


def _of_type(doc: dict[str, Any], rtype: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in doc["Resources"].items() if v["Type"] == rtype}


@dataclass(frozen=True)
class Built:
    """One synthesized pair, shared by the tests of this module that only read it."""

    app: App
    stack: Stack
    lb: HaproxyHa
    doc: dict[str, Any]


def _build(**props: Any) -> Built:
    app = new_app()
    stack = new_stack(app)
    lb = HaproxyHa(stack, "Lb", vip="192.168.254.10", **props)
    return Built(app, stack, lb, Template.from_stack(stack).to_json())


@pytest.fixture(scope="module")
def with_endpoint() -> Built:
    return _build(ec2_endpoint=True)


@pytest.fixture(scope="module")
def without_nat() -> Built:
    return _build(nat_gateways=0, ec2_endpoint=True)


def test_ec2_endpoint_sits_in_the_node_subnets_and_admits_only_the_nodes(with_endpoint: Built) -> None:
    lb, doc = with_endpoint.lb, with_endpoint.doc
    (endpoint,) = _of_type(doc, "AWS::EC2::VPCEndpoint").values()
    props = endpoint["Properties"]
    assert props["VpcEndpointType"] == "Interface" and props["PrivateDnsEnabled"] is True
    assert props["ServiceName"] == "com.amazonaws.eu-west-1.ec2"
    enis = _of_type(doc, "AWS::EC2::NetworkInterface").values()
    node_subnets = sorted(v["Properties"]["SubnetId"]["Ref"] for v in enis)
    assert sorted(s["Ref"] for s in props["SubnetIds"]) == node_subnets
    (endpoint_sg,) = props["SecurityGroupIds"]
    sg_logical = endpoint_sg["Fn::GetAtt"][0]
    # Nothing from the VPC CIDR: only HTTPS from the node security group.
    assert not doc["Resources"][sg_logical]["Properties"].get("SecurityGroupIngress")
    (node_sg,) = [k for k, v in _of_type(doc, "AWS::EC2::SecurityGroup").items()
                  if v["Properties"]["GroupDescription"].startswith("haproxy-ha nodes")]
    (rule,) = [v["Properties"] for v in _of_type(doc, "AWS::EC2::SecurityGroupIngress").values()
               if v["Properties"]["GroupId"] == {"Fn::GetAtt": [sg_logical, "GroupId"]}]
    assert (rule["IpProtocol"], rule["FromPort"], rule["ToPort"]) == ("tcp", 443, 443)
    assert rule["SourceSecurityGroupId"] == {"Fn::GetAtt": [node_sg, "GroupId"]}
    assert lb.ec2_endpoint is not None


def test_no_ec2_endpoint_by_default(stack: Stack) -> None:
    lb = HaproxyHa(stack, "Lb", vip="192.168.254.10")
    Template.from_stack(stack).resource_count_is("AWS::EC2::VPCEndpoint", 0)
    assert lb.ec2_endpoint is None


def test_no_nat_gateway_builds_isolated_subnets_an_s3_gateway_and_the_endpoints_a_deploy_needs(
        without_nat: Built) -> None:
    stack, doc = without_nat.stack, without_nat.doc
    assert not _of_type(doc, "AWS::EC2::NatGateway")
    endpoints = _of_type(doc, "AWS::EC2::VPCEndpoint")
    interfaces = {str(v["Properties"]["ServiceName"]): v["Properties"] for v in endpoints.values()
                  if v["Properties"].get("VpcEndpointType") == "Interface"}
    # EC2 for the route moves, CloudFormation for the ready signal, Auto Scaling for the hook, Logs
    # for the logs and metric records (no TLS listener here: no Secrets Manager).
    assert sorted(interfaces) == ["com.amazonaws.eu-west-1.autoscaling", "com.amazonaws.eu-west-1.cloudformation",
                                  "com.amazonaws.eu-west-1.ec2", "com.amazonaws.eu-west-1.logs"]
    enis = _of_type(doc, "AWS::EC2::NetworkInterface").values()
    node_subnets = sorted(v["Properties"]["SubnetId"]["Ref"] for v in enis)
    (node_sg,) = [k for k, v in _of_type(doc, "AWS::EC2::SecurityGroup").items()
                  if v["Properties"]["GroupDescription"].startswith("haproxy-ha nodes")]
    for props in interfaces.values():
        assert props["PrivateDnsEnabled"] is True
        assert sorted(s["Ref"] for s in props["SubnetIds"]) == node_subnets
        (endpoint_sg,) = props["SecurityGroupIds"]
        sg_logical = endpoint_sg["Fn::GetAtt"][0]
        assert not doc["Resources"][sg_logical]["Properties"].get("SecurityGroupIngress")
        (rule,) = [v["Properties"] for v in _of_type(doc, "AWS::EC2::SecurityGroupIngress").values()
                   if v["Properties"]["GroupId"] == {"Fn::GetAtt": [sg_logical, "GroupId"]}]
        assert (rule["FromPort"], rule["SourceSecurityGroupId"]) == (443, {"Fn::GetAtt": [node_sg, "GroupId"]})
    gateway = [k for k, v in endpoints.items() if v["Properties"].get("VpcEndpointType") == "Gateway"]
    assert len(gateway) == 1
    # The nodes run in the (isolated) private subnets, and start only once every endpoint exists.
    subnets = [v["Properties"]["SubnetId"]["Ref"] for v in enis]
    assert all("PrivateSubnet" in s for s in subnets)
    for group in _of_type(doc, "AWS::AutoScaling::AutoScalingGroup").values():
        assert set(endpoints) <= set(group["DependsOn"])
    warnings = Annotations.from_stack(stack).find_warning("/Test/Lb", Match.string_like_regexp("isolated subnets"))
    (text,) = [str(w.entry.data) for w in warnings]
    assert ("This construct added an S3 gateway endpoint and interface endpoints for EC2, CloudFormation, "
            "Auto Scaling and CloudWatch Logs." in text)
    assert ("Still needed: interface endpoints for ssm, ssmmessages and ec2messages (Session Manager), lambda "
            "(the agent asks the reconciler to create a missing route)." in text)


def test_nodes_wait_for_the_ec2_endpoint_they_move_routes_through(with_endpoint: Built) -> None:
    doc = with_endpoint.doc
    (endpoint,) = _of_type(doc, "AWS::EC2::VPCEndpoint")
    for group in _of_type(doc, "AWS::AutoScaling::AutoScalingGroup").values():
        assert endpoint in group["DependsOn"]


def _isolated_caller_vpc(stack: Stack) -> ec2.IVpc:
    """A caller's VPC with isolated subnets only, in two AZs."""
    return ec2.Vpc.from_vpc_attributes(
        stack, "Isolated", vpc_id="vpc-0123456789abcdef0", vpc_cidr_block="10.30.0.0/16",
        availability_zones=["eu-west-1a", "eu-west-1b"],
        isolated_subnet_ids=["subnet-0d00000000000000a", "subnet-0d00000000000000b"],
        isolated_subnet_route_table_ids=["rtb-0d00000000000000a", "rtb-0d00000000000000b"],
    )


def test_isolated_caller_vpc_warning_lists_every_endpoint_still_needed(stack: Stack) -> None:
    vpc = _isolated_caller_vpc(stack)
    HaproxyHa(stack, "Lb", vip="192.168.254.10", vpc=vpc)
    (warning,) = Annotations.from_stack(stack).find_warning("/Test/Lb", Match.string_like_regexp("isolated"))
    text = str(warning.entry.data)
    assert "This construct added" not in text
    assert ("Still needed: an S3 gateway endpoint (node files, the nodes' documents and the Amazon Linux "
            "repositories); ") in text
    assert ("interface endpoints for ec2 (route moves), cloudformation (a new node's ready signal: without it "
            "every deploy fails), autoscaling (the termination hook and the health report), logs (the nodes' logs "
            "and metric records: without it no metric arrives and the alarms fire), ssm, ssmmessages and "
            "ec2messages" in text)
    assert "secretsmanager" not in text  # no TLS listener


def test_an_isolated_vpc_with_a_tls_listener_gets_a_secrets_manager_endpoint(stack: Stack) -> None:
    secret = secretsmanager.Secret.from_secret_name_v2(stack, "Cert", "lb/https")
    HaproxyHa(stack, "Lb", vip="192.168.254.10", nat_gateways=0, ec2_endpoint=True, listeners=[
        Listener(port=443, name="https", backends=("10.0.9.9:8443",), certificate=secret)])
    doc = Template.from_stack(stack).to_json()
    services = sorted(str(v["Properties"]["ServiceName"]) for v in _of_type(doc, "AWS::EC2::VPCEndpoint").values()
                      if v["Properties"].get("VpcEndpointType") == "Interface")
    assert "com.amazonaws.eu-west-1.secretsmanager" in services and "com.amazonaws.eu-west-1.logs" in services
    (warning,) = Annotations.from_stack(stack).find_warning("/Test/Lb", Match.string_like_regexp("isolated"))
    assert "CloudWatch Logs and Secrets Manager." in str(warning.entry.data)


def test_an_isolated_caller_vpc_with_a_tls_listener_is_told_it_needs_secrets_manager(stack: Stack) -> None:
    vpc = _isolated_caller_vpc(stack)
    secret = secretsmanager.Secret.from_secret_name_v2(stack, "Cert", "lb/https")
    HaproxyHa(stack, "Lb", vip="192.168.254.10", vpc=vpc, listeners=[
        Listener(port=443, name="https", backends=("10.30.9.9:8443",), certificate=secret)])
    (warning,) = Annotations.from_stack(stack).find_warning("/Test/Lb", Match.string_like_regexp("isolated"))
    assert ("secretsmanager (the TLS listeners' certificates: without it no TLS listener is served, and a new node "
            "is not ready)") in str(warning.entry.data)


def test_ec2_endpoint_has_no_unacknowledged_cdk_nag_findings(without_nat: Built) -> None:
    report = AwsSolutionsChecks(without_nat.app, verbose=True).validate_scope(without_nat.stack)
    assert report.success, [v.rule_name for v in report.violations]
