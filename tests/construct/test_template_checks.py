"""Whole-template checks on the default app: syrupy snapshot, cdk-nag AwsSolutions, cfn-lint."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import Validations
from cdk_nag import AwsSolutionsChecks
from syrupy.assertion import SnapshotAssertion
from syrupy.extensions.json import JSONSnapshotExtension
from template_tools import PLACEHOLDER_ENV, new_app

from haproxy_ha.stack import HaproxyHaStack

ASSET_HASH = re.compile(r"[0-9a-f]{64}")

# cfn-lint rules ignored on the synthesized template, each with its reason.  Empty: none is.
CFN_LINT_IGNORED: dict[str, str] = {}


def scrub(value: Any) -> Any:
    """Asset hashes change whenever the runtime or Lambda code changes; the snapshot is about the template."""
    if isinstance(value, str):
        return ASSET_HASH.sub("<asset-hash>", value)
    if isinstance(value, list):
        return [scrub(v) for v in value]
    if isinstance(value, dict):
        return {scrub(k): scrub(v) for k, v in value.items()}
    return value


@pytest.fixture
def snapshot_json(snapshot: SnapshotAssertion) -> SnapshotAssertion:
    return snapshot.use_extension(JSONSnapshotExtension)


def test_app_template_matches_snapshot(app_doc: dict[str, Any], snapshot_json: SnapshotAssertion) -> None:
    assert scrub(app_doc) == snapshot_json


def test_app_has_no_unacknowledged_cdk_nag_findings() -> None:
    app = new_app()
    stack = HaproxyHaStack(app, "HaproxyHa", env=PLACEHOLDER_ENV)
    report = AwsSolutionsChecks(app, verbose=True).validate_scope(stack)
    findings = [
        f"{v.rule_name} at {', '.join(r.construct_path for r in v.violating_resources)}: {v.description}"
        for v in report.violations
    ]
    assert report.success, "unacknowledged cdk-nag findings:\n" + "\n".join(findings)


def cfn_lint(template: Path) -> subprocess.CompletedProcess[str]:
    cli = Path(sys.executable).parent / "cfn-lint"
    args = [str(cli), "--format", "parseable"]
    for rule in CFN_LINT_IGNORED:
        args += ["--ignore-checks", rule]
    return subprocess.run([*args, "--", str(template)], capture_output=True, text=True, check=False)


def test_app_template_passes_cfn_lint(app_template_json: str, tmp_path: Path) -> None:
    template = tmp_path / "HaproxyHa.template.json"
    template.write_text(app_template_json)
    result = cfn_lint(template)
    # cfn-lint's exit code is a bit mask: 1 it failed to run, 2 errors, 4 warnings, 8 informational.
    # Warnings (W3005 on CDK's own DependsOn) are printed but do not fail the test; errors do.
    assert not result.returncode & 1, f"cfn-lint failed to run:\n{result.stderr}"
    assert not result.returncode & 2, f"cfn-lint errors:\n{result.stdout}{result.stderr}"

    # The same run on a broken copy must report an error, or the check above proves nothing.
    broken = json.loads(app_template_json)
    template_data = next(v["Properties"]["LaunchTemplateData"] for v in broken["Resources"].values()
                         if v["Type"] == "AWS::EC2::LaunchTemplate")
    template_data["MetadataOptions"]["HttpTokens"] = "sometimes"
    template.write_text(json.dumps(broken))
    assert cfn_lint(template).returncode & 2


def test_app_template_json_is_stable_across_synths(app_template_json: str) -> None:
    again = HaproxyHaStack(new_app(), "HaproxyHa", env=PLACEHOLDER_ENV)
    from aws_cdk.assertions import Template

    assert json.loads(app_template_json) == Template.from_stack(again).to_json()


def test_every_acknowledgment_matches_a_real_finding(monkeypatch: pytest.MonkeyPatch) -> None:
    """No stale acknowledgments: with them switched off, each acknowledged rule is actually reported."""
    acknowledged: dict[str, str] = {}

    def record(self: Validations, *rules: Any) -> None:
        for rule in rules:
            acknowledged[rule.id] = rule.reason

    monkeypatch.setattr(Validations, "acknowledge", record)
    app = new_app()
    stack = HaproxyHaStack(app, "HaproxyHa", env=PLACEHOLDER_ENV)
    report = AwsSolutionsChecks(app).validate_scope(stack)
    found = {v.rule_name for v in report.violations}
    # The construct does acknowledge findings: an empty set on both sides would mean the patch
    # above no longer sees them, and proves nothing.
    assert acknowledged
    assert set(acknowledged) == found
    assert all(len(reason) > 40 for reason in acknowledged.values())
