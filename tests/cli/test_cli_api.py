"""The operator CLI against a moto server over HTTP (AWS_ENDPOINT_URL)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from haproxy_ha_cli.cli import main
from tests.conftest import VIP, client_for, make_world, targets


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
    (["status", "--vip", "10.0.0.300"], "allowed: a single IPv4 address"),
    (["failover", "--vip", VIP, "--to", "nosuchnode"], "'nosuchnode'; found no node"),
    (["failover", "--vip", VIP, "--to", "eni-0123456789abcdef0"], "no such ENI"),
    (["status", "--vip", "203.0.113.99"], "no route table holds a route for 203.0.113.99/32"),
])
def test_fails_when_input_is_bad(endpoint: str, capsys: pytest.CaptureFixture[str],
                                 argv: list[str], message: str) -> None:
    make_world(client_for(endpoint), 1)
    with pytest.raises(SystemExit) if "10.0.0.300" in argv else _no_raise():
        assert main(argv) == 2
    assert message in capsys.readouterr().err


class _no_raise:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return False


def test_console_script_runs(endpoint: str) -> None:
    world = make_world(client_for(endpoint), 1)
    exe = Path(sys.executable).with_name("haproxy-ha")
    proc = subprocess.run([str(exe), "status", "--vip", VIP, "--json"], capture_output=True, text=True,
                          env={**os.environ, "AWS_ENDPOINT_URL": endpoint}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["tables"][0]["route_table_id"] == world.tables[0]
    proc = subprocess.run([sys.executable, "-m", "haproxy_ha_cli", "status", "--vip", "nope"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "--vip: got 'nope'" in proc.stderr
