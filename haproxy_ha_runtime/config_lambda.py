"""The nodes' documents as a CloudFormation custom resource, on the CDK Provider framework: `on_event`
writes each node's config document to its fixed key in S3, and `is_complete` holds the deploy until
every node in service says, in its status object (live_config.py), that it applied that version.

Resource properties (CloudFormation hands every scalar over as a string):

    Bucket       the bucket that holds the documents and the nodes' status objects
    WaitSeconds  how long is_complete waits for the nodes before it fails the deploy
    Nodes        [{"Name": "a", "Key": "nodes/a/node.json", "StatusKey": "nodes/a/status.json",
                   "AutoScalingGroupName": "...", "Document": "<the document, as JSON text>"}, ...]

on_event returns each document's version (the ETag S3 gave it, as the node reports it) and the time
by which the nodes must have applied it; the framework hands both to is_complete, called at once
and then every query interval.  A node whose group has no healthy instance in service is not
waited for: it is being replaced (or not made yet, on create), and its new instance boots with the
new document.  A node that refuses the version fails the deploy with its reason; CloudFormation
then writes the previous documents back, and waits for them the same way.
"""

from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from .config import ConfigError, parse_config
from .live_config import APPLIED, REFUSED
from .log import log_event

# The time by which every node in service must have applied the new version (epoch seconds).
WAIT_UNTIL = "WaitUntil"
# A failure's reason goes into the framework's answer, with its own text around it; CloudFormation
# refuses an answer over 4096 bytes.
REASON_LIMIT = 2000


def version_key(node: str) -> str:
    """The key of a node's document version in the resource's Data: ``a.Version``."""
    return f"{node}.Version"


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
    for n in props.nodes:
        try:
            parse_config(json.loads(n.document), f"node {n.name}'s document")
        except ValueError as e:  # ConfigError, and JSON's own error
            problems.append(str(e) if isinstance(e, ConfigError) else f"node {n.name}'s document is not JSON: {e}")
    if problems:
        raise ValueError(_cut("; ".join(problems)))
    data: dict[str, str] = {}
    try:
        for n in props.nodes:
            put = s3.put_object(Bucket=props.bucket, Key=n.key, Body=n.document.encode(),
                                ContentType="application/json")
            data[version_key(n.name)] = str(put["ETag"]).strip('"')
    except Exception:
        # A create that fails is never deleted (the framework answers with a marker ID, and
        # ignores the delete that follows): remove what was written here, or the bucket cannot go.
        if request == "Create":
            _remove(s3, props)
        raise
    data[WAIT_UNTIL] = f"{now + props.wait_s:.3f}"
    log_event("node_documents_written", request=request, bucket=props.bucket, versions=data)
    return {"PhysicalResourceId": physical_id(props.bucket), "Data": data}


def _remove(s3: Any, props: Properties) -> None:
    for n in props.nodes:
        for key in (n.key, n.status_key):
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


class NodesTooSlow(RuntimeError):
    """Not every node in service applied its new version in time."""


def _waiting_for(node: NodeObjects, instances: list[str], status: dict[str, Any] | None, version: str) -> str:
    where = f"node {node.name} ({', '.join(instances)})"
    if status is None:
        return f"{where} has written no status yet"
    if "unreadable" in status:
        return f"{where} wrote a status that is not a JSON object: {status['unreadable']!r}"
    if status.get("version") != version:
        return (f"{where} reports version {status.get('version')} ({status.get('state')}, "
                f"by {status.get('instance_id')}), not {version}")
    return f"{where} reports version {version} as {status.get('state')!r}"


def check_nodes(s3: Any, autoscaling: Any, event: dict[str, Any], now: float) -> dict[str, Any]:
    """IsComplete once every node in service applied its new version; raises NodeRefused when
    one refused it, NodesTooSlow once the time is up."""
    if event["RequestType"] == "Delete":
        return {"IsComplete": True}
    props = parse_properties(event.get("ResourceProperties"))
    data = event.get("Data") or {}
    in_service = instances_in_service(autoscaling, [n.group for n in props.nodes])
    waiting: list[str] = []
    states: dict[str, str] = {}
    for n in props.nodes:
        instances = in_service.get(n.group, [])
        if not instances:
            states[n.name] = "skipped: no instance in service"
            continue
        version = str(data[version_key(n.name)])
        status = read_status(s3, props.bucket, n.status_key)
        if status is not None and status.get("version") == version:
            if status.get("state") == APPLIED:
                states[n.name] = f"applied by {status.get('instance_id')}"
                continue
            if status.get("state") == REFUSED:
                log_event("node_document_refused", node=n.name, version=version, status=status)
                raise NodeRefused(_cut(
                    f"node {n.name} ({status.get('instance_id')}) refused version {version} of its document "
                    f"s3://{props.bucket}/{n.key}, and serves the one it had: {status.get('reason')}"))
        waiting.append(_waiting_for(n, instances, status, version))
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
