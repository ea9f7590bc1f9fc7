"""Rate limits against a real Redis: bucket arithmetic, atomicity, headers, key expiry, and the
fallback when Redis is absent, hangs or dies mid-run.

Tests that break Redis start their own ``redis-server`` on a free port; the others use the
shared server (``SAGA_TEST_REDIS_URL``, default ``redis://127.0.0.1:6379/0``) under keys of a
tenant made up for the test, deleted afterwards. The shared server missing skips those tests,
except on CI (``CI=true``), where it fails them.

Rates are tiny (a token per thousands of seconds) so that the few milliseconds a test takes
refill nothing measurable: counts are exact without any clock control. The passage of time is
simulated by moving a bucket's stamp back in Redis.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
import redis
import redis.asyncio as aioredis

from saga_orchestrator.security.limits import (
    Bucket,
    FallbackPolicy,
    Limit,
    RateLimiter,
    RedisBuckets,
    bucket_key,
)
from tests.support.redis_server import RedisProcess, evalsha_calls, free_port

SLOW = Limit(rate=0.0001, burst=5)  # refills one token in 10,000 s


class FakeClock:
    """The limiter's clock (cool-down, memory buckets); Redis keeps its own."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def tenant(shared_redis_url: str) -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex}"
    yield name
    client = redis.Redis.from_url(shared_redis_url)
    try:
        keys = list(client.scan_iter(match=f"saga:rl:{name}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest_asyncio.fixture
async def client(shared_redis_url: str) -> AsyncIterator[aioredis.Redis]:
    connection = aioredis.Redis.from_url(shared_redis_url, decode_responses=True)
    yield connection
    await connection.aclose()


@pytest_asyncio.fixture
async def buckets(shared_redis_url: str) -> AsyncIterator[RedisBuckets]:
    # Generous: these tests check the script's arithmetic and atomicity, not fail-fast
    # timeouts, and a loaded machine can take longer than 0.25 s to open a connection.
    result = RedisBuckets.from_url(shared_redis_url, timeout=5.0, max_connections=16)
    yield result
    await result.aclose()


async def age(client: aioredis.Redis, key: str, seconds: float) -> None:
    """Pretend ``seconds`` more went by since the bucket was last touched."""
    stamp = await client.hget(key, "stamp")
    assert stamp is not None
    await client.hset(key, "stamp", repr(float(stamp) - seconds))


async def allowed_of(buckets: RedisBuckets, key: str, limit: Limit, attempts: int) -> int:
    return sum([(await buckets.take(key, limit)).allowed for _ in range(attempts)])


# Bucket arithmetic


async def test_a_full_bucket_admits_exactly_its_burst(buckets: RedisBuckets, tenant: str) -> None:
    key = bucket_key(tenant, "starts")
    decisions = [await buckets.take(key, SLOW, policy="starts") for _ in range(8)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 3
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0, 0, 0, 0]
    assert 9_990 < decisions[-1].retry_after <= 10_000
    assert 49_990 < decisions[-1].reset_after <= 50_000


async def test_a_bucket_refills_at_its_rate_up_to_its_burst(
    buckets: RedisBuckets, client: aioredis.Redis, tenant: str
) -> None:
    key = bucket_key(tenant, "requests")
    assert await allowed_of(buckets, key, SLOW, 10) == 5
    await age(client, key, 20_000)  # two tokens' worth
    assert await allowed_of(buckets, key, SLOW, 10) == 2
    await age(client, key, 10_000_000)
    assert await allowed_of(buckets, key, SLOW, 10) == 5


async def test_a_cost_spends_that_many_tokens_or_none(buckets: RedisBuckets, tenant: str) -> None:
    key = bucket_key(tenant, "requests")
    assert (await buckets.take(key, SLOW, 4)).remaining == 1
    refused = await buckets.take(key, SLOW, 2)
    assert (refused.allowed, refused.remaining) == (False, 1)
    assert (await buckets.take(key, SLOW, 1)).allowed


async def test_concurrent_takes_on_one_key_admit_exactly_the_burst(
    buckets: RedisBuckets, tenant: str
) -> None:
    limit = Limit(rate=0.0001, burst=50)
    key = bucket_key(tenant, "starts")
    decisions = await asyncio.gather(*(buckets.take(key, limit) for _ in range(200)))
    assert sum(d.allowed for d in decisions) == 50
    assert sorted(d.remaining for d in decisions if d.allowed) == list(range(50))


async def test_concurrent_checks_through_the_limiter_admit_exactly_the_burst(
    shared_redis_url: str, tenant: str
) -> None:
    # A generous timeout: on a loaded machine no check may fall back for want of a connection.
    limiter = RateLimiter(shared_redis_url, timeout=5.0, max_connections=16)
    limit = Limit(rate=0.0001, burst=50)
    try:
        decisions = await asyncio.gather(
            *(limiter.check(tenant, "starts", limit) for _ in range(200))
        )
        assert sum(d.allowed for d in decisions) == 50
        assert limiter.mode == "redis"
        counters = limiter.counters
        assert (counters.refused, counters.redis_skipped, counters.fallback_checks) == (150, 0, 0)
    finally:
        await limiter.aclose()


async def test_two_tenants_are_independent(shared_redis_url: str, tenant: str) -> None:
    limiter = RateLimiter(shared_redis_url, timeout=5.0)  # no fallback for a slow connect
    other = f"{tenant}-calm"
    try:
        flood = [(await limiter.check(tenant, "starts", SLOW)).allowed for _ in range(50)]
        calm = [(await limiter.check(other, "starts", SLOW)).allowed for _ in range(5)]
        assert sum(flood) == 5
        assert all(calm)
    finally:
        await limiter.aclose()


async def test_partitions_of_a_tenant_are_independent(shared_redis_url: str, tenant: str) -> None:
    limiter = RateLimiter(shared_redis_url, timeout=5.0)  # no fallback for a slow connect
    try:
        alice = [await limiter.check(tenant, "requests", SLOW, partition="alice") for _ in range(6)]
        bob = await limiter.check(tenant, "requests", SLOW, partition="bob")
        assert [d.allowed for d in alice] == [True] * 5 + [False]
        assert (bob.allowed, bob.remaining) == (True, 4)
    finally:
        await limiter.aclose()


async def test_each_tenant_takes_from_a_bucket_of_its_own_shape(
    buckets: RedisBuckets, tenant: str
) -> None:
    """One script, per-call parameters: tenants with different limits at the same moment
    (both keys start with the ``tenant`` fixture's name, which deletes them afterwards)."""
    low, default = Limit(rate=0.0001, burst=2), SLOW
    keys = {low: bucket_key(tenant, "starts"), default: bucket_key(f"{tenant}-b", "starts")}
    decisions = await asyncio.gather(
        *(buckets.take(keys[limit], limit, policy="starts") for limit in (low, default) * 8)
    )
    admitted = {
        limit: sum(d.allowed for d in decisions[i::2]) for i, limit in enumerate((low, default))
    }
    assert admitted == {low: 2, default: 5}
    policies = {d.headers()["RateLimit-Policy"] for d in decisions[0::2]}
    assert policies == {'"starts";q=2;w=20000'}


async def test_a_bucket_takes_a_changed_limit_at_its_next_take(
    buckets: RedisBuckets, tenant: str
) -> None:
    key = bucket_key(tenant, "requests")
    assert (await buckets.take(key, SLOW)).remaining == 4
    lowered = await buckets.take(key, Limit(rate=0.0001, burst=2))  # 4 tokens, capped at 2
    assert (lowered.allowed, lowered.remaining, lowered.limit) == (True, 1, 2)
    raised = Limit(rate=0.0001, burst=10)  # a bigger bucket fills at the rate, not at once
    assert [(await buckets.take(key, raised)).allowed for _ in range(3)] == [True, False, False]


# Headers and keys


async def test_headers_of_redis_decisions_are_exact(buckets: RedisBuckets, tenant: str) -> None:
    key = bucket_key(tenant, "starts")
    first = await buckets.take(key, SLOW, policy="starts")
    assert first.headers() == {
        "RateLimit-Policy": '"starts";q=5;w=50000',
        "RateLimit": '"starts";r=4;t=10000',
    }
    for _ in range(4):
        await buckets.take(key, SLOW, policy="starts")
    refused = await buckets.take(key, SLOW, policy="starts")
    assert refused.headers() == {
        "RateLimit-Policy": '"starts";q=5;w=50000',
        "RateLimit": '"starts";r=0;t=10000',
        "Retry-After": "10000",
    }


async def test_a_bucket_key_expires_once_the_bucket_would_be_full(
    buckets: RedisBuckets, client: aioredis.Redis, tenant: str
) -> None:
    slow_key = bucket_key(tenant, "requests")
    await buckets.take(slow_key, SLOW)
    assert 0 < await client.pttl(slow_key) <= 10_000 * 1000 + 1000
    fast_key = bucket_key(tenant, "participant", "payments")
    await buckets.take(fast_key, Limit(rate=100.0, burst=5))
    assert 0 < await client.pttl(fast_key) <= 10 + 1000
    assert await client.hgetall(fast_key) != {}


async def test_a_refusal_is_repeated_without_asking_redis_until_it_may_pass(
    shared_redis_url: str, tenant: str
) -> None:
    limiter = RateLimiter(shared_redis_url, timeout=5.0)  # no fallback for a slow connect
    try:
        results = [(await limiter.check(tenant, "starts", SLOW)).allowed for _ in range(8)]
        assert results == [True] * 5 + [False] * 3
        counters = limiter.counters
        # The fifth admission left the bucket empty: the refusals after it are known here.
        assert (counters.redis_checks, counters.cached_refusals) == (5, 3)
        raised = Limit(rate=0.0001, burst=10)  # a new limit is asked of Redis at once
        assert not (await limiter.check(tenant, "starts", raised)).allowed  # still empty
        assert (limiter.counters.redis_checks, limiter.counters.cached_refusals) == (6, 3)
    finally:
        await limiter.aclose()


async def test_a_flushed_script_cache_is_reloaded(own_redis: RedisProcess) -> None:
    buckets = RedisBuckets.from_url(own_redis.url)
    admin = aioredis.Redis.from_url(own_redis.url)
    try:
        assert (await buckets.take("saga:rl:t:s", SLOW)).allowed
        await admin.script_flush()
        assert (await buckets.take("saga:rl:t:s", SLOW)).remaining == 3
    finally:
        await buckets.aclose()
        await admin.aclose()


# Redis absent, hung or dead


async def test_redis_down_at_start_falls_back_to_memory() -> None:
    limiter = RateLimiter(f"redis://127.0.0.1:{free_port()}/0", clock=FakeClock())
    limit = Limit(rate=1.0, burst=3)
    try:
        results = [(await limiter.check("t", "starts", limit)).allowed for _ in range(5)]
        assert results == [True, True, True, False, False]
        assert limiter.mode == "memory"
        counters = limiter.counters
        assert (counters.redis_errors, counters.fallback_checks, counters.redis_checks) == (1, 5, 0)
    finally:
        await limiter.aclose()


@pytest.mark.parametrize(
    ("policy", "allowed"), [(FallbackPolicy.ALLOW, True), (FallbackPolicy.DENY, False)]
)
async def test_redis_down_with_a_fail_open_or_closed_policy(
    policy: FallbackPolicy, allowed: bool
) -> None:
    limiter = RateLimiter(f"redis://127.0.0.1:{free_port()}/0", fallback_policy=policy)
    try:
        decisions = [await limiter.check("t", "starts", Limit(rate=1.0, burst=1)) for _ in range(3)]
        assert [d.allowed for d in decisions] == [allowed] * 3
    finally:
        await limiter.aclose()


async def test_redis_killed_mid_run_falls_back_then_comes_back(own_redis: RedisProcess) -> None:
    clock = FakeClock()
    limiter = RateLimiter(own_redis.url, cooldown=5.0, clock=clock)
    limit = Limit(rate=0.0001, burst=1000)
    try:
        assert (await limiter.check("t", "starts", limit)).remaining == 999
        assert limiter.mode == "redis"

        own_redis.kill()
        decisions = await asyncio.gather(*(limiter.check("t", "starts", limit) for _ in range(50)))
        assert all(d.allowed for d in decisions)
        assert limiter.mode == "memory"
        errors = limiter.counters.redis_errors
        assert errors >= 1

        own_redis.start()
        clock.advance(4.9)  # still cooling down: Redis is not asked
        assert (await limiter.check("t", "starts", limit)).allowed
        assert (limiter.mode, limiter.counters.redis_errors) == ("memory", errors)

        clock.advance(0.2)
        back = await limiter.check("t", "starts", limit)
        assert limiter.mode == "redis"
        assert back.remaining == 999  # the restarted Redis kept nothing (no persistence)
        assert limiter.counters.redis_checks == 2
    finally:
        await limiter.aclose()


async def test_a_hung_redis_times_out_into_memory_and_is_probed_once(
    own_redis: RedisProcess,
) -> None:
    clock = FakeClock()
    limiter = RateLimiter(own_redis.url, cooldown=5.0, timeout=0.1, clock=clock)
    limit = Limit(rate=0.0001, burst=1000)
    try:
        assert (await limiter.check("t", "starts", limit)).allowed
        own_redis.signal(signal.SIGSTOP)
        assert (await limiter.check("t", "starts", limit)).allowed
        assert (limiter.mode, limiter.counters.redis_errors) == ("memory", 1)

        clock.advance(5.0)  # one probe times out again; the concurrent checks do not wait
        decisions = await asyncio.gather(*(limiter.check("t", "starts", limit) for _ in range(20)))
        assert all(d.allowed for d in decisions)
        assert (limiter.mode, limiter.counters.redis_errors) == ("memory", 2)

        own_redis.signal(signal.SIGCONT)
        clock.advance(5.0)
        assert (await limiter.check("t", "starts", limit)).allowed
        assert limiter.mode == "redis"
    finally:
        await limiter.aclose()


# --- chains of buckets: one script, one round trip -------------------------------------------


def chain_of(tenant: str, requests: Limit, starts: Limit) -> list[Bucket]:
    return [
        Bucket(bucket_key(tenant, "requests"), requests, "requests"),
        Bucket(bucket_key(tenant, "starts"), starts, "starts"),
    ]


async def test_a_chain_stops_at_the_first_refusal_and_touches_nothing_after_it(
    buckets: RedisBuckets, client: aioredis.Redis, tenant: str
) -> None:
    one = Limit(rate=0.0001, burst=1)
    admitted = await buckets.take_chain(chain_of(tenant, one, SLOW))
    refused = await buckets.take_chain(chain_of(tenant, one, SLOW))

    assert [(d.policy, d.allowed, d.remaining) for d in admitted] == [
        ("requests", True, 0),
        ("starts", True, 4),
    ]
    assert [(d.policy, d.allowed) for d in refused] == [("requests", False)]
    assert await client.hget(bucket_key(tenant, "starts"), "tokens") == "4"


async def test_both_buckets_of_a_start_cost_one_round_trip(own_redis: RedisProcess) -> None:
    limiter = RateLimiter(own_redis.url, timeout=5.0)
    two = Limit(rate=0.0001, burst=2)
    try:
        await limiter.check("warm", "requests", SLOW)  # loads the script
        before = evalsha_calls(own_redis)
        decisions = [await limiter.check_chain(chain_of("t", SLOW, two)) for _ in range(2)]
        assert evalsha_calls(own_redis) == before + 2
        assert [[d.allowed for d in each] for each in decisions] == [[True, True], [True, True]]

        # The second admission emptied the starts bucket: the next refusal is known here, and
        # the first bucket is spent from this node's estimate of it, without a round trip...
        refused = await limiter.check_chain(chain_of("t", SLOW, two))
        known = await limiter.refusal_if_known(chain_of("t", SLOW, two))
        assert known is not None
        assert [(d.policy, d.allowed, d.remaining) for d in refused] == [
            ("requests", True, 2),
            ("starts", False, 0),
        ]
        assert [(d.policy, d.allowed, d.remaining) for d in known] == [
            ("requests", True, 1),
            ("starts", False, 0),
        ]
        assert evalsha_calls(own_redis) == before + 2
        assert limiter.counters.estimated_spends == 2
        # ... then paid to Redis in one script: it holds what full checks would have left.
        client = redis.Redis(port=own_redis.port, decode_responses=True)
        await asyncio.wait_for(limiter.settle(), timeout=10)
        assert evalsha_calls(own_redis) == before + 3
        assert float(client.hget(bucket_key("t", "requests"), "tokens") or "nan") == (
            pytest.approx(1.0, abs=0.01)
        )
        assert await limiter.refusal_if_known(chain_of("other", SLOW, two)) is None
    finally:
        await limiter.aclose()


async def test_a_spend_owed_to_a_redis_that_died_is_forgiven_and_the_fallback_takes_over(
    own_redis: RedisProcess,
) -> None:
    limiter = RateLimiter(own_redis.url, timeout=0.5, cooldown=60)
    two = Limit(rate=0.0001, burst=2)
    try:
        for _ in range(2):
            await limiter.check_chain(chain_of("t", SLOW, two))  # the second empties starts
        known = await limiter.refusal_if_known(chain_of("t", SLOW, two))
        assert known is not None and limiter.counters.estimated_spends == 1
        own_redis.kill()  # before the spend is paid

        await asyncio.wait_for(limiter.settle(), timeout=10)  # raises nothing

        # The failed payment opened the circuit: the fallback decides (its own buckets for t
        # are full), and Redis's remembered refusal is not what answers.
        assert limiter.counters.redis_errors == 1
        assert limiter.mode == "memory"
        assert await limiter.refusal_if_known(chain_of("t", SLOW, two)) is None
        assert [d.allowed for d in await limiter.check_chain(chain_of("t", SLOW, two))] == [
            True,
            True,
        ]
    finally:
        await limiter.aclose()


async def test_a_first_bucket_perhaps_empty_is_asked_of_redis_before_a_known_refusal(
    own_redis: RedisProcess,
) -> None:
    """An estimate only ever admits: when it says the first bucket may be empty, Redis
    decides it, and its refusal is the answer."""
    limiter = RateLimiter(own_redis.url, timeout=5.0)
    two, one = Limit(rate=0.0001, burst=2), Limit(rate=0.0001, burst=1)
    try:
        assert [d.allowed for d in await limiter.check_chain(chain_of("t", two, one))] == [
            True,
            True,
        ]
        # That admission emptied the starts bucket: the next start is refused here, its
        # requests token spent from this node's estimate (the last token it knows of), by a
        # caller that cannot await as by one that can...
        before = evalsha_calls(own_redis)
        refused = limiter.refusal_known_now(chain_of("t", two, one))
        assert refused is not None
        assert [(d.policy, d.allowed, d.remaining) for d in refused] == [
            ("requests", True, 0),
            ("starts", False, 0),
        ]
        assert evalsha_calls(own_redis) == before
        assert limiter.counters.estimated_spends == 1
        await asyncio.wait_for(limiter.settle(), timeout=10)
        # ... so now the estimate says the requests bucket may be empty: Redis decides it,
        # and a caller that cannot await is told to ask.
        assert limiter.refusal_known_now(chain_of("t", two, one)) is None
        before = evalsha_calls(own_redis)
        known = await limiter.refusal_if_known(chain_of("t", two, one))
        assert known is not None and [(d.policy, d.allowed) for d in known] == [("requests", False)]
        assert evalsha_calls(own_redis) == before + 1
        assert limiter.counters.estimated_spends == 1
    finally:
        await limiter.aclose()


async def test_a_refusal_of_the_first_bucket_known_from_redis_costs_no_round_trip(
    own_redis: RedisProcess,
) -> None:
    limiter = RateLimiter(own_redis.url, timeout=5.0)
    one = Limit(rate=0.0001, burst=1)
    try:
        await limiter.check_chain(chain_of("t", one, SLOW))
        refused = await limiter.check_chain(chain_of("t", one, SLOW))
        before = evalsha_calls(own_redis)

        known = await limiter.refusal_if_known(chain_of("t", one, SLOW))

        assert known is not None and [(d.policy, d.allowed) for d in known] == [("requests", False)]
        assert known[0].retry_seconds() == refused[0].retry_seconds()
        assert evalsha_calls(own_redis) == before
        # Both known here: the admission before them left the requests bucket empty.
        assert limiter.counters.cached_refusals == 2
    finally:
        await limiter.aclose()


async def test_the_refusal_after_an_emptying_admission_is_what_redis_would_answer(
    own_redis: RedisProcess,
) -> None:
    """An admission that leaves a bucket too few tokens tells this node that the next check
    is refused until the refill: it answers as Redis does, without asking."""
    node_a = RateLimiter(own_redis.url, timeout=5.0)
    node_b = RateLimiter(own_redis.url, timeout=5.0)
    one = Limit(rate=0.0001, burst=1)
    try:
        admitted = await node_a.check_chain(chain_of("t", SLOW, one))
        assert [(d.allowed, d.remaining) for d in admitted] == [(True, 4), (True, 0)]
        before = evalsha_calls(own_redis)

        known = await node_a.check_chain(chain_of("t", SLOW, one))
        asked = await node_b.check_chain(chain_of("t", SLOW, one))  # a node that knows nothing

        assert evalsha_calls(own_redis) == before + 1  # node_b's question only
        assert node_a.counters.cached_refusals == 1
        summary = [(d.policy, d.allowed, d.remaining, d.retry_seconds()) for d in known]
        assert summary == [(d.policy, d.allowed, d.remaining, d.retry_seconds()) for d in asked]
        assert summary == [("requests", True, 3, 1), ("starts", False, 0, 10_000)]
    finally:
        await node_a.aclose()
        await node_b.aclose()


async def test_a_refusal_known_from_an_admission_ends_when_the_bucket_refills(
    own_redis: RedisProcess,
) -> None:
    limiter = RateLimiter(own_redis.url, timeout=5.0)
    fast = Limit(rate=20.0, burst=1)  # a token every 50 ms
    try:
        assert (await limiter.check("t", "starts", fast)).allowed
        assert not (await limiter.check("t", "starts", fast)).allowed  # known here
        assert (limiter.counters.redis_checks, limiter.counters.cached_refusals) == (1, 1)
        await asyncio.sleep(0.1)
        assert (await limiter.check("t", "starts", fast)).allowed  # asked of Redis again
        assert limiter.counters.redis_checks == 2
    finally:
        await limiter.aclose()


DROPPED_WITH_ITS_LOOP = """
import asyncio, gc, sys
from saga_orchestrator.security.limits import Bucket, Limit, RateLimiter, bucket_key

caught = []
sys.unraisablehook = caught.append

async def spend_and_leave(url):
    limiter = RateLimiter(url, timeout=5.0)
    slow, two = Limit(rate=0.0001, burst=5), Limit(rate=0.0001, burst=2)
    tenant = sys.argv[2]
    chain = [Bucket(bucket_key(tenant, "requests"), slow, "requests"),
             Bucket(bucket_key(tenant, "starts"), two, "starts")]
    for _ in range(2):
        await limiter.check_chain(chain)
    assert await limiter.refusal_if_known(chain) is not None
    assert limiter.counters.estimated_spends == 1
    return limiter  # never closed: its settlement is pending when the loop goes

loop = asyncio.new_event_loop()
kept = loop.run_until_complete(spend_and_leave(sys.argv[1]))
loop.close()
del kept
gc.collect()
print("unraisable:", [repr(c.exc_value) for c in caught])
"""


def test_a_limiter_dropped_with_its_event_loop_raises_nothing_later(
    shared_redis_url: str, tenant: str
) -> None:
    """A host may close its loop without closing the limiter: the settlement left pending then
    must not try to start another one when it is destroyed (there is no loop any more)."""
    done = subprocess.run(
        [sys.executable, "-c", DROPPED_WITH_ITS_LOOP, shared_redis_url, tenant],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "unraisable: []" in done.stdout, done.stdout + done.stderr


async def test_a_known_refusal_survives_a_redis_outage_only_through_the_fallback(
    own_redis: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """With Redis down the fallback decides, its own buckets; Redis's remembered refusals are
    not what answers then."""
    clock = FakeClock()
    limiter = RateLimiter(own_redis.url, timeout=0.5, cooldown=60, clock=clock)
    one = Limit(rate=0.0001, burst=1)
    try:
        await limiter.check_chain(chain_of("t", one, SLOW))
        await limiter.check_chain(chain_of("t", one, SLOW))  # refused by Redis: remembered
        assert await limiter.refusal_if_known(chain_of("t", one, SLOW)) is not None
        own_redis.kill()
        with caplog.at_level(logging.WARNING, logger="saga_orchestrator.limits"):
            assert (await limiter.check("probe", "requests", SLOW)).allowed  # opens the circuit
            await limiter.check("probe", "requests", SLOW)  # the fallback, no second warning
        assert limiter.mode == "memory"
        warnings = [r.getMessage() for r in caplog.records if r.name == "saga_orchestrator.limits"]
        assert len(warnings) == 1 and "fall back to memory for 60 s" in warnings[0]
        # The node's own bucket for t is full: nothing known, and the fallback admits.
        assert await limiter.refusal_if_known(chain_of("t", one, SLOW)) is None
        assert [d.allowed for d in await limiter.check_chain(chain_of("t", one, SLOW))] == [
            True,
            True,
        ]
        known = await limiter.refusal_if_known(chain_of("t", one, SLOW))
        assert known is not None and [(d.policy, d.allowed) for d in known] == [("requests", False)]
    finally:
        await limiter.aclose()
