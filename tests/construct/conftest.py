"""Fixtures for the construct tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk import App, Stack
from aws_cdk.assertions import Template
from template_tools import PLACEHOLDER_ENV, new_app, new_stack, repo_context

from haproxy_ha.stack import HaproxyHaStack


@pytest.fixture(autouse=True)
def _no_ambient_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Synthesis never needs AWS: make sure no ambient account, region or profile leaks in."""
    for var in ("CDK_DEFAULT_ACCOUNT", "CDK_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    yield


@pytest.fixture
def stack() -> Stack:
    """A fresh stack in the placeholder env, for one test."""
    return new_stack()


# Each synthesis costs a second or more of jsii and Node.js: what only reads the default app
# shares these, built once per session (per xdist worker).


@pytest.fixture(scope="session")
def default_app() -> tuple[App, Stack]:
    """The default app and its stack.  Read it; never add to it."""
    app = new_app()
    return app, HaproxyHaStack(app, "HaproxyHa", env=PLACEHOLDER_ENV)


@pytest.fixture(scope="session")
def app_template_json(default_app: tuple[App, Stack]) -> str:
    """The default app's template, synthesized once per session and handed out as immutable text."""
    return json.dumps(Template.from_stack(default_app[1]).to_json())


@pytest.fixture(scope="session")
def assembly(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default app synthesized into a cloud assembly folder of its own (as `cdk synth` does):
    a second synthesis of it, from a new app."""
    outdir = tmp_path_factory.mktemp("cdk.out")
    app = cdk.App(context=repo_context(), outdir=str(outdir), analytics_reporting=False)
    HaproxyHaStack(app, "HaproxyHa", env=PLACEHOLDER_ENV)
    app.synth()
    return outdir


@pytest.fixture
def app_template(app_template_json: str) -> Template:
    return Template.from_string(app_template_json)


@pytest.fixture
def app_doc(app_template_json: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(app_template_json)
    return doc


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under `--dist loadgroup` (pyproject's addopts) one xdist worker runs every construct test:
    the first synthesis in a process costs seconds of Node.js warming up, and the other worker
    then never pays it."""
    here = Path(__file__).parent
    for item in items:
        if item.path.is_relative_to(here):
            item.add_marker(pytest.mark.xdist_group("cdk"))
