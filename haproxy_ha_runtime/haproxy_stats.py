"""HAProxy's own numbers, from its stats socket: `show stat` (every build has it) read as CSV, and
turned into per-listener and per-backend samples.  HAProxy's counters are cumulative and start
again at 0 in a new process (a restart, or a reload's new worker): `Sampler` turns them into what
happened since the last sample."""

from __future__ import annotations

import socket
from collections.abc import Iterable
from dataclasses import dataclass

Row = dict[str, str]
# What Sampler reads: the process's info (its Pid tells a new process) and every proxy's stats.
SAMPLE_COMMAND = "show info;show stat"


def query(socket_path: str, command: str, timeout_s: float = 2.0) -> str:
    """One command (or several, separated by ';') on HAProxy's stats socket; its whole answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        s.connect(socket_path)
        s.sendall(command.encode() + b"\n")
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def parse_stat(text: str, need: Iterable[str] = ("pxname", "svname")) -> list[Row]:
    """The rows of a `show stat` answer, each a dict by the CSV header's names.  Raises
    RuntimeError when the answer has no header with the `need`ed columns."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("# pxname")), None)
    header = lines[start].lstrip("# ").split(",") if start is not None else []
    if start is None or not set(need) <= set(header):
        raise RuntimeError(f"unexpected answer from HAProxy's stats socket: {lines[:1]}")
    rows = []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        cells = line.split(",")
        rows.append(dict(zip(header, cells)))
    return rows


def parse_info(text: str) -> dict[str, str]:
    """The `Name: value` lines of a `show info` answer."""
    info = {}
    for line in text.splitlines():
        if line.startswith("# pxname"):
            break
        name, sep, value = line.partition(":")
        if sep:
            info[name.strip()] = value.strip()
    return info


def _int(row: Row, key: str) -> int | None:
    value = row.get(key, "")
    return int(value) if value.isdigit() else None


@dataclass(frozen=True)
class ListenerSample:
    """One listener (HAProxy frontend) since the last sample.  `requests` and `http_5xx` are None
    on the first sample (no baseline yet); a TCP listener counts connections as requests and has
    no 5xx."""

    name: str
    requests: int | None
    http_5xx: int | None
    current_sessions: int


@dataclass(frozen=True)
class BackendSample:
    """One backend now: the average response time of its last 1024 requests (HAProxy's `rtime`;
    None for a TCP backend), and how many of its servers are up."""

    name: str
    response_time_ms: int | None
    servers_up: int
    servers: int


def server_up(status: str) -> bool:
    """Is a server with this `show stat` status taking traffic (UP, or going down but still UP)?"""
    return status.startswith("UP") or status == "no check"


class Sampler:
    """Samples per listener and backend from successive `show info;show stat` answers."""

    def __init__(self) -> None:
        self._pid: str | None = None
        self._last: dict[tuple[str, str], int] = {}

    def sample(self, answer: str, listeners: Iterable[tuple[str, str]],
               backends: Iterable[tuple[str, str]]) -> tuple[list[ListenerSample], list[BackendSample]]:
        """Samples of the `listeners` and `backends`, each (name, mode), found in `answer`.  A
        listener or backend that HAProxy does not list is left out."""
        rows = parse_stat(answer)
        pid = parse_info(answer).get("Pid")
        # A new process counts from 0: all it counted came after the last sample.
        restarted = self._pid is not None and pid != self._pid
        self._pid = pid
        by_proxy: dict[str, list[Row]] = {}
        for row in rows:
            by_proxy.setdefault(row["pxname"], []).append(row)

        def delta(key: tuple[str, str], value: int | None) -> int | None:
            before = self._last.get(key)
            if value is None:
                return None
            self._last[key] = value
            if restarted:
                return value
            if before is None:
                return None
            # Counters that went back without a new process were cleared: count from 0.
            return value - before if value >= before else value

        out_listeners = []
        for name, mode in listeners:
            front = next((r for r in by_proxy.get(name, []) if r.get("svname") == "FRONTEND"), None)
            if front is None:
                continue
            requests = delta((name, "req"), _int(front, "req_tot") if mode == "http" else _int(front, "stot"))
            http_5xx = delta((name, "5xx"), _int(front, "hrsp_5xx")) if mode == "http" else None
            out_listeners.append(ListenerSample(name, requests, http_5xx, _int(front, "scur") or 0))
        out_backends = []
        for name, mode in backends:
            proxy = by_proxy.get(name, [])
            back = next((r for r in proxy if r.get("svname") == "BACKEND"), None)
            if back is None:
                continue
            servers = [r for r in proxy if r.get("svname") not in ("FRONTEND", "BACKEND")]
            out_backends.append(BackendSample(
                name, _int(back, "rtime") if mode == "http" else None,
                sum(1 for r in servers if server_up(r.get("status", ""))), len(servers)))
        return out_listeners, out_backends
