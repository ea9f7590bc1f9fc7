"""Request and response bodies of the REST API: frozen pydantic models at the edge, each field
documented, with examples for ``/docs``. The saga language itself is not redefined here: the
definition endpoints carry the language's own JSON Schema (see :mod:`.openapi`)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import AfterValidator, AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field

from saga_orchestrator.core.events import ErrorInfo, FailureCause
from saga_orchestrator.core.status import InstanceStatus, StepStatus
from saga_orchestrator.core.view import InstanceView, StepView
from saga_orchestrator.definition.models import NAME_PATTERN
from saga_orchestrator.store import DefinitionRecord, InstanceRecord, StoredEvent

MAX_SEQ = 2**63 - 1
"""Sequence numbers are 64-bit in both stores."""
VERSION_PATTERN = r"^[0-9A-Za-z.+-]{1,64}$"
CONSTRAINT_PATTERN = r"^[0-9A-Za-z.+*^~<>=, -]{1,64}$"
PREFIX_PATTERN = r"^[A-Za-z0-9_.-]{0,100}$"
KEY_PATTERN = r"^[\x20-\x7e]{1,255}$"
"""Idempotency keys: printable ASCII, as HTTP headers carry them."""


_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")


def _date_time_text(value: object) -> object:
    # pydantic would also take a number of seconds; the documented format is RFC 3339 only.
    if isinstance(value, str) and not _DATE_TIME.match(value):
        raise ValueError("expected an RFC 3339 date-time such as 2024-05-01T12:00:00Z")
    return value


def _utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("the timestamp is out of range once converted to UTC") from None


def _storable_text(value: str) -> str:
    # Text ends up in JSON histories: PostgreSQL's jsonb refuses NUL, UTF-8 refuses surrogates.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    return value


UtcDatetime = Annotated[AwareDatetime, BeforeValidator(_date_time_text), AfterValidator(_utc)]
SagaName = Annotated[str, Field(pattern=NAME_PATTERN, examples=["order"])]
Reason = Annotated[
    str,
    Field(min_length=1, max_length=2000, examples=["customer asked to cancel"]),
    AfterValidator(_storable_text),
]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --- problems ---------------------------------------------------------------------------------


class ProblemViolation(_Model):
    """One broken rule: where (a node path or a request field) and which rule."""

    location: str = Field(examples=["steps[1].action"])
    rule: str = Field(examples=["known-handler"])
    message: str = Field(examples=["unknown handler 'inventory.reserve'"])


class Problem(BaseModel):
    """An RFC 9457 problem document (``application/problem+json``)."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "type": "https://saga-orchestrator.dev/problems/not-found",
                    "title": "Not found",
                    "status": 404,
                    "detail": "no instance 0b7e2c9e-6f7c-4a44-9b59-2d7f4c1e8a10",
                    "instance": "/api/v1/sagas/instances/0b7e2c9e-6f7c-4a44-9b59-2d7f4c1e8a10",
                }
            ]
        },
    )

    type: str = Field(description="A URI naming the kind of problem.")
    title: str = Field(description="A short summary of the kind of problem.")
    status: int = Field(description="The HTTP status code.")
    detail: str | None = Field(default=None, description="What went wrong this time.")
    instance: str | None = Field(default=None, description="The request path.")
    violations: list[ProblemViolation] | None = Field(
        default=None, description="Each broken rule (invalid definitions and requests)."
    )


# --- definitions ------------------------------------------------------------------------------


class DefinitionSummary(_Model):
    name: str = Field(examples=["order"])
    version: str = Field(examples=["1.2.0"])
    description: str | None = Field(default=None, examples=["Reserve, charge, ship"])
    deprecated: bool = Field(description="Deprecated versions take no new starts.")
    digest: str = Field(description="SHA-256 of the canonical body: equal digests, same body.")
    created_at: datetime

    @classmethod
    def of(cls, record: DefinitionRecord, description: str | None) -> DefinitionSummary:
        return cls(
            name=record.name,
            version=record.version,
            description=description,
            deprecated=record.deprecated,
            digest=record.digest,
            created_at=record.created_at,
        )


class DefinitionDetail(DefinitionSummary):
    definition: dict[str, Any] = Field(
        description="The definition as registered, in canonical form (defaults left out)."
    )


class DefinitionList(_Model):
    items: list[DefinitionSummary]


class DefinitionRegistered(_Model):
    name: str = Field(examples=["order"])
    version: str = Field(examples=["1.0.0"])
    status: Literal["created", "identical"] = Field(
        description="`created`: a new version; `identical`: this exact body was registered."
    )
    digest: str


# --- instances --------------------------------------------------------------------------------


class StartRequest(_Model):
    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        json_schema_extra={
            "examples": [{"saga_name": "order", "version": "^1.0.0", "context": {"sku": "A-1"}}]
        },
    )

    saga_name: SagaName
    version: Annotated[str, Field(pattern=CONSTRAINT_PATTERN)] | None = Field(
        default=None,
        description="A version or constraint (`1.2.0`, `^1.0.0`); default: the latest.",
    )
    context: Any = Field(
        default=None, description="The saga's input; must satisfy the definition's input_schema."
    )


class StartedInstance(_Model):
    id: str = Field(examples=["0b7e2c9e-6f7c-4a44-9b59-2d7f4c1e8a10"])
    saga_name: str = Field(examples=["order"])
    version: str = Field(examples=["1.0.0"])
    status: InstanceStatus


class InstanceSummary(_Model):
    id: str
    saga_name: str
    version: str
    status: InstanceStatus
    current_nodes: list[str] = Field(description="Nodes with an attempt in flight.")
    created_at: datetime
    updated_at: datetime
    parent_instance_id: str | None = None

    @classmethod
    def of(cls, record: InstanceRecord) -> InstanceSummary:
        return cls(
            id=record.instance_id,
            saga_name=record.definition_name,
            version=record.definition_version,
            status=record.status,
            current_nodes=list(record.current_nodes),
            created_at=record.created_at,
            updated_at=record.updated_at,
            parent_instance_id=record.parent_instance_id,
        )


class InstancePage(_Model):
    items: list[InstanceSummary]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page."
    )


class StepError(_Model):
    type: str
    message: str
    retryable: bool
    unknown: bool = Field(description="The effect may have happened (timeout, lost reply).")

    @classmethod
    def of(cls, error: ErrorInfo | None) -> StepError | None:
        if error is None:
            return None
        return cls(
            type=error.type, message=error.message, retryable=error.retryable, unknown=error.unknown
        )


class StepDetail(_Model):
    name: str
    status: StepStatus
    attempts: int
    compensation_attempts: int
    output: Any = None
    error: StepError | None = None
    compensation_error: StepError | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    manual: bool = Field(description="Skipped by an operator.")
    child_instance_id: str | None = None

    @classmethod
    def of(cls, step: StepView) -> StepDetail:
        return cls(
            name=step.name,
            status=step.status,
            attempts=step.attempts,
            compensation_attempts=step.compensation_attempts,
            output=step.output,
            error=StepError.of(step.error),
            compensation_error=StepError.of(step.compensation_error),
            started_at=step.started_at,
            finished_at=step.finished_at,
            manual=step.manual,
            child_instance_id=step.child_instance_id,
        )


class CompensationProgress(_Model):
    """How far undoing has come (all zero while the saga goes forward)."""

    compensating: int
    compensated: int
    failed: int


_COMPENSATION = {
    StepStatus.COMPENSATING: "compensating",
    StepStatus.COMPENSATED: "compensated",
    StepStatus.COMPENSATION_FAILED: "failed",
}


class InstanceDetail(_Model):
    id: str
    saga_name: str
    version: str
    status: InstanceStatus
    input: Any = None
    output: Any = None
    steps: list[StepDetail]
    compensation: CompensationProgress
    started_at: datetime
    finished_at: datetime | None = None
    deadline: datetime | None = None
    cause: FailureCause | None = Field(default=None, description="Why the saga turned back.")
    parked_node: str | None = None
    parked_reason: str | None = None
    in_flight: list[str]
    events: int = Field(description="Events in the history (the last sequence number).")
    parent_instance_id: str | None = None

    @classmethod
    def of(cls, view: InstanceView) -> InstanceDetail:
        counts = dict.fromkeys(_COMPENSATION.values(), 0)
        for step in view.steps.values():
            if step.status in _COMPENSATION:
                counts[_COMPENSATION[step.status]] += 1
        return cls(
            id=view.instance_id,
            saga_name=view.saga_name,
            version=view.version,
            status=view.status,
            input=view.input,
            output=view.output,
            steps=[StepDetail.of(step) for step in view.steps.values()],
            compensation=CompensationProgress(**counts),
            started_at=view.started_at,
            finished_at=view.finished_at,
            deadline=view.deadline,
            cause=view.cause,
            parked_node=view.parked_node,
            parked_reason=view.parked_reason,
            in_flight=list(view.in_flight),
            events=view.events,
            parent_instance_id=view.parent_instance_id,
        )


class HistoryEvent(_Model):
    seq: int = Field(description="1-based, gap-free position in the instance's history.")
    type: str = Field(examples=["AttemptSucceeded"])
    recorded_at: datetime
    data: dict[str, Any]

    @classmethod
    def of(cls, event: StoredEvent) -> HistoryEvent:
        return cls(
            seq=event.seq,
            type=event.type,
            recorded_at=event.recorded_at,
            data=orjson.loads(event.data),
        )


class EventPage(_Model):
    items: list[HistoryEvent]
    next_after: int | None = Field(
        description="Pass as `after` for the next page; null when the history is exhausted."
    )


class OperatorAction(_Model):
    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        json_schema_extra={"examples": [{"reason": "payment provider fixed; try again"}]},
    )

    reason: Reason = Field(description="Why: recorded in the history with the actor.")


# --- operations -------------------------------------------------------------------------------


class Liveness(_Model):
    status: Literal["ok"] = "ok"


class Readiness(_Model):
    status: Literal["ready"] = "ready"
    schema_version: int = Field(description="The schema version applied to the database.")


__all__ = [
    "MAX_SEQ",
    "CompensationProgress",
    "DefinitionDetail",
    "DefinitionList",
    "DefinitionRegistered",
    "DefinitionSummary",
    "EventPage",
    "HistoryEvent",
    "InstanceDetail",
    "InstancePage",
    "InstanceSummary",
    "Liveness",
    "OperatorAction",
    "Problem",
    "ProblemViolation",
    "Readiness",
    "StartRequest",
    "StartedInstance",
    "StepDetail",
    "StepError",
    "UtcDatetime",
]
