"""``decide(definition, state, now) -> Decision``: the saga's rules (semantics §3), pure.

The decider looks at the state, emits the events that the rules call for, folds them in and
looks again, until nothing more follows (a fixpoint). Effects (dispatches, child starts) are
derived from the emitted events, so every effect is justified by a durable fact.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from saga_orchestrator.core.commands import Decision
from saga_orchestrator.core.effects import effects_of
from saga_orchestrator.core.events import (
    AlertRaised,
    AttemptFailed,
    AttemptScheduled,
    CompensationFailed,
    CompensationStarted,
    DeadlineExceeded,
    ErrorInfo,
    Event,
    FailureCause,
    NodeCompleted,
    NodeEntered,
    NodeSkipped,
    Phase,
    PivotPassed,
    RetryScheduled,
    SagaCancelled,
    SagaCompensated,
    SagaCompleted,
    SagaParked,
    SagaTimedOut,
    SkipReason,
    StepFailed,
)
from saga_orchestrator.core.state import (
    PENDING_NODE,
    NodeState,
    PhaseProgress,
    SagaState,
    evolve,
)
from saga_orchestrator.core.status import InstanceStatus, StepStatus
from saga_orchestrator.definition.compiler import CompiledDefinition, CompiledNode, NodeType
from saga_orchestrator.definition.models import CompensateOnFailure, OnCompensationFailure, StepKind
from saga_orchestrator.errors import ExpressionError

MAX_ROUNDS = 10_000
"""Guards the fixpoint loop against a rule that would emit events forever."""

_CHILD_NAMESPACE = uuid.UUID("6f1c1c4e-5b7a-4c53-9d0e-2a9a4c1f7e11")


def idempotency_key(instance_id: str, node: str, phase: Phase) -> str:
    """Stable across retries and crashes: ``{instance_id}:{node}:{action|compensation}``."""
    return f"{instance_id}:{node}:{phase.value}"


def child_instance_id(instance_id: str, node: str) -> str:
    """Deterministic, so re-issuing a child start after a crash finds the same child."""
    return str(uuid.uuid5(_CHILD_NAMESPACE, f"{instance_id}:{node}"))


def decide(definition: CompiledDefinition, state: SagaState, now: datetime) -> Decision:
    emitted: list[Event] = []
    for _ in range(MAX_ROUNDS):
        events = _next_events(definition, state, now)
        if not events:
            break
        for event in events:
            state = evolve(state, event)
        emitted.extend(events)
    else:  # pragma: no cover - a rule bug, never a user error
        raise RuntimeError("decide did not reach a fixpoint")
    effects = tuple(effects_of(definition, state, emitted))
    return Decision(events=tuple(emitted), effects=effects, state=state, wake_at=wake_at(state))


def wake_at(state: SagaState) -> datetime | None:
    """The earliest moment at which time alone changes what ``decide`` concludes."""
    if state.status.is_settled:
        return None
    moments: list[datetime] = []
    if state.deadline is not None and not state.deadline_passed:
        moments.append(state.deadline)
    for node in state.nodes.values():
        # Both phases spelled out (no helper): this runs for every node of every decision.
        action = node.action
        if action.in_flight:
            if action.deadline is not None:
                moments.append(action.deadline)
        elif action.retry_due is not None:
            moments.append(action.retry_due)
        undo = node.compensation
        if undo.in_flight:
            if undo.deadline is not None:
                moments.append(undo.deadline)
        elif undo.retry_due is not None:
            moments.append(undo.retry_due)
    return min(moments, default=None)


def _next_events(definition: CompiledDefinition, state: SagaState, now: datetime) -> list[Event]:
    if state.status.is_settled:
        return []
    events = _timeouts(state, now)
    if events:
        return events
    if state.status is InstanceStatus.COMPENSATING:
        return _Compensator(definition, state, now).run()
    if not state.pivot_passed:
        pivot = _succeeded_pivot(definition, state)
        if pivot is not None:
            return [PivotPassed(at=now, node=pivot)]
    if state.deadline is not None and not state.deadline_passed and now >= state.deadline:
        return [DeadlineExceeded(at=now, deadline=state.deadline)]
    if state.cause is not None:
        return _turn_back(definition, state, now)
    return _Forward(definition, state, now).run()


def _timeouts(state: SagaState, now: datetime) -> list[Event]:
    events: list[Event] = []
    for name, node in state.nodes.items():
        # Spelled out rather than a helper per phase: this runs for every node on every
        # round of every decision.
        action = node.action
        if action.in_flight and action.deadline is not None and now >= action.deadline:
            events.append(_timed_out(name, Phase.ACTION, action.attempts, now))
        undo = node.compensation
        if undo.in_flight and undo.deadline is not None and now >= undo.deadline:
            events.append(_timed_out(name, Phase.COMPENSATION, undo.attempts, now))
    return events


def _timed_out(name: str, phase: Phase, attempt: int, now: datetime) -> AttemptFailed:
    error = ErrorInfo(
        type="Timeout", message=f"attempt {attempt} timed out", retryable=True, unknown=True
    )
    return AttemptFailed(at=now, node=name, phase=phase, attempt=attempt, error=error)


def _succeeded_pivot(definition: CompiledDefinition, state: SagaState) -> str | None:
    if not definition.has_pivot:
        return None
    for name, node in state.nodes.items():
        if node.status is StepStatus.SUCCEEDED and definition.nodes[name].kind is StepKind.PIVOT:
            return name
    return None


def _turn_back(definition: CompiledDefinition, state: SagaState, now: datetime) -> list[Event]:
    """The saga failed, was cancelled or passed its deadline: once nothing is in flight,
    compensate (or park, past the pivot)."""
    if state.in_flight():
        return []
    if state.pivot_passed:
        reason = {
            FailureCause.STEP_FAILED: "a step failed after the pivot",
            FailureCause.DEADLINE: "the saga deadline passed after the pivot",
            FailureCause.CANCELLED: "cancel requested after the pivot",
        }[state.cause or FailureCause.STEP_FAILED]
        return [SagaParked(at=now, node=state.cause_node, reason=reason)]
    events: list[Event] = []
    for name, node in state.nodes.items():
        waiting = node.status is StepStatus.RUNNING and definition.nodes[name].type in (
            NodeType.STEP,
            NodeType.SAGA,
        )
        if waiting:
            error = node.action.last_error or ErrorInfo(
                type="Abandoned", message="the saga turned back", retryable=False
            )
            events.append(StepFailed(at=now, node=name, error=error))
    events.append(CompensationStarted(at=now, cause=state.cause or FailureCause.STEP_FAILED))
    return events


_DONE = frozenset({StepStatus.SUCCEEDED, StepStatus.SKIPPED})
"""A sequence moves past nodes in these states."""


class _Forward:
    """Walks the definition's tree and starts or advances whatever may run now."""

    __slots__ = ("definition", "events", "now", "state")

    def __init__(self, definition: CompiledDefinition, state: SagaState, now: datetime) -> None:
        self.definition = definition
        self.state = state
        self.now = now
        self.events: list[Event] = []

    def run(self) -> list[Event]:
        if self.sequence(self.definition.root) and not self.events:
            nodes = self.state.nodes.items()
            output = {name: node.output for name, node in nodes if node.output is not None}
            return [SagaCompleted(at=self.now, output=output)]
        return self.events

    def sequence(self, names: tuple[str, ...]) -> bool:
        """Advance a sequence; True when every node in it has finished."""
        nodes = self.state.nodes
        for name in names:
            node = nodes.get(name) or PENDING_NODE  # SagaState.node, inlined: a hot loop
            status = node.status
            if status in _DONE:
                continue
            if status is StepStatus.PENDING:
                self.enter(self.definition.nodes[name])
            elif status is StepStatus.RUNNING:
                self.progress(self.definition.nodes[name], node)
            return False
        return True

    def enter(self, spec: CompiledNode) -> None:
        needs_data = spec.when is not None or spec.input is not None or bool(spec.cases)
        data = activation(self.definition, self.state) if needs_data else {}
        try:
            if spec.when is not None and not spec.when.evaluate_bool(data):
                self.events.append(
                    NodeSkipped(at=self.now, node=spec.name, reason=SkipReason.CONDITION_FALSE)
                )
                return
            if spec.type is NodeType.PARALLEL:
                self.events.append(NodeEntered(at=self.now, node=spec.name))
            elif spec.type is NodeType.SWITCH:
                self.events.append(
                    NodeEntered(at=self.now, node=spec.name, case=_route(spec, data))
                )
            else:
                step_input = self.state.input if spec.input is None else spec.input.render(data)
                self.events.append(self.schedule(spec, 1, step_input))
        except ExpressionError as error:
            failure = ErrorInfo(type="ExpressionError", message=str(error), retryable=False)
            self.events.append(StepFailed(at=self.now, node=spec.name, error=failure))

    def progress(self, spec: CompiledNode, node: NodeState) -> None:
        if spec.type is NodeType.PARALLEL:
            finished = [self.sequence(branch) for branch in spec.branches]
            if all(finished) and not self.events:
                self.events.append(NodeCompleted(at=self.now, node=spec.name))
        elif spec.type is NodeType.SWITCH:
            assert node.case is not None
            if self.sequence(spec.cases[node.case].nodes) and not self.events:
                self.events.append(NodeCompleted(at=self.now, node=spec.name))
        elif not node.action.in_flight:  # in flight: nothing to do before its outcome
            self.events.extend(
                _next_attempt(
                    spec,
                    node,
                    phase=Phase.ACTION,
                    now=self.now,
                    state=self.state,
                    schedule=self.schedule,
                )
            )

    def schedule(self, spec: CompiledNode, attempt: int, step_input: Any) -> AttemptScheduled:
        is_child = spec.type is NodeType.SAGA
        return AttemptScheduled(
            at=self.now,
            node=spec.name,
            phase=Phase.ACTION,
            attempt=attempt,
            input=step_input,
            deadline=None if is_child else self.now + timedelta(seconds=spec.timeout),
            idempotency_key=idempotency_key(self.state.instance_id, spec.name, Phase.ACTION),
            child_instance_id=child_instance_id(self.state.instance_id, spec.name)
            if is_child
            else None,
        )


def _route(spec: CompiledNode, activation: dict[str, Any]) -> int:
    for index, case in enumerate(spec.cases):
        if case.when is None or case.when.evaluate_bool(activation):
            return index
    return len(spec.cases) - 1


def _next_attempt(
    spec: CompiledNode,
    node: NodeState,
    *,
    phase: Phase,
    now: datetime,
    state: SagaState,
    schedule: Any,
) -> list[Event]:
    """Progress of a step whose phase is under way: wait, retry, or give up."""
    progress = node.phase(phase)
    if progress.in_flight:
        return []
    if progress.retry_due is not None:
        if now < progress.retry_due:
            return []
        return [schedule(spec, progress.attempts + 1, node.input)]
    error = progress.last_error
    if error is None:
        return [schedule(spec, progress.attempts + 1, node.input)]
    policy = spec.retry if phase is Phase.ACTION else spec.compensation_retry
    if _may_retry(policy, progress, error):
        due = now + timedelta(seconds=_retry_delay(policy, progress, error))
        return [
            RetryScheduled(
                at=now, node=spec.name, phase=phase, attempt=progress.attempts + 1, due=due
            )
        ]
    if phase is Phase.ACTION:
        return [StepFailed(at=now, node=spec.name, error=error)]
    return _compensation_exhausted(spec, state, now, error)


def _retry_delay(policy: Any, progress: PhaseProgress, error: ErrorInfo) -> float:
    """The policy's backoff, but never sooner than the participant asked (``Retry-After``); an
    attempt that never reached the participant waits only for what it was told."""
    floor = error.retry_after or 0.0
    if not error.budgeted:
        return max(floor, 0.001)
    delay: float = policy.delay_after(progress.attempts_in_budget)
    return max(delay, floor)


def _may_retry(policy: Any, progress: PhaseProgress, error: ErrorInfo) -> bool:
    return (
        error.retryable
        and error.type not in policy.non_retryable_errors
        and policy.allows_another(progress.attempts_in_budget)
    )


def _compensation_exhausted(
    spec: CompiledNode, state: SagaState, now: datetime, error: ErrorInfo
) -> list[Event]:
    if spec.on_compensation_failure is OnCompensationFailure.SKIP:
        return [
            CompensationFailed(at=now, node=spec.name, error=error),
            AlertRaised(
                at=now,
                node=spec.name,
                message=f"compensation of {spec.name!r} failed and was skipped: {error.message}",
            ),
        ]
    if state.in_flight():
        return []  # park once the concurrent compensations have settled
    return [
        SagaParked(
            at=now,
            node=spec.name,
            reason=f"compensation of {spec.name!r} failed: {error.message}",
        )
    ]


class _Compensator:
    """Undoes what succeeded, in the reverse of the graph actually taken."""

    __slots__ = ("definition", "now", "state")

    def __init__(self, definition: CompiledDefinition, state: SagaState, now: datetime) -> None:
        self.definition = definition
        self.state = state
        self.now = now

    def run(self) -> list[Event]:
        owed = [name for name in self.state.nodes if self.owes(name)]
        events: list[Event] = []
        for name in owed:
            node = self.state.node(name)
            if node.status in (StepStatus.COMPENSATED, StepStatus.COMPENSATION_FAILED):
                continue
            spec = self.definition.nodes[name]
            if node.status is StepStatus.COMPENSATING:
                events.extend(
                    _next_attempt(
                        spec,
                        node,
                        phase=Phase.COMPENSATION,
                        now=self.now,
                        state=self.state,
                        schedule=self.schedule,
                    )
                )
            elif all(self.finished(dependent) for dependent in spec.dependents):
                events.append(self.schedule(spec, 1, node.input))
        progress = [event for event in events if not isinstance(event, SagaParked)]
        if progress:
            return progress  # park once the independent compensations have settled
        if events or any(not self.finished(name) for name in owed):
            return events
        return [self.final_event()]

    def owes(self, name: str) -> bool:
        """Whether the node's effect must be undone (or already is being, or was)."""
        spec = self.definition.nodes[name]
        if not spec.has_compensation:
            return False
        node = self.state.node(name)
        if node.status is StepStatus.FAILED:
            policy = spec.compensate_on_failure
            unknown = node.error is not None and node.error.unknown
            return policy is CompensateOnFailure.ALWAYS or (
                policy is CompensateOnFailure.UNKNOWN and unknown
            )
        return node.status in (
            StepStatus.SUCCEEDED,
            StepStatus.COMPENSATING,
            StepStatus.COMPENSATED,
            StepStatus.COMPENSATION_FAILED,
        )

    def finished(self, name: str) -> bool:
        if not self.owes(name):
            return True
        return self.state.node(name).status in (
            StepStatus.COMPENSATED,
            StepStatus.COMPENSATION_FAILED,
        )

    def schedule(self, spec: CompiledNode, attempt: int, step_input: Any) -> AttemptScheduled:
        is_child = spec.type is NodeType.SAGA
        node = self.state.node(spec.name)
        deadline = None if is_child else self.now + timedelta(seconds=spec.compensation_timeout)
        return AttemptScheduled(
            at=self.now,
            node=spec.name,
            phase=Phase.COMPENSATION,
            attempt=attempt,
            input=step_input,
            deadline=deadline,
            idempotency_key=idempotency_key(self.state.instance_id, spec.name, Phase.COMPENSATION),
            child_instance_id=node.child_instance_id if is_child else None,
        )

    def final_event(self) -> Event:
        if self.state.cause is FailureCause.CANCELLED:
            return SagaCancelled(at=self.now)
        if self.state.cause is FailureCause.DEADLINE:
            return SagaTimedOut(at=self.now)
        return SagaCompensated(at=self.now)


def activation(definition: CompiledDefinition, state: SagaState) -> dict[str, Any]:
    """What expressions see: ``input``, ``steps.<name>.{output,status}`` and ``saga``."""
    return {
        "input": state.input,
        "steps": {
            name: {"output": node.output, "status": node.status.value}
            for name, node in state.nodes.items()
        },
        "saga": {
            "id": state.instance_id,
            "tenant": state.tenant_id,
            "name": state.definition_name,
            "version": state.definition_version,
        },
    }
