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


def test_every_token_issued_stays_good_whoever_asks_for_another(imds: FakeImds) -> None:
    agent, ready = Imds(imds.url), Imds(imds.url)
    assert agent.get("instance-id") == ready.get("instance-id") == "i-0123456789abcdef0"
    assert agent.get("instance-id") == "i-0123456789abcdef0"  # its token still works
    assert imds.tokens_issued == 2


def test_a_token_the_service_no_longer_takes_is_replaced_once(imds: FakeImds) -> None:
    client = Imds(imds.url)
    client.get("mac")
    imds.valid_tokens.clear()  # as after a restart of the service, or a token expired unseen
    assert client.get("instance-id") == "i-0123456789abcdef0"
    assert imds.tokens_issued == 2
    gets = [r for r in imds.requests if r[0] == "GET"]
    assert [r[2]["x-aws-ec2-metadata-token"] for r in gets] == ["token-1", "token-1", "token-2"]


class _TakesNoToken(set[str]):
    def add(self, token: str) -> None:
        pass


def test_fails_when_a_fresh_token_is_refused_too(imds: FakeImds) -> None:
    client = Imds(imds.url)
    imds.valid_tokens = _TakesNoToken()
    with pytest.raises(ImdsError, match="IMDS read of mac failed: HTTP Error 401"):
        client.get("mac")
    assert imds.tokens_issued == 2


def test_fails_clearly_when_imds_is_unreachable() -> None:
    with pytest.raises(ImdsError, match=r"IMDSv2 token request to http://127\.0\.0\.1:9 failed"):
        Imds("http://127.0.0.1:9", timeout_s=0.5).primary_eni_id()


def test_fails_when_ttl_is_out_of_range() -> None:
    with pytest.raises(ValueError, match="ttl_s: got 0; allowed: 1 to 21600 seconds"):
        Imds(ttl_s=0)
