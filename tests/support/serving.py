"""Serve a loopback HTTP server on a thread of this process."""

from __future__ import annotations

import socketserver
import threading

# How often serve_forever looks for shutdown().  Its default, half a second, is what each test
# that stops a server would wait for.
POLL_S = 0.02


def in_thread(server: socketserver.BaseServer) -> threading.Thread:
    """Start `server.serve_forever` on a daemon thread; `server.shutdown()` returns within POLL_S."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": POLL_S}, daemon=True)
    thread.start()
    return thread
