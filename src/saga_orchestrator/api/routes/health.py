"""Liveness, readiness and metrics, outside the versioned API prefix."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response
from fastapi.responses import PlainTextResponse

from saga_orchestrator.api.dependencies import Services, health_service, services
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
    response_class=PlainTextResponse,
    responses={200: {"description": "Prometheus text exposition format."}},
)
async def metrics(node: Annotated[Services, Depends(services)]) -> Response:
    return Response(node.metrics.render(), media_type=METRICS_MEDIA_TYPE)
