"""Who may call what: every route's rule, in one table you can read (semantics §6).

``viewer`` reads, ``operator`` also starts and acts on instances, ``admin`` also manages
definitions, participant services and the tenant's settings (each role includes the ones
before it). Completion
callbacks are authorized by the attempt's own completion token, not by a bearer token; health
checks and the API's description are public. A route missing from :data:`ACCESS` is refused
to everyone (and a test fails), so a new route cannot be left open by accident.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from fastapi import Request

from saga_orchestrator.api.audit import current_context
from saga_orchestrator.errors import Forbidden, RateLimited, Unauthenticated
from saga_orchestrator.security.limits import RateLimiter, RequestLimits, combined_headers
from saga_orchestrator.security.tenant_limits import TenantLimits
from saga_orchestrator.security.tokens import Authenticator, Principal, Role


class Public(enum.Enum):
    ANYONE = "anyone"
    """No credentials: liveness, readiness, the API's description."""
    COMPLETION_TOKEN = "completion token"
    """The attempt's completion token (checked by the route), no bearer token."""


Rule = Role | Public

V, OP, A = Role.VIEWER, Role.OPERATOR, Role.ADMIN
INSTANCE = "/api/v1/sagas/instances/{instance_id}"
SETTINGS = "/api/v1/tenant/limits"

ACCESS: Final[dict[tuple[str, str], Rule]] = {
    ("GET", "/health"): Public.ANYONE,
    ("GET", "/ready"): Public.ANYONE,
    ("GET", "/openapi.json"): Public.ANYONE,
    ("GET", "/docs"): Public.ANYONE,
    ("GET", "/docs/oauth2-redirect"): Public.ANYONE,
    ("GET", "/redoc"): Public.ANYONE,
    ("GET", "/metrics"): A,  # node-wide, every tenant's counters
    ("GET", "/api/v1/sagas/schema"): V,
    ("GET", "/api/v1/sagas/definitions"): V,
    ("POST", "/api/v1/sagas/definitions"): A,
    ("GET", "/api/v1/sagas/definitions/{name}"): V,
    ("GET", "/api/v1/sagas/definitions/{name}/{version}"): V,
    ("POST", "/api/v1/sagas/definitions/{name}/{version}/deprecate"): A,
    ("POST", "/api/v1/sagas/instances"): OP,
    ("GET", "/api/v1/sagas/instances"): V,
    ("GET", INSTANCE): V,
    ("GET", f"{INSTANCE}/events"): V,
    ("GET", f"{INSTANCE}/stream"): V,
    ("POST", f"{INSTANCE}/cancel"): OP,
    ("POST", f"{INSTANCE}/retry"): OP,
    ("POST", f"{INSTANCE}/steps/{{step}}/skip"): OP,
    ("POST", f"{INSTANCE}/resolve"): OP,
    ("POST", f"{INSTANCE}/steps/{{step}}/complete"): Public.COMPLETION_TOKEN,
    ("POST", f"{INSTANCE}/steps/{{step}}/fail"): Public.COMPLETION_TOKEN,
    ("POST", f"{INSTANCE}/steps/{{step}}/heartbeat"): Public.COMPLETION_TOKEN,
    ("GET", "/api/v1/participants"): A,
    ("GET", "/api/v1/participants/{name}"): A,
    ("PUT", "/api/v1/participants/{name}"): A,
    ("DELETE", "/api/v1/participants/{name}"): A,
    ("GET", "/api/v1/audit"): A,
    ("GET", "/api/v1/cluster/nodes"): A,
    ("GET", "/api/v1/cluster/quarantine"): A,
    ("POST", "/api/v1/cluster/quarantine/{instance_id}/release"): A,
    # Tenant settings are changed by admins. Reading the limits is a viewer's read: they hold
    # no secret, every caller learns them from the RateLimit-Policy of a 429 anyway, and a
    # client that knows them can pace itself instead of being refused.
    ("GET", SETTINGS): V,
    ("PUT", SETTINGS): A,
    ("DELETE", SETTINGS): A,
}


def rule_for(method: str, route: str) -> Rule | None:
    if method == "HEAD":
        method = "GET"
    return ACCESS.get((method, route))


@dataclass(frozen=True, slots=True)
class Access:
    """The app's gate: ``None`` authenticator means the embedding chose no authentication
    (every caller is an admin of the node's tenant); ``saga serve`` always sets one."""

    authenticator: Authenticator | None
    default_tenant: str
    default_actor: str = "api"
    limiter: RateLimiter | None = None
    limits: RequestLimits | None = None
    """The node's defaults."""
    overrides: Callable[[str], Awaitable[TenantLimits | None]] | None = None
    """A tenant's own limits, if it has any (cached: asked on every limited request)."""

    async def __call__(self, request: Request) -> Principal | None:
        route = getattr(request.scope.get("route"), "path", None)
        rule = rule_for(request.method, route) if route is not None else None
        if rule is None:
            raise Forbidden(f"{request.method} {route} has no access rule")
        if isinstance(rule, Public):
            return None
        if self.authenticator is None:
            principal = Principal(
                subject=self.default_actor,
                tenant_id=self.default_tenant,
                roles=frozenset({A}),
                token_id=None,
            )
        else:
            principal = await self.authenticator.authenticate(request.headers.get("authorization"))
        context = current_context()
        context.actor = principal.subject
        context.tenant_id = principal.tenant_id
        request.state.principal = principal
        if not principal.has(rule):
            raise Forbidden(f"this needs the {rule.value} role")
        await self._limit(principal, request.method, route)
        return principal

    async def _limit(self, principal: Principal, method: str, route: str | None) -> None:
        """Each tenant's requests, and its starts, come out of token buckets of their own:
        one tenant flooding the API is refused without slowing another's. The tenant's own
        limits, if it set any, replace the node's defaults."""
        if self.limiter is None or self.limits is None:
            return
        tenant = principal.tenant_id
        if route == SETTINGS:
            # Never the tenant's own limits here: one set too low must not lock its admins out
            # of raising it; and a bucket per caller, so no one else can drain theirs.
            settings = await self.limiter.check(
                tenant, "settings", self.limits.requests, partition=principal.subject
            )
            decisions = [settings]
        else:
            own = None if self.overrides is None else await self.overrides(tenant)
            limits = self.limits if own is None else own.request_limits(self.limits)
            decisions = [await self.limiter.check(tenant, "requests", limits.requests)]
            # A request already refused must not spend a start as well.
            starting = method == "POST" and route == "/api/v1/sagas/instances"
            if starting and decisions[0].allowed:
                decisions.append(await self.limiter.check(tenant, "starts", limits.starts))
        refused = [d for d in decisions if not d.allowed]
        if refused:
            raise RateLimited(
                f"tenant {principal.tenant_id!r} is over its {refused[0].policy} limit",
                combined_headers(decisions),
            )


def principal_of(request: Request) -> Principal:
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None:
        raise Unauthenticated("no credentials", error="invalid_request")
    return principal
