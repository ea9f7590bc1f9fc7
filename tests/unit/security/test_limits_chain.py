"""Chains of buckets on the in-memory limiter: a refusal stops the chain (nothing after it is
spent), and a refusal the node already knows is answered without spending anything."""

from __future__ import annotations

from saga_orchestrator.security.limits import (
    Bucket,
    Limit,
    MemoryBuckets,
    RateLimiter,
    bucket_key,
    combined_headers,
)

SLOW = Limit(rate=0.0001, burst=3)  # refills one token in 10,000 s


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def chain(tenant: str, requests: Limit = SLOW, starts: Limit = SLOW) -> list[Bucket]:
    return [
        Bucket(bucket_key(tenant, "requests"), requests, "requests"),
        Bucket(bucket_key(tenant, "starts"), starts, "starts"),
    ]


async def test_a_chain_spends_each_bucket_until_one_refuses() -> None:
    limiter = RateLimiter(None, clock=FakeClock())
    big = Limit(rate=0.0001, burst=100)
    decisions = [await limiter.check_chain(chain("t", requests=big)) for _ in range(4)]

    assert [[d.allowed for d in each] for each in decisions] == [
        [True, True],
        [True, True],
        [True, True],
        [True, False],
    ]
    assert [d.remaining for d in decisions[-1]] == [96, 0]


async def test_a_request_refused_by_the_first_bucket_spends_nothing_after_it() -> None:
    limiter = RateLimiter(None, clock=FakeClock())
    small = Limit(rate=0.0001, burst=1)
    assert [d.allowed for d in await limiter.check_chain(chain("t", requests=small))] == [True] * 2
    refused = await limiter.check_chain(chain("t", requests=small))
    assert [(d.policy, d.allowed) for d in refused] == [("requests", False)]

    # The starts bucket still holds all but the one token the admitted request spent.
    starts = await limiter.check("t", "starts", SLOW)
    assert (starts.allowed, starts.remaining) == (True, SLOW.burst - 2)


async def test_a_refusal_known_to_the_fallback_is_answered_without_spending() -> None:
    limiter = RateLimiter(None, clock=FakeClock())
    big = Limit(rate=0.0001, burst=100)
    assert await limiter.refusal_if_known(chain("t", requests=big)) is None  # a full bucket
    for _ in range(3):
        await limiter.check_chain(chain("t", requests=big))
    full = await limiter.check_chain(chain("t", requests=big))

    known = await limiter.refusal_if_known(chain("t", requests=big))

    assert known is not None
    assert [(d.policy, d.allowed) for d in known] == [("requests", True), ("starts", False)]
    # The requests bucket before the refused one was spent, as check_chain spends it.
    assert known[0].remaining == full[0].remaining - 1
    assert combined_headers(known)["RateLimit-Policy"] == combined_headers(full)["RateLimit-Policy"]
    assert combined_headers(known)["Retry-After"] == combined_headers(full)["Retry-After"]


async def test_a_refusal_of_the_first_bucket_is_answered_without_spending_anything() -> None:
    limiter = RateLimiter(None, clock=FakeClock())
    small = Limit(rate=0.0001, burst=1)
    await limiter.check_chain(chain("t", requests=small))
    before = limiter.counters.refused

    known = await limiter.refusal_if_known(chain("t", requests=small))

    assert known is not None and [(d.policy, d.allowed) for d in known] == [("requests", False)]
    assert limiter.counters.refused == before + 1
    starts = await limiter.check("t", "starts", SLOW)
    assert starts.remaining == SLOW.burst - 2  # one spent by the admitted request, one now


async def test_a_known_refusal_is_per_tenant() -> None:
    limiter = RateLimiter(None, clock=FakeClock())
    for _ in range(4):
        await limiter.check_chain(chain("flood"))
    assert await limiter.refusal_if_known(chain("flood")) is not None
    assert await limiter.refusal_if_known(chain("calm")) is None


async def test_a_known_refusal_ends_when_the_bucket_has_refilled() -> None:
    clock = FakeClock()
    limiter = RateLimiter(None, clock=clock)
    fast = Limit(rate=1.0, burst=1)
    await limiter.check_chain(chain("t", starts=fast))
    known = await limiter.refusal_if_known(chain("t", starts=fast))
    assert known is not None
    clock.now += known[-1].retry_after
    assert await limiter.refusal_if_known(chain("t", starts=fast)) is None


def test_the_memory_refusal_changes_no_bucket() -> None:
    clock = FakeClock()
    buckets = MemoryBuckets(clock=clock)
    limit = Limit(rate=1.0, burst=2)
    assert buckets.refusal("k", limit) is None
    assert len(buckets) == 0
    buckets.take_now("k", limit)
    buckets.take_now("k", limit)
    refused = buckets.refusal("k", limit, policy="starts")
    assert refused is not None and (refused.allowed, refused.policy) == (False, "starts")
    assert refused.retry_after == 1.0
    clock.now += 1.0
    assert buckets.refusal("k", limit) is None
    assert buckets.take_now("k", limit).allowed


async def test_a_refusal_known_for_the_first_bucket_is_answered_without_awaiting() -> None:
    """What the HTTP protocol asks: the known refusal, as :meth:`refusal_if_known` gives it."""
    limiter = RateLimiter(None, clock=FakeClock())
    small = Limit(rate=0.0001, burst=1)
    assert limiter.refusal_known_now(chain("t", requests=small)) is None  # a full bucket
    await limiter.check_chain(chain("t", requests=small))
    before = limiter.counters.refused

    now = limiter.refusal_known_now(chain("t", requests=small))
    known = await limiter.refusal_if_known(chain("t", requests=small))

    assert now is not None and now == known
    assert limiter.counters.refused == before + 2
    starts = await limiter.check("t", "starts", SLOW)
    assert starts.remaining == SLOW.burst - 2  # spent by the admitted request only


async def test_a_refusal_of_a_later_bucket_spends_the_ones_before_it_without_awaiting() -> None:
    limiter = RateLimiter(None, clock=FakeClock())
    big = Limit(rate=0.0001, burst=100)
    for _ in range(4):
        await limiter.check_chain(chain("t", requests=big))

    now = limiter.refusal_known_now(chain("t", requests=big))
    known = await limiter.refusal_if_known(chain("t", requests=big))

    assert now is not None and known is not None
    assert [(d.policy, d.allowed) for d in now] == [("requests", True), ("starts", False)]
    assert known[0].remaining == now[0].remaining - 1  # each spent its request token
