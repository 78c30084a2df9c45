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


def reported() -> dict[str, Any]:
    """This runtime's release and document schema, under their keys."""
    return {RUNTIME: __version__, SCHEMA: SCHEMA_VERSION}
