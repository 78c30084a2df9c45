"""Template assertions on the default app: nodes, ENIs, security group, IAM scopes, routes, Lambda, outputs."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from aws_cdk.assertions import Match, Template
from template_tools import REPO, Resolver, instance_ids, node_documents, raw_user_data

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


# --- nodes ---------------------------------------------------------------------------------------

def test_two_nodes_in_two_azs(app_doc: dict[str, Any]) -> None:
    assert len(resources(app_doc, "AWS::EC2::Instance")) == 2
    # An instance's AZ is its ENI's, which is its subnet's.
    azs = set()
    for eni in resources(app_doc, "AWS::EC2::NetworkInterface").values():
        subnet = app_doc["Resources"][eni["Properties"]["SubnetId"]["Ref"]]
        azs.add(subnet["Properties"]["AvailabilityZone"])
    assert azs == {"eu-west-1a", "eu-west-1b"}


def test_each_node_eni_has_source_dest_check_off(app_template: Template) -> None:
    app_template.resource_count_is("AWS::EC2::NetworkInterface", 2)
    app_template.all_resources_properties("AWS::EC2::NetworkInterface", {"SourceDestCheck": False})


def test_enis_and_instances_carry_the_node_tag_the_cli_reads(app_doc: dict[str, Any]) -> None:
    for rtype in ("AWS::EC2::NetworkInterface", "AWS::EC2::Instance"):
        names = sorted(t["Value"] for r in resources(app_doc, rtype).values()
                       for t in r["Properties"]["Tags"] if t["Key"] == "haproxy-ha:node")
        assert names == ["a", "b"], rtype


def test_each_instance_uses_its_own_eni_as_device_0(app_doc: dict[str, Any]) -> None:
    enis = sorted(resources(app_doc, "AWS::EC2::NetworkInterface"))
    used = []
    for inst in resources(app_doc, "AWS::EC2::Instance").values():
        props = inst["Properties"]
        assert not {"SubnetId", "SecurityGroupIds", "AvailabilityZone"} & set(props)
        (nic,) = props["NetworkInterfaces"]
        assert nic["DeviceIndex"] == "0"
        used.append(nic["NetworkInterfaceId"]["Ref"])
    assert sorted(used) == enis


def test_eni_subnets_are_private_and_in_different_azs(app_doc: dict[str, Any]) -> None:
    subnets = [v["Properties"]["SubnetId"]["Ref"] for v in resources(app_doc, "AWS::EC2::NetworkInterface").values()]
    assert len(set(subnets)) == 2
    assert all("PrivateSubnet" in s for s in subnets)


def test_instances_require_imdsv2_encrypt_root_and_have_no_key_pair(app_template: Template) -> None:
    app_template.all_resources_properties("AWS::EC2::Instance", {
        "MetadataOptions": Match.object_like({"HttpTokens": "required", "HttpEndpoint": "enabled"}),
        "BlockDeviceMappings": [Match.object_like({"Ebs": Match.object_like({"Encrypted": True})})],
        "InstanceType": "t4g.small",
    })
    for inst in app_template.find_resources("AWS::EC2::Instance").values():
        assert "KeyName" not in inst["Properties"]
    assert not app_template.find_resources("AWS::EC2::KeyPair")


def test_ami_architecture_follows_instance_type(app_doc: dict[str, Any]) -> None:
    # cdk.context.json pins the arm64 AL2023 parameter to this placeholder AMI.
    for inst in resources(app_doc, "AWS::EC2::Instance").values():
        assert inst["Properties"]["ImageId"] == "ami-0a0a0a0a0a0a0a0a0"


def test_node_b_waits_for_node_a_so_updates_roll_one_at_a_time(app_doc: dict[str, Any]) -> None:
    a, b = instance_ids(app_doc)
    assert a in app_doc["Resources"][b]["DependsOn"]


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
    for sg in resources(app_doc, "AWS::EC2::SecurityGroup").values():
        for rule in sg["Properties"].get("SecurityGroupIngress", []):
            assert not (rule.get("FromPort", 0) <= 22 <= rule.get("ToPort", -1))


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
                marker: bool = False, invoke: bool = False) -> None:
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
        elif "lambda:InvokeFunction" in acts:
            assert invoke and acts == {"lambda:InvokeFunction"}
            assert st["Resource"] == {"Fn::GetAtt": [reconcile_function(doc), "Arn"]}
            seen.add("invoke")
        else:
            assert acts <= allowed_extra, f"unexpected actions {acts - allowed_extra}"
        for act in acts:
            service, _, name = act.partition(":")
            if service == "ec2" and name.startswith(MUTATING_PREFIXES):
                assert act in route_actions or (marker and act in MARKER_ACTIONS)
    assert seen == {"route", "describe"} | ({"marker"} if marker else set()) | ({"invoke"} if invoke else set())


def test_node_role_may_only_replace_routes_in_the_stack_tables_and_invoke_the_reconciler(
        app_doc: dict[str, Any]) -> None:
    _check_role(app_doc, "HaproxyHaNodeRole", {"ec2:ReplaceRoute"}, {"s3:GetObject"}, invoke=True)


def test_node_role_reads_only_the_node_files_object(app_doc: dict[str, Any]) -> None:
    (s3,) = [st for st in statements(app_doc, "HaproxyHaNodeRole") if "s3:GetObject" in actions_of(st)]
    assert re.fullmatch(r"arn:aws:s3:::cdk-hnb659fds-assets-123456789012-eu-west-1/[0-9a-f]{64}\.zip",
                        s3["Resource"])


def test_node_role_has_ssm_core_and_no_other_managed_policy(app_doc: dict[str, Any]) -> None:
    (role,) = [v for k, v in resources(app_doc, "AWS::IAM::Role").items() if k.startswith("HaproxyHaNodeRole")]
    (arn,) = role["Properties"]["ManagedPolicyArns"]
    assert arn["Fn::Join"][1][-1].endswith(":iam::aws:policy/AmazonSSMManagedInstanceCore")


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
    assert set(instance_ids(app_doc)) <= set(cr["DependsOn"])


def test_custom_resource_gives_up_in_minutes_after_the_handler_would_have_answered(app_doc: dict[str, Any]) -> None:
    (cr,) = resources(app_doc, "Custom::HaproxyHaVipRoutes").values()
    service_timeout = int(cr["Properties"]["ServiceTimeout"])
    (on_event,) = [v for k, v in resources(app_doc, "AWS::Lambda::Function").items() if "OnEvent" in k]
    function_timeout = on_event["Properties"]["Timeout"]
    # The handler answers FAILED RESPONSE_RESERVE_S before the function's timeout; CloudFormation
    # waits a little longer than the function can run, and far less than the default hour.
    assert 0 < function_timeout - handler_reserve_s() < function_timeout < service_timeout <= 600


def handler_reserve_s() -> float:
    text = (REPO / "lambda" / "handler.py").read_text()
    (value,) = re.findall(r"^RESPONSE_RESERVE_S = ([0-9.]+)$", text, flags=re.M)
    return float(value)


def test_no_static_vip_route_resources(app_doc: dict[str, Any]) -> None:
    # The custom resource owns the VIP routes, so a later deploy never re-points a moved route.
    for route in resources(app_doc, "AWS::EC2::Route").values():
        assert route["Properties"].get("DestinationCidrBlock") != "192.168.254.10/32"


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


def test_state_change_rule_targets_reconcile_for_both_nodes(app_doc: dict[str, Any]) -> None:
    rules = resources(app_doc, "AWS::Events::Rule")
    (state,) = [r["Properties"] for r in rules.values() if "EventPattern" in r["Properties"]]
    pattern = state["EventPattern"]
    assert pattern["detail-type"] == ["EC2 Instance State-change Notification"]
    assert pattern["source"] == ["aws.ec2"]
    assert sorted(pattern["detail"]["state"]) == sorted(["stopping", "stopped", "shutting-down", "terminated"])
    assert sorted(i["Ref"] for i in pattern["detail"]["instance-id"]) == instance_ids(app_doc)
    (schedule,) = [r["Properties"] for r in rules.values() if "ScheduleExpression" in r["Properties"]]
    assert schedule["ScheduleExpression"] == "rate(1 minute)"
    (reconcile,) = [k for k in resources(app_doc, "AWS::Lambda::Function") if "Reconcile" in k]
    for rule in (state, schedule):
        assert rule["Targets"][0]["Arn"] == {"Fn::GetAtt": [reconcile, "Arn"]}


# --- user data and the node config document ------------------------------------------------------

def test_user_data_documents_are_accepted_by_the_runtime(app_doc: dict[str, Any]) -> None:
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


def test_reconcile_function_does_not_depend_on_the_instances(app_doc: dict[str, Any]) -> None:
    # The instances' documents name the function; a reference back would be a cycle.
    fn = app_doc["Resources"][reconcile_function(app_doc)]
    assert not set(instance_ids(app_doc)) & set(json.dumps(fn).replace('"', " ").split())


def test_user_data_fetches_node_files_and_runs_boot_script(app_doc: dict[str, Any]) -> None:
    for logical_id in instance_ids(app_doc):
        text = raw_user_data(app_doc, logical_id)
        assert "- [scripts-user, always]" in text
        assert "aws s3 cp" in text and ".zip /var/lib/haproxy-ha/node-files.zip" in text
        assert "python3 -m zipfile -e /var/lib/haproxy-ha/node-files.zip /opt/haproxy-ha.new" in text
        assert "cat > /etc/haproxy-ha/node.json" in text
        assert text.rstrip().splitlines()[-2] == "bash /opt/haproxy-ha/boot.sh"


@pytest.mark.parametrize("index", [0, 1])
def test_user_data_is_under_16_kb(app_doc: dict[str, Any], index: int) -> None:
    text = raw_user_data(app_doc, instance_ids(app_doc)[index])
    assert len(text.encode()) < USER_DATA_LIMIT


# --- outputs -------------------------------------------------------------------------------------

def test_outputs_vip_instances_route_tables_and_ssm(app_doc: dict[str, Any]) -> None:
    outputs = app_doc["Outputs"]
    assert outputs["Vip"]["Value"] == "192.168.254.10"
    (vpc,) = resources(app_doc, "AWS::EC2::VPC")
    assert outputs["VpcId"]["Value"] == {"Ref": vpc}
    for node in ("A", "B"):
        (eni,) = [k for k in resources(app_doc, "AWS::EC2::NetworkInterface") if f"Node{node}" in k]
        assert outputs[f"Node{node}EniId"]["Value"] == {"Ref": eni}
    for node in ("A", "B"):
        assert f"Node{node}InstanceId" in outputs
        join = outputs[f"Node{node}SsmSession"]["Value"]["Fn::Join"][1]
        assert join[0].startswith("aws ssm start-session")
    assert len(outputs["RouteTableIds"]["Value"]["Fn::Join"][1]) == 4
