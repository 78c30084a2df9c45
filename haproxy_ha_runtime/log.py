"""Structured logging for the node agent and the Lambda: one JSON line per event."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from typing import IO, Any, Callable

from .files import LineFile


def format_event(event: str, **fields: Any) -> str:
    """The JSON line of one event (no newline): its time, its name, then its fields."""
    record: dict[str, Any] = {"ts": round(time.time(), 3), "event": event}
    record.update(fields)
    return json.dumps(record, sort_keys=False, default=str)


def log_event(event: str, stream: IO[str] | None = None, **fields: Any) -> None:
    """One structured line per event, to stdout (the journal, under systemd; CloudWatch, in the Lambda)."""
    out = stream if stream is not None else sys.stdout
    out.write(format_event(event, **fields) + "\n")
    out.flush()


def logging_to(path: str) -> Callable[..., None]:
    """A `log_event` that also appends each line to the file at `path` (which the CloudWatch
    agent ships).  A line the file cannot take (a full disk) still reaches stdout."""
    events = LineFile(path)

    def log(event: str, **fields: Any) -> None:
        line = format_event(event, **fields)
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
        with contextlib.suppress(OSError):
            events.write(line)

    return log
