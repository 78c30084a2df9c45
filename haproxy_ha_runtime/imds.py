"""A minimal IMDSv2 client: session tokens only, and a token is never used past its TTL."""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from typing import Callable

# botocore reads the same variable: a test points both at a stand-in.
DEFAULT_ENDPOINT = os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://169.254.169.254")
TOKEN_TTL_S = 21600
# Renew this long before expiry, so a request never carries a token that expires in flight.
REFRESH_MARGIN_S = 60


class ImdsError(RuntimeError):
    """The instance metadata service could not be reached or did not answer."""


class Imds:
    """A client for the instance metadata service, IMDSv2 only."""

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, ttl_s: int = TOKEN_TTL_S, timeout_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 1 <= ttl_s <= TOKEN_TTL_S:
            raise ValueError(f"ttl_s: got {ttl_s}; allowed: 1 to {TOKEN_TTL_S} seconds")
        self.endpoint = endpoint.rstrip("/")
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self._clock = clock
        self._token: str | None = None
        self._expires_at = 0.0

    def _fresh_token(self) -> str:
        margin = min(REFRESH_MARGIN_S, self.ttl_s / 2)
        if self._token is None or self._clock() >= self._expires_at - margin:
            requested_at = self._clock()
            req = urllib.request.Request(
                self.endpoint + "/latest/api/token", method="PUT",
                headers={"X-aws-ec2-metadata-token-ttl-seconds": str(self.ttl_s)})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    self._token = resp.read().decode().strip()
            except OSError as e:
                raise ImdsError(f"IMDSv2 token request to {self.endpoint} failed: {e}") from e
            # Count the TTL from before the request, so our idea of expiry is never late.
            self._expires_at = requested_at + self.ttl_s
        return self._token

    def get(self, path: str) -> str:
        """The metadata item at `path` (under /latest/meta-data/), as text.  A token the service no
        longer takes (401: it restarted, or the token expired unseen) is dropped, and the read
        tried once more with a new one, rather than failing until the TTL runs out."""
        for attempt in (1, 2):
            req = urllib.request.Request(
                self.endpoint + "/latest/meta-data/" + path.lstrip("/"),
                headers={"X-aws-ec2-metadata-token": self._fresh_token()})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    return str(resp.read().decode().strip())
            except urllib.error.HTTPError as e:
                if e.code == 401 and attempt == 1:
                    self._token = None
                    continue
                raise ImdsError(f"IMDS read of {path} failed: {e}") from e
            except OSError as e:
                raise ImdsError(f"IMDS read of {path} failed: {e}") from e
        raise AssertionError("unreachable")

    def primary_eni_id(self) -> str:
        """The ID of the ENI that carries this instance's primary MAC address."""
        mac = self.get("mac")
        return self.get(f"network/interfaces/macs/{mac}/interface-id")
