"""The transport port: how one attempt of a step reaches its participant.

One method, ``call``, which never raises for a participant's failure: the outcome is data,
classified as semantics §3 says (success with output, retryable, definite, or unknown).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from saga_orchestrator.core.commands import Target
from saga_orchestrator.core.events import ErrorInfo, Phase


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpCallSpec:
    """An http target with its templates rendered over the saga's data at dispatch time."""

    service: str
    method: str
    path: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: Any = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AmqpCallSpec:
    exchange: str
    routing_key: str
    body: Any = None


@dataclass(frozen=True, slots=True, kw_only=True)
class StepRequest:
    tenant_id: str
    instance_id: str
    node: str
    phase: Phase
    attempt: int
    idempotency_key: str
    """Stable across retries and crashes; participants dedupe on it."""
    target: Target
    input: Any
    action_output: Any
    timeout: float
    """Seconds this attempt may take; past it the outcome is unknown."""
    call: HttpCallSpec | AmqpCallSpec | None = None
    """For http and amqp targets: the request to send (None for handler targets)."""
    completion_token: str = ""
    """Authorizes this attempt's asynchronous completion callback (HTTP 202)."""
    traceparent: str = ""
    """W3C trace context of the attempt, for participants to continue the trace."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StepOutcome:
    output: Any = None
    error: ErrorInfo | None = None
    accepted: bool = False
    """The participant took the attempt on (HTTP 202) and will complete it by callback: the
    attempt stays in flight until then, or until its deadline."""

    @property
    def succeeded(self) -> bool:
        return self.error is None


class Transport(Protocol):
    def accepts(self, target: Target) -> bool:
        """Whether this transport reaches that kind of target."""
        ...

    async def call(self, request: StepRequest) -> StepOutcome: ...
