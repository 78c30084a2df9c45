"""Node commands: `check` and `render` a node config document, run the resident `agent`, wait
until the node is `ready` (then signal CloudFormation), and render what `ship`s its logs.

    python3 -m haproxy_ha_runtime check  --config /etc/haproxy-ha/node.json
    python3 -m haproxy_ha_runtime render --config /etc/haproxy-ha/node.json
    python3 -m haproxy_ha_runtime agent  --config /etc/haproxy-ha/node.json
    python3 -m haproxy_ha_runtime ready  --config /etc/haproxy-ha/node.json --timeout 600
    python3 -m haproxy_ha_runtime ship   --config /etc/haproxy-ha/node.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import subprocess
import sys
import threading
import time
from typing import Callable

from . import peer, shipping, tls
from .apply import CheckFailed, apply_config
from .config import ConfigError, NodeConfig, load_config
from .imds import Imds, ImdsError
from .log import log_event, logging_to

# `agent`, `lifecycle`, `routes` and `live_config` load boto3 and botocore, about half a second of
# CPU on a node: only `agent` and `ready` need them, so they import them.  Every boot runs `check`,
# `render` and `ship` once each, and a new document runs `render` again.

DEFAULT_CONFIG = "/etc/haproxy-ha/node.json"
# The agent stopped to be started again on a new document (EX_TEMPFAIL).
EXIT_RESTART = 75


def interface_for(local_ip: str) -> str:
    """The name of the interface that holds `local_ip`."""
    out = subprocess.run(["ip", "-j", "-4", "addr", "show"], check=True, capture_output=True, text=True).stdout
    for link in json.loads(out):
        for addr in link.get("addr_info", []):
            if addr.get("local") == local_ip:
                return str(link["ifname"])
    raise ConfigError([f"local_ip: got {local_ip!r}; allowed: an address on one of this host's interfaces"])


def resolved(cfg: NodeConfig) -> NodeConfig:
    """The config with its interface filled in: the one that holds `local_ip`, unless it names one."""
    if cfg.interface:
        return cfg
    return dataclasses.replace(cfg, interface=interface_for(cfg.local_ip))


def _tls_store(cfg: NodeConfig) -> tls.TlsStore | None:
    """The TLS listeners' certificates, or None when no listener terminates TLS."""
    if not any(lst.tls is not None for lst in cfg.listeners):
        return None
    return tls.TlsStore(tls.make_client(cfg), cfg.paths)


def _render(cfg: NodeConfig, source: str) -> None:
    cfg = resolved(cfg)
    store = _tls_store(cfg)
    left_out: dict[str, str] = {}
    if store is not None:
        # Boot serves whatever certificates are valid now; the agent keeps polling the rest.
        store.refresh(cfg)
        left_out = store.left_out(cfg)
        for name, why in left_out.items():
            print(f"warning: TLS listener {name} is left out: {why}", file=sys.stderr)
    applied = apply_config(cfg, source, left_out=left_out)
    def what(changed: bool) -> str:
        return "changed" if changed else "as it was"

    print(f"rendered and checked {cfg.paths.keepalived_conf} ({what(applied.keepalived_changed)}) and "
          f"{cfg.paths.haproxy_conf} ({what(applied.haproxy_changed)}) for node {cfg.node_name}")


def _agent(cfg: NodeConfig, source: str) -> int:
    from . import agent, lifecycle, routes
    from .live_config import LiveConfig

    eni_id = cfg.eni_id or Imds().primary_eni_id()
    client = routes.make_client(cfg.region, cfg.endpoint_url)
    # The VIP must sit on the node before it can answer; the route decides who gets traffic.
    agent.ensure_vip(cfg.vip)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    platform = lifecycle.aws_platform(cfg) if cfg.auto_scaling_group else None
    live = None
    # Every TLS listener's secret is polled by the agent, with or without a listener now: a new
    # document may add one.
    store = tls.TlsStore(tls.make_client(cfg), cfg.paths)
    if cfg.config_bucket is not None:
        s3 = (platform or lifecycle.aws_platform(cfg)).client("s3")
        live = LiveConfig(cfg, s3, source, instance_id=platform.instance_id if platform else lambda: None,
                          resolve=resolved, tls=store)
    # A node that ships its logs keeps its events in a file too, for the CloudWatch agent.
    log = logging_to(cfg.paths.events_log) if cfg.log_group_prefix else log_event
    ran = agent.run(cfg, client, eni_id, stop, log=log, invoke_reconciler=_reconciler_invoker(cfg),
                    platform=platform, live=live, tls=store, document_path=source)
    # A new document that only a new agent can take: systemd (Restart=always) starts it again.
    return EXIT_RESTART if ran.restart_requested else 0


def _ready(cfg: NodeConfig, timeout_s: float) -> int:
    """Wait until this node is ready, then signal CloudFormation (if the document names a stack);
    on timeout, say what is missing, signal failure and return 4."""
    from . import lifecycle, routes

    client = routes.make_client(cfg.region, cfg.endpoint_url)
    platform = lifecycle.aws_platform(cfg)
    peer_cfg = cfg.peers[0] if len(cfg.peers) == 1 else None
    deadline = time.monotonic() + timeout_s
    problems: list[str] = []
    while True:
        own = peer.probe_peer("127.0.0.1", cfg.agent_port, 2.0)
        try:
            replaced = peer_cfg is None or lifecycle.peer_being_replaced(client, peer_cfg.eni_id)
        except Exception:
            replaced = False  # EC2 does not answer: ready_problems says so below
        # A peer that is being replaced cannot be heard, and need not be.
        peer_view = peer.probe_peer(peer_cfg.ip, cfg.stats_port, 2.0) if peer_cfg and not replaced else None
        # The TLS listeners the agent could not serve yet (what it knows is in its state files).
        not_served = tls.TlsStore(None, cfg.paths).left_out(cfg)
        problems = lifecycle.ready_problems(own, peer_view, replaced, lifecycle.ec2_works(cfg, client), not_served)
        if not problems or time.monotonic() >= deadline:
            break
        time.sleep(2)
    signalled = ""
    if cfg.cfn_stack is not None:
        waited = lifecycle.signal(platform.client("cloudformation"), cfg, platform.instance_id(), success=not problems)
        signalled = (f"; signalled {cfg.cfn_stack}/{cfg.cfn_resource}" if waited
                     else "; no deploy was waiting for a signal")
    if problems:
        print(f"error: the node is not ready after {timeout_s:g} s: {'; '.join(problems)}", file=sys.stderr)
        return 4
    print(f"node {cfg.node_name} is ready{signalled}")
    return 0


def _reconciler_invoker(cfg: NodeConfig) -> Callable[[list[str]], None] | None:
    """Invoke the reconciler Lambda asynchronously, to create missing routes (the node role may
    only replace them).  None when the document names no reconciler."""
    if cfg.reconciler is None:
        return None
    import boto3
    from botocore.config import Config

    # endpoint_url is the EC2 endpoint's: Lambda's comes from boto3's own settings (the region's,
    # or AWS_ENDPOINT_URL_LAMBDA where a test stands in for it).
    client = boto3.session.Session().client(
        "lambda", region_name=cfg.region,
        config=Config(retries={"mode": "standard", "total_max_attempts": 3}, connect_timeout=2, read_timeout=5))
    name = cfg.reconciler

    def invoke(tables: list[str]) -> None:
        payload = {"source": "haproxy-ha.agent", "node": cfg.node_name, "missing_route_tables": tables}
        client.invoke(FunctionName=name, InvocationType="Event", Payload=json.dumps(payload).encode())

    return invoke


def _ship(cfg: NodeConfig, source: str) -> None:
    """Render (or, with no log groups in the document, remove) the CloudWatch agent's, rsyslog's and
    logrotate's files; print the CloudWatch agent's config path when the node ships its logs."""
    changed = shipping.write_files(cfg, source)
    if cfg.log_group_prefix is not None:
        print(cfg.paths.cloudwatch_agent_conf)
    for path, did in changed.items():
        if did:
            print(f"{'wrote' if cfg.log_group_prefix else 'removed'} {path}", file=sys.stderr)


# The oldest boto3 the runtime is built and tested for (pyproject.toml's own floor).  Amazon Linux
# 2023's python3-boto3 has been known to resolve to an older one beside awscli-2: the commands that
# call AWS refuse it by name rather than fail later in a way that names nothing.
MIN_BOTO3 = (1, 26)


def boto3_problem(version: str) -> str | None:
    """Why this boto3 cannot run the agent or ready (None: it can)."""
    try:
        have = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return f"boto3: got version {version!r}; allowed: a release such as 1.34.0"
    if have < MIN_BOTO3:
        wanted = ".".join(str(n) for n in MIN_BOTO3)
        return (f"boto3: got {version}; allowed: {wanted} or later (python3 -m pip install 'boto3>={wanted}', "
                "or the distribution's newer python3-boto3)")
    return None


def main(argv: list[str] | None = None) -> int:
    """The node command line; returns the exit status (2: a bad document, or a rendered file that
    haproxy or keepalived refuses; 3: no ENI from IMDS; 4: not ready in time; 75: the agent
    stopped to restart on a new document)."""
    parser = argparse.ArgumentParser(prog="python3 -m haproxy_ha_runtime", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("check", "validate the node config document"),
                       ("render", "write keepalived.conf and haproxy.cfg from the document, once haproxy -c "
                                  "and keepalived -t accept them"),
                       ("agent", "run the resident agent"),
                       ("ready", "wait until the node serves, then signal CloudFormation"),
                       ("ship", "render the CloudWatch agent's, rsyslog's and logrotate's files (when the "
                                "document names log groups) and print the CloudWatch agent's config path")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", default=DEFAULT_CONFIG, help=f"node config document (default {DEFAULT_CONFIG})")
        if name == "ready":
            p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait (default 600)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
        if args.command == "check":
            print(f"{args.config}: valid (node {cfg.node_name}, {len(cfg.route_table_ids)} route tables, "
                  f"{len(cfg.listeners)} listeners, profile {cfg.profile})")
        elif args.command == "render":
            _render(cfg, args.config)
        elif args.command in ("ready", "agent") and (problem := boto3_problem(_boto3_version())) is not None:
            print(f"error: {problem}", file=sys.stderr)
            return 2
        elif args.command == "ready":
            return _ready(cfg, args.timeout)
        elif args.command == "ship":
            _ship(cfg, args.config)
        else:
            return _agent(cfg, args.config)
    except (ConfigError, CheckFailed) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ImdsError as e:
        print(f"error: cannot learn this node's ENI: {e}; set eni_id in {args.config}", file=sys.stderr)
        return 3
    return 0


def _boto3_version() -> str:
    import boto3

    return str(boto3.__version__)


if __name__ == "__main__":
    sys.exit(main())
