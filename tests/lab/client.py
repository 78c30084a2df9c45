"""The lab's client: sends requests to the VIP at a steady rate, each on a new connection, and
records which node answered (HAProxy's `X-Haproxy-Node` header) or the error.

    python -m tests.lab.client --url http://203.0.113.10/ --interval-s 0.01 --max-s 20 --out FILE

Requests start on a fixed schedule whether or not earlier ones have finished, so a dead route
shows as a run of errors rather than as a stalled client.  Bounded by --max-requests and --max-s;
SIGTERM ends it early.  One JSON line per finished request: `i`, `sent`, `done` (wall-clock
seconds), `node`, `backend`, `status`, `error`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
import urllib.parse
from typing import IO, Any


async def _request(host: str, port: int, path: str, timeout_s: float) -> dict[str, Any]:
    writer = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: hhalab-client\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(65536), timeout_s)
    except TimeoutError:
        return {"error": "timeout"}
    except OSError as e:
        return {"error": type(e).__name__}
    finally:
        if writer is not None:
            writer.close()
    head, _, _body = data.partition(b"\r\n\r\n")
    lines = head.decode(errors="replace").split("\r\n")
    if not lines or not lines[0].startswith("HTTP/"):
        return {"error": "bad-response"}
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return {"status": status, "node": headers.get("x-haproxy-node"), "backend": headers.get("x-backend"),
            "error": None if status == 200 else f"http-{status}"}


async def run(url: str, interval_s: float, max_requests: int, max_s: float, timeout_s: float, out: IO[str]) -> int:
    parts = urllib.parse.urlsplit(url)
    host, port, path = parts.hostname or "", parts.port or 80, parts.path or "/"
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGINT, stopping.set)
    tasks: list[asyncio.Task[None]] = []

    async def one(i: int) -> None:
        sent = time.time()
        result = await _request(host, port, path, timeout_s)
        record = {"i": i, "sent": round(sent, 4), "done": round(time.time(), 4), **result}
        out.write(json.dumps(record) + "\n")
        out.flush()

    start = time.monotonic()
    for i in range(max_requests):
        due = start + i * interval_s
        if due - start > max_s or stopping.is_set():
            break
        delay = due - time.monotonic()
        if delay > 0:
            try:
                await asyncio.wait_for(stopping.wait(), delay)
                break
            except TimeoutError:
                pass
        tasks.append(asyncio.ensure_future(one(i)))
        tasks = [t for t in tasks if not t.done()] if i % 100 == 0 else tasks
    if tasks:
        await asyncio.wait(tasks, timeout=timeout_s * 2 + 1)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--interval-s", type=float, default=0.01)
    parser.add_argument("--max-requests", type=int, default=10000)
    parser.add_argument("--max-s", type=float, default=30.0)
    parser.add_argument("--timeout-s", type=float, default=1.0)
    parser.add_argument("--out", default="-")
    args = parser.parse_args(argv)
    if args.out == "-":
        return asyncio.run(run(args.url, args.interval_s, args.max_requests, args.max_s, args.timeout_s, sys.stdout))
    with open(args.out, "a", encoding="utf-8") as out:
        return asyncio.run(run(args.url, args.interval_s, args.max_requests, args.max_s, args.timeout_s, out))


if __name__ == "__main__":
    sys.exit(main())
