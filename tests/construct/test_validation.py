"""Bad props are refused at synth time, with every problem in one error that names the prop."""

from __future__ import annotations

import pytest
from aws_cdk import Duration, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk.assertions import Annotations, Match

from haproxy_ha import HaproxyHa, HaproxyHaPropsError, HealthCheck, Listener


def imported_vpc(stack: Stack, azs: int = 2, cidr: str = "10.1.0.0/16") -> ec2.IVpc:
    names = ["eu-west-1a", "eu-west-1b", "eu-west-1c"][:azs]
    return ec2.Vpc.from_vpc_attributes(
        stack, "Imported",
        vpc_id="vpc-0123456789abcdef0",
        vpc_cidr_block=cidr,
        availability_zones=names,
        private_subnet_ids=[f"subnet-0{i}23456789abcdef0" for i in range(azs)],
        private_subnet_route_table_ids=[f"rtb-0{i}23456789abcdef0" for i in range(azs)],
    )


def problems_of(excinfo: pytest.ExceptionInfo[HaproxyHaPropsError]) -> list[str]:
    return excinfo.value.problems


def test_fails_when_vip_is_not_an_address(stack: Stack) -> None:
    with pytest.raises(HaproxyHaPropsError) as e:
        HaproxyHa(stack, "Lb", vip="10.200.0.0/24")
    assert problems_of(e) == [
        "vip: got '10.200.0.0/24'; allowed: a single IPv4 address such as 192.168.254.10 (no prefix length)"]


@pytest.mark.parametrize("vip", ["not-an-ip", "", "fd00::1", "127.0.0.1", "169.254.1.1", "224.0.0.18", "0.0.0.0"])
def test_fails_when_vip_is_not_a_unicast_ipv4_address(stack: Stack, vip: str) -> None:
    with pytest.raises(HaproxyHaPropsError, match=r"vip: got"):
        HaproxyHa(stack, "Lb", vip=vip)


def test_fails_when_vip_is_a_token(stack: Stack) -> None:
    from aws_cdk import CfnParameter

    param = CfnParameter(stack, "Vip")
    with pytest.raises(HaproxyHaPropsError, match=r"vip: got .*allowed: a literal IPv4 address"):
        HaproxyHa(stack, "Lb", vip=param.value_as_string)


def test_fails_when_vip_lies_inside_the_built_vpc_cidr(stack: Stack) -> None:
    with pytest.raises(HaproxyHaPropsError) as e:
        HaproxyHa(stack, "Lb", vip="10.0.3.7")
    assert problems_of(e) == [
        "vip: got '10.0.3.7', which lies inside the VPC CIDR 10.0.0.0/16; allowed: an address outside every "
        "VPC CIDR (the VIP is an overlay address)"]


def test_fails_when_vip_lies_inside_a_caller_vpc_cidr(stack: Stack) -> None:
    with pytest.raises(HaproxyHaPropsError, match=r"inside the VPC CIDR 10\.1\.0\.0/16"):
        HaproxyHa(stack, "Lb", vip="10.1.200.1", vpc=imported_vpc(stack))


def test_fails_when_vip_lies_inside_a_reserved_cidr(stack: Stack) -> None:
    with pytest.raises(HaproxyHaPropsError, match=r"inside reserved_cidrs 100\.64\.0\.0/16"):
        HaproxyHa(stack, "Lb", vip="100.64.0.10", vpc=imported_vpc(stack), reserved_cidrs=["100.64.0.0/16"])


def test_fails_when_the_vpc_has_one_az(stack: Stack) -> None:
    with pytest.raises(HaproxyHaPropsError) as e:
        HaproxyHa(stack, "Lb", vip="192.168.254.10", vpc=imported_vpc(stack, azs=1))
    assert any(p.startswith("node_subnets: got subnets in 1 availability zone(s) (eu-west-1a)")
               for p in problems_of(e))


def test_fails_when_max_azs_is_below_two(stack: Stack) -> None:
    with pytest.raises(HaproxyHaPropsError, match=r"max_azs: got 1; allowed: a whole number of at least 2"):
        HaproxyHa(stack, "Lb", vip="192.168.254.10", max_azs=1)


@pytest.mark.parametrize("port", [0, 65536, -1])
def test_fails_when_a_listener_port_is_out_of_range(stack: Stack, port: int) -> None:
    with pytest.raises(HaproxyHaPropsError, match=rf"listeners\[0\]\.port: got {port}; allowed: a whole number"):
        HaproxyHa(stack, "Lb", vip="192.168.254.10", listeners=[Listener(port=port, backends=("10.0.2.5:80",))])


def test_fails_when_two_listeners_share_a_port(stack: Stack) -> None:
    with pytest.raises(HaproxyHaPropsError, match=r"listeners\[1\]\.port: got 80; allowed: a port no other"):
        HaproxyHa(stack, "Lb", vip="192.168.254.10", listeners=[
            Listener(port=80, backends=("10.0.2.5:80",)),
            Listener(port=80, name="other", backends=("10.0.2.6:80",)),
        ])


def test_fails_when_a_listener_uses_the_stats_port(stack: Stack) -> None:
    with pytest.raises(HaproxyHaPropsError,
                       match=r"stats_port: got 8404; allowed: a port that no listener uses \(listeners\[0\] listens"):
        HaproxyHa(stack, "Lb", vip="192.168.254.10", listeners=[Listener(port=8404, backends=("a.internal:80",))])


def test_fails_when_a_listener_has_no_backend_and_no_static_reply(stack: Stack) -> None:
    with pytest.raises(HaproxyHaPropsError, match=r"listeners\[0\]\.backends: got \[\]; allowed: at least one"):
        HaproxyHa(stack, "Lb", vip="192.168.254.10", listeners=[Listener(port=80)])


@pytest.mark.parametrize("backend", ["", "10.0.2.5", "10.0.2.5:", ":80", "10.0.2.5:http", "bad host:80",
                                     "10.0.2.5:70000"])
def test_fails_when_a_backend_is_malformed(stack: Stack, backend: str) -> None:
    with pytest.raises(HaproxyHaPropsError, match=r"listeners\[0\]\.backends\[0\]: got"):
        HaproxyHa(stack, "Lb", vip="192.168.254.10", listeners=[Listener(port=80, backends=(backend,))])


@pytest.mark.parametrize(("check", "expected"), [
    (HealthCheck(healthy_http_codes="2xx"),
     "listeners[0].health_check.healthy_http_codes: got '2xx'; allowed: HTTP status codes as ELB writes them"),
    (HealthCheck(healthy_http_codes="299-200"), "listeners[0].health_check.healthy_http_codes: got '299-200'"),
    (HealthCheck(interval=Duration.seconds(400)),
     "listeners[0].health_check.interval: got '6 minutes 40 seconds'; allowed: a number from 0.1 to 300"),
    (HealthCheck(interval=Duration.seconds(2), timeout=Duration.seconds(3)),
     "listeners[0].health_check.timeout: got '3 seconds'; allowed: at most interval_s (2)"),
    (HealthCheck(healthy_threshold_count=0),
     "listeners[0].health_check.healthy_threshold_count: got 0; allowed: a whole number from 1 to 10"),
    (HealthCheck(unhealthy_threshold_count=11),
     "listeners[0].health_check.unhealthy_threshold_count: got 11; allowed: a whole number from 1 to 10"),
    (HealthCheck(interval=5),  # type: ignore[arg-type]
     "listeners[0].health_check.interval: got 5; allowed: a Duration, such as Duration.seconds(5)"),
    (HealthCheck(path="no-slash"), "listeners[0].health_check.path: got 'no-slash'; allowed: an absolute URL path"),
])
def test_fails_when_a_health_check_prop_is_out_of_range(stack: Stack, check: HealthCheck, expected: str) -> None:
    with pytest.raises(HaproxyHaPropsError) as e:
        HaproxyHa(stack, "Lb", vip="192.168.254.10",
                  listeners=[Listener(port=80, backends=("10.0.2.5:80",), health_check=check)])
    assert [p for p in problems_of(e) if p.startswith(expected)], problems_of(e)


def test_fails_when_a_tcp_listener_expects_http_codes_or_names_two_paths(stack: Stack) -> None:
    with pytest.raises(HaproxyHaPropsError) as e:
        HaproxyHa(stack, "Lb", vip="192.168.254.10", listeners=[
            Listener(port=5432, mode="tcp", backends=("10.0.2.5:5432",), health_check=HealthCheck(
                healthy_http_codes="200")),
            Listener(port=80, backends=("10.0.2.5:80",), check_path="/a", health_check=HealthCheck(path="/b"))])
    assert sorted(problems_of(e)) == [
        "listeners[0].health_check.healthy_http_codes: got '200'; allowed: only on a listener with mode 'http' "
        "(a tcp check only connects)",
        "listeners[1].health_check.path: got '/b'; allowed: None when check_path is set (check_path is '/a')"]


def test_fails_when_static_reply_is_on_a_tcp_listener(stack: Stack) -> None:
    with pytest.raises(HaproxyHaPropsError, match=r"only on a listener with mode 'http'"):
        HaproxyHa(stack, "Lb", vip="192.168.254.10",
                  listeners=[Listener(port=5432, mode="tcp", static_reply="hi")])


def test_fails_when_vpc_is_given_with_vpc_only_props(stack: Stack) -> None:
    with pytest.raises(HaproxyHaPropsError) as e:
        HaproxyHa(stack, "Lb", vip="192.168.254.10", vpc=imported_vpc(stack), max_azs=3,
                  vpc_cidr="10.9.0.0/16", nat_gateways=0)
    assert [p.split(":")[0] for p in problems_of(e)] == ["max_azs", "vpc_cidr", "nat_gateways"]
    assert all("nothing when vpc is given" in p for p in problems_of(e))


def test_fails_when_cidrs_route_tables_and_vrrp_props_are_malformed(stack: Stack) -> None:
    with pytest.raises(HaproxyHaPropsError) as e:
        HaproxyHa(stack, "Lb", vip="192.168.254.10", allowed_cidrs=["10.0.0.1/16"],
                  extra_route_table_ids=["main"], timing_profile="turbo",  # type: ignore[arg-type]
                  virtual_router_id=0, stats_port=70000, vpc_cidr="10.0.0.0/33")
    props = sorted(p.split(":")[0] for p in problems_of(e))
    assert props == sorted(["vpc_cidr[0]", "allowed_cidrs[0]", "extra_route_table_ids[0]", "timing_profile",
                            "virtual_router_id", "stats_port"])


def test_fails_with_every_problem_in_one_error(stack: Stack) -> None:
    with pytest.raises(HaproxyHaPropsError) as e:
        HaproxyHa(stack, "Lb", vip="10.1.0.9", vpc=imported_vpc(stack, azs=1), max_azs=2, listeners=[
            Listener(port=0, backends=("x",)),
            Listener(port=443, name="Bad Name", backends=()),
        ])
    text = str(e.value)
    assert text.startswith("HaproxyHa Test/Lb: ")
    for expected in ("max_azs: got 2", "vip: got '10.1.0.9', which lies inside the VPC CIDR 10.1.0.0/16",
                     "listeners[0].port: got 0", "listeners[0].backends[0]: got 'x'",
                     "listeners[1].name: got 'Bad Name'", "listeners[1].backends: got []",
                     "node_subnets: got subnets in 1 availability zone(s)"):
        assert expected in text, expected


def test_fails_when_imported_subnets_have_no_route_table(stack: Stack) -> None:
    vpc = ec2.Vpc.from_vpc_attributes(
        stack, "NoTables", vpc_id="vpc-0123456789abcdef0", vpc_cidr_block="10.1.0.0/16",
        availability_zones=["eu-west-1a", "eu-west-1b"],
        private_subnet_ids=["subnet-0a23456789abcdef0", "subnet-0b23456789abcdef0"])
    with pytest.raises(HaproxyHaPropsError, match=r"client_subnets: subnet subnet-0a23456789abcdef0 has no route"):
        HaproxyHa(stack, "Lb", vip="192.168.254.10", vpc=vpc)


def test_warns_when_vip_is_public(stack: Stack) -> None:
    HaproxyHa(stack, "Lb", vip="52.95.110.1", vpc=imported_vpc(stack))
    Annotations.from_stack(stack).has_warning("/Test/Lb", Match.string_like_regexp("is a public address"))


# --- the network the survivor needs -------------------------------------------------------------------

def test_fails_when_nat_gateways_is_0_without_an_ec2_endpoint(stack: Stack) -> None:
    with pytest.raises(HaproxyHaPropsError) as e:
        HaproxyHa(stack, "Lb", vip="192.168.254.10", nat_gateways=0)
    (problem,) = problems_of(e)
    assert problem.startswith("nat_gateways: got 0; allowed: 1 or more, or 0 with ec2_endpoint=True")


def test_fails_when_ec2_endpoint_is_not_a_bool(stack: Stack) -> None:
    with pytest.raises(HaproxyHaPropsError, match=r"ec2_endpoint: got 'yes'; allowed: true or false"):
        HaproxyHa(stack, "Lb", vip="192.168.254.10", ec2_endpoint="yes")  # type: ignore[arg-type]


def test_warns_below_one_nat_gateway_per_node_az(stack: Stack) -> None:
    HaproxyHa(stack, "Lb", vip="192.168.254.10", nat_gateways=1)
    Annotations.from_stack(stack).has_warning("/Test/Lb", Match.string_like_regexp(
        "nat_gateways=1 is fewer than one per node AZ"))


@pytest.mark.parametrize("kwargs", [{}, {"nat_gateways": 2}, {"nat_gateways": 1, "ec2_endpoint": True}])
def test_no_nat_warning_with_one_per_node_az_or_an_ec2_endpoint(stack: Stack, kwargs: dict[str, object]) -> None:
    HaproxyHa(stack, "Lb", vip="192.168.254.10", **kwargs)  # type: ignore[arg-type]
    Annotations.from_stack(stack).has_no_warning("*", Match.string_like_regexp("fewer than one per node AZ"))


# --- drain_timeout ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "shown"), [
    (Duration.seconds(3601), "'1 hour 1 second'"),
    (Duration.hours(2), "'2 hours'"),
    (30, "30"),
    ("30s", "'30s'"),
])
def test_fails_when_drain_timeout_is_not_a_duration_from_0_to_3600_seconds(
        stack: Stack, value: object, shown: str) -> None:
    with pytest.raises(HaproxyHaPropsError) as e:
        HaproxyHa(stack, "Lb", vip="192.168.254.10", drain_timeout=value)  # type: ignore[arg-type]
    assert problems_of(e) == [
        f"drain_timeout: got {shown}; allowed: a Duration from 0 to 3600 seconds, such as Duration.seconds(30)"]


def test_fails_when_drain_timeout_is_a_token(stack: Stack) -> None:
    from aws_cdk import CfnParameter

    seconds = CfnParameter(stack, "Drain", type="Number").value_as_number
    with pytest.raises(HaproxyHaPropsError, match=r"drain_timeout: got .*; allowed: a Duration known at synth time"):
        HaproxyHa(stack, "Lb", vip="192.168.254.10", drain_timeout=Duration.seconds(seconds))


def test_drain_timeout_problems_come_with_the_others_in_one_error(stack: Stack) -> None:
    with pytest.raises(HaproxyHaPropsError) as e:
        HaproxyHa(stack, "Lb", vip="not-an-ip", drain_timeout=Duration.hours(2), virtual_router_id=0)
    assert sorted(p.split(":")[0] for p in problems_of(e)) == ["drain_timeout", "vip", "virtual_router_id"]


@pytest.mark.parametrize("value", [Duration.seconds(0), Duration.millis(1500), Duration.hours(1)])
def test_drain_timeout_accepts_the_bounds_and_fractions(stack: Stack, value: Duration) -> None:
    lb = HaproxyHa(stack, "Lb", vip="192.168.254.10", drain_timeout=value)
    assert lb.drain_timeout is value
