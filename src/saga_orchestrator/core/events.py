"""The events of a saga instance's history: facts, appended once, never changed.

Each event is a frozen dataclass with its timestamp ``at``; the history of an instance is the
list of its events in sequence order, and its state is ``fold(evolve, events)``.
(De)serialization lives in :mod:`.codec` so old histories keep their meaning (golden tests).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from saga_orchestrator.core.records import fast_init


class Phase(enum.StrEnum):
    ACTION = "action"
    COMPENSATION = "compensation"


class SkipReason(enum.StrEnum):
    CONDITION_FALSE = "condition_false"
    MANUAL = "manual"


class FailureCause(enum.StrEnum):
    """Why a saga turned back: decides the terminal state after compensation."""

    STEP_FAILED = "step_failed"
    CANCELLED = "cancelled"
    DEADLINE = "deadline"


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorInfo:
    """A classified failure: data, never an exception, inside the core."""

    type: str
    message: str
    retryable: bool
    unknown: bool = False
    """The effect may have happened (timeout, connection lost, node crashed mid-attempt)."""
    retry_after: float | None = None
    """Seconds the participant asked us to wait (HTTP ``Retry-After``, an open circuit
    breaker): the next attempt starts no sooner, whatever the retry policy says."""
    budgeted: bool = True
    """False when the attempt never reached the participant (its circuit breaker was open):
    such an attempt does not use up the step's retry budget."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class SagaStarted(Event):
    tenant_id: str
    instance_id: str
    definition_name: str
    definition_version: str
    input: Any
    deadline: datetime | None
    parent_instance_id: str | None = None
    parent_node: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSkipped(Event):
    node: str
    reason: SkipReason
    note: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeEntered(Event):
    """A parallel or switch node began; for a switch, ``case`` is the route taken."""

    node: str
    case: int | None = None
    """Index into the switch's cases; the last index is the default route."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeCompleted(Event):
    """Every node inside a parallel or switch node finished."""

    node: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptScheduled(Event):
    """Recorded before the dispatch: after a crash the attempt's outcome is unknown."""

    node: str
    phase: Phase
    attempt: int
    input: Any
    deadline: datetime | None
    idempotency_key: str
    child_instance_id: str | None = None
    """Sub-saga nodes: the child that this attempt starts (or compensates)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptAccepted(Event):
    """The participant took the attempt on (HTTP 202): it completes by callback, in time."""

    node: str
    phase: Phase
    attempt: int


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptHeartbeat(Event):
    """The participant says it is still working: the attempt's deadline moves to ``deadline``."""

    node: str
    phase: Phase
    attempt: int
    deadline: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptSucceeded(Event):
    node: str
    phase: Phase
    attempt: int
    output: Any = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptFailed(Event):
    node: str
    phase: Phase
    attempt: int
    error: ErrorInfo


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryScheduled(Event):
    """A durable timer: attempt ``attempt`` of ``node`` may start at ``due``."""

    node: str
    phase: Phase
    attempt: int
    due: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class StepFailed(Event):
    """The node's action failed for good (attempts exhausted, rejection, abandoned)."""

    node: str
    error: ErrorInfo


@dataclass(frozen=True, slots=True, kw_only=True)
class PivotPassed(Event):
    """The pivot succeeded: from here on the saga only goes forward."""

    node: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelRequested(Event):
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadlineExceeded(Event):
    deadline: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class CompensationStarted(Event):
    cause: FailureCause


@dataclass(frozen=True, slots=True, kw_only=True)
class CompensationRequested(Event):
    """A completed child saga is asked to undo itself because its parent compensates."""

    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CompensationFailed(Event):
    """A compensation exhausted its policy and ``on_compensation_failure`` is ``skip``."""

    node: str
    error: ErrorInfo


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertRaised(Event):
    node: str
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SagaParked(Event):
    """The saga stopped in ``failed``: an operator must retry, skip or resolve."""

    node: str | None
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SagaCompleted(Event):
    output: Any = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SagaCompensated(Event):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class SagaCancelled(Event):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class SagaTimedOut(Event):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class OperatorRetried(Event):
    reason: str
    actor: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class OperatorSkipped(Event):
    node: str
    reason: str
    actor: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class OperatorResolved(Event):
    reason: str
    actor: str = ""


EVENT_TYPES: tuple[type[Event], ...] = (
    SagaStarted,
    NodeSkipped,
    NodeEntered,
    NodeCompleted,
    AttemptScheduled,
    AttemptSucceeded,
    AttemptFailed,
    AttemptAccepted,
    AttemptHeartbeat,
    RetryScheduled,
    StepFailed,
    PivotPassed,
    CancelRequested,
    DeadlineExceeded,
    CompensationStarted,
    CompensationRequested,
    CompensationFailed,
    AlertRaised,
    SagaParked,
    SagaCompleted,
    SagaCompensated,
    SagaCancelled,
    SagaTimedOut,
    OperatorRetried,
    OperatorSkipped,
    OperatorResolved,
)
fast_init(ErrorInfo, *EVENT_TYPES)
