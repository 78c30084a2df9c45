"""Which document a node follows when two schemas' keys are written (document_keys.choose), and
how the keys are named."""

from __future__ import annotations

import pytest

from haproxy_ha_runtime import config, document_keys
from haproxy_ha_runtime.document_keys import LEGACY, OWN, Seen


def test_keys_are_named_per_schema_and_the_first_schema_keeps_its_name() -> None:
    assert config.SCHEMA_VERSION == 2  # this test names the keys of schema 2 and 1
    assert document_keys.document_key("a") == "nodes/a/node.v2.json"
    assert document_keys.document_key("a", 1) == "nodes/a/node.json"  # release 0.1.0's key
    assert document_keys.schema_of("nodes/a/node.v2.json") == 2
    assert document_keys.schema_of("nodes/a/node.json") == 1
    assert document_keys.schema_of("lab/a.json") is None


@pytest.mark.parametrize("named", ["nodes/a/node.json", "nodes/a/node.v2.json"])
def test_a_node_watches_its_own_schema_and_the_one_before_whichever_key_its_document_names(named: str) -> None:
    assert document_keys.own_key(named) == "nodes/a/node.v2.json"
    assert document_keys.legacy_key(named) == "nodes/a/node.json"


def test_a_key_not_named_by_schema_is_watched_alone() -> None:
    assert document_keys.own_key("lab/a.json") == "lab/a.json"
    assert document_keys.legacy_key("lab/a.json") is None
    assert document_keys.older_key("nodes/a/node.json") is None  # schema 1 is the oldest a node reads


def writes(generation: str, schema: int | None) -> Seen:
    return Seen(etag=f"etag-{generation}", generation=generation if schema is not None else None,
                writer_schema=schema)


@pytest.mark.parametrize(("legacy", "own", "follows"), [
    # Release 0.1.0 wrote the old key last (it sets no metadata): a rollback; follow it.
    (writes("g1", None), writes("g0", 2), LEGACY),
    (writes("g1", None), None, LEGACY),
    # A writer of the older schema (a rollback to a release that writes only schema 1).
    (writes("g1", 1), writes("g0", 2), LEGACY),
    # This release's writer wrote both: follow the own key once it holds the same write.
    (writes("g1", 2), writes("g1", 2), OWN),
    # ... and keep what the node has while the own key still holds the write before.
    (writes("g1", 2), writes("g0", 2), None),
    (writes("g1", 2), None, None),
    # No older key (a new stack whose document the older schema cannot carry), or none readable.
    (None, writes("g1", 2), OWN),
    (None, None, None),
])
def test_a_node_follows_the_newest_writer(legacy: Seen | None, own: Seen | None, follows: str | None) -> None:
    assert document_keys.choose(legacy, own) == follows


def test_the_metadata_a_node_reads_back_is_what_the_writer_put() -> None:
    metadata = document_keys.writer_metadata("req-7", 2)
    assert document_keys.seen('"abc"', metadata) == Seen("abc", "req-7", 2)
    assert document_keys.seen("abc", {}) == Seen("abc", None, None)
    assert document_keys.seen("abc", {document_keys.WRITER_SCHEMA: "two"}).writer_schema is None
