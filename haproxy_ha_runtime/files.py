"""Reading and writing the node's own files (rendered configs, keepalived's track file) safely."""

from __future__ import annotations

import os
import tempfile


def read_text(path: str) -> str | None:
    """The text of the file at `path`, or None when it cannot be read (missing, say)."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return None


def write_atomically(path: str, text: str, mode: int = 0o644) -> None:
    """Write `text` to `path` so that a reader sees the old file or the new one, never half."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".haproxy-ha-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
