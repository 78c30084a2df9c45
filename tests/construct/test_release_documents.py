"""The documents the previous release's construct wrote (in its frozen templates, releases/<version>/)
against this release: this release reads them, and what this release's writer hands a node of the
previous release for the same stack is that release's own document, field for field."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from template_tools import REPO, node_documents

from haproxy_ha_runtime import config, document_keys
from haproxy_ha_runtime.config import downgrade, parse_config
from tests.support.release_apps import STACKS, synthesize, template_path
from tests.support.releases import previous_release

FROZEN = REPO / "releases" / str(previous_release()["version"])
# Fields whose change an upgrade from the previous release means, each with its CHANGELOG.md note.
MEANT: dict[str, Callable[[str, str], bool]] = {
    # "Migration: the pair's log groups are new": the prefix holds the stack instance since 0.2.0.
    # A node of 0.1.0 restarts its agent on it (not a field it takes live), and goes on shipping to
    # the old groups until it is replaced (its CloudWatch agent's config is rendered at boot).
    # Drop it once 0.1.0 is no longer the previous release.
    "log_group_prefix": lambda old, new: re.fullmatch(re.escape(old) + "/[0-9a-f]{8}", new) is not None,
}


def by_node(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {doc["node_name"]: doc for doc in node_documents(template).values()}


@pytest.fixture(scope="module", params=sorted(STACKS))
def stack(request: pytest.FixtureRequest) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """The previous release's documents and this release's, node by node, for one stack."""
    name = str(request.param)
    previous = json.loads(template_path(FROZEN, name).read_text())
    return by_node(previous), by_node(synthesize(name, REPO))


def test_this_release_reads_what_the_previous_releases_construct_wrote(
        stack: tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]) -> None:
    previous, _ = stack
    assert sorted(previous) == ["a", "b"]
    for doc in previous.values():
        assert doc["version"] == previous_release()["schema"]
        parse_config(doc, "the previous release's document")


def test_an_older_node_is_handed_its_own_releases_document_for_the_same_stack(
        stack: tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]) -> None:
    previous, now = stack
    for node, doc in now.items():
        assert doc["version"] == config.SCHEMA_VERSION
        handed = downgrade(doc, int(previous_release()["schema"]))
        # What the writer also does: name the key the older node polls.
        handed["config_key"] = document_keys.document_key(node, int(previous_release()["schema"]))
        differing = {k for k in set(handed) | set(previous[node]) if handed.get(k) != previous[node].get(k)}
        assert differing <= set(MEANT), sorted(differing - set(MEANT))
        for key in differing:
            assert MEANT[key](previous[node][key], handed[key]), (key, previous[node][key], handed[key])
