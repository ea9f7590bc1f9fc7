"""Admissions from the node's estimates (``admit_from_estimates``, as ``saga serve`` runs the
limiter) against a Redis of the test's own, whose script calls are counted: well inside its
limits a tenant is admitted without a round trip; near them Redis decides, paid in the same
script what the node spent meanwhile, so one node admits exactly the bucket.

Rates are tiny (a token per 10,000 s), so counts are exact without clock control. Where the
count of scripts matters, the background payment is put off (``settle_delay``) so that it
cannot run in the middle of the test and pay what the test expects a decision to pay."""

from __future__ import annotations

import redis

from saga_orchestrator.security.limits import Bucket, Limit, RateLimiter, RedisBuckets, bucket_key
from tests.support.redis_server import RedisProcess, evalsha_calls

TEN = Limit(rate=0.0001, burst=10)
LATER = 3600.0  # a settle_delay no test waits for


def start_of(tenant: str) -> list[Bucket]:
    """The chain of a start: the tenant's requests bucket, then its starts bucket."""
    return [Bucket(bucket_key(tenant, scope), TEN, scope) for scope in ("requests", "starts")]


def tokens_in_redis(server: RedisProcess, tenant: str) -> dict[str, float]:
    """Each bucket's tokens, to two decimals: the tiny refill since is noise."""
    client = redis.Redis(port=server.port, decode_responses=True)
    try:
        return {
            scope: round(float(client.hget(bucket_key(tenant, scope), "tokens") or "nan"), 2)
            for scope in ("requests", "starts")
        }
    finally:
        client.close()


async def test_a_tenant_well_inside_its_limits_is_admitted_without_a_round_trip(
    own_redis: RedisProcess,
) -> None:
    limiter = RateLimiter(own_redis.url, timeout=5.0, admit_from_estimates=True, settle_delay=LATER)
    try:
        await limiter.check_chain(start_of("warm-up"))  # the script is loaded
        before = evalsha_calls(own_redis)
        first = await limiter.check_chain(start_of("t"))
        assert evalsha_calls(own_redis) == before + 1  # nothing known yet: Redis decides
        local = [await limiter.check_chain(start_of("t")) for _ in range(4)]
        assert evalsha_calls(own_redis) == before + 1
        assert [[(d.allowed, d.remaining) for d in each] for each in [first, *local]] == [
            [(True, left), (True, left)] for left in (9, 8, 7, 6, 5)
        ]
        assert limiter.counters.estimated_admissions == 4
        assert tokens_in_redis(own_redis, "t") == {"requests": 9.0, "starts": 9.0}

        # Below half of each bucket Redis decides, and the first of its scripts pays the four
        # first: five more admissions, each one round trip, then refusals known without one.
        rest = [all(d.allowed for d in await limiter.check_chain(start_of("t"))) for _ in range(7)]
        assert rest == [True] * 5 + [False] * 2
        assert evalsha_calls(own_redis) == before + 1 + 5
        assert tokens_in_redis(own_redis, "t") == {"requests": 0.0, "starts": 0.0}
    finally:
        await limiter.aclose()


async def test_what_a_refused_chain_did_not_pay_is_paid_by_the_next_decision(
    own_redis: RedisProcess,
) -> None:
    """A chain refused at its first bucket leaves the next one untouched, debt included: the
    node still owes it, and the next script about that bucket pays it."""
    limiter = RateLimiter(own_redis.url, timeout=5.0, admit_from_estimates=True, settle_delay=LATER)
    other_node = RedisBuckets.from_url(own_redis.url, timeout=5.0)
    try:
        for _ in range(5):  # one decided by Redis, four from estimates: four owed on each
            assert all(d.allowed for d in await limiter.check_chain(start_of("t")))
        requests, starts = start_of("t")
        for _ in range(9):  # the requests bucket emptied behind this node's back
            assert (await other_node.take(requests.key, TEN, policy="requests")).allowed

        refused = await limiter.check_chain(start_of("t"))
        assert [(d.policy, d.allowed) for d in refused] == [("requests", False)]
        assert tokens_in_redis(own_redis, "t")["starts"] == 9.0  # untouched

        (decision,) = await limiter.check_chain([starts])
        assert decision.allowed
        assert tokens_in_redis(own_redis, "t")["starts"] == 9.0 - 4 - 1
    finally:
        await other_node.aclose()
        await limiter.aclose()


async def test_two_nodes_admitting_from_estimates_admit_exactly_the_bucket(
    own_redis: RedisProcess,
) -> None:
    nodes = [RateLimiter(own_redis.url, timeout=5.0, admit_from_estimates=True) for _ in "ab"]
    try:
        admitted = 0
        for turn in range(30):
            decisions = await nodes[turn % 2].check_chain(start_of("t"))
            admitted += all(d.allowed for d in decisions)
        assert admitted == TEN.burst
        assert sum(node.counters.estimated_admissions for node in nodes) >= 4
    finally:
        for node in nodes:
            await node.aclose()


async def test_without_admissions_from_estimates_redis_decides_every_admission(
    own_redis: RedisProcess,
) -> None:
    limiter = RateLimiter(own_redis.url, timeout=5.0)
    try:
        await limiter.check_chain(start_of("warm-up"))  # the script is loaded
        before = evalsha_calls(own_redis)
        for _ in range(5):
            await limiter.check_chain(start_of("t"))
        assert evalsha_calls(own_redis) == before + 5
        assert limiter.counters.estimated_admissions == 0
    finally:
        await limiter.aclose()
