"""Structured logging for the node agent and the Lambda: one JSON line per event."""

from __future__ import annotations

import json
import sys
import time
from typing import IO, Any


def log_event(event: str, stream: IO[str] | None = None, **fields: Any) -> None:
    """One structured line per event, to stdout (the journal, under systemd; CloudWatch, in the Lambda)."""
    record: dict[str, Any] = {"ts": round(time.time(), 3), "event": event}
    record.update(fields)
    out = stream if stream is not None else sys.stdout
    out.write(json.dumps(record, sort_keys=False, default=str) + "\n")
    out.flush()
