"""Instance state and ``evolve``: the state is a fold of the history, nothing more.

``evolve`` records facts; it never decides. What to do next is :func:`..decide.decide`'s job.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

from saga_orchestrator.core.events import (
    AlertRaised,
    AttemptAccepted,
    AttemptFailed,
    AttemptHeartbeat,
    AttemptScheduled,
    AttemptSucceeded,
    CancelRequested,
    CompensationFailed,
    CompensationRequested,
    CompensationStarted,
    DeadlineExceeded,
    ErrorInfo,
    Event,
    FailureCause,
    NodeCompleted,
    NodeEntered,
    NodeSkipped,
    OperatorResolved,
    OperatorRetried,
    OperatorSkipped,
    Phase,
    PivotPassed,
    RetryScheduled,
    SagaCancelled,
    SagaCompensated,
    SagaCompleted,
    SagaParked,
    SagaStarted,
    SagaTimedOut,
    SkipReason,
    StepFailed,
)
from saga_orchestrator.core.records import fast_init, replace, replacer
from saga_orchestrator.core.status import InstanceStatus, StepStatus
from saga_orchestrator.errors import InvalidTransition


@dataclass(frozen=True, slots=True, kw_only=True)
class PhaseProgress:
    """Attempts of one phase (action or compensation) of one node."""

    attempts: int = 0
    """Attempts scheduled so far (the last one's number)."""
    budget_start: int = 0
    """Attempts before this count do not use the retry budget (reset by an operator retry)."""
    in_flight: bool = False
    accepted: bool = False
    """The in-flight attempt was accepted for asynchronous completion (HTTP 202)."""
    deadline: datetime | None = None
    retry_due: datetime | None = None
    """Set while waiting on a retry timer: the next attempt may start then."""
    last_error: ErrorInfo | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def attempts_in_budget(self) -> int:
        return self.attempts - self.budget_start


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeState:
    status: StepStatus = StepStatus.PENDING
    action: PhaseProgress = PhaseProgress()
    compensation: PhaseProgress = PhaseProgress()
    input: Any = None
    output: Any = None
    error: ErrorInfo | None = None
    """Why the node failed for good (or why its compensation failed)."""
    case: int | None = None
    child_instance_id: str | None = None
    manual: bool = False
    """Skipped or compensated by an operator."""

    def phase(self, phase: Phase) -> PhaseProgress:
        return self.action if phase is Phase.ACTION else self.compensation


_NO_NODES: Mapping[str, NodeState] = MappingProxyType({})


@dataclass(frozen=True, slots=True, kw_only=True)
class SagaState:
    instance_id: str
    tenant_id: str
    definition_name: str
    definition_version: str
    input: Any
    started_at: datetime
    deadline: datetime | None
    parent_instance_id: str | None = None
    parent_node: str | None = None
    status: InstanceStatus = InstanceStatus.RUNNING
    nodes: Mapping[str, NodeState] = field(default_factory=lambda: _NO_NODES)
    seq: int = 1
    """Number of events folded so far (the last sequence number)."""
    cause: FailureCause | None = None
    """Set once the saga turns back (a step failed for good, cancel, deadline)."""
    cause_node: str | None = None
    deadline_passed: bool = False
    pivot_passed: bool = False
    parked_reason: str | None = None
    parked_node: str | None = None
    output: Any = None
    finished_at: datetime | None = None
    alerts: int = 0
    undo_requested: bool = False
    """A completed child saga was asked by its parent to compensate as a whole."""

    def node(self, name: str) -> NodeState:
        return self.nodes.get(name) or _PENDING

    def in_flight(self) -> list[str]:
        return [
            name
            for name, node in self.nodes.items()
            if node.action.in_flight or node.compensation.in_flight
        ]


fast_init(PhaseProgress, NodeState, SagaState)

# ``replace`` for the records copied on every event, bound once: the copies of the hot
# transitions below skip ``replace``'s look-up of the class and its re-packing of arguments.
_copy_state = replacer(SagaState)
_copy_node = replacer(NodeState)
_copy_progress = replacer(PhaseProgress)

_PENDING = NodeState()
PENDING_NODE = _PENDING
"""What ``SagaState.node`` gives for a node the history has not touched yet."""


def initial_state(event: SagaStarted) -> SagaState:
    return SagaState(
        instance_id=event.instance_id,
        tenant_id=event.tenant_id,
        definition_name=event.definition_name,
        definition_version=event.definition_version,
        input=event.input,
        started_at=event.at,
        deadline=event.deadline,
        parent_instance_id=event.parent_instance_id,
        parent_node=event.parent_node,
    )


def fold(events: Iterable[Event]) -> SagaState:
    """The state after ``events``; the first must be ``SagaStarted``."""
    iterator = iter(events)
    first = next(iterator, None)
    if not isinstance(first, SagaStarted):
        raise InvalidTransition("a history starts with SagaStarted")
    state = initial_state(first)
    for event in iterator:
        state = evolve(state, event)
    return state


def evolve(state: SagaState, event: Event) -> SagaState:
    """Apply one event. Unknown event types are a programming error, never silently ignored."""
    apply = _APPLY.get(type(event))
    if apply is None:
        raise InvalidTransition(f"cannot apply {type(event).__name__} to a saga's state")
    applied: SagaState = apply(state, event)
    if applied is state:
        return _copy_state(state, seq=state.seq + 1)
    # ``applied`` was built by this call and is seen by no one yet: stamping its sequence in
    # place spares a second copy of the whole state on every event (the hot path).
    object.__setattr__(applied, "seq", state.seq + 1)
    return applied


def _with_node(state: SagaState, name: str, node: NodeState) -> SagaState:
    nodes = dict(state.nodes)
    nodes[name] = node
    return _copy_state(state, nodes=nodes)


def _with_phase(
    state: SagaState,
    name: str,
    node: NodeState,
    phase: Phase,
    progress: PhaseProgress,
    **node_changes: Any,
) -> SagaState:
    """``state`` with ``node`` (as it was) carrying ``progress`` for ``phase``, and changed."""
    if phase is Phase.ACTION:
        return _with_node(state, name, _copy_node(node, action=progress, **node_changes))
    return _with_node(state, name, _copy_node(node, compensation=progress, **node_changes))


def _node_skipped(state: SagaState, event: NodeSkipped) -> SagaState:
    node = replace(
        state.node(event.node),
        status=StepStatus.SKIPPED,
        manual=event.reason is SkipReason.MANUAL,
    )
    return _with_node(state, event.node, node)


def _node_entered(state: SagaState, event: NodeEntered) -> SagaState:
    node = replace(state.node(event.node), status=StepStatus.RUNNING, case=event.case)
    return _with_node(state, event.node, node)


def _node_completed(state: SagaState, event: NodeCompleted) -> SagaState:
    return _with_node(
        state, event.node, replace(state.node(event.node), status=StepStatus.SUCCEEDED)
    )


def _attempt_scheduled(state: SagaState, event: AttemptScheduled) -> SagaState:
    node = state.node(event.node)
    before = node.phase(event.phase)
    progress = _copy_progress(
        before,
        attempts=event.attempt,
        in_flight=True,
        accepted=False,
        deadline=event.deadline,
        retry_due=None,
        started_at=before.started_at or event.at,
    )
    child = node.child_instance_id if event.child_instance_id is None else event.child_instance_id
    # Copied here rather than through _with_phase: its keyword re-packing costs more than the
    # copy itself on the two events of every step.
    if event.phase is Phase.ACTION:
        copied = _copy_node(
            node,
            action=progress,
            status=StepStatus.RUNNING,
            input=event.input,
            child_instance_id=child,
        )
    else:
        copied = _copy_node(
            node, compensation=progress, status=StepStatus.COMPENSATING, child_instance_id=child
        )
    return _with_node(state, event.node, copied)


def _attempt_succeeded(state: SagaState, event: AttemptSucceeded) -> SagaState:
    node = state.node(event.node)
    progress = _copy_progress(
        node.phase(event.phase),
        in_flight=False,
        accepted=False,
        deadline=None,
        finished_at=event.at,
    )
    if event.phase is Phase.ACTION:
        copied = _copy_node(node, action=progress, status=StepStatus.SUCCEEDED, output=event.output)
    else:
        copied = _copy_node(node, compensation=progress, status=StepStatus.COMPENSATED)
    return _with_node(state, event.node, copied)


def _attempt_failed(state: SagaState, event: AttemptFailed) -> SagaState:
    node = state.node(event.node)
    before = node.phase(event.phase)
    # An attempt that never reached the participant (its circuit breaker was open) leaves the
    # retry budget as it was: the budget starts one attempt later.
    budget_start = before.budget_start + (0 if event.error.budgeted else 1)
    progress = _copy_progress(
        before,
        in_flight=False,
        accepted=False,
        deadline=None,
        last_error=event.error,
        budget_start=budget_start,
    )
    return _with_phase(state, event.node, node, event.phase, progress)


def _attempt_accepted(state: SagaState, event: AttemptAccepted) -> SagaState:
    node = state.node(event.node)
    progress = replace(node.phase(event.phase), accepted=True)
    return _with_phase(state, event.node, node, event.phase, progress)


def _attempt_heartbeat(state: SagaState, event: AttemptHeartbeat) -> SagaState:
    node = state.node(event.node)
    progress = replace(node.phase(event.phase), deadline=event.deadline)
    return _with_phase(state, event.node, node, event.phase, progress)


def _retry_scheduled(state: SagaState, event: RetryScheduled) -> SagaState:
    node = state.node(event.node)
    progress = replace(node.phase(event.phase), retry_due=event.due)
    return _with_phase(state, event.node, node, event.phase, progress)


def _step_failed(state: SagaState, event: StepFailed) -> SagaState:
    node = state.node(event.node)
    action = replace(node.action, in_flight=False, retry_due=None, finished_at=event.at)
    state = _with_node(
        state, event.node, replace(node, status=StepStatus.FAILED, action=action, error=event.error)
    )
    if state.cause is None:
        return replace(state, cause=FailureCause.STEP_FAILED, cause_node=event.node)
    return state


def _cancel_requested(state: SagaState, event: CancelRequested) -> SagaState:
    if state.cause is not None:
        return state
    return replace(state, cause=FailureCause.CANCELLED)


def _deadline_exceeded(state: SagaState, event: DeadlineExceeded) -> SagaState:
    if state.cause is not None:
        return replace(state, deadline_passed=True)
    return replace(state, deadline_passed=True, cause=FailureCause.DEADLINE)


def _compensation_started(state: SagaState, event: CompensationStarted) -> SagaState:
    return replace(state, status=InstanceStatus.COMPENSATING, cause=event.cause)


def _compensation_requested(state: SagaState, event: CompensationRequested) -> SagaState:
    return replace(
        state,
        status=InstanceStatus.COMPENSATING,
        cause=FailureCause.STEP_FAILED,
        finished_at=None,
        undo_requested=True,
    )


def _compensation_failed(state: SagaState, event: CompensationFailed) -> SagaState:
    node = state.node(event.node)
    progress = replace(node.compensation, in_flight=False, retry_due=None, finished_at=event.at)
    node = replace(
        node, status=StepStatus.COMPENSATION_FAILED, compensation=progress, error=event.error
    )
    return _with_node(state, event.node, node)


def _alert_raised(state: SagaState, event: AlertRaised) -> SagaState:
    return replace(state, alerts=state.alerts + 1)


def _saga_parked(state: SagaState, event: SagaParked) -> SagaState:
    return replace(
        state, status=InstanceStatus.FAILED, parked_reason=event.reason, parked_node=event.node
    )


def _finished(status: InstanceStatus) -> Any:
    def apply(state: SagaState, event: Event) -> SagaState:
        output = event.output if isinstance(event, SagaCompleted) else state.output
        return replace(state, status=status, finished_at=event.at, output=output)

    return apply


def _operator_retried(state: SagaState, event: OperatorRetried) -> SagaState:
    """Give the parked node a fresh retry budget and resume where the saga stopped."""
    name = state.parked_node
    resumed = replace(state, parked_reason=None, parked_node=None)
    if state.pivot_passed or state.cause is None:
        resumed = replace(resumed, status=InstanceStatus.RUNNING, cause=None, deadline=None)
        if name is not None:
            node = state.node(name)
            action = replace(node.action, budget_start=node.action.attempts, last_error=None)
            resumed = _with_node(
                resumed, name, replace(node, status=StepStatus.RUNNING, action=action, error=None)
            )
        return resumed
    resumed = replace(resumed, status=InstanceStatus.COMPENSATING)
    if name is not None:
        node = state.node(name)
        progress = replace(
            node.compensation,
            budget_start=node.compensation.attempts,
            last_error=None,
            retry_due=None,
        )
        resumed = _with_node(
            resumed, name, replace(node, status=StepStatus.COMPENSATING, compensation=progress)
        )
    return resumed


def _operator_skipped(state: SagaState, event: OperatorSkipped) -> SagaState:
    node = state.node(event.node)
    resumed = replace(state, parked_reason=None, parked_node=None)
    if state.status is InstanceStatus.FAILED and state.cause is not None and not state.pivot_passed:
        node = replace(node, status=StepStatus.COMPENSATED, manual=True)
        resumed = replace(resumed, status=InstanceStatus.COMPENSATING)
    else:
        node = replace(node, status=StepStatus.SKIPPED, manual=True, error=None)
        resumed = replace(resumed, status=InstanceStatus.RUNNING, cause=None, deadline=None)
    return _with_node(resumed, event.node, node)


def _operator_resolved(state: SagaState, event: OperatorResolved) -> SagaState:
    final = (
        InstanceStatus.COMPLETED
        if state.pivot_passed or state.cause is None
        else InstanceStatus.COMPENSATED
    )
    return replace(state, status=final, finished_at=event.at, parked_reason=None, parked_node=None)


def _pivot_passed(state: SagaState, event: PivotPassed) -> SagaState:
    return replace(state, pivot_passed=True)


_APPLY: dict[type[Event], Any] = {
    NodeSkipped: _node_skipped,
    NodeEntered: _node_entered,
    NodeCompleted: _node_completed,
    AttemptScheduled: _attempt_scheduled,
    AttemptSucceeded: _attempt_succeeded,
    AttemptFailed: _attempt_failed,
    AttemptAccepted: _attempt_accepted,
    AttemptHeartbeat: _attempt_heartbeat,
    RetryScheduled: _retry_scheduled,
    StepFailed: _step_failed,
    PivotPassed: _pivot_passed,
    CancelRequested: _cancel_requested,
    DeadlineExceeded: _deadline_exceeded,
    CompensationStarted: _compensation_started,
    CompensationRequested: _compensation_requested,
    CompensationFailed: _compensation_failed,
    AlertRaised: _alert_raised,
    SagaParked: _saga_parked,
    SagaCompleted: _finished(InstanceStatus.COMPLETED),
    SagaCompensated: _finished(InstanceStatus.COMPENSATED),
    SagaCancelled: _finished(InstanceStatus.CANCELLED),
    SagaTimedOut: _finished(InstanceStatus.TIMED_OUT),
    OperatorRetried: _operator_retried,
    OperatorSkipped: _operator_skipped,
    OperatorResolved: _operator_resolved,
}
