"""The project's earlier releases, as their own code (never a copy of it): releases/index.json names
each release's commit, `release_tree` extracts that commit's files once (`git archive`), and
`run_release_python` runs Python with that tree's packages first on the path.  The repository's
history must be there, as it is in a clone (CI's included)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
INDEX = REPO / "releases" / "index.json"
CACHE = Path(os.environ.get("HAPROXY_HA_RELEASES_CACHE", Path(tempfile.gettempdir()) / "haproxy-ha-releases"))


def releases() -> list[dict[str, Any]]:
    """Every recorded release, oldest first."""
    recorded: list[dict[str, Any]] = json.loads(INDEX.read_text())
    return recorded


def previous_release() -> dict[str, Any]:
    """The newest recorded release: the one this checkout upgrades from."""
    return releases()[-1]


def release_tree(release: dict[str, Any]) -> Path:
    """The release's files, extracted from its commit into the cache (once; safe for parallel callers)."""
    commit = str(release["commit"])
    tree = CACHE / commit
    if (tree / "haproxy_ha_runtime").is_dir():
        return tree
    CACHE.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"{commit[:8]}.", dir=CACHE))
    try:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", commit],
                                 capture_output=True, timeout=120, check=False)
        if archive.returncode != 0:
            raise RuntimeError(f"git archive {commit} (release {release['version']}) failed: "
                               f"{archive.stderr.decode(errors='replace').strip()}; the upgrade tests need the "
                               "repository's history (a clone has it)")
        subprocess.run(["tar", "-x", "-C", str(scratch)], input=archive.stdout, check=True, timeout=120)
        try:
            scratch.rename(tree)
        except OSError:  # another worker got there first
            if not (tree / "haproxy_ha_runtime").is_dir():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return tree


# Refuses to run unless the release's own package is the one imported (the checkout's is
# installed in the same interpreter, editable).
_PRELUDE = """
import sys, haproxy_ha_runtime
assert haproxy_ha_runtime.__file__.startswith({tree!r}), haproxy_ha_runtime.__file__
"""


def release_env(release: dict[str, Any], base: dict[str, str] | None = None) -> dict[str, str]:
    """`base` (this process's environment by default) with the release's tree first on the path."""
    return {**(os.environ if base is None else base), "PYTHONPATH": str(release_tree(release)),
            "PYTHONDONTWRITEBYTECODE": "1"}


def run_release_python(release: dict[str, Any], code: str, stdin: str = "", timeout: float = 60,
                       prefix: tuple[str, ...] = (), env: dict[str, str] | None = None
                       ) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter whose `haproxy_ha_runtime` (and the rest) is the release's;
    `prefix` goes before the interpreter (e.g. `ip netns exec NS`), `env` is the base environment."""
    tree = release_tree(release)
    return subprocess.run([*prefix, sys.executable, "-c", _PRELUDE.format(tree=str(tree)) + code], input=stdin,
                          env=release_env(release, env), capture_output=True, text=True, timeout=timeout, cwd=tree,
                          check=False)
