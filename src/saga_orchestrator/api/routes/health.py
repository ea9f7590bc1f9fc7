"""Liveness, readiness and metrics, outside the versioned API prefix."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import PlainTextResponse

from saga_orchestrator.api.access import principal_of, sees_every_tenant
from saga_orchestrator.api.dependencies import health_service, services_of
from saga_orchestrator.api.metrics import METRICS_MEDIA_TYPE
from saga_orchestrator.api.problems import problem_responses
from saga_orchestrator.api.schemas import Liveness, Readiness
from saga_orchestrator.api.services import HealthService

router = APIRouter(tags=["operations"])


@router.get("/health", summary="Liveness: the process serves requests")
async def health() -> Liveness:
    return Liveness()


@router.get(
    "/ready",
    summary="Readiness: the database answers and its schema is current",
    responses=problem_responses(
        503, s503="The database is unreachable or its schema is not the expected version."
    ),
)
async def ready(health: Annotated[HealthService, Depends(health_service)]) -> Readiness:
    return Readiness(schema_version=await health.ready())


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    description="A tenant admin sees its own tenant's series (samples labelled `tenant`) and "
    "the node-wide ones (HTTP requests, rate limiter); the platform's scraper, whose bearer "
    "is the node's `METRICS_TOKEN` (not a JWT), sees every tenant's.",
    response_class=PlainTextResponse,
    responses={200: {"description": "Prometheus text exposition format."}},
)
async def metrics(request: Request) -> Response:
    node = services_of(request).metrics
    if sees_every_tenant(request):
        body = node.render_all()
    else:
        # principal_of refuses a request Access did not authenticate: never everything.
        body = node.render_tenant(principal_of(request).tenant_id)
    return Response(body, media_type=METRICS_MEDIA_TYPE)
