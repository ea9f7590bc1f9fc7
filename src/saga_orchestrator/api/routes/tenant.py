"""The caller's tenant's own settings: its limits (read: viewer; change: admin).

The tenant is always the bearer token's: no path or body names one, so no request can read or
change another tenant's limits.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

from fastapi import APIRouter, Body, Depends, status

from saga_orchestrator.api.dependencies import current_tenant, tenant_limits_api
from saga_orchestrator.api.problems import problem_responses
from saga_orchestrator.api.tenant import TenantLimitsApi, TenantLimitsOut
from saga_orchestrator.security.tenant_limits import TenantLimits

router = APIRouter(prefix="/api/v1/tenant", tags=["tenant"])

Tenant = Annotated[str, Depends(current_tenant)]
Limits = Annotated[TenantLimitsApi, Depends(tenant_limits_api)]

_READ_ERRORS: Final[dict[int | str, dict[str, Any]]] = problem_responses(503)
_WRITE_ERRORS: Final[dict[int | str, dict[str, Any]]] = problem_responses(
    400,
    413,
    422,
    503,
    s422=(
        "The body is invalid, or asks for more than a ceiling; `violations` names each field "
        "(with the value asked and the ceiling)."
    ),
)


@router.get(
    "/limits",
    summary="The tenant's limits: its overrides, what applies, and their ceilings",
    responses=_READ_ERRORS,
)
async def get_limits(tenant: Tenant, limits: Limits) -> TenantLimitsOut:
    return await limits.get(tenant)


@router.put(
    "/limits",
    summary="Set the tenant's limits (replacing its previous overrides)",
    description=(
        "Each of `requests`, `starts` and `max_running_sagas` overrides the node's default "
        "for this tenant; one left out keeps the default. None may exceed its ceiling, set by "
        "the node's operator (`GET` shows them): a tenant's admin may lower its limits, and "
        "raise them only as far as the operator allows. The node that answers applies the "
        "change at once, every other node within 5 seconds."
    ),
    responses=_WRITE_ERRORS,
)
async def put_limits(
    body: Annotated[TenantLimits, Body()], tenant: Tenant, limits: Limits
) -> TenantLimitsOut:
    return await limits.put(tenant, body)


@router.delete(
    "/limits",
    summary="Reset the tenant's limits to the node's defaults",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=_READ_ERRORS,
)
async def delete_limits(tenant: Tenant, limits: Limits) -> None:
    await limits.reset(tenant)
