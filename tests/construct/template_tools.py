"""Helpers for the construct tests: apps with the repo's CDK context, and a stand-in for CloudFormation."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

# jsii prints a large banner on Node 20; the tests do not need it.
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

import aws_cdk as cdk

from haproxy_ha.stack import PLACEHOLDER_ENV

REPO = Path(__file__).resolve().parents[2]
DOCUMENTS_TYPE = "Custom::HaproxyHaNodeDocuments"


def repo_context() -> dict[str, Any]:
    """The same context `cdk synth` uses: feature flags from cdk.json plus cdk.context.json."""
    context = dict(json.loads((REPO / "cdk.json").read_text())["context"])
    context.update(json.loads((REPO / "cdk.context.json").read_text()))
    return context


def new_app() -> cdk.App:
    return cdk.App(context=repo_context(), analytics_reporting=False)


def new_stack(app: cdk.App | None = None, id: str = "Test") -> cdk.Stack:
    return cdk.Stack(app or new_app(), id, env=PLACEHOLDER_ENV)


# The ID CloudFormation gives a stack named Test: its name, then a UUID of its own.
STACK_ID = "arn:aws:cloudformation:eu-west-1:123456789012:stack/Test/51af3dc0-da77-11e4-872e-1234567db123"


class Resolver:
    """Stands in for CloudFormation: gives each Ref/GetAtt a realistic concrete value.  `stack_id`
    stands for one instance of the stack: another one, made under the same name, has another."""

    def __init__(self, template: dict[str, Any], stack_id: str = STACK_ID) -> None:
        self.resources: dict[str, Any] = template.get("Resources", {})
        self.ips: dict[str, str] = {}
        self.stack_id = stack_id

    def _hex(self, logical_id: str) -> str:
        return hashlib.sha1(logical_id.encode()).hexdigest()[:17]

    def ref(self, name: str) -> str:
        pseudo = {"AWS::Region": "eu-west-1", "AWS::AccountId": "123456789012", "AWS::Partition": "aws",
                  "AWS::URLSuffix": "amazonaws.com", "AWS::StackName": "Test", "AWS::StackId": self.stack_id}
        if name in pseudo:
            return pseudo[name]
        rtype = self.resources.get(name, {}).get("Type", "")
        if rtype == "AWS::S3::Bucket":  # lower case, as CloudFormation names a bucket
            return f"{name.lower()[:40]}-{self._hex(name)[:12]}"
        prefix = {"AWS::EC2::NetworkInterface": "eni", "AWS::EC2::RouteTable": "rtb", "AWS::EC2::VPC": "vpc",
                  "AWS::EC2::Instance": "i", "AWS::EC2::Subnet": "subnet"}.get(rtype)
        if prefix is None:
            return f"ref-{name}"
        return f"{prefix}-{self._hex(name)}"

    def get_att(self, name: str, attribute: str) -> str:
        if attribute == "Arn" and self.resources.get(name, {}).get("Type") == "AWS::Lambda::Function":
            return f"arn:aws:lambda:eu-west-1:123456789012:function:{name}"
        if attribute == "Arn" and self.resources.get(name, {}).get("Type") == "AWS::S3::Bucket":
            return f"arn:aws:s3:::{self.ref(name)}"
        if attribute == "PrimaryPrivateIpAddress":
            n = len(self.ips) + 1
            return self.ips.setdefault(name, f"10.0.{100 + n}.{200 + n}")
        return f"att-{name}-{attribute}"

    def resolve(self, value: Any) -> Any:
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        if isinstance(value, dict) and len(value) == 1:
            (key, arg), = value.items()
            if key == "Ref":
                return self.ref(arg)
            if key == "Fn::GetAtt":
                return self.get_att(arg[0], arg[1])
            if key == "Fn::Join":
                return arg[0].join(str(self.resolve(p)) for p in arg[1])
            if key == "Fn::Split":
                return str(self.resolve(arg[1])).split(arg[0])
            if key == "Fn::Select":
                return self.resolve(arg[1])[int(arg[0])]
            if key == "Fn::Sub" and isinstance(arg, str):
                return re.sub(r"\$\{([^}!]+)\}", lambda m: self.ref(m.group(1)), arg)
            if key == "Fn::Base64":
                return base64.b64encode(str(self.resolve(arg)).encode()).decode()
        raise AssertionError(f"cannot resolve {value!r}")


def raw_user_data(template: dict[str, Any], logical_id: str, resolver: Resolver | None = None) -> str:
    """The user data of a launch template as EC2 receives it (before the transport base64).  Share
    one resolver between calls when the values must agree across them (ENI addresses)."""
    encoded = template["Resources"][logical_id]["Properties"]["LaunchTemplateData"]["UserData"]
    assert set(encoded) == {"Fn::Base64"}
    text: str = (resolver or Resolver(template)).resolve(encoded["Fn::Base64"])
    return text


def heredoc(text: str, marker: str) -> str:
    """What user data writes between `<<'MARKER'` and `MARKER`."""
    start = text.index(f"<<'{marker}'\n") + len(marker) + 5
    end = text.index(f"\n{marker}\n", start)
    return text[start:end]


def documents_resource(template: dict[str, Any]) -> dict[str, Any]:
    """The one custom resource that writes the nodes' documents."""
    (resource,) = [v for v in template["Resources"].values() if v["Type"] == DOCUMENTS_TYPE]
    return resource


def node_documents(template: dict[str, Any], stack_id: str = STACK_ID) -> dict[str, dict[str, Any]]:
    """Each node's config document (intrinsics resolved) as the documents' custom resource writes
    it to S3 in the stack instance `stack_id`, by the logical ID of the node's launch template."""
    resolver = Resolver(template, stack_id)
    documents = {n["Name"]: json.loads(resolver.resolve(n["Document"]))
                 for n in documents_resource(template)["Properties"]["Nodes"]}
    by_template = {}
    for logical_id in launch_template_ids(template):
        (name,) = [n for n in documents if f"Node{n.upper()}LaunchTemplate" in logical_id]
        by_template[logical_id] = documents[name]
    return by_template


def of_type(template: dict[str, Any], rtype: str) -> list[str]:
    """The logical IDs of the resources of one type, sorted (node a's before node b's)."""
    return sorted(k for k, v in template["Resources"].items() if v["Type"] == rtype)


def launch_template_ids(template: dict[str, Any]) -> list[str]:
    return of_type(template, "AWS::EC2::LaunchTemplate")


def group_ids(template: dict[str, Any]) -> list[str]:
    return of_type(template, "AWS::AutoScaling::AutoScalingGroup")
