"""TLS listener props: each node's role may read exactly the listeners' secrets (and decrypt
through Secrets Manager only where a secret has its own key), every new prop is validated with a
named problem, and no key reaches the template: the documents name the secret, nothing more."""

from __future__ import annotations

import json
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk import aws_kms as kms
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk.assertions import Match, Template
from template_tools import PLACEHOLDER_ENV, node_documents, repo_context

from haproxy_ha import HaproxyHa, Listener
from haproxy_ha_runtime.config import ConfigError, parse_config
from haproxy_ha_runtime.problems import InvalidInput
from tests.runtime import samples

PLAIN_ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:lb/https-AbCdEf"
KEYED_ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:lb/keyed-GhIjKl"
KEY_ARN = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def _stack() -> cdk.Stack:
    app = cdk.App(context=repo_context(), analytics_reporting=False)
    return cdk.Stack(app, "Tls", env=PLACEHOLDER_ENV)


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    stack = _stack()
    plain = secretsmanager.Secret.from_secret_complete_arn(stack, "Plain", PLAIN_ARN)
    keyed = secretsmanager.Secret.from_secret_attributes(
        stack, "Keyed", secret_complete_arn=KEYED_ARN, encryption_key=kms.Key.from_key_arn(stack, "Key", KEY_ARN))
    HaproxyHa(stack, "Lb", vip="192.168.254.10", listeners=[
        Listener(port=80, name="web", backends=("10.0.2.5:8080",)),
        Listener(port=443, name="https", backends=("10.0.2.5:8443",), certificate=plain, backend_tls=True),
        Listener(port=8443, name="tls13", mode="tcp", backends=("10.0.2.6:80",), certificate=keyed,
                 ssl_policy="ELBSecurityPolicy-TLS13-1-3-2021-06"),
    ])
    result: dict[str, Any] = Template.from_stack(stack).to_json()
    return result


def _node_policy_statements(template: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """Each node role's policy statements (the roles described as haproxy-ha nodes)."""
    roles = {name for name, r in template["Resources"].items() if r["Type"] == "AWS::IAM::Role"
             and "haproxy-ha node" in r["Properties"].get("Description", "")}
    out = []
    for r in template["Resources"].values():
        if r["Type"] == "AWS::IAM::Policy" and any(ref.get("Ref") in roles for ref in r["Properties"]["Roles"]):
            out.append(r["Properties"]["PolicyDocument"]["Statement"])
    return out


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_each_node_role_may_read_exactly_the_listeners_secrets(template: dict[str, Any]) -> None:
    policies = _node_policy_statements(template)
    assert len(policies) == 2
    for statements in policies:
        secret_statements = [s for s in statements if any(str(a).startswith("secretsmanager:")
                                                          for a in ([s["Action"]] if isinstance(s["Action"], str)
                                                                    else s["Action"]))]
        granted = {(action, resource) for s in secret_statements for action in _listed(s["Action"])
                   for resource in _listed(s["Resource"])}
        assert granted == {(action, arn) for action in ("secretsmanager:DescribeSecret",
                                                        "secretsmanager:GetSecretValue")
                           for arn in (PLAIN_ARN, KEYED_ARN)}
        assert all(s["Effect"] == "Allow" and "Condition" not in s for s in secret_statements)


def test_the_documents_name_the_secrets_and_their_policies(template: dict[str, Any]) -> None:
    for doc in node_documents(template).values():  # type: ignore[arg-type]
        web, https, tls13 = doc["listeners"]
        assert web.get("tls") is None
        assert https["tls"] == {"secret": PLAIN_ARN, "policy": "ELBSecurityPolicy-TLS13-1-2-2021-06",
                                "backend_tls": True}
        assert tls13["tls"] == {"secret": KEYED_ARN, "policy": "ELBSecurityPolicy-TLS13-1-3-2021-06",
                                "backend_tls": False}
        assert doc["tls_poll_s"] == 60


def test_a_secret_made_in_the_stack_is_named_by_its_arn_and_no_key_is_in_the_template() -> None:
    stack = _stack()
    secret = secretsmanager.Secret(stack, "Cert")
    HaproxyHa(stack, "Lb", vip="192.168.254.10", listeners=[
        Listener(port=443, name="https", static_reply="hi", certificate=secret)])
    template = Template.from_stack(stack)
    text = json.dumps(template.to_json())
    assert "PRIVATE KEY" not in text
    for doc in node_documents(template.to_json()).values():  # type: ignore[arg-type]
        # The secret's ARN is its Ref (template_tools writes a resolved Ref as "ref-<logical ID>").
        assert doc["listeners"][0]["tls"]["secret"] == "ref-" + stack.get_logical_id(
            secret.node.default_child)  # type: ignore[arg-type]
    template.has_resource_properties("AWS::IAM::Policy", {"PolicyDocument": {"Statement": Match.array_with([
        {"Action": ["secretsmanager:DescribeSecret", "secretsmanager:GetSecretValue"], "Effect": "Allow",
         "Resource": {"Ref": stack.get_logical_id(secret.node.default_child)}}])}})  # type: ignore[arg-type]


@pytest.mark.parametrize(("listener", "expected"), [
    (dict(ssl_policy="ELBSecurityPolicy-2016-08"),
     "listeners[0].ssl_policy: got 'ELBSecurityPolicy-2016-08'; allowed: ELBSecurityPolicy-TLS13-1-2-2021-06 or"),
    (dict(backend_tls="yes"), "listeners[0].backend_tls: got 'yes'; allowed: true or false"),
    (dict(certificate=None, ssl_policy="ELBSecurityPolicy-TLS13-1-3-2021-06"),
     "listeners[0].ssl_policy: got 'ELBSecurityPolicy-TLS13-1-3-2021-06'; allowed: only with a certificate"),
    (dict(certificate=None, backend_tls=True), "listeners[0].backend_tls: got True; allowed: only with a certificate"),
    (dict(certificate="lb/https"), "listeners[0].certificate: got 'lb/https'; allowed: a secretsmanager.ISecret"),
])
def test_fails_when_a_tls_prop_is_bad(listener: dict[str, Any], expected: str) -> None:
    stack = _stack()
    props: dict[str, Any] = {"certificate": secretsmanager.Secret.from_secret_complete_arn(stack, "S", PLAIN_ARN)}
    props.update(listener)
    with pytest.raises(InvalidInput) as info:
        HaproxyHa(stack, "Lb", vip="192.168.254.10",
                  listeners=[Listener(port=443, name="https", backends=("10.0.2.5:8443",), **props)])
    assert any(expected in p for p in info.value.problems), info.value.problems


def _kms_statements(statements: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for s in statements if any(str(a).startswith("kms:") for a in _listed(s["Action"]))]


def test_a_secret_with_its_own_imported_key_may_be_decrypted_through_secrets_manager_only(
        template: dict[str, Any]) -> None:
    """grant_read adds nothing for an imported key (CDK would change the key's policy, which it
    cannot): the construct adds kms:Decrypt on that key alone, only via Secrets Manager."""
    for statements in _node_policy_statements(template):
        (kms_statement,) = _kms_statements(statements)
        assert kms_statement["Effect"] == "Allow"
        assert _listed(kms_statement["Action"]) == ["kms:Decrypt"]
        assert _listed(kms_statement["Resource"]) == [KEY_ARN]
        via = kms_statement["Condition"]["StringEquals"]["kms:ViaService"]
        assert via == {"Fn::Join": ["", [f"secretsmanager.{PLACEHOLDER_ENV.region}.", {"Ref": "AWS::URLSuffix"}]]}


def test_no_key_no_kms_statement() -> None:
    stack = _stack()
    plain = secretsmanager.Secret.from_secret_complete_arn(stack, "Plain", PLAIN_ARN)
    HaproxyHa(stack, "Lb", vip="192.168.254.10", listeners=[
        Listener(port=443, name="https", static_reply="hi", certificate=plain)])
    for statements in _node_policy_statements(Template.from_stack(stack).to_json()):
        assert _kms_statements(statements) == []


def test_the_certificate_poll_interval_reaches_both_documents() -> None:
    stack = _stack()
    poll = cdk.Duration.minutes(5)
    lb = HaproxyHa(stack, "Lb", vip="192.168.254.10", certificate_poll_interval=poll)
    assert lb.certificate_poll_interval is poll
    docs = node_documents(Template.from_stack(stack).to_json())
    assert len(docs) == 2
    assert {doc["tls_poll_s"] for doc in docs.values()} == {300}


@pytest.mark.parametrize(("value", "shown"), [
    (cdk.Duration.millis(999), "'999 millis'"),
    (cdk.Duration.days(2), "'2 days'"),
    (60, "60"),
])
def test_fails_when_certificate_poll_interval_is_not_a_duration_from_1_second_to_1_day(
        value: Any, shown: str) -> None:
    with pytest.raises(InvalidInput) as info:
        HaproxyHa(_stack(), "Lb", vip="192.168.254.10", certificate_poll_interval=value)
    assert info.value.problems == [f"certificate_poll_interval: got {shown}; allowed: a Duration from 1 to 86400 "
                                   "seconds, such as Duration.seconds(60)"]


@pytest.mark.parametrize(("seconds", "accepted"), [(1, True), (86400, True), (86401, False)])
def test_the_certificate_poll_bounds_are_the_documents(seconds: int, accepted: bool) -> None:
    stack = _stack()
    try:
        HaproxyHa(stack, "Lb", vip="192.168.254.10", certificate_poll_interval=cdk.Duration.seconds(seconds))
        prop_accepts = True
    except InvalidInput:
        prop_accepts = False
    assert prop_accepts is accepted
    doc_accepts = True
    try:
        parse_config(samples.doc(tls_poll_s=seconds))
    except ConfigError:
        doc_accepts = False
    assert doc_accepts is accepted
