"""The nodes' documents in the template: the bucket, the custom resource that writes them and waits
for the nodes (its Provider's timeouts), the exact S3 grants of the nodes and of its functions,
the order of the resources, and the config_poll_interval prop."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aws_cdk import CfnParameter, CustomResource, Duration, Stack
from aws_cdk import aws_s3 as s3
from aws_cdk.assertions import Template
from template_tools import (
    DOCUMENTS_TYPE,
    Resolver,
    documents_resource,
    group_ids,
    launch_template_ids,
    new_stack,
    node_documents,
    raw_user_data,
)

from haproxy_ha import HaproxyHa, HaproxyHaPropsError, Listener
from haproxy_ha.construct import CONFIG_APPLY_MARGIN_S
from haproxy_ha_runtime.config import ConfigError, parse_config
from tests.runtime.samples import doc


def resources(doc: dict[str, Any], rtype: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in doc["Resources"].items() if v["Type"] == rtype}


def one(doc: dict[str, Any], rtype: str, contains: str = "") -> tuple[str, dict[str, Any]]:
    (found,) = [(k, v) for k, v in resources(doc, rtype).items() if contains in k]
    return found


def grants(doc: dict[str, Any], role_id: str) -> dict[tuple[str, ...], Any]:
    """Each statement of the role's policies, as {sorted actions: resource}; every one an Allow
    without a condition, and no action granted twice."""
    found: dict[tuple[str, ...], Any] = {}
    for policy in resources(doc, "AWS::IAM::Policy").values():
        if {"Ref": role_id} not in policy["Properties"]["Roles"]:
            continue
        for st in policy["Properties"]["PolicyDocument"]["Statement"]:
            assert st["Effect"] == "Allow" and "Condition" not in st, st
            action = st["Action"]
            actions = tuple(sorted([action] if isinstance(action, str) else action))
            assert actions not in found
            found[actions] = st["Resource"]
    return found


def bucket_id(doc: dict[str, Any]) -> str:
    return one(doc, "AWS::S3::Bucket")[0]


def obj(doc: dict[str, Any], key: str) -> dict[str, Any]:
    return {"Fn::Join": ["", [{"Fn::GetAtt": [bucket_id(doc), "Arn"]}, "/" + key]]}


def logs_of(doc: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {"Fn::GetAtt": [one(doc, "AWS::Logs::LogGroup", prefix)[0], "Arn"]}


LOGS = ("logs:CreateLogStream", "logs:PutLogEvents")


def test_the_bucket_blocks_public_access_enforces_tls_encrypts_and_goes_with_the_stack(app_doc: dict[str, Any]) -> None:
    bucket_logical_id, bucket = one(app_doc, "AWS::S3::Bucket")
    props = bucket["Properties"]
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True, "BlockPublicPolicy": True, "IgnorePublicAcls": True, "RestrictPublicBuckets": True}
    assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"] == [
        {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
    # Unversioned: the custom resource's delete removes every object, so the bucket's delete succeeds.
    assert "VersioningConfiguration" not in props
    assert bucket["DeletionPolicy"] == bucket["UpdateReplacePolicy"] == "Delete"
    (policy,) = [p["Properties"] for p in resources(app_doc, "AWS::S3::BucketPolicy").values()
                 if p["Properties"]["Bucket"] == {"Ref": bucket_logical_id}]
    (deny,) = policy["PolicyDocument"]["Statement"]
    assert deny["Effect"] == "Deny" and deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert deny["Action"] == "s3:*" and deny["Principal"] == {"AWS": "*"}


def test_the_documents_resource_names_each_nodes_fixed_keys_and_group(app_doc: dict[str, Any]) -> None:
    props = documents_resource(app_doc)["Properties"]
    assert props["Bucket"] == {"Ref": bucket_id(app_doc)}
    groups = [app_doc["Resources"][g]["Properties"]["AutoScalingGroupName"] for g in group_ids(app_doc)]
    assert [{k: v for k, v in n.items() if k != "Document"} for n in props["Nodes"]] == [
        {"Name": name, "Key": f"nodes/{name}/node.v2.json", "StatusKey": f"nodes/{name}/status.json",
         "AutoScalingGroupName": group} for name, group in zip("ab", groups, strict=True)]
    # What the resource writes is the document the node reads, naming the same objects.
    for document in node_documents(app_doc).values():
        cfg = parse_config(document)
        (node,) = [n for n in props["Nodes"] if n["Name"] == cfg.node_name]
        assert (cfg.config_key, cfg.status_key) == (node["Key"], node["StatusKey"])
        assert cfg.config_bucket == Resolver(app_doc).ref(bucket_id(app_doc))


def test_the_node_roles_grants_come_before_the_documents(app_doc: dict[str, Any]) -> None:
    # A deploy that adds a TLS listener (its secret) or a document key must grant the nodes first:
    # the running nodes read what the new documents name as soon as they are written.
    depends = documents_resource(app_doc)["DependsOn"]
    for node in "AB":
        role_id, _ = one(app_doc, "AWS::IAM::Role", f"HaproxyHaNode{node}Role")
        policy_id, _ = one(app_doc, "AWS::IAM::Policy", f"HaproxyHaNode{node}RoleDefaultPolicy")
        assert {role_id, policy_id} <= set(depends), depends


@pytest.mark.parametrize("node", ["a", "b"])
def test_each_node_reads_only_its_own_document_and_writes_only_its_own_status(
        app_doc: dict[str, Any], node: str) -> None:
    role_id, _ = one(app_doc, "AWS::IAM::Role", f"HaproxyHaNode{node.upper()}Role")
    found = grants(app_doc, role_id)
    node_files, *documents = found[("s3:GetObject",)]
    assert isinstance(node_files, str) and node_files.endswith(".zip")
    # Its schema's document, and the one before: an older release's writer writes that one last
    # in a rollback (haproxy_ha_runtime/document_keys.py).
    assert documents == [obj(app_doc, f"nodes/{node}/node.json"), obj(app_doc, f"nodes/{node}/node.v2.json")]
    assert found[("s3:PutObject",)] == obj(app_doc, f"nodes/{node}/status.json")
    assert not [a for actions in found for a in actions if a.startswith("s3:")
                and a not in ("s3:GetObject", "s3:PutObject")]


def test_the_writer_may_write_both_schemas_documents_and_delete_them_and_the_statuses_and_nothing_else(
        app_doc: dict[str, Any]) -> None:
    role_id, _ = one(app_doc, "AWS::IAM::Role", "HaproxyHaConfigWriterRole")
    documents = [obj(app_doc, f"nodes/{n}/{key}") for n in "ab" for key in ("node.json", "node.v2.json")]
    statuses = [obj(app_doc, f"nodes/{n}/status.json") for n in "ab"]
    assert grants(app_doc, role_id) == {
        # GetObject: the copy that puts a write's metadata on a document an older node keeps.
        ("s3:GetObject", "s3:PutObject"): documents,
        ("s3:DeleteObject",): [*documents[:2], statuses[0], *documents[2:], statuses[1]],
        LOGS: logs_of(app_doc, "HaproxyHaConfigWriterLogs"),
    }


def test_the_waiter_may_read_the_statuses_list_the_bucket_and_describe_groups_and_nothing_else(
        app_doc: dict[str, Any]) -> None:
    role_id, _ = one(app_doc, "AWS::IAM::Role", "HaproxyHaConfigWaiterRole")
    assert grants(app_doc, role_id) == {
        ("s3:GetObject",): [obj(app_doc, f"nodes/{n}/status.json") for n in "ab"],
        ("s3:ListBucket",): {"Fn::GetAtt": [bucket_id(app_doc), "Arn"]},
        # DescribeAutoScalingGroups allows no resource scope.
        ("autoscaling:DescribeAutoScalingGroups",): "*",
        LOGS: logs_of(app_doc, "HaproxyHaConfigWaiterLogs"),
    }
    for role in ("Writer", "Waiter"):
        _, r = one(app_doc, "AWS::IAM::Role", f"HaproxyHaConfig{role}Role")
        assert "ManagedPolicyArns" not in r["Properties"] and "Policies" not in r["Properties"]


def test_the_provider_runs_the_two_handlers_of_the_lambda_asset(app_doc: dict[str, Any]) -> None:
    functions = {v["Properties"]["Handler"]: v["Properties"]
                 for v in resources(app_doc, "AWS::Lambda::Function").values()}
    for handler in ("config_handler.on_event", "config_handler.is_complete"):
        assert functions[handler]["Runtime"] == "python3.12"
    # The same code asset as the route functions: lambda/*.py beside the runtime package.
    assert functions["config_handler.on_event"]["Code"] == functions["handler.on_event"]["Code"]
    _, on_event = one(app_doc, "AWS::Lambda::Function", "ProviderframeworkonEvent")
    assert documents_resource(app_doc)["Properties"]["ServiceToken"] == {
        "Fn::GetAtt": [one(app_doc, "AWS::Lambda::Function", "ProviderframeworkonEvent")[0], "Arn"]}
    assert on_event["Properties"]["Environment"]["Variables"]["USER_IS_COMPLETE_FUNCTION_ARN"] == {
        "Fn::GetAtt": [one(app_doc, "AWS::Lambda::Function", "ConfigWaiterFunction")[0], "Arn"]}


def provider_timing(doc: dict[str, Any]) -> tuple[float, float, float, float]:
    """(the waiter's own wait, the query interval, the framework's total, CloudFormation's service timeout)."""
    props = documents_resource(doc)["Properties"]
    _, machine = one(doc, "AWS::StepFunctions::StateMachine")
    definition = json.loads(Resolver(doc).resolve(machine["Properties"]["DefinitionString"]))
    (retry,) = definition["States"]["framework-isComplete-task"]["Retry"]
    assert retry["BackoffRate"] == 1
    return (float(props["WaitSeconds"]), retry["IntervalSeconds"], retry["IntervalSeconds"] * retry["MaxAttempts"],
            float(props["ServiceTimeout"]))


def test_the_deploy_waits_for_the_nodes_poll_and_a_margin_then_fails_with_the_waiters_reason_first(
        app_doc: dict[str, Any]) -> None:
    wait_s, interval_s, total_s, service_s = provider_timing(app_doc)
    assert wait_s == 10 + CONFIG_APPLY_MARGIN_S
    assert interval_s == 5
    # The waiter names what each node reports when its time is up; the framework's own timeout
    # ("Operation timed out") comes after that, and CloudFormation stops waiting after both.
    assert wait_s + 2 * interval_s <= total_s < service_s <= 3600


@pytest.mark.parametrize(("poll", "wait_s"), [(Duration.seconds(1), 301.0), (Duration.minutes(5), 600.0)])
def test_the_wait_follows_the_poll_interval_and_stays_within_the_hour(
        stack: Stack, poll: Duration, wait_s: float) -> None:
    lb = HaproxyHa(stack, "Lb", vip="192.168.254.10", config_poll_interval=poll)
    doc: dict[str, Any] = Template.from_stack(stack).to_json()
    wait, interval_s, total_s, service_s = provider_timing(doc)
    assert wait == wait_s and wait + 2 * interval_s <= total_s < service_s <= 3600
    assert lb.config_poll_interval is poll
    assert {parse_config(d).config_poll_s for d in node_documents(doc).values()} == {poll.to_seconds()}


def test_the_groups_wait_for_the_documents_which_wait_for_no_group(app_doc: dict[str, Any]) -> None:
    documents_id, documents = one(app_doc, DOCUMENTS_TYPE)
    # A new instance boots with the new document: on create and on every update, the documents first.
    for group in group_ids(app_doc):
        assert documents_id in app_doc["Resources"][group]["DependsOn"]
    names = set(group_ids(app_doc)) | set(launch_template_ids(app_doc))
    assert not names & set(documents.get("DependsOn", []))
    assert not names & set(json.dumps(documents).replace('"', " ").split())
    # The routes' custom resource still comes after both groups.
    _, routes = one(app_doc, "Custom::HaproxyHaVipRoutes")
    assert set(group_ids(app_doc)) <= set(routes["DependsOn"])


def test_user_data_does_not_grow_with_listeners_or_route_tables(stack: Stack) -> None:
    small = new_stack()  # the same names in another app: the default listener and the VPC's 4 tables
    HaproxyHa(small, "Lb", vip="192.168.254.10")
    listeners = [Listener(port=8000 + i, name=f"service-{i:02d}",
                          backends=tuple(f"backend-{i:02d}-{j}.apps.example.internal:9000" for j in range(6)))
                 for i in range(8)]
    # As many tables as the reconciler's environment allows (haproxy_ha/limits.py).
    HaproxyHa(stack, "Lb", vip="192.168.254.10", listeners=listeners,
              extra_route_table_ids=[f"rtb-{i:017x}" for i in range(160)])
    big_doc: dict[str, Any] = Template.from_stack(stack).to_json()
    small_doc: dict[str, Any] = Template.from_stack(small).to_json()
    big = [len(raw_user_data(big_doc, t).encode()) for t in launch_template_ids(big_doc)]
    assert big == [len(raw_user_data(small_doc, t).encode()) for t in launch_template_ids(small_doc)]
    assert max(big) < 8192
    assert {len(parse_config(d).route_table_ids) for d in node_documents(big_doc).values()} == {164}


def test_public_attributes(stack: Stack) -> None:
    lb = HaproxyHa(stack, "Lb", vip="192.168.254.10")
    assert isinstance(lb.config_bucket, s3.Bucket)
    assert isinstance(lb.config_documents, CustomResource)
    assert lb.config_poll_interval.to_seconds() == 10


# --- config_poll_interval -------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "shown"), [
    (Duration.millis(500), "'500 millis'"),
    (Duration.seconds(301), "'5 minutes 1 second'"),
    (Duration.hours(1), "'1 hour'"),
    (10, "10"),
])
def test_fails_when_config_poll_interval_is_not_a_duration_from_1_to_300_seconds(
        stack: Stack, value: Any, shown: str) -> None:
    with pytest.raises(HaproxyHaPropsError) as e:
        HaproxyHa(stack, "Lb", vip="192.168.254.10", config_poll_interval=value)
    assert e.value.problems == [
        f"config_poll_interval: got {shown}; allowed: a Duration from 1 to 300 seconds, such as Duration.seconds(10)"]


def test_fails_when_config_poll_interval_is_a_token(stack: Stack) -> None:
    seconds = CfnParameter(stack, "Poll", type="Number").value_as_number
    with pytest.raises(HaproxyHaPropsError, match=r"config_poll_interval: got .*; allowed: a Duration known at synth"):
        HaproxyHa(stack, "Lb", vip="192.168.254.10", config_poll_interval=Duration.seconds(seconds))


def test_config_poll_interval_problems_come_with_the_others_in_one_error(stack: Stack) -> None:
    with pytest.raises(HaproxyHaPropsError) as e:
        HaproxyHa(stack, "Lb", vip="not-an-ip", config_poll_interval=Duration.seconds(0), stats_port=0)
    assert sorted(p.split(":")[0] for p in e.value.problems) == ["config_poll_interval", "stats_port", "vip"]


@pytest.mark.parametrize(("seconds", "accepted"), [(0.999, False), (1, True), (300, True), (301, False)])
def test_the_props_bounds_lie_within_the_documents(stack: Stack, seconds: float, accepted: bool) -> None:
    """The prop starts where the document does; it stops at 5 minutes (the deploy waits for a
    poll), well inside the document's hour, so every value the prop accepts the node accepts too."""
    try:
        HaproxyHa(stack, "Lb", vip="192.168.254.10", config_poll_interval=Duration.millis(int(seconds * 1000)))
        prop_accepts = True
    except HaproxyHaPropsError:
        prop_accepts = False
    assert prop_accepts is accepted
    try:
        parse_config(doc(config_poll_s=seconds))
        document_accepts = True
    except ConfigError:
        document_accepts = False
    assert document_accepts is (seconds >= 1)
