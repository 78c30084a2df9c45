"""The node refuses a boto3 older than the runtime needs, by name, in the commands that call AWS;
check, render and ship load no AWS SDK and are not held to it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import haproxy_ha_runtime.__main__ as node
from tests.runtime.samples import doc


@pytest.mark.parametrize(("version", "problem"), [
    ("1.26.0", None),
    ("1.34.12", None),
    ("2.0.0", None),
    ("1.25.99", "boto3: got 1.25.99; allowed: 1.26 or later (python3 -m pip install 'boto3>=1.26', or the "
                "distribution's newer python3-boto3)"),
    ("1.9.253", "boto3: got 1.9.253; allowed: 1.26 or later (python3 -m pip install 'boto3>=1.26', or the "
                "distribution's newer python3-boto3)"),
    ("unknown", "boto3: got version 'unknown'; allowed: a release such as 1.34.0"),
])
def test_the_boto3_floor(version: str, problem: str | None) -> None:
    assert node.boto3_problem(version) == problem


@pytest.mark.parametrize("command", ["agent", "ready"])
def test_the_commands_that_call_aws_refuse_an_old_boto3(
        command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "node.json"
    path.write_text(json.dumps(doc()))
    monkeypatch.setattr(node, "_boto3_version", lambda: "1.20.0")
    assert node.main([command, "--config", str(path)]) == 2
    assert capsys.readouterr().err == (
        "error: boto3: got 1.20.0; allowed: 1.26 or later (python3 -m pip install 'boto3>=1.26', or the "
        "distribution's newer python3-boto3)\n")


def test_check_is_not_held_to_the_floor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "node.json"
    path.write_text(json.dumps(doc()))
    monkeypatch.setattr(node, "_boto3_version", lambda: "1.20.0")
    assert node.main(["check", "--config", str(path)]) == 0
