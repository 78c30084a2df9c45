"""The reconciler's metrics: the handler prints one EMF line per run (Lambda's log group makes the
metrics from it; moto would not), checked against the specification's structure, with the routes it
found wrong and the routes it moved; against a moto server over HTTP."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import pytest

from haproxy_ha_runtime import reconcile_metrics
from tests.conftest import VIP, World, client_for, make_world
from tests.support import emf_spec
from tests.support.lambda_stand_in import load_handler

handler = load_handler()


class _Context:
    def get_remaining_time_in_millis(self) -> int:
        return 60_000


def _env(monkeypatch: pytest.MonkeyPatch, url: str, world: World, pair: str | None) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    monkeypatch.setattr(handler, "_client", None)
    monkeypatch.setenv("VIP", VIP)
    monkeypatch.setenv("ROUTE_TABLE_IDS", ",".join(world.tables))
    nodes = [{"name": "a", "eni_id": world.eni_a}, {"name": "b", "eni_id": world.eni_b}]
    monkeypatch.setenv("NODES", json.dumps(nodes))
    if pair is None:
        monkeypatch.delenv(reconcile_metrics.PAIR_NAME_ENV, raising=False)
    else:
        monkeypatch.setenv(reconcile_metrics.PAIR_NAME_ENV, pair)


def _records(out: str) -> list[dict[str, Any]]:
    lines = [line for line in out.splitlines() if '"_aws"' in line]
    assert all(emf_spec.problems(line) == [] for line in lines), lines
    return [json.loads(line) for line in lines]


def test_each_run_prints_the_routes_it_found_wrong_and_moved(moto: str, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    world = make_world(client_for(moto), 3)
    # Two tables lost their route, and node a stops: every route is wrong, and each one moves to b.
    world.client.delete_route(RouteTableId=world.tables[0], DestinationCidrBlock=VIP + "/32")
    world.client.stop_instances(InstanceIds=[world.instance_a])
    _env(monkeypatch, moto, world, "prod-pair")
    handler.reconcile({"detail-type": "EC2 Instance-terminate Lifecycle Action"}, _Context())
    (first,) = _records(capsys.readouterr().out)
    assert emf_spec.metrics_of(first) == {"RoutesNotAtHealthyNode": 3, "RoutesMoved": 3}
    assert emf_spec.dimensions_of(first) == [{"Pair": "prod-pair"}]
    assert first["trigger"] == "EC2 Instance-terminate Lifecycle Action" and first["target"] == world.eni_b
    # The next run finds nothing wrong, and says so: a series with no gaps.
    handler.reconcile({"detail-type": "Scheduled Event"}, _Context())
    (second,) = _records(capsys.readouterr().out)
    assert emf_spec.metrics_of(second) == {"RoutesNotAtHealthyNode": 0, "RoutesMoved": 0}
    assert second["_aws"]["Timestamp"] >= first["_aws"]["Timestamp"]


def test_no_pair_name_no_metric_line(moto: str, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    world = make_world(client_for(moto), 1)
    _env(monkeypatch, moto, world, None)
    handler.reconcile({"detail-type": "Scheduled Event"}, _Context())
    assert _records(capsys.readouterr().out) == []


def test_the_record_of_a_report() -> None:
    out = io.StringIO()
    report = {"broken": ["rtb-1", "rtb-2"], "moved": ["rtb-1"], "failed": {"rtb-2": "Throttling"},
              "tables_not_found": [], "target": "eni-1"}
    before = int(time.time() * 1000)
    assert reconcile_metrics.emit(report, "Scheduled Event", environ={"PAIR_NAME": "p"}, out=out)
    (rec,) = _records(out.getvalue())
    assert emf_spec.metrics_of(rec) == {"RoutesNotAtHealthyNode": 2, "RoutesMoved": 1}
    assert rec["failed"] == 1 and rec["_aws"]["Timestamp"] >= before
    assert out.getvalue().count("\n") == 1
