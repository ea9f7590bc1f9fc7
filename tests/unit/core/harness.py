"""A given/expect harness for the pure core: drive one instance through ``decide`` the way the
engine does, with a hand-held clock, and keep its whole history for assertions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from saga_orchestrator.core import codec
from saga_orchestrator.core.commands import Decision, Dispatch, Effect
from saga_orchestrator.core.decide import decide
from saga_orchestrator.core.events import ErrorInfo, Event, Phase
from saga_orchestrator.core.operations import (
    accepted_events,
    heartbeat_events,
    operator_resolve,
    operator_retry,
    operator_skip,
    outcome_events,
    recover,
    request_cancel,
    request_undo,
    start_event,
)
from saga_orchestrator.core.state import SagaState, evolve, fold
from saga_orchestrator.core.status import InstanceStatus, StepStatus
from saga_orchestrator.definition.compiler import CompiledDefinition, compile_definition
from saga_orchestrator.definition.models import SagaDefinition

T0 = datetime(2026, 1, 1, tzinfo=UTC)
A = Phase.ACTION
C = Phase.COMPENSATION


def definition(steps: list[dict[str, Any]], **extra: Any) -> CompiledDefinition:
    body = {"name": "test", "version": "1.0.0", "steps": steps, **extra}
    return compile_definition(SagaDefinition.model_validate(body))


def step(name: str, *, comp: bool = True, **extra: Any) -> dict[str, Any]:
    """A step whose action is handler ``<name>`` and compensation ``undo.<name>``."""
    node: dict[str, Any] = {"name": name, "action": name, **extra}
    if comp and extra.get("kind", "compensatable") == "compensatable":
        node["compensation"] = f"undo.{name}"
    return node


class Run:
    """One instance, driven step by step."""

    def __init__(
        self, compiled: CompiledDefinition, context: Any = None, *, instance_id: str = "i-1"
    ) -> None:
        self.definition = compiled
        self.now = T0
        started = start_event(
            compiled, tenant_id="t", instance_id=instance_id, context=context or {}, now=T0
        )
        self.history: list[Event] = [started]
        self.state: SagaState = fold(self.history)
        self.effects: list[Effect] = []
        self.last = self._decide()

    # -- driving --
    def _append(self, events: list[Event]) -> None:
        for event in events:
            self.state = evolve(self.state, event)
            self.history.append(event)

    def _decide(self) -> Decision:
        decision = decide(self.definition, self.state, self.now)
        self._append(list(decision.events))
        self.effects.extend(decision.effects)
        self.last = decision
        assert fold(self.history) == self.state, "folding the history must give the same state"
        return decision

    def succeed(self, node: str, output: Any = None, phase: Phase = A) -> Decision:
        events = outcome_events(
            self.state,
            node=node,
            phase=phase,
            attempt=self.attempt(node, phase),
            now=self.now,
            output=output,
        )
        assert events, f"{node} {phase} has no attempt in flight"
        self._append(events)
        return self._decide()

    def fail(
        self,
        node: str,
        *,
        retryable: bool = False,
        unknown: bool = False,
        error_type: str = "Boom",
        phase: Phase = A,
        retry_after: float | None = None,
        budgeted: bool = True,
    ) -> Decision:
        error = ErrorInfo(
            type=error_type,
            message="it broke",
            retryable=retryable,
            unknown=unknown,
            retry_after=retry_after,
            budgeted=budgeted,
        )
        events = outcome_events(
            self.state,
            node=node,
            phase=phase,
            attempt=self.attempt(node, phase),
            now=self.now,
            error=error,
        )
        assert events, f"{node} {phase} has no attempt in flight"
        self._append(events)
        return self._decide()

    def accept(self, node: str, phase: Phase = A) -> Decision:
        """The participant answered 202: it will complete the attempt by callback."""
        events = accepted_events(
            self.state, node=node, phase=phase, attempt=self.attempt(node, phase), now=self.now
        )
        self._append(events)
        return self._decide()

    def heartbeat(self, node: str, extend_by: float, phase: Phase = A) -> Decision:
        events = heartbeat_events(
            self.state,
            node=node,
            phase=phase,
            attempt=self.attempt(node, phase),
            now=self.now,
            extend_by=extend_by,
        )
        self._append(events)
        return self._decide()

    def advance(self, seconds: float) -> Decision:
        self.now += timedelta(seconds=seconds)
        return self._decide()

    def advance_to_wake(self) -> Decision:
        assert self.last.wake_at is not None, "no timer pending"
        self.now = max(self.now, self.last.wake_at)
        return self._decide()

    def cancel(self, reason: str = "operator") -> Decision:
        self._append(request_cancel(self.state, reason, self.now))
        return self._decide()

    def undo(self) -> Decision:
        self._append(request_undo(self.state, "parent compensates", self.now))
        return self._decide()

    def retry(self) -> Decision:
        self._append(operator_retry(self.state, "fixed it", "ops", self.now))
        return self._decide()

    def skip(self, node: str) -> Decision:
        self._append(
            operator_skip(
                self.definition, self.state, node=node, reason="by hand", actor="ops", now=self.now
            )
        )
        return self._decide()

    def resolve(self) -> Decision:
        self._append(operator_resolve(self.state, "done by hand", "ops", self.now))
        return self._decide()

    def crash_and_recover(self) -> tuple[list[Event], list[Effect]]:
        events, effects = recover(self.definition, self.state, self.now)
        self._append(events)
        self.effects.extend(effects)
        self._decide()
        return events, effects

    # -- looking --
    def attempt(self, node: str, phase: Phase = A) -> int:
        return self.state.node(node).phase(phase).attempts

    @property
    def status(self) -> InstanceStatus:
        return self.state.status

    def step_status(self, node: str) -> StepStatus:
        return self.state.node(node).status

    def in_flight(self) -> set[tuple[str, Phase]]:
        return {
            (name, phase)
            for name, node in self.state.nodes.items()
            for phase in (A, C)
            if node.phase(phase).in_flight
        }

    def dispatched(self, decision: Decision | None = None) -> list[tuple[str, Phase, int]]:
        chosen = decision or self.last
        return [(e.node, e.phase, e.attempt) for e in chosen.effects if isinstance(e, Dispatch)]

    def all_dispatches(self) -> list[Dispatch]:
        return [e for e in self.effects if isinstance(e, Dispatch)]

    def compensation_order(self) -> list[str]:
        return [d.node for d in self.all_dispatches() if d.phase is C and d.attempt == 1]

    def event_types(self) -> list[str]:
        return [type(e).__name__ for e in self.history]

    def roundtrip(self) -> None:
        """The history survives encoding and decoding unchanged."""
        decoded = [codec.decode(*codec.encode(e)) for e in self.history]
        assert decoded == self.history
