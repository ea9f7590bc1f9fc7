"""Instance and step states (semantics §3), shared by the core, the store's CHECK constraints
and the API."""

from __future__ import annotations

import enum
from functools import cached_property


class InstanceStatus(enum.StrEnum):
    RUNNING = "running"
    COMPENSATING = "compensating"
    COMPLETED = "completed"
    COMPENSATED = "compensated"
    """Failed and fully undone."""
    FAILED = "failed"
    """Parked: compensation (or a step past the pivot) could not finish; an operator acts."""
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"

    # Cached on the member (a non-data descriptor, so later reads find the member's own
    # attribute): the engine asks these a score of times per saga.
    @cached_property
    def is_terminal(self) -> bool:
        """Nothing will ever happen to the instance again."""
        return self in _TERMINAL

    @cached_property
    def is_settled(self) -> bool:
        """Nothing happens without an operator: terminal, or parked in ``failed``."""
        return self in _TERMINAL or self is InstanceStatus.FAILED


_TERMINAL = frozenset(
    {
        InstanceStatus.COMPLETED,
        InstanceStatus.COMPENSATED,
        InstanceStatus.CANCELLED,
        InstanceStatus.TIMED_OUT,
    }
)


class StepStatus(enum.StrEnum):
    PENDING = "pending"
    SKIPPED = "skipped"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"
    COMPENSATION_FAILED = "compensation_failed"
