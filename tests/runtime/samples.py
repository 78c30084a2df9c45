"""Node config documents used by several tests."""

from __future__ import annotations

import copy
from typing import Any

BASE: dict[str, Any] = {
    "version": 1,
    "node_name": "a",
    "vip": "203.0.113.10",
    "eni_id": "eni-0123456789abcdef0",
    "local_ip": "192.0.2.10",
    "interface": "hhat0",
    "peers": [{"name": "b", "ip": "192.0.2.20", "eni_id": "eni-0123456789abcdef1"}],
    "route_table_ids": ["rtb-0123456789abcdef0", "rtb-0123456789abcdef1"],
    "region": "us-east-1",
    "priority": 150,
    "profile": "default",
    "listeners": [{"name": "web", "port": 80, "backends": [{"name": "web1", "host": "192.0.2.50", "port": 8080}]}],
}


def doc(**changes: Any) -> dict[str, Any]:
    d = copy.deepcopy(BASE)
    d.update(changes)
    return d


FAST = doc(profile="fast")
MANY_LISTENERS = doc(listeners=[
    {"name": "web", "port": 80, "backends": [{"name": "w1", "host": "192.0.2.50", "port": 8080},
                                             {"name": "w2", "host": "app.internal", "port": 8080}],
     "check_path": "/healthz",
     "health_check": {"interval_s": 5, "timeout_s": 2.5, "healthy_threshold": 3, "unhealthy_threshold": 4,
                      "status_codes": "200,204,300-302"}},
    {"name": "hello", "port": 81, "static_reply": "hello from haproxy-ha"},
    {"name": "pg", "port": 5432, "mode": "tcp", "backends": [{"name": "db1", "host": "192.0.2.60", "port": 5432}],
     "health_check": {"interval_s": 0.5, "timeout_s": 0.25, "unhealthy_threshold": 1}},
    {"name": "api", "port": 8443, "mode": "tcp", "backends": [{"name": "api1", "host": "192.0.2.70", "port": 443},
                                                             {"name": "api2", "host": "192.0.2.71", "port": 443}]},
], preempt=True, virtual_router_id=7)

PROFILES = {"default": BASE, "fast": FAST, "many-listeners": MANY_LISTENERS}
