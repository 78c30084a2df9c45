"""haproxy-ha: an AWS CDK construct for a highly available HAProxy pair on an overlay VIP.

The names below load lazily (PEP 562), so that `haproxy_ha.cli` starts without importing the CDK.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from haproxy_ha.construct import HaproxyHa, HaproxyHaNode
    from haproxy_ha.listener import Listener
    from haproxy_ha.stack import HaproxyHaStack
    from haproxy_ha.validation import HaproxyHaPropsError

__all__ = ["HaproxyHa", "HaproxyHaNode", "HaproxyHaPropsError", "HaproxyHaStack", "Listener"]

_HOMES = {
    "HaproxyHa": "haproxy_ha.construct",
    "HaproxyHaNode": "haproxy_ha.construct",
    "HaproxyHaPropsError": "haproxy_ha.validation",
    "HaproxyHaStack": "haproxy_ha.stack",
    "Listener": "haproxy_ha.listener",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'haproxy_ha' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
