"""What this node last learned of each Redis bucket, and what it spent since without telling
Redis: so that a request can be admitted, or the buckets before a known refusal spent, without
a round trip each.

A flood of refused starts would otherwise cost one Redis script per request just to spend the
requests bucket, which made a refusal five times as expensive as one decided in memory
(docs/performance.md, "Tenant isolation under a flood"), and a tenant well inside its limits
would wait for Redis at every request. Instead the node estimates the bucket from Redis's last
answer (refilled at the bucket's rate since), spends from the estimate, and owes Redis the
spend, which :class:`~saga_orchestrator.security.limits.RateLimiter` pays in one script every
:data:`SETTLE_DELAY` seconds, or in the same script as the next check of that bucket that Redis
decides (Redis would otherwise admit those tokens again). An estimate is only used to *admit*:
when it says the bucket may be empty, the chain is asked of Redis as before, so an estimate
never refuses what Redis would admit. Between two settlements other nodes may spend the same
bucket, so a cluster can admit up to its nodes' estimates at once; the limiter's docstring
gives the bound of each use.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Final

SETTLE_DELAY: Final = 0.05
"""Seconds between a spend from an estimate and its settlement in Redis."""


@dataclass(slots=True)
class _Seen:
    rate: float
    burst: int
    tokens: float
    at: float


@dataclass(frozen=True, slots=True)
class Debt:
    rate: float
    burst: int
    tokens: int


class SpendLedger:
    def __init__(self, clock: Callable[[], float], max_keys: int) -> None:
        self._clock = clock
        self._max_keys = max_keys
        self._seen: OrderedDict[str, _Seen] = OrderedDict()
        self._owed: dict[str, Debt] = {}

    def observe(self, key: str, rate: float, burst: int, tokens: float) -> None:
        """Redis said ``key`` holds ``tokens`` now (less what is still owed to it)."""
        owed = self._owed.get(key)
        left = tokens - (owed.tokens if owed is not None else 0)
        self._seen[key] = _Seen(rate=rate, burst=burst, tokens=left, at=self._clock())
        self._seen.move_to_end(key)
        if len(self._seen) > self._max_keys:
            self._seen.popitem(last=False)

    def tokens_after(self, key: str, rate: float, burst: int, cost: int) -> float | None:
        """The tokens ``key`` would hold after spending ``cost``, if the estimate says they are
        there; ``None``: unknown, or perhaps not enough (ask Redis)."""
        seen = self._seen.get(key)
        if seen is None or (seen.rate, seen.burst) != (rate, burst):
            return None
        tokens = min(float(burst), seen.tokens + max(0.0, self._clock() - seen.at) * rate)
        return tokens - cost if tokens >= cost else None

    def spend(self, key: str, rate: float, burst: int, cost: int, tokens_after: float) -> None:
        """Spend ``cost`` from the estimate (``tokens_after`` from :meth:`tokens_after`) and
        owe it to Redis."""
        self._seen[key] = _Seen(rate=rate, burst=burst, tokens=tokens_after, at=self._clock())
        owed = self._owed.get(key)
        self._owed[key] = Debt(rate, burst, cost + (owed.tokens if owed is not None else 0))

    @property
    def owes(self) -> bool:
        return bool(self._owed)

    def take_debts_of(self, keys: Iterable[str]) -> dict[str, Debt]:
        """What is owed for ``keys``, which the caller now pays (or forgives, or owes again)."""
        return {key: debt for key in keys if (debt := self._owed.pop(key, None)) is not None}

    def owe(self, key: str, debt: Debt) -> None:
        """Owe ``debt`` again: a payment that did not happen (its chain was refused first)."""
        owed = self._owed.get(key)
        self._owed[key] = replace(debt, tokens=debt.tokens + (owed.tokens if owed else 0))

    def take_debts(self) -> dict[str, Debt]:
        """What is owed to Redis, which the caller now pays (or forgives)."""
        debts, self._owed = self._owed, {}
        return debts

    def forget(self) -> None:
        """Redis is down or was left: nothing it said still holds, nothing is owed to it."""
        self._seen.clear()
        self._owed.clear()
