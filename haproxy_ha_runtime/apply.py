"""Put a document's configuration in place only once the real binaries accept it: render to
temporary files beside the live ones, check them with `haproxy -c` and `keepalived -t`, and only
then swap them in.  A refused document leaves the live files as they were."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

from .config import NodeConfig
from .files import read_text, write_atomically
from .render import render_haproxy, render_keepalived


class CheckFailed(RuntimeError):
    """A binary refused a rendered file.  The live files were not touched."""

    def __init__(self, binary: str, path: str, output: str) -> None:
        self.binary = binary
        self.output = output.strip()
        super().__init__(f"{binary} refused the rendered {path}: {self.output[-1500:]}")


@dataclass(frozen=True)
class Applied:
    """Which live files changed (their programs need a reload only then)."""

    haproxy_changed: bool
    keepalived_changed: bool


def _check(argv: list[str], binary: str, path: str) -> None:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except FileNotFoundError as e:
        raise CheckFailed(binary, path, f"{argv[0]} is not installed") from e
    if proc.returncode != 0:
        raise CheckFailed(binary, path, proc.stdout + proc.stderr)


def apply_config(cfg: NodeConfig, source: str, haproxy: str = "haproxy", keepalived: str = "keepalived",
                 left_out: Mapping[str, str] | None = None) -> Applied:
    """Render, check with the real binaries, then swap in the files that changed.  Raises
    CheckFailed (nothing swapped) when a binary refuses its file.  `left_out`: the TLS listeners
    with no certificate to serve, and why (tls.TlsStore.left_out)."""
    # keepalived 2.3 drops a track file whose folder is missing, and HAProxy's socket lives here.
    os.makedirs(cfg.paths.run_dir, mode=0o755, exist_ok=True)
    texts = {
        cfg.paths.haproxy_conf: render_haproxy(cfg, source, left_out),
        cfg.paths.keepalived_conf: render_keepalived(cfg, source),
    }
    candidates = {path: path + ".haproxy-ha-new" for path in texts}
    try:
        for path, text in texts.items():
            write_atomically(candidates[path], text)
        _check([haproxy, "-c", "-f", candidates[cfg.paths.haproxy_conf]], "haproxy", cfg.paths.haproxy_conf)
        _check([keepalived, "-t", "-l", "-n", "-f", candidates[cfg.paths.keepalived_conf]], "keepalived",
               cfg.paths.keepalived_conf)
        changed = {path: read_text(path) != text for path, text in texts.items()}
        for path in texts:
            if changed[path]:
                os.replace(candidates[path], path)
        return Applied(haproxy_changed=changed[cfg.paths.haproxy_conf],
                       keepalived_changed=changed[cfg.paths.keepalived_conf])
    finally:
        for candidate in candidates.values():
            if os.path.exists(candidate):
                os.unlink(candidate)
