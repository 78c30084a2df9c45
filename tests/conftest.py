"""Shared fixtures: a real moto server over HTTP as the EC2 API, and a fault proxy in front of it.

Nothing here reaches AWS: credentials are dummies, and every client is pointed at 127.0.0.1.
"""

from __future__ import annotations

import os
import threading
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import botocore.loaders
import botocore.session
import pytest

from haproxy_ha_runtime import routes
from tests.support import moto_server, serving
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


def host_interface() -> str:
    """A non-loopback interface of this host: keepalived -t checks that the one a document names exists."""
    names = sorted(p.name for p in Path("/sys/class/net").iterdir() if p.name != "lo")
    require("a network interface other than lo (keepalived -t checks the one the document names)", bool(names))
    return names[0]


def _reset(url: str) -> None:
    urllib.request.urlopen(urllib.request.Request(url + "/moto-api/reset", method="POST"), timeout=5).close()


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
        # moto loads much of EC2 on first use (about 3 s of CPU): do that here, with time to spare,
        # not inside the first test's 5 s read timeouts, which a loaded machine then misses.
        make_world(client_for(url, read_timeout=120), 1)
        _reset(url)
        yield url
    finally:
        moto_server.stop(proc)


@pytest.fixture
def moto(moto_url: str) -> str:
    """A moto server with empty state."""
    _reset(moto_url)
    return moto_url


@pytest.fixture
def proxy(moto: str) -> Iterator[FaultProxy]:
    p = FaultProxy(moto)
    # Served here rather than by p.start(), whose serve_forever polls for shutdown() every half
    # second: each test that uses the proxy would wait that out when it stops.
    serving.in_thread(p.server)
    try:
        yield p
    finally:
        p.stop()


# Every new boto3 session reads and parses botocore's JSON models again (EC2's alone takes about
# 0.3 s), and the code under test makes its own sessions: the CLI one per command, the stand-ins
# and the Lambda handler theirs.  One loader per search path for every session in this process
# reads each file once; sessions, clients and every code path stay the real ones.
_LOADERS: dict[str | None, botocore.loaders.Loader] = {}
_LOADERS_LOCK = threading.Lock()
_create_loader = botocore.loaders.create_loader


def _shared_loader(search_path_string: str | None = None) -> botocore.loaders.Loader:
    with _LOADERS_LOCK:
        if search_path_string not in _LOADERS:
            _LOADERS[search_path_string] = _create_loader(search_path_string)
        return _LOADERS[search_path_string]


botocore.session.create_loader = _shared_loader  # type: ignore[attr-defined]

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


def vip_route_count(client: Any, tables: list[str], vip: str = VIP) -> dict[str, int]:
    """How many routes for the VIP's /32 each table holds (EC2 allows one; moto would store more)."""
    found = client.describe_route_tables(RouteTableIds=tables)["RouteTables"]
    return {t["RouteTableId"]: sum(r.get("DestinationCidrBlock") == vip + "/32" for r in t["Routes"]) for t in found}


def run_at_once(*calls: Callable[[], Any], timeout_s: float = 20.0) -> list[Any]:
    """Run the calls in threads at once; their results in order, or the first one's error."""
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(call) for call in calls]
        return [f.result(timeout=timeout_s) for f in futures]
