"""The stack outputs that `haproxy-ha --stack NAME` reads, and that `HaproxyHa.add_outputs` writes.

Both sides import these names from here, so that they cannot drift apart.  Python 3.9, no CDK.
"""

from __future__ import annotations

import re

VIP = "Vip"
VPC_ID = "VpcId"
# The route tables that hold the VIP route, comma-separated.
ROUTE_TABLE_IDS = "RouteTableIds"
# The pair's name: the Pair dimension of its metrics, which `status` reads node health from.
METRICS_PAIR = "MetricsPair"
# The bucket of the nodes' documents and status objects, which `status` reads each node's
# release from (haproxy_ha_runtime.document_keys.STATUS_KEY).
DOCUMENTS_BUCKET = "DocumentsBucket"
# The pair's nodes, as the construct names them (haproxy_ha.construct.NODE_NAMES).
NODE_NAMES = ("a", "b")
# One output key per node, e.g. NodeAEniId.
NODE_ENI_ID = "Node{label}EniId"

# An output key is a CloudFormation logical ID: letters and digits only.
PREFIX_RE = re.compile(r"^[A-Za-z0-9]*$")


def node_eni_key(node_name: str) -> str:
    """The output key of a node's ENI ID: node "a" -> NodeAEniId."""
    return NODE_ENI_ID.format(label=node_name.upper())
