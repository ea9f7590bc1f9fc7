"""Semantics §3 as remote participants meet it: Retry-After, open circuit breakers (which must
not burn a step's attempts), and asynchronous completion (HTTP 202 + callback, heartbeats)."""

from __future__ import annotations

import pytest

from saga_orchestrator.core.events import AttemptAccepted, AttemptHeartbeat, Phase
from saga_orchestrator.core.status import InstanceStatus, StepStatus
from saga_orchestrator.errors import InvalidTransition
from tests.unit.core.harness import A, Run, definition, step


def _wait(run: Run) -> float:
    assert run.last.wake_at is not None
    return (run.last.wake_at - run.now).total_seconds()


def test_retry_after_is_a_floor_on_the_backoff() -> None:
    run = Run(definition([step("pay", retry={"max_attempts": 3, "initial_interval": 1})]))
    run.fail("pay", retryable=True, retry_after=30)
    assert _wait(run) == 30
    run.advance_to_wake()
    run.fail("pay", retryable=True, retry_after=0.5)  # shorter than the backoff: backoff wins
    assert _wait(run) == 2
    run.advance_to_wake()
    assert run.attempt("pay") == 3


def test_an_open_breaker_does_not_use_up_the_attempts() -> None:
    run = Run(definition([step("pay", retry={"max_attempts": 2, "initial_interval": 1})]))
    for _ in range(10):  # the breaker stays open a long while: the step keeps waiting for it
        run.fail("pay", retryable=True, error_type="CircuitOpen", retry_after=5, budgeted=False)
        assert _wait(run) == 5
        run.advance_to_wake()
    assert run.step_status("pay") is StepStatus.RUNNING
    run.fail("pay", retryable=True)  # a real attempt: 1 of 2
    run.advance_to_wake()
    run.fail("pay", retryable=True, error_type="CircuitOpen", retry_after=5, budgeted=False)
    run.advance_to_wake()
    assert run.step_status("pay") is StepStatus.RUNNING
    run.fail("pay", retryable=True)  # the second real attempt: the budget is spent
    assert run.attempt("pay") == 13
    assert run.step_status("pay") is StepStatus.FAILED
    assert run.status is InstanceStatus.COMPENSATED


def test_a_breaker_wait_does_not_grow_the_backoff() -> None:
    run = Run(definition([step("pay", retry={"max_attempts": 5, "initial_interval": 1})]))
    run.fail("pay", retryable=True)
    assert _wait(run) == 1
    run.advance_to_wake()
    run.fail("pay", retryable=True, error_type="CircuitOpen", retry_after=3, budgeted=False)
    run.advance_to_wake()
    run.fail("pay", retryable=True)  # the second real failure backs off as the second
    assert _wait(run) == 2


def test_an_accepted_attempt_waits_for_its_callback_within_the_timeout() -> None:
    run = Run(definition([step("ship", timeout=60, retry={"max_attempts": 1})]))
    run.accept("ship")
    assert isinstance(run.history[-1], AttemptAccepted)
    assert run.state.node("ship").action.accepted
    assert run.step_status("ship") is StepStatus.RUNNING
    run.advance(30)
    assert run.step_status("ship") is StepStatus.RUNNING
    run.succeed("ship", output={"tracking": "T-1"})
    assert run.status is InstanceStatus.COMPLETED
    assert not run.state.node("ship").action.accepted


def test_an_accepted_attempt_without_callback_times_out_as_unknown() -> None:
    run = Run(definition([step("reserve"), step("ship", timeout=60, retry={"max_attempts": 1})]))
    run.succeed("reserve")
    run.accept("ship")
    run.advance(60)
    error = run.state.node("ship").action.last_error
    assert error is not None and error.unknown
    # unknown → the step itself is compensated too (its effect may have happened)
    assert ("ship", Phase.COMPENSATION, 1) in run.dispatched()


def test_heartbeats_push_the_deadline_out() -> None:
    run = Run(definition([step("ship", timeout=60, retry={"max_attempts": 1})]))
    run.accept("ship")
    run.advance(50)
    run.heartbeat("ship", extend_by=60)
    assert isinstance(run.history[-1], AttemptHeartbeat)
    assert _wait(run) == 60
    run.advance(59)
    assert run.step_status("ship") is StepStatus.RUNNING
    beats = sum(isinstance(e, AttemptHeartbeat) for e in run.history)
    run.heartbeat("ship", extend_by=0.5)  # would shorten the deadline: nothing recorded
    assert sum(isinstance(e, AttemptHeartbeat) for e in run.history) == beats == 1
    run.advance(1)  # the extended deadline passes: the outcome is unknown, so it compensates
    assert run.step_status("ship") is StepStatus.COMPENSATING


def test_a_heartbeat_for_a_finished_attempt_is_refused() -> None:
    run = Run(definition([step("ship")]))
    run.succeed("ship")
    with pytest.raises(InvalidTransition):
        run.heartbeat("ship", extend_by=10)


def test_a_late_accept_after_the_callback_is_ignored() -> None:
    run = Run(definition([step("ship")]))
    attempt = run.attempt("ship")
    run.succeed("ship")
    before = len(run.history)
    from saga_orchestrator.core.operations import accepted_events

    assert accepted_events(run.state, node="ship", phase=A, attempt=attempt, now=run.now) == []
    assert len(run.history) == before


def test_accepted_state_survives_a_fold() -> None:
    run = Run(definition([step("ship")]))
    run.accept("ship")
    run.roundtrip()
    assert run.state.node("ship").action.accepted


def test_a_crash_leaves_an_accepted_attempt_waiting_for_its_callback() -> None:
    run = Run(definition([step("reserve"), step("ship", timeout=60)]))
    run.succeed("reserve")
    run.accept("ship")
    events, effects = run.crash_and_recover()
    assert events == [] and effects == []
    assert run.step_status("ship") is StepStatus.RUNNING
    run.succeed("ship", output={"tracking": "T"})  # the callback after the restart
    assert run.status is InstanceStatus.COMPLETED


def test_a_crash_still_interrupts_an_attempt_not_yet_accepted() -> None:
    run = Run(definition([step("ship", timeout=60)]))
    events, _ = run.crash_and_recover()
    assert [type(e).__name__ for e in events] == ["AttemptFailed"]
