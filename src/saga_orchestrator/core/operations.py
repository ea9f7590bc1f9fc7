"""Inputs from outside the decider, checked against the rules before they become events:
starting, attempt outcomes, cancel, operator actions and crash recovery. Pure."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from saga_orchestrator.core.commands import CompensateChild, Effect, StartChild
from saga_orchestrator.core.decide import decide
from saga_orchestrator.core.events import (
    AttemptAccepted,
    AttemptFailed,
    AttemptHeartbeat,
    AttemptSucceeded,
    CancelRequested,
    CompensationRequested,
    ErrorInfo,
    Event,
    OperatorResolved,
    OperatorRetried,
    OperatorSkipped,
    Phase,
    SagaStarted,
)
from saga_orchestrator.core.state import SagaState
from saga_orchestrator.core.status import InstanceStatus
from saga_orchestrator.definition.compiler import CompiledDefinition, NodeType
from saga_orchestrator.errors import InvalidTransition, NotFound


def start_event(
    definition: CompiledDefinition,
    *,
    tenant_id: str,
    instance_id: str,
    context: Any,
    now: datetime,
    timeout: float | None = None,
    parent_instance_id: str | None = None,
    parent_node: str | None = None,
) -> SagaStarted:
    """The first event of an instance; ``timeout`` overrides the definition's deadline."""
    seconds = timeout or definition.definition.timeout
    return SagaStarted(
        at=now,
        tenant_id=tenant_id,
        instance_id=instance_id,
        definition_name=definition.name,
        definition_version=definition.version,
        input=context,
        deadline=now + timedelta(seconds=seconds) if seconds else None,
        parent_instance_id=parent_instance_id,
        parent_node=parent_node,
    )


def is_current_attempt(state: SagaState, node: str, phase: Phase, attempt: int) -> bool:
    """Late outcomes (after a timeout was recorded, or a duplicate reply) are dropped."""
    if node not in state.nodes:
        return False
    progress = state.node(node).phase(phase)
    return progress.in_flight and progress.attempts == attempt


def outcome_events(
    state: SagaState,
    *,
    node: str,
    phase: Phase,
    attempt: int,
    now: datetime,
    output: Any = None,
    error: ErrorInfo | None = None,
) -> list[Event]:
    """The event recording an attempt's outcome, or nothing if the attempt is not current."""
    if not is_current_attempt(state, node, phase, attempt):
        return []
    if error is None:
        return [AttemptSucceeded(at=now, node=node, phase=phase, attempt=attempt, output=output)]
    return [AttemptFailed(at=now, node=node, phase=phase, attempt=attempt, error=error)]


def accepted_events(
    state: SagaState, *, node: str, phase: Phase, attempt: int, now: datetime
) -> list[Event]:
    """The participant will complete the attempt by callback (HTTP 202)."""
    if not is_current_attempt(state, node, phase, attempt):
        return []
    if state.node(node).phase(phase).accepted:
        return []
    return [AttemptAccepted(at=now, node=node, phase=phase, attempt=attempt)]


def heartbeat_events(
    state: SagaState, *, node: str, phase: Phase, attempt: int, now: datetime, extend_by: float
) -> list[Event]:
    """A participant working on an accepted attempt asks for more time: the deadline moves to
    ``now + extend_by`` (never earlier than it was)."""
    if not is_current_attempt(state, node, phase, attempt):
        raise InvalidTransition("that attempt is no longer in flight")
    current = state.node(node).phase(phase).deadline
    deadline = now + timedelta(seconds=extend_by)
    if current is not None and deadline <= current:
        return []
    return [AttemptHeartbeat(at=now, node=node, phase=phase, attempt=attempt, deadline=deadline)]


def request_cancel(state: SagaState, reason: str, now: datetime) -> list[Event]:
    if state.status is not InstanceStatus.RUNNING:
        raise InvalidTransition(f"cannot cancel a saga that is {state.status.value}")
    if state.pivot_passed:
        raise InvalidTransition("cannot cancel: the saga has passed its pivot")
    if state.cause is not None:
        raise InvalidTransition("the saga is already turning back")
    return [CancelRequested(at=now, reason=reason)]


def request_undo(state: SagaState, reason: str, now: datetime) -> list[Event]:
    """A parent compensates a completed child saga as a whole."""
    if state.status is not InstanceStatus.COMPLETED:
        raise InvalidTransition(f"only a completed saga can be undone, not {state.status.value}")
    if state.pivot_passed:
        raise InvalidTransition("cannot undo: the saga has passed its pivot")
    return [CompensationRequested(at=now, reason=reason)]


def _require_parked(state: SagaState) -> None:
    if state.status is not InstanceStatus.FAILED:
        raise InvalidTransition(
            f"operator actions apply to a failed (parked) saga, not a {state.status.value} one"
        )


def operator_retry(state: SagaState, reason: str, actor: str, now: datetime) -> list[Event]:
    _require_parked(state)
    return [OperatorRetried(at=now, reason=reason, actor=actor)]


def operator_skip(
    definition: CompiledDefinition,
    state: SagaState,
    *,
    node: str,
    reason: str,
    actor: str,
    now: datetime,
) -> list[Event]:
    _require_parked(state)
    if node not in definition.nodes:
        raise NotFound(f"no node {node!r} in {definition.name} {definition.version}")
    if node != state.parked_node:
        raise InvalidTransition(
            f"only the node the saga is parked on ({state.parked_node!r}) can be skipped"
        )
    return [OperatorSkipped(at=now, node=node, reason=reason, actor=actor)]


def operator_resolve(state: SagaState, reason: str, actor: str, now: datetime) -> list[Event]:
    _require_parked(state)
    return [OperatorResolved(at=now, reason=reason, actor=actor)]


def recover(
    definition: CompiledDefinition, state: SagaState, now: datetime
) -> tuple[list[Event], list[Effect]]:
    """After a crash: attempts in flight on a lost process have an unknown outcome; child
    sagas live on in the store, so their start (or undo) is simply issued again. An attempt a
    participant accepted (HTTP 202) is not on the lost process: it keeps waiting for its
    callback (its token stays valid) until its durable deadline."""
    events: list[Event] = []
    effects: list[Effect] = []
    for name, node in state.nodes.items():
        spec = definition.nodes[name]
        for phase in (Phase.ACTION, Phase.COMPENSATION):
            progress = node.phase(phase)
            if not progress.in_flight or progress.accepted:
                continue
            if spec.type is NodeType.SAGA:
                effects.append(_reissue_child(definition, state, name, phase))
                continue
            error = ErrorInfo(
                type="Interrupted",
                message="the orchestrator stopped during the attempt",
                retryable=True,
                unknown=True,
            )
            events.append(
                AttemptFailed(
                    at=now, node=name, phase=phase, attempt=progress.attempts, error=error
                )
            )
    return events, effects


def _reissue_child(
    definition: CompiledDefinition, state: SagaState, node: str, phase: Phase
) -> Effect:
    child_id = state.node(node).child_instance_id
    assert child_id is not None
    if phase is Phase.COMPENSATION:
        return CompensateChild(
            tenant_id=state.tenant_id,
            parent_instance_id=state.instance_id,
            node=node,
            child_instance_id=child_id,
        )
    spec = definition.nodes[node]
    return StartChild(
        tenant_id=state.tenant_id,
        parent_instance_id=state.instance_id,
        node=node,
        child_instance_id=child_id,
        saga=getattr(spec.model, "saga", ""),
        version=getattr(spec.model, "version", None),
        input=state.node(node).input,
        timeout=spec.timeout or None,
    )


__all__ = [
    "decide",
    "is_current_attempt",
    "operator_resolve",
    "operator_retry",
    "operator_skip",
    "outcome_events",
    "recover",
    "request_cancel",
    "request_undo",
    "start_event",
]
