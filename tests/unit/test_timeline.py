"""The timeline renderer, on hand-built histories: rows as data, then the rendered table."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from rich.console import Console, RenderableType

from saga_orchestrator.console.timeline import (
    STATUS_STYLES,
    TimelineRow,
    render_instance,
    render_status,
    render_timeline,
    timeline_rows,
)
from saga_orchestrator.core import events as ev
from saga_orchestrator.core.events import ErrorInfo, Event, FailureCause, Phase, SkipReason
from saga_orchestrator.core.status import InstanceStatus

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
DECLINED = ErrorInfo(type="CardDeclined", message="card declined", retryable=False)
TIMEOUT = ErrorInfo(type="Timeout", message="no answer", retryable=True, unknown=True)


def at(ms: float) -> datetime:
    return T0 + timedelta(milliseconds=ms)


def scheduled(ms: float, node: str, phase: Phase = Phase.ACTION, attempt: int = 1) -> Event:
    return ev.AttemptScheduled(
        at=at(ms),
        node=node,
        phase=phase,
        attempt=attempt,
        input={},
        deadline=None,
        idempotency_key=f"i-1:{node}:{phase}",
    )


def succeeded(ms: float, node: str, output: Any, phase: Phase = Phase.ACTION) -> Event:
    return ev.AttemptSucceeded(at=at(ms), node=node, phase=phase, attempt=1, output=output)


STARTED = ev.SagaStarted(
    at=T0,
    tenant_id="default",
    instance_id="i-1",
    definition_name="order",
    definition_version="1.0.0",
    input={"sku": "A-1"},
    deadline=None,
)

COMPENSATED_HISTORY: list[Event] = [
    STARTED,
    scheduled(0, "reserve"),
    succeeded(12.5, "reserve", {"reservation_id": "R-1"}),
    scheduled(12.5, "charge"),
    ev.AttemptFailed(at=at(30), node="charge", phase=Phase.ACTION, attempt=1, error=DECLINED),
    ev.StepFailed(at=at(30), node="charge", error=DECLINED),
    ev.CompensationStarted(at=at(30), cause=FailureCause.STEP_FAILED),
    scheduled(30, "reserve", Phase.COMPENSATION),
    succeeded(41.25, "reserve", {"released": "R-1"}, Phase.COMPENSATION),
    ev.SagaCompensated(at=at(41.25)),
]


def text_of(renderable: RenderableType) -> str:
    console = Console(width=140, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_each_event_is_a_row_offset_from_the_start() -> None:
    rows = timeline_rows(COMPENSATED_HISTORY)
    assert [(r.offset_ms, r.node, r.phase, r.attempt, r.event) for r in rows] == [
        (0.0, "", None, None, "started"),
        (0.0, "reserve", Phase.ACTION, 1, "scheduled"),
        (12.5, "reserve", Phase.ACTION, 1, "succeeded"),
        (12.5, "charge", Phase.ACTION, 1, "scheduled"),
        (30.0, "charge", Phase.ACTION, 1, "failed"),
        (30.0, "charge", None, None, "step failed"),
        (30.0, "", None, None, "compensating"),
        (30.0, "reserve", Phase.COMPENSATION, 1, "scheduled"),
        (41.25, "reserve", Phase.COMPENSATION, 1, "compensated"),
        (41.25, "", None, None, "compensated"),
    ]


def test_details_show_outputs_and_classified_errors() -> None:
    details = [r.detail for r in timeline_rows(COMPENSATED_HISTORY)]
    assert details[0] == "order 1.0.0"
    assert details[2] == '{"reservation_id":"R-1"}'
    assert details[4] == "CardDeclined: card declined (definite)"
    assert details[6] == "step_failed"
    assert details[8] == '{"released":"R-1"}'


def test_failures_and_compensations_are_coloured() -> None:
    rows = timeline_rows(COMPENSATED_HISTORY)
    assert "red" in rows[4].style
    assert "yellow" in rows[8].style


def test_an_empty_history_has_no_rows() -> None:
    assert timeline_rows([]) == []


def test_offsets_never_run_backwards() -> None:
    # An event decided in the same batch as an outcome may be stamped microseconds before it.
    history = [STARTED, scheduled(-0.01, "reserve"), succeeded(5.0, "reserve", None)]
    history.append(scheduled(4.99, "charge"))
    assert [r.offset_ms for r in timeline_rows(history)] == [0.0, 0.0, 5.0, 5.0]


def test_long_details_are_cut() -> None:
    row = timeline_rows([STARTED, succeeded(1, "reserve", {"blob": "x" * 500})])[1]
    assert len(row.detail) == 80
    assert row.detail.endswith("…")


def test_the_rendered_table_reads_as_a_timeline() -> None:
    text = text_of(render_timeline(COMPENSATED_HISTORY, title="order 1.0.0 · i-1"))
    lines = text.splitlines()
    assert lines[0].strip() == "order 1.0.0 · i-1"
    header = next(line for line in lines if "event" in line)
    assert header.split() == ["ms", "node", "phase", "try", "event", "detail"]
    undo = next(line for line in lines if "compensation" in line and "compensated" in line)
    assert undo.split()[:5] == ["41.2", "reserve", "compensation", "1", "compensated"]


def test_render_instance_titles_the_instance_and_ends_with_its_status() -> None:
    text = text_of(render_instance(COMPENSATED_HISTORY))
    assert "order 1.0.0 · i-1" in text
    assert text.rstrip().splitlines()[-1] == "status: compensated"


def test_a_running_instance_shows_running() -> None:
    text = text_of(render_instance(COMPENSATED_HISTORY[:4]))
    assert text.rstrip().endswith("status: running")


@pytest.mark.parametrize("status", list(InstanceStatus))
def test_every_status_has_a_colour(status: InstanceStatus) -> None:
    rendered = render_status(status)
    assert rendered.plain == f"status: {status.value}"
    assert rendered.spans[-1].style == STATUS_STYLES[status]


SAMPLES: dict[type[Event], Event] = {
    type(e): e
    for e in [
        STARTED,
        ev.NodeSkipped(at=T0, node="sms", reason=SkipReason.CONDITION_FALSE),
        ev.NodeEntered(at=T0, node="route", case=1),
        ev.NodeCompleted(at=T0, node="route"),
        scheduled(0, "reserve"),
        succeeded(0, "reserve", None),
        ev.AttemptFailed(at=T0, node="charge", phase=Phase.ACTION, attempt=1, error=TIMEOUT),
        ev.RetryScheduled(at=T0, node="charge", phase=Phase.ACTION, attempt=2, due=at(500)),
        ev.AttemptAccepted(at=T0, node="ship", phase=Phase.ACTION, attempt=1),
        ev.AttemptHeartbeat(at=T0, node="ship", phase=Phase.ACTION, attempt=1, deadline=at(900)),
        ev.StepFailed(at=T0, node="charge", error=DECLINED),
        ev.PivotPassed(at=T0, node="ship"),
        ev.CancelRequested(at=T0, reason="customer asked"),
        ev.DeadlineExceeded(at=T0, deadline=T0),
        ev.CompensationStarted(at=T0, cause=FailureCause.CANCELLED),
        ev.CompensationRequested(at=T0, reason="parent compensates"),
        ev.CompensationFailed(at=T0, node="reserve", error=DECLINED),
        ev.AlertRaised(at=T0, node="reserve", message="could not release"),
        ev.SagaParked(at=T0, node="reserve", reason="compensation failed"),
        ev.SagaCompleted(at=T0, output={"ok": True}),
        ev.SagaCompensated(at=T0),
        ev.SagaCancelled(at=T0),
        ev.SagaTimedOut(at=T0),
        ev.OperatorRetried(at=T0, reason="fixed", actor="ada"),
        ev.OperatorSkipped(at=T0, node="reserve", reason="done by hand", actor="ada"),
        ev.OperatorResolved(at=T0, reason="refunded by hand"),
    ]
}


def test_every_event_type_has_a_row_of_its_own() -> None:
    assert set(SAMPLES) == set(ev.EVENT_TYPES), "add a sample (and a row) for new event types"
    for kind, event in SAMPLES.items():
        row = timeline_rows([event])[0]
        assert row.event != kind.__name__, f"{kind.__name__} falls back to its class name"


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (SAMPLES[ev.AttemptFailed], "Timeout: no answer (outcome unknown)"),
        (SAMPLES[ev.RetryScheduled], "in 500 ms"),
        (SAMPLES[ev.NodeSkipped], "condition_false"),
        (SAMPLES[ev.NodeEntered], "case 1"),
        (SAMPLES[ev.SagaParked], "reserve: compensation failed"),
        (SAMPLES[ev.OperatorRetried], "fixed (by ada)"),
        (SAMPLES[ev.OperatorResolved], "refunded by hand"),
    ],
)
def test_details_of_rarer_events(event: Event, expected: str) -> None:
    assert timeline_rows([event])[0].detail == expected


def test_a_compensation_that_failed_is_in_the_compensation_phase() -> None:
    row = timeline_rows([SAMPLES[ev.CompensationFailed]])[0]
    assert row == TimelineRow(
        offset_ms=0.0,
        node="reserve",
        phase=Phase.COMPENSATION,
        attempt=None,
        event="not undone",
        detail="CardDeclined: card declined (definite)",
        style="bold red",
    )
