"""Each node's release for `haproxy-ha status`: the runtime version and document schema that a
node reports in its status object (haproxy_ha_runtime.live_config), with the state of its
document and the instance that wrote it.  Python 3.9, boto3, no CDK.

The status objects sit beside the documents in the pair's documents bucket (the stack's
DocumentsBucket output), one per node; reading them needs s3:GetObject only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from haproxy_ha_runtime import runtime_info
from haproxy_ha_runtime.document_keys import STATUS_KEY
from haproxy_ha_runtime.live_config import REFUSED

# A status object without "runtime" was written by the first release (runtime_info.FIRST_RELEASE).
FIRST_RELEASE = runtime_info.FIRST_RELEASE
FIRST_RELEASE_SCHEMA = runtime_info.FIRST_RELEASE_SCHEMA
# The status comes second to the routes: a few quick tries, as for health.
_CONFIG = Config(retries={"mode": "standard", "total_max_attempts": 3}, connect_timeout=5, read_timeout=10)
_ACCESS_DENIED_HINT = "; S3 answers AccessDenied also for a missing object when s3:ListBucket is not allowed"


class BucketUnreadable(Exception):
    """The documents bucket could not be read at all: no node's release can be shown."""


@dataclass(frozen=True)
class NodeRelease:
    """What a node's status object says about the code it runs, or why there is none to read
    (`problem`).  `runtime_reported` is False where the release is deduced (FIRST_RELEASE)."""

    node: str
    runtime: str | None = None
    runtime_reported: bool = False
    schema: int | None = None
    document: str | None = None
    reason: str | None = None
    instance_id: str | None = None
    problem: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The node's release as `status --json` gives it."""
        return {"node": self.node, "runtime": self.runtime, "runtime_reported": self.runtime_reported,
                "schema": self.schema, "document": self.document, "reason": self.reason,
                "instance_id": self.instance_id, "problem": self.problem}


def client(session: Any) -> Any:
    """An S3 client on the session's region and endpoint (AWS_ENDPOINT_URL included)."""
    return session.client("s3", config=_CONFIG)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def parse(node: str, status: dict[str, Any]) -> NodeRelease:
    """A node's release from its status object."""
    if runtime_info.RUNTIME in status:
        runtime, reported, schema = _text(status[runtime_info.RUNTIME]), True, runtime_info.reported_schema(status)
    else:
        runtime, reported, schema = FIRST_RELEASE, False, FIRST_RELEASE_SCHEMA
    return NodeRelease(node, runtime=runtime, runtime_reported=reported, schema=schema,
                       document=_text(status.get("state")), reason=_text(status.get("reason")),
                       instance_id=_text(status.get("instance_id")))


def read(s3: Any, bucket: str, nodes: Sequence[str]) -> list[NodeRelease]:
    """Each node's release, in the order given; a node whose object is missing or unreadable has
    its `problem`.  Raises BucketUnreadable when the bucket is: it does not exist, S3 does not
    answer, or every node's read was refused with the same error (a missing object aside)."""
    found: list[NodeRelease] = []
    # Each refused read's error code, and what the first of them said.
    refused: list[str] = []
    first_said = ""
    for node in nodes:
        key = STATUS_KEY.format(node=node)
        url = f"s3://{bucket}/{key}"
        try:
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except BotoCoreError as e:
            raise BucketUnreadable(f"s3://{bucket} could not be read: {e}") from None
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code == "NoSuchBucket":
                raise BucketUnreadable(f"s3://{bucket} could not be read: {e}") from None
            if code == "NoSuchKey":
                found.append(NodeRelease(node, problem=f"no status object at {url}"))
                continue
            said = f"{e}{_ACCESS_DENIED_HINT if code == 'AccessDenied' else ''}"
            first_said = first_said or said
            refused.append(code)
            found.append(NodeRelease(node, problem=f"{url} could not be read: {said}"))
            continue
        try:
            status = json.loads(body)
        except ValueError:
            status = None
        if not isinstance(status, dict):
            found.append(NodeRelease(node, problem=f"{url} is not a JSON object"))
            continue
        found.append(parse(node, status))
    if refused and len(refused) == len(nodes) and len(set(refused)) == 1:
        raise BucketUnreadable(f"s3://{bucket} could not be read: {first_said}")
    return found


def rows(releases: Sequence[NodeRelease]) -> list[list[str]]:
    """The table `status` prints, of the nodes whose status was read: node, runtime, schema,
    document, instance."""
    table = []
    for r in releases:
        if r.problem is not None:
            continue
        runtime = r.runtime or "-"
        table.append([r.node, runtime if r.runtime_reported else f"{runtime} (not reported)",
                      "-" if r.schema is None else str(r.schema),
                      "REFUSED" if r.document == REFUSED else r.document or "-", r.instance_id or "-"])
    return table
