"""Start a loopback service as its own process and wait until it answers; stop it by PID."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path


def start(cmd: Sequence[str], probe_url: str, what: str, env: Mapping[str, str] | None = None,
          cwd: Path | None = None, timeout_s: float = 20.0) -> subprocess.Popen[bytes]:
    """Run `cmd`; return once `probe_url` answers, or stop it and raise after `timeout_s`."""
    proc = subprocess.Popen(list(cmd), env=dict(env) if env is not None else None, cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(probe_url, timeout=1).close()
            return proc
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                stop(proc)
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 5 s."""
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
