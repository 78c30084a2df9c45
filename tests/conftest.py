"""Shared fixtures: a real moto server over HTTP as the EC2 API, and a fault proxy in front of it.

Nothing here reaches AWS: credentials are dummies, and every client is pointed at 127.0.0.1.
"""

from __future__ import annotations

import os
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from haproxy_ha_runtime import routes
from tests.support import moto_server
from tests.support.fault_proxy import FaultProxy

REPO = Path(__file__).resolve().parent.parent
VIP = "203.0.113.10"

# Set before anything builds a boto3 client: dummy credentials, no IMDS, no real endpoints.
os.environ.update({
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
})
os.environ.pop("AWS_PROFILE", None)


def require(what: str, ok: bool) -> None:
    """Skip when a prerequisite is missing, but only outside CI: in CI it must be there."""
    if ok:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required in CI but missing")
    pytest.skip(f"{what} is missing (allowed outside CI only)")


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    # scripts/mutate runs the tests once per mutant: it starts one moto server on loopback for the
    # whole run and names it here, rather than each run paying for a new one.  Every test still
    # starts from moto's empty state (the `moto` fixture resets it).
    shared = os.environ.get("HAPROXY_HA_TEST_MOTO_URL")
    if shared:
        assert shared.startswith("http://127.0.0.1:"), f"HAPROXY_HA_TEST_MOTO_URL must be on loopback: {shared}"
        yield shared
        return
    proc, url = moto_server.start()
    try:
        yield url
    finally:
        moto_server.stop(proc)


@pytest.fixture
def moto(moto_url: str) -> str:
    """A moto server with empty state."""
    urllib.request.urlopen(urllib.request.Request(moto_url + "/moto-api/reset", method="POST"), timeout=5).close()
    return moto_url


@pytest.fixture
def proxy(moto: str) -> Iterator[FaultProxy]:
    p = FaultProxy(moto).start()
    try:
        yield p
    finally:
        p.stop()


_SESSION = boto3.session.Session()
_SESSION_LOCK = threading.Lock()


def client_for(url: str, **kwargs: Any) -> Any:
    # One shared session (its model cache saves ~0.1 s a client); a session is not thread-safe.
    with _SESSION_LOCK:
        return routes.make_client("us-east-1", url, session=_SESSION, **kwargs)


@dataclass
class World:
    """What the stack would have made: a VPC, two nodes with their ENIs, route tables."""

    client: Any
    vpc_id: str
    eni_a: str
    eni_b: str
    instance_a: str
    instance_b: str
    tables: list[str]


def make_world(client: Any, n_tables: int, vip: str = VIP, with_routes: bool = True) -> World:
    vpc = client.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = client.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    ami = moto_server.IMAGE_ID
    enis, instances = [], []
    for name in ("a", "b"):
        eni = client.create_network_interface(
            SubnetId=subnet, TagSpecifications=[{"ResourceType": "network-interface",
                                                 "Tags": [{"Key": "haproxy-ha:node", "Value": name}]}],
        )["NetworkInterface"]["NetworkInterfaceId"]
        inst = client.run_instances(
            ImageId=ami, MinCount=1, MaxCount=1, NetworkInterfaces=[{"DeviceIndex": 0, "NetworkInterfaceId": eni}],
            TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": f"node-{name}"}]}],
        )["Instances"][0]["InstanceId"]
        enis.append(eni)
        instances.append(inst)
    tables = [client.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"] for _ in range(n_tables)]
    if with_routes:
        for t in tables:
            client.create_route(RouteTableId=t, DestinationCidrBlock=vip + "/32", NetworkInterfaceId=enis[0])
    return World(client, vpc, enis[0], enis[1], instances[0], instances[1], tables)


def targets(client: Any, tables: list[str], vip: str = VIP) -> dict[str, str | None]:
    views = routes.describe_vip_routes(client, vip, tables)
    return {t: (views[t].eni_id if t in views else None) for t in tables}
