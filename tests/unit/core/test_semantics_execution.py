"""Semantics §2-§3, one test per rule, against the pure decider."""

from __future__ import annotations

import pytest

from saga_orchestrator.core.commands import CompensateChild, ReportToParent, StartChild
from saga_orchestrator.core.events import AlertRaised, CompensationFailed, SagaParked
from saga_orchestrator.core.status import InstanceStatus, StepStatus
from saga_orchestrator.errors import InvalidTransition
from tests.unit.core.harness import A, C, Run, definition, step

ORDER = definition([step("reserve"), step("charge"), step("ship")])


def test_steps_run_in_sequence_each_after_its_predecessor_succeeds() -> None:
    run = Run(ORDER)
    assert run.dispatched() == [("reserve", A, 1)]
    assert run.succeed("reserve", {"id": 7}).effects and run.dispatched() == [("charge", A, 1)]
    run.succeed("charge")
    assert run.dispatched() == [("ship", A, 1)]
    run.succeed("ship")
    assert run.status is InstanceStatus.COMPLETED
    assert run.state.output == {"reserve": {"id": 7}}
    run.roundtrip()


def test_when_false_skips_the_step_and_a_skipped_step_is_never_compensated() -> None:
    compiled = definition([step("reserve"), step("gift", when="input.gift == true"), step("ship")])
    run = Run(compiled, {"gift": False})
    run.succeed("reserve")
    assert run.step_status("gift") is StepStatus.SKIPPED
    assert run.dispatched() == [("ship", A, 1)]
    run.fail("ship")
    assert run.compensation_order() == ["reserve"]
    run.succeed("reserve", phase=C)
    assert run.status is InstanceStatus.COMPENSATED


def test_step_input_template_sees_input_and_previous_outputs() -> None:
    compiled = definition(
        [
            step("reserve"),
            step(
                "charge", input={"order": "${input.order}", "hold": "${steps.reserve.output.hold}"}
            ),
        ]
    )
    run = Run(compiled, {"order": "o-1"})
    run.succeed("reserve", {"hold": "h-9"})
    assert run.all_dispatches()[-1].input == {"order": "o-1", "hold": "h-9"}


def test_expression_evaluation_error_fails_the_node_with_a_clear_error() -> None:
    compiled = definition([step("reserve"), step("charge", when="steps.reserve.output.x > 1")])
    run = Run(compiled)
    run.succeed("reserve", None)
    error = run.state.node("charge").error
    assert error is not None
    assert error.type == "ExpressionError"
    assert run.status is InstanceStatus.COMPENSATING


def test_retryable_failures_are_retried_on_durable_timers_with_backoff() -> None:
    compiled = definition(
        [step("pay", retry={"max_attempts": 3, "initial_interval": 2, "backoff_coefficient": 3})]
    )
    run = Run(compiled)
    run.fail("pay", retryable=True)
    assert run.dispatched() == []
    assert run.last.wake_at is not None and (run.last.wake_at - run.now).total_seconds() == 2
    run.advance(1.9)
    assert run.dispatched() == []
    run.advance(0.1)
    assert run.dispatched() == [("pay", A, 2)]
    run.fail("pay", retryable=True)
    assert run.last.wake_at is not None
    assert (run.last.wake_at - run.now).total_seconds() == 6
    run.advance_to_wake()
    assert run.dispatched() == [("pay", A, 3)]
    run.fail("pay", retryable=True)
    assert run.step_status("pay") is StepStatus.FAILED
    assert run.status is InstanceStatus.COMPENSATED


def test_retry_interval_is_capped_by_max_interval() -> None:
    compiled = definition(
        [step("pay", retry={"max_attempts": 5, "initial_interval": 10, "max_interval": 15})]
    )
    run = Run(compiled)
    run.fail("pay", retryable=True)
    run.advance_to_wake()
    run.fail("pay", retryable=True)
    assert (run.last.wake_at - run.now).total_seconds() == 15  # type: ignore[operator]


def test_non_retryable_error_types_fail_at_once() -> None:
    compiled = definition(
        [step("pay", retry={"max_attempts": 5, "non_retryable_errors": ["CardDeclined"]})]
    )
    run = Run(compiled)
    run.fail("pay", retryable=True, error_type="CardDeclined")
    assert run.step_status("pay") is StepStatus.FAILED
    assert run.attempt("pay") == 1


def test_each_attempt_has_a_timeout_whose_outcome_is_unknown() -> None:
    compiled = definition([step("reserve"), step("pay", timeout=5, retry={"max_attempts": 1})])
    run = Run(compiled)
    run.succeed("reserve")
    assert run.last.wake_at is not None
    run.advance(5)
    node = run.state.node("pay")
    assert node.error is not None and node.error.unknown and node.error.type == "Timeout"
    assert run.status is InstanceStatus.COMPENSATING
    # Unknown outcome: the failed step itself is compensated, after nothing depends on it.
    assert run.compensation_order() == ["pay"]
    run.succeed("pay", phase=C)
    assert run.compensation_order() == ["pay", "reserve"]


def test_late_outcome_of_a_timed_out_attempt_is_ignored() -> None:
    compiled = definition([step("pay", timeout=5, retry={"max_attempts": 2})])
    run = Run(compiled)
    run.advance(5)
    from saga_orchestrator.core.operations import outcome_events

    assert outcome_events(run.state, node="pay", phase=A, attempt=1, now=run.now) == []


def test_failed_step_compensates_succeeded_steps_in_reverse() -> None:
    run = Run(ORDER)
    run.succeed("reserve")
    run.succeed("charge")
    run.fail("ship")
    assert run.status is InstanceStatus.COMPENSATING
    assert run.dispatched() == [("charge", C, 1)]
    run.succeed("charge", phase=C)
    assert run.dispatched() == [("reserve", C, 1)]
    run.succeed("reserve", phase=C)
    assert run.status is InstanceStatus.COMPENSATED
    assert run.step_status("ship") is StepStatus.FAILED  # definite failure: not compensated


def test_compensate_on_failure_always_and_never_override_the_default() -> None:
    always = definition([step("a"), step("b", compensate_on_failure="always")])
    run = Run(always)
    run.succeed("a")
    run.fail("b")
    assert run.compensation_order() == ["b"]
    never = definition(
        [step("a"), step("b", compensate_on_failure="never", timeout=1, retry={"max_attempts": 1})]
    )
    run = Run(never)
    run.succeed("a")
    run.advance(1)
    assert run.step_status("b") is StepStatus.FAILED
    assert run.compensation_order() == ["a"]


def test_parallel_branches_fan_out_and_join_when_all_succeed() -> None:
    compiled = definition(
        [
            step("reserve"),
            {"name": "fan", "branches": [[step("b1"), step("b2")], [step("c1")]]},
            step("ship"),
        ]
    )
    run = Run(compiled)
    run.succeed("reserve")
    assert sorted(run.dispatched()) == [("b1", A, 1), ("c1", A, 1)]
    run.succeed("c1")
    assert run.dispatched() == []
    run.succeed("b1")
    assert run.dispatched() == [("b2", A, 1)]
    run.succeed("b2")
    assert run.dispatched() == [("ship", A, 1)]
    assert run.step_status("fan") is StepStatus.SUCCEEDED


def test_parallel_branches_compensate_concurrently_each_in_reverse() -> None:
    compiled = definition(
        [
            step("reserve"),
            {"name": "fan", "branches": [[step("b1"), step("b2")], [step("c1")]]},
            step("ship"),
        ]
    )
    run = Run(compiled)
    run.succeed("reserve")
    run.succeed("b1")
    run.succeed("c1")
    run.succeed("b2")
    run.fail("ship")
    assert sorted(run.dispatched()) == [("b2", C, 1), ("c1", C, 1)]
    run.succeed("c1", phase=C)
    assert run.dispatched() == []  # reserve waits for b1, which waits for b2
    run.succeed("b2", phase=C)
    assert run.dispatched() == [("b1", C, 1)]
    run.succeed("b1", phase=C)
    assert run.dispatched() == [("reserve", C, 1)]


def test_in_flight_sibling_branches_finish_first_and_are_compensated_if_they_succeeded() -> None:
    compiled = definition([{"name": "fan", "branches": [[step("b1")], [step("c1")]]}])
    run = Run(compiled)
    run.fail("b1")
    assert run.status is InstanceStatus.RUNNING  # c1 still in flight
    assert run.dispatched() == []
    run.succeed("c1")
    assert run.status is InstanceStatus.COMPENSATING
    assert run.dispatched() == [("c1", C, 1)]


def test_no_new_steps_start_once_a_branch_failed() -> None:
    compiled = definition([{"name": "fan", "branches": [[step("b1")], [step("c1"), step("c2")]]}])
    run = Run(compiled)
    run.fail("b1")
    run.succeed("c1")
    assert ("c2", A, 1) not in [d[:3] for d in run.dispatched()]
    assert run.step_status("c2") is StepStatus.PENDING


def test_switch_routes_to_the_first_true_case_and_untaken_cases_never_compensate() -> None:
    compiled = definition(
        [
            {
                "name": "route",
                "cases": [
                    {"when": "input.amount > 1000", "steps": [step("manual_review")]},
                    {"when": "input.amount > 100", "steps": [step("auto_review")]},
                ],
                "default": [step("no_review")],
            },
            step("ship"),
        ]
    )
    run = Run(compiled, {"amount": 500})
    assert run.dispatched() == [("auto_review", A, 1)]
    run.succeed("auto_review")
    run.fail("ship")
    assert run.compensation_order() == ["auto_review"]
    assert run.step_status("manual_review") is StepStatus.PENDING
    default = Run(compiled, {"amount": 5})
    assert default.dispatched() == [("no_review", A, 1)]


def test_switch_without_a_matching_case_or_default_just_completes() -> None:
    compiled = definition([{"name": "route", "cases": [{"when": "false", "steps": [step("x")]}]}])
    run = Run(compiled)
    assert run.status is InstanceStatus.COMPLETED


def test_pivot_once_succeeded_nothing_compensates_and_failure_parks() -> None:
    compiled = definition(
        [
            step("reserve"),
            step("charge", kind="pivot"),
            step("ship", kind="retriable", retry={"max_attempts": 2}),
        ]
    )
    run = Run(compiled)
    run.succeed("reserve")
    run.succeed("charge")
    assert run.state.pivot_passed
    with pytest.raises(InvalidTransition):
        run.cancel()
    run.fail("ship", retryable=True)
    run.advance_to_wake()
    run.fail("ship", retryable=True)
    assert run.status is InstanceStatus.FAILED
    assert run.compensation_order() == []
    assert isinstance(run.history[-1], SagaParked)


def test_retriable_step_retries_without_limit_by_default() -> None:
    compiled = definition([step("charge", kind="pivot"), step("ship", kind="retriable")])
    run = Run(compiled)
    run.succeed("charge")
    for _ in range(30):
        run.fail("ship", retryable=True)
        run.advance_to_wake()
    assert run.attempt("ship") == 31
    run.succeed("ship")
    assert run.status is InstanceStatus.COMPLETED


def test_pivot_failing_compensates_the_steps_before_it() -> None:
    compiled = definition(
        [step("reserve"), step("charge", kind="pivot"), step("ship", kind="retriable")]
    )
    run = Run(compiled)
    run.succeed("reserve")
    run.fail("charge")
    assert run.compensation_order() == ["reserve"]


def test_deadline_after_pivot_parks_and_operator_retries_forward() -> None:
    compiled = definition(
        [step("charge", kind="pivot"), step("ship", kind="retriable")], timeout=60
    )
    run = Run(compiled)
    run.succeed("charge")
    run.fail("ship", retryable=True)
    run.advance(61)
    assert run.status is InstanceStatus.FAILED
    run.retry()
    assert run.status is InstanceStatus.RUNNING
    assert run.dispatched() == [("ship", A, 2)]
    run.succeed("ship")
    assert run.status is InstanceStatus.COMPLETED


def test_compensation_retries_then_parks_by_default() -> None:
    compiled = definition(
        [step("a", compensation_retry={"max_attempts": 2, "initial_interval": 1}), step("b")]
    )
    run = Run(compiled)
    run.succeed("a")
    run.fail("b")
    run.fail("a", retryable=True, phase=C)
    run.advance_to_wake()
    assert run.dispatched() == [("a", C, 2)]
    run.fail("a", retryable=True, phase=C)
    assert run.status is InstanceStatus.FAILED
    assert run.state.parked_node == "a"
    assert run.step_status("a") is StepStatus.COMPENSATING


def test_operator_retries_a_parked_compensation_with_a_fresh_budget() -> None:
    compiled = definition([step("a", compensation_retry={"max_attempts": 1}), step("b")])
    run = Run(compiled)
    run.succeed("a")
    run.fail("b")
    run.fail("a", retryable=True, phase=C)
    assert run.status is InstanceStatus.FAILED
    run.retry()
    assert run.dispatched() == [("a", C, 2)]
    run.succeed("a", phase=C)
    assert run.status is InstanceStatus.COMPENSATED


def test_operator_skips_a_parked_compensation_recorded_as_manual() -> None:
    compiled = definition([step("a"), step("b", compensation_retry={"max_attempts": 1}), step("c")])
    run = Run(compiled)
    run.succeed("a")
    run.succeed("b")
    run.fail("c")
    run.fail("b", phase=C)
    run.skip("b")
    assert run.state.node("b").manual and run.step_status("b") is StepStatus.COMPENSATED
    assert run.dispatched() == [("a", C, 1)]


def test_operator_resolves_a_parked_saga() -> None:
    compiled = definition([step("a", compensation_retry={"max_attempts": 1}), step("b")])
    run = Run(compiled)
    run.succeed("a")
    run.fail("b")
    run.fail("a", phase=C)
    run.resolve()
    assert run.status is InstanceStatus.COMPENSATED
    assert run.event_types()[-1] == "OperatorResolved"


def test_operator_actions_need_a_parked_saga() -> None:
    run = Run(ORDER)
    with pytest.raises(InvalidTransition):
        run.retry()
    with pytest.raises(InvalidTransition):
        run.resolve()


def test_compensation_failure_skip_records_it_raises_an_alert_and_goes_on() -> None:
    compiled = definition(
        [
            step("a"),
            step("b", on_compensation_failure="skip", compensation_retry={"max_attempts": 1}),
            step("c"),
        ]
    )
    run = Run(compiled)
    run.succeed("a")
    run.succeed("b")
    run.fail("c")
    run.fail("b", phase=C)
    assert run.step_status("b") is StepStatus.COMPENSATION_FAILED
    assert any(isinstance(e, AlertRaised) for e in run.history)
    assert any(isinstance(e, CompensationFailed) for e in run.history)
    assert run.dispatched() == [("a", C, 1)]
    run.succeed("a", phase=C)
    assert run.status is InstanceStatus.COMPENSATED


def test_cancel_lets_in_flight_attempts_finish_then_compensates_and_ends_cancelled() -> None:
    run = Run(ORDER)
    run.succeed("reserve")
    run.cancel()
    assert run.status is InstanceStatus.RUNNING and run.dispatched() == []
    run.succeed("charge")
    assert run.step_status("ship") is StepStatus.PENDING
    assert run.dispatched() == [("charge", C, 1)]
    run.succeed("charge", phase=C)
    run.succeed("reserve", phase=C)
    assert run.status is InstanceStatus.CANCELLED


def test_cancel_is_refused_once_settled() -> None:
    run = Run(definition([step("a")]))
    run.succeed("a")
    with pytest.raises(InvalidTransition):
        run.cancel()


def test_saga_deadline_compensates_and_ends_timed_out() -> None:
    compiled = definition([step("a"), step("b", timeout=600)], timeout=30)
    run = Run(compiled)
    run.succeed("a")
    run.advance(30)
    assert run.status is InstanceStatus.RUNNING  # b is still in flight
    run.succeed("b")
    assert run.compensation_order() == ["b"]
    run.succeed("b", phase=C)
    run.succeed("a", phase=C)
    assert run.status is InstanceStatus.TIMED_OUT


def test_sub_saga_starts_a_child_and_succeeds_when_the_child_completes() -> None:
    compiled = definition([step("a"), {"name": "shipping", "saga": "ship", "version": "^1"}])
    run = Run(compiled)
    run.succeed("a")
    starts = [e for e in run.last.effects if isinstance(e, StartChild)]
    assert len(starts) == 1 and starts[0].saga == "ship" and starts[0].version == "^1"
    run.succeed("shipping", {"tracking": "z"})
    assert run.status is InstanceStatus.COMPLETED


def test_sub_saga_completed_child_is_compensated_as_a_whole() -> None:
    compiled = definition([step("a"), {"name": "shipping", "saga": "ship"}, step("c")])
    run = Run(compiled)
    run.succeed("a")
    run.succeed("shipping")
    run.fail("c")
    undo = [e for e in run.last.effects if isinstance(e, CompensateChild)]
    assert (
        len(undo) == 1 and undo[0].child_instance_id == run.state.node("shipping").child_instance_id
    )


def test_sub_saga_failed_child_fails_the_parent_step_without_compensating_it() -> None:
    compiled = definition([step("a"), {"name": "shipping", "saga": "ship"}])
    run = Run(compiled)
    run.succeed("a")
    run.fail("shipping")
    assert run.compensation_order() == ["a"]


def test_child_saga_reports_its_outcome_to_the_parent() -> None:
    from saga_orchestrator.core.operations import start_event
    from saga_orchestrator.core.state import fold

    child = definition([step("x")])
    run = Run(child, instance_id="child-1")
    run.history[0] = start_event(
        child,
        tenant_id="t",
        instance_id="child-1",
        context={},
        now=run.now,
        parent_instance_id="p-1",
        parent_node="shipping",
    )
    run.state = fold(run.history)
    run.succeed("x", {"ok": True})
    reports = [e for e in run.last.effects if isinstance(e, ReportToParent)]
    assert len(reports) == 1 and reports[0].succeeded and reports[0].phase is A
    run.undo()
    assert run.dispatched() == [("x", C, 1)]
    run.succeed("x", phase=C)
    reports = [e for e in run.last.effects if isinstance(e, ReportToParent)]
    assert len(reports) == 1 and reports[0].phase is C and reports[0].succeeded


def test_every_dispatch_carries_a_key_stable_across_retries_and_crashes() -> None:
    compiled = definition([step("pay", retry={"max_attempts": 3, "initial_interval": 1})])
    run = Run(compiled)
    run.fail("pay", retryable=True)
    run.advance_to_wake()
    run.crash_and_recover()
    run.advance_to_wake()
    keys = {d.idempotency_key for d in run.all_dispatches() if d.phase is A}
    assert keys == {"i-1:pay:action"}
    assert run.attempt("pay") == 3


def test_recovery_marks_in_flight_attempts_unknown_and_retries_them() -> None:
    run = Run(ORDER)
    events, _ = run.crash_and_recover()
    assert len(events) == 1 and events[0].error.unknown  # type: ignore[attr-defined]
    run.advance_to_wake()
    assert run.dispatched() == [("reserve", A, 2)]
