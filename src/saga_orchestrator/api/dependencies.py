"""What route handlers receive: the services of their app, and the caller's tenant."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from saga_orchestrator.api.audit import current_context
from saga_orchestrator.api.metrics import ApiMetrics
from saga_orchestrator.api.options import ApiOptions
from saga_orchestrator.api.participants import CallbackApi, ParticipantsApi
from saga_orchestrator.api.services import DefinitionService, HealthService, InstanceService
from saga_orchestrator.api.tenant import TenantLimitsApi
from saga_orchestrator.engine.cluster import ClusterMember


@dataclass(frozen=True, slots=True, kw_only=True)
class Services:
    """Everything the routes of one app use, kept on ``app.state`` (never a global)."""

    definitions: DefinitionService
    instances: InstanceService
    health: HealthService
    participants: ParticipantsApi
    callbacks: CallbackApi
    tenant_limits: TenantLimitsApi
    cluster: ClusterMember
    metrics: ApiMetrics
    options: ApiOptions
    default_tenant: str


# Coroutines, not functions: FastAPI would run plain functions in a thread pool.


async def services(request: Request) -> Services:
    return _services(request)


async def current_tenant(request: Request) -> str:
    """The tenant of this request: its bearer token's (see :mod:`.access`). Every route takes
    its tenant from here; no request body or parameter can name another."""
    return tenant_of(request)


def tenant_of(request: Request) -> str:
    """:func:`current_tenant` without a dependency of its own, for the routes on the hot path
    (each dependency FastAPI resolves costs about as much as a small route)."""
    principal = getattr(request.state, "principal", None)
    tenant: str = _services(request).default_tenant if principal is None else principal.tenant_id
    current_context().tenant_id = tenant
    return tenant


def services_of(request: Request) -> Services:
    """The app's services, without a dependency (see :func:`tenant_of`)."""
    return _services(request)


async def definition_service(request: Request) -> DefinitionService:
    return _services(request).definitions


async def instance_service(request: Request) -> InstanceService:
    return _services(request).instances


async def health_service(request: Request) -> HealthService:
    return _services(request).health


async def participants_api(request: Request) -> ParticipantsApi:
    return _services(request).participants


async def callback_api(request: Request) -> CallbackApi:
    return _services(request).callbacks


async def tenant_limits_api(request: Request) -> TenantLimitsApi:
    return _services(request).tenant_limits


def _services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found
