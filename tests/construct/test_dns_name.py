"""dns_name: an A record for the VIP in a private zone (made for it, or the caller's), checked at
synth with named problems."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import Stack
from aws_cdk import aws_route53 as route53
from aws_cdk.assertions import Template
from cdk_nag import AwsSolutionsChecks
from template_tools import PLACEHOLDER_ENV, new_app, new_stack, of_type

from haproxy_ha import HaproxyHa, HaproxyHaPropsError

VIP = "192.168.254.10"


def _template(stack: Stack) -> dict[str, Any]:
    return Template.from_stack(stack).to_json()


def test_a_zone_of_exactly_that_name_holds_the_vip_record() -> None:
    stack = new_stack()
    lb = HaproxyHa(stack, "Lb", vip=VIP, dns_name="lb.internal.example")
    t = _template(stack)
    (zone_id,) = of_type(t, "AWS::Route53::HostedZone")
    zone = t["Resources"][zone_id]["Properties"]
    # Exactly the name: a zone for internal.example would hide every other name under it in the VPC.
    assert zone["Name"] == "lb.internal.example."
    (vpc_id,) = of_type(t, "AWS::EC2::VPC")
    assert [v["VPCId"] for v in zone["VPCs"]] == [{"Ref": vpc_id}]  # private: this VPC's resolver answers it
    (record_id,) = of_type(t, "AWS::Route53::RecordSet")
    record = t["Resources"][record_id]["Properties"]
    assert record["Name"] == "lb.internal.example." and record["Type"] == "A"
    assert record["ResourceRecords"] == [VIP] and record["TTL"] == "300"
    assert record["HostedZoneId"] == {"Ref": zone_id}
    assert lb.dns_name == "lb.internal.example" and lb.hosted_zone is not None


def test_the_callers_zone_gets_the_record_and_no_zone_is_made() -> None:
    stack = new_stack()
    zone = route53.PrivateHostedZone.from_hosted_zone_attributes(
        stack, "Theirs", hosted_zone_id="Z0123456789ABCDEFGHIJ", zone_name="corp.internal")
    lb = HaproxyHa(stack, "Lb", vip=VIP, dns_name="lb.corp.internal", hosted_zone=zone)
    t = _template(stack)
    assert of_type(t, "AWS::Route53::HostedZone") == []
    (record_id,) = of_type(t, "AWS::Route53::RecordSet")
    record = t["Resources"][record_id]["Properties"]
    assert record["HostedZoneId"] == "Z0123456789ABCDEFGHIJ" and record["Name"] == "lb.corp.internal."
    assert lb.hosted_zone is zone


def test_no_dns_name_makes_no_record() -> None:
    stack = new_stack()
    lb = HaproxyHa(stack, "Lb", vip=VIP)
    t = _template(stack)
    assert of_type(t, "AWS::Route53::RecordSet") == [] and lb.dns_name is None and lb.hosted_zone is None


@pytest.mark.parametrize(("dns_name", "zone_name", "expected"), [
    ("lb", None, "dns_name: got 'lb'; allowed: a DNS name of two labels or more"),
    ("LB.internal.example", None, "dns_name: got 'LB.internal.example'; allowed: a DNS name of two labels"),
    ("lb..example", None, "dns_name: got 'lb..example'; allowed"),
    ("10.0.0.1", None, "dns_name: got '10.0.0.1'; allowed"),
    (42, None, "dns_name: got 42; allowed"),
    ("lb.other.internal", "corp.internal", "dns_name: got 'lb.other.internal'; allowed: a name in hosted_zone's "
                                           "domain corp.internal"),
    (None, "corp.internal", "hosted_zone: got 'a zone'; allowed: None unless dns_name is given"),
])
def test_fails_when_the_dns_name_is_not_a_name_in_the_zone(dns_name: Any, zone_name: str | None,
                                                           expected: str) -> None:
    stack = new_stack()
    zone = (route53.PrivateHostedZone.from_hosted_zone_attributes(
        stack, "Theirs", hosted_zone_id="Z0123456789ABCDEFGHIJ", zone_name=zone_name) if zone_name else None)
    with pytest.raises(HaproxyHaPropsError) as e:
        HaproxyHa(stack, "Lb", vip=VIP, dns_name=dns_name, hosted_zone=zone)
    assert [p for p in e.value.problems if p.startswith(expected)], e.value.problems


def test_the_zone_and_record_pass_cfn_lint_and_cdk_nag(tmp_path: Path) -> None:
    from test_template_checks import cfn_lint  # the same cfn-lint run and ignores as the app's

    app = new_app()
    stack = Stack(app, "Named", env=PLACEHOLDER_ENV)
    HaproxyHa(stack, "Lb", vip=VIP, dns_name="lb.internal.example")
    report = AwsSolutionsChecks(app).validate_scope(stack)
    assert report.success, [f"{v.rule_name}: {v.description}" for v in report.violations]
    template = tmp_path / "Named.template.json"
    template.write_text(json.dumps(_template(stack)))
    result = cfn_lint(template)
    assert not result.returncode & 3, result.stdout + result.stderr
