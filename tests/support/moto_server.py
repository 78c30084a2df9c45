"""Start and stop a moto server on loopback: the EC2 API for the tests and the benchmarks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.support import processes

# Without its ~1000 default AMIs, moto rebuilds its EC2 state in 0.1 s instead of 1.4 s after each
# reset or start, and answers its first call without a second's delay.
NO_DEFAULT_AMIS = {"MOTO_EC2_LOAD_DEFAULT_AMIS": "false"}
# An image ID for the nodes' instances; moto does not check that it exists.
IMAGE_ID = "ami-03cf127a"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(timeout_s: float = 20.0) -> tuple[subprocess.Popen[bytes], str]:
    """A moto server on a free loopback port, ready to answer; returns its process and URL."""
    port = free_port()
    exe = Path(sys.executable).with_name("moto_server")
    url = f"http://127.0.0.1:{port}"
    proc = processes.start([str(exe), "-H", "127.0.0.1", "-p", str(port)], url + "/moto-api/", "moto server",
                           env={**os.environ, **NO_DEFAULT_AMIS}, timeout_s=timeout_s)
    return proc, url


stop = processes.stop
