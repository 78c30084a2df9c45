"""The "ENI still in use" stand-in refuses a launch as RunInstances does, until the ENI is free."""

from __future__ import annotations

import time

import pytest
from botocore.exceptions import ClientError

from tests.support.eni_release import EniRelease


class _Ec2:
    def __init__(self) -> None:
        self.terminated: list[str] = []

    def terminate_instances(self, InstanceIds: list[str]) -> None:
        self.terminated += InstanceIds


def test_a_launch_with_the_eni_is_refused_until_the_terminated_instance_lets_it_go() -> None:
    ec2 = _Ec2()
    release = EniRelease(release_s=0.3)
    assert release.launch("eni-1", lambda: "i-first") == "i-first"  # nothing held it yet
    release.terminate(ec2, "i-first", "eni-1")
    assert ec2.terminated == ["i-first"]
    with pytest.raises(ClientError) as e:
        release.launch("eni-1", lambda: "i-second")
    assert e.value.response["Error"]["Code"] == "InvalidNetworkInterface.InUse"
    assert release.launch("eni-2", lambda: "i-other") == "i-other"  # another ENI is free
    time.sleep(0.35)
    assert release.launch("eni-1", lambda: "i-second") == "i-second"
