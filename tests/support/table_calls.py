"""Counts the EC2 requests a client sends that name a route table, by action: a table's writes
(its RouteTableId) and the reads that ask for it (a DescribeRouteTables filter value), so that a
test can tell how hard the code under test works one table."""

from __future__ import annotations

import threading
import urllib.parse
from collections import Counter
from typing import Any


class TableCalls:
    """Register on a client (before-send, retries included); `of(table)` is what named that table."""

    def __init__(self, client: Any) -> None:
        self._counts: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()
        client.meta.events.register("before-send.ec2", self._on_send)

    def _on_send(self, request: Any = None, **_: Any) -> None:
        body = getattr(request, "body", b"") or b""
        fields = urllib.parse.parse_qs(body.decode() if isinstance(body, bytes) else body)
        action = fields.get("Action", ["unknown"])[0]
        tables = {v for values in fields.values() for v in values if v.startswith("rtb-")}
        with self._lock:
            for table in tables:
                self._counts[(action, table)] += 1

    def of(self, table: str, action: str | None = None) -> int:
        """Requests so far that named `table` (of `action` only, if given)."""
        with self._lock:
            return sum(n for (a, t), n in self._counts.items() if t == table and action in (None, a))
