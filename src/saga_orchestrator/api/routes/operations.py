"""Operator actions on an instance: each needs a reason and is recorded in its history."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Path

from saga_orchestrator.api.dependencies import current_tenant, instance_service
from saga_orchestrator.api.problems import problem_responses
from saga_orchestrator.api.schemas import InstanceDetail, OperatorAction
from saga_orchestrator.api.services import InstanceService
from saga_orchestrator.definition.models import NAME_PATTERN

router = APIRouter(prefix="/api/v1/sagas/instances", tags=["operator actions"])

Tenant = Annotated[str, Depends(current_tenant)]
Instances = Annotated[InstanceService, Depends(instance_service)]
InstanceId = Annotated[uuid.UUID, Path(description="The instance's id (a UUID).")]
Step = Annotated[str, Path(pattern=NAME_PATTERN, description="The node to skip.")]

_ERRORS: Final[dict[int | str, dict[str, Any]]] = problem_responses(
    400,
    404,
    409,
    413,
    422,
    503,
    s409="The instance's state does not allow this action.",
    s422="Invalid request (a `reason` is required).",
)


@router.post(
    "/{instance_id}/cancel",
    summary="Cancel a running saga: it compensates, then ends cancelled",
    responses=_ERRORS,
)
async def cancel_instance(
    instance_id: InstanceId, action: OperatorAction, tenant: Tenant, instances: Instances
) -> InstanceDetail:
    return InstanceDetail.of(await instances.cancel(tenant, str(instance_id), action.reason))


@router.post(
    "/{instance_id}/retry",
    summary="Retry the failed step or compensation of a parked (failed) saga",
    responses=_ERRORS,
)
async def retry_instance(
    instance_id: InstanceId, action: OperatorAction, tenant: Tenant, instances: Instances
) -> InstanceDetail:
    return InstanceDetail.of(await instances.retry(tenant, str(instance_id), action.reason))


@router.post(
    "/{instance_id}/steps/{step}/skip",
    summary="Skip the node a parked saga stopped on (recorded as manual)",
    responses=_ERRORS,
)
async def skip_step(
    instance_id: InstanceId,
    step: Step,
    action: OperatorAction,
    tenant: Tenant,
    instances: Instances,
) -> InstanceDetail:
    view = await instances.skip(tenant, str(instance_id), step, action.reason)
    return InstanceDetail.of(view)


@router.post(
    "/{instance_id}/resolve",
    summary="Mark a parked saga resolved by hand",
    responses=_ERRORS,
)
async def resolve_instance(
    instance_id: InstanceId, action: OperatorAction, tenant: Tenant, instances: Instances
) -> InstanceDetail:
    return InstanceDetail.of(await instances.resolve(tenant, str(instance_id), action.reason))
