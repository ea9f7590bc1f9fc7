"""In-memory token buckets, decisions and their headers and the concurrency quota, all on a
fake clock: nothing here waits or talks to Redis (a tenant's own limits: test_tenant_limits)."""

from __future__ import annotations

import pytest

from saga_orchestrator.errors import InvalidInput
from saga_orchestrator.security.limits import (
    ConcurrencyQuota,
    Decision,
    FallbackPolicy,
    Limit,
    MemoryBuckets,
    RateLimiter,
    bucket_key,
    combined_headers,
)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def allowed_of(buckets: MemoryBuckets, key: str, limit: Limit, attempts: int) -> int:
    return sum(buckets.take_now(key, limit).allowed for _ in range(attempts))


def decision(*, allowed: bool, retry_after: float = 0.0, policy: str = "requests") -> Decision:
    return Decision(
        allowed=allowed,
        limit=10,
        remaining=0 if not allowed else 7,
        reset_after=4.2,
        retry_after=retry_after,
        policy=policy,
        window=5,
    )


# Limit and its body


@pytest.mark.parametrize(
    ("rate", "burst"), [(0.0, 1), (-1.0, 1), (float("inf"), 1), (float("nan"), 1), (1.0, 0)]
)
def test_a_limit_refuses_a_shape_that_admits_nothing_or_everything(rate: float, burst: int) -> None:
    with pytest.raises(InvalidInput):
        Limit(rate=rate, burst=burst)


@pytest.mark.parametrize(
    ("rate", "burst", "window"), [(2.0, 10, 5), (3.0, 10, 4), (100.0, 10, 1), (0.5, 1, 2)]
)
def test_the_window_is_the_time_an_empty_bucket_takes_to_fill(
    rate: float, burst: int, window: int
) -> None:
    assert Limit(rate=rate, burst=burst).window == window


@pytest.mark.parametrize(("rate", "burst"), [(100.0, 200), (0.5, 1), (0.001, 1), (2.7, 5)])
def test_a_limit_per_second_bursts_twice_as_many(rate: float, burst: int) -> None:
    assert Limit.per_second(rate) == Limit(rate=rate, burst=burst)


# Memory buckets


def test_a_full_bucket_admits_exactly_its_burst_at_one_moment() -> None:
    buckets = MemoryBuckets(clock=FakeClock())
    limit = Limit(rate=2.0, burst=5)
    decisions = [buckets.take_now("k", limit, policy="starts") for _ in range(8)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 3
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0, 0, 0, 0]
    refused = decisions[-1]
    assert refused.retry_after == pytest.approx(0.5)
    assert refused.reset_after == pytest.approx(2.5)
    assert (refused.limit, refused.window, refused.policy) == (5, 3, "starts")
    assert decisions[0].retry_after == 0.0


def test_a_bucket_refills_at_its_rate_and_no_further_than_its_burst() -> None:
    clock = FakeClock()
    buckets = MemoryBuckets(clock=clock)
    limit = Limit(rate=2.0, burst=5)
    assert allowed_of(buckets, "k", limit, 10) == 5
    clock.advance(1.0)
    assert allowed_of(buckets, "k", limit, 10) == 2
    clock.advance(0.25)
    assert allowed_of(buckets, "k", limit, 10) == 0
    clock.advance(0.25)
    assert allowed_of(buckets, "k", limit, 10) == 1
    clock.advance(3600.0)
    assert allowed_of(buckets, "k", limit, 10) == 5


def test_a_clock_that_goes_back_adds_no_tokens() -> None:
    clock = FakeClock()
    buckets = MemoryBuckets(clock=clock)
    limit = Limit(rate=1.0, burst=2)
    assert allowed_of(buckets, "k", limit, 2) == 2
    clock.advance(-100.0)
    assert allowed_of(buckets, "k", limit, 2) == 0


def test_a_cost_spends_that_many_tokens_or_none() -> None:
    buckets = MemoryBuckets(clock=FakeClock())
    limit = Limit(rate=4.0, burst=5)
    assert buckets.take_now("k", limit, 3).remaining == 2
    refused = buckets.take_now("k", limit, 3)
    assert not refused.allowed
    assert refused.remaining == 2
    assert refused.retry_after == pytest.approx(0.25)
    assert buckets.take_now("k", limit, 2).allowed


def test_a_zero_cost_peeks_and_a_cost_above_the_burst_is_a_caller_error() -> None:
    buckets = MemoryBuckets(clock=FakeClock())
    limit = Limit(rate=1.0, burst=3)
    assert buckets.take_now("k", limit, 0).remaining == 3
    assert buckets.take_now("k", limit, 0).remaining == 3
    with pytest.raises(InvalidInput):
        buckets.take_now("k", limit, 4)
    with pytest.raises(InvalidInput):
        buckets.take_now("k", limit, -1)


def test_a_bucket_takes_a_changed_limit_at_its_next_take() -> None:
    buckets = MemoryBuckets(clock=FakeClock())
    assert buckets.take_now("k", Limit(rate=0.001, burst=5)).remaining == 4
    lowered = buckets.take_now("k", Limit(rate=0.001, burst=2), policy="starts")
    assert (lowered.allowed, lowered.remaining, lowered.limit) == (True, 1, 2)
    assert lowered.headers()["RateLimit-Policy"] == '"starts";q=2;w=2000'
    raised = Limit(rate=0.001, burst=10)  # a bigger bucket fills at the rate, not at once
    assert [buckets.take_now("k", raised).allowed for _ in range(3)] == [True, False, False]


def test_keys_are_independent() -> None:
    buckets = MemoryBuckets(clock=FakeClock())
    limit = Limit(rate=1.0, burst=3)
    assert allowed_of(buckets, bucket_key("flood", "starts"), limit, 30) == 3
    assert allowed_of(buckets, bucket_key("calm", "starts"), limit, 3) == 3


def test_buckets_are_bounded_and_forget_the_least_recently_used() -> None:
    buckets = MemoryBuckets(max_keys=2, clock=FakeClock())
    limit = Limit(rate=1.0, burst=1)
    for key in ("a", "b"):
        assert buckets.take_now(key, limit).allowed
    assert not buckets.take_now("a", limit).allowed  # "a" is now the most recently used
    assert buckets.take_now("c", limit).allowed
    assert len(buckets) == 2
    assert buckets.take_now("b", limit).allowed  # evicted: it came back full
    assert not buckets.take_now("c", limit).allowed


async def test_take_is_take_now_awaited() -> None:
    buckets = MemoryBuckets(clock=FakeClock())
    limit = Limit(rate=1.0, burst=1)
    assert (await buckets.take("k", limit)).allowed
    assert not (await buckets.take("k", limit)).allowed


# Headers


def test_an_admitted_request_gets_the_policy_and_the_service_limit() -> None:
    assert decision(allowed=True).headers() == {
        "RateLimit-Policy": '"requests";q=10;w=5',
        "RateLimit": '"requests";r=7;t=5',
    }


@pytest.mark.parametrize(
    ("retry_after", "header"), [(0.0, "1"), (0.2, "1"), (1.0, "1"), (1.0000001, "1"), (2.3, "3")]
)
def test_a_refused_request_gets_retry_after_in_whole_seconds_rounded_up(
    retry_after: float, header: str
) -> None:
    headers = decision(allowed=False, retry_after=retry_after).headers()
    assert headers == {
        "RateLimit-Policy": '"requests";q=10;w=5',
        "RateLimit": f'"requests";r=0;t={header}',
        "Retry-After": header,
    }


def test_a_policy_name_is_a_structured_field_string() -> None:
    headers = decision(allowed=True, policy='a"b\\c\u00e9').headers()
    assert headers["RateLimit-Policy"] == '"a\\"b\\\\c_";q=10;w=5'


def test_several_policies_are_listed_and_the_longest_retry_wins() -> None:
    headers = combined_headers(
        [
            decision(allowed=True, policy="requests"),
            decision(allowed=False, retry_after=7.5, policy="principal"),
            decision(allowed=False, retry_after=2.0, policy="starts"),
        ]
    )
    assert headers == {
        "RateLimit-Policy": '"requests";q=10;w=5, "principal";q=10;w=5, "starts";q=10;w=5',
        "RateLimit": '"requests";r=7;t=5, "principal";r=0;t=8, "starts";r=0;t=2',
        "Retry-After": "8",
    }


def test_keys_name_tenant_scope_and_partition_without_ambiguity() -> None:
    assert bucket_key("acme", "starts") == "saga:rl:acme:starts"
    assert bucket_key("acme", "requests", "alice") == "saga:rl:acme:requests:alice"
    assert bucket_key("a:b", "c") != bucket_key("a", "b:c")
    assert bucket_key("a", "b", "c") != bucket_key("a", "b:c")


# The limiter without Redis


async def test_without_redis_the_limiter_uses_memory_buckets() -> None:
    clock = FakeClock()
    limiter = RateLimiter(None, clock=clock)
    limit = Limit(rate=1.0, burst=2)
    assert limiter.mode == "memory"
    results = [(await limiter.check("t", "starts", limit)).allowed for _ in range(3)]
    assert results == [True, True, False]
    assert (await limiter.check("t", "starts", limit, partition="alice")).allowed
    clock.advance(1.0)
    assert (await limiter.check("t", "starts", limit)).allowed
    counters = limiter.counters
    assert (counters.fallback_checks, counters.refused, counters.redis_checks) == (5, 1, 0)
    await limiter.aclose()


async def test_the_fail_open_and_fail_closed_policies() -> None:
    limit = Limit(rate=1.0, burst=2)
    open_ = RateLimiter(None, fallback_policy=FallbackPolicy.ALLOW)
    assert all([(await open_.check("t", "s", limit)).allowed for _ in range(10)])
    closed = RateLimiter(None, fallback_policy=FallbackPolicy.DENY, cooldown=5.0)
    refused = await closed.check("t", "s", limit)
    assert not refused.allowed
    assert refused.headers()["Retry-After"] == "5"


async def test_the_limiter_rejects_a_cost_above_the_burst() -> None:
    with pytest.raises(InvalidInput):
        await RateLimiter(None).check("t", "s", Limit(rate=1.0, burst=2), cost=3)


# The concurrency quota


def test_the_quota_caps_running_sagas_per_tenant() -> None:
    caps = {"small": 2}
    quota = ConcurrencyQuota(caps.get)
    assert [quota.try_acquire("small") for _ in range(3)] == [True, True, False]
    assert quota.running("small") == 2
    assert all(quota.try_acquire("other") for _ in range(100))  # no cap
    quota.release("small")
    assert quota.try_acquire("small")
    assert not quota.try_acquire("small")


def test_a_changed_cap_applies_to_the_next_acquire() -> None:
    caps = {"t": 1}
    quota = ConcurrencyQuota(caps.get)
    assert quota.try_acquire("t")
    assert not quota.try_acquire("t")
    caps["t"] = 2
    assert quota.try_acquire("t")


def test_a_forced_acquire_counts_past_the_cap_and_release_stops_at_zero() -> None:
    quota = ConcurrencyQuota(lambda _tenant: 1)
    quota.acquire("t")
    quota.acquire("t")
    assert quota.running("t") == 2
    assert not quota.try_acquire("t")
    for _ in range(5):
        quota.release("t")
    assert quota.running("t") == 0
    assert quota.try_acquire("t")
