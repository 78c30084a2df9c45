"""The files the construct ships to the nodes and the Lambda: boot script, systemd units, asset folders."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from template_tools import REPO

from haproxy_ha.assets import lambda_code_dir, node_files_dir

USERDATA = REPO / "userdata"


def need(binary: str) -> str:
    """The binary's path; a missing binary skips the test only outside CI (scripts/setup installs them)."""
    path = shutil.which(binary)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{binary} is not installed; CI must have it (scripts/setup installs it)")
        pytest.skip(f"{binary} is not installed here and CI is unset; scripts/setup installs it")
    return path


def test_boot_script_parses_with_bash() -> None:
    subprocess.run([need("bash"), "-n", str(USERDATA / "boot.sh")], check=True)


def test_boot_script_passes_shellcheck() -> None:
    result = subprocess.run([need("shellcheck"), "--severity=style", str(USERDATA / "boot.sh")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = need("systemd-analyze")
    # A private unit path: the agent unit, keepalived with our drop-in, and stand-ins for the
    # distribution's haproxy and keepalived units (not installed here).
    stub = "[Unit]\nDescription=stand-in\n[Service]\nExecStart=/bin/true\n"
    (tmp_path / "haproxy.service").write_text(stub)
    (tmp_path / "keepalived.service").write_text(stub)
    (tmp_path / "keepalived.service.d").mkdir()
    shutil.copy(USERDATA / "keepalived-haproxy-ha.conf", tmp_path / "keepalived.service.d" / "haproxy-ha.conf")
    shutil.copy(USERDATA / "haproxy-ha-agent.service", tmp_path / "haproxy-ha-agent.service")
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{tmp_path}:"}
    result = subprocess.run(
        [analyze, "verify", str(tmp_path / "haproxy-ha-agent.service"), str(tmp_path / "keepalived.service")],
        capture_output=True, text=True, env=env, check=False)
    # verify exits 0 on unknown keys and bad dependencies, and only says so: any output is a finding.
    assert result.returncode == 0 and not result.stderr.strip() and not result.stdout.strip(), result.stderr


def test_agent_unit_runs_the_runtime_agent_and_always_restarts() -> None:
    unit = (USERDATA / "haproxy-ha-agent.service").read_text()
    assert ("ExecStart=/usr/bin/python3 -m haproxy_ha_runtime agent --config /etc/haproxy-ha/node.json"
            in unit.splitlines())
    for line in ("Restart=always", "After=network-online.target haproxy.service", "Wants=network-online.target",
                 "Environment=PYTHONPATH=/opt/haproxy-ha", "StartLimitIntervalSec=0"):
        assert line in unit.splitlines()


def test_node_files_asset_holds_boot_files_and_runtime() -> None:
    folder = node_files_dir()
    names = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert {"boot.sh", "haproxy-ha-agent.service", "keepalived-haproxy-ha.conf", "haproxy-ha-tmpfiles.conf",
            "haproxy_ha_runtime/__init__.py", "haproxy_ha_runtime/config.py"} <= names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)


def test_lambda_asset_holds_handler_modules_next_to_runtime() -> None:
    folder = lambda_code_dir()
    names = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert "haproxy_ha_runtime/config.py" in names
    lambda_modules = {p.name for p in (REPO / "lambda").glob("*.py")}
    assert lambda_modules <= names
    assert all(n.endswith(".py") for n in names)


def test_the_cli_and_the_runtime_do_not_load_the_cdk() -> None:
    code = ("import sys, haproxy_ha_cli.cli, haproxy_ha_runtime.__main__; "
            "assert 'aws_cdk' not in sys.modules, 'aws_cdk imported'; "
            "import haproxy_ha; assert 'aws_cdk' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO,
                   env={**os.environ, "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20"})
