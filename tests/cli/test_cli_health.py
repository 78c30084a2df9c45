"""`haproxy-ha status` shows each node's health from the pair's metrics: moto's CloudWatch over
HTTP takes the samples (PutMetricData) and answers the CLI's ListMetrics and GetMetricData."""

from __future__ import annotations

import datetime
import json
import re
import time
from typing import Any

import boto3
import pytest

from haproxy_ha_cli import health
from haproxy_ha_cli.cli import main
from haproxy_ha_runtime import metrics
from tests.cli.test_cli_api import _publish
from tests.conftest import VIP, client_for, make_world
from tests.support.moto_server import free_port

PAIR = "Edge-Lb-0123abcd"


@pytest.fixture
def endpoint(moto: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto)
    return moto


def _put(url: str, node: str, at: datetime.datetime, pair: str = PAIR, **values: float) -> None:
    """Samples of one node, as the node's metric lines would leave them in CloudWatch."""
    cloudwatch = boto3.client("cloudwatch", endpoint_url=url, region_name="us-east-1")
    cloudwatch.put_metric_data(Namespace=metrics.NAMESPACE, MetricData=[
        {"MetricName": name, "Value": value, "Timestamp": at,
         "Dimensions": [{"Name": metrics.PAIR, "Value": pair}, {"Name": metrics.NODE, "Value": node}]}
        for name, value in values.items()])


def _state(master: float, backup: float, fault: float) -> dict[str, float]:
    return {metrics.VRRP_MASTER: master, metrics.VRRP_BACKUP: backup, metrics.VRRP_FAULT: fault}


def _minute(at: datetime.datetime) -> float:
    return at.replace(second=0, microsecond=0).timestamp()


def _status_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any], float, float]:
    before = time.time()
    code = main(["status", *argv, "--json"])
    after = time.time()
    return code, json.loads(capsys.readouterr().out), before, after


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def test_status_shows_each_nodes_vrrp_state_haproxy_health_and_api_reachability_with_their_age(
        endpoint: str, capsys: pytest.CaptureFixture[str]) -> None:
    make_world(client_for(endpoint), 2)
    now = _now()
    at_a, at_b = now - datetime.timedelta(seconds=20), now - datetime.timedelta(minutes=7)
    _put(endpoint, "a", at_a, **_state(1, 0, 0), **{metrics.HAPROXY_HEALTHY: 1, metrics.EC2_API_REACHABLE: 1})
    _put(endpoint, "b", at_b, **_state(0, 1, 0), **{metrics.HAPROXY_HEALTHY: 1, metrics.EC2_API_REACHABLE: 0})
    # Another pair's samples are not this pair's.
    _put(endpoint, "b", now, pair="Other-Lb-0123abcd", **_state(0, 0, 1))

    code, out, before, after = _status_json(["--vip", VIP, "--pair", PAIR], capsys)
    assert code == 0 and out["pair"] == PAIR and out["nodes_unavailable"] is None
    a, b = out["nodes"]
    assert (a["node"], a["vrrp"]["state"], a["haproxy"]["healthy"], a["ec2_api"]["reachable"]) == (
        "a", "MASTER", True, True)
    assert (b["node"], b["vrrp"]["state"], b["haproxy"]["healthy"], b["ec2_api"]["reachable"]) == (
        "b", "BACKUP", True, False)
    # The age runs from the start of the minute the sample fell in (CloudWatch keeps minutes).
    for node, at in ((a, at_a), (b, at_b)):
        for signal in ("vrrp", "haproxy", "ec2_api"):
            assert before - _minute(at) - 1 <= node[signal]["age_s"] <= after - _minute(at) + 1

    assert main(["status", "--vip", VIP, "--pair", PAIR]) == 0
    text = capsys.readouterr().out
    lines = {line.split()[0]: line for line in text.splitlines() if line[:2] in ("a ", "b ")}
    assert "MASTER (" in lines["a"] and "healthy (" in lines["a"] and "reachable (" in lines["a"]
    # Seven minutes and the seconds into that minute: 7, or 8 once the test has crossed a minute.
    assert re.search(r"BACKUP \([78] min ago\) .* UNREACHABLE \([78] min ago\)", lines["b"]), lines["b"]


def test_status_reads_the_newest_minute_and_the_state_the_node_reported_most_in_it(
        endpoint: str, capsys: pytest.CaptureFixture[str]) -> None:
    make_world(client_for(endpoint), 1)
    now = _now()
    latest = now.replace(second=0, microsecond=0)
    _put(endpoint, "a", latest - datetime.timedelta(minutes=3), **_state(1, 0, 0), **{metrics.HAPROXY_HEALTHY: 1})
    # The newest minute: two FAULT samples and one MASTER, and one unhealthy sample among healthy ones.
    for second, (master, fault, healthy) in enumerate([(1, 0, 1), (0, 1, 0), (0, 1, 1)]):
        _put(endpoint, "a", latest + datetime.timedelta(seconds=second), **_state(master, 0, fault),
             **{metrics.HAPROXY_HEALTHY: healthy})
    code, out, _, _ = _status_json(["--vip", VIP, "--pair", PAIR], capsys)
    (a,) = out["nodes"]
    assert code == 0
    assert a["vrrp"]["state"] == "FAULT" and a["haproxy"]["healthy"] is False
    assert a["vrrp"]["age_s"] < 65
    # No EC2 API sample at all: unknown, not unreachable.
    assert a["ec2_api"] == {"reachable": None, "age_s": None}


def test_status_with_stack_reads_the_pair_and_shows_a_node_that_published_nothing(
        endpoint: str, capsys: pytest.CaptureFixture[str]) -> None:
    world = make_world(client_for(endpoint), 2)
    _publish(endpoint, "Edge", world, metrics_pair=PAIR)
    _put(endpoint, "a", _now(), **_state(1, 0, 0), **{metrics.HAPROXY_HEALTHY: 1, metrics.EC2_API_REACHABLE: 1})
    code, out, _, _ = _status_json(["--stack", "Edge"], capsys)
    assert code == 0 and out["pair"] == PAIR
    assert [n["node"] for n in out["nodes"]] == ["a", "b"]
    assert out["nodes"][1] == {"node": "b", "vrrp": {"state": None, "age_s": None},
                               "haproxy": {"healthy": None, "age_s": None},
                               "ec2_api": {"reachable": None, "age_s": None}}
    assert main(["status", "--stack", "Edge"]) == 0
    (b_line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("b ")]
    assert b_line.split(None, 1)[1].split() == ["no", "data"] * 3


def test_status_without_a_pair_says_how_to_get_node_health(endpoint: str, capsys: pytest.CaptureFixture[str]) -> None:
    world = make_world(client_for(endpoint), 1)
    assert main(["status", "--vip", VIP]) == 0
    assert "node health: not shown: give --pair" in capsys.readouterr().out
    _publish(endpoint, "Old", world)  # a stack deployed before it published MetricsPair
    code, out, _, _ = _status_json(["--stack", "Old"], capsys)
    assert code == 0 and out["nodes"] == [] and out["nodes_unavailable"] == "no MetricsPair output in stack Old"


def test_status_shows_the_routes_when_cloudwatch_cannot_be_read(endpoint: str, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    make_world(client_for(endpoint), 2)
    # Nothing listens there: only CloudWatch fails, EC2 still answers.
    monkeypatch.setenv("AWS_ENDPOINT_URL_CLOUDWATCH", f"http://127.0.0.1:{free_port()}")
    code, out, _, _ = _status_json(["--vip", VIP, "--pair", PAIR], capsys)
    assert code == 0 and out["healthy"] is True and len(out["tables"]) == 2
    assert out["nodes"] == [] and out["nodes_unavailable"].startswith("CloudWatch could not be read: ")


def test_fails_when_pair_is_given_with_stack(endpoint: str, capsys: pytest.CaptureFixture[str]) -> None:
    world = make_world(client_for(endpoint), 1)
    _publish(endpoint, "Edge", world, metrics_pair=PAIR)
    assert main(["status", "--stack", "Edge", "--pair", PAIR]) == 2
    assert "--pair: not with --stack; the stack's MetricsPair output names the pair" in capsys.readouterr().err


def test_status_writes_unknown_and_unhealthy_as_it_reads_them(endpoint: str,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    make_world(client_for(endpoint), 1)
    # A minute in which the node was in none of the three states (keepalived not yet started).
    _put(endpoint, "a", _now(), **_state(0, 0, 0), **{metrics.HAPROXY_HEALTHY: 0, metrics.EC2_API_REACHABLE: 1})
    assert main(["status", "--vip", VIP, "--pair", PAIR]) == 0
    lines = capsys.readouterr().out.splitlines()
    heading = lines.index(next(line for line in lines if line.startswith("NODE ")))
    assert re.split(r"\s{2,}", lines[heading]) == ["NODE", "VRRP", "HAPROXY", "EC2 API"]
    cells = re.split(r"\s{2,}", lines[heading + 1])
    assert cells[0] == "a"
    assert [re.sub(r"\(\d+ s ago\)", "(N s ago)", cell) for cell in cells[1:]] == [
        "unknown (N s ago)", "UNHEALTHY (N s ago)", "reachable (N s ago)"]


def test_an_age_is_given_in_seconds_below_two_minutes_then_in_minutes() -> None:
    assert [health.age_text(s) for s in (0.4, 119.9, 120.0, 7199.0, 7200.0)] == [
        "0 s", "119 s", "2 min", "119 min", "2 h 0 min"]


class _PagedCloudWatch:
    """GetMetricData that answers in pages, as CloudWatch does when the data points of many
    queries exceed one answer (moto answers in one page, always)."""

    def __init__(self, pages: list[dict[str, Any]]) -> None:
        self.pages = pages
        self.calls: list[dict[str, Any]] = []

    def get_metric_data(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        return self.pages[len(self.calls) - 1]


def test_health_reads_every_page_of_the_metric_data() -> None:
    now = datetime.datetime(2026, 12, 3, 12, 30, 20, tzinfo=datetime.UTC)
    minute = now.replace(second=0)
    older = minute - datetime.timedelta(minutes=5)
    # The queries, in the order read() makes them: node i, signal j (MASTER, BACKUP, FAULT, HAProxy, EC2 API).
    first = {"MetricDataResults": [
        {"Id": "n0m0", "Timestamps": [minute], "Values": [1.0]},
        {"Id": "n0m3", "Timestamps": [minute], "Values": [1.0]},
    ], "NextToken": "page-2"}
    # The next page: older points of a query already answered, and the other node's.
    second = {"MetricDataResults": [
        {"Id": "n0m0", "Timestamps": [older], "Values": [0.0]},
        {"Id": "n1m1", "Timestamps": [older], "Values": [1.0]},
        {"Id": "n1m4", "Timestamps": [older], "Values": [0.0]},
    ]}
    cloudwatch = _PagedCloudWatch([first, second])
    a, b = health.read(cloudwatch, PAIR, ["a", "b"], now=now)
    assert [call.get("NextToken") for call in cloudwatch.calls] == [None, "page-2"]
    assert (a.vrrp_state, a.vrrp.age_s, a.haproxy_healthy.value) == ("MASTER", 20.0, 1.0)
    assert (b.vrrp_state, b.vrrp.age_s, b.ec2_api_reachable.value) == ("BACKUP", 320.0, 0.0)
    assert health.rows([b]) == [["b", "BACKUP (5 min ago)", "no data", "UNREACHABLE (5 min ago)"]]
