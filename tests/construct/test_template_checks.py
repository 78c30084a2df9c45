"""Whole-template checks on the default app: syrupy snapshot, cdk-nag AwsSolutions, cfn-lint."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import App, Stack, Validations
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


def test_app_has_no_unacknowledged_cdk_nag_findings(default_app: tuple[App, Stack], app_template_json: str) -> None:
    # The stack whose template the other tests check, always synthesized first (app_template_json),
    # as a deploy's policy validation sees it.
    app, stack = default_app
    report = AwsSolutionsChecks(app, verbose=True).validate_scope(stack)
    findings = [
        f"{v.rule_name} at {', '.join(r.construct_path for r in v.violating_resources)}: {v.description}"
        for v in report.violations
    ]
    assert report.success, "unacknowledged cdk-nag findings:\n" + "\n".join(findings)


def cfn_lint(*templates: Path) -> subprocess.CompletedProcess[str]:
    cli = Path(sys.executable).parent / "cfn-lint"
    args = [str(cli), "--format", "parseable"]
    for rule in CFN_LINT_IGNORED:
        args += ["--ignore-checks", rule]
    return subprocess.run([*args, "--", *map(str, templates)], capture_output=True, text=True, check=False)


def cfn_lint_errors(output: str) -> dict[str, list[str]]:
    """The error rules (E...) cfn-lint's parseable output names, by template path."""
    errors: dict[str, list[str]] = {}
    for line in output.splitlines():
        path, _l1, _c1, _l2, _c2, rule, _message = line.split(":", 6)
        if rule.startswith("E"):
            errors.setdefault(path, []).append(rule)
    return errors


def test_app_template_passes_cfn_lint(app_template_json: str, tmp_path: Path) -> None:
    template = tmp_path / "HaproxyHa.template.json"
    template.write_text(app_template_json)
    # A broken copy goes through the same run (one cfn-lint start, about 3 s of CPU, for both): it
    # must be reported, or a clean result for the real template proves nothing.
    broken = json.loads(app_template_json)
    template_data = next(v["Properties"]["LaunchTemplateData"] for v in broken["Resources"].values()
                         if v["Type"] == "AWS::EC2::LaunchTemplate")
    template_data["MetadataOptions"]["HttpTokens"] = "sometimes"
    broken_path = tmp_path / "Broken.template.json"
    broken_path.write_text(json.dumps(broken))
    result = cfn_lint(template, broken_path)
    # cfn-lint's exit code is a bit mask: 1 it failed to run, 2 errors, 4 warnings, 8 informational.
    # Warnings (W3005 on CDK's own DependsOn) are printed but do not fail the test; errors do.
    assert not result.returncode & 1, f"cfn-lint failed to run:\n{result.stderr}"
    errors = cfn_lint_errors(result.stdout)
    assert str(template) not in errors, f"cfn-lint errors:\n{result.stdout}{result.stderr}"
    assert errors == {str(broken_path): ["E3030"]} and result.returncode & 2, result.stdout


def test_app_template_json_is_stable_across_synths(app_template_json: str, assembly: Path) -> None:
    # Two apps, two syntheses (the other one writes a cloud assembly, as `cdk synth` does).
    again = json.loads((assembly / "HaproxyHa.template.json").read_text())
    assert json.loads(app_template_json) == again


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
