"""The IMDSv2 client against a stand-in metadata server on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from haproxy_ha_runtime.imds import Imds, ImdsError
from tests.support.imds_stand_in import FakeImds


@pytest.fixture
def imds() -> Iterator[FakeImds]:
    fake = FakeImds()
    yield fake
    fake.stop()


def test_reads_the_primary_eni_with_a_session_token(imds: FakeImds) -> None:
    client = Imds(imds.url)
    assert client.primary_eni_id() == "eni-0123456789abcdef0"
    put = [r for r in imds.requests if r[0] == "PUT"]
    assert len(put) == 1 and put[0][2]["x-aws-ec2-metadata-token-ttl-seconds"] == "21600"


def test_token_is_renewed_before_it_expires(imds: FakeImds) -> None:
    now = [1000.0]
    client = Imds(imds.url, ttl_s=120, clock=lambda: now[0])
    client.get("mac")
    now[0] += 30
    client.get("mac")
    assert imds.tokens_issued == 1
    now[0] += 40  # 70 s into a 120 s token: inside the renewal margin
    client.get("mac")
    assert imds.tokens_issued == 2


def test_fails_clearly_when_imds_is_unreachable() -> None:
    with pytest.raises(ImdsError, match=r"IMDSv2 token request to http://127\.0\.0\.1:9 failed"):
        Imds("http://127.0.0.1:9", timeout_s=0.5).primary_eni_id()


def test_fails_when_ttl_is_out_of_range() -> None:
    with pytest.raises(ValueError, match="ttl_s: got 0; allowed: 1 to 21600 seconds"):
        Imds(ttl_s=0)
