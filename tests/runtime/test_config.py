"""Validation of the node config document."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from haproxy_ha_runtime.config import PROFILES, ConfigError, load_config, parse_config
from tests.runtime.samples import BASE, MANY_LISTENERS, doc


def test_accepts_the_sample_documents() -> None:
    cfg = parse_config(BASE)
    assert cfg.vip_cidr == "203.0.113.10/32"
    assert cfg.timing == PROFILES["default"]
    assert cfg.paths.notify_fifo == "/run/haproxy-ha/keepalived.fifo"
    many = parse_config(MANY_LISTENERS)
    assert [lst.mode for lst in many.listeners] == ["http", "http", "tcp", "tcp"]
    assert many.preempt is True


def test_observability_fields_default_to_no_metrics_and_no_shipping() -> None:
    cfg = parse_config(BASE)
    assert (cfg.pair_name, cfg.detailed_metrics, cfg.log_group_prefix) == (None, True, None)
    assert cfg.paths.metrics_log == "/var/log/haproxy-ha/metrics.jsonl"
    assert cfg.paths.syslog_socket == "/run/haproxy-ha/syslog.sock"
    cfg = parse_config(doc(pair_name="Prod Stack/HaproxyHa", detailed_metrics=False,
                           log_group_prefix="/haproxy-ha/prod", paths={"log_dir": "/srv/logs"}))
    assert (cfg.pair_name, cfg.detailed_metrics, cfg.log_group_prefix) == ("Prod Stack/HaproxyHa", False,
                                                                           "/haproxy-ha/prod")
    assert cfg.paths.events_log == "/srv/logs/agent.jsonl" and cfg.paths.access_log == "/srv/logs/haproxy.log"


def test_timing_overrides_apply_on_top_of_the_profile() -> None:
    cfg = parse_config(doc(profile="fast", timing={"advert_int_s": 0.2, "health_fall": 4}))
    assert cfg.timing.advert_int_s == 0.2 and cfg.timing.health_fall == 4
    assert cfg.timing.health_interval_s == PROFILES["fast"].health_interval_s


def _problems(d: dict[str, object]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(d)
    return info.value.problems


@pytest.mark.parametrize(("changes", "expected"), [
    ({"vip": "203.0.113.300"}, "vip: got '203.0.113.300'; allowed: a single IPv4 address"),
    ({"config_bucket": "My_Bucket", "config_key": "k", "status_key": "s"},
     "config_bucket: got 'My_Bucket'; allowed: an S3 bucket name, or null"),
    ({"config_bucket": "bucket-1", "config_key": "k"}, "allowed: config_bucket, config_key and status_key all set, "
                                                       "or all null"),
    ({"config_bucket": "bucket-1", "config_key": "k", "status_key": "k"},
     "status_key: got 'k'; allowed: an S3 object key other than config_key"),
    ({"config_poll_s": 0.5}, "config_poll_s: got 0.5; allowed: a number from 1 to 3600"),
    ({"resolvers": ["10.0.0.2:99999"]}, "resolvers[0]: got '10.0.0.2:99999'; allowed: a list of at most 3 DNS servers"),
    ({"resolvers": ["dns.internal"]}, "resolvers[0]: got 'dns.internal'; allowed: a list of at most 3 DNS servers"),
    ({"resolvers": ["10.0.0.2"] * 4}, "resolvers: got ['10.0.0.2', '10.0.0.2', '10.0.0.2', '10.0.0.2']; allowed"),
    ({"listeners": [{"name": "web", "port": 80, "backends": [{"name": "b", "host": "h", "port": 1,
                                                             "max_addresses": 65}]}]},
     "listeners[0].backends[0].max_addresses: got 65; allowed: a whole number from 1 to 64"),
    ({"vip": "224.0.0.5"}, "vip: got '224.0.0.5'; allowed: a unicast IPv4 address"),
    ({"vip": "192.0.2.10"}, "vip: got '192.0.2.10'; allowed: an address other than local_ip"),
    ({"eni_id": "i-0123456789abcdef0"}, "eni_id: got 'i-0123456789abcdef0'; allowed: an ENI ID"),
    ({"route_table_ids": []}, "route_table_ids: got []; allowed: a non-empty list"),
    ({"route_table_ids": ["rtb-1"]}, "route_table_ids[0]: got 'rtb-1'; allowed: a route table ID"),
    ({"priority": 255}, "priority: got 255; allowed: a whole number from 1 to 254"),
    ({"profile": "turbo"}, "profile: got 'turbo'; allowed: 'default' or 'fast'"),
    ({"timing": {"advert_int_s": 0}}, "timing.advert_int_s: got 0; allowed: a number from 0.01 to 255"),
    ({"timing": {"speed": 1}}, "timing.speed: got 1; allowed: one of the keys"),
    ({"region": "mars"}, "region: got 'mars'; allowed: an AWS region name"),
    ({"endpoint_url": "ftp://x"}, "endpoint_url: got 'ftp://x'; allowed: an http(s) URL"),
    ({"peers": []}, "peers: got []; allowed: a non-empty list"),
    ({"stats_port": 80}, "stats_port: got 80; allowed: a port that no listener uses"),
    ({"surprise": True}, "surprise: got True; allowed: no such field"),
    ({"paths": {"run_dir": "relative"}}, "paths.run_dir: got 'relative'; allowed: an absolute path"),
    ({"paths": {"log_dir": "logs"}}, "paths.log_dir: got 'logs'; allowed: an absolute path"),
    ({"pair_name": ""}, "pair_name: got ''; allowed: a CloudWatch dimension value"),
    ({"pair_name": "prod\n"}, "pair_name: got 'prod\\n'; allowed: a CloudWatch dimension value"),
    ({"detailed_metrics": "yes"}, "detailed_metrics: got 'yes'; allowed: true or false"),
    ({"log_group_prefix": "/haproxy-ha/"}, "log_group_prefix: got '/haproxy-ha/'; allowed: a CloudWatch Logs group"),
    ({"log_group_prefix": "aws/haproxy-ha"}, "log_group_prefix: got 'aws/haproxy-ha'; allowed: a CloudWatch Logs"),
    ({"log_group_prefix": "/haproxy ha"}, "log_group_prefix: got '/haproxy ha'; allowed: a CloudWatch Logs group"),
])
def test_fails_when_a_field_is_bad(changes: dict[str, object], expected: str) -> None:
    problems = _problems(doc(**changes))
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(("listeners", "expected"), [
    ([{"name": "web", "port": 0, "backends": [{"name": "b", "host": "h", "port": 1}]}],
     "listeners[0].port: got 0; allowed: a whole number from 1 to 65535"),
    *[([{"name": "web", "port": 80, "backends": [{"name": "b", "host": "h", "port": 1}],
         "health_check": {"status_codes": codes}}],
       f"listeners[0].health_check.status_codes: got {codes!r}; allowed: HTTP status codes as ELB writes them")
      for codes in ["2xx", "200-", "200,,201", "99", "600", "299-200", "200-200", "200 ", 200]],
    ([{"name": "web", "port": 80, "backends": [{"name": "b", "host": "h", "port": 1}],
       "health_check": {"interval_s": 2, "timeout_s": 3}}],
     "listeners[0].health_check.timeout_s: got 3; allowed: at most interval_s (2)"),
    ([{"name": "web", "port": 80, "backends": [{"name": "b", "host": "h", "port": 1}],
       "health_check": {"interval_s": 301}}],
     "listeners[0].health_check.interval_s: got 301; allowed: a number from 0.1 to 300"),
    ([{"name": "web", "port": 80, "backends": [{"name": "b", "host": "h", "port": 1}],
       "health_check": {"healthy_threshold": 0}}],
     "listeners[0].health_check.healthy_threshold: got 0; allowed: a whole number from 1 to 10"),
    ([{"name": "web", "port": 80, "backends": [{"name": "b", "host": "h", "port": 1}],
       "health_check": {"unhealthy_threshold": 11}}],
     "listeners[0].health_check.unhealthy_threshold: got 11; allowed: a whole number from 1 to 10"),
    ([{"name": "web", "port": 80, "backends": [{"name": "b", "host": "h", "port": 1}],
       "health_check": {"path": "/x"}}], "listeners[0].health_check: got ['path']; allowed: only interval_s"),
    ([{"name": "db", "port": 5432, "mode": "tcp", "backends": [{"name": "b", "host": "h", "port": 1}],
       "health_check": {"status_codes": "200"}}],
     "listeners[0].health_check.status_codes: got '200'; allowed: only on a listener with mode 'http'"),
    ([{"name": "a", "port": 80, "backends": [{"name": "b", "host": "h", "port": 1}]},
      {"name": "b", "port": 80, "backends": [{"name": "b", "host": "h", "port": 1}]}],
     "listeners[1].port: got 80; allowed: a port no other listener uses (listeners[0] already listens on it)"),
    ([{"name": "web", "port": 80, "backends": []}],
     "listeners[0].backends: got []; allowed: at least one backend, or a static_reply"),
    ([{"name": "web", "port": 80, "backends": [{"name": "b", "host": "bad host", "port": 80}]}],
     "listeners[0].backends[0].host: got 'bad host'; allowed: an IPv4 address or a DNS name"),
    ([{"name": "web", "port": 80, "backends": [{"name": "b", "host": "h", "port": 70000}]}],
     "listeners[0].backends[0].port: got 70000"),
    ([{"name": "web", "port": 80, "mode": "udp", "backends": [{"name": "b", "host": "h", "port": 1}]}],
     "listeners[0].mode: got 'udp'; allowed: 'http' or 'tcp'"),
    ([{"name": "web", "port": 80, "static_reply": 'say "hi"'}],
     "listeners[0].static_reply"),
    *[([{"name": "web", "port": 443, "backends": [{"name": "b", "host": "h", "port": 1}], "tls": tls}], expected)
      for tls, expected in [
          ({}, "listeners[0].tls.secret: missing"),
          ("lb/https", "listeners[0].tls: got 'lb/https'; allowed: an object with secret, policy, backend_tls"),
          ({"secret": "has space"}, "listeners[0].tls.secret: got 'has space'; allowed: a Secrets Manager secret's"),
          ({"secret": "arn:aws:secretsmanager:us-east-1:12:secret:x"}, "listeners[0].tls.secret: got 'arn:aws:"),
          ({"secret": "s", "policy": "ELBSecurityPolicy-2016-08"},
           "listeners[0].tls.policy: got 'ELBSecurityPolicy-2016-08'; allowed: ELBSecurityPolicy-TLS13-1-2-2021-06 or"),
          ({"secret": "s", "backend_tls": "yes"}, "listeners[0].tls.backend_tls: got 'yes'"),
          ({"secret": "s", "certificate": "x"}, "listeners[0].tls: got ['certificate']; allowed: only secret"),
      ]],
    ([{"name": "hi", "port": 443, "static_reply": "hi", "tls": {"secret": "s", "backend_tls": True}}],
     "listeners[0].tls.backend_tls: got True; allowed: false on a listener without backends"),
])
def test_fails_when_a_listener_is_bad(listeners: list[object], expected: str) -> None:
    problems = _problems(doc(listeners=listeners))
    assert any(expected in p for p in problems), problems


def test_a_tls_listener_takes_the_default_policy_and_the_secrets_are_polled_every_minute() -> None:
    cfg = parse_config(doc(listeners=[{"name": "web", "port": 443, "static_reply": "hi", "tls": {"secret": "lb/x"}}]))
    assert cfg.listeners[0].tls is not None
    assert cfg.listeners[0].tls.policy == "ELBSecurityPolicy-TLS13-1-2-2021-06"
    assert cfg.listeners[0].tls.backend_tls is False
    assert cfg.tls_poll_s == 60
    assert any("tls_poll_s: got 0.5" in p for p in _problems(doc(tls_poll_s=0.5)))


def test_fails_with_every_problem_at_once() -> None:
    problems = _problems(doc(vip="nope", priority=0, region="x", listeners=[]))
    assert len(problems) == 4
    assert [p.split(":")[0] for p in problems] == ["vip", "region", "priority", "listeners"]


def test_fails_when_the_file_is_not_json(tmp_path: Path) -> None:
    path = tmp_path / "node.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=r"(?s)node.json is invalid .*not valid JSON"):
        load_config(str(path))


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "node.json"
    path.write_text(json.dumps(BASE))
    assert load_config(str(path)).node_name == "a"


# Every kind of JSON value, for every field: the answer is a ConfigError naming problems, never
# a TypeError or another exception from deep inside.
_JSON_VALUES: list[object] = [None, True, False, 0, -1, 1.5, float("nan"), "", "x", [], [1], ["x"], [None], [[]],
                              [{}], {}, {"a": 1}, {"name": []}]


def _outcome(d: dict[str, object]) -> str | None:
    try:
        parse_config(d)
    except ConfigError:
        pass
    except Exception as e:  # the point of the test: nothing else may escape
        return f"{type(e).__name__}: {e}"
    return None


def test_any_json_value_in_any_field_is_a_named_problem_never_a_crash() -> None:
    import copy

    from haproxy_ha_runtime.config import DOCUMENT_KEYS

    crashes: dict[str, str] = {}
    for value in _JSON_VALUES:
        cases: dict[str, dict[str, object]] = {key: doc(**{key: value}) for key in DOCUMENT_KEYS}
        for field in ("name", "port", "mode", "backends", "check_path", "static_reply"):
            d = copy.deepcopy(BASE)
            d["listeners"][0][field] = value
            cases[f"listeners[0].{field}"] = d
        for field in ("name", "host", "port"):
            d = copy.deepcopy(BASE)
            d["listeners"][0]["backends"][0][field] = value
            cases[f"listeners[0].backends[0].{field}"] = d
        for field in ("name", "ip", "eni_id"):
            d = copy.deepcopy(BASE)
            d["peers"][0][field] = value
            cases[f"peers[0].{field}"] = d
        cases["timing.advert_int_s"] = doc(timing={"advert_int_s": value})
        cases["paths.run_dir"] = doc(paths={"run_dir": value})
        for where, d in cases.items():
            crash = _outcome(d)
            if crash:
                crashes[f"{where}={value!r}"] = crash
    assert crashes == {}
