"""Effects follow from events: each ``AttemptScheduled`` becomes a dispatch (or a child start
or undo), and a child's terminal event becomes a report to its parent. Deriving them from the
emitted events keeps every effect justified by a durable fact."""

from __future__ import annotations

from typing import Any

from saga_orchestrator.core.commands import (
    CompensateChild,
    Dispatch,
    Effect,
    ReportToParent,
    StartChild,
)
from saga_orchestrator.core.events import (
    AttemptScheduled,
    ErrorInfo,
    Event,
    Phase,
    SagaCancelled,
    SagaCompensated,
    SagaCompleted,
    SagaParked,
    SagaTimedOut,
)
from saga_orchestrator.core.state import SagaState
from saga_orchestrator.core.status import InstanceStatus
from saga_orchestrator.definition.compiler import CompiledDefinition, NodeType


def effects_of(
    definition: CompiledDefinition, state: SagaState, events: list[Event]
) -> list[Effect]:
    effects: list[Effect] = []
    for event in events:
        if isinstance(event, AttemptScheduled):
            effects.append(_effect_of_attempt(definition, state, event))
        elif state.parent_instance_id is not None:
            report = _report_to_parent(state, event)
            if report is not None:
                effects.append(report)
    return effects


def _effect_of_attempt(
    definition: CompiledDefinition, state: SagaState, event: AttemptScheduled
) -> Effect:
    spec = definition.nodes[event.node]
    if spec.type is NodeType.SAGA:
        assert event.child_instance_id is not None
        if event.phase is Phase.COMPENSATION:
            return CompensateChild(
                tenant_id=state.tenant_id,
                parent_instance_id=state.instance_id,
                node=event.node,
                child_instance_id=event.child_instance_id,
            )
        model = spec.model
        return StartChild(
            tenant_id=state.tenant_id,
            parent_instance_id=state.instance_id,
            node=event.node,
            child_instance_id=event.child_instance_id,
            saga=getattr(model, "saga", ""),
            version=getattr(model, "version", None),
            input=event.input,
            timeout=spec.timeout or None,
        )
    target = spec.action if event.phase is Phase.ACTION else spec.compensation
    assert target is not None
    return Dispatch(
        tenant_id=state.tenant_id,
        instance_id=state.instance_id,
        node=event.node,
        phase=event.phase,
        attempt=event.attempt,
        idempotency_key=event.idempotency_key,
        target=target,
        input=event.input,
        action_output=state.node(event.node).output if event.phase is Phase.COMPENSATION else None,
        timeout=spec.timeout if event.phase is Phase.ACTION else spec.compensation_timeout,
        deadline=event.deadline,
    )


_ENDINGS = (SagaCompleted, SagaCompensated, SagaCancelled, SagaTimedOut, SagaParked)


def _report_to_parent(state: SagaState, event: Event) -> ReportToParent | None:
    return report_for(state) if isinstance(event, _ENDINGS) else None


def report_for(state: SagaState) -> ReportToParent | None:
    """What a settled child tells its parent; None while it runs (or if it has no parent).

    A parked child fails its parent's step (an operator must finish the child by hand): the
    parent never waits forever on a child that waits for an operator.
    """
    if state.parent_instance_id is None or not state.status.is_settled:
        return None
    status = state.status
    if state.undo_requested:
        if status is InstanceStatus.COMPENSATED:
            return _report(state, Phase.COMPENSATION, succeeded=True)
        reason = state.parked_reason or f"child saga ended {status.value}"
        error = ErrorInfo(type="ChildCompensationFailed", message=reason, retryable=False)
        return _report(state, Phase.COMPENSATION, succeeded=False, error=error)
    if status is InstanceStatus.COMPLETED:
        return _report(state, Phase.ACTION, succeeded=True, output=state.output)
    if status is InstanceStatus.FAILED:
        message = f"child saga parked: {state.parked_reason}"
        error = ErrorInfo(type="ChildSagaParked", message=message, retryable=False)
    else:
        message = f"child saga ended {status.value}"
        error = ErrorInfo(type="ChildSagaFailed", message=message, retryable=False)
    return _report(state, Phase.ACTION, succeeded=False, error=error)


def _report(
    state: SagaState,
    phase: Phase,
    *,
    succeeded: bool,
    output: Any = None,
    error: ErrorInfo | None = None,
) -> ReportToParent:
    assert state.parent_instance_id is not None
    assert state.parent_node is not None
    return ReportToParent(
        tenant_id=state.tenant_id,
        parent_instance_id=state.parent_instance_id,
        parent_node=state.parent_node,
        phase=phase,
        succeeded=succeeded,
        output=output,
        error=error,
    )
