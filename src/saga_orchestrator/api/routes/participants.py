"""The participant service registry: where HTTP steps may go (the SSRF wall), per tenant."""

from __future__ import annotations

from typing import Annotated, Any, Final

from fastapi import APIRouter, Body, Depends, Path, Response, status

from saga_orchestrator.api.dependencies import current_tenant, participants_api
from saga_orchestrator.api.participants import ParticipantList, ParticipantOut, ParticipantsApi
from saga_orchestrator.api.problems import problem_responses
from saga_orchestrator.definition.models import NAME_PATTERN
from saga_orchestrator.definition.participants import ParticipantService

router = APIRouter(prefix="/api/v1/participants", tags=["participants"])

Tenant = Annotated[str, Depends(current_tenant)]
Participants = Annotated[ParticipantsApi, Depends(participants_api)]
Name = Annotated[str, Path(pattern=NAME_PATTERN, description="The service's name.")]

_ERRORS: Final[dict[int | str, dict[str, Any]]] = problem_responses(400, 404, 413, 422, 503)


@router.get("", summary="List the tenant's participant services", responses=_ERRORS)
async def list_participants(tenant: Tenant, participants: Participants) -> ParticipantList:
    return await participants.list(tenant)


@router.get("/{name}", summary="A participant service and its circuit breaker", responses=_ERRORS)
async def get_participant(name: Name, tenant: Tenant, participants: Participants) -> ParticipantOut:
    return await participants.get(tenant, name)


@router.put(
    "/{name}",
    summary="Register or replace a participant service",
    description=(
        "Loopback, link-local and private addresses are refused unless "
        "`allow_private_network` is true. Header values that are secrets are references, "
        "resolved at call time: `{secret: {file: path}}` (relative to the tenant's directory "
        "under the node's `SECRETS_DIR`; TLS files too) or `{secret: {env: SAGA_SECRET_NAME}}` "
        "(for the tenants the node allows). A credential header (`Authorization`, `Cookie`, "
        "names with `token`, `secret`, `password`, `api-key`...) must be a reference. A "
        "reference the tenant may not use is refused (422) and nothing is stored."
    ),
    responses={
        **_ERRORS,
        200: {"description": "Replaced (the version is bumped)."},
        201: {"description": "Created."},
    },
    status_code=status.HTTP_200_OK,
)
async def put_participant(
    name: Name,
    service: Annotated[ParticipantService, Body()],
    tenant: Tenant,
    participants: Participants,
    response: Response,
) -> ParticipantOut:
    saved, created = await participants.put(
        tenant, name, service.model_dump(mode="json", exclude_defaults=True)
    )
    if created:
        response.status_code = status.HTTP_201_CREATED
    return saved


@router.delete(
    "/{name}",
    summary="Remove a participant service (steps naming it then fail)",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=_ERRORS,
)
async def delete_participant(name: Name, tenant: Tenant, participants: Participants) -> None:
    await participants.delete(tenant, name)
