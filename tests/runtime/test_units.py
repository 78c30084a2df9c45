"""The systemd units and drop-ins the nodes run: verified by systemd-analyze, read as units (not
matched as strings), and the agent's readiness and watchdog pings against a stand-in NOTIFY_SOCKET."""

from __future__ import annotations

import configparser
import itertools
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from haproxy_ha.assets import USER_DATA_FILES
from haproxy_ha_runtime import agent, systemd
from haproxy_ha_runtime.config import parse_config
from tests.conftest import REPO, client_for, make_world, require
from tests.runtime.samples import doc
from tests.support.moto_server import free_port

USERDATA = REPO / "userdata"


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((USERDATA / name).read_text())
    return parser


def words(parser: configparser.ConfigParser, section: str, key: str) -> set[str]:
    return set(parser.get(section, key, fallback="").split())


def test_units_and_drop_ins_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    require("systemd-analyze (Debian package systemd)", analyze is not None)
    assert analyze is not None
    # Stand-ins for the distribution's haproxy and keepalived units (not installed here), with our drop-ins.
    stub = "[Unit]\nDescription=stand-in\n[Service]\nExecStart=/bin/true\n"
    for name, drop_in in (("haproxy", "haproxy-haproxy-ha.conf"), ("keepalived", "keepalived-haproxy-ha.conf")):
        (tmp_path / f"{name}.service").write_text(stub)
        (tmp_path / f"{name}.service.d").mkdir()
        shutil.copy(USERDATA / drop_in, tmp_path / f"{name}.service.d" / "haproxy-ha.conf")
    for name in ("haproxy-ha-agent.service", "haproxy-ha-boot.service", "haproxy-ha-boot-failed.service"):
        shutil.copy(USERDATA / name, tmp_path)
    names = ("haproxy-ha-agent", "keepalived", "haproxy", "haproxy-ha-boot", "haproxy-ha-boot-failed")
    result = subprocess.run(
        [analyze, "verify", *(str(tmp_path / f"{n}.service") for n in names)],
        capture_output=True, text=True, env={**os.environ, "SYSTEMD_UNIT_PATH": f"{tmp_path}:"}, check=False)
    # verify exits 0 on unknown keys and bad dependencies, and only says so: any output is a finding.
    assert result.returncode == 0 and not result.stderr.strip() and not result.stdout.strip(), result.stderr


def test_crashed_services_come_back_with_rate_limits() -> None:
    agent_unit = unit("haproxy-ha-agent.service")
    assert agent_unit.get("Service", "Restart") == "always"
    assert agent_unit.get("Unit", "StartLimitIntervalSec") == "0"  # the agent never gives up
    for drop_in in ("haproxy-haproxy-ha.conf", "keepalived-haproxy-ha.conf"):
        d = unit(drop_in)
        assert d.get("Service", "Restart") == "on-failure", drop_in
        assert int(d.get("Unit", "StartLimitBurst")) >= 3 and int(d.get("Unit", "StartLimitIntervalSec")) > 0


def test_a_boot_that_gives_up_for_good_asks_for_a_new_instance() -> None:
    boot = unit("haproxy-ha-boot.service")
    failed = unit("haproxy-ha-boot-failed.service")
    assert words(boot, "Unit", "OnFailure") == {"haproxy-ha-boot-failed.service"}
    # Retried first: OnFailure= runs only once the unit is failed, after the restarts.
    assert boot.get("Service", "Restart") == "on-failure" and int(boot.get("Unit", "StartLimitBurst")) > 1
    assert failed.get("Service", "Type") == "oneshot"
    assert failed.get("Service", "ExecStart").split() == ["/usr/bin/bash", USER_DATA_FILES["boot-failed.sh"]]
    assert failed.get("Service", "EnvironmentFile") == boot.get("Service", "EnvironmentFile")


def test_keepalived_starts_only_after_the_agent_is_ready_and_the_agent_after_haproxy() -> None:
    agent_unit = unit("haproxy-ha-agent.service")
    keepalived = unit("keepalived-haproxy-ha.conf")
    assert "haproxy-ha-agent.service" in words(keepalived, "Unit", "After")
    assert "haproxy-ha-agent.service" in words(keepalived, "Unit", "Wants")
    assert "keepalived.service" in words(agent_unit, "Unit", "Before")
    assert "haproxy.service" in words(agent_unit, "Unit", "After")
    # "After" the agent means after it is ready (it holds the FIFO) only for a notify service.
    assert agent_unit.get("Service", "Type") == "notify"
    assert int(agent_unit.get("Service", "WatchdogSec")) > 0


def test_notifier_does_nothing_outside_systemd() -> None:
    n = systemd.Notifier({})
    n.ready()
    n.ping()
    assert n.watchdog_s is None


def test_agent_says_ready_and_pings_the_watchdog(moto: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sock_path = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(sock_path)
    listener.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", sock_path)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # 1 s: a ping every 0.5 s
    world = make_world(client_for(moto), 1)
    cfg = parse_config(doc(eni_id=world.eni_a, route_table_ids=world.tables, profile="fast",
                           stats_port=free_port(), agent_port=free_port(), paths={"run_dir": str(tmp_path / "run")}))
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(cfg, world.client, world.eni_a, stop),
                              kwargs={"log": lambda *a, **k: None,
                                      "peer_address": lambda p: ("127.0.0.1", free_port())})
    thread.start()
    messages: list[tuple[float, str]] = []
    try:
        end = time.monotonic() + 5
        while time.monotonic() < end and sum(m == "WATCHDOG=1" for _, m in messages) < 3:
            messages.append((time.monotonic(), listener.recv(64).decode()))
    finally:
        stop.set()
        thread.join(10)
        listener.close()
    assert not thread.is_alive()
    assert messages[0][1] == "READY=1"
    pings = [t for t, m in messages if m == "WATCHDOG=1"]
    assert len(pings) >= 3
    # Pings come every half interval (0.5 s) from a loop that turns at least every 0.05 s: every
    # gap stays inside the 1 s after which systemd would restart the agent, with 0.45 s to spare.
    assert max(b - a for a, b in itertools.pairwise(pings)) < 1.0
