"""The Lessor: lease deadlines driven by explicit millisecond values."""

from __future__ import annotations

import pytest

from conclave.kv import errors
from conclave.kv.lease import Lessor


def test_follower_never_expires_and_reports_full_ttl() -> None:
    lessor = Lessor()
    assert lessor.grant(1, 10, now_ms=0) == 10
    assert lessor.expired(now_ms=10**9) == []
    assert lessor.remaining(1, now_ms=10**9) == 10
    with pytest.raises(errors.NotLeader):
        lessor.renew(1, now_ms=0)


def test_primary_expiry_renew_and_remaining() -> None:
    lessor = Lessor()
    lessor.promote(now_ms=0, extend_ms=0)
    lessor.grant(1, 10, now_ms=0)
    lessor.grant(2, 5, now_ms=0)
    assert lessor.remaining(1, now_ms=2_500) == 7  # truncated seconds
    assert lessor.expired(now_ms=4_999) == []
    assert lessor.renew(2, now_ms=4_000) == 5  # deadline now 9_000
    assert lessor.expired(now_ms=8_999) == []
    assert lessor.expired(now_ms=10_000) == [2, 1]  # earliest deadline first
    assert lessor.remaining(1, now_ms=10_000) == 0


def test_expired_lease_cannot_be_renewed_and_is_retried_later() -> None:
    lessor = Lessor(retry_ms=3_000)
    lessor.promote(now_ms=0, extend_ms=0)
    lessor.grant(7, 1, now_ms=0)
    assert lessor.expired(now_ms=1_000) == [7]
    with pytest.raises(errors.LeaseNotFound):
        lessor.renew(7, now_ms=1_001)
    assert lessor.expired(now_ms=3_999) == []  # the revoke is in flight
    assert lessor.expired(now_ms=4_000) == [7]  # not applied yet: ask again
    lessor.revoke(7)
    assert lessor.expired(now_ms=100_000) == []
    with pytest.raises(errors.LeaseNotFound):
        lessor.remaining(7, now_ms=0)


def test_promote_extends_every_deadline_and_demote_stops_expiry() -> None:
    lessor = Lessor()
    lessor.grant(1, 2, now_ms=0)
    lessor.promote(now_ms=50_000, extend_ms=1_000)
    assert lessor.expired(now_ms=52_999) == []
    assert lessor.expired(now_ms=53_000) == [1]
    lessor.demote()
    assert not lessor.is_primary and lessor.expired(now_ms=10**9) == []
    lessor.promote(now_ms=0, extend_ms=0)
    assert lessor.renew(1, now_ms=1) == 2  # promotion forgives the earlier expiry


def test_expired_respects_limit_and_many_renewals_stay_bounded() -> None:
    lessor = Lessor()
    lessor.promote(now_ms=0, extend_ms=0)
    for i in range(1, 11):
        lessor.grant(i, 1, now_ms=0)
    for t in range(0, 900, 1):
        lessor.renew(3, now_ms=t)
    assert len(lessor._heap) <= 2 * len(lessor) + 65
    assert lessor.expired(now_ms=1_000, limit=4) == [1, 2, 4, 5]
    assert lessor.expired(now_ms=1_000, limit=100) == [6, 7, 8, 9, 10]
    with pytest.raises(errors.LeaseNotFound):
        lessor.renew(99, now_ms=0)
