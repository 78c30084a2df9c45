"""Collects everything wrong with an input, each as `where: got X; allowed: Y`, to report at once.

The node config document (config.py) and the construct's props are checked with the same
collector and the same rules; the construct names its props through `alias`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from typing import Any


class InvalidInput(ValueError):
    """Input that cannot be used.  `problems` lists every problem found, one line each."""

    def __init__(self, problems: Sequence[str], heading: str) -> None:
        self.problems = list(problems)
        lines = "\n".join("  - " + p for p in self.problems)
        super().__init__(f"{heading}:\n{lines}")


class Problems:
    """A list of problems, and the checks that add to it.  Each check returns the checked value,
    or None after recording why the value cannot be used."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self._aliases: dict[str, tuple[str, Any]] = {}
        self._aliased_reported: set[str] = set()

    def __bool__(self) -> bool:
        return bool(self.items)

    def alias(self, where: str, shown_as: str, value: Any) -> None:
        """Report problems under `where` (and its fields, `where.x`) as `shown_as`, with `value`.

        The construct builds document fields from its props ("host:port" becomes host and
        port): a problem with a field is then reported once, against the prop the user wrote.
        """
        self._aliases[where] = (shown_as, value)

    def _resolve(self, where: str, value: Any, allowed: str) -> tuple[str, Any, str] | None:
        for prefix, (shown_as, shown_value) in self._aliases.items():
            if where == prefix or where.startswith(prefix + "."):
                if shown_as in self._aliased_reported:
                    return None
                self._aliased_reported.add(shown_as)
                field = where[len(prefix) + 1:]
                return shown_as, shown_value, (f"{field} must be {allowed}" if field else allowed)
        return where, value, allowed

    def bad(self, where: str, value: Any, allowed: str) -> None:
        """Record that `where` holds `value`, and what would be allowed instead."""
        resolved = self._resolve(where, value, allowed)
        if resolved is not None:
            shown, shown_value, shown_allowed = resolved
            self.items.append(f"{shown}: got {shown_value!r}; allowed: {shown_allowed}")

    def add(self, line: str) -> None:
        """Record a problem that does not fit `where: got X; allowed: Y`."""
        self.items.append(line)

    def missing(self, where: str) -> None:
        """Record that the required `where` is absent."""
        resolved = self._resolve(where, None, "a value: it is required")
        if resolved is None:
            return
        shown, shown_value, shown_allowed = resolved
        self.items.append(f"{where}: missing; it is required" if shown == where
                          else f"{shown}: got {shown_value!r}; allowed: {shown_allowed}")

    def get(self, doc: Mapping[str, Any], key: str, where: str, required: bool = True) -> Any:
        """`doc[key]`, or None (recorded as missing when `required`)."""
        if key not in doc or doc[key] is None:
            if required:
                self.missing(where + key)
            return None
        return doc[key]

    def string(self, value: Any, where: str, pattern: re.Pattern[str], allowed: str) -> str | None:
        """A string that matches `pattern`."""
        if not isinstance(value, str) or not pattern.match(value):
            self.bad(where, value, allowed)
            return None
        return value

    def integer(self, value: Any, where: str, low: int, high: int) -> int | None:
        """A whole number from `low` to `high` (a bool is not one)."""
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.bad(where, value, f"a whole number from {low} to {high}")
            return None
        return value

    def number(self, value: Any, where: str, low: float, high: float) -> float | None:
        """A finite number from `low` to `high`."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            self.bad(where, value, f"a number from {low:g} to {high:g}")
            return None
        return float(value)

    def boolean(self, value: Any, where: str) -> bool | None:
        """True or False."""
        if not isinstance(value, bool):
            self.bad(where, value, "true or false")
            return None
        return value

    def ipv4(self, value: Any, where: str, example: str = "10.0.1.10",
             refuse_reserved: bool = False) -> ipaddress.IPv4Address | None:
        """One unicast IPv4 address (never loopback, link-local, multicast or 0.0.0.0)."""
        try:
            addr = ipaddress.IPv4Address(value)
        except (ipaddress.AddressValueError, ValueError, TypeError):
            self.bad(where, value, f"a single IPv4 address such as {example} (no prefix length)")
            return None
        reserved = refuse_reserved and addr.is_reserved
        if (addr.is_multicast or addr.is_unspecified or addr.is_loopback or addr.is_link_local or reserved
                or addr == ipaddress.IPv4Address("255.255.255.255")):
            kinds = "loopback, link-local, multicast, reserved or 0.0.0.0" if refuse_reserved \
                else "loopback, link-local, multicast or 0.0.0.0"
            self.bad(where, value, f"a unicast IPv4 address (not {kinds})")
            return None
        return addr
