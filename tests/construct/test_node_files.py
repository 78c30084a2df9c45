"""The files the construct ships to the nodes and the Lambda: boot script, systemd units, asset folders."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from template_tools import REPO

from haproxy_ha.assets import (
    AFTER_BOOT_PATH,
    BOOT_ENV_PATH,
    BOOT_UNIT,
    FETCH_SCRIPT,
    USER_DATA_FILES,
    lambda_code_dir,
    node_files_dir,
)

USERDATA = REPO / "userdata"


def need(binary: str) -> str:
    """The binary's path; a missing binary skips the test only outside CI (scripts/setup installs them)."""
    path = shutil.which(binary)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{binary} is not installed; CI must have it (scripts/setup installs it)")
        pytest.skip(f"{binary} is not installed here and CI is unset; scripts/setup installs it")
    return path


@pytest.mark.parametrize("script", ["boot.sh", FETCH_SCRIPT])
def test_boot_scripts_parse_with_bash(script: str) -> None:
    subprocess.run([need("bash"), "-n", str(USERDATA / script)], check=True)


@pytest.mark.parametrize("script", ["boot.sh", FETCH_SCRIPT])
def test_boot_scripts_pass_shellcheck(script: str) -> None:
    result = subprocess.run([need("shellcheck"), "--severity=style", str(USERDATA / script)],
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
    # User data writes these itself: they fetch this asset.
    assert not set(USER_DATA_FILES) & names


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


# --- the boot unit and the fetch: what user data writes, so that systemd retries the boot --------

def boot_unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    # Repeated ExecStart= lines are kept, one per line, in order.
    text = (USERDATA / BOOT_UNIT).read_text()
    starts = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    parser.read_string("\n".join(line for line in text.splitlines() if not line.startswith("ExecStart=")))
    parser.set("Service", "ExecStart", "\n".join(line.removeprefix("ExecStart=") for line in starts))
    return parser


def test_boot_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = need("systemd-analyze")
    shutil.copy(USERDATA / BOOT_UNIT, tmp_path / BOOT_UNIT)
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{tmp_path}:"}
    result = subprocess.run([analyze, "verify", str(tmp_path / BOOT_UNIT)],
                            capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0 and not result.stderr.strip() and not result.stdout.strip(), result.stderr
    # The same check refuses what systemd would refuse: a oneshot that restarts always.
    (tmp_path / BOOT_UNIT).write_text((USERDATA / BOOT_UNIT).read_text().replace(
        "Restart=on-failure", "Restart=always"))
    refused = subprocess.run([analyze, "verify", str(tmp_path / BOOT_UNIT)],
                             capture_output=True, text=True, env=env, check=False)
    assert refused.returncode != 0 and "Restart=" in refused.stderr


def test_boot_unit_fetches_then_boots_then_runs_the_callers_commands_and_retries_with_a_limit() -> None:
    unit = boot_unit()
    assert unit.get("Service", "Type") == "oneshot" and unit.get("Service", "RemainAfterExit") == "yes"
    assert unit.get("Service", "ExecStart").splitlines() == [
        f"/usr/bin/bash {USER_DATA_FILES[FETCH_SCRIPT]}", "/usr/bin/bash /opt/haproxy-ha/boot.sh",
        f"/usr/bin/bash {AFTER_BOOT_PATH}"]
    assert unit.get("Service", "EnvironmentFile") == BOOT_ENV_PATH
    assert unit.get("Service", "Restart") == "on-failure" and unit.get("Service", "RestartSec") == "30s"
    # What a retry cannot mend: a refused document or render (2), a node that was not ready and
    # told CloudFormation so (4); tests/runtime/test_boot.py runs boot.sh into both.
    assert set(unit.get("Service", "RestartPreventExitStatus").split()) == {"2", "4"}
    assert int(unit.get("Unit", "StartLimitBurst")) == 5 and unit.get("Unit", "StartLimitIntervalSec") == "3h"
    assert unit.get("Service", "TimeoutStartSec") == "30min"
    assert "network-online.target" in unit.get("Unit", "After").split()
    assert unit.get("Install", "WantedBy") == "multi-user.target"


@pytest.fixture
def fetch_env(tmp_path: Path) -> dict[str, str]:
    """A scratch root, a node files zip, a document, and an `aws` that fails as often as FAIL_TIMES says,
    then copies the zip or the document (whichever the URL names)."""
    payload = tmp_path / "payload"
    (payload / "haproxy_ha_runtime").mkdir(parents=True)
    (payload / "boot.sh").write_text("echo new boot\n")
    (payload / "haproxy_ha_runtime" / "__init__.py").write_text("")
    zip_path = tmp_path / "node-files.zip"
    shutil.make_archive(str(zip_path.with_suffix("")), "zip", payload)
    (tmp_path / "node.json").write_text('{"node_name": "a"}\n')
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    (stubs / "aws").write_text(f"""#!/bin/bash
echo "aws $*" >> "{tmp_path}/aws.log"
count=$(wc -l < "{tmp_path}/aws.log")
if [ "$count" -le "${{FAIL_TIMES:-0}}" ]; then echo "fetch failed" >&2; exit 1; fi
case "${{@: -2:1}}" in *.zip) cp "{zip_path}" "${{@: -1}}" ;; *) cp "{tmp_path}/node.json" "${{@: -1}}" ;; esac
""")
    (stubs / "aws").chmod(0o755)
    (stubs / "python3").write_text(f'#!/bin/bash\nexec "{sys.executable}" "$@"\n')
    (stubs / "python3").chmod(0o755)
    root = tmp_path / "root"
    (root / "opt" / "haproxy-ha").mkdir(parents=True)
    (root / "opt" / "haproxy-ha" / "boot.sh").write_text("echo old boot\n")
    return {"PATH": f"{stubs}:{os.environ['PATH']}", "HAPROXY_HA_ROOT": str(root), "HAPROXY_HA_FETCH_DELAY_S": "0",
            "NODE_FILES_URL": "s3://bucket/abc.zip", "NODE_CONFIG_URL": "s3://docs/nodes/a/node.json",
            "AWS_REGION": "eu-west-1", "LOG": str(tmp_path / "aws.log")}


def run_fetch(env: dict[str, str], **more: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([need("bash"), str(USERDATA / FETCH_SCRIPT)], env={**env, **more}, capture_output=True,
                          text=True, timeout=60, check=False)


def test_fetch_retries_until_s3_answers_then_swaps_in_the_node_files_and_the_document(
        fetch_env: dict[str, str]) -> None:
    result = run_fetch(fetch_env, FAIL_TIMES="2")
    assert result.returncode == 0, result.stderr
    calls = Path(fetch_env["LOG"]).read_text().splitlines()
    root = fetch_env["HAPROXY_HA_ROOT"]
    assert calls == ["aws s3 cp --only-show-errors --region eu-west-1 s3://bucket/abc.zip "
                     f"{root}/var/lib/haproxy-ha/node-files.zip.part"] * 3 + [
                     "aws s3 cp --only-show-errors --region eu-west-1 s3://docs/nodes/a/node.json "
                     f"{root}/etc/haproxy-ha/node.json.part"]
    assert Path(root, "etc", "haproxy-ha", "node.json").read_text() == '{"node_name": "a"}\n'
    assert "try 1 of 5" in result.stderr and "try 2 of 5" in result.stderr
    files = Path(fetch_env["HAPROXY_HA_ROOT"]) / "opt" / "haproxy-ha"
    assert (files / "boot.sh").read_text() == "echo new boot\n"
    assert (files / "haproxy_ha_runtime" / "__init__.py").exists()
    assert not (files.parent / "haproxy-ha.new").exists()


def test_fetch_gives_up_after_its_tries_and_leaves_the_last_node_files(fetch_env: dict[str, str]) -> None:
    result = run_fetch(fetch_env, FAIL_TIMES="99")
    assert result.returncode == 1
    assert len(Path(fetch_env["LOG"]).read_text().splitlines()) == 5
    assert "could not fetch s3://bucket/abc.zip after 5 tries" in result.stderr
    files = Path(fetch_env["HAPROXY_HA_ROOT"]) / "opt" / "haproxy-ha"
    assert (files / "boot.sh").read_text() == "echo old boot\n"


@pytest.mark.parametrize("url", ["NODE_FILES_URL", "NODE_CONFIG_URL"])
def test_fetch_refuses_to_run_without_the_urls_it_fetches(fetch_env: dict[str, str], url: str) -> None:
    env = {k: v for k, v in fetch_env.items() if k != url}
    result = run_fetch(env)
    assert result.returncode != 0 and f"{url} (" in result.stderr
    assert not Path(fetch_env["LOG"]).exists()
