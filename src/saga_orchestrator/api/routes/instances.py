"""Saga instances: start (idempotent), list with filters and a cursor, read, and the history."""

from __future__ import annotations

import uuid
from typing import Annotated, Final

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response

from saga_orchestrator.api.dependencies import (
    current_tenant,
    instance_service,
    services_of,
    tenant_of,
)
from saga_orchestrator.api.problems import problem_responses
from saga_orchestrator.api.schemas import (
    KEY_PATTERN,
    MAX_SEQ,
    VERSION_PATTERN,
    EventPage,
    HistoryEvent,
    InstanceDetail,
    InstancePage,
    InstanceSummary,
    StartedInstance,
    StartRequest,
    UtcDatetime,
)
from saga_orchestrator.api.services import InstanceService
from saga_orchestrator.core.status import InstanceStatus
from saga_orchestrator.definition.models import NAME_PATTERN
from saga_orchestrator.store import InstanceFilter

router = APIRouter(prefix="/api/v1/sagas/instances", tags=["instances"])

Tenant = Annotated[str, Depends(current_tenant)]
Instances = Annotated[InstanceService, Depends(instance_service)]
InstanceId = Annotated[uuid.UUID, Path(description="The instance's id (a UUID).")]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        pattern=KEY_PATTERN,
        description="Starts with the same key and body return the same instance.",
    ),
]
CURSOR_PATTERN: Final = r"^[A-Za-z0-9_-]{1,512}$"
_LOCATION: Final = {
    "Location": {"description": "The instance's URL.", "schema": {"type": "string"}}
}


@router.post(
    "",
    status_code=201,
    summary="Start a saga instance",
    response_model=StartedInstance,
    responses={
        201: {"description": "Started; the start is durable.", "headers": _LOCATION},
        200: {
            "model": StartedInstance,
            "description": "The Idempotency-Key already started this instance, with this body.",
            "headers": _LOCATION,
        },
        **problem_responses(
            400,
            404,
            409,
            413,
            422,
            503,
            s404="No such saga, or no usable (non-deprecated) version matches.",
            s409="A start with this Idempotency-Key is still in progress: retry shortly.",
            s422="Invalid request, context failing the input schema, or an Idempotency-Key "
            "already used with another body.",
        ),
    },
)
async def start_instance(
    body: StartRequest,
    request: Request,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> StartedInstance:
    # The tenant and the service are read here, not through dependencies: this is the hot
    # route, and each dependency FastAPI resolves costs a good part of what the start does.
    tenant = tenant_of(request)
    instances = services_of(request).instances
    started = await instances.start(
        tenant,
        body.saga_name,
        version=body.version,
        context=body.context,
        idempotency_key=idempotency_key,
    )
    result = started.result
    if not result.created:
        response.status_code = 200
    response.headers["Location"] = f"{router.prefix}/{result.instance_id}"
    return StartedInstance(
        id=result.instance_id,
        saga_name=result.definition_name,
        version=result.definition_version,
        status=started.status,
    )


@router.get(
    "",
    summary="List instances, newest first",
    description="Filters combine; time windows are half-open (`*_after` inclusive, "
    "`*_before` exclusive). Pages follow a stable order (created_at, then id, descending): "
    "pass `next_cursor` back as `cursor` to get the next page.",
    responses=problem_responses(422, 503),
)
async def list_instances(
    *,
    tenant: Tenant,
    instances: Instances,
    status: InstanceStatus | None = None,
    saga_name: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
    version: Annotated[str | None, Query(pattern=VERSION_PATTERN)] = None,
    created_after: UtcDatetime | None = None,
    created_before: UtcDatetime | None = None,
    updated_after: UtcDatetime | None = None,
    updated_before: UtcDatetime | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(pattern=CURSOR_PATTERN)] = None,
) -> InstancePage:
    filters = InstanceFilter(
        status=status,
        definition_name=saga_name,
        definition_version=version,
        created_after=created_after,
        created_before=created_before,
        updated_after=updated_after,
        updated_before=updated_before,
    )
    page = await instances.list_instances(tenant, filters, limit=limit, cursor=cursor)
    return InstancePage(
        items=[InstanceSummary.of(record) for record in page.items],
        next_cursor=page.next_cursor,
    )


@router.get(
    "/{instance_id}",
    summary="An instance: status, steps, attempts, timings, outputs, errors, compensation",
    responses=problem_responses(404, 422, 503),
)
async def get_instance(
    instance_id: InstanceId, tenant: Tenant, instances: Instances
) -> InstanceDetail:
    return InstanceDetail.of(await instances.get(tenant, str(instance_id)))


@router.get(
    "/{instance_id}/events",
    summary="The instance's history, in sequence order",
    responses=problem_responses(404, 422, 503),
)
async def list_events(
    instance_id: InstanceId,
    tenant: Tenant,
    instances: Instances,
    after: Annotated[int, Query(ge=0, le=MAX_SEQ, description="Events after this seq.")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> EventPage:
    events, more = await instances.events(tenant, str(instance_id), after=after, limit=limit)
    return EventPage(
        items=[HistoryEvent.of(event) for event in events],
        next_after=events[-1].seq if more else None,
    )
