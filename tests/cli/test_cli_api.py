"""The operator CLI against a moto server over HTTP (AWS_ENDPOINT_URL)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest

from haproxy_ha_cli import outputs
from haproxy_ha_cli.cli import main
from haproxy_ha_runtime.tags import NODE_TAG, OPERATOR_CHOICE_TAG
from tests.conftest import REPO, VIP, World, client_for, make_world, targets


@pytest.fixture
def endpoint(moto: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto)
    return moto


def test_status_shows_every_table_and_agreement(endpoint: str, capsys: pytest.CaptureFixture[str]) -> None:
    world = make_world(client_for(endpoint), 3)
    assert main(["status", "--vip", VIP, "--vpc-id", world.vpc_id, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["agree"] is True and out["healthy"] is True
    assert {r["route_table_id"] for r in out["tables"]} == set(world.tables)
    assert {(r["target"], r["node"], r["instance_state"]) for r in out["tables"]} == {(world.eni_a, "a", "running")}


def test_status_exits_1_when_tables_disagree(endpoint: str, capsys: pytest.CaptureFixture[str]) -> None:
    world = make_world(client_for(endpoint), 3)
    world.client.replace_route(RouteTableId=world.tables[0], DestinationCidrBlock=VIP + "/32",
                               NetworkInterfaceId=world.eni_b)
    assert main(["status", "--vip", VIP, "--vpc-id", world.vpc_id]) == 1
    out = capsys.readouterr().out
    assert "TABLES DISAGREE" in out
    assert world.tables[0] in out and world.eni_b in out


def test_failover_to_a_node_name_moves_every_table(endpoint: str, capsys: pytest.CaptureFixture[str]) -> None:
    world = make_world(client_for(endpoint), 5)
    assert main(["failover", "--vip", VIP, "--to", "b", "--vpc-id", world.vpc_id]) == 0
    out = capsys.readouterr().out
    assert f"converged: 5 table(s) -> {world.eni_b} (node b)" in out
    assert set(targets(world.client, world.tables).values()) == {world.eni_b}


def test_failover_dry_run_changes_nothing(endpoint: str, capsys: pytest.CaptureFixture[str]) -> None:
    world = make_world(client_for(endpoint), 2)
    assert main(["failover", "--vip", VIP, "--to", world.eni_b, "--dry-run"]) == 0
    assert "2 table(s) would move" in capsys.readouterr().out
    assert set(targets(world.client, world.tables).values()) == {world.eni_a}


def test_failover_exits_1_when_a_table_does_not_converge(proxy, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    make_world(client_for(proxy.url), 2)
    proxy.state.set_fault("5xx", 10_000, ["ReplaceRoute"])
    assert main(["failover", "--vip", VIP, "--to", "b", "--deadline", "0.5"]) == 1
    assert "NOT CONVERGED" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "message"), [
    (["failover", "--vip", VIP, "--to", "nosuchnode"], "'nosuchnode'; found no node"),
    (["failover", "--vip", VIP, "--to", "eni-0123456789abcdef0"], "no such ENI"),
    (["status", "--vip", "203.0.113.99"], "no route table holds a route for 203.0.113.99/32"),
])
def test_fails_when_input_is_bad(endpoint: str, capsys: pytest.CaptureFixture[str],
                                 argv: list[str], message: str) -> None:
    make_world(client_for(endpoint), 1)
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_a_malformed_vip_is_refused_by_the_parser_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    # argparse refuses it before any AWS call, by raising SystemExit: its code is the exit status.
    with pytest.raises(SystemExit) as e:
        main(["status", "--vip", "10.0.0.300"])
    assert e.value.code == 2
    assert "argument --vip: got '10.0.0.300'; allowed: a single IPv4 address" in capsys.readouterr().err


def test_console_script_runs(endpoint: str) -> None:
    world = make_world(client_for(endpoint), 1)
    exe = Path(sys.executable).with_name("haproxy-ha")
    # PYTHONPATH: this checkout's code, also where the editable install points at another one.
    proc = subprocess.run([str(exe), "status", "--vip", VIP, "--json"], capture_output=True, text=True,
                          env={**os.environ, "AWS_ENDPOINT_URL": endpoint, "PYTHONPATH": str(REPO)}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["tables"][0]["route_table_id"] == world.tables[0]
    proc = subprocess.run([sys.executable, "-m", "haproxy_ha_cli", "status", "--vip", "nope"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "--vip: got 'nope'" in proc.stderr


# --- the target must be running -------------------------------------------------------------------

def _tags(client: Any, eni: str) -> dict[str, str]:
    (ni,) = client.describe_network_interfaces(NetworkInterfaceIds=[eni])["NetworkInterfaces"]
    return {t["Key"]: t["Value"] for t in ni.get("TagSet", [])}


def test_failover_refuses_a_target_whose_instance_is_not_running(endpoint: str,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    world = make_world(client_for(endpoint), 2)
    world.client.stop_instances(InstanceIds=[world.instance_b])
    for argv in (["--to", "b"], ["--to", "b", "--dry-run"]):
        assert main(["failover", "--vip", VIP, *argv]) == 2
        err = capsys.readouterr().err
        assert (f"--to: {world.eni_b} (node b) is not running: its ENI {world.eni_b} is attached to instance "
                f"{world.instance_b}, which is stopped") in err
        assert "--force" in err
    assert set(targets(world.client, world.tables).values()) == {world.eni_a}
    assert OPERATOR_CHOICE_TAG not in _tags(world.client, world.eni_a)


def test_failover_refuses_an_eni_that_no_instance_carries(endpoint: str, capsys: pytest.CaptureFixture[str]) -> None:
    world = make_world(client_for(endpoint), 1)
    subnet = world.client.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [world.vpc_id]}])["Subnets"][0]
    spare = world.client.create_network_interface(SubnetId=subnet["SubnetId"])["NetworkInterface"]["NetworkInterfaceId"]
    assert main(["failover", "--vip", VIP, "--to", spare]) == 2
    assert f"--to: {spare} is not running: its ENI {spare} is not attached to any instance" in capsys.readouterr().err
    assert set(targets(world.client, world.tables).values()) == {world.eni_a}


def test_failover_with_force_moves_to_a_stopped_node(endpoint: str) -> None:
    world = make_world(client_for(endpoint), 2)
    world.client.stop_instances(InstanceIds=[world.instance_b])
    assert main(["failover", "--vip", VIP, "--to", "b", "--force"]) == 0
    assert set(targets(world.client, world.tables).values()) == {world.eni_b}


@pytest.mark.parametrize("deadline", ["nan", "inf", "-inf", "0", "-1", "soon"])
def test_fails_when_the_deadline_is_not_a_finite_positive_number(capsys: pytest.CaptureFixture[str],
                                                                  deadline: str) -> None:
    with pytest.raises(SystemExit) as e:
        main(["failover", "--vip", VIP, "--to", "b", f"--deadline={deadline}"])
    assert e.value.code == 2
    assert (f"argument --deadline: got {deadline!r}; allowed: a finite number of seconds greater than 0"
            in capsys.readouterr().err)


# --- the operator's choice is recorded before any route moves ---------------------------------------

def test_failover_records_the_choice_on_both_node_enis_before_moving_a_route(moto: str, proxy, monkeypatch,  # type: ignore[no-untyped-def]
                                                                            capsys) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    world = make_world(client_for(moto), 3)
    direct = client_for(moto)
    seen: list[dict[str, str]] = []
    proxy.state.on_call("ReplaceRoute", lambda: seen.extend(_tags(direct, e) for e in (world.eni_a, world.eni_b)))
    assert main(["failover", "--vip", VIP, "--to", "b"]) == 0
    assert proxy.state.hook_errors == []
    # At the first route write, both ENIs already carried the choice.
    assert [t.get(OPERATOR_CHOICE_TAG) for t in seen] == [world.eni_b, world.eni_b]
    assert f"recorded the operator's choice {world.eni_b} on" in capsys.readouterr().out
    assert set(targets(direct, world.tables).values()) == {world.eni_b}
    # The next move replaces the choice.
    assert main(["failover", "--vip", VIP, "--to", world.eni_a]) == 0
    assert {_tags(direct, e)[OPERATOR_CHOICE_TAG] for e in (world.eni_a, world.eni_b)} == {world.eni_a}
    assert _tags(direct, world.eni_a)[NODE_TAG] == "a"  # other tags stay


def test_failover_dry_run_records_nothing(endpoint: str, capsys: pytest.CaptureFixture[str]) -> None:
    world = make_world(client_for(endpoint), 1)
    assert main(["failover", "--vip", VIP, "--to", "b", "--dry-run"]) == 0
    assert f"the choice would be recorded on {', '.join(sorted([world.eni_a, world.eni_b]))}" in capsys.readouterr().out
    assert all(OPERATOR_CHOICE_TAG not in _tags(world.client, e) for e in (world.eni_a, world.eni_b))


def test_failover_moves_nothing_when_the_choice_cannot_be_recorded(moto: str, proxy, monkeypatch,  # type: ignore[no-untyped-def]
                                                                  capsys) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    world = make_world(client_for(moto), 2)
    proxy.state.set_fault("5xx", 10_000, ["CreateTags"])
    assert main(["failover", "--vip", VIP, "--to", "b"]) == 1
    err = capsys.readouterr().err
    assert f"could not record the choice ({OPERATOR_CHOICE_TAG})" in err and "nothing moved" in err
    assert "ReplaceRoute" not in proxy.state.stats()["calls"]
    assert set(targets(world.client, world.tables).values()) == {world.eni_a}


def _second_pair(world: World) -> list[str]:
    """Two more node ENIs in the same VPC: another pair that uses another VIP."""
    subnet = world.client.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [world.vpc_id]}])["Subnets"][0]
    return [world.client.create_network_interface(
        SubnetId=subnet["SubnetId"], TagSpecifications=[{"ResourceType": "network-interface",
                                                         "Tags": [{"Key": NODE_TAG, "Value": name}]}],
    )["NetworkInterface"]["NetworkInterfaceId"] for name in ("a", "b")]


def test_failover_refuses_to_guess_the_pair_when_the_vpc_holds_two(endpoint: str,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    world = make_world(client_for(endpoint), 1)
    _second_pair(world)
    assert main(["failover", "--vip", VIP, "--to", world.eni_b]) == 2
    err = capsys.readouterr().err
    assert "the VPC holds 4 node ENIs" in err and "use --stack" in err
    assert set(targets(world.client, world.tables).values()) == {world.eni_a}


# --- routes of the VIP in more than one VPC ---------------------------------------------------------

def test_fails_when_the_routes_span_two_vpcs_and_no_vpc_is_given(endpoint: str,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    one = make_world(client_for(endpoint), 2)
    two = make_world(client_for(endpoint), 1)
    for argv in (["status", "--vip", VIP], ["failover", "--vip", VIP, "--to", one.eni_b]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"the routes for {VIP}/32 span 2 VPCs:" in err
        assert f"{one.vpc_id} (2 tables)" in err and f"{two.vpc_id} (1 table)" in err
    assert main(["status", "--vip", VIP, "--vpc-id", two.vpc_id]) == 0
    assert set(targets(one.client, one.tables + two.tables).values()) == {one.eni_a, two.eni_a}


# --- status: blackholed routes and stopped targets ----------------------------------------------------

def test_status_exits_1_when_a_route_is_blackholed(moto: str, proxy, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    world = make_world(client_for(moto), 2)
    assert main(["status", "--vip", VIP, "--json"]) == 0
    capsys.readouterr()
    proxy.state.blackhole = {world.eni_a}
    assert main(["status", "--vip", VIP, "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["healthy"] is False and {r["route_state"] for r in out["tables"]} == {"blackhole"}


def test_status_exits_1_when_the_target_instance_is_not_running(endpoint: str,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    world = make_world(client_for(endpoint), 2)
    world.client.stop_instances(InstanceIds=[world.instance_a])
    assert main(["status", "--vip", VIP]) == 1
    out = capsys.readouterr().out
    assert "stopped" in out and "NOT ALL ROUTES ARE ACTIVE AT A RUNNING NODE" in out


# --- --stack: the VIP, VPC, tables and nodes from the stack's outputs ----------------------------------

def _publish(moto: str, name: str, world: World, tables: list[str] | None = None, prefix: str = "",
             with_nodes: bool = True, metrics_pair: str | None = None, documents_bucket: str | None = None) -> None:
    """A stack in moto's CloudFormation whose outputs are those the haproxy-ha stack publishes."""
    values = {outputs.VIP: VIP, outputs.VPC_ID: world.vpc_id,
              outputs.ROUTE_TABLE_IDS: ",".join(world.tables if tables is None else tables)}
    if with_nodes:
        values.update({outputs.node_eni_key("a"): world.eni_a, outputs.node_eni_key("b"): world.eni_b})
    if metrics_pair is not None:
        values[outputs.METRICS_PAIR] = metrics_pair
    if documents_bucket is not None:
        values[outputs.DOCUMENTS_BUCKET] = documents_bucket
    template = {"Resources": {"Nothing": {"Type": "AWS::CloudFormation::WaitConditionHandle"}},
                "Outputs": {prefix + k: {"Value": v} for k, v in values.items()}}
    cfn = boto3.client("cloudformation", endpoint_url=moto, region_name="us-east-1")
    cfn.create_stack(StackName=name, TemplateBody=json.dumps(template))


def test_status_with_stack_reads_the_vip_vpc_and_tables_from_its_outputs(endpoint: str,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    world = make_world(client_for(endpoint), 3)
    make_world(client_for(endpoint), 1)  # another VPC with the same VIP: --stack names the right one
    _publish(endpoint, "Edge", world)
    assert main(["status", "--stack", "Edge", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["vip"] == VIP and out["stack"] == "Edge"
    assert [r["route_table_id"] for r in out["tables"]] == world.tables


def test_status_with_stack_shows_a_table_that_lost_its_route(endpoint: str, capsys: pytest.CaptureFixture[str]) -> None:
    world = make_world(client_for(endpoint), 3)
    world.client.delete_route(RouteTableId=world.tables[1], DestinationCidrBlock=VIP + "/32")
    gone = "rtb-0123456789abcdef0"
    _publish(endpoint, "Edge", world, tables=[*world.tables, gone])
    assert main(["status", "--stack", "Edge", "--json"]) == 1
    rows = {r["route_table_id"]: r for r in json.loads(capsys.readouterr().out)["tables"]}
    assert list(rows) == [*world.tables, gone]
    assert rows[world.tables[1]]["route_state"] == "missing" and rows[world.tables[1]]["target"] is None
    assert rows[gone]["route_state"] == "table not found"
    assert rows[world.tables[0]]["route_state"] == "active"
    assert main(["status", "--stack", "Edge"]) == 1
    assert "2 TABLE(S) WITHOUT THE ROUTE" in capsys.readouterr().out
    # Found by their route, the same tables look fine: that is what --stack is for.
    assert main(["status", "--vip", VIP]) == 0


def test_failover_with_stack_moves_every_table_and_records_the_choice_on_the_stack_nodes(
        endpoint: str, capsys: pytest.CaptureFixture[str]) -> None:
    world = make_world(client_for(endpoint), 3)
    other_pair = _second_pair(world)
    world.client.delete_route(RouteTableId=world.tables[2], DestinationCidrBlock=VIP + "/32")
    _publish(endpoint, "Edge", world)
    assert main(["failover", "--stack", "Edge", "--to", "b"]) == 0
    assert set(targets(world.client, world.tables).values()) == {world.eni_b}
    assert {_tags(world.client, e).get(OPERATOR_CHOICE_TAG) for e in (world.eni_a, world.eni_b)} == {world.eni_b}
    assert all(OPERATOR_CHOICE_TAG not in _tags(world.client, e) for e in other_pair)
    capsys.readouterr()
    assert main(["failover", "--stack", "Edge", "--to", other_pair[0]]) == 2
    assert f"allowed: a node of stack Edge ({world.eni_a}, {world.eni_b})" in capsys.readouterr().err


def test_stack_outputs_with_a_prefix(endpoint: str, capsys: pytest.CaptureFixture[str]) -> None:
    world = make_world(client_for(endpoint), 1)
    _publish(endpoint, "Shared", world, prefix="Edge")
    assert main(["status", "--stack", "Shared"]) == 2
    assert "Shared has no output Vip, VpcId, RouteTableIds" in capsys.readouterr().err
    assert main(["status", "--stack", "Shared", "--output-prefix", "Edge"]) == 0


@pytest.mark.parametrize(("argv", "message"), [
    (["status", "--stack", "Nope"], "--stack: got 'Nope'; Stack with id Nope does not exist"),
    (["status", "--stack", "Edge", "--vpc-id", "vpc-0123456789abcdef0"], "--vpc-id: not with --stack"),
    (["status", "--vip", VIP, "--output-prefix", "Edge"], "--output-prefix: only with --stack"),
    (["status", "--stack", "Edge", "--output-prefix", "Edge-1"], "--output-prefix: got 'Edge-1'; allowed: letters"),
])
def test_fails_when_the_stack_options_are_bad(endpoint: str, capsys: pytest.CaptureFixture[str],
                                             argv: list[str], message: str) -> None:
    world = make_world(client_for(endpoint), 1)
    _publish(endpoint, "Edge", world)
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_vip_and_stack_are_exclusive_and_one_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["status"], ["status", "--vip", VIP, "--stack", "Edge"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
