"""Rate limits and quotas: token buckets per tenant (and per principal or participant), kept in
Redis so every node shares them, with an in-memory fallback.

A bucket holds at most ``burst`` tokens and refills at ``rate`` tokens per second; a request
spends ``cost`` tokens or is refused with the time after which it would fit. In Redis one Lua
script refills and spends atomically, on the server's clock (``TIME``), so neither races between
nodes nor skew between their clocks matter. Keys are ``saga:rl:<tenant>:<scope>[:<partition>]``
and expire once the bucket would be full again: a missing key *is* a full bucket.

Fallback policy when Redis is absent or down (:class:`FallbackPolicy`, default ``memory``):

- ``memory``: each node keeps its own buckets with the same limits. A tenant is still limited
  on every node, but a cluster of N nodes may admit up to N times the limit while Redis is
  down, and the Redis buckets do not see what the nodes admitted meanwhile.
- ``allow`` (fail open) admits everything; ``deny`` (fail closed) refuses everything.

A Redis error or timeout opens a circuit: the node uses the fallback for ``cooldown`` seconds
(5 s by default), then one request probes Redis again while the others stay on the fallback, so
a dead Redis costs at most one short timeout per cool-down, not one per request. Redis trouble
never raises out of :meth:`RateLimiter.check`.

A refusal from Redis also tells when the bucket can hold the refused cost again, and so does an
admission that left fewer tokens than it cost; until then the node refuses that key itself,
without a round trip, which keeps a flooding tenant's load off Redis (and off the other
tenants' requests that share it).

Several buckets that apply to one request (a tenant's requests, then its starts) form a chain
(:meth:`RateLimiter.check_chain`): one script spends them in order and stops at the first
refusal, so a start costs one round trip, and a request refused by one bucket spends none of
the later ones. :meth:`RateLimiter.refusal_if_known` answers a chain the node already knows is
refused (a remembered refusal, or the fallback's own bucket) without spending anything after
the refused bucket: cheap enough for the API to ask before routing a request. The buckets
before a refused one are spent from this node's estimate of them, paid to Redis shortly after
in one script (:mod:`.limit_ledger`), so a flood of refused starts costs no round trip each.

With ``admit_from_estimates`` (as ``saga serve`` runs it), a chain whose every bucket this
node estimates at least half full after the spend (:data:`AMPLE_SHARE`) is admitted the same
way, without a round trip: a tenant well inside its limits never waits for Redis, which only
decides near a limit. What this node owes for a bucket is paid in the same script that next
decides it (before the decision, so Redis never admits those tokens twice): one node admits
exactly what Redis alone would. Between two payments (at most :data:`.SETTLE_DELAY` apart)
each of N nodes may spend down to half of what it last saw of a bucket: two nodes together
never exceed it, N nodes may exceed it by up to ``N / 2 - 1`` bursts once, before they see the
truth at their next payment and leave the decisions to Redis until the bucket is half full
again.

:class:`ConcurrencyQuota` caps the sagas a tenant runs at once; it counts on one node only.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Final, Literal
from urllib.parse import quote

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from saga_orchestrator.errors import InvalidInput
from saga_orchestrator.security.limit_ledger import SETTLE_DELAY, Debt, SpendLedger

log = logging.getLogger("saga_orchestrator.limits")

__all__ = [
    "Bucket",
    "ConcurrencyQuota",
    "Decision",
    "FallbackPolicy",
    "Limit",
    "LimiterCounters",
    "MemoryBuckets",
    "RateLimiter",
    "RedisBuckets",
    "RequestLimits",
    "bucket_key",
    "combined_headers",
]

Clock = Callable[[], float]
"""Seconds from an arbitrary origin that never goes back (``time.monotonic``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Limit:
    """A token bucket's shape."""

    rate: float
    """Tokens added per second: the sustained rate."""
    burst: int
    """Bucket size: how many requests may pass at once after a quiet spell."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate) and self.rate > 0):
            raise InvalidInput(f"rate must be a positive number (got {self.rate})")
        if self.burst < 1:
            raise InvalidInput(f"burst must be at least 1 (got {self.burst})")

    @classmethod
    def per_second(cls, rate: float) -> Limit:
        """``rate`` tokens per second in bursts of twice as many (at least 1): the rule of the
        ``RATE_LIMIT_*`` settings."""
        return cls(rate=rate, burst=max(1, int(2 * rate)))

    @property
    def window(self) -> int:
        """Seconds an empty bucket takes to fill (at least 1): the policy's ``w``."""
        return max(1, _ceil_seconds(self.burst / self.rate))


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestLimits:
    """The API's buckets of one tenant: the node's defaults, or those with the tenant's
    overrides applied (:meth:`.TenantLimits.request_limits`)."""

    requests: Limit = Limit(rate=100.0, burst=200)
    """API requests of the tenant."""
    starts: Limit = Limit(rate=50.0, burst=100)
    """Saga starts of the tenant (each also counts as a request)."""
    principal: Limit | None = None
    """API requests of each caller (a token's subject) of the tenant, so that one runaway
    client cannot spend its whole tenant's requests; ``None``: no per-caller bucket."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """The outcome of one check, and what to tell the client about it."""

    allowed: bool
    limit: int
    """The bucket size: the policy's quota ``q``."""
    remaining: int
    """Whole tokens left after this request."""
    reset_after: float
    """Seconds until the bucket is full again."""
    retry_after: float
    """Seconds until the refused cost fits in the bucket; 0 when allowed."""
    policy: str
    """The policy's name (the scope checked), e.g. ``requests``."""
    window: int = 1
    """Seconds an empty bucket takes to fill: the policy's window ``w``."""

    def policy_item(self) -> str:
        return f"{_sf_string(self.policy)};q={self.limit};w={self.window}"

    def limit_item(self) -> str:
        # "t" is the time within which no more than "r" is available; on a refusal it equals
        # Retry-After, which the draft says must not point before the end of that window.
        seconds = self.retry_seconds() if not self.allowed else _ceil_seconds(self.reset_after)
        return f"{_sf_string(self.policy)};r={self.remaining};t={seconds}"

    def retry_seconds(self) -> int:
        """``Retry-After`` as whole seconds: rounded up, at least 1."""
        return max(1, _ceil_seconds(self.retry_after))

    def headers(self) -> dict[str, str]:
        """``RateLimit-Policy`` and ``RateLimit`` as in draft-ietf-httpapi-ratelimit-headers-11
        (May 2026; datatracker.ietf.org/doc/draft-ietf-httpapi-ratelimit-headers/11/, sections
        3 and 4), e.g. ``"requests";q=200;w=2`` and ``"requests";r=0;t=1``, and
        ``Retry-After`` (integer seconds) when the request is refused."""
        return combined_headers([self])


def combined_headers(decisions: Iterable[Decision]) -> dict[str, str]:
    """The headers of several policies that applied to one request (tenant and principal, say):
    one list item per policy, and the longest ``Retry-After`` of the refusals."""
    items = list(decisions)
    headers = {
        "RateLimit-Policy": ", ".join(d.policy_item() for d in items),
        "RateLimit": ", ".join(d.limit_item() for d in items),
    }
    refused = [d.retry_seconds() for d in items if not d.allowed]
    if refused:
        headers["Retry-After"] = str(max(refused))
    return headers


def _ceil_seconds(seconds: float) -> int:
    # The epsilon keeps float noise (2.0000000001 after a refill) from adding a whole second.
    return max(0, math.ceil(seconds - 1e-6))


@functools.lru_cache(maxsize=256)  # policy names: a handful
def _sf_string(text: str) -> str:
    """A Structured Field String (RFC 9651 section 3.3.3): printable ASCII, quoted, escaped."""
    printable = "".join(c if " " <= c <= "~" else "_" for c in text)
    return '"' + printable.replace("\\", "\\\\").replace('"', '\\"') + '"'


@functools.lru_cache(maxsize=4096)  # every request asks for its tenant's keys
def bucket_key(tenant_id: str, scope: str, partition: str | None = None) -> str:
    """``saga:rl:<tenant>:<scope>[:<partition>]``, each part percent-encoded so no two
    (tenant, scope, partition) triples share a key."""
    parts = [tenant_id, scope] if partition is None else [tenant_id, scope, partition]
    return "saga:rl:" + ":".join(quote(part, safe="") for part in parts)


def _check_cost(limit: Limit, cost: int) -> None:
    if not 0 <= cost <= limit.burst:
        raise InvalidInput(f"cost must be between 0 and the burst {limit.burst} (got {cost})")


def _decide(allowed: bool, tokens: float, limit: Limit, cost: int, policy: str) -> Decision:
    return Decision(
        allowed=allowed,
        limit=limit.burst,
        remaining=max(0, math.floor(tokens)),
        reset_after=max(0.0, (limit.burst - tokens) / limit.rate),
        retry_after=0.0 if allowed else max(0.0, (cost - tokens) / limit.rate),
        policy=policy,
        window=limit.window,
    )


class MemoryBuckets:
    """Token buckets in this process: the same interface as :class:`RedisBuckets`.

    At most ``max_keys`` buckets are kept; the least recently used goes first, which only
    forgets spending (an evicted bucket comes back full).
    """

    def __init__(self, *, max_keys: int = 100_000, clock: Clock = time.monotonic) -> None:
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    async def take(
        self, key: str, limit: Limit, cost: int = 1, *, policy: str = "default"
    ) -> Decision:
        return self.take_now(key, limit, cost, policy=policy)

    def take_now(
        self, key: str, limit: Limit, cost: int = 1, *, policy: str = "default"
    ) -> Decision:
        """:meth:`take` without awaiting: spend ``cost`` tokens of ``key`` if they are there."""
        _check_cost(limit, cost)
        now = self._clock()
        tokens, stamp = self._buckets.pop(key, (float(limit.burst), now))
        tokens = min(float(limit.burst), tokens + max(0.0, now - stamp) * limit.rate)
        allowed = tokens >= cost
        if allowed:
            tokens -= cost
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return _decide(allowed, tokens, limit, cost, policy)

    def refusal(
        self, key: str, limit: Limit, cost: int = 1, *, policy: str = "default"
    ) -> Decision | None:
        """What :meth:`take_now` would answer if it refuses, without spending or refilling
        anything; ``None`` when it would admit (a refusal changes no bucket anyway)."""
        state = self._buckets.get(key)
        if state is None:
            return None  # a missing bucket is a full one
        tokens, stamp = state
        tokens = min(float(limit.burst), tokens + max(0.0, self._clock() - stamp) * limit.rate)
        if tokens >= cost:
            return None
        return _decide(False, tokens, limit, cost, policy)


# KEYS: the buckets, spent in order; ARGV: rate (tokens/s), burst, cost and debt of each bucket,
# in turn. A bucket first pays its debt (what a node spent from its estimates since Redis last
# saw it: security/limit_ledger.py), never below empty, then spends its cost; a refusal stops
# the chain, and the buckets after it are neither spent nor touched (a request already refused
# must not spend a start as well). A cost of 0 never refuses: that is how debts alone are paid.
# Returns {allowed, tokens left} of each bucket checked. One script, so several buckets and
# their debts cost one round trip and see one clock. Floats travel as strings: Redis turns a
# Lua number reply into an integer.
_TAKE_SCRIPT: Final = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local stamp_text = string.format('%.17g', now)
local reply = {}
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[4 * i - 3])
  local burst = tonumber(ARGV[4 * i - 2])
  local cost = tonumber(ARGV[4 * i - 1])
  local debt = tonumber(ARGV[4 * i])
  local state = redis.call('HMGET', key, 'tokens', 'stamp')
  local tokens = tonumber(state[1]) or burst
  local stamp = tonumber(state[2]) or now
  tokens = math.min(burst, tokens + math.max(0, now - stamp) * rate)
  tokens = math.max(0, tokens - debt)
  local allowed = 0
  if tokens >= cost then
    tokens = tokens - cost
    allowed = 1
  end
  local left = string.format('%.17g', tokens)
  redis.call('HSET', key, 'tokens', left, 'stamp', stamp_text)
  redis.call('PEXPIRE', key, math.ceil((burst - tokens) / rate * 1000) + 1000)
  reply[#reply + 1] = allowed
  reply[#reply + 1] = left
  if allowed == 0 then
    break
  end
end
return reply
"""
_TAKE_SHA: Final = hashlib.sha1(_TAKE_SCRIPT.encode(), usedforsecurity=False).hexdigest()


@dataclass(frozen=True, slots=True)
class Bucket:
    """One bucket of a chain (:meth:`RateLimiter.check_chain`): its key, shape and policy."""

    key: str
    limit: Limit
    policy: str


class RedisBuckets:
    """Token buckets in Redis (5 or later), shared by every node, refilled on Redis's clock."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client

    @classmethod
    def from_url(
        cls, url: str, *, timeout: float = 0.25, max_connections: int = 64
    ) -> RedisBuckets:
        """A client that fails fast: short socket timeouts and no retries, since the caller
        has a fallback that is better than waiting. Past ``max_connections`` concurrent takes,
        the others wait for a connection rather than fail."""
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=None,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        return cls(aioredis.Redis.from_pool(pool))

    async def aclose(self) -> None:
        await self._client.aclose()

    async def take(
        self, key: str, limit: Limit, cost: int = 1, *, policy: str = "default"
    ) -> Decision:
        """Spend ``cost`` tokens of ``key`` atomically; raises :class:`RedisError` or
        :class:`OSError` when Redis fails."""
        (decision,) = await self.take_chain([Bucket(key, limit, policy)], cost)
        return decision

    async def take_chain(
        self, buckets: Sequence[Bucket], cost: int = 1, debts: Mapping[str, int] | None = None
    ) -> list[Decision]:
        """Spend ``cost`` tokens of each bucket in turn, in one atomic script, stopping at the
        first refusal: the decisions of the buckets checked, the refused one last. A bucket
        first pays what ``debts`` says is owed to it (tokens spent from a node's estimates),
        never below empty; the debts of buckets after a refusal are not paid."""
        for bucket in buckets:
            _check_cost(bucket.limit, cost)
        owed = debts or {}
        keys = [bucket.key for bucket in buckets]
        args = [
            arg
            for bucket in buckets
            for arg in (
                repr(float(bucket.limit.rate)), bucket.limit.burst, cost, owed.get(bucket.key, 0)
            )
        ]  # fmt: skip
        reply = await self._script(keys, args)
        return [
            _decide(bool(reply[2 * i]), float(reply[2 * i + 1]), bucket.limit, cost, bucket.policy)
            for i, bucket in enumerate(buckets[: len(reply) // 2])
        ]

    async def debit(self, debts: Mapping[str, Debt]) -> dict[str, float]:
        """Pay what was spent from estimates: the tokens each bucket holds afterwards."""
        keys = list(debts)
        args = [
            arg
            for key in keys
            for arg in (repr(float(debts[key].rate)), debts[key].burst, 0, debts[key].tokens)
        ]
        reply = await self._script(keys, args)
        return {key: float(reply[2 * i + 1]) for i, key in enumerate(keys)}

    async def _script(self, keys: list[str], args: list[str | int]) -> list[Any]:
        try:
            reply: list[Any] = await self._client.evalsha(_TAKE_SHA, len(keys), *keys, *args)
        except NoScriptError:
            await self._client.script_load(_TAKE_SCRIPT)
            reply = await self._client.evalsha(_TAKE_SHA, len(keys), *keys, *args)
        return reply


AMPLE_SHARE: Final = 0.5
"""With ``admit_from_estimates``, the share of each bucket's burst an admission from estimates
must leave: a tenant well inside its limits is admitted without a round trip, one near them
is decided by Redis."""


class FallbackPolicy(StrEnum):
    """What :class:`RateLimiter` does while Redis is absent or down."""

    MEMORY = "memory"
    """Per-node buckets with the same limits: N nodes may admit up to N times the limit."""
    ALLOW = "allow"
    """Fail open: admit everything."""
    DENY = "deny"
    """Fail closed: refuse everything until Redis is back."""


@dataclass(slots=True)
class LimiterCounters:
    """Counts since the limiter was built, for metrics."""

    redis_checks: int = 0
    """Decisions Redis made."""
    fallback_checks: int = 0
    """Decisions the fallback made (Redis absent, down, or in its cool-down)."""
    cached_refusals: int = 0
    """Refusals this node repeated without asking Redis."""
    estimated_spends: int = 0
    """Buckets spent from this node's estimate, paid to Redis later: before a known refusal,
    or for an admission from estimates."""
    estimated_admissions: int = 0
    """Chains admitted from this node's estimates, without a round trip."""
    redis_skipped: int = 0
    """Checks sent to the fallback because every Redis connection stayed busy too long."""
    refused: int = 0
    """Refused checks, whoever decided."""
    redis_errors: int = 0
    """Redis errors and timeouts, each of which opened the circuit."""


@dataclass(frozen=True, slots=True)
class _Refusal:
    limit: Limit
    cost: int
    until: float
    decision: Decision


class RateLimiter:
    """Checks requests against token buckets in Redis, or in memory when Redis is absent
    or down (see the module's docstring for the fallback policy)."""

    def __init__(
        self,
        redis_url: str | None,
        *,
        fallback_policy: FallbackPolicy = FallbackPolicy.MEMORY,
        cooldown: float = 5.0,
        timeout: float = 0.25,
        max_connections: int = 64,
        max_keys: int = 100_000,
        clock: Clock = time.monotonic,
        admit_from_estimates: bool = False,
        settle_delay: float = SETTLE_DELAY,
    ) -> None:
        """``admit_from_estimates``: a chain whose every bucket this node estimates at least
        :data:`AMPLE_SHARE` full after the spend is admitted without a round trip and paid to
        Redis within ``settle_delay`` seconds (see the module's docstring)."""
        self._admit_from_estimates = admit_from_estimates
        self._settle_delay = settle_delay
        self._redis = (
            None
            if redis_url is None
            else RedisBuckets.from_url(redis_url, timeout=timeout, max_connections=max_connections)
        )
        # Waiting for a connection is bounded here, so that a burst of checks neither waits
        # long nor reaches Redis after the circuit opened while it waited.
        self._slots = asyncio.Semaphore(max_connections)
        self._memory = MemoryBuckets(max_keys=max_keys, clock=clock)
        self._policy = fallback_policy
        self._cooldown = cooldown
        self._timeout = timeout
        self._clock = clock
        self._down_until: float | None = None
        self._probing = False
        self._refusals: OrderedDict[str, _Refusal] = OrderedDict()
        self._max_keys = max_keys
        self._ledger = SpendLedger(clock, max_keys)
        self._settling: asyncio.Task[None] | None = None
        self._counters = LimiterCounters()

    @property
    def mode(self) -> Literal["redis", "memory"]:
        """``redis`` while Redis decides, ``memory`` while the fallback does."""
        return "redis" if self._redis is not None and self._down_until is None else "memory"

    @property
    def counters(self) -> LimiterCounters:
        """A copy of the counters."""
        return replace(self._counters)

    async def aclose(self) -> None:
        if self._settling is not None:
            self._settling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._settling
        if self._redis is not None:
            await self._redis.aclose()

    async def check(
        self,
        tenant_id: str,
        scope: str,
        limit: Limit,
        cost: int = 1,
        *,
        partition: str | None = None,
    ) -> Decision:
        """Spend ``cost`` tokens of the tenant's ``scope`` bucket (one per ``partition``, such
        as a principal or a participant, when given). ``scope`` names the policy in headers."""
        key = bucket_key(tenant_id, scope, partition)
        (decision,) = await self.check_chain([Bucket(key, limit, scope)], cost)
        return decision

    async def check_chain(self, buckets: Sequence[Bucket], cost: int = 1) -> list[Decision]:
        """Spend ``cost`` tokens of each bucket in turn (keys from :func:`bucket_key`),
        stopping at the first refusal: the decisions of the buckets checked, the refused one
        last. In Redis the whole chain is one script, one round trip."""
        for bucket in buckets:
            _check_cost(bucket.limit, cost)
        decisions = await self._check_chain(buckets, cost)
        if not decisions[-1].allowed:
            self._counters.refused += 1
        return decisions

    async def refusal_if_known(
        self, buckets: Sequence[Bucket], cost: int = 1
    ) -> list[Decision] | None:
        """What :meth:`check_chain` answers when this node already knows that one of the
        buckets refuses (``None`` otherwise: ask :meth:`check_chain`): a refusal Redis made
        lately, remembered until the bucket could take ``cost`` again, or, while the fallback
        decides, its own bucket's refusal. The buckets before the refused one are spent, as
        :meth:`check_chain` spends them; with a refusal known for the first one, the answer
        costs no round trip and spends nothing. Cheap enough to ask before any other work."""
        known = self._known_refusal(buckets, cost)
        if known is None:
            return None
        index, refusal = known
        before = await self._spend_before(buckets[:index], cost) if index else []
        self._counters.refused += 1
        return before if before and not before[-1].allowed else [*before, refusal]

    def refusal_known_now(self, buckets: Sequence[Bucket], cost: int = 1) -> list[Decision] | None:
        """:meth:`refusal_if_known`'s answer when it needs no round trip, without awaiting:
        the buckets before the refused one (if any) are spent from this node's estimates or
        its fallback. ``None`` otherwise (ask :meth:`refusal_if_known`)."""
        known = self._known_refusal(buckets, cost)
        if known is None:
            return None
        index, refusal = known
        before = self._spend_now(buckets[:index], cost) if index else []
        if before is None:
            return None
        self._counters.refused += 1
        return before if before and not before[-1].allowed else [*before, refusal]

    def _known_refusal(self, buckets: Sequence[Bucket], cost: int) -> tuple[int, Decision] | None:
        """The first bucket this node knows refuses ``cost``, and its refusal."""
        if self._redis is not None and self._down_until is None:
            known = self._first_known(buckets, cost, self._cached_refusal)
        elif self._redis is None or (
            self._policy is FallbackPolicy.MEMORY and not self._probe_due()
        ):
            known = self._first_known(buckets, cost, self._memory_refusal)
        else:
            return None  # a probe of Redis is due, or allow/deny: check_chain decides
        if known is not None:
            for bucket in buckets:
                _check_cost(bucket.limit, cost)
        return known

    @staticmethod
    def _first_known(
        buckets: Sequence[Bucket],
        cost: int,
        refusal_of: Callable[[Bucket, int], Decision | None],
    ) -> tuple[int, Decision] | None:
        for index, bucket in enumerate(buckets):
            refusal = refusal_of(bucket, cost)
            if refusal is not None:
                return index, refusal
        return None

    def _memory_refusal(self, bucket: Bucket, cost: int) -> Decision | None:
        if self._policy is not FallbackPolicy.MEMORY:
            return None
        refusal = self._memory.refusal(bucket.key, bucket.limit, cost, policy=bucket.policy)
        if refusal is not None:
            self._counters.fallback_checks += 1
        return refusal

    async def _check_chain(self, buckets: Sequence[Bucket], cost: int) -> list[Decision]:
        if self._redis is None or (self._down_until is not None and not self._probe_due()):
            return self._fallback_chain(buckets, cost)
        # A bucket Redis refused lately is refused here without a round trip; the buckets
        # before it are still spent (in Redis), as a chain checked in full would spend them.
        for index, bucket in enumerate(buckets):
            cached = self._cached_refusal(bucket, cost)
            if cached is None:
                continue
            if index == 0:
                return [cached]
            before = await self._spend_before(buckets[:index], cost)
            return before if not before[-1].allowed else [*before, cached]
        if self._admit_from_estimates:
            admitted = self._spend_estimated(buckets, cost, AMPLE_SHARE)
            if admitted is not None:
                self._counters.estimated_admissions += 1
                return admitted
        return await self._ask_redis(buckets, cost)

    async def _spend_before(self, buckets: Sequence[Bucket], cost: int) -> list[Decision]:
        """Spend the buckets before a known refusal: without a round trip when
        :meth:`_spend_now` can, else as a chain of their own."""
        spent = self._spend_now(buckets, cost)
        return spent if spent is not None else await self._check_chain(buckets, cost)

    def _spend_now(self, buckets: Sequence[Bucket], cost: int) -> list[Decision] | None:
        """Spend the buckets without a round trip: from this node's estimates while Redis
        decides and every estimate admits (see :mod:`.limit_ledger`), from the fallback while
        it decides; ``None`` when Redis must be asked (an estimate that may not admit, or a
        probe of a Redis that failed is due)."""
        if self._redis is None or self._down_until is not None:
            if self._redis is not None and self._probe_due():
                return None
            return self._fallback_chain(buckets, cost)
        return self._spend_estimated(buckets, cost, 0.0)

    def _spend_estimated(
        self, buckets: Sequence[Bucket], cost: int, keep_share: float
    ) -> list[Decision] | None:
        """Spend every bucket from this node's estimates if each would still hold
        ``keep_share`` of its burst (and the cost was there), else ``None`` (ask Redis)."""
        estimates: list[float] = []
        for bucket in buckets:
            limit = bucket.limit
            after = self._ledger.tokens_after(bucket.key, limit.rate, limit.burst, cost)
            if after is None or after < limit.burst * keep_share:
                return None
            estimates.append(after)
        decisions = []
        for bucket, after in zip(buckets, estimates, strict=True):
            self._ledger.spend(bucket.key, bucket.limit.rate, bucket.limit.burst, cost, after)
            decisions.append(_decide(True, after, bucket.limit, cost, bucket.policy))
        self._counters.estimated_spends += len(buckets)
        self._schedule_settlement()
        return decisions

    async def settle(self) -> None:
        """Wait until what was spent from estimates is paid to Redis (or forgiven)."""
        while self._settling is not None:
            await asyncio.shield(self._settling)

    def _schedule_settlement(self) -> None:
        if self._settling is None:
            self._settling = asyncio.get_running_loop().create_task(
                self._settle(), name="rate-limit-settlement"
            )

    async def _settle(self) -> None:
        """Pay Redis what was spent from estimates, :data:`.SETTLE_DELAY` after the first."""
        stopped = False
        try:
            await asyncio.sleep(self._settle_delay)
            debts = self._ledger.take_debts()
            if not debts or self._redis is None or self._down_until is not None:
                return  # an outage forgives them: the fallback decides meanwhile
            try:
                async with asyncio.timeout(self._timeout * 2):
                    left = await self._redis.debit(debts)
            except (RedisError, OSError, TimeoutError) as error:
                self._redis_failed(error)
                return
            for key, tokens in left.items():
                debt = debts[key]
                self._ledger.observe(key, debt.rate, debt.burst, tokens)
        except (asyncio.CancelledError, GeneratorExit):
            # Closed (aclose) or dropped with its event loop: what is still owed is forgiven,
            # and no new settlement may start (there may be no loop to run it).
            stopped = True
            raise
        finally:
            self._settling = None
            if not stopped and self._ledger.owes:
                self._schedule_settlement()

    def _redis_failed(self, error: Exception) -> None:
        """Open the circuit: the fallback decides for a cool-down, and nothing Redis said
        before (estimates, debts) is trusted after it."""
        self._counters.redis_errors += 1
        if self._down_until is None:
            # Once per outage, not per check: while the fallback decides, a cluster's nodes
            # each admit up to the limit, so an operator should know when it happens.
            log.warning(
                "Redis failed (%s): rate limits fall back to %s for %g s",
                type(error).__name__, self._policy.value, self._cooldown,
            )  # fmt: skip
        self._down_until = self._clock() + self._cooldown
        self._ledger.forget()

    def _probe_due(self) -> bool:
        """Redis is down, its cool-down is over and no other check is probing it."""
        return (
            self._down_until is not None and not self._probing and self._clock() >= self._down_until
        )

    async def _ask_redis(self, buckets: Sequence[Bucket], cost: int) -> list[Decision]:
        probe = self._down_until is not None
        if probe:
            self._probing = True  # this caller probes; the others stay on the fallback meanwhile
        # Before the round trip: Redis decided after this instant, so a bucket's refill,
        # counted from here, is never later than Redis's own.
        asked_at = self._clock()
        # What this node spent of these buckets from its estimates is paid in the same script,
        # before Redis decides: else Redis would admit those tokens a second time.
        debts = self._ledger.take_debts_of(bucket.key for bucket in buckets)
        try:
            decisions = await self._take_in_slot(buckets, cost, debts, probe=probe)
        except (RedisError, OSError, TimeoutError) as error:
            self._redis_failed(error)  # forgives the debts with the rest
            return self._fallback_chain(buckets, cost)
        finally:
            if probe:
                self._probing = False
        if decisions is None:
            self._owe_again(debts, buckets)
            return self._fallback_chain(buckets, cost)
        self._owe_again(debts, buckets[len(decisions) :])  # after a refusal: not paid
        self._down_until = None
        self._counters.redis_checks += len(decisions)
        for bucket, decision in zip(buckets, decisions, strict=False):
            # Whole tokens: an estimate a fraction low only asks Redis a little sooner.
            self._ledger.observe(
                bucket.key, bucket.limit.rate, bucket.limit.burst, float(decision.remaining)
            )
            refusal = decision if not decision.allowed else _next_refusal(decision, bucket, cost)
            if refusal is not None:
                self._remember_refusal(bucket.key, bucket.limit, cost, refusal, asked_at)
        return decisions

    def _owe_again(self, debts: Mapping[str, Debt], unpaid: Sequence[Bucket]) -> None:
        if self._down_until is not None:
            return  # an outage forgives them: the fallback decides meanwhile
        for bucket in unpaid:
            debt = debts.get(bucket.key)
            if debt is not None:
                self._ledger.owe(bucket.key, debt)
        if self._ledger.owes:
            self._schedule_settlement()

    async def _take_in_slot(
        self, buckets: Sequence[Bucket], cost: int, debts: Mapping[str, Debt], *, probe: bool
    ) -> list[Decision] | None:
        """Redis's decisions, or ``None`` when no connection came free in time or the circuit
        opened while this check waited for one."""
        assert self._redis is not None
        try:
            async with asyncio.timeout(self._timeout):
                await self._slots.acquire()
        except TimeoutError:
            self._counters.redis_skipped += 1
            return None
        try:
            if self._down_until is not None and not probe:
                return None
            async with asyncio.timeout(self._timeout * 2):
                owed = {key: debt.tokens for key, debt in debts.items()}
                return await self._redis.take_chain(buckets, cost, owed)
        finally:
            self._slots.release()

    def _fallback_chain(self, buckets: Sequence[Bucket], cost: int) -> list[Decision]:
        decisions: list[Decision] = []
        for bucket in buckets:
            decisions.append(self._fallback(bucket.key, bucket.limit, cost, bucket.policy))
            if not decisions[-1].allowed:
                break
        return decisions

    def _fallback(self, key: str, limit: Limit, cost: int, policy: str) -> Decision:
        self._counters.fallback_checks += 1
        if self._policy is FallbackPolicy.MEMORY:
            return self._memory.take_now(key, limit, cost, policy=policy)
        allowed = self._policy is FallbackPolicy.ALLOW
        tokens = float(limit.burst) if allowed else 0.0
        decision = _decide(allowed, tokens, limit, cost, policy)
        if allowed:
            return decision
        down_until = self._down_until
        wait = self._cooldown if down_until is None else max(0.0, down_until - self._clock())
        return replace(decision, retry_after=wait)

    def _remember_refusal(
        self, key: str, limit: Limit, cost: int, decision: Decision, decided_after: float
    ) -> None:
        # Tokens only come back at the refill rate, so until retry_after no cost as large fits.
        until = decided_after + decision.retry_after
        self._refusals[key] = _Refusal(limit=limit, cost=cost, until=until, decision=decision)
        self._refusals.move_to_end(key)
        if len(self._refusals) > self._max_keys:
            self._refusals.popitem(last=False)

    def _cached_refusal(self, bucket: Bucket, cost: int) -> Decision | None:
        key, limit = bucket.key, bucket.limit
        refusal = self._refusals.get(key)
        if refusal is None:
            return None
        now = self._clock()
        if now >= refusal.until or refusal.limit != limit or cost < refusal.cost:
            del self._refusals[key]
            return None
        self._counters.cached_refusals += 1
        elapsed = now - (refusal.until - refusal.decision.retry_after)
        return replace(
            refusal.decision,
            remaining=0,
            retry_after=refusal.until - now,
            reset_after=max(0.0, refusal.decision.reset_after - elapsed),
        )


def _next_refusal(admitted: Decision, bucket: Bucket, cost: int) -> Decision | None:
    """The refusal Redis would give the next ``cost`` after an admission that left the bucket
    too few tokens for it, or ``None`` when it would admit. Other nodes' checks only take
    tokens and the refill is the bucket's rate, so until those tokens are back the bucket
    refuses, whoever asks: knowing it here spares the round trip of that refusal."""
    limit = bucket.limit
    tokens = limit.burst - admitted.reset_after * limit.rate
    if tokens + 1e-6 >= cost:  # float noise of the round trip through reset_after: ask Redis
        return None
    return _decide(False, tokens, limit, cost, bucket.policy)


class ConcurrencyQuota:
    """Caps the sagas each tenant runs at once, counted on this node only (N nodes may run up
    to N times the cap). Use it from the event loop's thread: it takes no lock.

    ``limit_of(tenant_id)`` gives the tenant's cap, or ``None`` for no cap; it is asked on
    every acquire, so a limit changed through the admin API applies to the next start.
    """

    def __init__(self, limit_of: Callable[[str], int | None]) -> None:
        self._limit_of = limit_of
        self._running: dict[str, int] = {}

    def try_acquire(self, tenant_id: str) -> bool:
        """Count one more running saga, unless the tenant is at its cap."""
        cap = self._limit_of(tenant_id)
        if cap is not None and self.running(tenant_id) >= cap:
            return False
        self.acquire(tenant_id)
        return True

    def acquire(self, tenant_id: str) -> None:
        """Count one more running saga even past the cap (an instance recovered after a crash
        is running already, whatever the cap says)."""
        self._running[tenant_id] = self.running(tenant_id) + 1

    def release(self, tenant_id: str) -> None:
        """One saga of the tenant stopped running; never goes below zero."""
        left = self.running(tenant_id) - 1
        if left > 0:
            self._running[tenant_id] = left
        else:
            self._running.pop(tenant_id, None)

    def running(self, tenant_id: str) -> int:
        return self._running.get(tenant_id, 0)
