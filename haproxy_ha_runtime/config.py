"""The node config document: one JSON object that tells a node everything it needs.

The construct writes it into user data, the lab writes it with namespace addresses, and the
boot script, the renderer and the agent read it.  `load_config` validates the whole document
and reports every problem at once, each naming the field, the value given and what is allowed.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from typing import Any

from .problems import InvalidInput, Problems
from .tls_policy import DEFAULT_POLICY, POLICIES

# The document's schema.  It changes whenever the document's shape does (a test holds it to the
# previous release's shape plus SCHEMA_ADDITIONS), and a node reads its own schema and the one
# before: release N reads N-1's documents, which a rollback hands it.
SCHEMA_VERSION = 2
OLDEST_READ_SCHEMA = 1

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
NAME_ALLOWED = "1-32 lower-case letters, digits or '-', starting with one of the first two"
_ENI_RE = re.compile(r"^eni-[0-9a-f]{8,17}$")
RTB_RE = re.compile(r"^rtb-[0-9a-f]{8,17}$")
_IPV4_RE = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")
HOST_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*$")
_REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
PATH_RE = re.compile(r"^/[!-~]*$")
# A health-check path goes into haproxy.cfg unquoted: no quote, backslash, '#' (a comment there)
# or '$' (an environment variable there).
CHECK_PATH_RE = re.compile(r"^/[!%&(-\[\]-~]*$")
CHECK_PATH_ALLOWED = "an absolute URL path such as /healthz: printable ASCII, no spaces, quotes, '\\', '#' or '$'"
# A static reply goes into haproxy.cfg in double quotes, where '\\' escapes and '$' expands.
STATIC_REPLY_RE = re.compile(r'^[^"\'\\$\x00-\x1f\x7f]+$')
STATIC_REPLY_ALLOWED = "a non-empty one-line text without double quotes, single quotes, '\\' or '$'"
# The node's own health frontend is called this in haproxy.cfg.
RESERVED_LISTENER_NAMES = ("health",)
# Ports the node itself listens on besides stats_port: sshd.
NODE_PORTS = {22: "sshd"}


@dataclass(frozen=True)
class Timing:
    """How fast a node notices a fault, and how long a hand-over or a repair keeps trying to move
    the routes (a MASTER's take-over keeps trying for as long as it is MASTER)."""

    advert_int_s: float
    health_interval_s: float
    health_fall: int
    health_rise: int
    repair_interval_s: float
    takeover_deadline_s: float


# `default` matches keepalived's usual one-second adverts; `fast` uses VRRPv3's sub-second
# adverts.  Failover after a silent node loss takes about 3 x advert_int plus skew.
PROFILES: dict[str, Timing] = {
    "default": Timing(
        advert_int_s=1.0,
        health_interval_s=0.1,
        health_fall=3,
        health_rise=3,
        repair_interval_s=5.0,
        takeover_deadline_s=20.0,
    ),
    "fast": Timing(
        advert_int_s=0.1,
        health_interval_s=0.05,
        health_fall=2,
        health_rise=3,
        repair_interval_s=2.0,
        takeover_deadline_s=10.0,
    ),
}

# Bounds for timing overrides: (minimum, maximum).
_TIMING_BOUNDS: dict[str, tuple[float, float]] = {
    "advert_int_s": (0.01, 255.0),
    "health_interval_s": (0.01, 10.0),
    "health_fall": (1, 100),
    "health_rise": (1, 100),
    "repair_interval_s": (0.1, 3600.0),
    "takeover_deadline_s": (0.5, 600.0),
}


@dataclass(frozen=True)
class Backend:
    """One server HAProxy sends a listener's traffic to.  A host that is a DNS name is resolved
    by HAProxy while it runs (the document's `resolvers`), into up to `max_addresses` servers
    that follow the answers with no reload."""

    name: str
    host: str
    port: int
    max_addresses: int = 8

    @property
    def by_name(self) -> bool:
        """Is the host a DNS name (not an IPv4 address)?"""
        return not _IPV4_RE.match(self.host)


@dataclass(frozen=True)
class HealthCheck:
    """How HAProxy checks a listener's backend servers, as an ELB target group does: every
    `interval_s`, each check given `timeout_s` to answer once connected; a server is up after
    `healthy_threshold` good checks in a row and down after `unhealthy_threshold` bad ones.
    For `http`, an answer is good when its status is in `status_codes` (ELB's matcher syntax:
    "200", "200,202", "200-299")."""

    interval_s: float = 1.0
    timeout_s: float = 1.0
    healthy_threshold: int = 2
    unhealthy_threshold: int = 2
    status_codes: str = "200-399"


@dataclass(frozen=True)
class Tls:
    """A listener that terminates TLS: its certificate and key are the current version of the
    Secrets Manager secret `secret` (its ARN or name; SecretString JSON, see tls.py), served with
    the ELB-named `policy` (tls_policy.POLICIES).  `backend_tls`: re-encrypt to the servers,
    without verifying their certificates (an ALB does not verify its targets' either)."""

    secret: str
    policy: str = DEFAULT_POLICY
    backend_tls: bool = False


# A secret's name (Secrets Manager's characters, at most 512) or its full or partial ARN.
SECRET_RE = re.compile(r"^([A-Za-z0-9/_+=.@-]{1,512}|arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:"
                       r"[A-Za-z0-9/_+=.@-]{1,512})$")
SECRET_ALLOWED = "a Secrets Manager secret's name or ARN"


@dataclass(frozen=True)
class Listener:
    """One HAProxy front end on the VIP, and its backend servers (or a static reply).  With `tls`
    it terminates TLS; a tcp listener without it passes TLS through untouched."""

    name: str
    port: int
    mode: str = "http"
    backends: tuple[Backend, ...] = ()
    check_path: str = "/"
    static_reply: str | None = None
    health_check: HealthCheck = field(default_factory=HealthCheck)
    tls: Tls | None = None


@dataclass(frozen=True)
class Peer:
    """The other node: its name, its address for VRRP unicast, and its ENI (the hand-over target)."""

    name: str
    ip: str
    eni_id: str | None = None


@dataclass(frozen=True)
class Paths:
    """Where a node keeps its files.  The lab points these into a per-node folder."""

    run_dir: str = "/run/haproxy-ha"
    keepalived_conf: str = "/etc/keepalived/keepalived.conf"
    haproxy_conf: str = "/etc/haproxy/haproxy.cfg"
    # HAProxy logs to the journal through the syslog socket (unless the node ships its logs:
    # then to rsyslog's socket, `syslog_socket`).
    log_socket: str = "/dev/log"
    # The agent's JSON events and metric records, and the files rsyslog writes for HAProxy's
    # access log and keepalived's log (what the CloudWatch agent ships).
    log_dir: str = "/var/log/haproxy-ha"
    # Rendered when the node ships its logs (log_group_prefix): the CloudWatch agent's config,
    # rsyslog's drop-in and logrotate's.
    cloudwatch_agent_conf: str = "/etc/haproxy-ha/cloudwatch-agent.json"
    rsyslog_conf: str = "/etc/rsyslog.d/haproxy-ha.conf"
    logrotate_conf: str = "/etc/logrotate.d/haproxy-ha"

    @property
    def notify_fifo(self) -> str:
        """keepalived writes its state changes here; the agent reads them."""
        return self.run_dir + "/keepalived.fifo"

    @property
    def track_file(self) -> str:
        """The agent writes HAProxy's health here (0 healthy, 1 not); keepalived tracks it."""
        return self.run_dir + "/haproxy-health"

    @property
    def priority_file(self) -> str:
        """The agent writes a VRRP priority offset here: 0, or STEP_DOWN_OFFSET while it has
        stepped down; keepalived adds it to the priority."""
        return self.run_dir + "/priority-offset"

    @property
    def haproxy_socket(self) -> str:
        """HAProxy's admin socket."""
        return self.run_dir + "/haproxy.sock"

    @property
    def tls_dir(self) -> str:
        """The TLS listeners' certificate bundles (mode 0600) and what the node knows of their secrets."""
        return self.run_dir + "/tls"

    def tls_bundle(self, listener: str) -> str:
        """The PEM bundle (certificate, chain, key) HAProxy serves on TLS listener `listener`."""
        return f"{self.tls_dir}/{listener}.pem"

    @property
    def syslog_socket(self) -> str:
        """rsyslog's socket for HAProxy's access log, when the node ships its logs."""
        return self.run_dir + "/syslog.sock"

    @property
    def events_log(self) -> str:
        """The agent's JSON events (also on its stdout), when the node ships its logs."""
        return self.log_dir + "/agent.jsonl"

    @property
    def metrics_log(self) -> str:
        """The agent's metric records (CloudWatch embedded metric format), when it has a pair_name."""
        return self.log_dir + "/metrics.jsonl"

    @property
    def access_log(self) -> str:
        """HAProxy's access log, as rsyslog writes it."""
        return self.log_dir + "/haproxy.log"

    @property
    def keepalived_log(self) -> str:
        """keepalived's log, as rsyslog writes it from the journal."""
        return self.log_dir + "/keepalived.log"


@dataclass(frozen=True)
class NodeConfig:
    """A validated node config document.  Its fields are the document's keys (plus `version`),
    in the order the document is written, and their defaults are the document's defaults."""

    node_name: str
    vip: str
    local_ip: str
    peers: tuple[Peer, ...]
    route_table_ids: tuple[str, ...]
    region: str
    listeners: tuple[Listener, ...]
    # null: read it from IMDS (the ENI of the primary MAC).
    eni_id: str | None = None
    # null: the interface that holds local_ip.
    interface: str | None = None
    # null: the region's EC2 endpoint.
    endpoint_url: str | None = None
    vpc_id: str | None = None
    # The reconciler Lambda (name or ARN), which the agent invokes to create a missing route:
    # the node role may only replace routes.  null: nothing to invoke (the lab, tests).
    reconciler: str | None = None
    # This node's Auto Scaling group, and its termination lifecycle hook: the agent hands over,
    # drains and completes the hook before the instance goes.  null: not in a group (the lab).
    auto_scaling_group: str | None = None
    lifecycle_hook: str | None = None
    # How long requests in flight may take to finish when the node leaves (ELB's deregistration delay).
    drain_timeout_s: float = 30.0
    # How long HAProxy may stay down before the node asks its group to replace it.
    replace_unhealthy_after_s: float = 300.0
    # The CloudFormation stack and the group's logical ID, to signal when the node is ready.
    # null: signal nobody.
    cfn_stack: str | None = None
    cfn_resource: str | None = None
    # Live config: this node's document in S3 (its bucket and key), and the node's status object
    # beside it, which says which version of the document the node applied or refused.  The
    # agent polls the document every config_poll_s seconds.  null: the document is only a file.
    config_bucket: str | None = None
    config_key: str | None = None
    status_key: str | None = None
    config_poll_s: float = 10.0
    # How often the agent asks Secrets Manager for the version of each TLS listener's secret.
    tls_poll_s: float = 60.0
    # Observability (issue 13; names in metrics.py).  The Pair dimension of this node's metrics:
    # the construct's name for the pair, unique in its account and region.  null: the agent
    # writes no metric records.
    pair_name: str | None = None
    # HAProxy's metrics per listener and backend (requests, 5xx, sessions, response time,
    # servers up), from its stats socket.  false: only the node's own metrics.
    detailed_metrics: bool = True
    # CloudWatch Logs: the CloudWatch agent ships the node's files to the groups PREFIX/agent,
    # PREFIX/metrics, PREFIX/haproxy and PREFIX/keepalived (shipping.LOG_GROUPS), which the stack
    # creates.  null: nothing ships, and the files stay on the node.
    log_group_prefix: str | None = None
    # The haproxy-ha release whose construct wrote this document (schema 2); the node reports it
    # beside its own runtime's.  null: not said (written by hand, or by the lab).
    release: str | None = None
    priority: int = 100
    preempt: bool = False
    virtual_router_id: int = 51
    profile: str = "default"
    # In the document: overrides of the profile's values.
    timing: Timing = PROFILES["default"]
    stats_port: int = 8404
    # The agent answers GET /state on 127.0.0.1 here; HAProxy serves it to the peer on stats_port.
    agent_port: int = 8405
    # The DNS servers ("address" or "address:port") HAProxy asks for backends given by name.
    # Empty: those of /etc/resolv.conf, the VPC resolver on a node.
    resolvers: tuple[str, ...] = ()
    # In the document: only the paths that differ from the defaults.
    paths: Paths = field(default_factory=Paths)

    @property
    def vip_cidr(self) -> str:
        """The VIP's /32, the only destination the routes module ever writes."""
        return self.vip + "/32"


DOCUMENT_KEYS: tuple[str, ...] = ("version", *(f.name for f in fields(NodeConfig)))


@dataclass(frozen=True)
class Addition:
    """A field that a schema version added to the one before.  `serves`: can its value change what
    a node serves or does?  A document that sets such a field to anything but its default cannot
    be given to a node of the older schema, which would serve without it (`downgrade` refuses);
    any other added field is left out of the older schema's document."""

    field: str
    serves: bool
    why: str


# What each schema added.  The one rule for handing a document to a node of an older release.
SCHEMA_ADDITIONS: dict[int, tuple[Addition, ...]] = {
    2: (Addition("release", serves=False,
                 why="the haproxy-ha release whose construct wrote the document; the node only reports it"),),
}


def added_after(version: int) -> dict[str, Addition]:
    """The fields that schemas after `version` (up to this one) added, by name."""
    return {a.field: a for v in range(version + 1, SCHEMA_VERSION + 1) for a in SCHEMA_ADDITIONS.get(v, ())}


class DowngradeRefused(ValueError):
    """A document cannot be given to a node of an older schema: it sets a field that changes what
    the node serves, which that node does not know.  `reasons` names each such field."""

    def __init__(self, reasons: list[str], version: int) -> None:
        self.reasons = reasons
        super().__init__(f"a node that reads schema {version} cannot be given this document: " + "; ".join(reasons))


def downgrade(doc: dict[str, Any], version: int) -> dict[str, Any]:
    """`doc` (a valid document of this schema) as schema `version` writes it, for a node of an
    older release.  A field added since then is left out when it is at its default, or changes
    nothing a node serves; otherwise DowngradeRefused.  Never silently drops what serves."""
    if not OLDEST_READ_SCHEMA <= version <= SCHEMA_VERSION:
        raise ValueError(f"version: got {version}; allowed: {OLDEST_READ_SCHEMA} to {SCHEMA_VERSION}")
    out = {k: v for k, v in doc.items()}
    reasons = []
    for name, addition in added_after(version).items():
        if name not in out:
            continue
        value = out.pop(name)
        if addition.serves and value != default(name):
            reasons.append(f"{name} is {value!r} (schema {SCHEMA_VERSION} added it: {addition.why})")
    if reasons:
        raise DowngradeRefused(reasons, version)
    out["version"] = version
    return out


def default(key: str) -> Any:
    """The document's default for `key` (the construct uses it for the matching prop)."""
    f = NodeConfig.__dataclass_fields__[key]
    if f.default_factory is not MISSING:
        return f.default_factory()
    if f.default is MISSING:
        raise KeyError(f"{key} has no default: it is required")
    return f.default


def to_document(cfg: NodeConfig) -> dict[str, Any]:
    """The JSON-ready document that `parse_config` reads back as `cfg`."""
    doc: dict[str, Any] = {"version": SCHEMA_VERSION}
    for f in fields(NodeConfig):
        value = getattr(cfg, f.name)
        if f.name == "timing":
            profile = asdict(PROFILES[cfg.profile])
            value = {k: v for k, v in asdict(value).items() if v != profile[k]}
        elif f.name == "paths":
            value = {k: v for k, v in asdict(value).items() if v != asdict(Paths())[k]}
        doc[f.name] = _plain(value)
    return doc


def _plain(value: Any) -> Any:
    """JSON-ready: dataclasses become objects, tuples lists."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


class ConfigError(InvalidInput):
    """The node config document is invalid.  `problems` lists every problem found."""

    def __init__(self, problems: list[str], source: str = "node config") -> None:
        super().__init__(problems, f"{source} is invalid ({len(problems)} problem(s))")


def check_vip(c: Problems, value: Any, where: str = "vip") -> ipaddress.IPv4Address | None:
    """The VIP rule, for the document and the construct's `vip` prop alike."""
    return c.ipv4(value, where, example="192.168.254.10", refuse_reserved=True)


def check_listeners(c: Problems, raw: Any, stats_port: int | None, agent_port: int | None = default("agent_port"),
                    where: str = "listeners") -> tuple[Listener, ...]:
    """The listeners rules, for the document and the construct's `listeners` prop alike.

    `stats_port` and `agent_port` are the already checked ports the node uses itself (None if
    bad): no listener may use them.
    """
    if not isinstance(raw, list) or not raw:
        c.bad(where, raw, "a non-empty list of listener objects")
        return ()
    out: list[Listener] = []
    ports: dict[int, str] = {}
    names: dict[str, str] = {}
    for i, item in enumerate(raw):
        w = f"{where}[{i}]"
        if not isinstance(item, dict):
            c.bad(w, item, "an object with name, port, mode and backends")
            continue
        name = c.string(c.get(item, "name", w + "."), w + ".name", NAME_RE, NAME_ALLOWED)
        if name in RESERVED_LISTENER_NAMES:
            c.bad(w + ".name", name, f"a name other than {name!r}, which the node's own health frontend has")
            name = None
        port = c.integer(c.get(item, "port", w + "."), w + ".port", 1, 65535)
        if port in NODE_PORTS:
            c.bad(w + ".port", port, f"a port the node itself does not listen on ({NODE_PORTS[port]} has {port})")
            port = None
        mode = item.get("mode", "http")
        if not isinstance(mode, str) or mode not in ("http", "tcp"):
            c.bad(w + ".mode", mode, "'http' or 'tcp'")
        check_path = item.get("check_path", "/")
        if not isinstance(check_path, str) or not CHECK_PATH_RE.match(check_path):
            c.bad(w + ".check_path", check_path, CHECK_PATH_ALLOWED)
        static_reply = item.get("static_reply")
        if static_reply is not None and (not isinstance(static_reply, str) or not STATIC_REPLY_RE.match(static_reply)):
            c.bad(w + ".static_reply", static_reply, STATIC_REPLY_ALLOWED)
        if static_reply is not None and mode != "http":
            c.bad(w + ".static_reply", static_reply, "only on a listener with mode 'http'")
        backends = _backends(c, item.get("backends", []), w, static_reply is not None)
        health_check = check_health_check(c, item.get("health_check"), w + ".health_check", mode)
        tls = check_tls(c, item.get("tls"), w + ".tls", bool(backends))
        if port is not None:
            if port in ports:
                c.bad(w + ".port", port, f"a port no other listener uses ({ports[port]} already listens on it)")
            ports[port] = w
            if port == stats_port:
                c.bad("stats_port", stats_port, f"a port that no listener uses ({w} listens on it)")
            if port == agent_port:
                c.bad(w + ".port", port, f"a port other than {port}, where the node's agent answers")
        if name is not None:
            if name in names:
                c.bad(w + ".name", name, f"a name no other listener uses ({names[name]} has it)")
            names[name] = w
        if name is not None and port is not None and mode in ("http", "tcp"):
            out.append(Listener(name=name, port=port, mode=mode, backends=backends,
                                check_path=check_path if isinstance(check_path, str) else "/",
                                static_reply=static_reply, health_check=health_check, tls=tls))
    return tuple(out)


def check_tls(c: Problems, raw: Any, where: str, has_backends: bool) -> Tls | None:
    """A listener's `tls` object (absent or null: no TLS)."""
    if raw is None:
        return None
    names = [f.name for f in fields(Tls)]
    if not isinstance(raw, dict):
        c.bad(where, raw, f"an object with {', '.join(names)}, or null")
        return None
    unknown = sorted(set(raw) - set(names))
    if unknown:
        c.bad(where, unknown, f"only {', '.join(names)}")
    secret = c.string(c.get(raw, "secret", where + "."), where + ".secret", SECRET_RE, SECRET_ALLOWED)
    policy = raw.get("policy", DEFAULT_POLICY)
    if not isinstance(policy, str) or policy not in POLICIES:
        c.bad(where + ".policy", policy, " or ".join(POLICIES))
        policy = None
    backend_tls = c.boolean(raw.get("backend_tls", False), where + ".backend_tls")
    if backend_tls and not has_backends:
        c.bad(where + ".backend_tls", backend_tls, "false on a listener without backends")
    if secret is None or policy is None or backend_tls is None:
        return None
    return Tls(secret=secret, policy=policy, backend_tls=backend_tls)


# ELB's matcher syntax: codes and ranges, comma-separated.
_STATUS_CODES_RE = re.compile(r"^\d{3}(-\d{3})?(,\d{3}(-\d{3})?)*$")
STATUS_CODES_ALLOWED = ("HTTP status codes as ELB writes them: '200', '200,202' or '200-299' "
                        "(each from 100 to 599, a range from low to high)")
# Bounds, as (low, high), of the health check's numbers.
HEALTH_CHECK_BOUNDS: dict[str, tuple[float, float]] = {
    "interval_s": (0.1, 300), "timeout_s": (0.1, 120), "healthy_threshold": (1, 10), "unhealthy_threshold": (1, 10)}


def status_codes_ok(codes: str) -> bool:
    """Are `codes` in ELB's matcher syntax, each from 100 to 599, each range from low to high?"""
    if not _STATUS_CODES_RE.match(codes):
        return False
    for part in codes.split(","):
        low, _, high = part.partition("-")
        if not 100 <= int(low) <= 599 or (high and not int(low) < int(high) <= 599):
            return False
    return True


def check_health_check(c: Problems, raw: Any, where: str, mode: Any) -> HealthCheck:
    """A listener's `health_check` object (absent or null: the defaults)."""
    if raw is None:
        return HealthCheck()
    if not isinstance(raw, dict):
        c.bad(where, raw, "an object with interval_s, timeout_s, healthy_threshold, unhealthy_threshold and "
                          "status_codes, or null")
        return HealthCheck()
    unknown = sorted(set(raw) - {f.name for f in fields(HealthCheck)})
    if unknown:
        c.bad(where, unknown, f"only {', '.join(f.name for f in fields(HealthCheck))}")
    default = HealthCheck()
    values: dict[str, Any] = {}
    for name, (low, high) in HEALTH_CHECK_BOUNDS.items():
        value = raw.get(name, getattr(default, name))
        checked = (c.number(value, f"{where}.{name}", low, high) if name.endswith("_s")
                   else c.integer(value, f"{where}.{name}", int(low), int(high)))
        values[name] = checked if checked is not None else getattr(default, name)
    if values["timeout_s"] > values["interval_s"]:
        c.bad(f"{where}.timeout_s", raw.get("timeout_s"), f"at most interval_s ({values['interval_s']:g})")
    codes = raw.get("status_codes", default.status_codes)
    if not isinstance(codes, str) or not status_codes_ok(codes):
        c.bad(f"{where}.status_codes", codes, STATUS_CODES_ALLOWED)
        codes = default.status_codes
    elif mode == "tcp" and codes != default.status_codes:
        c.bad(f"{where}.status_codes", codes, "only on a listener with mode 'http' (a tcp check only connects)")
    return HealthCheck(status_codes=codes, **values)


def _backends(c: Problems, raw: Any, w: str, has_static_reply: bool) -> tuple[Backend, ...]:
    if not isinstance(raw, list):
        c.bad(w + ".backends", raw, "a list of {name, host, port} objects")
        return ()
    if not raw and not has_static_reply:
        c.bad(w + ".backends", raw, "at least one backend, or a static_reply")
        return ()
    out: list[Backend] = []
    for j, b in enumerate(raw):
        bw = f"{w}.backends[{j}]"
        if not isinstance(b, dict):
            c.bad(bw, b, "an object with name, host and port")
            continue
        name = c.string(c.get(b, "name", bw + "."), bw + ".name", NAME_RE, NAME_ALLOWED)
        host = c.string(c.get(b, "host", bw + "."), bw + ".host", HOST_RE, "an IPv4 address or a DNS name")
        port = c.integer(c.get(b, "port", bw + "."), bw + ".port", 1, 65535)
        max_addresses = c.integer(b.get("max_addresses", 8), bw + ".max_addresses", 1, 64)
        if name is not None and host is not None and port is not None and max_addresses is not None:
            out.append(Backend(name=name, host=host, port=port, max_addresses=max_addresses))
    return tuple(out)


def check_timing(c: Problems, profile: Any, overrides: Any) -> Timing:
    """The timing profile's name (also the construct's `timing_profile`), and overrides of its values."""
    if not isinstance(profile, str) or profile not in PROFILES:
        c.bad("profile", profile, " or ".join(repr(p) for p in PROFILES))
        profile = "default"
    base = asdict(PROFILES[profile])
    if overrides is None:
        overrides = {}
    if not isinstance(overrides, dict):
        c.bad("timing", overrides, "an object of timing overrides")
        overrides = {}
    for key, value in overrides.items():
        if key not in _TIMING_BOUNDS:
            c.bad("timing." + key, value, "one of the keys " + ", ".join(sorted(_TIMING_BOUNDS)))
            continue
        low, high = _TIMING_BOUNDS[key]
        if key in ("health_fall", "health_rise"):
            checked: float | None = c.integer(value, "timing." + key, int(low), int(high))
        else:
            checked = c.number(value, "timing." + key, low, high)
        if checked is not None:
            base[key] = checked
    return Timing(**base)


def _peers(c: Problems, raw: Any) -> tuple[Peer, ...]:
    if not isinstance(raw, list) or not raw:
        c.bad("peers", raw, "a non-empty list of {name, ip, eni_id} objects")
        return ()
    out: list[Peer] = []
    for i, p in enumerate(raw):
        w = f"peers[{i}]"
        if not isinstance(p, dict):
            c.bad(w, p, "an object with name, ip and eni_id")
            continue
        name = c.string(c.get(p, "name", w + "."), w + ".name", NAME_RE, NAME_ALLOWED)
        ip = c.ipv4(c.get(p, "ip", w + "."), w + ".ip")
        eni = p.get("eni_id")
        if eni is not None:
            eni = c.string(eni, w + ".eni_id", _ENI_RE, "an ENI ID such as eni-0123456789abcdef0")
        if name is not None and ip is not None:
            out.append(Peer(name=name, ip=str(ip), eni_id=eni))
    return tuple(out)


def _paths(c: Problems, raw: Any) -> Paths:
    if raw is None:
        return Paths()
    if not isinstance(raw, dict):
        c.bad("paths", raw, "an object of file paths")
        return Paths()
    known = Paths.__dataclass_fields__
    kwargs: dict[str, str] = {}
    for key, value in raw.items():
        if key not in known:
            c.bad("paths." + key, value, "one of the keys " + ", ".join(sorted(known)))
        elif not isinstance(value, str) or not PATH_RE.match(value):
            c.bad("paths." + key, value, "an absolute path without spaces")
        else:
            kwargs[key] = value.rstrip("/") if key == "run_dir" else value
    return Paths(**kwargs)


# A CloudWatch dimension value: printable ASCII, at most 1024 characters, not starting or ending
# with a space.
PAIR_NAME_RE = re.compile(r"^[\x21-\x7e](?:[\x20-\x7e]{0,1022}[\x21-\x7e])?\Z")
PAIR_NAME_ALLOWED = "a CloudWatch dimension value (1-1024 printable ASCII characters), or null"
# CloudWatch Logs allows 512 characters in a group name; the longest suffix is "/keepalived".
_LOG_GROUP_PREFIX_RE = re.compile(r"^[A-Za-z0-9._/#-]{1,500}\Z")
LOG_GROUP_PREFIX_ALLOWED = ("a CloudWatch Logs group name prefix (1-500 letters, digits and . _ / # -, not ending "
                            "in / and not starting with aws/), or null")


def check_log_group_prefix(c: Problems, value: Any, where: str = "log_group_prefix") -> str | None:
    """The prefix of the node's log groups (null: nothing ships)."""
    if value is None:
        return None
    checked = c.string(value, where, _LOG_GROUP_PREFIX_RE, LOG_GROUP_PREFIX_ALLOWED)
    if checked is not None and (checked.endswith("/") or checked.startswith("aws/")):
        c.bad(where, checked, LOG_GROUP_PREFIX_ALLOWED)
        return None
    return checked


# A release's version, as PEP 440 writes it (0.2.0, 0.2.0.dev0, 1.0.0rc1+local).
RELEASE_RE = re.compile(r"^[0-9][0-9A-Za-z.+!-]{0,63}$")
RELEASE_ALLOWED = "a haproxy-ha release version such as 0.2.0, or null"
# How often a node may poll its document in S3, in seconds.
CONFIG_POLL_BOUNDS_S = (1.0, 3600.0)
# How often a node may ask for its TLS listeners' secrets' versions, in seconds.
TLS_POLL_BOUNDS_S = (1.0, 86400.0)
# S3's rules for a bucket name: 3-63 lowercase letters, digits, dots and hyphens (the document's
# config_bucket, and the operator CLI's --documents-bucket).
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def _optional(c: Problems, doc: dict[str, Any], key: str, pattern: re.Pattern[str], allowed: str) -> str | None:
    value = doc.get(key)
    return None if value is None else c.string(value, key, pattern, allowed)


def parse_config(doc: Any, source: str = "node config") -> NodeConfig:
    """Validate a decoded node config document and return it typed.  Raises ConfigError."""
    c = Problems()
    if not isinstance(doc, dict):
        raise ConfigError([f"the document: got {type(doc).__name__}; allowed: a JSON object"], source)
    for key in sorted(set(doc) - set(DOCUMENT_KEYS)):
        c.bad(key, doc[key], "no such field; known fields are " + ", ".join(sorted(DOCUMENT_KEYS)))
    version = doc.get("version", SCHEMA_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or not OLDEST_READ_SCHEMA <= version <= SCHEMA_VERSION:
        c.bad("version", version, f"a schema this node reads: {OLDEST_READ_SCHEMA} to {SCHEMA_VERSION}")
    else:
        # A field that came with a later schema than the document says is not the document's.
        for key in sorted(set(doc) & set(added_after(version))):
            since = min(v for v, adds in SCHEMA_ADDITIONS.items() if any(a.field == key for a in adds))
            c.bad(key, doc[key], f"no such field in schema {version}; it needs a document of version {since} or later")
    node_name = c.string(c.get(doc, "node_name", ""), "node_name", NAME_RE, NAME_ALLOWED)
    vip = check_vip(c, c.get(doc, "vip", ""))
    local_ip = c.ipv4(c.get(doc, "local_ip", ""), "local_ip")
    eni_id = _optional(c, doc, "eni_id", _ENI_RE,
                       "an ENI ID such as eni-0123456789abcdef0, or null to read it from IMDS")
    interface = _optional(c, doc, "interface", re.compile(r"^[A-Za-z0-9_.@-]{1,15}$"),
                          "a Linux interface name (1-15 characters), or null for the one that holds local_ip")
    peers = _peers(c, c.get(doc, "peers", ""))
    tables_raw = c.get(doc, "route_table_ids", "")
    tables: tuple[str, ...] = ()
    if not isinstance(tables_raw, list) or not tables_raw:
        if tables_raw is not None:
            c.bad("route_table_ids", tables_raw, "a non-empty list of route table IDs")
    else:
        checked = [c.string(t, f"route_table_ids[{i}]", RTB_RE, "a route table ID such as rtb-0123456789abcdef0")
                   for i, t in enumerate(tables_raw)]
        tables = tuple(dict.fromkeys(t for t in checked if t is not None))
    region = c.string(c.get(doc, "region", ""), "region", _REGION_RE, "an AWS region name such as eu-west-1")
    endpoint_url = _optional(c, doc, "endpoint_url", re.compile(r"^https?://[^\s/]+(/\S*)?$"),
                             "an http(s) URL, or null for the region's EC2 endpoint")
    vpc_id = _optional(c, doc, "vpc_id", re.compile(r"^vpc-[0-9a-f]{8,17}$"), "a VPC ID such as vpc-0123456789abcdef0")
    reconciler = _optional(c, doc, "reconciler", re.compile(r"^(arn:[a-z-]+:lambda:[a-z0-9-]+:\d{12}:function:)?"
                                                           r"[A-Za-z0-9_-]{1,64}$"),
                           "a Lambda function name or ARN, or null")
    name_like = re.compile(r"^[\x21-\x7e]{1,1600}$")
    auto_scaling_group = _optional(c, doc, "auto_scaling_group", name_like, "an Auto Scaling group name, or null")
    lifecycle_hook = _optional(c, doc, "lifecycle_hook", name_like, "a lifecycle hook name, or null")
    drain_timeout_s = c.number(doc.get("drain_timeout_s", default("drain_timeout_s")), "drain_timeout_s", 0, 3600)
    replace_after_s = c.number(doc.get("replace_unhealthy_after_s", default("replace_unhealthy_after_s")),
                               "replace_unhealthy_after_s", 1, 86400)
    cfn_stack = _optional(c, doc, "cfn_stack", name_like, "a CloudFormation stack name or ID, or null")
    cfn_resource = _optional(c, doc, "cfn_resource", re.compile(r"^[A-Za-z0-9]{1,255}$"),
                             "a logical resource ID, or null")
    if (cfn_stack is None) != (cfn_resource is None):
        c.bad("cfn_resource", cfn_resource, "set together with cfn_stack, or both null")
    if lifecycle_hook is not None and auto_scaling_group is None:
        c.bad("lifecycle_hook", lifecycle_hook, "null, or set together with auto_scaling_group")
    config_bucket = _optional(c, doc, "config_bucket", BUCKET_RE, "an S3 bucket name, or null")
    object_key = re.compile(r"^[\x21-\x7e]{1,1024}$")
    config_key = _optional(c, doc, "config_key", object_key, "an S3 object key, or null")
    status_key = _optional(c, doc, "status_key", object_key, "an S3 object key other than config_key, or null")
    live = {k: doc.get(k) for k in ("config_bucket", "config_key", "status_key")}
    if len({v is None for v in live.values()}) > 1:
        c.bad("config_bucket", live, "config_bucket, config_key and status_key all set, or all null")
    elif config_key is not None and config_key == status_key:
        c.bad("status_key", status_key, "an S3 object key other than config_key, or null")
    config_poll_s = c.number(doc.get("config_poll_s", default("config_poll_s")), "config_poll_s", *CONFIG_POLL_BOUNDS_S)
    tls_poll_s = c.number(doc.get("tls_poll_s", default("tls_poll_s")), "tls_poll_s", *TLS_POLL_BOUNDS_S)
    pair_name = _optional(c, doc, "pair_name", PAIR_NAME_RE, PAIR_NAME_ALLOWED)
    detailed_metrics = c.boolean(doc.get("detailed_metrics", default("detailed_metrics")), "detailed_metrics")
    log_group_prefix = check_log_group_prefix(c, doc.get("log_group_prefix"))
    release = _optional(c, doc, "release", RELEASE_RE, RELEASE_ALLOWED)
    priority = c.integer(doc.get("priority", default("priority")), "priority", 1, 254)
    preempt = c.boolean(doc.get("preempt", default("preempt")), "preempt")
    vrid = c.integer(doc.get("virtual_router_id", default("virtual_router_id")), "virtual_router_id", 1, 255)
    profile = doc.get("profile", default("profile"))
    timing = check_timing(c, profile, doc.get("timing"))
    stats_port = c.integer(doc.get("stats_port", default("stats_port")), "stats_port", 1, 65535)
    agent_port = c.integer(doc.get("agent_port", default("agent_port")), "agent_port", 1, 65535)
    if agent_port is not None and agent_port == stats_port:
        c.bad("agent_port", agent_port, "a port other than stats_port")
    listeners = check_listeners(c, c.get(doc, "listeners", ""), stats_port, agent_port)
    resolvers = _resolvers(c, doc.get("resolvers", []))
    paths = _paths(c, doc.get("paths"))

    if vip is not None and local_ip is not None and vip == local_ip:
        c.bad("vip", str(vip), "an address other than local_ip")
    if vip is not None and any(p.ip == str(vip) for p in peers):
        c.bad("vip", str(vip), "an address other than every peer's ip")
    if node_name is not None and any(p.name == node_name for p in peers):
        c.bad("peers", [p.name for p in peers], f"peer names other than this node's own name {node_name!r}")
    if local_ip is not None and any(p.ip == str(local_ip) for p in peers):
        c.bad("peers", [p.ip for p in peers], f"peer addresses other than local_ip {local_ip}")

    if c.items:
        raise ConfigError(c.items, source)
    assert node_name and vip and local_ip and region and priority and vrid and stats_port and agent_port
    assert preempt is not None and drain_timeout_s is not None and replace_after_s is not None
    assert config_poll_s is not None and tls_poll_s is not None and detailed_metrics is not None
    return NodeConfig(
        node_name=node_name, vip=str(vip), local_ip=str(local_ip), peers=peers, route_table_ids=tables,
        region=region, listeners=listeners, priority=priority, timing=timing, profile=profile,
        eni_id=eni_id, interface=interface, endpoint_url=endpoint_url, vpc_id=vpc_id, reconciler=reconciler,
        auto_scaling_group=auto_scaling_group, lifecycle_hook=lifecycle_hook, cfn_stack=cfn_stack,
        cfn_resource=cfn_resource, drain_timeout_s=drain_timeout_s, replace_unhealthy_after_s=replace_after_s,
        config_bucket=config_bucket, config_key=config_key, status_key=status_key, config_poll_s=config_poll_s,
        tls_poll_s=tls_poll_s, pair_name=pair_name, detailed_metrics=detailed_metrics,
        log_group_prefix=log_group_prefix, release=release, preempt=preempt, virtual_router_id=vrid,
        stats_port=stats_port, agent_port=agent_port, paths=paths, resolvers=resolvers,
    )


def _resolvers(c: Problems, raw: Any) -> tuple[str, ...]:
    allowed = 'a list of at most 3 DNS servers, "address" or "address:port" (IPv4), or [] for /etc/resolv.conf\'s'
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > 3:
        c.bad("resolvers", raw, allowed)
        return ()
    out = []
    for i, server in enumerate(raw):
        address, _, port = server.partition(":") if isinstance(server, str) else ("", "", "")
        try:
            ipaddress.IPv4Address(address)
            ok = not port or (port.isdigit() and 1 <= int(port) <= 65535)
        except ValueError:
            ok = False
        if not ok:
            c.bad(f"resolvers[{i}]", server, allowed)
        else:
            out.append(server)
    return tuple(out)


def load_config(path: str) -> NodeConfig:
    """Read and validate the node config document at `path`.  Raises ConfigError."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as e:
        raise ConfigError([f"cannot read the file: {e.strerror}"], path) from e
    except json.JSONDecodeError as e:
        raise ConfigError([f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"], path) from e
    return parse_config(doc, path)
