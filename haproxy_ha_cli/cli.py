"""The operator CLI, `haproxy-ha`: who owns the VIP in each route table, and a manual failover.

It talks to whatever EC2 endpoint boto3 is configured for (region, profile, AWS_ENDPOINT_URL).
Exit codes: 0 ok; 1 the routes disagree, are not healthy, or a move did not converge;
2 bad input (a malformed VIP, an unknown node, no table holding the VIP).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from collections.abc import Sequence
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

from haproxy_ha_runtime import routes
from haproxy_ha_runtime.tags import NODE_TAG


class UsageError(Exception):
    """Bad input from the operator: exit 2 with this message."""


def _vip(text: str) -> str:
    try:
        addr = ipaddress.IPv4Address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"got {text!r}; allowed: a single IPv4 address such as 203.0.113.10") from None
    return str(addr)


def _client(region: str | None) -> Any:
    import boto3

    session = boto3.session.Session(region_name=region)
    region = session.region_name
    if not region:
        # botocore reads AWS_DEFAULT_REGION (or the profile's region); it ignores AWS_REGION.
        raise UsageError("no AWS region is configured; use --region, set AWS_DEFAULT_REGION, "
                         "or give your AWS profile a region")
    # The endpoint comes from boto3's own settings (AWS_ENDPOINT_URL, the profile).
    return routes.make_client(region, max_attempts=5, session=session)


def node_name(owner: routes.EniOwner) -> str | None:
    """The node an ENI belongs to: its haproxy-ha:node tag, else its instance's, else the instance's Name."""
    return (owner.eni_tags.get(NODE_TAG) or owner.instance_tags.get(NODE_TAG)
            or owner.instance_tags.get("Name"))


def _tables_for(client: Any, vip: str, vpc_id: str | None) -> dict[str, routes.VipRoute]:
    found = routes.find_vip_route_tables(client, vip, vpc_id)
    if not found:
        where = f" in {vpc_id}" if vpc_id else ""
        raise UsageError(f"no route table{where} holds a route for {vip}/32; check --vip and --vpc-id, "
                         "and the region and endpoint boto3 uses")
    return found


def _status(client: Any, args: argparse.Namespace) -> int:
    views = _tables_for(client, args.vip, args.vpc_id)
    who = routes.eni_owners(client, [v.eni_id for v in views.values() if v.eni_id])
    rows = []
    for table_id in sorted(views):
        v = views[table_id]
        o = who.get(v.eni_id) if v.eni_id else None
        rows.append({
            "route_table_id": table_id,
            "vpc_id": v.vpc_id,
            "target": v.eni_id or v.other_target,
            "node": node_name(o) if o else None,
            "instance_id": o.instance_id if o else None,
            "instance_state": o.instance_state if o else None,
            "route_state": v.state,
        })
    agree = len({r["target"] for r in rows}) == 1
    healthy = all(r["route_state"] == routes.ROUTE_ACTIVE and r["instance_state"] == "running" for r in rows)
    if args.json:
        print(json.dumps({"vip": args.vip, "agree": agree, "healthy": healthy, "tables": rows}, indent=2))
    else:
        header = ("ROUTE TABLE", "TARGET", "NODE", "INSTANCE", "INSTANCE STATE", "ROUTE")
        lines = [header] + [(r["route_table_id"], r["target"] or "-", r["node"] or "-", r["instance_id"] or "-",
                             r["instance_state"] or "-", r["route_state"]) for r in rows]
        widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
        for line in lines:
            print("  ".join(str(cell).ljust(w) for cell, w in zip(line, widths)).rstrip())
        print(f"\nVIP {args.vip}: {len(rows)} table(s); "
              + ("all point at the same target" if agree else "TABLES DISAGREE")
              + ("" if healthy else "; NOT ALL ROUTES ARE ACTIVE AT A RUNNING NODE"))
    return 0 if agree and healthy else 1


def resolve_target(client: Any, to: str, vpc_ids: set[str]) -> tuple[str, str | None]:
    """An ENI ID as given, or the ENI of the node named `to` (tag haproxy-ha:node, or Name)."""
    vpc_filter = [{"Name": "vpc-id", "Values": sorted(vpc_ids)}] if vpc_ids else []
    if to.startswith("eni-"):
        try:
            resp = client.describe_network_interfaces(NetworkInterfaceIds=[to])
        except ClientError as e:
            raise UsageError(f"--to: got {to!r}; no such ENI ({e.response['Error']['Code']})") from None
        vpc = resp["NetworkInterfaces"][0].get("VpcId")
        if vpc_ids and vpc not in vpc_ids:
            raise UsageError(f"--to: got {to!r}; that ENI is in {vpc}, not in {', '.join(sorted(vpc_ids))}")
        return to, node_name(routes.eni_owners(client, [to])[to])
    resp = client.describe_network_interfaces(Filters=[{"Name": f"tag:{NODE_TAG}", "Values": [to]}, *vpc_filter])
    enis = [ni["NetworkInterfaceId"] for ni in resp.get("NetworkInterfaces", [])]
    if not enis:
        resp = client.describe_instances(Filters=[{"Name": "tag:Name", "Values": [to]}, *vpc_filter])
        for reservation in resp.get("Reservations", []):
            for inst in reservation.get("Instances", []):
                for ni in inst.get("NetworkInterfaces", []):
                    if ni.get("Attachment", {}).get("DeviceIndex") == 0:
                        enis.append(ni["NetworkInterfaceId"])
    if len(enis) != 1:
        found = "no node" if not enis else f"{len(enis)} ENIs ({', '.join(enis)})"
        raise UsageError(f"--to: got {to!r}; found {found} by tag {NODE_TAG} or Name"
                         f"{' in ' + ', '.join(sorted(vpc_ids)) if vpc_ids else ''}; "
                         "allowed: an ENI ID (eni-...) or the name of one node")
    return enis[0], to


def _failover(client: Any, args: argparse.Namespace) -> int:
    views = _tables_for(client, args.vip, args.vpc_id)
    eni, node = resolve_target(client, args.to, {v.vpc_id for v in views.values() if v.vpc_id})
    label = f"{eni} (node {node})" if node else eni
    tables = sorted(views)
    if args.dry_run:
        for t in tables:
            v = views[t]
            now = v.eni_id or v.other_target or "-"
            verdict = "already there" if v.eni_id == eni and v.state == routes.ROUTE_ACTIVE else "would move"
            print(f"{t}  {now} -> {eni}  {verdict}")
        print(f"dry run: nothing changed; {sum(1 for t in tables if views[t].eni_id != eni)} table(s) "
              f"would move to {label}")
        return 0
    result = routes.take_over(client, args.vip, tables, eni, deadline_s=args.deadline)
    if args.json:
        print(json.dumps({"vip": args.vip, "to": eni, "node": node, "converged": result.converged,
                          "elapsed_s": round(result.elapsed_s, 4),
                          "tables": [t.__dict__ for t in result.tables]}, indent=2))
    else:
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
        p.add_argument("--vip", required=True, type=_vip, help="the overlay VIP, e.g. 203.0.113.10")
        p.add_argument("--vpc-id", help="only route tables of this VPC")
        p.add_argument("--json", action="store_true", help="machine-readable output")
    failover.add_argument("--to", required=True, help="an ENI ID, or a node name (tag haproxy-ha:node or Name)")
    failover.add_argument("--dry-run", action="store_true", help="show what would move, change nothing")
    failover.add_argument("--deadline", type=float, default=20.0, help="seconds to keep retrying (default 20)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 unhealthy or not converged, 2 bad input)."""
    args = build_parser().parse_args(argv)
    try:
        client = _client(args.region)
        return int(_status(client, args) if args.command == "status" else _failover(client, args))
    except UsageError as e:
        print(f"haproxy-ha: error: {e}", file=sys.stderr)
        return 2
    except (NoCredentialsError, NoRegionError) as e:
        print(f"haproxy-ha: error: {e}", file=sys.stderr)
        return 2
    except (ClientError, BotoCoreError) as e:
        print(f"haproxy-ha: error: the EC2 API call failed: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
