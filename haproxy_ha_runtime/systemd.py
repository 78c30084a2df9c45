"""Tells systemd that the agent is ready and alive: sd_notify over $NOTIFY_SOCKET, standard
library only.  With `WatchdogSec=` in the unit, systemd restarts an agent whose pings stop."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping


class Notifier:
    """READY=1 once, then WATCHDOG=1 at half the watchdog interval; does nothing outside systemd."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        # An abstract socket is written with a leading "@".
        self._address = "\0" + path[1:] if path.startswith("@") else path
        usec = env.get("WATCHDOG_USEC", "")
        self.watchdog_s = int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 else None
        self._last_ping = 0.0

    def _send(self, message: str) -> None:
        if not self._address:
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(self._address)
            s.sendall(message.encode())

    def ready(self) -> None:
        """The agent serves: systemd may start what waits for it (keepalived)."""
        self._send("READY=1")

    def ping(self) -> None:
        """Called on every turn of the main loop; sends WATCHDOG=1 when half the interval has passed."""
        if self.watchdog_s is None:
            return
        now = time.monotonic()
        if now - self._last_ping >= self.watchdog_s / 2:
            self._last_ping = now
            self._send("WATCHDOG=1")

    def stopping(self) -> None:
        """The agent is shutting down on purpose."""
        self._send("STOPPING=1")
