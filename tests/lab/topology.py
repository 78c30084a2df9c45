"""The lab's network: namespaces, veth links and addresses, and entering a namespace from Python.

    client 198.51.100.10 ── router ── node a 192.0.2.10/26
                              │  └─── node b 192.0.2.74/26
                              └ lo: 192.0.2.254 (EC2 API), 192.0.2.201/202 (backends)

The router forwards between the subnets and holds the kernel route for the VIP; the VPC-router
emulator sets that route from the route table in moto.  Every name starts with PREFIX, so the
leftovers of a crashed run can be found and removed by name.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

PREFIX = "hhalab-"
ROUTER = PREFIX + "router"
CLIENT = PREFIX + "client"
NODE_NS = {"a": PREFIX + "a", "b": PREFIX + "b"}
NAMESPACES = (ROUTER, NODE_NS["a"], NODE_NS["b"], CLIENT)

VIP = "203.0.113.10"
API_IP = "192.0.2.254"
# The listener starts with the first two; `config add backend` adds the third.
BACKEND_IPS = ("192.0.2.201", "192.0.2.202", "192.0.2.203")
CLIENT_IP = "198.51.100.10"
CLIENT_GW = "198.51.100.1"
NODE_IFACE = "eth0"


@dataclass(frozen=True)
class NodeNet:
    name: str
    namespace: str
    ip: str
    gateway: str
    prefix_len: int
    router_iface: str


NODES: dict[str, NodeNet] = {
    "a": NodeNet("a", NODE_NS["a"], "192.0.2.10", "192.0.2.1", 26, "to-a"),
    "b": NodeNet("b", NODE_NS["b"], "192.0.2.74", "192.0.2.65", 26, "to-b"),
}

_LOCK_PATH = "/run/" + PREFIX + "lock"
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def ip(*args: str, namespace: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = ["ip"] + (["-n", namespace] if namespace else []) + list(args)
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def ip_batch(namespace: str | None, commands: list[str]) -> None:
    """Run several `ip` commands in one process: much faster than one process each."""
    cmd = ["ip"] + (["-n", namespace] if namespace else []) + ["-batch", "-"]
    proc = subprocess.run(cmd, input="\n".join(commands) + "\n", capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ip -batch in {namespace or 'host'} failed: {proc.stderr.strip()}")


def sysctl(namespace: str, settings: dict[str, str]) -> None:
    args = [f"{k}={v}" for k, v in settings.items()]
    subprocess.run(["ip", "netns", "exec", namespace, "sysctl", "-qw", *args], check=True, capture_output=True)


def lab_namespaces() -> list[str]:
    out = ip("netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(PREFIX)]


def namespace_pids(namespace: str) -> list[int]:
    out = ip("netns", "pids", namespace, check=False).stdout
    return [int(p) for p in out.split()]


def kill_namespace_processes(namespace: str, grace_s: float = 2.0) -> list[int]:
    """End every process in `namespace` by PID (TERM, then KILL).  Returns the PIDs found."""
    pids = namespace_pids(namespace)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and namespace_pids(namespace):
            time.sleep(0.05)
        if not namespace_pids(namespace):
            break
    return pids


def remove_leftovers() -> list[str]:
    """Remove the namespaces (and their processes) of an earlier run that did not clean up."""
    found = lab_namespaces()
    for ns in found:
        kill_namespace_processes(ns)
        ip("netns", "delete", ns, check=False)
    return found


@contextlib.contextmanager
def exclusive_lab(wait_s: float = 600.0) -> Iterator[IO[str]]:
    """One lab at a time per machine (the names are fixed, so that leftovers can be found by
    name): wait up to `wait_s` for another run to finish."""
    with open(_LOCK_PATH, "w") as lock:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"another lab run has held {_LOCK_PATH} for {wait_s:g}s") from None
                time.sleep(0.2)
        try:
            yield lock
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build() -> None:
    """Create the namespaces and links.  Raises if any of them already exists."""
    for ns in NAMESPACES:
        ip("netns", "add", ns)
    # The local table moves behind a rule slot of its own, so that rules before it can drop
    # traffic to the router's own addresses (the API): see Lab.api_down.
    router_cmds = ["link set lo up", f"addr add {API_IP}/32 dev lo", "rule add pref 50 lookup local",
                   "rule del pref 0"]
    router_cmds += [f"addr add {b}/32 dev lo" for b in BACKEND_IPS]
    for node in NODES.values():
        router_cmds += [
            f"link add {node.router_iface} type veth peer name {NODE_IFACE} netns {node.namespace}",
            f"addr add {node.gateway}/{node.prefix_len} dev {node.router_iface}",
            f"link set {node.router_iface} up",
        ]
    router_cmds += [
        f"link add to-client type veth peer name {NODE_IFACE} netns {CLIENT}",
        f"addr add {CLIENT_GW}/24 dev to-client",
        "link set to-client up",
        # Until the emulator has read the route table, the VIP goes nowhere (a VPC would drop it).
        f"route add blackhole {VIP}/32",
    ]
    ip_batch(ROUTER, router_cmds)
    sysctl(ROUTER, {"net.ipv4.ip_forward": "1", "net.ipv4.conf.all.rp_filter": "0",
                    "net.ipv4.conf.default.rp_filter": "0"})
    for node in NODES.values():
        ip_batch(node.namespace, [
            "link set lo up",
            f"addr add {node.ip}/{node.prefix_len} dev {NODE_IFACE}",
            f"link set {NODE_IFACE} up",
            f"route add default via {node.gateway}",
        ])
    ip_batch(CLIENT, [
        "link set lo up",
        f"addr add {CLIENT_IP}/24 dev {NODE_IFACE}",
        f"link set {NODE_IFACE} up",
        f"route add default via {CLIENT_GW}",
    ])


def destroy() -> list[str]:
    """Delete the lab's namespaces.  Returns what could not be deleted."""
    for ns in lab_namespaces():
        ip("netns", "delete", ns, check=False)
    return lab_namespaces()


@contextlib.contextmanager
def entered(namespace: str) -> Iterator[None]:
    """Run the enclosed code (this thread only) in `namespace`.  Sockets opened inside stay in
    that namespace after the block, so a client made here keeps working from outside."""
    with open(f"/run/netns/{namespace}") as target, open("/proc/thread-self/ns/net") as home:
        if _libc.setns(target.fileno(), _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {namespace}: {os.strerror(err)}")
        try:
            yield
        finally:
            if _libc.setns(home.fileno(), _CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns back from {namespace}: {os.strerror(err)}")


def detour_via(node: NodeNet, addresses: list[str], pref: int = 40, table: int = 40) -> None:
    """Make the client's traffic to `addresses` (on the router's lo) take the VIP's path minus
    HAProxy: client -> router -> node -> router -> address, and the replies back the same way.
    The node forwards them in its kernel, so the data-plane benchmark can compare a request through
    HAProxy with the same hops without it.  The lab's teardown removes it with the namespaces."""
    sysctl(node.namespace, {"net.ipv4.ip_forward": "1", "net.ipv4.conf.all.send_redirects": "0",
                            f"net.ipv4.conf.{NODE_IFACE}.send_redirects": "0"})
    # The router takes back from the node packets whose source is its own address (the replies),
    # and does not match the client's packets to its local sockets before routing them (early
    # demux would, and a packet that has a socket is never forwarded: only the SYN would pass).
    sysctl(ROUTER, {f"net.ipv4.conf.{node.router_iface}.accept_local": "1", "net.ipv4.tcp_early_demux": "0"})
    cmds = [f"route add default via {node.ip} dev {node.router_iface} table {table}"]
    for i, address in enumerate(addresses):
        cmds += [f"rule add iif to-client to {address}/32 lookup {table} pref {pref + 2 * i}",
                 f"rule add iif lo from {address}/32 to {CLIENT_IP}/32 lookup {table} pref {pref + 2 * i + 1}"]
    ip_batch(ROUTER, cmds)
