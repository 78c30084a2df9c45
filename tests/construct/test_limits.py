"""Limits that a deploy would meet halfway (haproxy_ha/limits.py) are refused at synth, by name, and
what synth accepts fits them once CloudFormation resolves it (resolved here by the tests' stand-in
for CloudFormation)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aws_cdk.assertions import Template
from template_tools import Resolver, documents_resource, new_app, new_stack

from haproxy_ha import HaproxyHa, HaproxyHaPropsError, Listener, limits


def _tables(n: int) -> list[str]:
    return [f"rtb-{i:017x}" for i in range(1, n + 1)]


def _build(extra_tables: int = 0, listeners: list[Listener] | None = None) -> dict[str, Any]:
    stack = new_stack(new_app())
    HaproxyHa(stack, "Lb", vip="192.168.254.10", extra_route_table_ids=_tables(extra_tables), listeners=listeners)
    doc: dict[str, Any] = Template.from_stack(stack).to_json()
    return doc


def _reconciler_environment(doc: dict[str, Any]) -> str:
    (fn,) = [v for k, v in doc["Resources"].items() if v["Type"] == "AWS::Lambda::Function" and "Reconcile" in k]
    resolver = Resolver(doc)
    variables = {k: resolver.resolve(v) for k, v in fn["Properties"]["Environment"]["Variables"].items()}
    return json.dumps(variables, separators=(",", ":"))


def _accepted(extra_tables: int) -> bool:
    try:
        _build(extra_tables)
    except HaproxyHaPropsError:
        return False
    return True


def test_the_most_route_tables_synth_accepts_fit_the_reconcilers_environment() -> None:
    low, high = 100, 200  # accepted, refused
    assert _accepted(low) and not _accepted(high)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if _accepted(mid) else (low, mid)
    environment = _reconciler_environment(_build(low))
    assert len(environment) <= limits.LAMBDA_ENVIRONMENT_LIMIT
    # One table more (its ID and a comma) would not fit: the bound is the limit, not far below it.
    assert len(environment) + len(",rtb-0123456789abcdef0") > limits.LAMBDA_ENVIRONMENT_LIMIT - 30


def test_fails_when_the_route_tables_overflow_the_reconcilers_environment() -> None:
    with pytest.raises(HaproxyHaPropsError) as e:
        _build(200)
    (problem,) = e.value.problems
    assert problem.startswith("client_subnets and extra_route_table_ids: got 204 route tables, which make the "
                              "reconciler's environment ")
    assert "allowed: at most 4096 (Lambda's limit)" in problem


def _listeners(n: int) -> list[Listener]:
    return [Listener(port=1000 + i, name=f"l{i}", backends=tuple(f"10.9.{i}.{j}:8080" for j in range(10)))
            for i in range(n)]


def _resolved(resolver: Resolver, value: Any) -> Any:
    if isinstance(value, dict) and len(value) == 1 and next(iter(value)).startswith(("Ref", "Fn::")):
        return resolver.resolve(value)
    if isinstance(value, dict):
        return {k: _resolved(resolver, v) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolved(resolver, v) for v in value]
    return value


def test_documents_synth_accepts_fit_the_waiters_input_on_an_update() -> None:
    doc = _build(listeners=_listeners(60))
    properties = _resolved(Resolver(doc), documents_resource(doc)["Properties"])
    # An update's event: the new properties and the old ones (the same size here), and the
    # framework's own fields.
    event = json.dumps({"ResourceProperties": properties, "OldResourceProperties": properties})
    assert 200_000 < len(event) <= limits.STEP_FUNCTIONS_INPUT_LIMIT - limits.EVENT_OVERHEAD


def test_fails_when_the_documents_overflow_the_waiters_input() -> None:
    with pytest.raises(HaproxyHaPropsError) as e:
        _build(listeners=_listeners(70))
    (problem,) = e.value.problems
    assert problem.startswith("listeners: got 70 listener(s) with 700 backend(s), whose documents make a deploy's "
                              "waiter input about ")
    assert "allowed: at most 262144 (Step Functions' limit" in problem
