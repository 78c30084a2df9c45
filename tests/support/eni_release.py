"""Stand-in for "ENI still in use" (see EniRelease), which moto does not model."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError


@dataclass
class EniRelease:
    """Stands in for "ENI still in use", which moto does not model.

    On AWS, a terminated instance's device-0 ENI (DeleteOnTermination false) stays attached until
    the instance is gone, some seconds later, and a launch that names it fails meanwhile with
    InvalidNetworkInterface.InUse; the group tries again.  moto launches with an attached ENI at
    once and never frees it.  Here, `terminate` frees the ENI `release_s` later, and `launch`
    refuses as AWS does until then.
    """

    release_s: float = 1.0
    _busy_until: dict[str, float] = field(default_factory=dict)

    def terminate(self, client: Any, instance_id: str, eni_id: str) -> None:
        """Terminate the instance; its ENI stays in use for `release_s`."""
        client.terminate_instances(InstanceIds=[instance_id])
        self._busy_until[eni_id] = time.monotonic() + self.release_s

    def launch(self, eni_id: str, run: Callable[[], str]) -> str:
        """Launch an instance with the ENI (`run` does, and returns its ID); raises ClientError
        InvalidNetworkInterface.InUse, as RunInstances does, while the ENI is still held.  moto
        keeps the terminated instance's attachment (and refuses to detach a device 0), but
        launches with the ENI all the same, which then names the new instance."""
        if time.monotonic() < self._busy_until.get(eni_id, 0.0):
            raise ClientError({"Error": {"Code": "InvalidNetworkInterface.InUse",
                                         "Message": f"Interface: [{eni_id}] in use."}}, "RunInstances")
        return run()
