"""The nodes' documents as a CloudFormation custom resource, on the CDK Provider framework: `on_event`
writes each node's config document to S3, and `is_complete` holds the deploy until every node in
service says, in its status object (live_config.py), that it follows that version.

Resource properties (CloudFormation hands every scalar over as a string):

    Bucket       the bucket that holds the documents and the nodes' status objects
    WaitSeconds  how long is_complete waits for the nodes before it fails the deploy
    Nodes        [{"Name": "a", "Key": "nodes/a/node.v2.json", "StatusKey": "nodes/a/status.json",
                   "AutoScalingGroupName": "...", "Document": "<the document, as JSON text>"}, ...]

Version skew (document_keys.py): beside `Key`, the writer keeps the document of the schema before
(`nodes/a/node.json` for schema 1), for a node of the previous release, which may still run while
the documents are written (an upgrade writes them before it replaces the nodes).  That document is
config.downgrade of the new one; when the new one sets a field that changes what a node serves
and the older schema lacks, there is none to give: the older key keeps its document, the older
node serves it until its group replaces it, and the writer says so in its log.

on_event returns, per node, the ETag of each document it wrote (as the node reports it) and the time
by which the nodes must follow them; the framework hands both to is_complete, called at once and
then every query interval.  A node is waited for on the newest document it can read: its status
object says which schema it reads (none said: schema 1, release 0.1.0).  A node whose group has no
healthy instance in service is not waited for: it is being replaced (or not made yet, on create),
and its new instance boots with the new document.  A node that refuses the version fails the deploy
with its reason, and so does one that applied it but refused the certificate of a TLS listener
this deploy added or changed (it keeps serving the last good one); CloudFormation then writes the
previous documents back, and waits for them the same way.
"""

from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from . import document_keys, runtime_info
from .config import ConfigError, DowngradeRefused, downgrade, parse_config
from .live_config import APPLIED, REFUSED
from .log import log_event

# The time by which every node in service must have applied the new version (epoch seconds).
WAIT_UNTIL = "WaitUntil"
# A failure's reason goes into the framework's answer, with its own text around it; CloudFormation
# refuses an answer over 4096 bytes.
REASON_LIMIT = 2000


def version_key(node: str) -> str:
    """The key of a node's document version (its ETag at `Key`) in the resource's Data: ``a.Version``."""
    return f"{node}.Version"


def legacy_version_key(node: str) -> str:
    """The key, in the resource's Data, of the ETag of the node's document for the schema before:
    ``a.LegacyVersion``; absent when none was written."""
    return f"{node}.LegacyVersion"


def legacy_refused_key(node: str) -> str:
    """The key, in the resource's Data, of why a node of the previous schema got no document."""
    return f"{node}.LegacyRefused"


def physical_id(bucket: str) -> str:
    """The resource's physical ID.  The keys are fixed per node, so only a new bucket makes a new
    resource (and CloudFormation's delete of the old one empties the old bucket)."""
    return f"haproxy-ha-node-documents:{bucket}"


@dataclass(frozen=True)
class NodeObjects:
    """One node's document, where it and the node's status live, and the node's group."""

    name: str
    key: str
    status_key: str
    group: str
    document: str


@dataclass(frozen=True)
class Properties:
    """The resource's properties, checked."""

    bucket: str
    wait_s: float
    nodes: tuple[NodeObjects, ...]


def parse_properties(props: Any) -> Properties:
    """The properties, or ValueError naming every bad one."""
    problems: list[str] = []
    if not isinstance(props, dict):
        raise ValueError(f"ResourceProperties: got {props!r}; allowed: an object")
    bucket = props.get("Bucket")
    if not isinstance(bucket, str) or not bucket:
        problems.append(f"Bucket: got {bucket!r}; allowed: a bucket name")
    wait_s = 0.0
    try:
        wait_s = float(props.get("WaitSeconds"))  # type: ignore[arg-type]
        if not 0 < wait_s <= 3600:
            raise ValueError
    except (TypeError, ValueError):
        problems.append(f"WaitSeconds: got {props.get('WaitSeconds')!r}; allowed: a number of seconds from 1 to 3600")
    raw = props.get("Nodes")
    nodes: list[NodeObjects] = []
    if not isinstance(raw, list) or not raw:
        problems.append(f"Nodes: got {raw!r}; allowed: a list of nodes")
        raw = []
    for i, node in enumerate(raw):
        names = ("Name", "Key", "StatusKey", "AutoScalingGroupName", "Document")
        values = [node.get(k) if isinstance(node, dict) else None for k in names]
        bad = [k for k, v in zip(names, values) if not isinstance(v, str) or not v]
        if bad:
            problems.append(f"Nodes[{i}]: got {node!r}; allowed: an object with a non-empty {', '.join(bad)}")
            continue
        nodes.append(NodeObjects(*(str(v) for v in values)))
    if problems:
        raise ValueError("; ".join(problems))
    assert isinstance(bucket, str)
    return Properties(bucket, wait_s, tuple(nodes))


def _cut(text: str) -> str:
    return text if len(text) <= REASON_LIMIT else text[:REASON_LIMIT - 40] + " [cut; the function's log has it all]"


# -- on_event: write (or remove) the documents ---------------------------------------------------

def write_documents(s3: Any, event: dict[str, Any], now: float) -> dict[str, Any]:
    """Create/Update: put each node's document, checked first as the node checks it; Delete:
    remove the documents and the nodes' status objects, so that the bucket can go."""
    request = event["RequestType"]
    props = parse_properties(event.get("ResourceProperties"))
    if request == "Delete":
        _remove(s3, props)
        log_event("node_documents_removed", bucket=props.bucket, nodes=[n.name for n in props.nodes])
        return {"PhysicalResourceId": event["PhysicalResourceId"]}
    problems = []
    documents: dict[str, dict[str, Any]] = {}
    for n in props.nodes:
        try:
            documents[n.name] = json.loads(n.document)
            parse_config(documents[n.name], f"node {n.name}'s document")
        except ValueError as e:  # ConfigError, and JSON's own error
            problems.append(str(e) if isinstance(e, ConfigError) else f"node {n.name}'s document is not JSON: {e}")
    if problems:
        raise ValueError(_cut("; ".join(problems)))
    data: dict[str, str] = {}
    # One generation for this write's documents: a node follows its own schema's key once that
    # carries the generation the older key carries (document_keys.choose).
    generation = str(event.get("RequestId") or f"{now:.6f}")
    try:
        for n in props.nodes:
            data.update(_write_node(s3, props.bucket, n, documents[n.name], generation))
    except Exception:
        # A create that fails is never deleted (the framework answers with a marker ID, and
        # ignores the delete that follows): remove what was written here, or the bucket cannot go.
        if request == "Create":
            _remove(s3, props)
        raise
    data[WAIT_UNTIL] = f"{now + props.wait_s:.3f}"
    log_event("node_documents_written", request=request, bucket=props.bucket, versions=data)
    return {"PhysicalResourceId": physical_id(props.bucket), "Data": data}


def _write_node(s3: Any, bucket: str, node: NodeObjects, document: dict[str, Any], generation: str) -> dict[str, str]:
    """Put one node's document at its key, and before it the document of the schema before (for a
    node of the previous release), both with this write's metadata; the ETags, as Data."""
    schema = int(document.get("version", 1))
    metadata = document_keys.writer_metadata(generation, schema)
    data: dict[str, str] = {}
    legacy = document_keys.older_key(node.key) if document_keys.schema_of(node.key) == schema else None
    if legacy is not None:
        older = document_keys.schema_of(legacy)
        assert older is not None
        try:
            handed = downgrade(document, older)
            # The older node polls the key its document names: its own.
            if handed.get("config_key") == node.key:
                handed["config_key"] = legacy
            body = json.dumps(handed)
        except DowngradeRefused as e:
            # That node keeps its document: only this write's metadata goes onto it (a copy onto
            # itself keeps the body, and with it the ETag the node has).
            data[legacy_refused_key(node.name)] = _cut(str(e))[:500]
            log_event("node_document_not_downgraded", node=node.name, key=legacy, reason=str(e))
            try:
                s3.copy_object(Bucket=bucket, Key=legacy, CopySource={"Bucket": bucket, "Key": legacy},
                               Metadata=metadata, MetadataDirective="REPLACE", ContentType="application/json")
            except ClientError as ce:
                if ce.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404"):
                    raise
        else:
            put = s3.put_object(Bucket=bucket, Key=legacy, Body=body.encode(), ContentType="application/json",
                                Metadata=metadata)
            data[legacy_version_key(node.name)] = str(put["ETag"]).strip('"')
    put = s3.put_object(Bucket=bucket, Key=node.key, Body=node.document.encode(), ContentType="application/json",
                        Metadata=metadata)
    data[version_key(node.name)] = str(put["ETag"]).strip('"')
    return data


def _remove(s3: Any, props: Properties) -> None:
    for n in props.nodes:
        for key in (*document_keys.written_keys(n.key), n.status_key):
            try:
                s3.delete_object(Bucket=props.bucket, Key=key)
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") != "NoSuchBucket":
                    raise


# -- is_complete: wait for the nodes -----------------------------------------------------------

def instances_in_service(autoscaling: Any, groups: list[str]) -> dict[str, list[str]]:
    """Each group's healthy instances in service; a group that does not exist has none."""
    found: dict[str, list[str]] = {g: [] for g in groups}
    for page in autoscaling.get_paginator("describe_auto_scaling_groups").paginate(AutoScalingGroupNames=groups):
        for group in page.get("AutoScalingGroups", []):
            found[group["AutoScalingGroupName"]] = [
                i["InstanceId"] for i in group.get("Instances", [])
                if i.get("LifecycleState") == "InService" and i.get("HealthStatus", "Healthy") == "Healthy"]
    return found


def read_status(s3: Any, bucket: str, key: str) -> dict[str, Any] | None:
    """A node's status object, or None while it has written none."""
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise
    try:
        status = json.loads(body)
    except ValueError:
        return {"unreadable": body[:200].decode(errors="replace")}
    return status if isinstance(status, dict) else {"unreadable": str(status)[:200]}


class NodeRefused(RuntimeError):
    """A node in service refused the new version of its document."""


class ListenerRefused(NodeRefused):
    """A node in service applied the new version of its document, but refused the certificate of
    a TLS listener that this deploy added or changed (it serves the last good one, or leaves the
    listener out if it had none)."""


def changed_tls_listeners(document: str, old_document: str | None) -> set[str]:
    """The TLS listeners that `document` adds or changes (its secret, its policy) against
    `old_document` (None: a new resource, every TLS listener is new)."""
    def tls_of(text: str | None) -> dict[str, Any]:
        try:
            listeners = json.loads(text).get("listeners") or [] if text else []
        except (ValueError, AttributeError):
            return {}
        return {str(lst.get("name")): lst.get("tls") for lst in listeners if isinstance(lst, dict) and lst.get("tls")}

    new, old = tls_of(document), tls_of(old_document)
    return {name for name, tls in new.items() if old.get(name) != tls}


def _old_documents(event: dict[str, Any]) -> dict[str, str]:
    """On an Update, each node's document before it, by node name."""
    old = event.get("OldResourceProperties")
    nodes = old.get("Nodes") if isinstance(old, dict) else None
    return {str(n.get("Name")): str(n.get("Document")) for n in nodes or [] if isinstance(n, dict)}


class NodesTooSlow(RuntimeError):
    """Not every node in service applied its new version in time."""


def honours(status: dict[str, Any], key: str, version: str) -> bool:
    """Does the node's status say it follows (or refused) `version` of the document at `key`?  A
    status of release 0.1.0 names one version, that of its one key."""
    versions = status.get("versions")
    if isinstance(versions, dict):
        return versions.get(key) == version
    return status.get("version") == version


def node_schema(status: dict[str, Any] | None) -> int:
    """The schema the node that wrote `status` reads (release 0.1.0 said none: its schema)."""
    schema = runtime_info.reported_schema(status or {})
    return runtime_info.FIRST_RELEASE_SCHEMA if schema is None else schema


@dataclass(frozen=True)
class Expected:
    """What to wait for from one node: the version of the document at `key`; or nothing, and why."""

    key: str | None
    version: str | None
    why_not: str | None = None


def expected(node: NodeObjects, data: dict[str, Any], status: dict[str, Any] | None) -> Expected:
    """The newest document this node can read, by the schema its status says it reads."""
    schema = document_keys.schema_of(node.key)
    reads = node_schema(status)
    if schema is None or status is None or reads >= schema:
        return Expected(node.key, str(data[version_key(node.name)]))
    legacy = document_keys.older_key(node.key)
    if legacy is not None and document_keys.schema_of(legacy) == reads:
        if legacy_version_key(node.name) in data:
            return Expected(legacy, str(data[legacy_version_key(node.name)]))
        return Expected(None, None, str(data.get(legacy_refused_key(node.name), "")))
    return Expected(None, None, f"it reads schema {reads}, and this release writes schema {schema} and the one "
                                "before only")


def _waiting_for(node: NodeObjects, instances: list[str], status: dict[str, Any] | None, want: Expected) -> str:
    where = f"node {node.name} ({', '.join(instances)})"
    if status is None:
        return f"{where} has written no status yet"
    if "unreadable" in status:
        return f"{where} wrote a status that is not a JSON object: {status['unreadable']!r}"
    assert want.key is not None and want.version is not None
    if not honours(status, want.key, want.version):
        return (f"{where} reports version {status.get('version')} ({status.get('state')}, "
                f"by {status.get('instance_id')}), not {want.version} of {want.key}")
    return f"{where} reports version {want.version} of {want.key} as {status.get('state')!r}"


def check_nodes(s3: Any, autoscaling: Any, event: dict[str, Any], now: float) -> dict[str, Any]:
    """IsComplete once every node in service applied its new version; raises NodeRefused when
    one refused it, NodesTooSlow once the time is up."""
    if event["RequestType"] == "Delete":
        return {"IsComplete": True}
    props = parse_properties(event.get("ResourceProperties"))
    data = event.get("Data") or {}
    in_service = instances_in_service(autoscaling, [n.group for n in props.nodes])
    old_documents = _old_documents(event)
    waiting: list[str] = []
    states: dict[str, str] = {}
    for n in props.nodes:
        instances = in_service.get(n.group, [])
        if not instances:
            states[n.name] = "skipped: no instance in service"
            continue
        status = read_status(s3, props.bucket, n.status_key)
        want = expected(n, data, status)
        if want.key is None or want.version is None:
            # A node of the previous release that this document cannot be given to: it serves the
            # one it has, and its group replaces it next (the groups depend on this resource).
            states[n.name] = f"skipped: it reads schema {node_schema(status)} and cannot be given this document"
            log_event("node_document_skipped", node=n.name, schema=node_schema(status), reason=want.why_not)
            continue
        if status is not None and "unreadable" not in status and honours(status, want.key, want.version):
            if status.get("state") == APPLIED:
                listed = status.get("listeners")
                problems: dict[str, Any] = listed if isinstance(listed, dict) else {}
                refused = {name: why for name, why in sorted(problems.items())
                           if name in changed_tls_listeners(n.document, old_documents.get(n.name))}
                if refused:
                    log_event("node_listener_refused", node=n.name, version=want.version, listeners=refused)
                    raise ListenerRefused(_cut(
                        f"node {n.name} ({status.get('instance_id')}) applied version {want.version} of its document "
                        f"s3://{props.bucket}/{want.key}, but refused the certificate of TLS listener(s) this deploy "
                        "added or changed: " + "; ".join(f"{name}: {why}" for name, why in refused.items())))
                states[n.name] = f"applied by {status.get('instance_id')}"
                continue
            if status.get("state") == REFUSED:
                log_event("node_document_refused", node=n.name, version=want.version, status=status)
                raise NodeRefused(_cut(
                    f"node {n.name} ({status.get('instance_id')}) refused version {want.version} of its document "
                    f"s3://{props.bucket}/{want.key}, and serves the one it had: {status.get('reason')}"))
        waiting.append(_waiting_for(n, instances, status, want))
        states[n.name] = "waiting"
    log_event("node_documents_check", request=event["RequestType"], nodes=states, waiting=waiting)
    if not waiting:
        return {"IsComplete": True}
    if now >= float(data[WAIT_UNTIL]):
        raise NodesTooSlow(_cut(
            f"not every node in service applied its new document in time ({props.wait_s:g} s): "
            + "; ".join(waiting) + ". A node that does not report has a stuck or dead agent (its journal: "
            "journalctl -u haproxy-ha-agent), or cannot reach S3"))
    return {"IsComplete": False}


# -- the Lambda entry points (lambda/config_handler.py) ----------------------------------------

@functools.cache
def client(service: str) -> Any:
    """A client with botocore's standard retries; the endpoint comes from boto3's own settings
    (AWS_ENDPOINT_URL), so that tests can aim it."""
    import boto3
    from botocore.config import Config

    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    config = Config(retries={"mode": "standard", "max_attempts": 5})
    return boto3.session.Session().client(service, region_name=region, config=config)  # type: ignore[call-overload]


def on_event(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The Provider framework's onEvent handler."""
    return write_documents(client("s3"), event, time.time())


def is_complete(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The Provider framework's isComplete handler."""
    return check_nodes(client("s3"), client("autoscaling"), event, time.time())
