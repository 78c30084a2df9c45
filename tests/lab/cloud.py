"""The EC2 side of the lab: what the stack would create, made through the API of the moto server.

A VPC, one subnet per node (in two AZs), route tables each with a client subnet, two ENIs with
source/destination check off, each attached at device index 0 to a running instance (the agent's
repair logic asks for the peer's instance state), and the VIP route in every table pointing at
node a, created by the same route module the Lambda uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from haproxy_ha_runtime import routes
from tests.support import moto_server

REGION = "us-east-1"
VPC_CIDR = "10.0.0.0/16"
# Route tables get client subnets 10.0.100.0/26 upwards, four to a /24.
MAX_TABLES = 200


@dataclass(frozen=True)
class CloudState:
    vpc_id: str
    eni: dict[str, str]  # node name -> ENI ID
    instance: dict[str, str]  # node name -> instance ID
    route_table_ids: list[str]

    @property
    def client_table(self) -> str:
        """The table of the client's subnet: the one the VPC-router emulator routes by."""
        return self.route_table_ids[0]

    def node_of(self, eni_id: str) -> str:
        return next((n for n, e in self.eni.items() if e == eni_id), "?")


def create(client: Any, vip: str, n_tables: int) -> CloudState:
    if not 1 <= n_tables <= MAX_TABLES:
        raise ValueError(f"n_tables: got {n_tables}; allowed: 1 to {MAX_TABLES}")
    vpc = client.create_vpc(CidrBlock=VPC_CIDR)["Vpc"]["VpcId"]
    eni: dict[str, str] = {}
    instance: dict[str, str] = {}
    for i, (name, az) in enumerate((("a", REGION + "a"), ("b", REGION + "b"))):
        subnet = client.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i + 1}.0/24",
                                      AvailabilityZone=az)["Subnet"]["SubnetId"]
        nic = client.create_network_interface(
            SubnetId=subnet, PrivateIpAddress=f"10.0.{i + 1}.10", Description=f"haproxy-ha node {name}",
            TagSpecifications=[{"ResourceType": "network-interface",
                                "Tags": [{"Key": "haproxy-ha:node", "Value": name}]}],
        )["NetworkInterface"]["NetworkInterfaceId"]
        # The node forwards traffic for the VIP, an address that is not its own.
        client.modify_network_interface_attribute(NetworkInterfaceId=nic, SourceDestCheck={"Value": False})
        eni[name] = nic
        instance[name] = run_instance(client, name, nic)
    tables: list[str] = []
    for i in range(n_tables):
        subnet = client.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{100 + i // 4}.{(i % 4) * 64}/26",
                                      AvailabilityZone=REGION + "ab"[i % 2])["Subnet"]["SubnetId"]
        table = client.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
        client.associate_route_table(RouteTableId=table, SubnetId=subnet)
        tables.append(table)
    result = routes.ensure_routes(client, vip, tables, eni["a"])
    if not result.converged:
        raise RuntimeError(f"could not create the VIP routes: {[t.error for t in result.tables if not t.ok]}")
    return CloudState(vpc, eni, instance, tables)


def run_instance(client: Any, node: str, eni_id: str) -> str:
    """Launch node's instance with its ENI as device 0, as its launch template does; its ID."""
    return str(client.run_instances(
        ImageId=moto_server.IMAGE_ID, MinCount=1, MaxCount=1, InstanceType="t3.micro",
        NetworkInterfaces=[{"DeviceIndex": 0, "NetworkInterfaceId": eni_id}],
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": f"haproxy-ha-{node}"}]}],
    )["Instances"][0]["InstanceId"])
