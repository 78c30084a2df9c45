"""What the two agents tell each other: each serves its VRRP state and health at GET /state (on
127.0.0.1, which HAProxy's stats port passes on), and reads the peer's the same way."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

# How a peer answered.
REACHED = "reached"  # its agent answered: `vrrp` and `healthy` are what it said
HAPROXY_DOWN = "haproxy-down"  # the host refused the connection: nothing listens on its stats port
AGENT_DOWN = "agent-down"  # its HAProxy answered, but not for the agent (502/503)
UNREACHABLE = "unreachable"  # no answer in time: the host, or the path to it, is gone
NOT_YET = "not-yet"  # not probed yet


@dataclass(frozen=True)
class PeerView:
    """What this agent last learned about a peer, and when (time.monotonic())."""

    reach: str = NOT_YET
    vrrp: str | None = None
    healthy: bool | None = None
    at: float = 0.0
    # The peer gave the VIP away on purpose: it stepped down (an operator's move), or its
    # instance is leaving (the termination hook).
    stepped_down: bool | None = None
    leaving: bool | None = None

    @property
    def healthy_haproxy(self) -> bool:
        """The peer's agent says its HAProxy answers."""
        return self.reach == REACHED and self.healthy is True

    @property
    def unhealthy_haproxy(self) -> bool:
        """The peer's HAProxy does not serve: its agent says so, or its stats port refuses."""
        return self.reach == HAPROXY_DOWN or (self.reach == REACHED and self.healthy is False)


def probe_peer(host: str, port: int, timeout_s: float) -> PeerView:
    """GET http://host:port/state once.  Only the keys this release knows are read, and a value
    of the wrong type counts as unknown: a peer of another release may send more, or less."""
    now = time.monotonic()
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        conn.request("GET", "/state")
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            return PeerView(AGENT_DOWN, at=now)
        data = json.loads(body)
        if not isinstance(data, dict):
            # Not what any agent answers: taken as no answer, as a body that is not JSON is.
            raise ValueError(f"/state answered {type(data).__name__}, not a JSON object")
        vrrp = data.get("vrrp")

        def flag(key: str) -> bool | None:
            value = data.get(key)
            return value if isinstance(value, bool) else None

        return PeerView(REACHED, vrrp=vrrp if isinstance(vrrp, str) else None, healthy=flag("healthy"), at=now,
                        stepped_down=flag("stepped_down"), leaving=flag("leaving"))
    except ConnectionRefusedError:
        return PeerView(HAPROXY_DOWN, at=now)
    except (OSError, socket.timeout, http.client.HTTPException, ValueError):
        return PeerView(UNREACHABLE, at=now)
    finally:
        conn.close()


class StateServer:
    """Serves this agent's state as JSON at GET /state, on 127.0.0.1 only."""

    def __init__(self, port: int, state: Callable[[], dict[str, Any]]) -> None:
        get_state = state

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/state":
                    self.send_error(404)
                    return
                body = json.dumps(get_state()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="state-server", daemon=True)

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self._server.server_address[1])

    def start(self) -> StateServer:
        """Start serving in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
