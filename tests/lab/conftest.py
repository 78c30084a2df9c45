"""Fixtures for the lab scenarios: a lab per test, torn down by PID and namespace name, with the
checks that must hold after every scenario."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from .lab import Lab, LabOptions
from .topology import lab_namespaces


def missing_prerequisites() -> list[str]:
    missing = []
    if os.geteuid() != 0:
        missing.append("root (network namespaces)")
    for tool in ("ip", "sysctl", "haproxy", "keepalived"):
        if shutil.which(tool) is None:
            missing.append(tool)
    if not Path(sys.executable).with_name("moto_server").exists():
        missing.append("moto_server next to " + sys.executable)
    return missing


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.stash[_CALL_PASSED] = report.passed


_CALL_PASSED = pytest.StashKey[bool]()


@pytest.fixture
def make_lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Lab]]:
    """Build a lab with the given LabOptions fields.  After the test: every VIP route points at a
    node whose HAProxy is healthy and the tables agree (if the test itself passed), and no
    process or namespace is left (always)."""
    missing = missing_prerequisites()
    if missing:
        if os.environ.get("CI"):
            pytest.fail("the lab must run in CI, but it lacks: " + ", ".join(missing))
        pytest.skip("the lab needs " + ", ".join(missing) + " (skipped only outside CI)")
    labs: list[Lab] = []

    def make(**options: Any) -> Lab:
        lab = Lab(tmp_path / f"lab{len(labs)}", LabOptions(**options))
        labs.append(lab)
        print(f"lab files: {lab.workdir}")
        try:
            lab.start()
        except BaseException:
            lab.stop()
            raise
        return lab

    yield make
    for lab in labs:
        try:
            if request.node.stash.get(_CALL_PASSED, False):
                lab.check_converged()
        finally:
            problems = lab.stop()
        assert not problems, f"teardown left things behind: {problems}"
    assert not lab_namespaces(), f"lab namespaces left: {lab_namespaces()}"
