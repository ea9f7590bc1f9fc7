"""The saga language as pydantic v2 models: the single source of truth for JSON, YAML, the
Python builder and the exported JSON Schema.

Models check shape only (types, enums, required fields, sizes). Rules that span nodes
(unique names, pivot ordering, expression references) live in :mod:`.compiler`.
"""

from __future__ import annotations

import enum
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    Tag,
    WithJsonSchema,
    field_validator,
    model_validator,
)

NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_.-]{0,99}$"
"""Node, handler, service and saga names: also usable as CEL map keys and in URLs."""

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: object) -> float:
    """Seconds from ``12``, ``1.5``, ``"500ms"``, ``"30s"``, ``"5m"``, ``"2h"`` or ``"1d"``."""
    if isinstance(value, bool):
        # pydantic turns ValueError (not TypeError) into a validation error
        raise ValueError("a duration is a number of seconds or a string such as '30s'")  # noqa: TRY004
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION_RE.match(value)):
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise ValueError(f"invalid duration {value!r}: use seconds or e.g. '500ms', '30s', '5m'")
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(lambda seconds: seconds, return_type=float),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0},
                {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d)?\s*$"},
            ],
            "description": "Seconds, or a string with a unit: '500ms', '30s', '5m', '2h', '1d'.",
        }
    ),
]
Name = Annotated[str, Field(pattern=NAME_PATTERN)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class StepKind(enum.StrEnum):
    """Garcia-Molina & Salem's step kinds (semantics §2)."""

    COMPENSATABLE = "compensatable"
    PIVOT = "pivot"
    RETRIABLE = "retriable"


class CompensateOnFailure(enum.StrEnum):
    """Whether the step that failed is itself compensated."""

    UNKNOWN = "unknown"
    """Only when its last outcome is unknown (timed out, connection lost, node crashed)."""
    ALWAYS = "always"
    NEVER = "never"


class OnCompensationFailure(enum.StrEnum):
    PARK = "park"
    """The saga stops in state ``failed`` and waits for an operator."""
    SKIP = "skip"
    """Recorded as ``compensation_failed`` with an alert; remaining compensations go on."""


class RetryPolicy(_Model):
    """How failed attempts are retried; waits are durable timers, never sleeps."""

    max_attempts: int | None = Field(default=3, ge=1, le=10_000)
    """Attempts in all, the first included; ``null`` = unlimited (bounded by the deadline)."""
    initial_interval: Duration = 1.0
    """Wait before the second attempt."""
    backoff_coefficient: float = Field(default=2.0, ge=1.0, le=100.0)
    """Each wait is the previous one times this."""
    max_interval: Duration = 60.0
    """Cap of a single wait."""
    non_retryable_errors: tuple[str, ...] = ()
    """Error types that fail the step at once, whatever the attempt count."""

    @model_validator(mode="after")
    def _interval_order(self) -> RetryPolicy:
        if self.max_interval < self.initial_interval:
            raise ValueError("max_interval must be >= initial_interval")
        return self

    def delay_after(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        delay = self.initial_interval * self.backoff_coefficient ** (attempt - 1)
        return min(delay, self.max_interval)

    def allows_another(self, attempts_made: int) -> bool:
        return self.max_attempts is None or attempts_made < self.max_attempts


DEFAULT_STEP_RETRY = RetryPolicy()
DEFAULT_COMPENSATION_RETRY = RetryPolicy(
    max_attempts=20, initial_interval=1.0, backoff_coefficient=2.0, max_interval=60.0
)
DEFAULT_RETRIABLE_RETRY = RetryPolicy(max_attempts=None)
DEFAULT_STEP_TIMEOUT = 60.0


class HandlerCall(_Model):
    """A Python handler, registered in-process or served by a worker."""

    handler: Name


class HttpSpec(_Model):
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    service: Name
    """A participant service registered in the service registry (never a raw URL)."""
    path: str = Field(pattern=r"^/[^\s]*$", max_length=2000)
    headers: dict[str, str] = Field(default_factory=dict)
    body: Any = None
    """A JSON template: ``"${ expr }"`` strings are CEL (see the definition reference)."""


class HttpCall(_Model):
    http: HttpSpec


class AmqpSpec(_Model):
    exchange: str = Field(default="", max_length=255)
    routing_key: str = Field(min_length=1, max_length=255)
    body: Any = None


class AmqpCall(_Model):
    amqp: AmqpSpec


def _target_tag(value: Any) -> str | None:
    if isinstance(value, str):
        return "handler"
    if isinstance(value, dict):
        for tag in ("handler", "http", "amqp"):
            if tag in value:
                return tag
        return None
    for tag, cls in (("handler", HandlerCall), ("http", HttpCall), ("amqp", AmqpCall)):
        if isinstance(value, cls):
            return tag
    return None


def _handler_shorthand(value: Any) -> Any:
    return {"handler": value} if isinstance(value, str) else value


Target = Annotated[
    Annotated[HandlerCall, Tag("handler")]
    | Annotated[HttpCall, Tag("http")]
    | Annotated[AmqpCall, Tag("amqp")],
    Discriminator(
        _target_tag,
        custom_error_type="invalid_target",
        custom_error_message="a target is a handler name, {handler}, {http: ...} or {amqp: ...}",
    ),
    BeforeValidator(_handler_shorthand),
]


class _NodeBase(_Model):
    name: Name
    when: str | None = Field(default=None, max_length=2048)
    """CEL; false → the node is skipped (and never compensated)."""


class StepNode(_NodeBase):
    type: Literal["step"] = "step"
    action: Target
    compensation: Target | None = None
    kind: StepKind = StepKind.COMPENSATABLE
    input: Any = None
    """JSON template for the step's input; default: the saga's input."""
    retry: RetryPolicy | None = None
    timeout: Duration | None = None
    """Per attempt."""
    compensation_retry: RetryPolicy | None = None
    compensation_timeout: Duration | None = None
    compensate_on_failure: CompensateOnFailure = CompensateOnFailure.UNKNOWN
    on_compensation_failure: OnCompensationFailure = OnCompensationFailure.PARK


class ParallelNode(_NodeBase):
    type: Literal["parallel"] = "parallel"
    branches: list[list[Node]] = Field(min_length=1, max_length=64)

    @field_validator("branches")
    @classmethod
    def _branches_not_empty(cls, branches: list[list[Node]]) -> list[list[Node]]:
        if any(not branch for branch in branches):
            raise ValueError("every branch needs at least one node")
        return branches


class SwitchCase(_Model):
    when: str = Field(max_length=2048)
    steps: list[Node] = Field(min_length=1)


class SwitchNode(_NodeBase):
    type: Literal["switch"] = "switch"
    cases: list[SwitchCase] = Field(min_length=1, max_length=64)
    default: list[Node] = Field(default_factory=list)


class SubSagaNode(_NodeBase):
    type: Literal["saga"] = "saga"
    saga: Name
    version: str | None = None
    """A version constraint (``1.2.0``, ``^1.2``, ``>=1,<2``); default: the latest."""
    input: Any = None
    timeout: Duration | None = None
    """The child's whole-saga deadline (default: the child definition's own)."""
    on_compensation_failure: OnCompensationFailure = OnCompensationFailure.PARK


def _node_tag(value: Any) -> str:
    if isinstance(value, dict):
        explicit = value.get("type")
        if isinstance(explicit, str):
            return explicit
        for key, tag in (("branches", "parallel"), ("cases", "switch"), ("saga", "saga")):
            if key in value:
                return tag
        return "step"
    return str(getattr(value, "type", "step"))


Node = Annotated[
    Annotated[StepNode, Tag("step")]
    | Annotated[ParallelNode, Tag("parallel")]
    | Annotated[SwitchNode, Tag("switch")]
    | Annotated[SubSagaNode, Tag("saga")],
    Discriminator(
        _node_tag,
        custom_error_type="invalid_node_type",
        custom_error_message="a node's type is step, parallel, switch or saga",
    ),
]


class Defaults(_Model):
    retry: RetryPolicy | None = None
    timeout: Duration | None = None
    compensation_retry: RetryPolicy | None = None
    compensation_timeout: Duration | None = None


class SagaDefinition(_Model):
    """A saga definition: ``(tenant, name, version)`` identifies it; a version is immutable."""

    name: Name
    version: str = Field(max_length=100)
    description: str | None = Field(default=None, max_length=10_000)
    input_schema: dict[str, Any] | None = None
    """JSON Schema (draft 2020-12) that the start context must satisfy."""
    timeout: Duration | None = None
    """Whole-saga deadline, counted from the start."""
    defaults: Defaults = Field(default_factory=Defaults)
    steps: list[Node] = Field(min_length=1)


for _model in (ParallelNode, SwitchCase, SwitchNode, SagaDefinition):
    _model.model_rebuild()
