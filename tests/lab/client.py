"""The lab's client: sends requests to the VIP at a steady rate, each on a new connection, and
records which node answered (HAProxy's `X-Haproxy-Node` header) or the error.

    python -m tests.lab.client --url http://203.0.113.10/ --interval-s 0.01 --max-s 20 --out FILE
    python -m tests.lab.client --url https://203.0.113.10/ --cafile CA.pem ...

Requests start on a fixed schedule whether or not earlier ones have finished, so a dead route
shows as a run of errors rather than as a stalled client.  Bounded by --max-requests and --max-s;
SIGTERM ends it early.  One JSON line per finished request: `i`, `sent`, `done` (wall-clock
seconds), `node`, `backend`, `proto` (the X-Forwarded-Proto the backend saw), `status`, `error`.

An https URL is verified against --cafile (only): the chain, and that the certificate names the
URL's host.  A request whose verification fails is a failed request (`error`:
`SSLCertVerificationError`).  Each verified answer also records `cert`, the SHA-256 fingerprint of
the certificate served, and `serial`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import signal
import ssl
import sys
import time
import urllib.parse
from typing import IO, Any


def tls_context(cafile: str) -> ssl.SSLContext:
    """Verify the server's chain against `cafile` alone, and that its certificate names the host."""
    context = ssl.create_default_context(cafile=cafile)
    context.set_alpn_protocols(["http/1.1"])
    return context


def _served(writer: asyncio.StreamWriter) -> dict[str, Any]:
    """The certificate a TLS connection was served (verified, or the handshake would have failed)."""
    tls = writer.get_extra_info("ssl_object")
    if tls is None:
        return {}
    der = tls.getpeercert(binary_form=True)
    return {"cert": hashlib.sha256(der).hexdigest() if der else None,
            "serial": (tls.getpeercert() or {}).get("serialNumber")}


async def _request(host: str, port: int, path: str, timeout_s: float,
                   tls: ssl.SSLContext | None = None) -> dict[str, Any]:
    writer = None
    served: dict[str, Any] = {}
    try:
        # The timeout covers the TLS handshake too.
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=tls, server_hostname=host if tls else None), timeout_s)
        served = _served(writer)
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: hhalab-client\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout_s)
    except TimeoutError:
        return {"error": "timeout"}
    except OSError as e:  # ssl.SSLCertVerificationError included
        return {"error": type(e).__name__}
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return {"error": "bad-response"}
    finally:
        if writer is not None:
            writer.close()
    lines = data.decode(errors="replace").rstrip("\r\n").split("\r\n")
    if not lines[0].startswith("HTTP/"):
        return {"error": "bad-response"}
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return {"status": status, "node": headers.get("x-haproxy-node"), "backend": headers.get("x-backend"),
            "proto": headers.get("x-seen-proto"), **served, "error": None if status == 200 else f"http-{status}"}


async def run(url: str, interval_s: float, max_requests: int, max_s: float, timeout_s: float, out: IO[str],
              cafile: str | None = None) -> int:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or (parts.scheme == "https") != (cafile is not None):
        raise ValueError(f"url: got {url!r} with cafile {cafile!r}; allowed: http://HOST[:PORT]/PATH, or "
                         "https://HOST[:PORT]/PATH with a CA file to verify it against")
    tls = tls_context(cafile) if cafile is not None else None
    host, port, path = parts.hostname or "", parts.port or (443 if tls else 80), parts.path or "/"
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGINT, stopping.set)
    tasks: list[asyncio.Task[None]] = []

    async def one(i: int) -> None:
        sent = time.time()
        result = await _request(host, port, path, timeout_s, tls)
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
    parser.add_argument("--cafile", help="with an https URL: the CA to verify the server against (required)")
    parser.add_argument("--out", default="-")
    args = parser.parse_args(argv)
    if (urllib.parse.urlsplit(args.url).scheme == "https") != (args.cafile is not None):
        parser.error(f"--url {args.url} with --cafile {args.cafile}: an https URL needs --cafile, and only it "
                     "takes one")
    if args.out == "-":
        return asyncio.run(run(args.url, args.interval_s, args.max_requests, args.max_s, args.timeout_s, sys.stdout,
                               args.cafile))
    with open(args.out, "a", encoding="utf-8") as out:
        return asyncio.run(run(args.url, args.interval_s, args.max_requests, args.max_s, args.timeout_s, out,
                               args.cafile))


if __name__ == "__main__":
    sys.exit(main())
