"""The node config document's promises that the mutation run (scripts/mutate) found no test for.

docs/runtime.md: every problem is named, `where: got X; allowed: Y`, all at once.  So each case here checks
the whole list of problems, word for word, and each accepted value what it becomes.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from haproxy_ha_runtime import config
from haproxy_ha_runtime.config import PROFILES, ConfigError, NodeConfig, Paths, parse_config
from tests.conftest import REPO
from tests.runtime.samples import BASE, MANY_LISTENERS, doc

RTB = "a route table ID such as rtb-0123456789abcdef0"
ENI = "an ENI ID such as eni-0123456789abcdef0"
WEB = {"name": "web", "port": 80, "backends": [{"name": "w1", "host": "192.0.2.50", "port": 8080}]}


def _problems(d: Any, source: str = "node config") -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_config(d, source)
    return e.value.problems


def _listener(**changes: Any) -> dict[str, Any]:
    item = copy.deepcopy(WEB)
    item.update(changes)
    return item


@pytest.mark.parametrize(("changes", "expected"), [
    ({"version": 3}, ["version: got 3; allowed: a schema this node reads: 1 to 2"]),
    ({"version": 0}, ["version: got 0; allowed: a schema this node reads: 1 to 2"]),
    ({"version": True}, ["version: got True; allowed: a schema this node reads: 1 to 2"]),
    ({"version": 1, "release": "0.2.0"},
     ["release: got '0.2.0'; allowed: no such field in schema 1; it needs a document of version 2 or later"]),
    ({"version": 2, "release": "not a version"}, ["release: got 'not a version'; allowed: " + config.RELEASE_ALLOWED]),
    ({"node_name": "A"}, ["node_name: got 'A'; allowed: " + config.NAME_ALLOWED]),
    ({"eni_id": "eni-1"}, [f"eni_id: got 'eni-1'; allowed: {ENI}, or null to read it from IMDS"]),
    ({"interface": "x" * 16},
     [f"interface: got '{'x' * 16}'; allowed: a Linux interface name (1-15 characters), or null for the one "
      "that holds local_ip"]),
    ({"route_table_ids": None}, ["route_table_ids: missing; it is required"]),
    ({"route_table_ids": "rtb-0123456789abcdef0"},
     ["route_table_ids: got 'rtb-0123456789abcdef0'; allowed: a non-empty list of route table IDs"]),
    ({"route_table_ids": ["rtb-0123456789abcdef0", "rtb-1", 7]},
     [f"route_table_ids[1]: got 'rtb-1'; allowed: {RTB}", f"route_table_ids[2]: got 7; allowed: {RTB}"]),
    ({"region": "eu-west"}, ["region: got 'eu-west'; allowed: an AWS region name such as eu-west-1"]),
    ({"endpoint_url": "http:// x"}, ["endpoint_url: got 'http:// x'; allowed: an http(s) URL, or null for the "
                                     "region's EC2 endpoint"]),
    ({"vpc_id": "vpc-1"}, ["vpc_id: got 'vpc-1'; allowed: a VPC ID such as vpc-0123456789abcdef0"]),
    ({"reconciler": "arn:aws:lambda:eu-west-1:1234:function:f"},
     ["reconciler: got 'arn:aws:lambda:eu-west-1:1234:function:f'; allowed: a Lambda function name or ARN, or null"]),
    ({"reconciler": "f" * 65}, [f"reconciler: got '{'f' * 65}'; allowed: a Lambda function name or ARN, or null"]),
    ({"auto_scaling_group": "my group"}, ["auto_scaling_group: got 'my group'; allowed: an Auto Scaling group name, "
                                          "or null"]),
    ({"auto_scaling_group": "g", "lifecycle_hook": ""}, ["lifecycle_hook: got ''; allowed: a lifecycle hook name, "
                                                         "or null"]),
    ({"lifecycle_hook": "h"}, ["lifecycle_hook: got 'h'; allowed: null, or set together with auto_scaling_group"]),
    ({"drain_timeout_s": 3601}, ["drain_timeout_s: got 3601; allowed: a number from 0 to 3600"]),
    ({"drain_timeout_s": -0.5}, ["drain_timeout_s: got -0.5; allowed: a number from 0 to 3600"]),
    ({"replace_unhealthy_after_s": 0.5}, ["replace_unhealthy_after_s: got 0.5; allowed: a number from 1 to 86400"]),
    ({"replace_unhealthy_after_s": 86401}, ["replace_unhealthy_after_s: got 86401; allowed: a number from 1 to "
                                            "86400"]),
    ({"cfn_stack": "s"}, ["cfn_resource: got None; allowed: set together with cfn_stack, or both null"]),
    ({"cfn_resource": "Group"}, ["cfn_resource: got 'Group'; allowed: set together with cfn_stack, or both null"]),
    ({"cfn_stack": "s t", "cfn_resource": "Gr-oup"},
     ["cfn_stack: got 's t'; allowed: a CloudFormation stack name or ID, or null",
      "cfn_resource: got 'Gr-oup'; allowed: a logical resource ID, or null"]),
    ({"priority": 0}, ["priority: got 0; allowed: a whole number from 1 to 254"]),
    ({"preempt": "yes"}, ["preempt: got 'yes'; allowed: true or false"]),
    ({"virtual_router_id": 256}, ["virtual_router_id: got 256; allowed: a whole number from 1 to 255"]),
    ({"virtual_router_id": 0}, ["virtual_router_id: got 0; allowed: a whole number from 1 to 255"]),
    ({"stats_port": 0}, ["stats_port: got 0; allowed: a whole number from 1 to 65535"]),
    ({"agent_port": 65536}, ["agent_port: got 65536; allowed: a whole number from 1 to 65535"]),
    ({"agent_port": 8404}, ["agent_port: got 8404; allowed: a port other than stats_port"]),
    ({"profile": "turbo"}, ["profile: got 'turbo'; allowed: 'default' or 'fast'"]),
    ({"timing": 1}, ["timing: got 1; allowed: an object of timing overrides"]),
    ({"timing": {"speed": 1}}, ["timing.speed: got 1; allowed: one of the keys advert_int_s, health_fall, "
                                "health_interval_s, health_rise, repair_interval_s, takeover_deadline_s"]),
    ({"timing": {"health_fall": 1.5, "health_rise": 101}},
     ["timing.health_fall: got 1.5; allowed: a whole number from 1 to 100",
      "timing.health_rise: got 101; allowed: a whole number from 1 to 100"]),
    ({"timing": {"repair_interval_s": 0.05, "takeover_deadline_s": 601, "health_interval_s": 10.5,
                 "advert_int_s": 256}},
     ["timing.repair_interval_s: got 0.05; allowed: a number from 0.1 to 3600",
      "timing.takeover_deadline_s: got 601; allowed: a number from 0.5 to 600",
      "timing.health_interval_s: got 10.5; allowed: a number from 0.01 to 10",
      "timing.advert_int_s: got 256; allowed: a number from 0.01 to 255"]),
    ({"peers": {}}, ["peers: got {}; allowed: a non-empty list of {name, ip, eni_id} objects"]),
    ({"peers": [1]}, ["peers[0]: got 1; allowed: an object with name, ip and eni_id"]),
    ({"peers": [{"name": "b", "ip": "192.0.2.20", "eni_id": "eni-x"}]}, [f"peers[0].eni_id: got 'eni-x'; allowed: "
                                                                         f"{ENI}"]),
    ({"paths": 1}, ["paths: got 1; allowed: an object of file paths"]),
    ({"paths": {"x": "/a"}}, ["paths.x: got '/a'; allowed: one of the keys cloudwatch_agent_conf, haproxy_conf, "
                              "keepalived_conf, log_dir, log_socket, logrotate_conf, rsyslog_conf, run_dir"]),
    ({"paths": {"haproxy_conf": 5}}, ["paths.haproxy_conf: got 5; allowed: an absolute path without spaces"]),
    ({"local_ip": "192.0.2.300"}, ["local_ip: got '192.0.2.300'; allowed: a single IPv4 address such as 10.0.1.10 "
                                    "(no prefix length)"]),
    ({"local_ip": "203.0.113.10"}, ["vip: got '203.0.113.10'; allowed: an address other than local_ip"]),
    ({"peers": [{"name": "b", "ip": "203.0.113.10"}]},
     ["vip: got '203.0.113.10'; allowed: an address other than every peer's ip"]),
    ({"peers": [{"name": "a", "ip": "192.0.2.20"}]},
     ["peers: got ['a']; allowed: peer names other than this node's own name 'a'"]),
    ({"peers": [{"name": "b", "ip": "192.0.2.10"}]},
     ["peers: got ['192.0.2.10']; allowed: peer addresses other than local_ip 192.0.2.10"]),
])
def test_each_bad_field_is_one_problem_word_for_word(changes: dict[str, Any], expected: list[str]) -> None:
    assert _problems(doc(**changes)) == expected


@pytest.mark.parametrize(("listeners", "expected"), [
    ({}, ["listeners: got {}; allowed: a non-empty list of listener objects"]),
    ([5], ["listeners[0]: got 5; allowed: an object with name, port, mode and backends"]),
    ([_listener(name="health")],
     ["listeners[0].name: got 'health'; allowed: a name other than 'health', which the node's own health frontend "
      "has"]),
    ([_listener(port=22)], ["listeners[0].port: got 22; allowed: a port the node itself does not listen on "
                            "(sshd has 22)"]),
    ([_listener(port=8405)], ["listeners[0].port: got 8405; allowed: a port other than 8405, where the node's "
                              "agent answers"]),
    ([_listener(port=8404)], ["stats_port: got 8404; allowed: a port that no listener uses (listeners[0] listens "
                              "on it)"]),
    ([_listener(), _listener(port=81)],
     ["listeners[1].name: got 'web'; allowed: a name no other listener uses (listeners[0] has it)"]),
    ([_listener(check_path="/a b")], [f"listeners[0].check_path: got '/a b'; allowed: {config.CHECK_PATH_ALLOWED}"]),
    ([_listener(static_reply="hi", mode="tcp", backends=[])],
     ["listeners[0].static_reply: got 'hi'; allowed: only on a listener with mode 'http'"]),
    ([_listener(static_reply=5)], [f"listeners[0].static_reply: got 5; allowed: {config.STATIC_REPLY_ALLOWED}"]),
    ([_listener(backends={})], ["listeners[0].backends: got {}; allowed: a list of {name, host, port} objects"]),
    ([_listener(backends=[1])], ["listeners[0].backends[0]: got 1; allowed: an object with name, host and port"]),
])
def test_each_bad_listener_is_one_problem_word_for_word(listeners: Any, expected: list[str]) -> None:
    assert _problems(doc(listeners=listeners)) == expected


@pytest.mark.parametrize(("d", "where"), [
    (doc(node_name=None), "node_name"),
    (doc(peers=[{"ip": "192.0.2.20"}]), "peers[0].name"),
    (doc(peers=[{"name": "b"}]), "peers[0].ip"),
    (doc(listeners=[_listener(backends=[{"host": "h", "port": 1}])]), "listeners[0].backends[0].name"),
    (doc(listeners=[_listener(backends=[{"name": "b", "port": 1}])]), "listeners[0].backends[0].host"),
    (doc(listeners=[_listener(backends=[{"name": "b", "host": "h"}])]), "listeners[0].backends[0].port"),
    (doc(listeners=[{"port": 80, "static_reply": "hi"}]), "listeners[0].name"),
    (doc(listeners=[{"name": "web", "static_reply": "hi"}]), "listeners[0].port"),
])
def test_a_missing_field_is_named_missing_first(d: dict[str, Any], where: str) -> None:
    # (The check of its value then names it again, with "got None": only that field is named.)
    problems = _problems(d)
    assert problems[0] == f"{where}: missing; it is required"
    assert all(p.startswith(where + ": ") for p in problems)


def test_a_document_that_is_not_an_object_is_named_with_its_source() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config([1], "/etc/haproxy-ha/node.json")
    assert e.value.problems == ["the document: got list; allowed: a JSON object"]
    assert str(e.value).startswith("/etc/haproxy-ha/node.json is invalid (1 problem(s)):\n")


def test_unknown_fields_name_every_known_one() -> None:
    known = ", ".join(sorted(config.DOCUMENT_KEYS))
    assert _problems(doc(zeta=1, alpha=2), "x") == [f"alpha: got 2; allowed: no such field; known fields are {known}",
                                                   f"zeta: got 1; allowed: no such field; known fields are {known}"]


def test_the_edges_of_every_range_are_accepted() -> None:
    cfg = parse_config(doc(priority=254, virtual_router_id=255, drain_timeout_s=0, replace_unhealthy_after_s=86400,
                           stats_port=65535, agent_port=1, timing={"health_fall": 100, "health_rise": 1,
                                                                   "advert_int_s": 0.01, "takeover_deadline_s": 600}))
    assert (cfg.priority, cfg.virtual_router_id, cfg.stats_port, cfg.agent_port) == (254, 255, 65535, 1)
    assert (cfg.drain_timeout_s, cfg.replace_unhealthy_after_s) == (0.0, 86400.0)
    assert (cfg.timing.health_fall, cfg.timing.health_rise, cfg.timing.advert_int_s) == (100, 1, 0.01)
    assert cfg.timing.takeover_deadline_s == 600.0
    cfg = parse_config(doc(priority=1, virtual_router_id=1, drain_timeout_s=3600, replace_unhealthy_after_s=1,
                           interface="e" * 15, reconciler="f" * 64))
    assert (cfg.priority, cfg.virtual_router_id, cfg.drain_timeout_s, cfg.replace_unhealthy_after_s) == (
        1, 1, 3600.0, 1.0)
    assert (cfg.interface, cfg.reconciler) == ("e" * 15, "f" * 64)


def test_what_an_accepted_document_becomes() -> None:
    d = doc(route_table_ids=["rtb-0123456789abcdef1", "rtb-0123456789abcdef0", "rtb-0123456789abcdef1"],
            endpoint_url="http://127.0.0.1:5000/x", vpc_id="vpc-0123456789abcdef0",
            reconciler="arn:aws:lambda:eu-west-1:123456789012:function:haproxy-ha-Reconcile_1",
            auto_scaling_group="grp", lifecycle_hook="haproxy-ha-drain", cfn_stack="arn:aws:cloudformation:x",
            cfn_resource="NodeAGroup", drain_timeout_s=12, replace_unhealthy_after_s=60, preempt=True,
            virtual_router_id=9, profile="fast", timing={"health_rise": 5, "repair_interval_s": 3},
            stats_port=9000, agent_port=9001, interface="eth1",
            peers=[{"name": "b", "ip": "192.0.2.20"}],
            paths={"run_dir": "/tmp/node-a/", "haproxy_conf": "/tmp/node-a/h.cfg/"},
            listeners=[_listener(), {"name": "hello", "port": 81, "static_reply": "hello"},
                       {"name": "pg", "port": 5432, "mode": "tcp", "check_path": "/x",
                        "backends": [{"name": "db", "host": "db.internal", "port": 5432}]}])
    cfg = parse_config(d)
    assert cfg.route_table_ids == ("rtb-0123456789abcdef1", "rtb-0123456789abcdef0")
    assert (cfg.endpoint_url, cfg.vpc_id, cfg.interface) == ("http://127.0.0.1:5000/x", "vpc-0123456789abcdef0", "eth1")
    assert cfg.reconciler == "arn:aws:lambda:eu-west-1:123456789012:function:haproxy-ha-Reconcile_1"
    assert (cfg.auto_scaling_group, cfg.lifecycle_hook) == ("grp", "haproxy-ha-drain")
    assert (cfg.cfn_stack, cfg.cfn_resource) == ("arn:aws:cloudformation:x", "NodeAGroup")
    assert (cfg.drain_timeout_s, cfg.replace_unhealthy_after_s) == (12.0, 60.0)
    assert (cfg.preempt, cfg.virtual_router_id, cfg.profile, cfg.stats_port, cfg.agent_port) == (
        True, 9, "fast", 9000, 9001)
    assert cfg.timing == config.Timing(**{**config.asdict(PROFILES["fast"]), "health_rise": 5,
                                          "repair_interval_s": 3.0})
    assert cfg.peers == (config.Peer("b", "192.0.2.20", None),)
    # The run folder loses its trailing '/', which the paths inside it add; other paths stay as written.
    assert cfg.paths == Paths(run_dir="/tmp/node-a", haproxy_conf="/tmp/node-a/h.cfg/")
    assert (cfg.paths.notify_fifo, cfg.paths.track_file, cfg.paths.priority_file, cfg.paths.haproxy_socket) == (
        "/tmp/node-a/keepalived.fifo", "/tmp/node-a/haproxy-health", "/tmp/node-a/priority-offset",
        "/tmp/node-a/haproxy.sock")
    assert cfg.listeners == (
        config.Listener("web", 80, "http", (config.Backend("w1", "192.0.2.50", 8080),), "/", None),
        config.Listener("hello", 81, "http", (), "/", "hello"),
        config.Listener("pg", 5432, "tcp", (config.Backend("db", "db.internal", 5432),), "/x", None),
    )
    assert cfg.vip_cidr == "203.0.113.10/32"


def test_defaults_are_the_dataclass_defaults() -> None:
    cfg = parse_config(copy.deepcopy(BASE))
    assert (cfg.drain_timeout_s, cfg.replace_unhealthy_after_s, cfg.preempt, cfg.virtual_router_id) == (
        30.0, 300.0, False, 51)
    assert (cfg.stats_port, cfg.agent_port, cfg.paths, cfg.timing) == (8404, 8405, Paths(), PROFILES["default"])
    assert (cfg.endpoint_url, cfg.vpc_id, cfg.reconciler, cfg.cfn_stack, cfg.cfn_resource) == (None,) * 5
    assert config.default("priority") == 100 and config.default("paths") == Paths()
    with pytest.raises(KeyError, match="vip has no default: it is required"):
        config.default("vip")
    assert parse_config(doc(timing=None, paths=None)) == cfg


def test_a_document_reads_back_as_itself_and_names_only_what_differs() -> None:
    cfg = parse_config(doc(**{k: v for k, v in MANY_LISTENERS.items() if k != "version"},
                           timing={"health_rise": 5}, paths={"run_dir": "/tmp/x"}))
    document = config.to_document(cfg)
    assert document["version"] == config.SCHEMA_VERSION
    assert document["timing"] == {"health_rise": 5}
    assert document["paths"] == {"run_dir": "/tmp/x"}
    assert document["listeners"][0]["backends"][1] == {"name": "w2", "host": "app.internal", "port": 8080,
                                                       "max_addresses": 8}
    assert list(document) == list(config.DOCUMENT_KEYS)
    assert parse_config(json.loads(json.dumps(document))) == cfg
    assert isinstance(cfg, NodeConfig)


def test_a_file_that_cannot_be_read_is_named(tmp_path: Path) -> None:
    path = tmp_path / "missing.json"
    with pytest.raises(ConfigError) as e:
        config.load_config(str(path))
    assert e.value.problems == ["cannot read the file: No such file or directory"]
    assert str(e.value).startswith(f"{path} is invalid (1 problem(s))")
    path.write_text('{"a": 1,}')
    with pytest.raises(ConfigError) as e:
        config.load_config(str(path))
    assert e.value.problems == ["not valid JSON: Expecting property name enclosed in double quotes at line 1 "
                                "column 9"]
    path.write_text(json.dumps(doc(priority=0)))
    with pytest.raises(ConfigError, match=f"^{path} is invalid"):
        config.load_config(str(path))


PROBE = "import sys; from haproxy_ha_runtime.config import load_config; print(ascii(load_config(sys.argv[1]).{}))"


def test_the_document_is_read_as_utf_8_whatever_the_locale(tmp_path: Path) -> None:
    path = tmp_path / "node.json"
    path.write_bytes(json.dumps(doc(listeners=[{"name": "hi", "port": 80, "static_reply": "h\u00e9llo"}]),
                                ensure_ascii=False).encode("utf-8"))
    assert config.load_config(str(path)).listeners[0].static_reply == "h\u00e9llo"
    # A node whose locale is plain ASCII (no UTF-8 mode) reads the same text.
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", PROBE.format("listeners[0].static_reply"), str(path)], env=env,
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout.strip()) == (0, ascii("h\u00e9llo")), out.stderr


def test_a_document_without_a_profile_takes_the_default_one() -> None:
    d = doc()
    d.pop("profile", None)
    assert parse_config(d).timing == PROFILES["default"]


def test_a_resolver_port_from_1_to_65535_is_accepted() -> None:
    cfg = parse_config(doc(resolvers=["10.0.0.2:1", "10.0.0.3:65535"]))
    assert cfg.resolvers == ("10.0.0.2:1", "10.0.0.3:65535")
    assert _problems(doc(resolvers=["10.0.0.2:0"])) == [
        "resolvers[0]: got '10.0.0.2:0'; allowed: a list of at most 3 DNS servers, \"address\" or \"address:port\" "
        "(IPv4), or [] for /etc/resolv.conf's"]
