"""Reading and writing the node's own files (rendered configs, keepalived's track file, the agent's
event and metric logs) safely."""

from __future__ import annotations

import os
import tempfile
import threading


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


class LineFile:
    """Appends whole lines to a file, from any thread.  At `max_bytes` it renames the file to
    PATH.1 (replacing the one before) and starts a new one: the CloudWatch agent follows a file
    renamed that way, and the node's disk holds at most twice `max_bytes`."""

    def __init__(self, path: str, max_bytes: int = 10 * 1024 * 1024) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    def write(self, text: str) -> None:
        """Append `text` and a newline.  An error (a full disk, say) is raised to the caller."""
        data = (text.rstrip("\n") + "\n").encode()
        with self._lock:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            try:
                size = os.path.getsize(self.path)
            except OSError:
                size = 0
            if size and size + len(data) > self.max_bytes:
                os.replace(self.path, self.path + ".1")
            # Opened for each line, so that nothing is held when the file is renamed.
            with open(self.path, "ab") as f:
                f.write(data)
