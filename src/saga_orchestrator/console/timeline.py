"""An instance's history as a timeline people read at a glance.

One row per event: milliseconds since the saga started, the node, the phase (action or
compensation), the attempt, what happened and its detail (an output or an error). The
functions are pure: core events in, Rich renderables (or plain rows) out; the caller prints.
``saga demo`` uses them, and so will ``saga instances show``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

import orjson
from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

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
    StepFailed,
)
from saga_orchestrator.core.state import fold
from saga_orchestrator.core.status import InstanceStatus

__all__ = [
    "STATUS_STYLES",
    "TimelineRow",
    "render_instance",
    "render_status",
    "render_timeline",
    "timeline_rows",
]

STATUS_STYLES: Final[Mapping[InstanceStatus, str]] = {
    InstanceStatus.RUNNING: "bold blue",
    InstanceStatus.COMPENSATING: "bold yellow",
    InstanceStatus.COMPLETED: "bold green",
    InstanceStatus.COMPENSATED: "bold yellow",
    InstanceStatus.FAILED: "bold red",
    InstanceStatus.CANCELLED: "bold magenta",
    InstanceStatus.TIMED_OUT: "bold red",
}

DETAIL_MAX_CHARS: Final = 80
"""Longer outputs and errors are cut: the timeline is an overview, the history has it all."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TimelineRow:
    """One event, as the timeline shows it; ``node`` is empty for the saga's own events."""

    offset_ms: float
    node: str
    phase: Phase | None
    attempt: int | None
    event: str
    detail: str = ""
    style: str = ""


def timeline_rows(events: Sequence[Event]) -> list[TimelineRow]:
    """A row per event, its offset counted from the first event (the saga's start).

    Offsets never run backwards: events are shown in history order, and an event written in
    the same batch as the one before it may carry a timestamp a few microseconds earlier."""
    if not events:
        return []
    start = events[0].at
    rows: list[TimelineRow] = []
    offset = 0.0
    for event in events:
        offset = max(offset, (event.at - start).total_seconds() * 1000)
        rows.append(replace(_describe(event), offset_ms=offset))
    return rows


def render_timeline(events: Sequence[Event], *, title: str | None = None) -> Table:
    """The events as a table, compensations and failures in colour."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("ms", justify="right", no_wrap=True)
    table.add_column("node", no_wrap=True)
    table.add_column("phase", no_wrap=True)
    table.add_column("try", justify="right", no_wrap=True)
    table.add_column("event", no_wrap=True)
    table.add_column("detail", overflow="fold")
    for row in timeline_rows(events):
        table.add_row(
            f"{row.offset_ms:.1f}",
            row.node,
            Text(row.phase or "", style="yellow" if row.phase is Phase.COMPENSATION else ""),
            "" if row.attempt is None else str(row.attempt),
            Text(row.event, style=row.style),
            _detail(row),
        )
    return table


def _detail(row: TimelineRow) -> Text:
    """Errors wrap, so a narrow terminal still shows why; outputs keep to one line."""
    if "red" in row.style:
        return Text(row.detail, style="red")
    return Text(row.detail, style="dim", no_wrap=True, overflow="ellipsis")


def render_status(status: InstanceStatus) -> Text:
    """``status: compensated``, coloured by what the status means."""
    return Text.assemble("status: ", (status.value, STATUS_STYLES[status]))


def render_instance(events: Sequence[Event]) -> Group:
    """An instance's timeline under its name, version and id, then its current status.

    ``events`` is a whole history, starting with ``SagaStarted``."""
    state = fold(events)
    title = f"{state.definition_name} {state.definition_version} · {state.instance_id}"
    return Group(render_timeline(events, title=title), render_status(state.status))


# --- one event, one row ---------------------------------------------------------------------


def _describe(event: Event) -> TimelineRow:
    return _step_row(event) or _saga_row(event)


def _step_row(event: Event) -> TimelineRow | None:
    """Events about one node (its attempts, its failure, its compensation)."""
    match event:
        case AttemptScheduled():
            child = f"child {event.child_instance_id}" if event.child_instance_id else ""
            return _attempt(event, "scheduled", child)
        case AttemptSucceeded(phase=Phase.ACTION):
            return _attempt(event, "succeeded", _json(event.output))
        case AttemptSucceeded():
            return _attempt(event, "compensated", _json(event.output), "yellow")
        case AttemptFailed():
            return _attempt(event, "failed", _error(event.error), "red")
        case AttemptAccepted():
            return _attempt(event, "accepted", "awaiting the participant's callback", "cyan")
        case AttemptHeartbeat():
            return _attempt(event, "heartbeat", f"deadline now {event.deadline:%H:%M:%S}", "dim")
        case RetryScheduled():
            wait = f"in {(event.due - event.at).total_seconds() * 1000:.0f} ms"
            return _attempt(event, "retry scheduled", wait, "cyan")
        case StepFailed():
            return _node(event.node, "step failed", _error(event.error), "bold red")
        case CompensationFailed():
            row = _node(event.node, "not undone", _error(event.error), "bold red")
            return replace(row, phase=Phase.COMPENSATION)
        case NodeSkipped():
            detail = " · ".join(part for part in (event.reason.value, event.note) if part)
            return _node(event.node, "skipped", detail, "dim")
        case NodeEntered():
            return _node(event.node, "entered", "" if event.case is None else f"case {event.case}")
        case NodeCompleted():
            return _node(event.node, "completed", "", "green")
        case PivotPassed():
            return _node(event.node, "pivot passed", "no turning back", "cyan")
        case AlertRaised():
            return _node(event.node, "alert", event.message, "bold red")
        case OperatorSkipped():
            return _node(event.node, "operator skip", _by(event.reason, event.actor))
    return None


def _saga_row(event: Event) -> TimelineRow:
    """Events about the instance as a whole."""
    match event:
        case SagaStarted():
            return _saga("started", f"{event.definition_name} {event.definition_version}")
        case CompensationStarted():
            return _saga("compensating", event.cause.value, "yellow")
        case CancelRequested():
            return _saga("cancel requested", event.reason, "magenta")
        case DeadlineExceeded():
            return _saga("deadline exceeded", event.deadline.isoformat(), "red")
        case CompensationRequested():
            return _saga("undo requested", event.reason, "yellow")
        case SagaParked():
            where = f"{event.node}: " if event.node else ""
            return _saga("parked", where + event.reason, "bold red")
        case SagaCompleted():
            return _saga("completed", _json(event.output), STATUS_STYLES[InstanceStatus.COMPLETED])
        case SagaCompensated():
            return _saga("compensated", "", STATUS_STYLES[InstanceStatus.COMPENSATED])
        case SagaCancelled():
            return _saga("cancelled", "", STATUS_STYLES[InstanceStatus.CANCELLED])
        case SagaTimedOut():
            return _saga("timed out", "", STATUS_STYLES[InstanceStatus.TIMED_OUT])
        case OperatorRetried():
            return _saga("operator retry", _by(event.reason, event.actor), "cyan")
        case OperatorResolved():
            return _saga("operator resolve", _by(event.reason, event.actor), "cyan")
    return _saga(type(event).__name__, "")


_AttemptEvent = (
    AttemptScheduled
    | AttemptSucceeded
    | AttemptFailed
    | AttemptAccepted
    | AttemptHeartbeat
    | RetryScheduled
)


def _attempt(event: _AttemptEvent, what: str, detail: str, style: str = "") -> TimelineRow:
    row = _node(event.node, what, detail, style)
    return replace(row, phase=event.phase, attempt=event.attempt)


def _node(node: str, what: str, detail: str, style: str = "") -> TimelineRow:
    return TimelineRow(
        offset_ms=0.0,
        node=node,
        phase=None,
        attempt=None,
        event=what,
        detail=_cut(detail),
        style=style,
    )


def _saga(what: str, detail: str, style: str = "") -> TimelineRow:
    return _node("", what, detail, style)


def _json(value: Any) -> str:
    if value is None:
        return ""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS, default=str).decode()


def _error(error: ErrorInfo) -> str:
    kind = "outcome unknown" if error.unknown else "retryable" if error.retryable else "definite"
    return f"{error.type}: {error.message} ({kind})"


def _by(reason: str, actor: str) -> str:
    return f"{reason} (by {actor})" if actor else reason


def _cut(text: str) -> str:
    return text if len(text) <= DETAIL_MAX_CHARS else text[: DETAIL_MAX_CHARS - 1] + "…"
