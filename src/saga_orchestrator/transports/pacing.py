"""Outbound pacing: a token bucket per participant service, so a burst of sagas does not
flood a participant with more calls per second than it was registered to take.

A call over the rate is not sent: it fails fast as ``RateLimited``, retryable and not
budgeted, with ``retry_after`` saying when a token will be there, so the step waits (on its
durable timer) instead of using up its attempts. Per node, like the circuit breaker.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()

    def take(self) -> float:
        """0.0 if a token was taken; else seconds until one will be there."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate
