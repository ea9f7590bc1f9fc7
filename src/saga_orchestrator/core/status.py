"""Instance and step states (semantics §3), shared by the core, the store's CHECK constraints
and the API."""

from __future__ import annotations

import enum


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

    @property
    def is_terminal(self) -> bool:
        """Nothing will ever happen to the instance again."""
        return self in _TERMINAL

    @property
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
