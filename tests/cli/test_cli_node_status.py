"""`haproxy-ha status` shows each node's runtime release and document schema from its status
object: moto's S3 over HTTP holds the objects, the CLI reads them with GetObject."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from haproxy_ha.construct import NODE_NAMES
from haproxy_ha_cli import node_status, outputs
from haproxy_ha_cli.cli import main
from haproxy_ha_runtime import live_config
from haproxy_ha_runtime.config import SCHEMA_VERSION, parse_config
from haproxy_ha_runtime.document_keys import STATUS_KEY, document_key
from haproxy_ha_runtime.version import __version__
from tests.cli.test_cli_api import _publish
from tests.conftest import REPO, VIP, World, client_for, make_world
from tests.runtime.samples import doc
from tests.support.moto_server import free_port

BUCKET = "edge-documents-0123abcd"


@pytest.fixture
def endpoint(moto: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto)
    return moto


def _s3(url: str) -> Any:
    return boto3.client("s3", endpoint_url=url, region_name="us-east-1")


def _status_0_1_0(node: str, instance: str, state: str = "applied") -> dict[str, Any]:
    """A status object as release 0.1.0 writes it (haproxy_ha_runtime/live_config.py at 550f918)."""
    return {"node": node, "version": "9b2cf535f27731c974343645a3985328", "state": state, "reason": None,
            "listeners": {}, "instance_id": instance, "ts": 1764748800.0}


def _status(node: str, instance: str, runtime: str = "0.2.0", schema: int = 2, **changes: Any) -> dict[str, Any]:
    """A status object of a release that reports its runtime and schema."""
    return {**_status_0_1_0(node, instance), "runtime": runtime, "schema": schema, **changes}


def _put(url: str, node: str, status: dict[str, Any] | bytes) -> None:
    body = status if isinstance(status, bytes) else json.dumps(status).encode()
    _s3(url).put_object(Bucket=BUCKET, Key=STATUS_KEY.format(node=node), Body=body)


def _pair(url: str, stack: str = "Edge", **statuses: dict[str, Any] | bytes) -> World:
    """A pair whose stack publishes its documents bucket, and the nodes' status objects given."""
    world = make_world(client_for(url), 2)
    _s3(url).create_bucket(Bucket=BUCKET)
    for node, status in statuses.items():
        _put(url, node, status)
    _publish(url, stack, world, documents_bucket=BUCKET)
    return world


def _cells(line: str) -> list[str]:
    return re.split(r"\s{2,}", line.strip())


def _release_table(out: str) -> list[list[str]]:
    """The heading and rows of the release table, cell by cell (the lines of the nodes without
    a status follow it)."""
    lines = out.splitlines()
    start = lines.index(next(line for line in lines if line.startswith("NODE ") and "RUNTIME" in line))
    table = []
    for line in lines[start:]:
        if not line or line.startswith("node "):
            break
        table.append(_cells(line))
    return table


def _node_lines(out: str) -> list[str]:
    """The lines about one node's status object."""
    return [line for line in out.splitlines() if re.match(r"node [ab]: ", line)]


def test_status_shows_the_release_and_schema_each_node_reports(endpoint: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    world = _pair(endpoint, a=_status("a", "i-0aaaaaaaaaaaaaaa1"),
                  b=_status("b", "i-0bbbbbbbbbbbbbbb1", runtime="0.3.0rc1", schema=3, state="refused",
                            reason="listeners[0].port: got 0"))
    assert main(["status", "--stack", "Edge"]) == 0
    out = capsys.readouterr().out
    assert _release_table(out) == [["NODE", "RUNTIME", "SCHEMA", "DOCUMENT", "INSTANCE"],
                                   ["a", "0.2.0", "2", "applied", "i-0aaaaaaaaaaaaaaa1"],
                                   ["b", "0.3.0rc1", "3", "REFUSED", "i-0bbbbbbbbbbbbbbb1"]]
    assert "node releases" not in out
    # The routes' verdict is still the last line.
    verdict = f"VIP {VIP}: {len(world.tables)} table(s) of stack Edge; all point at the same target"
    assert out.splitlines()[-1] == verdict


def test_a_status_without_runtime_was_written_by_0_1_0_which_reads_schema_1(endpoint: str,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    # The middle of an upgrade: node a runs the new release, node b still the first one.
    _pair(endpoint, a=_status("a", "i-0aaaaaaaaaaaaaaa1"), b=_status_0_1_0("b", "i-0bbbbbbbbbbbbbbb1"))
    assert main(["status", "--stack", "Edge"]) == 0
    assert _release_table(capsys.readouterr().out)[2] == ["b", "0.1.0 (not reported)", "1", "applied",
                                                         "i-0bbbbbbbbbbbbbbb1"]
    assert main(["status", "--stack", "Edge", "--json"]) == 0
    b = json.loads(capsys.readouterr().out)["releases"][1]
    assert (b["runtime"], b["runtime_reported"], b["schema"]) == ("0.1.0", False, 1)


def test_the_first_release_is_the_one_releases_index_records_first() -> None:
    first = json.loads((REPO / "releases" / "index.json").read_text())[0]
    assert (first["version"], first["schema"]) == (node_status.FIRST_RELEASE, node_status.FIRST_RELEASE_SCHEMA)


def test_the_cli_reads_the_nodes_the_construct_makes() -> None:
    assert outputs.NODE_NAMES == NODE_NAMES


def test_status_reads_what_a_node_of_this_release_writes(endpoint: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    world = _pair(endpoint)
    # The node's own writer (no document applied here: only its report is under test).
    cfg = parse_config(doc(node_name="b", peers=[{"name": "a", "ip": "192.0.2.20", "eni_id": world.eni_a}],
                           config_bucket=BUCKET, config_key=document_key("b"), status_key=STATUS_KEY.format(node="b")))
    node = live_config.LiveConfig(cfg, _s3(endpoint), str(tmp_path / "node.json"), instance_id=lambda: world.instance_b)
    node.report(live_config.Outcome("9b2cf535f27731c974343645a3985328", live_config.APPLIED, key=document_key("b")))
    assert main(["status", "--stack", "Edge", "--json"]) == 0
    b = json.loads(capsys.readouterr().out)["releases"][1]
    assert (b["runtime"], b["runtime_reported"], b["schema"], b["document"], b["instance_id"]) == (
        __version__, True, SCHEMA_VERSION, "applied", world.instance_b)


def test_a_missing_status_object_is_one_line_and_leaves_the_exit_code_alone(
        endpoint: str, capsys: pytest.CaptureFixture[str]) -> None:
    world = _pair(endpoint, a=_status("a", "i-0aaaaaaaaaaaaaaa1"))
    assert main(["status", "--stack", "Edge"]) == 0
    out = capsys.readouterr().out
    assert [row[0] for row in _release_table(out)] == ["NODE", "a"]
    assert _node_lines(out) == [f"node b: no status object at s3://{BUCKET}/nodes/b/status.json"]
    # Tables that disagree still exit 1, whatever the releases say.
    world.client.replace_route(RouteTableId=world.tables[0], DestinationCidrBlock=VIP + "/32",
                               NetworkInterfaceId=world.eni_b)
    assert main(["status", "--stack", "Edge"]) == 1
    assert "TABLES DISAGREE" in capsys.readouterr().out


def test_status_json_lists_each_nodes_release(endpoint: str, capsys: pytest.CaptureFixture[str]) -> None:
    _pair(endpoint, a=_status("a", "i-0aaaaaaaaaaaaaaa1", runtime="0.2.0.dev0", schema=1),
          b=_status_0_1_0("b", "i-0bbbbbbbbbbbbbbb1", state="refused") | {"reason": "version: got 2; allowed: 1"})
    assert main(["status", "--stack", "Edge", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["documents_bucket"], out["releases_unavailable"]) == (BUCKET, None)
    assert out["releases"] == [
        {"node": "a", "runtime": "0.2.0.dev0", "runtime_reported": True, "schema": 1, "document": "applied",
         "reason": None, "instance_id": "i-0aaaaaaaaaaaaaaa1", "problem": None},
        {"node": "b", "runtime": "0.1.0", "runtime_reported": False, "schema": 1, "document": "refused",
         "reason": "version: got 2; allowed: 1", "instance_id": "i-0bbbbbbbbbbbbbbb1", "problem": None},
    ]
    _s3(endpoint).delete_object(Bucket=BUCKET, Key=STATUS_KEY.format(node="b"))
    assert main(["status", "--stack", "Edge", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["releases"][1] == {
        "node": "b", "runtime": None, "runtime_reported": False, "schema": None, "document": None, "reason": None,
        "instance_id": None, "problem": f"no status object at s3://{BUCKET}/nodes/b/status.json"}


def test_a_status_object_that_is_not_a_json_object_is_that_nodes_line(endpoint: str,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    _pair(endpoint, a=b"<html>", b=b"[]")
    assert main(["status", "--stack", "Edge"]) == 0
    out = capsys.readouterr().out
    assert _node_lines(out) == [f"node a: s3://{BUCKET}/nodes/a/status.json is not a JSON object",
                                f"node b: s3://{BUCKET}/nodes/b/status.json is not a JSON object"]
    assert "RUNTIME" not in out


def test_a_bucket_that_cannot_be_read_is_one_line_and_leaves_the_exit_code_alone(
        endpoint: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    world = make_world(client_for(endpoint), 2)
    _publish(endpoint, "Edge", world, documents_bucket="no-such-bucket-0123")
    assert main(["status", "--stack", "Edge"]) == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("node releases")]
    assert line.startswith("node releases: not shown: s3://no-such-bucket-0123 could not be read: ")
    assert "NoSuchBucket" in line
    # Nothing listens there: only S3 fails, EC2 and CloudFormation still answer.
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")
    world.client.stop_instances(InstanceIds=[world.instance_a])
    assert main(["status", "--stack", "Edge", "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["releases"] == [] and out["tables"][0]["instance_state"] == "stopped"
    assert out["releases_unavailable"].startswith("s3://no-such-bucket-0123 could not be read: ")


def _refusing_s3(codes: dict[str, str]) -> tuple[Any, Stubber]:
    """An S3 client that answers each node's GetObject with the error code given (botocore's
    Stubber: moto enforces no permissions, so it cannot refuse a read)."""
    s3 = boto3.client("s3", region_name="us-east-1")
    stub = Stubber(s3)
    for node, code in codes.items():
        stub.add_client_error("get_object", service_error_code=code, http_status_code=403,
                              expected_params={"Bucket": BUCKET, "Key": STATUS_KEY.format(node=node)})
    stub.activate()
    return s3, stub


def test_a_bucket_that_refuses_every_node_alike_is_one_problem_not_one_per_node() -> None:
    s3, stub = _refusing_s3({"a": "AccessDenied", "b": "AccessDenied"})
    with pytest.raises(node_status.BucketUnreadable) as e:
        node_status.read(s3, BUCKET, ["a", "b"])
    stub.assert_no_pending_responses()
    assert str(e.value).startswith(f"s3://{BUCKET} could not be read: An error occurred (AccessDenied)")
    # Without s3:ListBucket, S3 refuses a missing object the same way: the line says so.
    assert str(e.value).endswith("S3 answers AccessDenied also for a missing object when s3:ListBucket is not allowed")


def test_a_read_refused_for_one_node_only_is_that_nodes_problem() -> None:
    s3, _ = _refusing_s3({"a": "AccessDenied", "b": "SlowDown"})
    a, b = node_status.read(s3, BUCKET, ["a", "b"])
    assert a.problem is not None and a.problem.startswith(f"s3://{BUCKET}/nodes/a/status.json could not be read: ")
    assert b.problem is not None and "(SlowDown)" in b.problem and "ListBucket" not in b.problem


def test_status_with_vip_reads_the_bucket_given_and_without_one_says_how(endpoint: str,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    _pair(endpoint, a=_status("a", "i-0aaaaaaaaaaaaaaa1"), b=_status("b", "i-0bbbbbbbbbbbbbbb1"))
    assert main(["status", "--vip", VIP]) == 0
    assert ("node releases: not shown: give --documents-bucket (the stack's DocumentsBucket output), or use --stack"
            in capsys.readouterr().out.splitlines())
    assert main(["status", "--vip", VIP, "--documents-bucket", BUCKET]) == 0
    rows = _release_table(capsys.readouterr().out)[1:]
    assert [row[:3] for row in rows] == [["a", "0.2.0", "2"], ["b", "0.2.0", "2"]]


def test_documents_bucket_stands_in_for_the_output_of_a_stack_that_does_not_publish_it(
        endpoint: str, capsys: pytest.CaptureFixture[str]) -> None:
    # A stack of release 0.1.0, mid-upgrade: CloudFormation shows its outputs of before.
    world = _pair(endpoint, "New", a=_status("a", "i-0aaaaaaaaaaaaaaa1"), b=_status_0_1_0("b", "i-0bbbbbbbbbbbbbbb1"))
    _publish(endpoint, "Old", world)
    assert main(["status", "--stack", "Old", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["releases"] == [] and out["releases_unavailable"] == (
        "no DocumentsBucket output in stack Old; give --documents-bucket")
    assert main(["status", "--stack", "Old", "--documents-bucket", BUCKET, "--json"]) == 0
    assert [r["runtime"] for r in json.loads(capsys.readouterr().out)["releases"]] == ["0.2.0", "0.1.0"]


@pytest.mark.parametrize("bucket", ["Edge_Docs", "ab", "s3://edge-docs", "-edge-docs"])
def test_fails_when_the_documents_bucket_is_not_a_bucket_name(capsys: pytest.CaptureFixture[str], bucket: str) -> None:
    with pytest.raises(SystemExit) as e:
        main(["status", "--vip", VIP, f"--documents-bucket={bucket}"])
    assert e.value.code == 2
    assert f"argument --documents-bucket: got {bucket!r}; allowed: an S3 bucket name" in capsys.readouterr().err



def test_the_documents_bucket_output_takes_the_prefix_of_the_others(endpoint: str,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    world = make_world(client_for(endpoint), 1)
    _publish(endpoint, "Shared", world, prefix="Edge", documents_bucket=BUCKET)
    assert main(["status", "--stack", "Shared", "--output-prefix", "Edge", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["documents_bucket"] == BUCKET
