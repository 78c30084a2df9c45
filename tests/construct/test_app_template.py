"""Template assertions on the default app: nodes, ENIs, security group, IAM scopes, routes, Lambda, outputs."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from aws_cdk.assertions import Match, Template
from template_tools import REPO, Resolver, group_ids, heredoc, launch_template_ids, node_documents, raw_user_data

from haproxy_ha.assets import BOOT_UNIT, FETCH_SCRIPT, USER_DATA_FILES
from haproxy_ha.construct import NODE_PREPARE_COMMANDS
from haproxy_ha_runtime import route_lambda
from haproxy_ha_runtime.config import parse_config
from haproxy_ha_runtime.tags import ROUTES_DELETED_TAG

USER_DATA_LIMIT = 16384


def resources(doc: dict[str, Any], rtype: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in doc["Resources"].items() if v["Type"] == rtype}


def route_table_refs(doc: dict[str, Any]) -> list[dict[str, str]]:
    return [{"Ref": k} for k in sorted(resources(doc, "AWS::EC2::RouteTable"))]


def route_table_arns(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"Fn::Join": ["", ["arn:aws:ec2:eu-west-1:123456789012:route-table/", ref]]}
            for ref in route_table_refs(doc)]


def statements(doc: dict[str, Any], role_prefix: str) -> list[dict[str, Any]]:
    """Every policy statement attached to roles whose logical ID starts with `role_prefix`."""
    roles = {k for k in resources(doc, "AWS::IAM::Role") if k.startswith(role_prefix)}
    found: list[dict[str, Any]] = []
    for policy in resources(doc, "AWS::IAM::Policy").values():
        if any(r.get("Ref") in roles for r in policy["Properties"]["Roles"]):
            found.extend(policy["Properties"]["PolicyDocument"]["Statement"])
    for role in roles:
        for inline in doc["Resources"][role]["Properties"].get("Policies", []):
            found.extend(inline["PolicyDocument"]["Statement"])
    return found


def actions_of(statement: dict[str, Any]) -> list[str]:
    action = statement["Action"]
    return [action] if isinstance(action, str) else list(action)


def by_sorted_json(items: list[Any]) -> list[str]:
    return sorted(json.dumps(i, sort_keys=True) for i in items)


# --- nodes: an Auto Scaling group of one per node, with the node's ENI as device 0 ----------------

def node_resource(doc: dict[str, Any], rtype: str, node: str) -> tuple[str, dict[str, Any]]:
    """The one resource of `rtype` that belongs to node `node` ("A" or "B")."""
    (found,) = [(k, v) for k, v in resources(doc, rtype).items() if k.startswith(f"HaproxyHaNode{node}")]
    return found


def test_each_node_is_a_group_of_exactly_one_instance_in_its_own_az(app_doc: dict[str, Any]) -> None:
    assert len(resources(app_doc, "AWS::AutoScaling::AutoScalingGroup")) == 2
    assert not resources(app_doc, "AWS::EC2::Instance")
    azs = []
    for node in "AB":
        _, group = node_resource(app_doc, "AWS::AutoScaling::AutoScalingGroup", node)
        _, eni = node_resource(app_doc, "AWS::EC2::NetworkInterface", node)
        props = group["Properties"]
        assert (props["MinSize"], props["MaxSize"], props["DesiredCapacity"]) == ("1", "1", "1")
        # A launch template that names an existing ENI goes with AZs, not subnets: the ENI's subnet decides.
        assert "VPCZoneIdentifier" not in props
        subnet = app_doc["Resources"][eni["Properties"]["SubnetId"]["Ref"]]
        assert props["AvailabilityZones"] == [subnet["Properties"]["AvailabilityZone"]]
        azs.append(subnet["Properties"]["AvailabilityZone"])
    assert azs == ["eu-west-1a", "eu-west-1b"]


def test_each_node_eni_has_source_dest_check_off(app_template: Template) -> None:
    app_template.resource_count_is("AWS::EC2::NetworkInterface", 2)
    app_template.all_resources_properties("AWS::EC2::NetworkInterface", {"SourceDestCheck": False})


def test_enis_and_the_groups_instances_carry_the_node_tag_the_cli_reads(app_doc: dict[str, Any]) -> None:
    for node in "AB":
        _, eni = node_resource(app_doc, "AWS::EC2::NetworkInterface", node)
        _, group = node_resource(app_doc, "AWS::AutoScaling::AutoScalingGroup", node)
        assert {"Key": "haproxy-ha:node", "Value": node.lower()} in eni["Properties"]["Tags"]
        assert group["Properties"]["Tags"] == [
            {"Key": "haproxy-ha:node", "Value": node.lower(), "PropagateAtLaunch": True}]


def test_each_launch_template_gives_its_instances_the_nodes_own_eni_as_device_0(app_doc: dict[str, Any]) -> None:
    for node in "AB":
        template_id, template = node_resource(app_doc, "AWS::EC2::LaunchTemplate", node)
        eni_id, _ = node_resource(app_doc, "AWS::EC2::NetworkInterface", node)
        data = template["Properties"]["LaunchTemplateData"]
        # The ENI outlives every instance, and brings the subnet and the security groups.
        assert data["NetworkInterfaces"] == [
            {"DeviceIndex": 0, "NetworkInterfaceId": {"Ref": eni_id}, "DeleteOnTermination": False}]
        assert not {"SecurityGroupIds", "SecurityGroups", "SubnetId", "Placement"} & set(data)
        _, group = node_resource(app_doc, "AWS::AutoScaling::AutoScalingGroup", node)
        # The group follows the template's latest version: a changed template rolls the group.
        assert group["Properties"]["LaunchTemplate"] == {
            "LaunchTemplateId": {"Ref": template_id},
            "Version": {"Fn::GetAtt": [template_id, "LatestVersionNumber"]}}


def test_eni_subnets_are_private_and_in_different_azs(app_doc: dict[str, Any]) -> None:
    subnets = [v["Properties"]["SubnetId"]["Ref"] for v in resources(app_doc, "AWS::EC2::NetworkInterface").values()]
    assert len(set(subnets)) == 2
    assert all("PrivateSubnet" in s for s in subnets)


def test_launch_templates_require_imdsv2_encrypt_root_and_have_no_key_pair(app_doc: dict[str, Any]) -> None:
    for node in "AB":
        _, template = node_resource(app_doc, "AWS::EC2::LaunchTemplate", node)
        data = template["Properties"]["LaunchTemplateData"]
        assert data["MetadataOptions"] == {"HttpTokens": "required", "HttpEndpoint": "enabled",
                                           "HttpPutResponseHopLimit": 1}
        assert data["BlockDeviceMappings"] == [{"DeviceName": "/dev/xvda", "Ebs": {
            "Encrypted": True, "VolumeSize": 8, "VolumeType": "gp3"}}]
        assert data["InstanceType"] == "t4g.small"
        assert "KeyName" not in data and "KeyPair" not in data
    assert not resources(app_doc, "AWS::EC2::KeyPair")


def test_each_launch_template_carries_its_own_nodes_role(app_doc: dict[str, Any]) -> None:
    for node in "AB":
        _, template = node_resource(app_doc, "AWS::EC2::LaunchTemplate", node)
        profile_id = template["Properties"]["LaunchTemplateData"]["IamInstanceProfile"]["Arn"]["Fn::GetAtt"][0]
        role_id, _ = node_resource(app_doc, "AWS::IAM::Role", node)
        assert app_doc["Resources"][profile_id]["Properties"]["Roles"] == [{"Ref": role_id}]


def test_ami_architecture_follows_instance_type(app_doc: dict[str, Any]) -> None:
    # cdk.context.json pins the arm64 AL2023 parameter to this placeholder AMI.
    for template in resources(app_doc, "AWS::EC2::LaunchTemplate").values():
        assert template["Properties"]["LaunchTemplateData"]["ImageId"] == "ami-0a0a0a0a0a0a0a0a0"


SIGNAL_WAIT = "PT20M"
SUSPENDED = ["HealthCheck", "ReplaceUnhealthy", "AZRebalance", "AlarmNotification", "ScheduledActions"]


def test_groups_wait_for_the_nodes_signal_and_roll_one_instance_at_a_time(app_doc: dict[str, Any]) -> None:
    for group in resources(app_doc, "AWS::AutoScaling::AutoScalingGroup").values():
        assert group["CreationPolicy"] == {"ResourceSignal": {"Count": 1, "Timeout": SIGNAL_WAIT}}
        assert group["UpdatePolicy"] == {"AutoScalingRollingUpdate": {
            "MaxBatchSize": 1, "MinInstancesInService": 0, "WaitOnResourceSignals": True,
            "PauseTime": SIGNAL_WAIT, "SuspendProcesses": SUSPENDED}}


def test_a_replacement_terminates_the_old_instance_before_it_launches_the_new_one(app_doc: dict[str, Any]) -> None:
    # The ENI can be on one instance only.
    for group in resources(app_doc, "AWS::AutoScaling::AutoScalingGroup").values():
        assert group["Properties"]["InstanceMaintenancePolicy"] == {
            "MinHealthyPercentage": 0, "MaxHealthyPercentage": 100}


def test_node_b_group_waits_for_node_a_group_so_nodes_roll_one_at_a_time(app_doc: dict[str, Any]) -> None:
    a, b = group_ids(app_doc)
    assert a in app_doc["Resources"][b]["DependsOn"]
    assert b not in app_doc["Resources"][a].get("DependsOn", [])


def test_termination_hook_holds_a_leaving_instance_for_the_drain_and_the_hand_over(app_doc: dict[str, Any]) -> None:
    for group in resources(app_doc, "AWS::AutoScaling::AutoScalingGroup").values():
        assert group["Properties"]["LifecycleHookSpecificationList"] == [{
            "LifecycleHookName": "haproxy-ha-drain",
            "LifecycleTransition": "autoscaling:EC2_INSTANCE_TERMINATING",
            "DefaultResult": "CONTINUE",
            # 30 s of drain (the default drain_timeout) and 60 s for the hand-over around it.
            "HeartbeatTimeout": 90,
        }]
    assert not resources(app_doc, "AWS::AutoScaling::LifecycleHook")


def test_groups_start_after_their_subnet_reaches_the_internet_and_their_role_may_act(app_doc: dict[str, Any]) -> None:
    for node, subnet in (("A", "HaproxyHaVpcPrivateSubnet1"), ("B", "HaproxyHaVpcPrivateSubnet2")):
        _, group = node_resource(app_doc, "AWS::AutoScaling::AutoScalingGroup", node)
        depends = set(group["DependsOn"])
        (default_route,) = [k for k in resources(app_doc, "AWS::EC2::Route")
                            if k.startswith(subnet + "DefaultRoute")]
        # The private subnet's default route goes to its NAT gateway.
        assert app_doc["Resources"][default_route]["Properties"]["NatGatewayId"]
        assert default_route in depends
        policy_id, _ = node_resource(app_doc, "AWS::IAM::Policy", node)
        assert policy_id in depends


# --- security group ------------------------------------------------------------------------------

def test_vrrp_only_from_the_node_group_itself(app_doc: dict[str, Any]) -> None:
    (sg_id,) = resources(app_doc, "AWS::EC2::SecurityGroup")
    vrrp = [r for r in resources(app_doc, "AWS::EC2::SecurityGroupIngress").values()
            if r["Properties"]["IpProtocol"] == "112"]
    assert len(vrrp) == 1
    props = vrrp[0]["Properties"]
    assert props["SourceSecurityGroupId"] == {"Fn::GetAtt": [sg_id, "GroupId"]}
    assert props["GroupId"] == {"Fn::GetAtt": [sg_id, "GroupId"]}
    inline = app_doc["Resources"][sg_id]["Properties"].get("SecurityGroupIngress", [])
    assert all(r["IpProtocol"] != "112" for r in inline)


def test_listener_port_from_vpc_cidr_and_stats_port_only_from_nodes(app_doc: dict[str, Any]) -> None:
    (sg_id,) = resources(app_doc, "AWS::EC2::SecurityGroup")
    (vpc_id,) = resources(app_doc, "AWS::EC2::VPC")
    inline = app_doc["Resources"][sg_id]["Properties"]["SecurityGroupIngress"]
    assert len(inline) == 1
    assert inline[0]["CidrIp"] == "10.0.0.0/16"
    assert app_doc["Resources"][vpc_id]["Properties"]["CidrBlock"] == "10.0.0.0/16"
    assert (inline[0]["FromPort"], inline[0]["ToPort"], inline[0]["IpProtocol"]) == (80, 80, "tcp")
    stats = [r["Properties"] for r in resources(app_doc, "AWS::EC2::SecurityGroupIngress").values()
             if r["Properties"]["IpProtocol"] == "tcp"]
    assert len(stats) == 1 and stats[0]["FromPort"] == 8404
    assert stats[0]["SourceSecurityGroupId"] == {"Fn::GetAtt": [sg_id, "GroupId"]}


def test_no_ssh_ingress(app_doc: dict[str, Any]) -> None:
    # Inline rules and rules of their own (AWS::EC2::SecurityGroupIngress) alike.
    rules = [rule for sg in resources(app_doc, "AWS::EC2::SecurityGroup").values()
             for rule in sg["Properties"].get("SecurityGroupIngress", [])]
    rules += [r["Properties"] for r in resources(app_doc, "AWS::EC2::SecurityGroupIngress").values()]
    assert len(rules) == 3  # the listener, the stats port and VRRP: a check over no rule proves nothing
    for rule in rules:
        assert rule["IpProtocol"] != "-1" and not (rule.get("FromPort", 0) <= 22 <= rule.get("ToPort", -1)), rule


# --- IAM: exact scopes ---------------------------------------------------------------------------

MUTATING_PREFIXES = ("Create", "Replace", "Delete", "Modify", "Associate", "Attach", "Put", "Update", "Run",
                     "Terminate", "Stop", "Start", "Reboot", "Disassociate", "Detach", "Assign", "Unassign")


MARKER_ACTIONS = {"ec2:CreateTags", "ec2:DeleteTags"}
MARKER_CONDITION = {"ForAllValues:StringEquals": {"aws:TagKeys": [ROUTES_DELETED_TAG]},
                    "Null": {"aws:TagKeys": "false"}}


def reconcile_function(doc: dict[str, Any]) -> str:
    (fn,) = [k for k in resources(doc, "AWS::Lambda::Function") if "Reconcile" in k]
    return fn


def _check_role(doc: dict[str, Any], prefix: str, route_actions: set[str], allowed_extra: set[str],
                marker: bool = False) -> None:
    """Every statement of the role is one of the expected ones, each with its exact scope."""
    describe = {"ec2:DescribeRouteTables", "ec2:DescribeInstances", "ec2:DescribeNetworkInterfaces"}
    seen: set[str] = set()
    for st in statements(doc, prefix):
        assert st["Effect"] == "Allow"
        acts = set(actions_of(st))
        if acts & route_actions:
            assert acts == route_actions and "Condition" not in st
            assert by_sorted_json(st["Resource"]) == by_sorted_json(route_table_arns(doc))
            seen.add("route")
        elif acts & describe:
            assert acts == describe and st["Resource"] == "*"
            seen.add("describe")
        elif acts & MARKER_ACTIONS:
            assert marker and acts == MARKER_ACTIONS and st["Condition"] == MARKER_CONDITION
            assert by_sorted_json(st["Resource"]) == by_sorted_json(route_table_arns(doc))
            seen.add("marker")
        else:
            assert acts <= allowed_extra, f"unexpected actions {acts - allowed_extra}"
        for act in acts:
            service, _, name = act.partition(":")
            if service == "ec2" and name.startswith(MUTATING_PREFIXES):
                assert act in route_actions or (marker and act in MARKER_ACTIONS)
    assert seen == {"route", "describe"} | ({"marker"} if marker else set())


def observability_log_groups(doc: dict[str, Any]) -> list[str]:
    groups = sorted(k for k in resources(doc, "AWS::Logs::LogGroup") if k.startswith("HaproxyHaObservability"))
    assert len(groups) == 4
    return groups


NODE_FILES_OBJECT = re.compile(r"arn:aws:s3:::cdk-hnb659fds-assets-123456789012-eu-west-1/[0-9a-f]{64}\.zip")


def config_bucket(doc: dict[str, Any]) -> str:
    (bucket,) = resources(doc, "AWS::S3::Bucket")
    return bucket


def config_object(doc: dict[str, Any], key: str) -> dict[str, Any]:
    """The ARN of one object in the documents' bucket, as the template writes it."""
    return {"Fn::Join": ["", [{"Fn::GetAtt": [config_bucket(doc), "Arn"]}, "/" + key]]}


@pytest.mark.parametrize("node", ["A", "B"])
def test_each_node_role_grants_exactly_its_nodes_actions_each_on_its_exact_scope(
        app_doc: dict[str, Any], node: str) -> None:
    _, group = node_resource(app_doc, "AWS::AutoScaling::AutoScalingGroup", node)
    group_name = group["Properties"]["AutoScalingGroupName"]
    pair = next(iter(node_documents(app_doc).values()))["pair_name"]
    expected: dict[tuple[str, ...], Any] = {
        # ReplaceRoute only, on exactly the stack's tables: a missing route is the reconciler's to create.
        ("ec2:ReplaceRoute",): by_sorted_json(route_table_arns(app_doc)),
        # These three allow no resource scope; every call filters by ID or VPC.
        ("ec2:DescribeInstances", "ec2:DescribeNetworkInterfaces", "ec2:DescribeRouteTables"): "*",
        ("lambda:InvokeFunction",): {"Fn::GetAtt": [reconcile_function(app_doc), "Arn"]},
        # The node files, and its own documents, its schema's and the one before (never the peer's);
        # it writes its own status only.
        ("s3:GetObject",): ["node files object", config_object(app_doc, f"nodes/{node.lower()}/node.json"),
                            config_object(app_doc, f"nodes/{node.lower()}/node.v2.json")],
        ("s3:PutObject",): config_object(app_doc, f"nodes/{node.lower()}/status.json"),
        # Its own group only: by name, the group's ID (a UUID) being unknown before it exists.
        ("autoscaling:CompleteLifecycleAction", "autoscaling:SetInstanceHealth"):
            f"arn:aws:autoscaling:eu-west-1:123456789012:autoScalingGroup:*:autoScalingGroupName/{group_name}",
        ("cloudformation:SignalResource",): {"Ref": "AWS::StackId"},
        # What the CloudWatch agent needs, on the pair's four log groups only, and on the four that
        # release 0.1.0 named for this pair, where a node of that release ships until an upgrade
        # replaces it.  No PutMetricData: the node's metrics are EMF lines that CloudWatch Logs
        # makes into metrics.
        ("logs:CreateLogStream", "logs:DescribeLogStreams", "logs:PutLogEvents"):
            by_sorted_json([{"Fn::GetAtt": [g, "Arn"]} for g in observability_log_groups(app_doc)]
                           + [f"arn:aws:logs:eu-west-1:123456789012:log-group:/haproxy-ha/{pair}/{kind}:*"
                              for kind in ("agent", "metrics", "haproxy", "keepalived")]),
    }
    found: dict[tuple[str, ...], Any] = {}
    for st in statements(app_doc, f"HaproxyHaNode{node}Role"):
        actions = tuple(sorted(actions_of(st)))
        assert st["Effect"] == "Allow"
        assert st.get("Condition") is None
        assert actions not in found, f"{actions} granted twice"
        resource = st["Resource"]
        if actions in (("ec2:ReplaceRoute",), ("logs:CreateLogStream", "logs:DescribeLogStreams",
                                                "logs:PutLogEvents")):
            resource = by_sorted_json(resource)
        elif actions == ("s3:GetObject",):
            assert NODE_FILES_OBJECT.fullmatch(resource[0]), resource
            resource = ["node files object", *resource[1:]]
        found[actions] = resource
    assert found == expected


def test_the_node_roles_differ_only_in_their_own_group_document_and_status(app_doc: dict[str, Any]) -> None:
    a, b = (statements(app_doc, f"HaproxyHaNode{n}Role") for n in "AB")
    differ = [(x, y) for x, y in zip(a, b, strict=True) if x != y]
    assert [actions_of(x) for x, _ in differ] == [
        ["s3:GetObject"], ["s3:PutObject"], ["autoscaling:CompleteLifecycleAction", "autoscaling:SetInstanceHealth"]]
    for x, y in differ:
        own_a, own_b = json.dumps(x["Resource"]), json.dumps(y["Resource"])
        assert ("-NodeA-" in own_a or "nodes/a/" in own_a) and "-NodeB-" not in own_a and "nodes/b/" not in own_a
        assert ("-NodeB-" in own_b or "nodes/b/" in own_b) and "-NodeA-" not in own_b and "nodes/a/" not in own_b


@pytest.mark.parametrize("node", ["A", "B"])
def test_each_node_role_has_ssm_core_and_no_other_managed_policy(app_doc: dict[str, Any], node: str) -> None:
    _, role = node_resource(app_doc, "AWS::IAM::Role", node)
    (arn,) = role["Properties"]["ManagedPolicyArns"]
    assert arn["Fn::Join"][1][-1].endswith(":iam::aws:policy/AmazonSSMManagedInstanceCore")
    assert role["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {
        "Service": "ec2.amazonaws.com"}


def test_lambda_role_may_create_replace_delete_routes_and_mark_only_the_stack_tables(app_doc: dict[str, Any]) -> None:
    _check_role(app_doc, "HaproxyHaRoutesRole", {"ec2:CreateRoute", "ec2:ReplaceRoute", "ec2:DeleteRoute"},
                {"logs:CreateLogStream", "logs:PutLogEvents"}, marker=True)
    (role,) = [v for k, v in resources(app_doc, "AWS::IAM::Role").items() if k.startswith("HaproxyHaRoutesRole")]
    assert "ManagedPolicyArns" not in role["Properties"]


def test_lambda_logs_scoped_to_its_own_log_groups(app_doc: dict[str, Any]) -> None:
    (logs_st,) = [st for st in statements(app_doc, "HaproxyHaRoutesRole") if "logs:PutLogEvents" in actions_of(st)]
    groups = sorted(k for k in resources(app_doc, "AWS::Logs::LogGroup") if k.startswith("HaproxyHaRoutes"))
    assert by_sorted_json(logs_st["Resource"]) == by_sorted_json([{"Fn::GetAtt": [g, "Arn"]} for g in groups])


# --- VIP routes, Lambda, events ------------------------------------------------------------------

def test_custom_resource_owns_routes_in_every_route_table_targeting_node_a(app_doc: dict[str, Any]) -> None:
    (cr,) = resources(app_doc, "Custom::HaproxyHaVipRoutes").values()
    props = cr["Properties"]
    assert props["Vip"] == "192.168.254.10"
    assert sorted(r["Ref"] for r in props["RouteTableIds"]) == [r["Ref"] for r in route_table_refs(app_doc)]
    assert len(props["RouteTableIds"]) == 4
    (node_a_eni,) = [k for k in resources(app_doc, "AWS::EC2::NetworkInterface") if "NodeA" in k]
    assert props["EniId"] == {"Ref": node_a_eni}
    (on_event,) = [k for k in resources(app_doc, "AWS::Lambda::Function") if "OnEvent" in k]
    assert props["ServiceToken"] == {"Fn::GetAtt": [on_event, "Arn"]}
    # Created once both groups have signalled, deleted before the groups go.
    assert set(group_ids(app_doc)) <= set(cr["DependsOn"])


def test_custom_resource_gives_up_in_minutes_after_the_handler_would_have_answered(app_doc: dict[str, Any]) -> None:
    (cr,) = resources(app_doc, "Custom::HaproxyHaVipRoutes").values()
    service_timeout = int(cr["Properties"]["ServiceTimeout"])
    (on_event,) = [v for k, v in resources(app_doc, "AWS::Lambda::Function").items() if "OnEvent" in k]
    function_timeout = on_event["Properties"]["Timeout"]
    # The handler answers FAILED RESPONSE_RESERVE_S before the function's timeout; CloudFormation
    # waits a little longer than the function can run, and far less than the default hour.
    assert 0 < function_timeout - handler_reserve_s() < function_timeout < service_timeout <= 600


def handler_reserve_s() -> float:
    return route_lambda.RESPONSE_RESERVE_S


def test_no_static_vip_route_resources(app_doc: dict[str, Any]) -> None:
    # The custom resource owns the VIP routes, so a later deploy never re-points a moved route.
    destinations = {r["Properties"].get("DestinationCidrBlock") for r in resources(app_doc, "AWS::EC2::Route").values()}
    assert destinations and "192.168.254.10/32" not in destinations


def test_lambdas_run_python_312_with_the_two_entry_points(app_template: Template) -> None:
    app_template.has_resource_properties("AWS::Lambda::Function", {
        "Handler": "handler.on_event", "Runtime": "python3.12"})
    app_template.has_resource_properties("AWS::Lambda::Function", {
        "Handler": "handler.reconcile", "Runtime": "python3.12",
        "Environment": {"Variables": {"VIP": "192.168.254.10", "ROUTE_TABLE_IDS": Match.any_value(),
                                      "NODES": Match.any_value()}}})


def test_reconcile_environment_lists_nodes_in_preference_order(app_doc: dict[str, Any]) -> None:
    (fn,) = [v for k, v in resources(app_doc, "AWS::Lambda::Function").items() if "Reconcile" in k]
    env = fn["Properties"]["Environment"]["Variables"]
    resolver = Resolver(app_doc)
    nodes = json.loads(resolver.resolve(env["NODES"]))
    assert [n["name"] for n in nodes] == ["a", "b"]
    # The reconciler finds each node's instance through its ENI, so a replaced instance needs no new env.
    assert all(set(n) == {"name", "eni_id"} and n["eni_id"].startswith("eni-") for n in nodes)
    tables = resolver.resolve(env["ROUTE_TABLE_IDS"]).split(",")
    assert len(tables) == 4 and all(t.startswith("rtb-") for t in tables)


def test_the_groups_own_events_and_a_schedule_run_the_reconciler(app_doc: dict[str, Any]) -> None:
    rules = resources(app_doc, "AWS::Events::Rule")
    (events,) = [r["Properties"] for r in rules.values() if "EventPattern" in r["Properties"]]
    names = [app_doc["Resources"][g]["Properties"]["AutoScalingGroupName"] for g in group_ids(app_doc)]
    # Auto Scaling's events name the group, never a fixed instance: the groups replace instances.
    assert events["EventPattern"] == {
        "source": ["aws.autoscaling"],
        "detail-type": ["EC2 Instance-terminate Lifecycle Action", "EC2 Instance Terminate Successful",
                        "EC2 Instance Launch Successful"],
        "detail": {"AutoScalingGroupName": names},
    }
    assert all(isinstance(n, str) for n in names) and len(set(names)) == 2
    (schedule,) = [r["Properties"] for r in rules.values() if "ScheduleExpression" in r["Properties"]]
    assert schedule["ScheduleExpression"] == "rate(1 minute)"
    for rule in (events, schedule):
        assert rule["Targets"][0]["Arn"] == {"Fn::GetAtt": [reconcile_function(app_doc), "Arn"]}


# --- user data and the node config document ------------------------------------------------------

def test_the_documents_are_accepted_by_the_runtime(app_doc: dict[str, Any]) -> None:
    docs = node_documents(app_doc)
    configs = {d["node_name"]: parse_config(d) for d in docs.values()}
    a, b = configs["a"], configs["b"]
    assert (a.priority, b.priority) == (150, 100)
    assert a.vip == b.vip == "192.168.254.10"
    assert a.peers[0].ip == b.local_ip and b.peers[0].ip == a.local_ip
    assert a.peers[0].eni_id == b.eni_id and b.peers[0].eni_id == a.eni_id
    assert len(a.route_table_ids) == 4 and a.route_table_ids == b.route_table_ids
    assert a.region == "eu-west-1" and a.preempt is False and a.virtual_router_id == 51
    assert a.listeners[0].port == 80 and a.listeners[0].static_reply == "haproxy-ha: served by node a"
    assert b.listeners[0].static_reply == "haproxy-ha: served by node b"
    # The agent invokes the reconciler to create a missing route: the node role may only replace.
    reconciler = f"arn:aws:lambda:eu-west-1:123456789012:function:{reconcile_function(app_doc)}"
    assert a.reconciler == b.reconciler == reconciler
    # Each names its own object in S3 and its status beside it, and polls every 10 s.
    bucket = Resolver(app_doc).ref(config_bucket(app_doc))
    for cfg in (a, b):
        assert (cfg.config_bucket, cfg.config_key, cfg.status_key, cfg.config_poll_s) == (
            bucket, f"nodes/{cfg.node_name}/node.v2.json", f"nodes/{cfg.node_name}/status.json", 10.0)


def test_each_document_names_its_own_group_hook_drain_and_signal(app_doc: dict[str, Any]) -> None:
    for template_id, document in node_documents(app_doc).items():
        cfg = parse_config(document)
        node = cfg.node_name.upper()
        assert template_id.startswith(f"HaproxyHaNode{node}")
        group_id, group = node_resource(app_doc, "AWS::AutoScaling::AutoScalingGroup", node)
        props = group["Properties"]
        assert cfg.auto_scaling_group == props["AutoScalingGroupName"]
        assert cfg.lifecycle_hook == props["LifecycleHookSpecificationList"][0]["LifecycleHookName"]
        assert cfg.drain_timeout_s == 30.0 and cfg.replace_unhealthy_after_s == 300.0
        # The ready signal goes to this stack (its ID, by the stand-in's resolution), for this group.
        assert cfg.cfn_stack == Resolver(app_doc).ref("AWS::StackId")
        assert cfg.cfn_resource == group_id


def test_reconcile_function_and_its_rules_do_not_depend_on_the_groups(app_doc: dict[str, Any]) -> None:
    # The groups' documents name the function; a reference back would be a cycle.
    names = set(group_ids(app_doc)) | set(launch_template_ids(app_doc))
    checked = [logical_id for logical_id, res in app_doc["Resources"].items()
               if res["Type"] in ("AWS::Lambda::Function", "AWS::Events::Rule") and "HaproxyHaRoutes" in logical_id]
    assert len(checked) == 4  # the two functions and the two rules
    for logical_id in checked:
        assert not names & set(json.dumps(app_doc["Resources"][logical_id]).replace('"', " ").split()), logical_id


def test_user_data_writes_the_boot_unit_and_starts_it_without_waiting(app_doc: dict[str, Any]) -> None:
    resolver = Resolver(app_doc)
    for node, logical_id in zip("ab", launch_template_ids(app_doc), strict=True):
        (readable,) = [st["Resource"] for st in statements(app_doc, f"HaproxyHaNode{node.upper()}Role")
                       if actions_of(st) == ["s3:GetObject"]]
        node_files, _, document = (resolver.resolve(arn) for arn in readable)
        text = raw_user_data(app_doc, logical_id, resolver)
        lines = text.splitlines()
        assert lines[:3] == ["#!/bin/bash", *NODE_PREPARE_COMMANDS]
        # What ships is what the unit tests check: the files of userdata/, as they are.
        assert heredoc(text, "HAPROXY_HA_BOOT_UNIT") + "\n" == (REPO / "userdata" / BOOT_UNIT).read_text()
        assert heredoc(text, "HAPROXY_HA_FETCH_SCRIPT") + "\n" == (REPO / "userdata" / FETCH_SCRIPT).read_text()
        assert f"cat > {USER_DATA_FILES[BOOT_UNIT]} <<'HAPROXY_HA_BOOT_UNIT'" in lines
        assert f"cat > {USER_DATA_FILES[FETCH_SCRIPT]} <<'HAPROXY_HA_FETCH_SCRIPT'" in lines
        for name, marker in (("haproxy-ha-boot-failed.service", "HAPROXY_HA_BOOT_FAILED_UNIT"),
                             ("boot-failed.sh", "HAPROXY_HA_BOOT_FAILED_SCRIPT")):
            assert heredoc(text, marker) + "\n" == (REPO / "userdata" / name).read_text()
            assert f"cat > {USER_DATA_FILES[name]} <<'{marker}'" in lines
        # The unit fetches objects the role may read: the node files and its own schema's document.
        env = dict(line.split("=", 1) for line in heredoc(text, "HAPROXY_HA_BOOT_ENV").splitlines())
        assert env == {"NODE_FILES_URL": node_files.replace("arn:aws:s3:::", "s3://"),
                       "NODE_CONFIG_URL": document.replace("arn:aws:s3:::", "s3://"), "AWS_REGION": "eu-west-1"}
        assert env["NODE_CONFIG_URL"].endswith(f"/nodes/{node}/node.v2.json")
        # The document itself is not in user data: a new one changes no launch template.
        assert '"listeners"' not in text and "HAPROXY_HA_NODE_CONFIG" not in text
        assert heredoc(text, "HAPROXY_HA_AFTER_BOOT") == "#!/bin/bash"
        # cloud-init returns at once; systemd runs (and retries) the boot.
        assert lines[-3:] == ["systemctl daemon-reload", f"systemctl enable {BOOT_UNIT}",
                              f"systemctl start --no-block {BOOT_UNIT}"]
        assert "boot.sh" not in "\n".join(lines[-3:])


@pytest.mark.parametrize("index", [0, 1])
def test_user_data_is_under_16_kb(app_doc: dict[str, Any], index: int) -> None:
    text = raw_user_data(app_doc, launch_template_ids(app_doc)[index])
    assert len(text.encode()) < USER_DATA_LIMIT


# --- outputs -------------------------------------------------------------------------------------

def test_outputs_vip_groups_route_tables_and_ssm(app_doc: dict[str, Any]) -> None:
    outputs = app_doc["Outputs"]
    assert outputs["Vip"]["Value"] == "192.168.254.10"
    (vpc,) = resources(app_doc, "AWS::EC2::VPC")
    assert outputs["VpcId"]["Value"] == {"Ref": vpc}
    for node in ("A", "B"):
        eni, _ = node_resource(app_doc, "AWS::EC2::NetworkInterface", node)
        assert outputs[f"Node{node}EniId"]["Value"] == {"Ref": eni}
        _, group = node_resource(app_doc, "AWS::AutoScaling::AutoScalingGroup", node)
        name = group["Properties"]["AutoScalingGroupName"]
        assert f"Node{node}InstanceId" not in outputs
        assert outputs[f"Node{node}AutoScalingGroup"]["Value"] == name
        # The instance changes with each replacement: the command looks up the one in service.
        assert outputs[f"Node{node}SsmSession"]["Value"] == (
            "aws ssm start-session --region eu-west-1 --target $(aws autoscaling describe-auto-scaling-groups "
            f"--region eu-west-1 --auto-scaling-group-names {name} --output text --query "
            "\"AutoScalingGroups[0].Instances[?LifecycleState=='InService'].InstanceId | [0]\")")
    assert len(outputs["RouteTableIds"]["Value"]["Fn::Join"][1]) == 4
    (bucket,) = resources(app_doc, "AWS::S3::Bucket")
    assert outputs["DocumentsBucket"]["Value"] == {"Ref": bucket}
