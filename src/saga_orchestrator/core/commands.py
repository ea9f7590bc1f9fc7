"""Effects the shell performs after the events that justify them are durable.

They are data: the decider never performs them, and a test can assert them exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from saga_orchestrator.core.events import ErrorInfo, Event, Phase
from saga_orchestrator.core.records import fast_init
from saga_orchestrator.core.state import SagaState
from saga_orchestrator.definition.models import AmqpCall, HandlerCall, HttpCall

Target = HandlerCall | HttpCall | AmqpCall


@dataclass(frozen=True, slots=True, kw_only=True)
class Dispatch:
    """Run one attempt of a step's action or compensation on its participant."""

    tenant_id: str
    instance_id: str
    node: str
    phase: Phase
    attempt: int
    idempotency_key: str
    target: Target
    input: Any
    action_output: Any
    """For a compensation: what the action returned (None if it never answered)."""
    timeout: float
    deadline: datetime | None


@dataclass(frozen=True, slots=True, kw_only=True)
class StartChild:
    tenant_id: str
    parent_instance_id: str
    node: str
    child_instance_id: str
    saga: str
    version: str | None
    """A version constraint; the shell resolves it against the registry."""
    input: Any
    timeout: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class CompensateChild:
    tenant_id: str
    parent_instance_id: str
    node: str
    child_instance_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportToParent:
    """A child saga's outcome, to be recorded as the parent node's attempt outcome."""

    tenant_id: str
    parent_instance_id: str
    parent_node: str
    phase: Phase
    succeeded: bool
    output: Any = None
    error: ErrorInfo | None = None


Effect = Dispatch | StartChild | CompensateChild | ReportToParent


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """What ``decide`` concluded: events to append (in order), effects to perform once they
    are durable, the state after the events, and when to look at the instance again."""

    events: tuple[Event, ...]
    effects: tuple[Effect, ...]
    state: SagaState
    wake_at: datetime | None


fast_init(Dispatch, StartChild, CompensateChild, ReportToParent, Decision)
