"""Finds the files the construct ships (node runtime, boot files, Lambda code) and stages them as asset folders."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import haproxy_ha_runtime

# Node files are installed to this folder on each node; the runtime package lands inside it.
NODE_FILES_DIR = "/opt/haproxy-ha"
# Where the boot saves the node's config document (fetched from S3, as the agent saves each new version).
NODE_CONFIG_PATH = "/etc/haproxy-ha/node.json"

# User data writes these files of userdata/ itself, rather than shipping them in the node files:
# they fetch the node files, or act when that failed.  Each maps to the path it is written to on
# the node.
BOOT_UNIT = "haproxy-ha-boot.service"
FETCH_SCRIPT = "fetch-node-files.sh"
USER_DATA_FILES: dict[str, str] = {
    BOOT_UNIT: "/etc/systemd/system/haproxy-ha-boot.service",
    FETCH_SCRIPT: "/usr/local/libexec/haproxy-ha/fetch-node-files.sh",
    "haproxy-ha-boot-failed.service": "/etc/systemd/system/haproxy-ha-boot-failed.service",
    "boot-failed.sh": "/usr/local/libexec/haproxy-ha/boot-failed.sh",
}
# What the boot unit reads besides those: the S3 URLs of the node files and of the node's
# document, and the region (an EnvironmentFile), and the commands callers add after boot.sh.
BOOT_ENV_PATH = "/etc/haproxy-ha/boot.env"
AFTER_BOOT_PATH = "/etc/haproxy-ha/after-boot.sh"

_PACKAGE_DIR = Path(__file__).resolve().parent
_REPO_DIR = _PACKAGE_DIR.parent


def _source_dir(installed_name: str, repo_name: str) -> Path:
    """A folder that ships inside the wheel as `haproxy_ha/<installed_name>`, or `<repo>/<repo_name>` in a checkout."""
    installed = _PACKAGE_DIR / installed_name
    return installed if installed.is_dir() else _REPO_DIR / repo_name


def lambda_source_dir() -> Path:
    """The route Lambda's source folder."""
    return _source_dir("lambda_src", "lambda")


def userdata_source_dir() -> Path:
    """The folder of boot.sh and the systemd units."""
    return _source_dir("userdata", "userdata")


def user_data_file(name: str) -> str:
    """The text of one of USER_DATA_FILES, as user data writes it."""
    if name not in USER_DATA_FILES:
        raise KeyError(f"{name} is not written by user data; allowed: {', '.join(USER_DATA_FILES)}")
    return (userdata_source_dir() / name).read_text(encoding="utf-8")


def runtime_source_dir() -> Path:
    """The node runtime package's folder."""
    return Path(haproxy_ha_runtime.__file__).resolve().parent


def _files(folder: Path, patterns: Iterable[str]) -> list[Path]:
    found = {p for pattern in patterns for p in folder.rglob(pattern)
             if p.is_file() and "__pycache__" not in p.parts}
    return sorted(found)


def _copy(files: Iterable[Path], base: Path, dest: Path) -> None:
    for src in files:
        target = dest / src.relative_to(base)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Content only: the asset hash must depend on what is shipped, not on mtimes or modes.
        target.write_bytes(src.read_bytes())


def _stage(name: str) -> Path:
    # Synthesis copies the folder into cdk.out, so it is only needed while this process runs.
    dest = Path(tempfile.mkdtemp(prefix=f"haproxy-ha-{name}-"))
    atexit.register(shutil.rmtree, dest, True)
    return dest


def _copy_runtime(dest: Path) -> None:
    runtime = runtime_source_dir()
    _copy(_files(runtime, ["*.py"]), runtime.parent, dest)


@functools.cache
def node_files_dir() -> Path:
    """Asset folder for the nodes: boot.sh, the systemd units and the runtime package (not the
    files user data writes, which fetch this folder).

    Built once per process; its content depends only on the source files, so the asset hash is stable.
    """
    dest = _stage("node-files")
    userdata = userdata_source_dir()
    shipped = [p for p in _files(userdata, ["*.sh", "*.service", "*.conf"]) if p.name not in USER_DATA_FILES]
    _copy(shipped, userdata, dest)
    _copy_runtime(dest)
    return dest


@functools.cache
def lambda_code_dir() -> Path:
    """Asset folder for the route Lambda: `lambda/*.py` next to the runtime package it imports."""
    dest = _stage("lambda")
    source = lambda_source_dir()
    _copy(sorted(p for p in source.glob("*.py") if p.is_file()), source, dest)
    _copy_runtime(dest)
    return dest
