"""The nodes' documents custom resource (lambda/config_handler.py) against a moto server over HTTP:
moto's S3 holds the documents and the status objects, moto's Auto Scaling the groups and their
instances in service.  The nodes' side is the node's own code (live_config: the conditional GET
and the status object it writes); only the apply between them is left out."""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType, SimpleNamespace
from typing import Any

import boto3
import pytest

from haproxy_ha_runtime import config, config_lambda, document_keys
from haproxy_ha_runtime.config import parse_config
from haproxy_ha_runtime.live_config import APPLIED, REFUSED, LiveConfig, Outcome
from haproxy_ha_runtime.tls import TlsStore
from haproxy_ha_runtime.version import __version__
from tests.conftest import REPO
from tests.runtime.samples import doc
from tests.support import releases
from tests.support.moto_server import IMAGE_ID
from tests.support.releases import run_release_python

BUCKET = "haproxy-ha-documents-test"


def _load_entry_point() -> ModuleType:
    """lambda/config_handler.py, loaded by path (`lambda` is a Python keyword), as the Lambda loads it."""
    spec = importlib.util.spec_from_file_location("config_handler", REPO / "lambda" / "config_handler.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


handler = _load_entry_point()


@dataclass
class Cloud:
    s3: Any
    autoscaling: Any
    ec2: Any

    def group(self, name: str, instances: int = 1) -> None:
        self.autoscaling.create_auto_scaling_group(
            AutoScalingGroupName=name, MinSize=instances, MaxSize=1, DesiredCapacity=instances,
            AvailabilityZones=["us-east-1a"], LaunchTemplate={"LaunchTemplateName": "node", "Version": "$Latest"})

    def in_service(self, name: str) -> str:
        (group,) = self.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"]
        (instance,) = [i["InstanceId"] for i in group["Instances"] if i["LifecycleState"] == "InService"]
        return str(instance)

    def keys(self) -> list[str]:
        return sorted(o["Key"] for o in self.s3.list_objects_v2(Bucket=BUCKET).get("Contents", []))


@pytest.fixture
def cloud(moto: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cloud]:
    # The handler builds its clients as the Lambda does; AWS_ENDPOINT_URL aims them at moto.
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    config_lambda.client.cache_clear()
    session = boto3.session.Session()
    c = Cloud(*(session.client(s, region_name="us-east-1", endpoint_url=moto) for s in ("s3", "autoscaling", "ec2")))
    c.s3.create_bucket(Bucket=BUCKET)
    c.ec2.create_launch_template(LaunchTemplateName="node", LaunchTemplateData={"ImageId": IMAGE_ID})
    yield c
    config_lambda.client.cache_clear()


def document(node: str, reply: str) -> dict[str, Any]:
    peer = "b" if node == "a" else "a"
    return doc(node_name=node, local_ip="192.0.2.10" if node == "a" else "192.0.2.20", interface=None,
               peers=[{"name": peer, "ip": "192.0.2.20" if node == "a" else "192.0.2.10"}],
               listeners=[{"name": "web", "port": 80, "static_reply": f"{reply} {node}"}],
               config_bucket=BUCKET, config_key=f"nodes/{node}/node.json", status_key=f"nodes/{node}/status.json")


def properties(reply: str, wait_s: float = 300) -> dict[str, Any]:
    # As CloudFormation hands them over: every scalar a string, the documents JSON text.
    return {"ServiceToken": "arn:aws:lambda:us-east-1:123456789012:function:framework", "Bucket": BUCKET,
            "WaitSeconds": str(wait_s),
            "Nodes": [{"Name": n, "Key": f"nodes/{n}/node.json", "StatusKey": f"nodes/{n}/status.json",
                       "AutoScalingGroupName": f"group-{n}", "Document": json.dumps(document(n, reply))}
                      for n in ("a", "b")]}


def request(kind: str, reply: str = "v1", **extra: Any) -> dict[str, Any]:
    event = {"RequestType": kind, "RequestId": "req-1", "StackId": "arn:aws:cloudformation:us-east-1:1:stack/s/1",
             "LogicalResourceId": "Documents", "ResponseURL": "https://example.invalid/unused",
             "ResourceProperties": properties(reply)}
    if kind != "Create":
        event["PhysicalResourceId"] = config_lambda.physical_id(BUCKET)
    event.update(extra)
    return event


def deploy(kind: str, reply: str, **extra: Any) -> dict[str, Any]:
    """on_event, then the event the framework hands is_complete (the request merged with its result)."""
    event = request(kind, reply, **extra)
    return {**event, **handler.on_event(event, None)}


class NodeAgent:
    """One node's side, with the node's own code: which document it follows, its TLS listeners'
    secrets (with `tls`), and the status object."""

    def __init__(self, cloud: Cloud, name: str, instance: str | None = None, tls: TlsStore | None = None) -> None:
        body = cloud.s3.get_object(Bucket=BUCKET, Key=f"nodes/{name}/node.json")["Body"].read()
        self.live = LiveConfig(parse_config(json.loads(body)), cloud.s3, "/nonexistent/node.json",
                               instance_id=lambda: instance or cloud.in_service(f"group-{name}"), tls=tls)

    def poll(self, state: str = APPLIED, reason: str | None = None) -> str | None:
        """Fetch the document; report a new version as `state` (the apply itself is not run)."""
        fetched = self.live.fetch()
        if fetched is None:
            return None
        key, version, body, follows = fetched
        if self.live.tls is not None:  # what apply does first: fetch the TLS listeners' secrets
            self.live.cfg = parse_config(json.loads(body))
            self.live.tls.refresh(self.live.cfg)
        self.live.version, self.live.version_key, self.live.follows = version, key, follows
        self.live.report(Outcome(version, state, reason, key=key))
        return version


def test_create_writes_both_documents_at_their_fixed_keys_and_completes_with_no_node_in_service(
        cloud: Cloud) -> None:
    event = deploy("Create", "v1")
    assert event["PhysicalResourceId"] == config_lambda.physical_id(BUCKET)
    for n in ("a", "b"):
        obj = cloud.s3.get_object(Bucket=BUCKET, Key=f"nodes/{n}/node.json")
        assert json.loads(obj["Body"].read()) == document(n, "v1")
        assert event["Data"][f"{n}.Version"] == obj["ETag"].strip('"')
    assert float(event["Data"]["WaitUntil"]) == pytest.approx(time.time() + 300, abs=30)
    # No group exists yet: the groups are made after the documents, and boot with them.
    assert handler.is_complete(event, None) == {"IsComplete": True}


def test_an_update_completes_once_both_nodes_applied_the_new_versions(cloud: Cloud) -> None:
    deploy("Create", "v1")
    cloud.group("group-a")
    cloud.group("group-b")
    a, b = NodeAgent(cloud, "a"), NodeAgent(cloud, "b")
    assert a.poll() and b.poll()
    event = deploy("Update", "v2", OldResourceProperties=properties("v1"))
    # Written, not yet reported by either node: the nodes still report the old version.
    assert handler.is_complete(event, None) == {"IsComplete": False}
    assert a.poll() == event["Data"]["a.Version"]
    assert handler.is_complete(event, None) == {"IsComplete": False}  # b has not reported yet
    assert b.poll() == event["Data"]["b.Version"]
    assert handler.is_complete(event, None) == {"IsComplete": True}
    status = json.loads(cloud.s3.get_object(Bucket=BUCKET, Key="nodes/b/status.json")["Body"].read())
    assert status["instance_id"] == cloud.in_service("group-b") and status["state"] == "applied"


def test_a_node_that_has_not_reported_yet_holds_the_deploy(cloud: Cloud) -> None:
    cloud.group("group-a")
    cloud.group("group-b")
    event = deploy("Update", "v2")
    NodeAgent(cloud, "a").poll()
    assert handler.is_complete(event, None) == {"IsComplete": False}  # node b wrote no status at all


def test_a_refused_version_fails_the_deploy_with_the_nodes_reason(cloud: Cloud) -> None:
    cloud.group("group-a")
    cloud.group("group-b")
    event = deploy("Update", "v2")
    NodeAgent(cloud, "a").poll()
    reason = "haproxy refused the rendered /etc/haproxy/haproxy.cfg: [ALERT] parsing [haproxy.cfg:12]"
    NodeAgent(cloud, "b").poll(REFUSED, reason)
    with pytest.raises(config_lambda.NodeRefused) as e:
        handler.is_complete(event, None)
    instance = cloud.in_service("group-b")
    assert str(e.value).startswith(f"node b ({instance}) refused version {event['Data']['b.Version']}")
    assert str(e.value).endswith(reason)


def test_a_refusal_of_an_older_version_does_not_fail_the_new_one(cloud: Cloud) -> None:
    cloud.group("group-a")
    cloud.group("group-b")
    deploy("Update", "bad")
    a, b = NodeAgent(cloud, "a"), NodeAgent(cloud, "b")
    a.poll()
    b.poll(REFUSED, "keepalived refused it")
    # CloudFormation rolls back: the previous documents are written again and waited for.
    event = deploy("Update", "v1")
    assert handler.is_complete(event, None) == {"IsComplete": False}
    a.poll()
    b.poll()
    assert handler.is_complete(event, None) == {"IsComplete": True}


def test_a_node_with_no_instance_in_service_is_not_waited_for(cloud: Cloud) -> None:
    cloud.group("group-a")
    cloud.group("group-b", instances=0)  # being replaced: its new instance boots with the new document
    event = deploy("Update", "v2")
    assert handler.is_complete(event, None) == {"IsComplete": False}
    NodeAgent(cloud, "a").poll()
    assert handler.is_complete(event, None) == {"IsComplete": True}


def test_an_unhealthy_instance_is_not_waited_for(cloud: Cloud) -> None:
    cloud.group("group-a")
    cloud.group("group-b")
    cloud.autoscaling.set_instance_health(InstanceId=cloud.in_service("group-b"), HealthStatus="Unhealthy")
    event = deploy("Update", "v2")
    NodeAgent(cloud, "a").poll()
    assert handler.is_complete(event, None) == {"IsComplete": True}


def test_fails_when_a_node_has_not_applied_its_version_in_time(cloud: Cloud) -> None:
    cloud.group("group-a")
    cloud.group("group-b")
    old = deploy("Create", "v1")
    NodeAgent(cloud, "a").poll()
    b = NodeAgent(cloud, "b")
    b.poll()
    event = deploy("Update", "v2")
    NodeAgent(cloud, "a").poll()
    event["Data"]["WaitUntil"] = str(time.time() - 1)
    with pytest.raises(config_lambda.NodesTooSlow) as e:
        handler.is_complete(event, None)
    message = str(e.value)
    assert message.startswith("not every node in service applied its new document in time (300 s): ")
    assert (f"node b ({cloud.in_service('group-b')}) reports version {old['Data']['b.Version']} (applied, "
            f"by {cloud.in_service('group-b')}), not {event['Data']['b.Version']}") in message
    assert "node a" not in message


def test_delete_removes_the_documents_and_the_status_objects_so_the_bucket_can_go(cloud: Cloud) -> None:
    cloud.group("group-a")
    deploy("Create", "v1")
    NodeAgent(cloud, "a").poll()
    assert cloud.keys() == ["nodes/a/node.json", "nodes/a/status.json", "nodes/b/node.json"]
    event = request("Delete")
    assert handler.on_event(event, None) == {"PhysicalResourceId": event["PhysicalResourceId"]}
    assert handler.is_complete({**event, "Data": {}}, None) == {"IsComplete": True}
    assert cloud.keys() == []
    cloud.s3.delete_bucket(Bucket=BUCKET)
    # Again, with the bucket gone: a delete is safe to repeat.
    assert handler.on_event(event, None) == {"PhysicalResourceId": event["PhysicalResourceId"]}


def test_a_document_the_node_would_refuse_is_refused_before_anything_is_written(cloud: Cloud) -> None:
    event = request("Create")
    bad = document("b", "v1") | {"vip": "10.0.0.0/8"}
    event["ResourceProperties"]["Nodes"][1]["Document"] = json.dumps(bad)
    with pytest.raises(ValueError, match=r"(?s)node b's document.*vip: got '10\.0\.0\.0/8'"):
        handler.on_event(event, None)
    assert cloud.keys() == []


def test_a_create_that_fails_half_way_removes_what_it_wrote(cloud: Cloud) -> None:
    """S3 fails node b's PUT (a fault on the handler's own client, before the call leaves it):
    node a's document is written first, and must go, or the bucket could not be deleted."""
    def fail_node_b(params: dict[str, Any], **_: Any) -> tuple[Any, dict[str, Any]] | None:
        if params["url_path"].endswith("/nodes/b/node.json"):
            return (SimpleNamespace(status_code=500, headers={}),
                    {"Error": {"Code": "InternalError", "Message": "We encountered an internal error."},
                     "ResponseMetadata": {"HTTPStatusCode": 500}})
        return None

    config_lambda.client("s3").meta.events.register_first("before-call.s3.PutObject", fail_node_b)
    with pytest.raises(Exception, match="InternalError"):
        handler.on_event(request("Create"), None)
    assert cloud.keys() == []


@pytest.mark.parametrize(("change", "problem"), [
    ({"Bucket": ""}, "Bucket: got ''; allowed: a bucket name"),
    ({"WaitSeconds": "soon"}, "WaitSeconds: got 'soon'; allowed: a number of seconds from 1 to 3600"),
    ({"Nodes": []}, "Nodes: got []; allowed: a list of nodes"),
    ({"Nodes": [{"Name": "a", "Key": "k"}]},
     "Nodes[0]: got {'Name': 'a', 'Key': 'k'}; allowed: an object with a non-empty StatusKey, AutoScalingGroupName, "
     "Document"),
])
def test_fails_when_a_property_is_bad_and_names_it(cloud: Cloud, change: dict[str, Any], problem: str) -> None:
    event = request("Create")
    event["ResourceProperties"].update(change)
    with pytest.raises(ValueError) as e:
        handler.on_event(event, None)
    assert problem in str(e.value)


# -- version skew: this release's writer and waiter beside the previous release's nodes and writer --

def document_v2(node: str, reply: str, **changes: Any) -> dict[str, Any]:
    """This release's document for `node`, at its schema's key (as the construct writes it)."""
    return document(node, reply) | {"version": config.SCHEMA_VERSION, "release": "9.9.9",
                                    "config_key": document_keys.document_key(node), **changes}


def properties_v2(reply: str, **changes: Any) -> dict[str, Any]:
    props = properties(reply)
    for n in props["Nodes"]:
        n["Key"] = document_keys.document_key(n["Name"])
        n["Document"] = json.dumps(document_v2(n["Name"], reply, **changes))
    return props


def deploy_v2(kind: str, reply: str, **changes: Any) -> dict[str, Any]:
    event = request(kind, reply, ResourceProperties=properties_v2(reply, **changes), RequestId=f"req-{reply}")
    return {**event, **handler.on_event(event, None)}


def previous_release(moto: str, code: str, stdin: Any = None) -> Any:
    """Run `code` with the previous release's own packages, its AWS clients aimed at moto; it
    prints one JSON value last (its events come before, one line each)."""
    prelude = (f"import json, os, sys\nos.environ.update(AWS_ENDPOINT_URL={moto!r}, AWS_REGION='us-east-1', "
               "AWS_DEFAULT_REGION='us-east-1', AWS_ACCESS_KEY_ID='t', AWS_SECRET_ACCESS_KEY='t')\n")
    proc = run_release_python(releases.previous_release(), prelude + code, json.dumps(stdin))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


# The previous release's node: its own LiveConfig fetches (a conditional GET of its one key) and
# reports, as its agent does after an apply.
PREVIOUS_NODE = '''
import boto3
from haproxy_ha_runtime.config import parse_config
from haproxy_ha_runtime.live_config import LiveConfig, Outcome
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1")
args = json.load(sys.stdin)
body = s3.get_object(Bucket=args["bucket"], Key=args["key"])["Body"].read()
live = LiveConfig(parse_config(json.loads(body)), s3, "/nonexistent/node.json", instance_id=lambda: args["instance"])
fetched = live.fetch()
if fetched is not None:
    live.report(Outcome(fetched[0], "applied"))
print(json.dumps(fetched[0] if fetched else None))
'''


def previous_node_polls(cloud: Cloud, moto: str, name: str) -> str | None:
    version: str | None = previous_release(moto, PREVIOUS_NODE, {
        "bucket": BUCKET, "key": document_keys.document_key(name, 1), "instance": cloud.in_service(f"group-{name}")})
    return version


def test_the_writer_keeps_the_previous_schemas_document_beside_the_new_one(cloud: Cloud) -> None:
    event = deploy_v2("Create", "v1")
    for n in ("a", "b"):
        new = cloud.s3.get_object(Bucket=BUCKET, Key=f"nodes/{n}/node.v2.json")
        old = cloud.s3.get_object(Bucket=BUCKET, Key=f"nodes/{n}/node.json")
        assert json.loads(new["Body"].read()) == document_v2(n, "v1")
        # As the previous release writes it: schema 1, naming the key that release polls.
        assert json.loads(old["Body"].read()) == config.downgrade(document_v2(n, "v1"), 1) | {
            "config_key": f"nodes/{n}/node.json"}
        assert event["Data"][f"{n}.Version"] == new["ETag"].strip('"')
        assert event["Data"][f"{n}.LegacyVersion"] == old["ETag"].strip('"')
        # One write, one generation, on both keys; the newest schema it holds is 2.
        assert new["Metadata"] == old["Metadata"] == document_keys.writer_metadata("req-v1", 2)


def test_an_upgrade_waits_for_a_previous_release_node_on_the_document_it_reads(cloud: Cloud, moto: str) -> None:
    cloud.group("group-a")
    cloud.group("group-b")
    deploy("Create", "v1")  # the previous release's stack: schema 1 at nodes/<node>/node.json
    assert previous_node_polls(cloud, moto, "a") and previous_node_polls(cloud, moto, "b")
    event = deploy_v2("Update", "v2")  # the upgrade writes the documents first, the old nodes still run
    assert handler.is_complete(event, None) == {"IsComplete": False}
    assert previous_node_polls(cloud, moto, "a") == event["Data"]["a.LegacyVersion"]
    assert handler.is_complete(event, None) == {"IsComplete": False}
    # Node b's group replaced it already: its new instance runs this release, which reads schema 2.
    NodeAgent(cloud, "b").poll()
    assert handler.is_complete(event, None) == {"IsComplete": True}
    b = json.loads(cloud.s3.get_object(Bucket=BUCKET, Key="nodes/b/status.json")["Body"].read())
    assert b["versions"] == {"nodes/b/node.json": event["Data"]["b.LegacyVersion"],
                             "nodes/b/node.v2.json": event["Data"]["b.Version"]}
    assert b["schema"] == config.SCHEMA_VERSION and b["runtime"] == __version__


def test_a_document_an_older_node_cannot_be_given_leaves_it_serving_its_own(
        cloud: Cloud, moto: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cloud.group("group-a")
    cloud.group("group-b")
    deploy("Create", "v1")
    before = cloud.s3.get_object(Bucket=BUCKET, Key="nodes/a/node.json")
    assert previous_node_polls(cloud, moto, "a")
    # Pretend schema 2 added stats_port, a field that changes what a node serves, and set it.
    monkeypatch.setitem(config.SCHEMA_ADDITIONS, 2, (
        *config.SCHEMA_ADDITIONS[2], config.Addition("stats_port", serves=True, why="the stats port")))
    event = deploy_v2("Update", "v2", stats_port=9000)
    assert event["Data"]["a.LegacyRefused"] == (
        "a node that reads schema 1 cannot be given this document: stats_port is 9000 (schema 2 added it: the "
        "stats port)")
    assert "a.LegacyVersion" not in event["Data"]
    after = cloud.s3.get_object(Bucket=BUCKET, Key="nodes/a/node.json")
    assert after["Body"].read() == before["Body"].read()
    assert after["Metadata"] == document_keys.writer_metadata("req-v2", 2)
    # The old node is not waited for (it has its document: S3 keeps a copy's ETag when its body is
    # the same, moto gives it a new one); this release's node b is.
    assert handler.is_complete(event, None) == {"IsComplete": False}
    NodeAgent(cloud, "b").poll()
    assert handler.is_complete(event, None) == {"IsComplete": True}


def test_a_rollback_by_the_previous_release_is_followed_by_this_releases_node(cloud: Cloud, moto: str) -> None:
    cloud.group("group-a")
    cloud.group("group-b")
    deploy_v2("Create", "v2")
    a = NodeAgent(cloud, "a")
    assert a.poll() and a.live.version_key == "nodes/a/node.v2.json"
    # The previous release's writer (its own on_event) writes its documents back, then its waiter
    # (its own is_complete) waits for node a, which runs this release, on the key it wrote.
    rollback = previous_release(moto, '''
from haproxy_ha_runtime import config_lambda
event = json.load(sys.stdin)
done = {**event, **config_lambda.on_event(event, None)}
print(json.dumps(done))
''', request("Update", "v1"))
    assert previous_release(moto, WAIT, rollback) == {"IsComplete": False}
    assert a.poll() == rollback["Data"]["a.Version"]
    assert a.live.version_key == "nodes/a/node.json"
    NodeAgent(cloud, "b").poll()
    assert previous_release(moto, WAIT, rollback) == {"IsComplete": True}


WAIT = '''
from haproxy_ha_runtime import config_lambda
print(json.dumps(config_lambda.is_complete(json.load(sys.stdin), None)))
'''


def test_a_write_under_way_is_not_followed_until_both_keys_hold_it(cloud: Cloud) -> None:
    deploy_v2("Create", "v1")
    a = NodeAgent(cloud, "a")
    assert a.poll()
    # The writer has put the older key of the next write, not yet the node's own.
    cloud.s3.put_object(Bucket=BUCKET, Key="nodes/a/node.json", Body=json.dumps(
        config.downgrade(document_v2("a", "v2"), 1)).encode(), Metadata=document_keys.writer_metadata("req-v2", 2))
    assert a.poll() is None
    event = deploy_v2("Update", "v2")
    assert a.poll() == event["Data"]["a.Version"]


def test_delete_removes_both_schemas_documents(cloud: Cloud) -> None:
    deploy_v2("Create", "v1")
    assert cloud.keys() == ["nodes/a/node.json", "nodes/a/node.v2.json", "nodes/b/node.json", "nodes/b/node.v2.json"]
    event = request("Delete", ResourceProperties=properties_v2("v1"))
    handler.on_event(event, None)
    assert cloud.keys() == []


# -- TLS listeners: a certificate refused on a node that applied the version --------------------

def tls_properties(reply: str, secret: str, run_dir: str) -> dict[str, Any]:
    """Both nodes' documents with a TLS listener `https` on `secret`."""
    props = properties(reply)
    for n in props["Nodes"]:
        doc = json.loads(n["Document"])
        doc["listeners"].append({"name": "https", "port": 443, "static_reply": "hello", "tls": {"secret": secret}})
        doc["paths"] = {"run_dir": f"{run_dir}/{n['Name']}"}
        n["Document"] = json.dumps(doc)
    return props


def tls_deploy(kind: str, reply: str, secret: str, run_dir: str, old: dict[str, Any] | None = None
               ) -> dict[str, Any]:
    event = request(kind, reply, ResourceProperties=tls_properties(reply, secret, run_dir),
                    **({"OldResourceProperties": old} if old else {}))
    return {**event, **handler.on_event(event, None)}


def test_a_tls_listener_moved_to_a_secret_the_nodes_refuse_fails_the_deploy(
        cloud: Cloud, moto: str, tmp_path: Any) -> None:
    secrets = boto3.session.Session().client("secretsmanager", region_name="us-east-1", endpoint_url=moto)
    secrets.create_secret(Name="lb/https", SecretString="{}")
    secrets.create_secret(Name="lb/https-next", SecretString="{}")
    cloud.group("group-a")
    cloud.group("group-b")
    run_dir = str(tmp_path)
    first = tls_deploy("Create", "v1", "lb/https", run_dir)
    a, b = (NodeAgent(cloud, n, tls=TlsStore(secrets, parse_config(json.loads(
        first["ResourceProperties"]["Nodes"][i]["Document"])).paths)) for i, n in enumerate("ab"))
    a.poll()
    b.poll()
    # A listener whose secret the deploy did not touch: its problem is the operator's to mend, and
    # holds no other change (this one adds nothing to it).
    unchanged = tls_deploy("Update", "v2", "lb/https", run_dir, old=first["ResourceProperties"])
    a.poll()
    b.poll()
    assert "certificate is missing" in a.live.tls.problems(a.live.cfg)["https"]  # type: ignore[union-attr]
    assert handler.is_complete(unchanged, None) == {"IsComplete": True}
    # The deploy moves the listener to another secret, whose value is {}: the nodes apply the
    # document, refuse the certificate, and the deploy fails with their reason.
    moved = tls_deploy("Update", "v3", "lb/https-next", run_dir, old=unchanged["ResourceProperties"])
    a.poll()
    with pytest.raises(config_lambda.ListenerRefused) as e:
        handler.is_complete(moved, None)
    message = str(e.value)
    assert message.startswith(f"node a ({cloud.in_service('group-a')}) applied version {moved['Data']['a.Version']}")
    assert "TLS listener(s) this deploy added or changed: https: secret lb/https-next version " in message
    assert "certificate is missing" in message


def test_the_tls_listeners_a_deploy_adds_or_changes() -> None:
    def doc(*listeners: dict[str, Any]) -> str:
        return json.dumps({"listeners": list(listeners)})

    plain = {"name": "web", "port": 80}
    https = {"name": "https", "port": 443, "tls": {"secret": "a"}}
    assert config_lambda.changed_tls_listeners(doc(plain, https), None) == {"https"}
    assert config_lambda.changed_tls_listeners(doc(plain, https), doc(plain, https)) == set()
    assert config_lambda.changed_tls_listeners(doc(https | {"tls": {"secret": "b"}}), doc(https)) == {"https"}
    assert config_lambda.changed_tls_listeners(doc(https | {"tls": {"secret": "a", "policy": "p"}}),
                                               doc(https)) == {"https"}
    assert config_lambda.changed_tls_listeners(doc(plain), doc(plain, https)) == set()
    assert config_lambda.changed_tls_listeners("not json", doc(https)) == set()


def test_a_refusal_whose_reason_is_longer_than_cloudformation_takes_is_cut(cloud: Cloud) -> None:
    cloud.group("group-a")
    cloud.group("group-b")
    event = deploy("Update", "v2")
    NodeAgent(cloud, "a").poll()
    NodeAgent(cloud, "b").poll(REFUSED, "haproxy refused it: " + "[ALERT] line " * 1000)
    with pytest.raises(config_lambda.NodeRefused) as e:
        handler.is_complete(event, None)
    # The framework puts the reason in its answer, which CloudFormation refuses over 4096 bytes.
    assert len(str(e.value)) <= config_lambda.REASON_LIMIT
    assert str(e.value).endswith(" [cut; the function's log has it all]")
