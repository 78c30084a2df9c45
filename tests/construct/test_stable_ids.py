"""An upgrade from a release keeps every stateful resource (DESIGN.md, "Stable IDs"). HEAD's
templates are diffed against each release's frozen ones (releases/<version>/, made by
scripts/freeze-release) with the CDK's own template diff. None may replace, destroy or orphan a
stateful resource unless CHANGELOG.md has a migration note for it."""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from template_tools import REPO

from tests.support.release_apps import STACKS, synthesize, template_path, write_template

RELEASES = REPO / "releases"
IMPACTS_SCRIPT = REPO / "tests" / "support" / "template_impacts.js"
DIFF_LIBRARY = REPO / "node_modules" / "@aws-cdk" / "cloudformation-diff"
# One diff takes about a second; the bound only stops a hung node from holding the suite.
NODE_TIMEOUT_S = 60

# What a deploy must not make anew: each holds state, or other resources (route targets, DNS
# answers, subnets) point at it. The two custom resources delete what they made (the VIP's
# routes, the nodes' documents) when CloudFormation deletes them.
STATEFUL_TYPES = frozenset({
    "AWS::EC2::NetworkInterface",
    "AWS::AutoScaling::AutoScalingGroup",
    "AWS::S3::Bucket",
    "AWS::Logs::LogGroup",
    "AWS::Route53::HostedZone",
    "AWS::EC2::VPC",
    "AWS::EC2::Subnet",
    "AWS::EC2::RouteTable",
    "AWS::EC2::InternetGateway",
    "AWS::EC2::VPCGatewayAttachment",
    "AWS::EC2::NatGateway",
    "AWS::EC2::EIP",
    "AWS::EC2::SubnetRouteTableAssociation",
    "AWS::EC2::Route",
    "AWS::EC2::VPCEndpoint",
    "Custom::HaproxyHaVipRoutes",
    "Custom::HaproxyHaNodeDocuments",
})
# The impacts (@aws-cdk/cloudformation-diff's ResourceImpact) that lose the deployed resource.
LOSING_IMPACTS = frozenset({"WILL_REPLACE", "MAY_REPLACE", "WILL_DESTROY", "WILL_ORPHAN"})

# Replacements that are meant: (stack, logical ID in the release) -> the CHANGELOG.md heading
# (its text, without the #s) of the migration note that tells users what to do about it.
_LOG_GROUPS_RENAMED = "Migration: the pair's log groups are new"
ALLOWED: dict[tuple[str, str], str] = {
    # The pair's four log groups: their names hold the stack's ID since 0.2.0, so that a stack
    # made again under its name never meets the groups an earlier one left behind.
    **{("HaproxyHa", logical_id): _LOG_GROUPS_RENAMED for logical_id in (
        "HaproxyHaObservabilityAgentLogsE00601AA", "HaproxyHaObservabilityMetricsLogsCC9A4E3C",
        "HaproxyHaObservabilityHaproxyLogs747F6CB4", "HaproxyHaObservabilityKeepalivedLogs60FCE6E0")},
    **{(stack, logical_id): _LOG_GROUPS_RENAMED for stack in ("HaproxyHaConsumer", "HaproxyHaDns")
       for logical_id in ("LbObservabilityAgentLogsC6047DB2", "LbObservabilityMetricsLogsA2837F90",
                          "LbObservabilityHaproxyLogs0B65809D", "LbObservabilityKeepalivedLogsC63DD407")},
}


@dataclass(frozen=True)
class Loss:
    """A stateful resource of the release that a deploy of HEAD would lose."""

    logical_id: str
    type: str
    impact: str


def releases() -> list[str]:
    """Every release in releases/index.json: the upgrades HEAD must keep working from."""
    return [r["version"] for r in json.loads((RELEASES / "index.json").read_text())]


def impacts(old: Path, new: Path) -> dict[str, dict[str, str]]:
    """What deploying template `new` over `old` does to each resource that changes, by the CDK's
    template diff (tests/support/template_impacts.js)."""
    if not DIFF_LIBRARY.is_dir():
        pytest.fail(f"{DIFF_LIBRARY} is missing: scripts/setup installs it (npm ci)", pytrace=False)
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: scripts/setup installs Node.js", pytrace=False)
    done = subprocess.run([node, str(IMPACTS_SCRIPT), str(old), str(new)], cwd=REPO,
                          capture_output=True, text=True, timeout=NODE_TIMEOUT_S, check=False)
    assert done.returncode == 0, f"template_impacts.js {old} {new} failed ({done.returncode}): {done.stderr}"
    found: dict[str, dict[str, str]] = json.loads(done.stdout)
    return found


def stateful_losses(stack: str, old: Path, new: Path) -> list[Loss]:
    """The stateful resources of template `old` that deploying `new` over it would replace, may
    replace, destroy or orphan, leaving out the ALLOWED ones."""
    old_resources = json.loads(old.read_text())["Resources"]
    losses = []
    for logical_id, change in sorted(impacts(old, new).items()):
        # The release's type is what is lost, even where the new template gives the ID another type.
        rtype = old_resources.get(logical_id, {}).get("Type", change["type"])
        if (rtype in STATEFUL_TYPES and change["impact"] in LOSING_IMPACTS
                and (stack, logical_id) not in ALLOWED):
            losses.append(Loss(logical_id, rtype, change["impact"]))
    return losses


def loss_report(version: str, stack: str, losses: list[Loss]) -> str:
    lines = [f"Upgrading stack {stack} from release {version} to this commit would lose stateful resources:"]
    lines += [f"  {loss.logical_id} ({loss.type}): {loss.impact}" for loss in losses]
    lines += [
        "A changed logical ID makes CloudFormation create a new resource and delete the old one, and",
        "some property changes (an ENI's subnet or address, a VPC's CIDR) replace it too (DESIGN.md,",
        "'Stable IDs'). Keep the logical ID (the construct's ID and path, or override_logical_id with",
        "the old ID) and such properties. If the replacement is meant, write a migration note under",
        "a heading in CHANGELOG.md, and add (stack, logical ID) with that heading to ALLOWED in",
        "tests/construct/test_stable_ids.py.",
    ]
    return "\n".join(lines)


def frozen(version: str, stack: str) -> Path:
    path = template_path(RELEASES / version, stack)
    if not path.is_file():
        pytest.fail(f"{path.relative_to(REPO)} is missing: run scripts/freeze-release {version}", pytrace=False)
    return path


@pytest.fixture(scope="module")
def head_template(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """This commit's template of a release_apps stack, written to a file. Each stack is
    synthesized once for the module, when a test first asks for it."""
    folder = tmp_path_factory.mktemp("head")

    @functools.cache
    def written(stack: str) -> Path:
        path = template_path(folder, stack)
        write_template(synthesize(stack, REPO), path)
        return path

    return written


@pytest.mark.parametrize(("version", "stack"), [(v, s) for v in releases() for s in STACKS])
def test_an_upgrade_from_a_release_keeps_every_stateful_resource(
        version: str, stack: str, head_template: Callable[[str], Path]) -> None:
    losses = stateful_losses(stack, frozen(version, stack), head_template(stack))
    assert not losses, loss_report(version, stack, losses)


def test_the_checker_reports_a_renamed_eni_as_destroyed(tmp_path: Path) -> None:
    """A renamed ENI (its construct ID changed, so its logical ID did) fails the check."""
    version = releases()[0]
    old = frozen(version, "HaproxyHa")
    text = old.read_text()
    eni = next(k for k, v in sorted(json.loads(text)["Resources"].items())
               if v["Type"] == "AWS::EC2::NetworkInterface" and ("HaproxyHa", k) not in ALLOWED)
    renamed = tmp_path / "renamed.template.json"
    # Everywhere: the resource's key and every Ref, GetAtt and DependsOn that names it.
    renamed.write_text(re.sub(rf"\b{eni}\b", "HaproxyHaNodeARenamedEni0000000", text))
    losses = stateful_losses("HaproxyHa", old, renamed)
    # Only the ENI: what merely refers to it (the launch template, the routes' custom resource) updates.
    assert losses == [Loss(eni, "AWS::EC2::NetworkInterface", "WILL_DESTROY")]
    report = loss_report(version, "HaproxyHa", losses)
    assert f"{eni} (AWS::EC2::NetworkInterface): WILL_DESTROY" in report
    assert "CHANGELOG.md" in report and "ALLOWED" in report


def test_every_allowed_replacement_has_its_migration_note_in_the_changelog() -> None:
    headings = {m.group(1).strip() for m in re.finditer(r"^#+\s+(.+)$", (REPO / "CHANGELOG.md").read_text(), re.M)}
    missing = {key: heading for key, heading in ALLOWED.items() if heading not in headings}
    assert not missing, f"ALLOWED entries whose CHANGELOG.md heading does not exist: {missing}"
    unknown = sorted({stack for stack, _ in ALLOWED} - set(STACKS))
    assert not unknown, f"ALLOWED names stacks that tests/support/release_apps.py does not build: {unknown}"


def test_each_frozen_template_is_a_stack_that_head_builds() -> None:
    stale = sorted(str(p.relative_to(REPO)) for v in releases() for p in (RELEASES / v).glob("*.template.json")
                   if p.name.removesuffix(".template.json") not in STACKS)
    assert not stale, f"frozen templates of stacks that tests/support/release_apps.py no longer builds: {stale}"


def test_the_frozen_templates_hold_the_stateful_parts_they_guard() -> None:
    """Each stack freezes the parts only it has: the default app its VPC, the consumer its
    routes in a caller's tables, the dns_name pair its hosted zone."""
    version = releases()[0]
    types = {stack: {r["Type"] for r in json.loads(frozen(version, stack).read_text())["Resources"].values()}
             for stack in STACKS}
    assert {"AWS::EC2::VPC", "AWS::EC2::NatGateway", "Custom::HaproxyHaVipRoutes"} <= types["HaproxyHa"]
    assert "AWS::EC2::VPC" not in types["HaproxyHaConsumer"]
    assert "Custom::HaproxyHaVipRoutes" in types["HaproxyHaConsumer"]
    assert "AWS::Route53::HostedZone" in types["HaproxyHaDns"]
