"""The caller's tenant's own limits as the API shows them: what is stored, what applies."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from saga_orchestrator.api.audit import audit_entry
from saga_orchestrator.security.limits import Limit, RequestLimits
from saga_orchestrator.security.tenant_limits import (
    LimitCeilings,
    StoredLimits,
    TenantLimits,
    TenantLimitsBook,
)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BucketOut(_Model):
    per_second: float
    burst: int

    @classmethod
    def of(cls, limit: Limit) -> BucketOut:
        return cls(per_second=limit.rate, burst=limit.burst)


class AppliedLimits(_Model):
    requests: BucketOut | None = Field(description="`null`: requests are not limited here.")
    starts: BucketOut | None = Field(description="`null`: starts are not limited here.")
    max_running_sagas: int | None = Field(description="`null`: no cap.")


class Ceilings(_Model):
    requests: BucketOut | None = Field(description="`null`: no ceiling but the API's bounds.")
    starts: BucketOut | None = Field(description="`null`: no ceiling but the API's bounds.")
    max_running_sagas: int | None = Field(description="`null`: no ceiling but the API's bounds.")

    @classmethod
    def of(cls, ceilings: LimitCeilings) -> Ceilings:
        return cls(
            requests=None if ceilings.requests is None else BucketOut.of(ceilings.requests),
            starts=None if ceilings.starts is None else BucketOut.of(ceilings.starts),
            max_running_sagas=ceilings.max_running_sagas,
        )


class TenantLimitsOut(_Model):
    tenant_id: str = Field(description="The caller's tenant (from the bearer token).")
    limits: TenantLimits = Field(
        description="The tenant's overrides as stored; a field left out keeps the node's default."
    )
    version: int | None = Field(
        description="Bumped by every change; `null` while none are stored (a reset starts over)."
    )
    updated_at: datetime | None = Field(description="When the overrides were last changed.")
    applied: AppliedLimits = Field(
        description=(
            "What the node that answered applies to the tenant now: its defaults with the "
            "overrides in their place, each no higher than its ceiling. Other nodes apply a "
            "change within seconds."
        )
    )
    ceilings: Ceilings = Field(
        description=(
            "The most the tenant's admins may set, from the node's operator: a `PUT` above one "
            "is refused, and an override stored above one (before it was lowered) applies as "
            "the ceiling."
        )
    )


class TenantLimitsApi:
    """Admin operations on the limits of the caller's tenant."""

    def __init__(
        self,
        book: TenantLimitsBook,
        *,
        request_defaults: RequestLimits | None,
        running_quota: Callable[[str], Awaitable[int | None]],
    ) -> None:
        self._book = book
        self._defaults = request_defaults
        self._running_quota = running_quota

    async def get(self, tenant_id: str) -> TenantLimitsOut:
        return await self._out(tenant_id, await self._book.stored(tenant_id))

    async def put(self, tenant_id: str, limits: TenantLimits) -> TenantLimitsOut:
        # Refused before anything is stored: a tenant's admin may not lift its own tenant's
        # limits past what the operator allows (the point of them is the other tenants).
        self._book.ceilings.check(limits, prefix="body.")
        audit = audit_entry(
            tenant_id,
            "tenant_limits.put",
            "tenant_limits",
            tenant_id,
            details={"limits": limits.model_dump(mode="json", exclude_none=True)},
        )
        return await self._out(tenant_id, await self._book.put(tenant_id, limits, audit=audit))

    async def reset(self, tenant_id: str) -> None:
        audit = audit_entry(tenant_id, "tenant_limits.delete", "tenant_limits", tenant_id)
        await self._book.reset(tenant_id, audit=audit)

    async def _out(self, tenant_id: str, stored: StoredLimits | None) -> TenantLimitsOut:
        limits = TenantLimits() if stored is None else stored.limits
        ceilings = self._book.ceilings
        applied = ceilings.clamp(limits)
        requests = None if self._defaults is None else applied.request_limits(self._defaults)
        return TenantLimitsOut(
            tenant_id=tenant_id,
            limits=limits,
            version=None if stored is None else stored.version,
            updated_at=None if stored is None else stored.updated_at,
            applied=AppliedLimits(
                requests=None if requests is None else BucketOut.of(requests.requests),
                starts=None if requests is None else BucketOut.of(requests.starts),
                max_running_sagas=await self._running_quota(tenant_id),
            ),
            ceilings=Ceilings.of(ceilings),
        )
