"""The operator CLI, `haproxy-ha`: who owns the VIP in each route table, and a manual failover.

It talks to whatever EC2 endpoint boto3 is configured for (region, profile, AWS_ENDPOINT_URL).
With `--stack NAME` it reads the VIP, the VPC, the route tables and the node ENIs from that
CloudFormation stack's outputs (see haproxy_ha_cli.outputs) instead of taking them as options.
`status` also shows each node's health from the pair's CloudWatch metrics (haproxy_ha_cli.health),
and each node's release and document schema from its status object in the pair's documents bucket
(haproxy_ha_cli.node_status); neither changes the exit code.
Exit codes: 0 ok; 1 the routes disagree, are not healthy, or a move did not converge;
2 bad input (a malformed VIP, an unknown node, no table holding the VIP, a target that is not
running, routes in more than one VPC).
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import math
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

from haproxy_ha_cli import health, node_status, outputs
from haproxy_ha_runtime import config, routes
from haproxy_ha_runtime.tags import NODE_TAG, OPERATOR_CHOICE_TAG

# CloudFormation tags every resource it makes with its stack; two pairs in one VPC differ by it.
_STACK_ID_TAG = "aws:cloudformation:stack-id"


class UsageError(Exception):
    """Bad input from the operator: exit 2 with this message."""


def _vip(text: str) -> str:
    try:
        addr = ipaddress.IPv4Address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"got {text!r}; allowed: a single IPv4 address such as 203.0.113.10") from None
    return str(addr)


def _bucket(text: str) -> str:
    if not config.BUCKET_RE.match(text):
        raise argparse.ArgumentTypeError(f"got {text!r}; allowed: an S3 bucket name (3 to 63 lowercase letters, "
                                         "digits, dots and hyphens)")
    return text


def _deadline(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"got {text!r}; allowed: a finite number of seconds greater than 0")
    return value


def _session(region: str | None) -> Any:
    import boto3

    session = boto3.session.Session(region_name=region)
    if not session.region_name:
        # botocore reads AWS_DEFAULT_REGION (or the profile's region); it ignores AWS_REGION.
        raise UsageError("no AWS region is configured; use --region, set AWS_DEFAULT_REGION, "
                         "or give your AWS profile a region")
    return session


def _client(session: Any) -> Any:
    # The endpoint comes from boto3's own settings (AWS_ENDPOINT_URL, the profile).
    return routes.make_client(session.region_name, max_attempts=5, session=session)


@dataclass(frozen=True)
class Scope:
    """What a command works on: the VIP and its VPC, and, from a stack's outputs, the route
    tables that must hold the VIP route and the pair's node ENIs."""

    vip: str
    vpc_id: str | None = None
    # None: the tables are found by their VIP route (a table that lost it cannot be seen).
    expected_tables: tuple[str, ...] | None = None
    node_enis: tuple[str, ...] = ()
    stack: str | None = None
    # The pair's name (the Pair dimension of its metrics): --pair, or the stack's MetricsPair output.
    pair: str | None = None
    # Where the nodes' status objects are: --documents-bucket, or the stack's DocumentsBucket output.
    documents_bucket: str | None = None


def stack_scope(session: Any, stack: str, prefix: str = "") -> Scope:
    """The VIP, VPC, route tables and node ENIs that `stack` publishes as outputs."""
    cfn = session.client("cloudformation", config=Config(retries={"mode": "standard", "total_max_attempts": 5}))
    try:
        (found,) = cfn.describe_stacks(StackName=stack)["Stacks"]
    except ClientError as e:
        error = e.response.get("Error", {})
        if error.get("Code") != "ValidationError":
            raise
        raise UsageError(f"--stack: got {stack!r}; {error.get('Message', 'no such stack')}") from None
    values = {o["OutputKey"]: o.get("OutputValue", "") for o in found.get("Outputs", [])}
    keys = [prefix + k for k in (outputs.VIP, outputs.VPC_ID, outputs.ROUTE_TABLE_IDS)]
    missing = [k for k in keys if not values.get(k)]
    if missing:
        raise UsageError(f"--stack: {stack} has no output {', '.join(missing)}; allowed: a stack that publishes "
                         "them (the haproxy-ha app does; in your own app call HaproxyHa.add_outputs())"
                         + (f", with --output-prefix {prefix!r}" if prefix else ""))
    vip_key, vpc_key, tables_key = keys
    try:
        vip = _vip(values[vip_key])
    except argparse.ArgumentTypeError as e:
        raise UsageError(f"--stack: output {vip_key} {e}") from None
    tables = tuple(dict.fromkeys(t.strip() for t in values[tables_key].split(",") if t.strip()))
    enis = tuple(values[prefix + outputs.node_eni_key(n)] for n in outputs.NODE_NAMES
                 if values.get(prefix + outputs.node_eni_key(n)))
    return Scope(vip=vip, vpc_id=values[vpc_key], expected_tables=tables, node_enis=enis, stack=stack,
                 pair=values.get(prefix + outputs.METRICS_PAIR) or None,
                 documents_bucket=values.get(prefix + outputs.DOCUMENTS_BUCKET) or None)


def node_name(owner: routes.EniOwner) -> str | None:
    """The node an ENI belongs to: its haproxy-ha:node tag, else its instance's, else the instance's Name."""
    return (owner.eni_tags.get(NODE_TAG) or owner.instance_tags.get(NODE_TAG)
            or owner.instance_tags.get("Name"))


TABLE_NOT_FOUND = "table not found"


def _tables_for(client: Any, scope: Scope) -> tuple[list[str], dict[str, routes.VipRoute]]:
    """The tables to show or move, in order, and what each says about the VIP (a table that does
    not exist has no view)."""
    vip = scope.vip
    if scope.expected_tables is not None:
        return list(scope.expected_tables), routes.describe_vip_routes(client, vip, scope.expected_tables)
    found = routes.find_vip_route_tables(client, vip, scope.vpc_id)
    if not found:
        where = f" in {scope.vpc_id}" if scope.vpc_id else ""
        raise UsageError(f"no route table{where} holds a route for {vip}/32; check --vip and --vpc-id, "
                         "and the region and endpoint boto3 uses")
    per_vpc = Counter(v.vpc_id or "an unknown VPC" for v in found.values())
    if len(per_vpc) > 1:
        listed = ", ".join(f"{vpc} ({n} table{'s' if n > 1 else ''})" for vpc, n in sorted(per_vpc.items()))
        raise UsageError(f"the routes for {vip}/32 span {len(per_vpc)} VPCs: {listed}; "
                         "give --vpc-id or --stack to say which pair you mean")
    return sorted(found), found


def _node_health(session: Any, scope: Scope, known_nodes: set[str]) -> tuple[list[health.NodeHealth], str | None]:
    """Each node's health from the pair's metrics, and why there is none, if there is none."""
    if scope.pair is None:
        return [], ("no MetricsPair output in stack " + scope.stack if scope.stack
                    else "give --pair (the pair's MetricsPair output), or use --stack")
    cloudwatch = health.client(session)
    try:
        nodes = sorted(known_nodes | set(health.published_nodes(cloudwatch, scope.pair)))
        if not nodes:
            return [], f"no node published metrics under pair {scope.pair}"
        return health.read(cloudwatch, scope.pair, nodes), None
    except (ClientError, BotoCoreError) as e:
        return [], f"CloudWatch could not be read: {e}"


def _node_releases(session: Any, scope: Scope) -> tuple[list[node_status.NodeRelease], str | None]:
    """Each node's release from its status object, and why there is none, if there is none."""
    if scope.documents_bucket is None:
        return [], (f"no DocumentsBucket output in stack {scope.stack}; give --documents-bucket" if scope.stack
                    else "give --documents-bucket (the stack's DocumentsBucket output), or use --stack")
    try:
        return node_status.read(node_status.client(session), scope.documents_bucket, outputs.NODE_NAMES), None
    except node_status.BucketUnreadable as e:
        return [], str(e)


def _status(client: Any, scope: Scope, args: argparse.Namespace, session: Any) -> int:
    tables, views = _tables_for(client, scope)
    # The stack's node ENIs too: a node that is no route's target still has health to show.
    who = routes.eni_owners(client, list(dict.fromkeys(
        [*(v.eni_id for v in views.values() if v.eni_id), *scope.node_enis])))
    rows = []
    for table_id in tables:
        v = views.get(table_id)
        o = who.get(v.eni_id) if v is not None and v.eni_id else None
        rows.append({
            "route_table_id": table_id,
            "vpc_id": v.vpc_id if v is not None else None,
            "target": (v.eni_id or v.other_target) if v is not None else None,
            "node": node_name(o) if o else None,
            "instance_id": o.instance_id if o else None,
            "instance_state": o.instance_state if o else None,
            "route_state": v.state if v is not None else TABLE_NOT_FOUND,
        })
    agree = len({r["target"] for r in rows}) == 1
    healthy = all(r["route_state"] == routes.ROUTE_ACTIVE and r["instance_state"] == "running" for r in rows)
    known = {name for name in (node_name(o) for o in who.values()) if name}
    nodes, no_health = _node_health(session, scope, known)
    releases, no_releases = _node_releases(session, scope)
    if args.json:
        print(json.dumps({"vip": scope.vip, "stack": scope.stack, "agree": agree, "healthy": healthy,
                          "tables": rows, "pair": scope.pair, "nodes": [n.to_json() for n in nodes],
                          "nodes_unavailable": no_health, "documents_bucket": scope.documents_bucket,
                          "releases": [r.to_json() for r in releases], "releases_unavailable": no_releases},
                         indent=2))
    else:
        _print_table(("ROUTE TABLE", "TARGET", "NODE", "INSTANCE", "INSTANCE STATE", "ROUTE"),
                     [[r["route_table_id"], r["target"] or "-", r["node"] or "-", r["instance_id"] or "-",
                       r["instance_state"] or "-", r["route_state"]] for r in rows])
        print()
        if nodes:
            _print_table(("NODE", "VRRP", "HAPROXY", "EC2 API"), health.rows(nodes))
        else:
            print(f"node health: not shown: {no_health}")
        print()
        if no_releases is not None:
            print(f"node releases: not shown: {no_releases}")
        else:
            table = node_status.rows(releases)
            if table:
                _print_table(("NODE", "RUNTIME", "SCHEMA", "DOCUMENT", "INSTANCE"), table)
            for r in releases:
                if r.problem is not None:
                    print(f"node {r.node}: {r.problem}")
        lost = sum(1 for r in rows if r["route_state"] in (routes.ROUTE_MISSING, TABLE_NOT_FOUND))
        print(f"\nVIP {scope.vip}: {len(rows)} table(s)" + (f" of stack {scope.stack}" if scope.stack else "") + "; "
              + ("all point at the same target" if agree else "TABLES DISAGREE")
              + ("" if healthy else "; NOT ALL ROUTES ARE ACTIVE AT A RUNNING NODE")
              + (f"; {lost} TABLE(S) WITHOUT THE ROUTE" if lost else ""))
    return 0 if agree and healthy else 1


def _print_table(header: Sequence[str], body: Sequence[Sequence[str | None]]) -> None:
    lines = [list(header), *body]
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(line, widths)).rstrip())


def resolve_target(client: Any, to: str, vpc_ids: set[str], among: Sequence[str] = ()) -> tuple[str, str | None]:
    """An ENI ID as given, or the ENI of the node named `to` (tag haproxy-ha:node, or Name), in
    the VPCs given, and among the ENIs given (a stack's nodes), if any."""
    vpc_filter = [{"Name": "vpc-id", "Values": sorted(vpc_ids)}] if vpc_ids else []
    eni_filter = vpc_filter + ([{"Name": "network-interface-id", "Values": list(among)}] if among else [])
    if to.startswith("eni-"):
        try:
            resp = client.describe_network_interfaces(NetworkInterfaceIds=[to])
        except ClientError as e:
            raise UsageError(f"--to: got {to!r}; no such ENI ({e.response['Error']['Code']})") from None
        vpc = resp["NetworkInterfaces"][0].get("VpcId")
        if vpc_ids and vpc not in vpc_ids:
            raise UsageError(f"--to: got {to!r}; that ENI is in {vpc}, not in {', '.join(sorted(vpc_ids))}")
        return to, node_name(routes.eni_owners(client, [to])[to])
    resp = client.describe_network_interfaces(Filters=[{"Name": f"tag:{NODE_TAG}", "Values": [to]}, *eni_filter])
    enis = [ni["NetworkInterfaceId"] for ni in resp.get("NetworkInterfaces", [])]
    if not enis:
        # DescribeInstances has no network-interface-id filter: the ENIs given are kept here.
        resp = client.describe_instances(Filters=[{"Name": "tag:Name", "Values": [to]}, *vpc_filter])
        for reservation in resp.get("Reservations", []):
            for inst in reservation.get("Instances", []):
                for ni in inst.get("NetworkInterfaces", []):
                    if ni.get("Attachment", {}).get("DeviceIndex") == 0 and (
                            not among or ni["NetworkInterfaceId"] in among):
                        enis.append(ni["NetworkInterfaceId"])
    if len(enis) != 1:
        found = "no node" if not enis else f"{len(enis)} ENIs ({', '.join(enis)})"
        raise UsageError(f"--to: got {to!r}; found {found} by tag {NODE_TAG} or Name"
                         f"{' in ' + ', '.join(sorted(vpc_ids)) if vpc_ids else ''}; "
                         "allowed: an ENI ID (eni-...) or the name of one node")
    return enis[0], to


def _refuse_unless_running(owner: routes.EniOwner, label: str) -> None:
    if owner.instance_state == "running":
        return
    where = (f"its ENI {owner.eni_id} is attached to instance {owner.instance_id}, which is "
             f"{owner.instance_state or 'in an unknown state'}") if owner.instance_id \
        else f"its ENI {owner.eni_id} is not attached to any instance"
    raise UsageError(f"--to: {label} is not running: {where}. Moving the routes there would leave the VIP "
                     "unanswered, and the active node would move them back. Start it first, or give --force")


def pair_enis(client: Any, scope: Scope, eni: str, vpc_ids: set[str]) -> list[str]:
    """The node ENIs of the pair that `eni` belongs to: the stack's outputs, else the ENIs tagged
    haproxy-ha:node in the VPC (narrowed to the target's CloudFormation stack, when it has one)."""
    if scope.node_enis:
        if eni not in scope.node_enis:
            raise UsageError(f"--to: got {eni}; allowed: a node of stack {scope.stack} "
                             f"({', '.join(scope.node_enis)})")
        return list(scope.node_enis)
    filters = [{"Name": "tag-key", "Values": [NODE_TAG]}]
    if vpc_ids:
        filters.append({"Name": "vpc-id", "Values": sorted(vpc_ids)})
    found = {ni["NetworkInterfaceId"]: {t["Key"]: t["Value"] for t in ni.get("TagSet", [])}
             for page in client.get_paginator("describe_network_interfaces").paginate(Filters=filters)
             for ni in page.get("NetworkInterfaces", [])}
    stack_id = found.get(eni, {}).get(_STACK_ID_TAG)
    if stack_id:
        found = {e: tags for e, tags in found.items() if tags.get(_STACK_ID_TAG) == stack_id}
    if len(found) > 2:
        raise UsageError(f"--to: the VPC holds {len(found)} node ENIs ({', '.join(sorted(found))}), more than one "
                         "pair; the operator's choice must be recorded on exactly this pair: use --stack")
    return sorted(set(found) | {eni})


def _failover(client: Any, scope: Scope, args: argparse.Namespace) -> int:
    tables, views = _tables_for(client, scope)
    vpc_ids = {scope.vpc_id} if scope.vpc_id else {v.vpc_id for v in views.values() if v.vpc_id}
    eni, node = resolve_target(client, args.to, vpc_ids, scope.node_enis)
    owner = routes.eni_owners(client, [eni])[eni]
    label = f"{eni} (node {node})" if node else eni
    pair = pair_enis(client, scope, eni, vpc_ids)
    if not args.force:
        _refuse_unless_running(owner, label)
    if args.dry_run:
        for t in tables:
            v = views.get(t)
            now = (v.eni_id or v.other_target or "-") if v is not None else "-"
            verdict = ("table not found" if v is None else
                       "already there" if v.eni_id == eni and v.state == routes.ROUTE_ACTIVE else "would move")
            print(f"{t}  {now} -> {eni}  {verdict}")
        moving = sum(1 for t in tables if t in views and views[t].eni_id != eni)
        print(f"dry run: nothing changed; {moving} table(s) would move to {label}; "
              f"the choice would be recorded on {', '.join(pair)}")
        return 0
    # Record the choice first: an agent that finds the routes moved reads it, and must not undo the move.
    try:
        client.create_tags(Resources=pair, Tags=[{"Key": OPERATOR_CHOICE_TAG, "Value": eni}])
    except ClientError as e:
        print(f"haproxy-ha: error: could not record the choice ({OPERATOR_CHOICE_TAG}) on {', '.join(pair)}: "
              f"{e}; nothing moved", file=sys.stderr)
        return 1
    result = routes.take_over(client, scope.vip, tables, eni, deadline_s=args.deadline)
    if args.json:
        print(json.dumps({"vip": scope.vip, "stack": scope.stack, "to": eni, "node": node,
                          "instance_state": owner.instance_state, "choice_recorded_on": pair,
                          "converged": result.converged, "elapsed_s": round(result.elapsed_s, 4),
                          "tables": [t.__dict__ for t in result.tables]}, indent=2))
    else:
        print(f"recorded the operator's choice {eni} on {', '.join(pair)}")
        for res in result.tables:
            line = f"{res.route_table_id}  {res.action:<9} {res.elapsed_s * 1000:7.1f} ms"
            print(line + (f"  {res.error}" if res.error else ""))
        print(f"{'converged' if result.converged else 'NOT CONVERGED'}: {len(tables)} table(s) -> {label} "
              f"in {result.elapsed_s:.3f} s")
    return 0 if result.converged else 1


def build_parser() -> argparse.ArgumentParser:
    """The `haproxy-ha` command line: `status` and `failover`."""
    parser = argparse.ArgumentParser(prog="haproxy-ha", description=__doc__.splitlines()[0])
    parser.add_argument("--region", help="AWS region (default: boto3's configuration)")
    sub = parser.add_subparsers(dest="command", required=True)
    status = sub.add_parser("status", help="show where the VIP route points in every route table")
    failover = sub.add_parser("failover", help="point every VIP route at one node")
    for p in (status, failover):
        which = p.add_mutually_exclusive_group(required=True)
        which.add_argument("--vip", type=_vip, help="the overlay VIP, e.g. 203.0.113.10")
        which.add_argument("--stack", help="a CloudFormation stack whose outputs name the VIP, the VPC, the route "
                                           "tables and the nodes (every table is then shown, also one that lost "
                                           "its route)")
        p.add_argument("--output-prefix", default="", help="with --stack: the prefix given to "
                                                           "HaproxyHa.add_outputs (default: none)")
        p.add_argument("--vpc-id", help="only route tables of this VPC (not with --stack)")
        p.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--pair", help="with --vip: the pair's name (its MetricsPair output), to show each node's "
                                       "health from its metrics (with --stack it comes from the stack)")
    status.add_argument("--documents-bucket", type=_bucket,
                        help="the pair's documents bucket (its DocumentsBucket output), to show each node's runtime "
                             "release and document schema from its status object; with --stack it comes from the "
                             "stack, and this replaces it (for a stack that does not publish it yet)")
    failover.add_argument("--to", required=True, help="an ENI ID, or a node name (tag haproxy-ha:node or Name)")
    failover.add_argument("--dry-run", action="store_true", help="show what would move, change nothing")
    failover.add_argument("--force", action="store_true",
                          help="move even to a node whose instance is not running")
    failover.add_argument("--deadline", type=_deadline, default=20.0,
                          help="seconds to keep retrying, finite and above 0 (default 20)")
    return parser


def _scope(session: Any, args: argparse.Namespace) -> Scope:
    pair = getattr(args, "pair", None)
    bucket = getattr(args, "documents_bucket", None)
    if args.stack is None:
        if args.output_prefix:
            raise UsageError("--output-prefix: only with --stack")
        return Scope(vip=args.vip, vpc_id=args.vpc_id, pair=pair, documents_bucket=bucket)
    if args.vpc_id:
        raise UsageError("--vpc-id: not with --stack; the stack's VpcId output names the VPC")
    if pair is not None:
        raise UsageError("--pair: not with --stack; the stack's MetricsPair output names the pair")
    if not outputs.PREFIX_RE.match(args.output_prefix):
        raise UsageError(f"--output-prefix: got {args.output_prefix!r}; allowed: letters and digits")
    scope = stack_scope(session, args.stack, args.output_prefix)
    return scope if bucket is None else dataclasses.replace(scope, documents_bucket=bucket)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 unhealthy or not converged, 2 bad input)."""
    args = build_parser().parse_args(argv)
    try:
        session = _session(args.region)
        scope = _scope(session, args)
        client = _client(session)
        return int(_status(client, scope, args, session) if args.command == "status"
                   else _failover(client, scope, args))
    except UsageError as e:
        print(f"haproxy-ha: error: {e}", file=sys.stderr)
        return 2
    except (NoCredentialsError, NoRegionError) as e:
        print(f"haproxy-ha: error: {e}", file=sys.stderr)
        return 2
    except (ClientError, BotoCoreError) as e:
        print(f"haproxy-ha: error: an AWS API call failed: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
