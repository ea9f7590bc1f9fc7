"""The transport port: how one attempt of a step reaches its participant.

One method, ``call``, which never raises for a participant's failure: the outcome is data,
classified as semantics §3 says (success with output, retryable, definite, or unknown).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from saga_orchestrator.core.commands import Target
from saga_orchestrator.core.events import ErrorInfo, Phase


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


@dataclass(frozen=True, slots=True, kw_only=True)
class StepOutcome:
    output: Any = None
    error: ErrorInfo | None = None

    @property
    def succeeded(self) -> bool:
        return self.error is None


class Transport(Protocol):
    def accepts(self, target: Target) -> bool:
        """Whether this transport reaches that kind of target."""
        ...

    async def call(self, request: StepRequest) -> StepOutcome: ...
