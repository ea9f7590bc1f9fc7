"""The participant registry and attempt callbacks as the API sees them: schemas and services."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from saga_orchestrator.api.audit import audit_entry, current_context
from saga_orchestrator.core.events import ErrorInfo
from saga_orchestrator.core.state import SagaState
from saga_orchestrator.definition.participants import ParticipantRecord, ParticipantService
from saga_orchestrator.engine.participants import ParticipantRegistry, Saved, parse_service
from saga_orchestrator.engine.runtime import Engine
from saga_orchestrator.errors import InvalidCompletionToken
from saga_orchestrator.store import AuditEntry
from saga_orchestrator.transports.base import StepOutcome
from saga_orchestrator.transports.breaker import BreakerSnapshot
from saga_orchestrator.transports.secrets import is_credential_header

REDACTED = "[redacted]"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BreakerStatus(_Model):
    state: str = Field(description="`closed`, `open` or `half_open`.")
    failure_rate: float = Field(description="Failures / calls over the breaker's window.")
    calls: int = Field(description="Calls counted in the window.")
    retry_after: float = Field(description="Seconds until an open breaker admits a probe.")


class ParticipantOut(_Model):
    name: str
    version: int = Field(description="Bumped by every change of the entry.")
    service: ParticipantService
    circuit_breaker: BreakerStatus | None = Field(
        default=None, description="This node's breaker for the service (none before a call)."
    )


class ParticipantList(_Model):
    items: list[ParticipantOut]


class CompleteAttempt(_Model):
    model_config = ConfigDict(
        frozen=True, extra="forbid", json_schema_extra={"examples": [{"output": {"id": "S-1"}}]}
    )
    output: Any = Field(default=None, description="The step's output (any JSON).")


class ReportedError(_Model):
    type: str = Field(min_length=1, max_length=200, description="e.g. `OutOfStock`.")
    message: str = Field(default="", max_length=4000)
    retryable: bool = Field(default=False, description="Whether another attempt may succeed.")


class FailAttempt(_Model):
    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        json_schema_extra={"examples": [{"error": {"type": "OutOfStock", "retryable": False}}]},
    )
    error: ReportedError


class CallbackAccepted(_Model):
    id: str
    status: str
    deadline: datetime | None = Field(
        default=None, description="After a heartbeat: the attempt's new deadline."
    )


class ParticipantsApi:
    """Admin operations on a tenant's participant services."""

    def __init__(
        self,
        registry: ParticipantRegistry,
        breakers: Callable[[], Sequence[BreakerSnapshot]] = list,
    ) -> None:
        self._registry = registry
        self._breakers = breakers

    async def put(self, tenant_id: str, name: str, body: object) -> tuple[ParticipantOut, bool]:
        audit = audit_entry(tenant_id, "participant.put", "participant", name)
        saved: Saved = await self._registry.put(tenant_id, name, parse_service(body), audit=audit)
        return self._out(tenant_id, saved.record), saved.created

    async def get(self, tenant_id: str, name: str) -> ParticipantOut:
        return self._out(tenant_id, await self._registry.get(tenant_id, name))

    async def list(self, tenant_id: str) -> ParticipantList:
        records = await self._registry.list(tenant_id)
        return ParticipantList(items=[self._out(tenant_id, r) for r in records])

    async def delete(self, tenant_id: str, name: str) -> None:
        audit = audit_entry(tenant_id, "participant.delete", "participant", name)
        await self._registry.delete(tenant_id, name, audit=audit)

    def _out(self, tenant_id: str, record: ParticipantRecord) -> ParticipantOut:
        status = None
        for snap in self._breakers():
            if snap.tenant_id == tenant_id and snap.service == record.name:
                status = BreakerStatus(
                    state=snap.state.value,
                    failure_rate=snap.failure_rate,
                    calls=snap.calls,
                    retry_after=snap.retry_after,
                )
        return ParticipantOut(
            name=record.name,
            version=record.version,
            service=_shown(record.service),
            circuit_breaker=status,
        )


def _shown(service: ParticipantService) -> ParticipantService:
    """The entry as the API shows it: a credential stored as a plain string before such
    entries were refused is hidden (the transport refuses to send it too)."""
    literal = {
        k for k, v in service.headers.items() if isinstance(v, str) and is_credential_header(k)
    }
    if not literal:
        return service
    shown = {k: REDACTED if k in literal else v for k, v in service.headers.items()}
    return service.model_copy(update={"headers": shown})


class CallbackApi:
    """Participants finishing attempts they accepted (HTTP 202), with their completion token."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def complete(
        self, token: str | None, instance_id: str, step: str, body: CompleteAttempt
    ) -> CallbackAccepted:
        audit = self._audit(token, instance_id, step, "attempt.complete")
        state = await self._engine.complete_attempt(
            _required(token),
            instance_id=instance_id,
            node=step,
            outcome=StepOutcome(output=body.output),
            audit=audit,
        )
        return _accepted(state)

    def _audit(self, token: str | None, instance_id: str, step: str, action: str) -> AuditEntry:
        """The caller is the participant holding the attempt's token: its tenant is the
        token's (checked here first, so a refused callback is audited in that tenant)."""
        ref = self._engine.attempt_of(_required(token), instance_id, step)
        context = current_context()
        context.tenant_id = ref.tenant_id
        context.actor = f"participant:{step}"
        return audit_entry(
            ref.tenant_id,
            action,
            "instance",
            instance_id,
            details={"step": step, "phase": ref.phase.value, "attempt": ref.attempt},
        )

    async def fail(
        self, token: str | None, instance_id: str, step: str, body: FailAttempt
    ) -> CallbackAccepted:
        error = ErrorInfo(
            type=body.error.type, message=body.error.message, retryable=body.error.retryable
        )
        audit = self._audit(token, instance_id, step, "attempt.fail")
        state = await self._engine.complete_attempt(
            _required(token),
            instance_id=instance_id,
            node=step,
            outcome=StepOutcome(error=error),
            audit=audit,
        )
        return _accepted(state)

    async def heartbeat(self, token: str | None, instance_id: str, step: str) -> CallbackAccepted:
        audit = self._audit(token, instance_id, step, "attempt.heartbeat")
        state = await self._engine.heartbeat_attempt(
            _required(token), instance_id=instance_id, node=step, audit=audit
        )
        node = state.nodes.get(step)
        deadlines = (
            []
            if node is None
            else [p.deadline for p in (node.action, node.compensation) if p.in_flight]
        )
        return _accepted(state, deadlines[0] if deadlines else None)


def _required(token: str | None) -> str:
    if not token:
        raise InvalidCompletionToken("send the attempt's Saga-Completion-Token header")
    return token


def _accepted(state: SagaState, deadline: datetime | None = None) -> CallbackAccepted:
    return CallbackAccepted(id=state.instance_id, status=state.status.value, deadline=deadline)
