"""Tiny HTTP backends for the lab: each answers every GET with its own name (GET /slow/MS: after
MS milliseconds), and says in X-Seen-Proto which X-Forwarded-Proto the request came with.

    python -m tests.lab.backend 192.0.2.201:8080=be1 192.0.2.202:8080=be2
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# GET /slow/MS answers after MS milliseconds (at most a minute): a request that stays in flight.
_SLOW = re.compile(r"^/slow/(\d{1,5})$")


def handler_for(name: str) -> type[BaseHTTPRequestHandler]:
    body = f"backend {name}\n".encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            slow = _SLOW.match(self.path)
            if slow:
                time.sleep(min(int(slow[1]), 60000) / 1000)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Backend", name)
            self.send_header("X-Seen-Proto", self.headers.get("X-Forwarded-Proto", ""))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("servers", nargs="+", metavar="HOST:PORT=NAME")
    args = parser.parse_args(argv)
    servers = []
    for spec in args.servers:
        addr, _, name = spec.partition("=")
        host, _, port = addr.rpartition(":")
        server = ThreadingHTTPServer((host, int(port)), handler_for(name))
        server.daemon_threads = True
        servers.append(server)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    print("backends ready", flush=True)
    stop.wait()
    for s in servers:
        s.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
