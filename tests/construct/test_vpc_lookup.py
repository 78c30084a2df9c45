"""The construct on a VPC from `Vpc.from_lookup`: the CDK's first pass hands it stand-in IDs, and
the pinned CDK CLI must get past that pass to the lookup (consumer_example/lookup/)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import App, Stack
from aws_cdk import aws_ec2 as ec2
from template_tools import REPO

from haproxy_ha import HaproxyHa, HaproxyHaPropsError
from haproxy_ha.validation import LOOKUP_PENDING_VPC_ID

LOOKUP_APP = REPO / "consumer_example" / "lookup"
CDK = REPO / "node_modules" / ".bin" / "cdk"
ENV = {"account": "123456789012", "region": "eu-west-1"}
VPC_ID = "vpc-0a1b2c3d4e5f60718"


def cdk_synth(app_dir: Path, out: Path) -> subprocess.CompletedProcess[str]:
    """The pinned CLI's `cdk synth`, with no way to AWS: no credentials, no instance metadata, no
    notices, no telemetry."""
    if not CDK.exists():
        pytest.fail(f"{CDK} is missing: scripts/setup installs the pinned CDK CLI")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=str(out / "no-config"),
               AWS_SHARED_CREDENTIALS_FILE=str(out / "no-credentials"), CDK_DISABLE_CLI_TELEMETRY="true",
               JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION="20")
    return subprocess.run(
        [str(CDK), "synth", "--quiet", "--no-notices", "--no-version-reporting", "-o", str(out / "cdk.out"),
         "--app", f"{sys.executable} app.py"],
        cwd=app_dir, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def lookup_app(tmp_path: Path) -> Path:
    app = tmp_path / "app"
    shutil.copytree(LOOKUP_APP, app)
    return app


@pytest.mark.xdist_group("cdk-cli")
def test_cdk_synth_without_context_reaches_the_lookup(lookup_app: Path, tmp_path: Path) -> None:
    (lookup_app / "cdk.context.json").unlink()
    proc = cdk_synth(lookup_app, tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "Traceback" not in output, output
    assert "Need to perform AWS calls for account 123456789012, but no credentials have been configured" in output
    # The first pass asked for the VPC: that is the lookup the CLI would now make.
    manifest = json.loads((tmp_path / "cdk.out" / "manifest.json").read_text())
    assert [m["props"]["filter"] for m in manifest["missing"] if m["provider"] == "vpc-provider"] == [
        {"vpc-id": VPC_ID}]


@pytest.mark.xdist_group("cdk-cli")
def test_cdk_synth_with_the_lookup_in_context_synthesizes(lookup_app: Path, tmp_path: Path) -> None:
    proc = cdk_synth(lookup_app, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = tmp_path / "cdk.out"
    template = json.loads((out / "HaproxyHaLookup.template.json").read_text())
    (routes,) = [r for r in template["Resources"].values() if r["Type"] == "Custom::HaproxyHaVipRoutes"]
    context = json.loads((lookup_app / "cdk.context.json").read_text())
    (looked_up,) = [v for k, v in context.items() if k.startswith("vpc-provider:")]
    tables = [s["routeTableId"] for g in looked_up["subnetGroups"] for s in g["subnets"]]
    assert routes["Properties"]["RouteTableIds"] == [*tables, "rtb-0c00000000000000a"]
    # Each node's preview is written too.
    (haproxy_cfg,) = out.glob("haproxy-ha/HaproxyHaLookup/Lb/a/haproxy.cfg")
    assert "10.20.10.11:8080" in haproxy_cfg.read_text()


def lookup_stack(context: dict[str, Any] | None = None) -> Stack:
    return Stack(App(context=context or {}, analytics_reporting=False), "Lk", env=ENV)


def test_a_pending_lookup_builds_on_the_stand_in_vpc() -> None:
    stack = lookup_stack()
    vpc = ec2.Vpc.from_lookup(stack, "Vpc", vpc_id=VPC_ID)
    assert vpc.vpc_id == LOOKUP_PENDING_VPC_ID  # the CDK's stand-in, which the construct recognises
    lb = HaproxyHa(stack, "Lb", vip="172.16.254.10", vpc=vpc)
    assert lb.route_table_ids == ("rtb-12345s", "rtb-67890s", "rtb-12345p", "rtb-57890p")


def test_a_vip_inside_the_stand_in_cidr_is_not_refused_before_the_lookup() -> None:
    # The stand-in's CIDR is 1.2.3.4/5 (0.0.0.0 to 7.255.255.255); only the real one counts.
    stack = lookup_stack()
    HaproxyHa(stack, "Lb", vip="6.6.6.6", vpc=ec2.Vpc.from_lookup(stack, "Vpc", vpc_id=VPC_ID))


def _looked_up(route_table_id: str, cidr: str = "10.20.0.0/16") -> dict[str, Any]:
    subnets = [{"subnetId": f"subnet-0b00000000000000{az}", "cidr": f"10.20.{i}.0/24",
                "availabilityZone": f"eu-west-1{az}", "routeTableId": route_table_id if i == 0 else
                f"rtb-0b00000000000000{az}"} for i, az in enumerate("ab")]
    key = (f"vpc-provider:account=123456789012:filter.vpc-id={VPC_ID}:region=eu-west-1:"
           "returnAsymmetricSubnets=true")
    return {key: {"vpcId": VPC_ID, "vpcCidrBlock": cidr, "ownerAccountId": "123456789012", "availabilityZones": [],
                  "subnetGroups": [{"name": "Private", "type": "Private", "subnets": subnets}]}}


def test_fails_when_a_looked_up_route_table_id_is_not_one() -> None:
    stack = lookup_stack(_looked_up("rtb-12345s"))
    with pytest.raises(HaproxyHaPropsError) as raised:
        HaproxyHa(stack, "Lb", vip="172.16.254.10", vpc=ec2.Vpc.from_lookup(stack, "Vpc", vpc_id=VPC_ID))
    assert raised.value.problems == [
        "route_table_ids[0]: got 'rtb-12345s'; allowed: a route table ID such as rtb-0123456789abcdef0"]


def test_fails_when_the_vip_lies_in_the_looked_up_cidr() -> None:
    stack = lookup_stack(_looked_up("rtb-0b00000000000000a", cidr="10.20.0.0/16"))
    with pytest.raises(HaproxyHaPropsError, match=r"lies inside the VPC CIDR 10\.20\.0\.0/16"):
        HaproxyHa(stack, "Lb", vip="10.20.254.10", vpc=ec2.Vpc.from_lookup(stack, "Vpc", vpc_id=VPC_ID))
