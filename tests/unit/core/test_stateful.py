"""A Hypothesis state machine over one instance of a fixed, feature-rich definition: any
interleaving of outcomes, timer firings, cancels, crashes and operator actions keeps the
decider's invariants."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from saga_orchestrator.core.events import AttemptScheduled, PivotPassed, SagaParked
from saga_orchestrator.core.state import fold
from saga_orchestrator.core.status import InstanceStatus, StepStatus
from saga_orchestrator.errors import InvalidTransition
from tests.unit.core.harness import A, C, Run, definition, step

RETRY = {"max_attempts": 2, "initial_interval": 1}
DEFINITION = definition(
    [
        step("reserve", retry=RETRY, compensation_retry=RETRY),
        {
            "name": "fan",
            "branches": [
                [step("email", retry=RETRY, compensation_retry=RETRY, timeout=5)],
                [
                    step(
                        "sms", retry=RETRY, compensation_retry=RETRY, on_compensation_failure="skip"
                    )
                ],
            ],
        },
        {
            "name": "route",
            "cases": [{"when": "input.big", "steps": [step("review", retry=RETRY)]}],
            "default": [step("auto", retry=RETRY, compensation_retry=RETRY)],
        },
        step("charge", kind="pivot", retry=RETRY),
        step("ship", kind="retriable", retry=RETRY),
    ],
    timeout=600,
)


class SagaMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.run: Run | None = None

    @rule(big=st.booleans())
    @precondition(lambda self: self.run is None)
    def start(self, big: bool) -> None:
        self.run = Run(DEFINITION, {"big": big})

    def _pick(self, data: st.DataObject) -> tuple[str, Any] | None:
        assert self.run is not None
        in_flight = sorted(self.run.in_flight())
        return data.draw(st.sampled_from(in_flight)) if in_flight else None

    @rule(data=st.data(), outcome=st.sampled_from(["ok", "retry", "reject", "unknown"]))
    @precondition(lambda self: self.run is not None)
    def outcome(self, data: st.DataObject, outcome: str) -> None:
        assert self.run is not None
        picked = self._pick(data)
        if picked is None:
            return
        node, phase = picked
        if outcome == "ok":
            self.run.succeed(node, {"n": node}, phase=phase)
        elif outcome == "reject" and phase is A:
            self.run.fail(node, phase=phase)
        else:
            self.run.fail(node, retryable=True, unknown=outcome == "unknown", phase=phase)

    @rule(seconds=st.sampled_from([0.5, 1, 5, 700]))
    @precondition(lambda self: self.run is not None)
    def time_passes(self, seconds: float) -> None:
        assert self.run is not None
        self.run.advance(seconds)

    @rule()
    @precondition(lambda self: self.run is not None)
    def cancel(self) -> None:
        assert self.run is not None
        try:
            self.run.cancel()
        except InvalidTransition:
            assert (
                self.run.status is not InstanceStatus.RUNNING
                or self.run.state.pivot_passed
                or (self.run.state.cause is not None)
            )

    @rule()
    @precondition(lambda self: self.run is not None)
    def crash(self) -> None:
        assert self.run is not None
        self.run.crash_and_recover()

    @rule(action=st.sampled_from(["retry", "skip", "resolve"]))
    @precondition(lambda self: self.run is not None and self.run.status is InstanceStatus.FAILED)
    def operator(self, action: str) -> None:
        assert self.run is not None
        if action == "retry":
            self.run.retry()
        elif action == "resolve":
            self.run.resolve()
        elif self.run.state.parked_node is not None:
            self.run.skip(self.run.state.parked_node)

    @invariant()
    def history_folds_to_state(self) -> None:
        if self.run is not None:
            assert fold(self.run.history) == self.run.state

    @invariant()
    def nothing_compensates_past_the_pivot(self) -> None:
        if self.run is None:
            return
        history = self.run.history
        pivot = next((i for i, e in enumerate(history) if isinstance(e, PivotPassed)), None)
        if pivot is not None:
            assert not any(
                isinstance(e, AttemptScheduled) and e.phase is C for e in history[pivot:]
            )

    @invariant()
    def settled_instances_have_nothing_in_flight_and_no_timer(self) -> None:
        if self.run is not None and self.run.status.is_terminal:
            assert self.run.in_flight() == set()
            assert self.run.last.wake_at is None

    @invariant()
    def parked_instances_dispatch_nothing(self) -> None:
        if self.run is not None and self.run.status is InstanceStatus.FAILED:
            assert isinstance(self.run.history[-1], SagaParked) or self.run.last.effects == ()

    @invariant()
    def untaken_routes_never_run(self) -> None:
        if self.run is None:
            return
        big = self.run.state.input["big"]
        untaken = "auto" if big else "review"
        assert self.run.step_status(untaken) is StepStatus.PENDING


SagaMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_saga_state_machine = SagaMachine.TestCase
