"""Saga definitions: register (JSON or YAML), list, read, deprecate; the language's schema."""

from __future__ import annotations

from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from starlette.exceptions import HTTPException

from saga_orchestrator.api.dependencies import current_tenant, definition_service
from saga_orchestrator.api.problems import problem_responses
from saga_orchestrator.api.schemas import (
    PREFIX_PATTERN,
    VERSION_PATTERN,
    DefinitionDetail,
    DefinitionList,
    DefinitionRegistered,
    DefinitionSummary,
)
from saga_orchestrator.api.services import (
    DefinitionService,
    Format,
    description_of,
    document_of,
)
from saga_orchestrator.definition.models import NAME_PATTERN
from saga_orchestrator.engine.definitions import Registration
from saga_orchestrator.store import DefinitionRecord

router = APIRouter(prefix="/api/v1/sagas", tags=["definitions"])

Tenant = Annotated[str, Depends(current_tenant)]
Definitions = Annotated[DefinitionService, Depends(definition_service)]
Name = Annotated[str, Path(pattern=NAME_PATTERN, description="The definition's name.")]
Version = Annotated[
    str, Path(pattern=VERSION_PATTERN, description="A semantic version such as `1.2.0`.")
]

DEFINITION_SCHEMA_REF: Final = "#/components/schemas/SagaDefinition"
_EXAMPLE: Final = {
    "name": "order",
    "version": "1.0.0",
    "description": "Reserve stock, charge the card, ship; undo in reverse on failure.",
    "steps": [
        {"name": "reserve", "action": "inventory.reserve", "compensation": "inventory.release"},
        {"name": "charge", "action": "payment.charge", "compensation": "payment.refund"},
        {"name": "ship", "action": "shipping.ship", "kind": "pivot"},
    ],
}
_YAML_TYPES: Final = frozenset({"application/yaml", "text/yaml", "application/x-yaml"})
_BODY: Final[dict[str, Any]] = {
    "requestBody": {
        "required": True,
        "description": "A definition in the saga language, as JSON or YAML.",
        "content": {
            "application/json": {"schema": {"$ref": DEFINITION_SCHEMA_REF}, "example": _EXAMPLE},
            **{media: {"schema": {"$ref": DEFINITION_SCHEMA_REF}} for media in sorted(_YAML_TYPES)},
        },
    }
}
_REGISTERED_LOCATION: Final = {
    "Location": {"description": "The version's URL.", "schema": {"type": "string"}}
}


@router.post(
    "/definitions",
    status_code=201,
    summary="Register a definition version",
    response_model=DefinitionRegistered,
    openapi_extra=_BODY,
    responses={
        201: {"description": "A new version was registered.", "headers": _REGISTERED_LOCATION},
        200: {
            "model": DefinitionRegistered,
            "description": "This exact body was already registered (idempotent).",
        },
        **problem_responses(
            409,
            413,
            415,
            422,
            503,
            s409="The version exists with another body: versions are immutable.",
            s422="The definition is invalid; each violation names the node and the rule.",
        ),
    },
)
async def register_definition(
    request: Request, response: Response, tenant: Tenant, definitions: Definitions
) -> DefinitionRegistered:
    body = await request.body()
    registered = await definitions.register(tenant, body, _format(request))
    if registered.outcome is Registration.IDENTICAL:
        response.status_code = 200
    else:
        response.headers["Location"] = (
            f"{router.prefix}/definitions/{registered.name}/{registered.version}"
        )
    return DefinitionRegistered(
        name=registered.name,
        version=registered.version,
        status=registered.outcome.value,
        digest=registered.digest,
    )


def _format(request: Request) -> Format | None:
    content_type = request.headers.get("content-type")
    if not content_type:
        return None
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        return "json"
    if media in _YAML_TYPES or media.endswith("+yaml"):
        return "yaml"
    raise HTTPException(415, f"send application/json or application/yaml, not {media!r}")


@router.get(
    "/definitions",
    summary="The latest version of each definition",
    responses=problem_responses(422, 503),
)
async def list_definitions(
    tenant: Tenant,
    definitions: Definitions,
    prefix: Annotated[
        str, Query(pattern=PREFIX_PATTERN, description="Only names starting with this.")
    ] = "",
) -> DefinitionList:
    records = await definitions.latest(tenant, prefix)
    return DefinitionList(
        items=[DefinitionSummary.of(record, description_of(record)) for record in records]
    )


@router.get(
    "/definitions/{name}",
    summary="Every version of a definition, lowest first",
    responses=problem_responses(404, 422, 503),
)
async def list_versions(name: Name, tenant: Tenant, definitions: Definitions) -> DefinitionList:
    records = await definitions.versions(tenant, name)
    return DefinitionList(
        items=[DefinitionSummary.of(record, description_of(record)) for record in records]
    )


@router.get(
    "/definitions/{name}/{version}",
    summary="One definition version, with its body",
    responses=problem_responses(404, 422, 503),
)
async def get_definition(
    name: Name, version: Version, tenant: Tenant, definitions: Definitions
) -> DefinitionDetail:
    return _detail(await definitions.get(tenant, name, version))


@router.post(
    "/definitions/{name}/{version}/deprecate",
    summary="Deprecate a version: no new starts, running instances go on",
    responses=problem_responses(404, 422, 503),
)
async def deprecate_definition(
    name: Name, version: Version, tenant: Tenant, definitions: Definitions
) -> DefinitionDetail:
    return _detail(await definitions.deprecate(tenant, name, version))


@router.get(
    "/schema",
    summary="The JSON Schema of the saga language",
    response_description="A JSON Schema (draft 2020-12) of a definition document.",
)
async def language_schema(definitions: Definitions) -> dict[str, Any]:
    return definitions.language_schema()


def _detail(record: DefinitionRecord) -> DefinitionDetail:
    document = document_of(record)
    return DefinitionDetail(
        **DefinitionSummary.of(record, description_of(record)).model_dump(),
        definition=document,
    )
