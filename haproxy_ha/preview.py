"""Shows what each node will run before a deploy: synth writes every node's rendered haproxy.cfg
and keepalived.conf into the cloud assembly, at ``cdk.out/haproxy-ha/<construct path>/<node>/``.

The files are rendered by the runtime's own ``render_haproxy`` and ``render_keepalived`` from the
node's config document, with every value that is known only at deploy time replaced by a
placeholder that passes the same checks:

- the nodes' ENI addresses: 192.0.2.10 for node a and 192.0.2.20 for node b (TEST-NET-1,
  RFC 5737), or the next tens when the VIP is one of them;
- ENI IDs ``eni-0000000000000000a`` and ``...b``, route tables ``rtb-00000000000000001`` and up,
  the VPC ``vpc-00000000000000000``, the region ``us-east-1``, the reconciler
  ``haproxy-ha-reconciler``, the stack to signal ``haproxy-ha-stack``, where the stack's name
  is a token the group ``haproxy-ha-node-a``, and the stack instance in the log groups' prefix
  ``00000000`` (the stack's ID exists only once the stack does).  These keep the document valid;
  only the addresses reach the files.
- while ``Vpc.from_lookup`` has not looked its VPC up yet, the VPC and its route tables are
  the CDK's stand-ins (``vpc-12345``, ``rtb-12345s``): they are placeholders too.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from pathlib import Path

import jsii
from aws_cdk import Stage, Token
from constructs import Construct, IValidation

from haproxy_ha_runtime.config import parse_config
from haproxy_ha_runtime.render import render_haproxy, render_keepalived

PREVIEW_DIR = "haproxy-ha"
PLACEHOLDER_NET = ipaddress.IPv4Network("192.0.2.0/24")
PLACEHOLDER_VPC = "vpc-00000000000000000"
PLACEHOLDER_REGION = "us-east-1"
PLACEHOLDER_RECONCILER = "haproxy-ha-reconciler"
PLACEHOLDER_STACK = "haproxy-ha-stack"
# The 8 hex digits of the stack's ID in the log groups' prefix (observability.stack_instance).
PLACEHOLDER_STACK_INSTANCE = "0" * 8
SOURCE = "cdk synth: a preview in which deploy-time values are placeholders (node addresses 192.0.2.x)"


def placeholder_ips(vip: str, count: int) -> list[str]:
    """`count` addresses in TEST-NET-1 (.10, .20, ...), skipping the VIP."""
    hosts = (str(PLACEHOLDER_NET.network_address + n) for n in range(10, 255, 10))
    return [ip for ip in hosts if ip != vip][:count]


def placeholder_eni(node_name: str) -> str:
    """An ENI ID that stands for the node's ENI: eni-0000000000000000a for node a."""
    return "eni-" + node_name.rjust(17, "0")


def placeholder_group(node_name: str) -> str:
    """A group name that stands for the node's Auto Scaling group, when its real name is a token."""
    return f"haproxy-ha-node-{node_name}"


def placeholder_tables(route_table_ids: Sequence[str], lookup_pending: bool = False) -> list[str]:
    """The route table IDs, each one that is a token (every one, while a VPC lookup is pending)
    replaced by rtb-0000000000000000N."""
    return [f"rtb-{i:017x}" if lookup_pending or Token.is_unresolved(t) else t
            for i, t in enumerate(route_table_ids, start=1)]


def literal_or(value: str, placeholder: str) -> str:
    """`value` if it is known at synth time, else `placeholder`."""
    return placeholder if Token.is_unresolved(value) else value


def render_node_files(document: Mapping[str, object]) -> dict[str, str]:
    """haproxy.cfg and keepalived.conf for one node's (placeholder) document."""
    cfg = parse_config(dict(document), "the synth-time preview document")
    return {"haproxy.cfg": render_haproxy(cfg, SOURCE), "keepalived.conf": render_keepalived(cfg, SOURCE)}


@jsii.implements(IValidation)
class NodeFilesWriter:
    """Writes the rendered files into the cloud assembly when the app synthesizes.

    A validation is the one hook a construct gets during synthesis; it checks nothing and always
    passes.  The files are rendered when the construct is built, so a rendering error shows there.
    """

    def __init__(self, scope: Construct, files: Mapping[str, Mapping[str, str]]) -> None:
        self._scope = scope
        self._files = {node: dict(named) for node, named in files.items()}

    def validate(self) -> list[str]:
        """Write the files; no error to report."""
        stage = Stage.of(self._scope)
        if stage is None:
            return []
        base = Path(stage.outdir, PREVIEW_DIR, *self._scope.node.path.split("/"))
        for node, named in self._files.items():
            folder = base / node
            folder.mkdir(parents=True, exist_ok=True)
            for name, text in named.items():
                (folder / name).write_text(text, encoding="utf-8")
        return []
