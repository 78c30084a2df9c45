"""Fixtures for the construct tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from aws_cdk import Stack
from aws_cdk.assertions import Template
from template_tools import PLACEHOLDER_ENV, new_app, new_stack

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


@pytest.fixture(scope="session")
def app_template_json() -> str:
    """The default app's template, synthesized once per session and handed out as immutable text."""
    stack = HaproxyHaStack(new_app(), "HaproxyHa", env=PLACEHOLDER_ENV)
    return json.dumps(Template.from_stack(stack).to_json())


@pytest.fixture
def app_template(app_template_json: str) -> Template:
    return Template.from_string(app_template_json)


@pytest.fixture
def app_doc(app_template_json: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(app_template_json)
    return doc
