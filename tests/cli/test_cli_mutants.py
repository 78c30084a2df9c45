"""The operator CLI's promises that the mutation run (scripts/mutate) found no test for: what it
prints, line by line and key by key, and what it says when it refuses."""

from __future__ import annotations

import functools
import json
import re
import tomllib
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from haproxy_ha_cli import cli
from haproxy_ha_cli.cli import main
from haproxy_ha_runtime import routes
from haproxy_ha_runtime.tags import NODE_TAG, OPERATOR_CHOICE_TAG
from tests.cli.test_cli_api import _publish, _second_pair, _tags
from tests.conftest import REPO, VIP, client_for, make_world, targets


@pytest.fixture
def endpoint(moto: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto)
    return moto


def _columns(line: str) -> list[str]:
    return re.split(r"\s{2,}", line.strip())


def _starts(line: str) -> list[int]:
    """Where each cell of a table line starts (cells are apart by two spaces or more)."""
    return [m.start() for m in re.finditer(r"\S+(?: \S+)*", line)]


def test_status_prints_an_aligned_table_and_a_verdict(endpoint: str, capsys: pytest.CaptureFixture[str]) -> None:
    world = make_world(client_for(endpoint), 2)
    world.client.stop_instances(InstanceIds=[world.instance_b])
    world.client.replace_route(RouteTableId=world.tables[1], DestinationCidrBlock=VIP + "/32",
                               NetworkInterfaceId=world.eni_b)
    assert main(["status", "--vip", VIP]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [_columns(line) for line in lines[:3]] == [
        ["ROUTE TABLE", "TARGET", "NODE", "INSTANCE", "INSTANCE STATE", "ROUTE"],
        *sorted([[world.tables[0], world.eni_a, "a", world.instance_a, "running", "active"],
                 [world.tables[1], world.eni_b, "b", world.instance_b, "stopped", "active"]]),
    ]
    # Every column starts where its heading does, and no line ends in spaces (the heading ROUTE is
    # narrower than its column: padded, it would).
    for line in lines[1:3]:
        assert _starts(line) == _starts(lines[0])
    assert [line for line in lines if line != line.rstrip()] == []
    # Node health needs the pair's name, and node releases the documents bucket, which --vip alone
    # does not give: the lines say so.
    assert lines[3:] == ["", "node health: not shown: give --pair (the pair's MetricsPair output), or use --stack", "",
                         "node releases: not shown: give --documents-bucket (the stack's DocumentsBucket output), "
                         "or use --stack", "",
                         f"VIP {VIP}: 2 table(s); TABLES DISAGREE; NOT ALL ROUTES ARE ACTIVE AT A RUNNING NODE"]


def test_status_of_a_stack_counts_the_tables_without_the_route(endpoint: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    world = make_world(client_for(endpoint), 2)
    world.client.delete_route(RouteTableId=world.tables[1], DestinationCidrBlock=VIP + "/32")
    _publish(endpoint, "Edge", world)
    assert main(["status", "--stack", "Edge"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert _columns(lines[2]) == [world.tables[1], "-", "-", "-", "-", "missing"]
    assert lines[-1] == (f"VIP {VIP}: 2 table(s) of stack Edge; TABLES DISAGREE; NOT ALL ROUTES ARE ACTIVE AT A "
                         "RUNNING NODE; 1 TABLE(S) WITHOUT THE ROUTE")
    assert main(["status", "--stack", "Edge", "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["tables"][1] == {"route_table_id": world.tables[1], "vpc_id": world.vpc_id, "target": None,
                                "node": None, "instance_id": None, "instance_state": None, "route_state": "missing"}
    assert (out["agree"], out["healthy"], out["stack"]) == (False, False, "Edge")


def test_status_json_names_everything_about_each_table(endpoint: str, capsys: pytest.CaptureFixture[str]) -> None:
    world = make_world(client_for(endpoint), 1)
    assert main(["status", "--vip", VIP, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "vip": VIP, "stack": None, "agree": True, "healthy": True,
        "tables": [{"route_table_id": world.tables[0], "vpc_id": world.vpc_id, "target": world.eni_a, "node": "a",
                    "instance_id": world.instance_a, "instance_state": "running", "route_state": "active"}],
        "pair": None, "nodes": [], "nodes_unavailable": "give --pair (the pair's MetricsPair output), or use --stack",
        "documents_bucket": None, "releases": [],
        "releases_unavailable": "give --documents-bucket (the stack's DocumentsBucket output), or use --stack"}
    assert main(["status", "--vip", VIP]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"VIP {VIP}: 1 table(s); all point at the same target"


def test_failover_prints_the_choice_each_table_and_the_verdict(endpoint: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    world = make_world(client_for(endpoint), 2)
    assert main(["failover", "--vip", VIP, "--to", "b"]) == 0
    lines = capsys.readouterr().out.splitlines()
    pair = ", ".join(sorted([world.eni_a, world.eni_b]))
    assert lines[0] == f"recorded the operator's choice {world.eni_b} on {pair}"
    for line, table in zip(lines[1:3], sorted(world.tables), strict=True):
        assert re.fullmatch(rf"{table}  replaced  +\d+\.\d ms", line), line
    assert re.fullmatch(rf"converged: 2 table\(s\) -> {world.eni_b} \(node b\) in \d+\.\d{{3}} s", lines[3])
    assert len(lines) == 4


def test_failover_json_names_the_choice_and_each_table(endpoint: str, capsys: pytest.CaptureFixture[str]) -> None:
    world = make_world(client_for(endpoint), 1)
    assert main(["failover", "--vip", VIP, "--to", world.eni_b, "--json", "--deadline", "5"]) == 0
    out = json.loads(capsys.readouterr().out)
    (table,) = out.pop("tables")
    assert out.pop("elapsed_s") >= table.pop("elapsed_s") > 0
    assert out == {"vip": VIP, "stack": None, "to": world.eni_b, "node": "b", "instance_state": "running",
                   "choice_recorded_on": sorted([world.eni_a, world.eni_b]), "converged": True}
    assert table == {"route_table_id": world.tables[0], "ok": True, "action": "replaced", "attempts": 1,
                     "error": None}


def test_a_failover_that_does_not_converge_prints_each_tables_error(proxy, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    world = make_world(client_for(proxy.url), 1)
    proxy.state.set_fault("5xx", 10_000, ["ReplaceRoute"])
    assert main(["failover", "--vip", VIP, "--to", "b", "--deadline", "0.2"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(rf"{world.tables[0]}  failed +\d+\.\d ms  InternalError: An internal error has occurred\.",
                        lines[1]), lines[1]
    assert lines[2].startswith(f"NOT CONVERGED: 1 table(s) -> {world.eni_b} (node b) in ")


def test_dry_run_says_what_would_move_and_what_is_already_there(endpoint: str,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    world = make_world(client_for(endpoint), 3)
    c = world.client
    c.replace_route(RouteTableId=world.tables[0], DestinationCidrBlock=VIP + "/32", NetworkInterfaceId=world.eni_b)
    c.delete_route(RouteTableId=world.tables[2], DestinationCidrBlock=VIP + "/32")
    gone = "rtb-0123456789abcdef0"
    _publish(endpoint, "Edge", world, tables=[*world.tables, gone])
    assert main(["failover", "--stack", "Edge", "--to", "b", "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{world.tables[0]}  {world.eni_b} -> {world.eni_b}  already there",
        f"{world.tables[1]}  {world.eni_a} -> {world.eni_b}  would move",
        f"{world.tables[2]}  - -> {world.eni_b}  would move",
        f"{gone}  - -> {world.eni_b}  table not found",
        f"dry run: nothing changed; 2 table(s) would move to {world.eni_b} (node b); the choice would be recorded on "
        f"{world.eni_a}, {world.eni_b}",
    ]
    assert OPERATOR_CHOICE_TAG not in _tags(c, world.eni_b)


# -- refusals ----------------------------------------------------------------------------------------

def _err(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().err.strip()


def test_a_target_that_is_not_running_is_refused_with_its_state(endpoint: str,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    world = make_world(client_for(endpoint), 1)
    world.client.stop_instances(InstanceIds=[world.instance_b])
    assert main(["failover", "--vip", VIP, "--to", "b"]) == 2
    assert _err(capsys) == (
        f"haproxy-ha: error: --to: {world.eni_b} (node b) is not running: its ENI {world.eni_b} is attached to "
        f"instance {world.instance_b}, which is stopped. Moving the routes there would leave the VIP unanswered, and "
        "the active node would move them back. Start it first, or give --force")


def test_an_eni_in_another_vpc_is_refused(endpoint: str, capsys: pytest.CaptureFixture[str]) -> None:
    world = make_world(client_for(endpoint), 1)
    other = make_world(client_for(endpoint), 1, vip="203.0.113.99")
    assert main(["failover", "--vip", VIP, "--to", other.eni_b]) == 2
    assert _err(capsys) == (f"haproxy-ha: error: --to: got '{other.eni_b}'; that ENI is in {other.vpc_id}, not in "
                            f"{world.vpc_id}")


def test_a_node_name_found_twice_is_refused_with_the_enis(endpoint: str, capsys: pytest.CaptureFixture[str]) -> None:
    world = make_world(client_for(endpoint), 1)
    subnet = world.client.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [world.vpc_id]}])["Subnets"][0]
    twin = world.client.create_network_interface(
        SubnetId=subnet["SubnetId"], TagSpecifications=[{"ResourceType": "network-interface",
                                                         "Tags": [{"Key": NODE_TAG, "Value": "b"}]}],
    )["NetworkInterface"]["NetworkInterfaceId"]
    assert main(["failover", "--vip", VIP, "--vpc-id", world.vpc_id, "--to", "b"]) == 2
    err = _err(capsys)
    enis = re.search(r"found 2 ENIs \((.*)\) by tag", err)
    assert enis and set(enis.group(1).split(", ")) == {world.eni_b, twin}
    assert err.endswith(f"by tag {NODE_TAG} or Name in {world.vpc_id}; allowed: an ENI ID (eni-...) or the name of "
                        "one node")


def test_a_node_is_also_found_by_its_instances_name(endpoint: str, capsys: pytest.CaptureFixture[str]) -> None:
    world = make_world(client_for(endpoint), 1)
    world.client.delete_tags(Resources=[world.eni_b], Tags=[{"Key": NODE_TAG}])
    assert main(["failover", "--vip", VIP, "--to", "node-b", "--dry-run"]) == 0
    assert f"would move to {world.eni_b} (node node-b)" in capsys.readouterr().out


def test_the_node_name_comes_from_the_eni_tag_then_the_instance_tag_then_its_name() -> None:
    def owner(eni_tags: dict[str, str], instance_tags: dict[str, str]) -> routes.EniOwner:
        return routes.EniOwner("eni-1", "i-1", "running", eni_tags, instance_tags)

    assert cli.node_name(owner({NODE_TAG: "a"}, {NODE_TAG: "x", "Name": "y"})) == "a"
    assert cli.node_name(owner({}, {NODE_TAG: "x", "Name": "y"})) == "x"
    assert cli.node_name(owner({}, {"Name": "y"})) == "y"
    assert cli.node_name(owner({}, {})) is None


def test_a_stack_whose_vip_output_is_bad_is_refused(endpoint: str, capsys: pytest.CaptureFixture[str]) -> None:
    world = make_world(client_for(endpoint), 1)
    cfn = boto3.client("cloudformation", endpoint_url=endpoint, region_name="us-east-1")
    template = {"Resources": {"Nothing": {"Type": "AWS::CloudFormation::WaitConditionHandle"}},
                "Outputs": {"Vip": {"Value": "10.0.0.0/8"}, "VpcId": {"Value": world.vpc_id},
                            "RouteTableIds": {"Value": world.tables[0]}}}
    cfn.create_stack(StackName="BadVip", TemplateBody=json.dumps(template))
    assert main(["status", "--stack", "BadVip"]) == 2
    assert _err(capsys) == ("haproxy-ha: error: --stack: output Vip got '10.0.0.0/8'; allowed: a single IPv4 address "
                            "such as 203.0.113.10")
    assert main(["status", "--stack", "Nope", "--output-prefix", "Edge"]) == 2
    assert _err(capsys).startswith("haproxy-ha: error: --stack: got 'Nope'; ")


def test_a_stack_without_the_outputs_says_which_and_how_to_add_them(endpoint: str,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    world = make_world(client_for(endpoint), 1)
    _publish(endpoint, "Shared", world, prefix="Edge")
    assert main(["status", "--stack", "Shared", "--output-prefix", "Other"]) == 2
    assert _err(capsys) == ("haproxy-ha: error: --stack: Shared has no output OtherVip, OtherVpcId, "
                            "OtherRouteTableIds; allowed: a stack that publishes them (the haproxy-ha app does; in "
                            "your own app call HaproxyHa.add_outputs()), with --output-prefix 'Other'")


def test_a_stack_lists_its_tables_once_and_its_node_enis(endpoint: str) -> None:
    world = make_world(client_for(endpoint), 2)
    _publish(endpoint, "Edge", world, tables=[world.tables[1], f" {world.tables[0]} ", world.tables[1], ""])
    scope = cli.stack_scope(boto3.session.Session(region_name="us-east-1"), "Edge")
    assert scope == cli.Scope(vip=VIP, vpc_id=world.vpc_id, expected_tables=(world.tables[1], world.tables[0]),
                              node_enis=(world.eni_a, world.eni_b), stack="Edge")


def test_messages_for_a_bad_vip_or_deadline() -> None:
    with pytest.raises(Exception, match=r"^got '10\.0\.0\.1/32'; allowed: a single IPv4 address such as "
                                        r"203\.0\.113\.10$"):
        cli._vip("10.0.0.1/32")
    assert cli._vip("203.0.113.010".replace("010", "10")) == "203.0.113.10"
    with pytest.raises(Exception, match=r"^got 'soon'; allowed: a finite number of seconds greater than 0$"):
        cli._deadline("soon")
    assert cli._deadline("0.25") == 0.25


def test_no_region_is_bad_input(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    assert main(["status", "--vip", VIP]) == 2
    assert _err(capsys) == ("haproxy-ha: error: no AWS region is configured; use --region, set AWS_DEFAULT_REGION, "
                            "or give your AWS profile a region")


def test_the_region_option_chooses_the_region(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Any] = []
    monkeypatch.setattr(cli, "_status", lambda client, scope, args, *rest: made.append(client) or 0)
    assert main(["--region", "eu-west-2", "status", "--vip", VIP]) == 0
    (client,) = made
    assert client.meta.region_name == "eu-west-2"
    assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": 5}


def test_an_api_failure_exits_1_and_says_so(proxy, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    make_world(client_for(proxy.url), 1)
    proxy.state.set_fault("5xx", 10_000, ["DescribeRouteTables"])
    assert main(["status", "--vip", VIP]) == 1
    assert _err(capsys).startswith("haproxy-ha: error: an AWS API call failed: An error occurred (InternalError)")


# -- found by the sampled run of scripts/mutate (docs/testing.md, "Mutation score") ---------------------------

def test_a_stack_with_no_outputs_at_all_is_refused_with_what_it_lacks(endpoint: str,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    # CloudFormation leaves `Outputs` out of a stack that has none (moto too).
    cfn = boto3.client("cloudformation", endpoint_url=endpoint, region_name="us-east-1")
    cfn.create_stack(StackName="Bare", TemplateBody=json.dumps(
        {"Resources": {"Nothing": {"Type": "AWS::CloudFormation::WaitConditionHandle"}}}))
    assert main(["status", "--stack", "Bare"]) == 2
    assert _err(capsys) == ("haproxy-ha: error: --stack: Bare has no output Vip, VpcId, RouteTableIds; allowed: a "
                            "stack that publishes them (the haproxy-ha app does; in your own app call "
                            "HaproxyHa.add_outputs())")


def test_routes_in_two_vpcs_are_refused_with_each_vpc_and_what_to_give(endpoint: str,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    one = make_world(client_for(endpoint), 2)
    two = make_world(client_for(endpoint), 1)
    listed = ", ".join(sorted([f"{one.vpc_id} (2 tables)", f"{two.vpc_id} (1 table)"]))
    assert main(["status", "--vip", VIP]) == 2
    assert _err(capsys) == (f"haproxy-ha: error: the routes for {VIP}/32 span 2 VPCs: {listed}; give --vpc-id or "
                            "--stack to say which pair you mean")


def test_more_than_one_pair_in_the_vpc_is_refused_naming_each_eni(endpoint: str,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    world = make_world(client_for(endpoint), 1)
    others = _second_pair(world)
    assert main(["failover", "--vip", VIP, "--to", world.eni_b]) == 2
    enis = ", ".join(sorted([world.eni_a, world.eni_b, *others]))
    assert _err(capsys) == (f"haproxy-ha: error: --to: the VPC holds 4 node ENIs ({enis}), more than one pair; the "
                            "operator's choice must be recorded on exactly this pair: use --stack")


def test_two_pairs_in_one_vpc_are_told_apart_by_their_cloudformation_stack(endpoint: str,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    world = make_world(client_for(endpoint), 2)
    others = _second_pair(world)
    # CloudFormation tags what it makes with its stack's ID; the pairs came from two stacks.
    for enis, stack in (([world.eni_a, world.eni_b], "Edge"), (others, "Other")):
        world.client.create_tags(Resources=enis, Tags=[{
            "Key": "aws:cloudformation:stack-id",
            "Value": f"arn:aws:cloudformation:us-east-1:123456789012:stack/{stack}/0123abcd"}])
    assert main(["failover", "--vip", VIP, "--to", world.eni_b]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        f"recorded the operator's choice {world.eni_b} on {', '.join(sorted([world.eni_a, world.eni_b]))}")
    assert {_tags(world.client, e).get(OPERATOR_CHOICE_TAG) for e in (world.eni_a, world.eni_b)} == {world.eni_b}
    assert all(OPERATOR_CHOICE_TAG not in _tags(world.client, e) for e in others)
    assert set(targets(world.client, world.tables).values()) == {world.eni_b}


@functools.cache
def _filter_names(service_model: Any, operation: str) -> frozenset[str]:
    """The filter names EC2 documents for `operation` in botocore's model ("tag:" stands for tag:<key>)."""
    doc = service_model.operation_model(operation).input_shape.members["Filters"].documentation
    names = set(re.findall(r"<li>\s*<p>\s*<code>([^<]+)</code>", doc))
    # EC2 documents tag:<key> as <code>tag</code>:&lt;key&gt; for some operations, and as
    # <code>tag:&lt;key&gt;</code> for others (DescribeInstances).
    if "tag" in names and "<code>tag</code>:&lt;key&gt;" in doc:
        names = (names - {"tag"}) | {"tag:"}
    if "tag:&lt;key&gt;" in names:
        names = (names - {"tag:&lt;key&gt;"}) | {"tag:"}
    return frozenset(names)


def _refuse_unknown_filters(params: dict[str, Any], model: Any, **_: Any) -> None:
    """EC2's answer to a filter name it does not know, exact case included (moto matches names
    case-insensitively, and ignores some it does not know)."""
    filters = params.get("Filters", [])
    known = _filter_names(model.service_model, model.name) if filters else frozenset()
    for f in filters:
        name = f["Name"]
        if name not in known and not (name.startswith("tag:") and "tag:" in known):
            message = f"The filter '{name}' is invalid"
            raise ClientError({"Error": {"Code": "InvalidParameterValue", "Message": message}}, model.name)


def _strict_filters(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Make the CLI's EC2 clients refuse, as EC2 does, a filter name it does not document; returns
    the function that makes such a client."""
    made = cli._client

    def strict(session: Any) -> Any:
        client = made(session)
        client.meta.events.register("before-parameter-build.ec2", _refuse_unknown_filters)
        return client

    monkeypatch.setattr(cli, "_client", strict)
    return strict


def test_failover_uses_only_filter_names_that_ec2_knows(endpoint: str, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    world = make_world(client_for(endpoint), 2)
    other = make_world(client_for(endpoint), 1, vip="203.0.113.99")  # a pair in another VPC: not this one
    strict = _strict_filters(monkeypatch)
    assert main(["failover", "--vip", VIP, "--to", "b"]) == 0, _err(capsys)
    assert {_tags(world.client, e).get(OPERATOR_CHOICE_TAG) for e in (world.eni_a, world.eni_b)} == {world.eni_b}
    assert all(OPERATOR_CHOICE_TAG not in _tags(world.client, e) for e in (other.eni_a, other.eni_b))
    # The check itself: a name EC2 does not know is refused as EC2 refuses it.
    with pytest.raises(ClientError, match="The filter 'VPC-ID' is invalid"):
        strict(boto3.session.Session(region_name="us-east-1")).describe_network_interfaces(
            Filters=[{"Name": "VPC-ID", "Values": [world.vpc_id]}])


def test_a_stacks_node_found_by_its_instances_name_uses_filter_names_that_ec2_knows(
        endpoint: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # --stack limits the search to the stack's node ENIs, also when the node is found by its
    # instance's Name (DescribeInstances has no network-interface-id filter).  Another instance of
    # that Name in the VPC, outside the stack, is not a candidate.
    world = make_world(client_for(endpoint), 1)
    world.client.delete_tags(Resources=[world.eni_b], Tags=[{"Key": NODE_TAG}])
    subnet = world.client.describe_network_interfaces(NetworkInterfaceIds=[world.eni_b])["NetworkInterfaces"][0][
        "SubnetId"]
    world.client.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1, SubnetId=subnet, TagSpecifications=[
        {"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "node-b"}]}])
    _publish(endpoint, "Edge", world)
    _strict_filters(monkeypatch)
    assert main(["failover", "--stack", "Edge", "--to", "node-b", "--dry-run"]) == 0, _err(capsys)
    assert f"would move to {world.eni_b} (node node-b)" in capsys.readouterr().out


def test_a_node_found_by_its_instances_name_skips_a_reservation_without_instances() -> None:
    # An answer moto never gives: EC2-compatible endpoints may leave out an empty instance list.
    class Ec2:
        def describe_network_interfaces(self, **_: Any) -> dict[str, Any]:
            return {"NetworkInterfaces": []}

        def describe_instances(self, **_: Any) -> dict[str, Any]:
            return {"Reservations": [{"ReservationId": "r-1"}, {"ReservationId": "r-2", "Instances": [
                {"InstanceId": "i-2", "NetworkInterfaces": [
                    {"NetworkInterfaceId": "eni-2", "Attachment": {"DeviceIndex": 0}},
                    {"NetworkInterfaceId": "eni-3", "Attachment": {"DeviceIndex": 1}}]}]}]}

    assert cli.resolve_target(Ec2(), "node-b", set()) == ("eni-2", "node-b")


def test_a_throttled_describe_stacks_is_retried_whatever_the_users_aws_config_says(  # type: ignore[no-untyped-def]
        moto: str, proxy, monkeypatch, capsys) -> None:
    # The CLI keeps its own patience (standard mode, 5 tries): a profile that turns retries off for
    # some other tool does not make one throttled answer fail the command.
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    monkeypatch.setenv("AWS_RETRY_MODE", "legacy")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    world = make_world(client_for(moto), 1)
    _publish(moto, "Edge", world)
    proxy.state.set_fault("throttle", 1, ["DescribeStacks"])
    assert main(["status", "--stack", "Edge"]) == 0, _err(capsys)
    assert proxy.state.stats()["calls"]["DescribeStacks"] == 2
    assert capsys.readouterr().out.splitlines()[-1] == (f"VIP {VIP}: 1 table(s) of stack Edge; all point at the "
                                                        "same target")


def test_no_credentials_is_bad_input_said_on_stderr(endpoint: str, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    assert main(["status", "--vip", VIP]) == 2
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "haproxy-ha: error: Unable to locate credentials\n")


# -- --help ----------------------------------------------------------------------------------------------

def _help(argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> str:
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def _options(text: str) -> dict[str, str]:
    """Each option of a --help text and what it says about it (wrapped lines joined)."""
    found: dict[str, str] = {}
    section = text.split("\noptions:\n", 1)[1]
    last = ""
    for line in section.splitlines():
        if line.startswith("  -"):
            invocation, _, said = line.strip().partition("  ")
            last = invocation.split(",")[-1].split()[0]
            found[last] = said.strip()
        elif line.startswith("   ") and last:
            found[last] = f"{found[last]} {line.strip()}".strip()
    return found


def test_help_names_the_command_and_describes_every_option(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    # The name the usage lines give is the one the user types: the console script's.
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    (command,) = [name for name, target in scripts.items() if target == "haproxy_ha_cli.cli:main"]
    assert _help([], monkeypatch, capsys).startswith(f"usage: {command} ")
    for sub, options in (("status", {"--vip", "--stack", "--output-prefix", "--vpc-id", "--json", "--pair",
                                     "--documents-bucket"}),
                         ("failover", {"--vip", "--stack", "--output-prefix", "--vpc-id", "--json", "--to",
                                       "--dry-run", "--force", "--deadline"})):
        text = _help([sub], monkeypatch, capsys)
        assert text.startswith(f"usage: {command} {sub} ")
        said = _options(text)
        assert set(said) == {"--help", *options}
        assert [option for option, what in said.items() if not what] == []
    # A refusal sends the operator to --force; its help says what it overrides.
    assert said["--force"] == "move even to a node whose instance is not running"
