"""Each node is an Auto Scaling group of one: what a change of AMI, instance type or listeners does
to the template, the drain timeout's hook, and the groups' physical names."""

from __future__ import annotations

from typing import Any

import pytest
from aws_cdk import App, Duration, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk.assertions import Template
from constructs import Construct
from template_tools import (
    DOCUMENTS_TYPE,
    PLACEHOLDER_ENV,
    group_ids,
    launch_template_ids,
    new_app,
    new_stack,
    node_documents,
)

from haproxy_ha import HaproxyHa, Listener
from haproxy_ha.construct import GROUP_NAME_MAX
from haproxy_ha_runtime.config import parse_config


def synth(**props: Any) -> dict[str, Any]:
    stack = new_stack()
    HaproxyHa(stack, "Lb", vip="192.168.254.10", **props)
    doc: dict[str, Any] = Template.from_stack(stack).to_json()
    return doc


def differences(a: Any, b: Any, path: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """The paths at which two JSON values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return {p for key in a.keys() | b.keys() for p in differences(a.get(key), b.get(key), (*path, key))}
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return {p for i, (x, y) in enumerate(zip(a, b, strict=True)) for p in differences(x, y, (*path, str(i)))}
    return set() if a == b else {path}


def in_launch_templates(doc: dict[str, Any], *field: str) -> set[tuple[str, ...]]:
    return {("Resources", t, "Properties", "LaunchTemplateData", *field) for t in launch_template_ids(doc)}


def assert_groups_roll_their_templates_one_at_a_time(doc: dict[str, Any]) -> None:
    """Each group takes its template's latest version and rolls to it under a policy that waits for
    the new instance's signal; node b's group waits for node a's."""
    a, b = group_ids(doc)
    for group_id, template_id in zip((a, b), launch_template_ids(doc), strict=True):
        group = doc["Resources"][group_id]
        assert group["Properties"]["LaunchTemplate"]["Version"] == {"Fn::GetAtt": [template_id, "LatestVersionNumber"]}
        rolling = group["UpdatePolicy"]["AutoScalingRollingUpdate"]
        assert rolling["WaitOnResourceSignals"] is True and rolling["MaxBatchSize"] == 1
        assert rolling["PauseTime"] == group["CreationPolicy"]["ResourceSignal"]["Timeout"]
    assert a in doc["Resources"][b]["DependsOn"]


def test_a_new_ami_changes_only_the_launch_templates_and_the_groups_roll_one_node_at_a_time() -> None:
    old = synth(machine_image=ec2.MachineImage.generic_linux({"eu-west-1": "ami-01111111111111111"}))
    new = synth(machine_image=ec2.MachineImage.generic_linux({"eu-west-1": "ami-02222222222222222"}))
    assert differences(old, new) == in_launch_templates(old, "ImageId")
    for doc in (old, new):
        assert_groups_roll_their_templates_one_at_a_time(doc)
    assert {doc["Resources"][t]["Properties"]["LaunchTemplateData"]["ImageId"] for t in launch_template_ids(new)} \
        == {"ami-02222222222222222"}


def test_a_new_instance_type_changes_only_the_launch_templates() -> None:
    old = synth(instance_type=ec2.InstanceType("t4g.small"))
    new = synth(instance_type=ec2.InstanceType("t4g.medium"))
    assert differences(old, new) == in_launch_templates(old, "InstanceType")
    assert_groups_roll_their_templates_one_at_a_time(new)


def in_documents(doc: dict[str, Any]) -> set[tuple[str, ...]]:
    """Each node's document, in the properties of the documents' custom resource."""
    (documents,) = [k for k, v in doc["Resources"].items() if v["Type"] == DOCUMENTS_TYPE]
    nodes = doc["Resources"][documents]["Properties"]["Nodes"]
    return {("Resources", documents, "Properties", "Nodes", str(i), "Document") for i in range(len(nodes))}


def test_new_backends_reach_the_nodes_through_their_documents_and_replace_nothing() -> None:
    # The documents are in S3, written by a custom resource: the nodes apply them as they run.
    old = synth(listeners=[Listener(port=80, backends=("10.0.5.10:8080",))])
    new = synth(listeners=[Listener(port=80, backends=("10.0.5.11:8080", "10.0.5.12:8080"))])
    for logical_id in (*launch_template_ids(old), *group_ids(old)):
        assert old["Resources"][logical_id] == new["Resources"][logical_id], logical_id
    changed = differences(old, new)
    assert changed and {path[:6] for path in changed} == in_documents(old)
    backends = {d["node_name"]: [b.host for b in parse_config(d).listeners[0].backends]
                for d in node_documents(new).values()}
    assert backends == {"a": ["10.0.5.11", "10.0.5.12"], "b": ["10.0.5.11", "10.0.5.12"]}


def test_a_new_reply_changes_only_the_documents() -> None:
    old = synth(listeners=[Listener(port=80, static_reply="old {node}")])
    new = synth(listeners=[Listener(port=80, static_reply="new {node}")])
    assert {path[:6] for path in differences(old, new)} == in_documents(old)
    replies = sorted(parse_config(d).listeners[0].static_reply or "" for d in node_documents(new).values())
    assert replies == ["new a", "new b"]


@pytest.mark.parametrize(("drain", "heartbeat", "drain_s"), [
    (None, 90, 30.0),
    (Duration.minutes(5), 360, 300.0),
    (Duration.millis(1500), 62, 1.5),
    (Duration.seconds(0), 60, 0.0),
    (Duration.hours(1), 3660, 3600.0),
])
def test_the_hook_holds_an_instance_for_its_drain_plus_the_hand_over(
        drain: Duration | None, heartbeat: int, drain_s: float) -> None:
    doc = synth(**({} if drain is None else {"drain_timeout": drain}))
    for group_id in group_ids(doc):
        (hook,) = doc["Resources"][group_id]["Properties"]["LifecycleHookSpecificationList"]
        assert hook["HeartbeatTimeout"] == heartbeat
        assert 30 <= heartbeat <= 7200
    assert [parse_config(d).drain_timeout_s for d in node_documents(doc).values()] == [drain_s, drain_s]


def group_names(stack: Stack) -> list[str]:
    doc = Template.from_stack(stack).to_json()
    return [doc["Resources"][g]["Properties"]["AutoScalingGroupName"] for g in group_ids(doc)]


def test_group_names_are_known_at_synth_and_name_the_stack_and_the_node() -> None:
    stack = new_stack(id="Edge")
    HaproxyHa(stack, "Lb", vip="192.168.254.10")
    a, b = group_names(stack)
    assert a.startswith("Edge-Lb-NodeA-") and b.startswith("Edge-Lb-NodeB-")


def test_group_names_differ_between_stacks_and_between_pairs_in_one_stack() -> None:
    app = new_app()
    one, two = new_stack(app, "One"), new_stack(app, "Two")
    HaproxyHa(one, "Lb", vip="192.168.254.10")
    HaproxyHa(two, "Lb", vip="192.168.254.10")
    # Two pairs in one stack, at paths that read alike once '.' and '_' are dashes.
    HaproxyHa(Construct(two, "a.b"), "Lb", vip="192.168.254.11", vpc=HaproxyHa(two, "Other", vip="192.168.254.12").vpc)
    HaproxyHa(Construct(two, "a_b"), "Lb", vip="192.168.254.13", vpc=HaproxyHa(two, "Third", vip="192.168.254.14").vpc)
    names = group_names(one) + group_names(two)
    assert len(names) == 12 == len(set(names))
    alike = sorted(n for n in names if n.startswith("Two-a-b-Lb-"))
    assert len(alike) == 4


def test_a_group_name_fits_255_characters_with_the_longest_stack_name_and_a_deep_path() -> None:
    stack = Stack(App(), "S", stack_name="s" * 128, env=PLACEHOLDER_ENV)
    scope: Construct = stack
    for i in range(4):
        scope = Construct(scope, f"Level{i}-" + "x" * 40)
    HaproxyHa(scope, "Lb", vip="192.168.254.10")
    a, b = group_names(stack)
    assert len(a) <= GROUP_NAME_MAX and len(b) <= GROUP_NAME_MAX
    assert a != b and a.startswith("s" * 128 + "-Level0-")
