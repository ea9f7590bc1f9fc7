"""Property-based tests of the decider: random definitions, random outcomes per attempt.

Invariants (semantics §3):
- the instance always settles, in the state the rules give;
- compensations run exactly for the steps that succeeded (or whose outcome is unknown);
- each compensation starts only after the compensations of everything that depended on it;
- nothing compensates once a pivot has succeeded, and nothing runs after the saga parked;
- folding the same events gives the same state (checked by the harness at every step), and
  the history survives the codec.
"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saga_orchestrator.core.events import (
    AttemptFailed,
    AttemptScheduled,
    AttemptSucceeded,
    CompensationFailed,
    PivotPassed,
    SagaParked,
    StepFailed,
)
from saga_orchestrator.core.status import InstanceStatus
from tests.unit.core.harness import A, C, Run, definition

_names = (f"s{i}" for i in itertools.count())

OUTCOMES = ("success", "retryable", "definite", "unknown")


def _step(
    draw: st.DrawFn, names: itertools.count[int], kind: str = "compensatable"
) -> dict[str, Any]:
    name = f"s{next(names)}"
    node: dict[str, Any] = {
        "name": name,
        "action": name,
        "kind": kind,
        "retry": {"max_attempts": draw(st.integers(1, 3)), "initial_interval": 1},
        "timeout": 10,
    }
    if kind == "compensatable":
        if draw(st.booleans()) or True:
            node["compensation"] = f"undo.{name}"
        node["compensation_retry"] = {"max_attempts": 3, "initial_interval": 1}
        node["on_compensation_failure"] = draw(st.sampled_from(["park", "skip"]))
        if draw(st.integers(0, 4)) == 0:
            node["when"] = "input.flag"
    return node


@st.composite
def node_lists(
    draw: st.DrawFn, names: itertools.count[int], depth: int = 0
) -> list[dict[str, Any]]:
    nodes: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(1, 3 if depth == 0 else 2))):
        choice = draw(st.integers(0, 7)) if depth < 2 else 0
        if choice == 6:
            branches = [draw(node_lists(names, depth + 1)) for _ in range(draw(st.integers(2, 3)))]
            nodes.append({"name": f"p{next(names)}", "branches": branches})
        elif choice == 7:
            nodes.append(
                {
                    "name": f"w{next(names)}",
                    "cases": [
                        {"when": "input.route == 1", "steps": draw(node_lists(names, depth + 1))}
                    ],
                    "default": draw(node_lists(names, depth + 1)),
                }
            )
        else:
            nodes.append(_step(draw, names))
    return nodes


@st.composite
def definitions(draw: st.DrawFn) -> list[dict[str, Any]]:
    names = itertools.count()
    nodes = draw(node_lists(names))
    if draw(st.booleans()):
        nodes.append(_step(draw, names, kind="pivot"))
        nodes.extend(_step(draw, names, kind="retriable") for _ in range(draw(st.integers(0, 2))))
    return nodes


def _drive(run: Run, data: st.DataObject) -> None:
    for _ in range(400):
        if run.status.is_settled:
            return
        in_flight = sorted(run.in_flight())
        if not in_flight:
            run.advance_to_wake()
            continue
        node, phase = data.draw(st.sampled_from(in_flight))
        outcome = data.draw(st.sampled_from(OUTCOMES))
        if outcome == "success":
            run.succeed(node, {"n": node}, phase=phase)
        elif outcome == "retryable":
            run.fail(node, retryable=True, phase=phase)
        elif outcome == "definite" and phase is A:
            run.fail(node, phase=phase)
        else:
            run.fail(node, retryable=True, unknown=True, phase=phase)
    raise AssertionError(f"the saga did not settle: {run.status}")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=definitions(),
    context=st.fixed_dictionaries({"flag": st.booleans(), "route": st.integers(0, 1)}),
    data=st.data(),
)
def test_random_failures_obey_the_saga_rules(
    steps: list[dict[str, Any]], context: dict[str, Any], data: st.DataObject
) -> None:
    compiled = definition(steps)
    run = Run(compiled, context)
    _drive(run, data)
    history = run.history
    index_of = {id(e): i for i, e in enumerate(history)}

    succeeded = {e.node for e in history if isinstance(e, AttemptSucceeded) and e.phase is A}
    failed_unknown = {e.node for e in history if isinstance(e, StepFailed) and e.error.unknown}
    comp_started = {
        e.node: index_of[id(e)]
        for e in reversed(history)
        if isinstance(e, AttemptScheduled) and e.phase is C
    }
    comp_done = {
        e.node: index_of[id(e)]
        for e in history
        if (isinstance(e, AttemptSucceeded) and e.phase is C) or isinstance(e, CompensationFailed)
    }
    pivot_at = next((index_of[id(e)] for e in history if isinstance(e, PivotPassed)), None)
    parked_at = next((index_of[id(e)] for e in history if isinstance(e, SagaParked)), None)
    step_failed = any(isinstance(e, StepFailed) for e in history)

    # Compensations run exactly for succeeded (or unknown-outcome) compensatable steps.
    owed = {name for name in succeeded | failed_unknown if compiled.nodes[name].has_compensation}
    if run.status is InstanceStatus.COMPENSATED:
        assert set(comp_started) == owed
    assert set(comp_started) <= owed

    # Each compensation starts after all its dependents' compensations finished.
    for name, started in comp_started.items():
        for dependent in compiled.nodes[name].dependents & set(comp_started):
            assert dependent in comp_done and comp_done[dependent] < started, (name, dependent)

    # Past the pivot nothing compensates; after parking nothing is dispatched.
    if pivot_at is not None:
        assert all(i < pivot_at for i in comp_started.values())
    if parked_at is not None:
        assert not any(isinstance(e, AttemptScheduled) for e in history[parked_at + 1 :]), (
            run.event_types()[parked_at - 5 :]
        )

    # The terminal state is the one the rules give.
    if not step_failed:
        assert run.status is InstanceStatus.COMPLETED
    elif pivot_at is not None:
        assert run.status is InstanceStatus.FAILED
    else:
        exhausted = [e for e in history if isinstance(e, AttemptFailed) and e.phase is C]
        assert run.status is InstanceStatus.COMPENSATED or (
            run.status is InstanceStatus.FAILED and exhausted
        )

    # Every dispatch of a node's phase carries the same idempotency key.
    for dispatch in run.all_dispatches():
        assert dispatch.idempotency_key == f"i-1:{dispatch.node}:{dispatch.phase.value}"
    run.roundtrip()
