"""Where a node's documents and status object live in the documents bucket, one key per schema.

The writer keeps one document for every schema a running node may read (config.SCHEMA_VERSION and
the one before), so that during an upgrade a node of release N-1 is never handed a document it must
refuse, and during a rollback a node of release N follows what release N-1 wrote:

- schema 1 (release 0.1.0) is at ``nodes/<node>/node.json``; each later schema S at
  ``nodes/<node>/node.v<S>.json``;
- every document the writer puts carries two S3 metadata entries: the generation of the write (one
  token for all of a deploy's documents of a node) and the newest schema that write holds;
- a node watches its own schema's key and the one before ("legacy"), and follows (``choose``):
  the legacy key when an older writer wrote it last (its writer schema is older than the node's,
  or absent: release 0.1.0 sets none); otherwise its own key, once that carries the same
  generation (until then a write is under way, and the node keeps what it has).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .config import OLDEST_READ_SCHEMA, SCHEMA_VERSION

STATUS_KEY = "nodes/{node}/status.json"
# S3 user metadata (x-amz-meta-...), as boto3 hands it back: lower case.
GENERATION = "haproxy-ha-generation"
WRITER_SCHEMA = "haproxy-ha-writer-schema"

_KEY_RE = re.compile(r"^(?P<folder>.+)/node(?:\.v(?P<schema>[0-9]+))?\.json$")


def document_key(node: str, schema: int = SCHEMA_VERSION) -> str:
    """The key of node `node`'s document of `schema` in the construct's bucket."""
    return key_in(f"nodes/{node}", schema)


def key_in(folder: str, schema: int) -> str:
    """The key of the document of `schema` in `folder`."""
    return f"{folder}/node.json" if schema == 1 else f"{folder}/node.v{schema}.json"


def schema_of(key: str) -> int | None:
    """The schema whose document `key` holds by the naming above; None for a key not so named."""
    m = _KEY_RE.match(key)
    if m is None:
        return None
    return int(m.group("schema")) if m.group("schema") else 1


def own_key(key: str) -> str:
    """The key of this node's schema beside `key` (a document key of any schema); `key` itself
    when it is not named as above (a document at a key of its own, as in the lab)."""
    m = _KEY_RE.match(key)
    return key_in(m.group("folder"), SCHEMA_VERSION) if m else key


def older_key(key: str) -> str | None:
    """The key of the schema before `key`'s, beside it; None when there is none that a node reads."""
    m = _KEY_RE.match(key)
    schema = schema_of(key)
    if m is None or schema is None or schema - 1 < OLDEST_READ_SCHEMA:
        return None
    return key_in(m.group("folder"), schema - 1)


def written_keys(key: str) -> list[str]:
    """The keys a write of the document at `key` puts: the schema before's, if a node reads it,
    and `key`; a delete removes both."""
    older = older_key(key)
    return ([older] if older is not None else []) + [key]


def legacy_key(key: str) -> str | None:
    """The key of the schema before this node's, beside `key`; None when there is none."""
    return older_key(own_key(key))


@dataclass(frozen=True)
class Seen:
    """What a node saw of one document key: its ETag and the writer's metadata (None: absent)."""

    etag: str
    generation: str | None = None
    writer_schema: int | None = None


def seen(etag: str, metadata: dict[str, str]) -> Seen:
    """A key's ETag and its S3 metadata, as a node reads them."""
    raw = metadata.get(WRITER_SCHEMA)
    try:
        writer_schema = int(raw) if raw is not None else None
    except ValueError:
        writer_schema = None
    return Seen(etag.strip('"'), metadata.get(GENERATION), writer_schema)


def writer_metadata(generation: str, writer_schema: int) -> dict[str, str]:
    """The metadata the writer puts on each document of one write."""
    return {GENERATION: generation, WRITER_SCHEMA: str(writer_schema)}


LEGACY = "legacy"
OWN = "own"


def choose(legacy: Seen | None, own: Seen | None) -> str | None:
    """Which key a node follows: LEGACY, OWN, or None while a write is under way (or neither can
    be read).  `legacy` and `own` are what the node sees now (None: absent or unreadable)."""
    if legacy is None:
        return OWN if own is not None else None
    if legacy.writer_schema is None or legacy.writer_schema < SCHEMA_VERSION:
        return LEGACY
    if own is not None and own.generation == legacy.generation:
        return OWN
    return None
