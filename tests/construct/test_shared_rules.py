"""The rules the construct's props and the node config document share are written once: the same
bad value gets the same problem line from both entry points (props keep their own names)."""

from __future__ import annotations

from typing import Any

import pytest
from aws_cdk import Stack

from haproxy_ha import HaproxyHa, HaproxyHaPropsError, Listener
from haproxy_ha_runtime.config import ConfigError, parse_config
from tests.runtime.samples import doc


def construct_problems(stack: Stack, **props: Any) -> list[str]:
    with pytest.raises(HaproxyHaPropsError) as e:
        HaproxyHa(stack, "Lb", **{"vip": "192.168.254.10", **props})
    return e.value.problems


class HaproxyHaProblems:
    """The problems HaproxyHa reports for some props: none when it builds."""

    @staticmethod
    def of(stack: Stack, **props: Any) -> list[str]:
        try:
            HaproxyHa(stack, "Lb", **{"vip": "192.168.254.10", **props})
        except HaproxyHaPropsError as e:
            return e.problems
        return []


def document_problems(**changes: Any) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_config(doc(**changes))
    return e.value.problems


# Bad VIPs: the node refuses reserved addresses too, as the construct always did.
@pytest.mark.parametrize("vip", ["240.0.0.1", "255.255.255.255", "224.0.0.18", "127.0.0.1", "169.254.1.1",
                                 "0.0.0.0", "10.0.0.0/24", "not-an-ip", "", "fd00::1"])
def test_a_bad_vip_gets_the_same_problem_from_props_and_document(stack: Stack, vip: str) -> None:
    from_props = [p for p in construct_problems(stack, vip=vip) if p.startswith("vip:")]
    from_document = [p for p in document_problems(vip=vip) if p.startswith("vip:")]
    assert from_props == from_document
    assert len(from_props) == 1 and from_props[0].startswith(f"vip: got {vip!r}; allowed: ")


# (listener prop, the same listener in the document, the problem line both must report)
LISTENER_CASES: list[tuple[Listener, dict[str, Any], str]] = [
    (Listener(port=0, name="web", static_reply="x"),
     {"name": "web", "port": 0, "static_reply": "x"},
     "listeners[0].port: got 0; allowed: a whole number from 1 to 65535"),
    (Listener(port=80, name="Web", static_reply="x"),
     {"name": "Web", "port": 80, "static_reply": "x"},
     "listeners[0].name: got 'Web'; allowed: 1-32 lower-case letters, digits or '-', starting with one of the "
     "first two"),
    (Listener(port=80, name="web", mode="udp", static_reply="x"),  # type: ignore[arg-type]
     {"name": "web", "port": 80, "mode": "udp", "static_reply": "x"},
     "listeners[0].mode: got 'udp'; allowed: 'http' or 'tcp'"),
    (Listener(port=80, name="web", check_path="no-slash", static_reply="x"),
     {"name": "web", "port": 80, "check_path": "no-slash", "static_reply": "x"},
     "listeners[0].check_path: got 'no-slash'; allowed: an absolute URL path such as /healthz: printable ASCII, "
     "no spaces, quotes, '\\', '#' or '$'"),
    (Listener(port=80, name="web", static_reply='say "hi"'),
     {"name": "web", "port": 80, "static_reply": 'say "hi"'},
     "listeners[0].static_reply: got 'say \"hi\"'; allowed: a non-empty one-line text without double quotes, "
     "single quotes, '\\' or '$'"),
    (Listener(port=5432, name="pg", mode="tcp", static_reply="hi"),
     {"name": "pg", "port": 5432, "mode": "tcp", "static_reply": "hi"},
     "listeners[0].static_reply: got 'hi'; allowed: only on a listener with mode 'http'"),
    (Listener(port=80, name="web"),
     {"name": "web", "port": 80, "backends": []},
     "listeners[0].backends: got []; allowed: at least one backend, or a static_reply"),
    (Listener(port=8404, name="web", static_reply="x"),
     {"name": "web", "port": 8404, "static_reply": "x"},
     "stats_port: got 8404; allowed: a port that no listener uses (listeners[0] listens on it)"),
]


@pytest.mark.parametrize(("prop", "document", "expected"), LISTENER_CASES,
                         ids=[case[2].split(":")[0] + "-" + str(i) for i, case in enumerate(LISTENER_CASES)])
def test_a_bad_listener_gets_the_same_problem_from_props_and_document(
        stack: Stack, prop: Listener, document: dict[str, Any], expected: str) -> None:
    assert expected in construct_problems(stack, listeners=[prop])
    assert expected in document_problems(listeners=[document], stats_port=8404)


def test_two_listeners_on_one_port_get_the_same_problem_from_props_and_document(stack: Stack) -> None:
    expected = "listeners[1].port: got 80; allowed: a port no other listener uses (listeners[0] already listens on it)"
    props = [Listener(port=80, name="one", static_reply="x"), Listener(port=80, name="two", static_reply="x")]
    assert expected in construct_problems(stack, listeners=props)
    assert expected in document_problems(listeners=[{"name": "one", "port": 80, "static_reply": "x"},
                                                    {"name": "two", "port": 80, "static_reply": "x"}])


@pytest.mark.parametrize(("backend", "host", "port", "field", "allowed"), [
    ("bad host:80", "bad host", 80, "host", "an IPv4 address or a DNS name"),
    ("10.0.2.5:70000", "10.0.2.5", 70000, "port", "a whole number from 1 to 65535"),
])
def test_a_bad_backend_is_named_as_the_prop_the_user_wrote(
        stack: Stack, backend: str, host: str, port: int, field: str, allowed: str) -> None:
    """The rule is the runtime's; the construct reports it once, against its "host:port" string."""
    props = construct_problems(stack, listeners=[Listener(port=80, backends=(backend,))])
    assert props == [f"listeners[0].backends[0]: got {backend!r}; allowed: {field} must be {allowed}"]
    document = document_problems(listeners=[
        {"name": "web", "port": 80, "backends": [{"name": "srv1", "host": host, "port": port}]}])
    assert document == [f"listeners[0].backends[0].{field}: got {host if field == 'host' else port!r}; "
                        f"allowed: {allowed}"]


def test_a_malformed_backend_string_is_reported_once(stack: Stack) -> None:
    assert construct_problems(stack, listeners=[Listener(port=80, backends=("10.0.2.5",))]) == [
        "listeners[0].backends[0]: got '10.0.2.5'; allowed: \"host:port\", e.g. \"10.0.2.15:8080\" or "
        "\"app.internal:80\""]


@pytest.mark.parametrize(("seconds", "accepted"), [(0, True), (3600, True), (3600.5, False), (7200, False)])
def test_the_drain_timeout_bounds_of_the_prop_are_the_documents(stack: Stack, seconds: float, accepted: bool) -> None:
    """The prop is a Duration and the document a number, so the messages differ; the bounds may not."""
    from aws_cdk import Duration

    prop = [p for p in HaproxyHaProblems.of(stack, drain_timeout=Duration.millis(int(seconds * 1000)))
            if p.startswith("drain_timeout:")]
    try:
        parse_config(doc(drain_timeout_s=seconds))
        document: list[str] = []
    except ConfigError as e:
        document = [p for p in e.problems if p.startswith("drain_timeout_s:")]
    assert (not prop, not document) == (accepted, accepted)


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_a_bad_detailed_metrics_gets_the_same_problem_from_props_and_document(stack: Stack, value: Any) -> None:
    from_props = construct_problems(stack, detailed_metrics=value)
    assert from_props == document_problems(detailed_metrics=value)
    assert from_props == [f"detailed_metrics: got {value!r}; allowed: true or false"]
