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

# TLS: HTTPS with HTTP/2 and re-encryption, a TLS 1.3-only tcp listener, and a tcp pass-through.
# Rendering it for the binaries needs a bundle at each TLS listener's paths.tls_bundle.
TLS = doc(listeners=[
    {"name": "web", "port": 80, "backends": [{"name": "w1", "host": "192.0.2.50", "port": 8080}]},
    {"name": "https", "port": 443, "backends": [{"name": "w1", "host": "192.0.2.50", "port": 8443},
                                                {"name": "w2", "host": "app.internal", "port": 8443}],
     "tls": {"secret": "arn:aws:secretsmanager:us-east-1:123456789012:secret:lb/https-AbCdEf",
             "backend_tls": True}},
    {"name": "hello", "port": 8444, "static_reply": "hello over TLS",
     "tls": {"secret": "lb/hello", "policy": "ELBSecurityPolicy-TLS13-1-2-Res-2021-06"}},
    {"name": "tls13", "port": 8443, "mode": "tcp", "backends": [{"name": "t1", "host": "192.0.2.51", "port": 80}],
     "tls": {"secret": "lb/tls13", "policy": "ELBSecurityPolicy-TLS13-1-3-2021-06"}},
    {"name": "passthrough", "port": 9443, "mode": "tcp",
     "backends": [{"name": "p1", "host": "192.0.2.52", "port": 443}]},
], tls_poll_s=30)

PROFILES = {"default": BASE, "fast": FAST, "many-listeners": MANY_LISTENERS, "tls": TLS}
