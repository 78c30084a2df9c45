"""Synth-time checks of HaproxyHa props.  Every problem is collected and reported in one error.

Rules that the node config document also has (the VIP, listeners, ports, timing profile) are
the runtime's own (`haproxy_ha_runtime.config`), called here with the props' names.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aws_cdk import Duration, Token
from aws_cdk import aws_logs as logs

from haproxy_ha.listener import Listener, listener_documents
from haproxy_ha_runtime import config
from haproxy_ha_runtime.problems import InvalidInput, Problems


class HaproxyHaPropsError(InvalidInput):
    """HaproxyHa was given props it cannot build.  `problems` lists every one of them."""

    def __init__(self, construct_path: str, problems: Sequence[str]) -> None:
        super().__init__(problems, f"HaproxyHa {construct_path}: {len(problems)} invalid prop(s)")


def is_token(value: Any) -> bool:
    """Is `value` a CDK token (known only at deploy time)?"""
    return isinstance(value, str) and Token.is_unresolved(value)


# Until the CDK CLI has looked a VPC up and stored the answer in cdk.context.json,
# `Vpc.from_lookup` hands back a stand-in with this ID (and route tables such as rtb-12345s, a
# CIDR of 1.2.3.4/5); the CLI then does the lookup and synthesizes again.  Five digits: never a
# real VPC's ID, which has 8 or 17.
LOOKUP_PENDING_VPC_ID = "vpc-12345"


def lookup_pending(vpc_id: str) -> bool:
    """Is this the stand-in VPC of a `Vpc.from_lookup` that has not happened yet?  Its IDs and
    CIDR are not to be judged: the real ones are checked on the synthesis after the lookup."""
    return not is_token(vpc_id) and vpc_id == LOOKUP_PENDING_VPC_ID


@dataclass(frozen=True)
class CheckedProps:
    """What the props that need no VPC came to: the VIP and the document's listeners (each None
    or empty when a problem was recorded)."""

    vip: ipaddress.IPv4Address | None
    listeners: tuple[config.Listener, ...]
    drain_timeout_s: float | None = None
    config_poll_s: float | None = None
    tls_poll_s: float | None = None


def check_props(
    problems: Problems,
    *,
    vip: Any,
    listeners: Sequence[Listener],
    vpc_given: bool,
    max_azs: Any,
    vpc_cidr: Any,
    nat_gateways: Any,
    reserved_cidrs: Sequence[str],
    allowed_cidrs: Sequence[str] | None,
    extra_route_table_ids: Sequence[str],
    timing_profile: Any,
    preempt: Any,
    virtual_router_id: Any,
    stats_port: Any,
    ec2_endpoint: Any = False,
    drain_timeout: Any = None,
    config_poll_interval: Any = None,
    certificate_poll_interval: Any = None,
) -> CheckedProps:
    """Check every prop that can be checked before the VPC exists."""
    if vpc_given:
        for prop, value in (("max_azs", max_azs), ("vpc_cidr", vpc_cidr), ("nat_gateways", nat_gateways)):
            if value is not None:
                problems.bad(prop, value, "nothing when vpc is given: it only shapes the VPC the construct builds")
    vip_addr = check_vip(problems, vip)
    if max_azs is not None and (isinstance(max_azs, bool) or not isinstance(max_azs, int) or max_azs < 2):
        problems.bad("max_azs", max_azs, "a whole number of at least 2: the nodes run in two different AZs")
    if nat_gateways is not None and (isinstance(nat_gateways, bool) or not isinstance(nat_gateways, int)
                                     or nat_gateways < 0):
        problems.bad("nat_gateways", nat_gateways, "a whole number of 0 or more")
    endpoint = problems.boolean(ec2_endpoint, "ec2_endpoint")
    if nat_gateways == 0 and not vpc_given and endpoint is False:
        problems.bad("nat_gateways", nat_gateways,
                     "1 or more, or 0 with ec2_endpoint=True: the surviving node moves the routes through the EC2 "
                     "API, so it needs a NAT gateway or an EC2 endpoint (with 0, the construct also adds an S3 "
                     "gateway endpoint for the node files and packages)")
    if vpc_cidr is not None:
        check_cidrs(problems, "vpc_cidr", [vpc_cidr])
    check_cidrs(problems, "reserved_cidrs", list(reserved_cidrs))
    if allowed_cidrs is not None:
        if not allowed_cidrs:
            problems.bad("allowed_cidrs", list(allowed_cidrs), "at least one CIDR (omit it for the VPC CIDR)")
        check_cidrs(problems, "allowed_cidrs", list(allowed_cidrs))
    check_route_table_ids(problems, "extra_route_table_ids", list(extra_route_table_ids))
    if not isinstance(timing_profile, str) or timing_profile not in config.PROFILES:
        problems.bad("timing_profile", timing_profile, " or ".join(repr(p) for p in config.PROFILES))
    problems.boolean(preempt, "preempt")
    problems.integer(virtual_router_id, "virtual_router_id", 1, 255)
    checked_stats_port = problems.integer(stats_port, "stats_port", 1, 65535)
    checked_listeners = config.check_listeners(problems, listener_documents(problems, listeners), checked_stats_port)
    drain_timeout_s = check_drain_timeout(problems, DEFAULT_DRAIN_TIMEOUT if drain_timeout is None else drain_timeout)
    config_poll_s = check_config_poll_interval(
        problems, DEFAULT_CONFIG_POLL_INTERVAL if config_poll_interval is None else config_poll_interval)
    tls_poll_s = check_certificate_poll_interval(
        problems, DEFAULT_CERTIFICATE_POLL_INTERVAL if certificate_poll_interval is None else certificate_poll_interval)
    return CheckedProps(vip=vip_addr, listeners=checked_listeners, drain_timeout_s=drain_timeout_s,
                        config_poll_s=config_poll_s, tls_poll_s=tls_poll_s)


# The node's own bounds for drain_timeout_s (haproxy_ha_runtime.config.parse_config); the shared
# rules test checks that the prop and the document agree on them.
DRAIN_TIMEOUT_MAX_S = 3600
DEFAULT_DRAIN_TIMEOUT = Duration.seconds(config.default("drain_timeout_s"))


# The node polls its document in S3 this often (the document's config_poll_s).  The document
# allows up to an hour, but a deploy waits for each node's next poll (the documents' custom
# resource), and CloudFormation waits at most an hour for it: the prop stays within minutes.
CONFIG_POLL_INTERVAL_MAX_S = 300
DEFAULT_CONFIG_POLL_INTERVAL = Duration.seconds(config.default("config_poll_s"))
# The node asks for its TLS listeners' secrets' versions this often (the document's tls_poll_s).
DEFAULT_CERTIFICATE_POLL_INTERVAL = Duration.seconds(config.default("tls_poll_s"))


def _known_millis(problems: Problems, prop: str, value: Any, allowed: str) -> float | None:
    """A Duration prop known at synth time, in milliseconds; or None after recording why not."""
    if not isinstance(value, Duration):
        problems.bad(prop, value, allowed)
        return None
    if value.is_unresolved():
        problems.bad(prop, value.to_string(), "a Duration known at synth time, not a token")
        return None
    return float(value.to_milliseconds())


def check_duration(problems: Problems, prop: str, value: Any, low: float, high: float, example: str) -> float | None:
    """A Duration known at synth time, from `low` to `high` seconds, in seconds; or None after
    recording why not."""
    allowed = f"a Duration from {low:g} to {high:g} seconds, such as {example}"
    millis = _known_millis(problems, prop, value, allowed)
    if millis is None:
        return None
    seconds = millis / 1000
    if not low <= seconds <= high:
        problems.bad(prop, value.to_human_string(), allowed)
        return None
    return seconds


def check_dns_name(problems: Problems, dns_name: Any, hosted_zone: Any) -> None:
    """`dns_name`: a DNS name of two labels or more (lowercase, as Route 53 keeps it), inside
    `hosted_zone` when one is given and its name is known at synth."""
    allowed = "a DNS name of two labels or more, lowercase, such as lb.internal.example"
    if dns_name is None:
        if hosted_zone is not None:
            problems.bad("hosted_zone", "a zone", "None unless dns_name is given (the zone is for its record)")
        return
    if is_token(dns_name):
        problems.bad("dns_name", dns_name, "a name known at synth time, not a token")
        return
    if (not isinstance(dns_name, str) or not config.HOST_RE.match(dns_name) or "." not in dns_name
            or dns_name != dns_name.lower() or dns_name.replace(".", "").isdigit()):
        problems.bad("dns_name", dns_name, allowed)
        return
    zone_name = getattr(hosted_zone, "zone_name", None) if hosted_zone is not None else None
    if isinstance(zone_name, str) and not is_token(zone_name):
        zone = zone_name.rstrip(".").lower()
        if dns_name != zone and not dns_name.endswith("." + zone):
            problems.bad("dns_name", dns_name, f"a name in hosted_zone's domain {zone}")


def check_drain_timeout(problems: Problems, value: Any) -> float | None:
    """The drain timeout in seconds (the document's drain_timeout_s), or None after recording why not."""
    return check_duration(problems, "drain_timeout", value, 0, DRAIN_TIMEOUT_MAX_S, "Duration.seconds(30)")


def check_config_poll_interval(problems: Problems, value: Any) -> float | None:
    """How often the nodes poll their documents, in seconds (the document's config_poll_s)."""
    return check_duration(problems, "config_poll_interval", value, config.CONFIG_POLL_BOUNDS_S[0],
                          min(CONFIG_POLL_INTERVAL_MAX_S, config.CONFIG_POLL_BOUNDS_S[1]), "Duration.seconds(10)")


def check_certificate_poll_interval(problems: Problems, value: Any) -> float | None:
    """How often the nodes ask for their certificates' secrets' versions, in seconds (the
    document's tls_poll_s)."""
    return check_duration(problems, "certificate_poll_interval", value, *config.TLS_POLL_BOUNDS_S,
                          "Duration.seconds(60)")


def check_vip(problems: Problems, vip: Any) -> ipaddress.IPv4Address | None:
    """The VIP as an address (the runtime's rule), or None after recording why it is not one."""
    if is_token(vip):
        problems.bad("vip", vip, "a literal IPv4 address known at synth time, not a token")
        return None
    return config.check_vip(problems, vip)


def check_vip_outside(problems: Problems, vip: ipaddress.IPv4Address, cidrs: Sequence[tuple[str, str]]) -> None:
    """`cidrs` are (where it comes from, CIDR) pairs; tokens were filtered out by the caller."""
    for source, cidr in cidrs:
        try:
            net = ipaddress.IPv4Network(cidr, strict=False)
        except (ipaddress.AddressValueError, ipaddress.NetmaskValueError, ValueError):
            continue  # reported where that CIDR is checked
        if vip in net:
            problems.add(
                f"vip: got {str(vip)!r}, which lies inside {source} {cidr}; "
                "allowed: an address outside every VPC CIDR (the VIP is an overlay address)"
            )


def check_cidrs(problems: Problems, prop: str, cidrs: Sequence[str]) -> None:
    """Each literal CIDR is an IPv4 network with no host bits set."""
    for i, cidr in enumerate(cidrs):
        if is_token(cidr):
            continue
        try:
            ipaddress.IPv4Network(cidr, strict=True)
        except (ipaddress.AddressValueError, ipaddress.NetmaskValueError, ValueError, TypeError):
            problems.bad(f"{prop}[{i}]", cidr, "an IPv4 CIDR such as 10.0.0.0/16, with no host bits set")


def check_route_table_ids(problems: Problems, prop: str, ids: Sequence[str]) -> None:
    """Each literal ID looks like a route table ID."""
    for i, rtb in enumerate(ids):
        if is_token(rtb):
            continue
        if not isinstance(rtb, str) or not config.RTB_RE.match(rtb):
            problems.bad(f"{prop}[{i}]", rtb, "a route table ID such as rtb-0123456789abcdef0")


# Observability props (issue 13).  A pair is "degraded" for this long before its alarm fires:
# longer than a node's replacement takes, so that a planned replacement pages nobody.  CloudWatch
# evaluates at most a day of one-minute periods.
DEFAULT_LOG_RETENTION = logs.RetentionDays.ONE_MONTH
DEFAULT_DEGRADED_AFTER = Duration.minutes(15)
DEGRADED_AFTER_MAX_MINUTES = 1440
# A node writes its state every 60 s, not on the minute, so one minute may hold no record of a
# healthy node; the degraded alarm counts that as unhealthy, so it needs two minutes at least.
DEGRADED_AFTER_MIN_MINUTES = 2


@dataclass(frozen=True)
class CheckedObservability:
    """The observability props as the construct uses them (defaults filled in); None where a
    problem was recorded."""

    log_retention: logs.RetentionDays | None
    degraded_after_minutes: int | None
    detailed_metrics: bool | None


def check_observability(problems: Problems, *, log_retention: Any, degraded_after: Any, detailed_metrics: Any,
                        alarm_topic: Any, cloudtrail_log_group: Any) -> CheckedObservability:
    """Check the props of the pair's logs, alarms and dashboard."""
    retention = DEFAULT_LOG_RETENTION if log_retention is None else log_retention
    if not isinstance(retention, logs.RetentionDays):
        problems.bad("log_retention", retention, "a logs.RetentionDays, such as RetentionDays.ONE_MONTH")
        retention = None
    minutes = _whole_minutes(problems, "degraded_after", DEFAULT_DEGRADED_AFTER if degraded_after is None
                             else degraded_after, DEGRADED_AFTER_MIN_MINUTES, DEGRADED_AFTER_MAX_MINUTES)
    detailed = problems.boolean(detailed_metrics, "detailed_metrics")
    # jsii interfaces cannot be checked with isinstance: look for what the construct reads.
    if alarm_topic is not None and not isinstance(getattr(alarm_topic, "topic_arn", None), str):
        problems.bad("alarm_topic", alarm_topic, "an sns.ITopic (sns.Topic, or sns.Topic.from_topic_arn), or None")
    if cloudtrail_log_group is not None and not isinstance(getattr(cloudtrail_log_group, "log_group_name", None), str):
        problems.bad("cloudtrail_log_group", cloudtrail_log_group,
                     "a logs.ILogGroup that a CloudTrail trail delivers to (logs.LogGroup.from_log_group_name), "
                     "or None")
    return CheckedObservability(log_retention=retention, degraded_after_minutes=minutes, detailed_metrics=detailed)


def _whole_minutes(problems: Problems, prop: str, value: Any, low: int, high: int) -> int | None:
    allowed = f"a Duration of whole minutes from {low} to {high}, such as Duration.minutes(15)"
    millis = _known_millis(problems, prop, value, allowed)
    if millis is None:
        return None
    if millis % 60_000 or not low <= millis // 60_000 <= high:
        problems.bad(prop, value.to_human_string(), allowed)
        return None
    return int(millis // 60_000)
