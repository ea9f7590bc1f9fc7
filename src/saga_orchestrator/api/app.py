"""The app factory: a FastAPI app over a wired node, with no global state.

    async with Orchestrator(database_url, handlers=[...]) as node:
        app = create_app(node)
        await uvicorn.Server(uvicorn.Config(app)).serve()

The caller owns the orchestrator: the app's lifespan does not open or close it; it only stops
what the app itself started (the tasks that follow instances for the metrics).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from importlib.metadata import version as package_version

from fastapi import APIRouter, Depends, FastAPI
from fastapi.routing import APIRoute

from saga_orchestrator.api.access import START, Access
from saga_orchestrator.api.dependencies import Services
from saga_orchestrator.api.direct_start import DirectStart
from saga_orchestrator.api.edge import EdgeMiddleware
from saga_orchestrator.api.metrics import ApiMetrics
from saga_orchestrator.api.openapi import SagaApi
from saga_orchestrator.api.options import ApiOptions
from saga_orchestrator.api.participants import CallbackApi, ParticipantsApi
from saga_orchestrator.api.problems import AllowedMethods, ProblemHandlers
from saga_orchestrator.api.routes import (
    audit,
    callbacks,
    cluster,
    definitions,
    health,
    instances,
    operations,
    participants,
    stream,
    tenant,
)
from saga_orchestrator.api.services import DefinitionService, HealthService, InstanceService
from saga_orchestrator.api.tenant import TenantLimitsApi
from saga_orchestrator.api.wire_refusal import WireRefusals
from saga_orchestrator.core.state import SagaState
from saga_orchestrator.orchestrator import Orchestrator
from saga_orchestrator.security.tokens import StaticToken

log = logging.getLogger("saga_orchestrator.api")

DESCRIPTION = """\
Durable sagas for distributed transactions: register definitions, start instances, follow
their events, and act on the ones an operator must handle. Every error is an RFC 9457
`application/problem+json` document.
"""


def create_app(orchestrator: Orchestrator, options: ApiOptions | None = None) -> FastAPI:
    """The API of ``orchestrator``, which the caller opens before serving and closes after.

    Without ``options.authenticator`` (an embedding's choice; ``saga serve`` always has one)
    every caller is an admin of the orchestrator's tenant: said in a warning when the app is
    built, so it is never off silently."""
    options = options or ApiOptions()
    if options.authenticator is None:
        log.warning(
            "API authentication is off (no authenticator): every caller is an admin of tenant "
            "%r; serve this app only behind authentication of your own, or on loopback",
            orchestrator.tenant_id,
        )
    scrape_token = (
        None
        if options.metrics_token is None
        else StaticToken(options.metrics_token, name="metrics_token")
    )
    services = build_services(orchestrator, options)
    metrics = services.metrics

    def count_settled(state: SagaState) -> None:
        metrics.saga_finished(state.tenant_id, state.definition_name, state.status)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        orchestrator.engine.settled_listeners.append(count_settled)
        try:
            yield
        finally:
            orchestrator.engine.settled_listeners.remove(count_settled)

    access = Access(
        options.authenticator,
        orchestrator.tenant_id,
        options.actor,
        options.rate_limiter,
        options.limits,
        orchestrator.tenant_limits.overrides,
        orchestrator.tenant_limits.known_overrides,
        metrics_token=scrape_token,
    )
    app = SagaApi(
        title="Saga Orchestrator",
        version=package_version("saga-orchestrator"),
        description=DESCRIPTION,
        lifespan=lifespan,
        dependencies=[Depends(access)],
    )
    app.state.services = services
    modules = (
        definitions,
        instances,
        stream,
        operations,
        callbacks,
        participants,
        audit,
        cluster,
        tenant,
        health,
    )
    routers = [module.router for module in modules]
    problems = ProblemHandlers(options.retry_after, allowed_methods(routers))
    problems.install(app)
    for router in routers:
        app.include_router(router)
    direct_start = DirectStart(
        access=access,
        instances=services.instances,
        problems=problems,
        route=start_route(instances.router),
    )
    app.state.wire_refusals = WireRefusals(access, services.metrics, options.max_body_bytes)
    app.add_middleware(
        EdgeMiddleware,
        access=access,
        metrics=services.metrics,
        store=orchestrator.store,
        default_actor=options.actor,
        max_body_bytes=options.max_body_bytes,
        direct_start=direct_start,
    )
    return app


def start_route(router: APIRouter) -> APIRoute:
    """The route :class:`.DirectStart` stands in for."""
    for route in router.routes:
        if isinstance(route, APIRoute) and route.path == START and "POST" in (route.methods or ()):
            return route
    raise LookupError(f"no POST {START} route")


def allowed_methods(routers: Sequence[APIRouter]) -> AllowedMethods:
    routes = [
        (route.path_regex, route.methods or set())
        for router in routers
        for route in router.routes
        if isinstance(route, APIRoute)
    ]

    def allowed(path: str) -> list[str]:
        return sorted({m for regex, methods in routes if regex.match(path) for m in methods})

    return allowed


def build_services(orchestrator: Orchestrator, options: ApiOptions) -> Services:
    metrics = ApiMetrics()
    metrics.watch_breakers(orchestrator.breaker_snapshots)
    if options.rate_limiter is not None:
        metrics.watch_limiter(options.rate_limiter)
    relay = orchestrator.relay
    if relay is not None:
        metrics.watch_relay(lambda: relay.counters)
    return Services(
        definitions=DefinitionService(orchestrator.definitions, orchestrator.store),
        instances=InstanceService(
            engine=orchestrator.engine,
            store=orchestrator.store,
            clock=orchestrator.clock,
            on_started=metrics.saga_started,
        ),
        health=HealthService(orchestrator.store),
        participants=ParticipantsApi(orchestrator.participants, orchestrator.breaker_snapshots),
        callbacks=CallbackApi(orchestrator.engine),
        tenant_limits=TenantLimitsApi(
            orchestrator.tenant_limits,
            request_defaults=options.limits if options.rate_limiter is not None else None,
            running_quota=orchestrator.running_quota,
        ),
        cluster=orchestrator.member,
        metrics=metrics,
        options=options,
        default_tenant=orchestrator.tenant_id,
    )
