"""What a node says about the code it runs, wherever it reports itself (GET /state, its state
record, its status object): its runtime's release and the document schema it reads.  (Not the
document's `release`, which names the construct release that wrote the document.)

`haproxy-ha status` reads the two keys back from each node's status object.  Python 3.9, no CDK.
"""

from __future__ import annotations

from typing import Any

from .config import SCHEMA_VERSION
from .version import __version__

# The keys a report carries them under.
RUNTIME = "runtime"
SCHEMA = "schema"


# A report without them was written by release 0.1.0, which read schema 1 only: 0.1.0 is the first
# release (releases/index.json), and every release after it reports both.
FIRST_RELEASE = "0.1.0"
FIRST_RELEASE_SCHEMA = 1


def reported() -> dict[str, Any]:
    """This runtime's release and document schema, under their keys."""
    return {RUNTIME: __version__, SCHEMA: SCHEMA_VERSION}


def reported_schema(report: dict[str, Any]) -> int | None:
    """The document schema a node's report says it reads; None when it says none, or not a number."""
    schema = report.get(SCHEMA)
    return schema if isinstance(schema, int) and not isinstance(schema, bool) else None
