"""The tenant's audit log: who did what, when, with what outcome (admin)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from saga_orchestrator.api.dependencies import current_tenant, services
from saga_orchestrator.api.problems import problem_responses
from saga_orchestrator.api.schemas import UtcDatetime
from saga_orchestrator.store import AuditFilter, AuditOutcome, AuditRecord

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])

Tenant = Annotated[str, Depends(current_tenant)]
_ERRORS: Final[dict[int | str, dict[str, Any]]] = problem_responses(422, 503)


class AuditRecordOut(BaseModel):
    model_config = ConfigDict(frozen=True)

    seq: int = Field(description="Position in the tenant's hash chain (from 1).")
    at: datetime
    actor: str
    action: str = Field(description="e.g. `instance.cancel`, `definition.register`.")
    target_type: str
    target_id: str
    outcome: AuditOutcome
    reason: str | None = None
    request_id: str | None = None
    details: dict[str, Any]
    prev_hash: str
    hash: str = Field(description="SHA-256 over this record and the previous hash.")

    @classmethod
    def of(cls, record: AuditRecord) -> AuditRecordOut:
        e = record.entry
        return cls(
            seq=record.seq,
            at=e.at,
            actor=e.actor,
            action=e.action,
            target_type=e.target_type,
            target_id=e.target_id,
            outcome=e.outcome,
            reason=e.reason,
            request_id=e.request_id,
            details=e.details,
            prev_hash=record.prev_hash,
            hash=record.hash,
        )


class AuditPage(BaseModel):
    model_config = ConfigDict(frozen=True)

    items: list[AuditRecordOut]
    next_cursor: str | None = Field(
        default=None, description="Pass as `cursor` for the next page (oldest first)."
    )


@router.get("", summary="The tenant's audit log, oldest first", responses=_ERRORS)
async def list_audit(
    *,
    request: Request,
    tenant: Tenant,
    actor: Annotated[str | None, Query(max_length=200)] = None,
    action: Annotated[str | None, Query(max_length=100)] = None,
    target_id: Annotated[str | None, Query(max_length=200)] = None,
    after: Annotated[UtcDatetime | None, Query(description="At or after this time.")] = None,
    before: Annotated[UtcDatetime | None, Query(description="Before this time.")] = None,
    cursor: Annotated[str | None, Query(pattern=r"^[0-9]{1,18}$")] = None,
    limit: Annotated[int, Query(ge=1, le=499)] = 50,
) -> AuditPage:
    store = (await services(request)).instances.store
    filters = AuditFilter(
        actor=actor, action=action, target_id=target_id, after=after, before=before
    )
    records = await store.list_audit(
        tenant, filters, limit=limit + 1, after_seq=int(cursor) if cursor else 0
    )
    page = records[:limit]
    more = len(records) > limit
    return AuditPage(
        items=[AuditRecordOut.of(r) for r in page],
        next_cursor=str(page[-1].seq) if more and page else None,
    )
