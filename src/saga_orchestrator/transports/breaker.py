"""Per-service circuit breakers: stop calling a participant that is failing, and probe it back.

Hand-written rather than taken from PyPI because the settings (``BreakerSettings``) ask for a
*failure rate over a time window*, with a minimum number of calls, while pybreaker (and
aiobreaker, its asyncio fork, unmaintained since 2019) and purgatory trip on a count of
consecutive failures (``fail_max`` / ``threshold``) with no window. The state machine is small:

    CLOSED --(calls >= minimum_calls and failure rate >= failure_rate over the window)--> OPEN
    OPEN --(open_for elapsed)--> HALF_OPEN
    HALF_OPEN --(all half_open_probes trial calls succeed)--> CLOSED (window reset)
    HALF_OPEN --(any trial call fails)--> OPEN

The window is ``ceil(window)`` one-second buckets (the newest one partial), so recording a call
costs O(1) and old calls age out without a per-call timestamp. Every state change starts a new
*epoch*: an outcome recorded with a permit from an earlier epoch is ignored, so a slow call
admitted while closed cannot close (or re-open) a breaker that has since moved on.

Not thread-safe: one event loop uses it, and nothing in it awaits.
"""

from __future__ import annotations

import enum
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from saga_orchestrator.definition.participants import BreakerSettings

Clock = Callable[[], float]

HALF_OPEN_RETRY_AFTER = 1.0
"""Seconds a caller turned away while the trial calls are out is told to wait: their outcome
is due within their own timeout, which the breaker does not know."""


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True, kw_only=True)
class Permit:
    """Leave to make one call; hand it back with ``record`` (or ``release``)."""

    epoch: int
    probe: bool
    """A half-open trial call."""


@dataclass(slots=True)
class _Bucket:
    second: int
    calls: int = 0
    failures: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerSnapshot:
    tenant_id: str
    service: str
    state: BreakerState
    failure_rate: float
    """Failed calls / calls over the current window (0.0 without calls)."""
    calls: int
    """Calls recorded in the current window."""
    retry_after: float
    """Seconds until the breaker admits a call again (0.0 when it admits now)."""


class CircuitBreaker:
    def __init__(self, settings: BreakerSettings, clock: Clock = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._epoch = 0
        self._buckets: deque[_Bucket] = deque()
        self._opened_at = 0.0
        self._probes_issued = 0
        self._probes_passed = 0

    @property
    def epoch(self) -> int:
        """How many state changes this breaker went through; permits carry it."""
        return self._epoch

    @property
    def state(self) -> BreakerState:
        self._advance(self._clock())
        return self._state

    def try_acquire(self) -> Permit | None:
        """A permit to call now, or None if the breaker rejects the call (see ``retry_after``)."""
        if not self.settings.enabled:
            return Permit(epoch=self._epoch, probe=False)
        self._advance(self._clock())
        if self._state is BreakerState.CLOSED:
            return Permit(epoch=self._epoch, probe=False)
        if self._state is BreakerState.HALF_OPEN and (
            self._probes_issued < self.settings.half_open_probes
        ):
            self._probes_issued += 1
            return Permit(epoch=self._epoch, probe=True)
        return None

    def record(self, permit: Permit, failed: bool) -> None:
        """The outcome of the call made with ``permit``."""
        if not self.settings.enabled or permit.epoch != self._epoch:
            return
        now = self._clock()
        if permit.probe:
            self._record_probe(now, failed=failed)
        else:
            self._record_call(now, failed=failed)

    def release(self, permit: Permit) -> None:
        """The call made with ``permit`` ended without a verdict on the service (cancelled,
        refused before sending): a trial slot goes back to the pool, nothing is counted."""
        if permit.probe and permit.epoch == self._epoch:
            self._probes_issued -= 1

    def retry_after(self) -> float:
        """Seconds until the breaker may admit a call (0.0 if it would admit one now)."""
        if not self.settings.enabled:
            return 0.0
        now = self._clock()
        self._advance(now)
        if self._state is BreakerState.OPEN:
            return max(0.0, self._opened_at + self.settings.open_for - now)
        if self._state is BreakerState.HALF_OPEN and (
            self._probes_issued >= self.settings.half_open_probes
        ):
            return min(HALF_OPEN_RETRY_AFTER, self.settings.open_for)
        return 0.0

    def window(self) -> tuple[int, int]:
        """(calls, failures) recorded in the current window."""
        self._expire(self._clock())
        calls = sum(bucket.calls for bucket in self._buckets)
        return calls, sum(bucket.failures for bucket in self._buckets)

    def failure_rate(self) -> float:
        calls, failures = self.window()
        return failures / calls if calls else 0.0

    def _record_call(self, now: float, *, failed: bool) -> None:
        self._expire(now)
        second = math.floor(now)
        if not self._buckets or self._buckets[-1].second != second:
            self._buckets.append(_Bucket(second))
        bucket = self._buckets[-1]
        bucket.calls += 1
        bucket.failures += int(failed)
        calls, failures = self.window()
        if calls >= self.settings.minimum_calls and failures / calls >= self.settings.failure_rate:
            self._open(now)

    def _record_probe(self, now: float, *, failed: bool) -> None:
        if failed:
            self._open(now)
            return
        self._probes_passed += 1
        if self._probes_passed >= self.settings.half_open_probes:
            self._move(BreakerState.CLOSED)
            self._buckets.clear()

    def _advance(self, now: float) -> None:
        if self._state is BreakerState.OPEN and now >= self._opened_at + self.settings.open_for:
            self._move(BreakerState.HALF_OPEN)

    def _open(self, now: float) -> None:
        self._opened_at = now
        self._move(BreakerState.OPEN)

    def _move(self, state: BreakerState) -> None:
        self._state = state
        self._epoch += 1
        self._probes_issued = 0
        self._probes_passed = 0

    def _expire(self, now: float) -> None:
        oldest = math.floor(now) - math.ceil(self.settings.window) + 1
        while self._buckets and self._buckets[0].second < oldest:
            self._buckets.popleft()


class BreakerBook:
    """The breakers of one node, one per (tenant, service), built on first use."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._breakers: dict[tuple[str, str], CircuitBreaker] = {}

    def get(self, tenant_id: str, service: str, settings: BreakerSettings) -> CircuitBreaker:
        """The service's breaker; a fresh one (closed) when its settings changed."""
        key = (tenant_id, service)
        breaker = self._breakers.get(key)
        if breaker is None or breaker.settings != settings:
            breaker = self._breakers[key] = CircuitBreaker(settings, self._clock)
        return breaker

    def state_of(self, tenant_id: str, service: str) -> BreakerState:
        """CLOSED for a service never called on this node."""
        breaker = self._breakers.get((tenant_id, service))
        return BreakerState.CLOSED if breaker is None else breaker.state

    def snapshot(self) -> list[BreakerSnapshot]:
        return [
            _snapshot(tenant_id, service, breaker)
            for (tenant_id, service), breaker in sorted(self._breakers.items())
        ]


def _snapshot(tenant_id: str, service: str, breaker: CircuitBreaker) -> BreakerSnapshot:
    calls, failures = breaker.window()
    return BreakerSnapshot(
        tenant_id=tenant_id,
        service=service,
        state=breaker.state,
        failure_rate=failures / calls if calls else 0.0,
        calls=calls,
        retry_after=breaker.retry_after(),
    )


__all__ = [
    "BreakerBook",
    "BreakerSnapshot",
    "BreakerState",
    "CircuitBreaker",
    "Clock",
    "Permit",
]
