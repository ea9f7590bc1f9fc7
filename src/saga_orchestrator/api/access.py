"""Who may call what: every route's rule, in one table you can read (semantics §6).

``viewer`` reads, ``operator`` also starts and acts on instances, ``admin`` also manages
definitions, participant services and the tenant's settings (each role includes the ones
before it). Completion
callbacks are authorized by the attempt's own completion token, not by a bearer token; health
checks and the API's description are public. A route missing from :data:`ACCESS` is refused
to everyone (and a test fails), so a new route cannot be left open by accident.

``GET /metrics`` takes one more credential: the platform's scrape token (``METRICS_TOKEN``), a
static bearer secret that is not a JWT and names no tenant. It sees every tenant's series; a
tenant admin sees its own tenant's and the node-wide ones (:mod:`.metrics`). The scrape token
is accepted on that route only: anywhere else it is a malformed token, 401 like any other.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

from fastapi import Request

from saga_orchestrator.api.audit import current_context
from saga_orchestrator.errors import Forbidden, RateLimited, Unauthenticated
from saga_orchestrator.security.limits import (
    Bucket,
    Decision,
    RateLimiter,
    RequestLimits,
    bucket_key,
    combined_headers,
)
from saga_orchestrator.security.tenant_limits import NOT_CACHED, NotCached, TenantLimits
from saga_orchestrator.security.tokens import Authenticator, Principal, Role, StaticToken


class Public(enum.Enum):
    ANYONE = "anyone"
    """No credentials: liveness, readiness, the API's description."""
    COMPLETION_TOKEN = "completion token"
    """The attempt's completion token (checked by the route), no bearer token."""


Rule = Role | Public

V, OP, A = Role.VIEWER, Role.OPERATOR, Role.ADMIN
START: Final = "/api/v1/sagas/instances"
INSTANCE = "/api/v1/sagas/instances/{instance_id}"
SETTINGS = "/api/v1/tenant/limits"
METRICS: Final = "/metrics"
SCRAPER: Final = "metrics-scraper"
"""The actor of requests made with the scrape token (in logs; they change nothing)."""

ACCESS: Final[dict[tuple[str, str], Rule]] = {
    ("GET", "/health"): Public.ANYONE,
    ("GET", "/ready"): Public.ANYONE,
    ("GET", "/openapi.json"): Public.ANYONE,
    ("GET", "/docs"): Public.ANYONE,
    ("GET", "/docs/oauth2-redirect"): Public.ANYONE,
    ("GET", "/redoc"): Public.ANYONE,
    # An admin sees its own tenant's series; the platform's scrape token (not a role: see
    # the module's docstring) sees every tenant's.
    ("GET", METRICS): A,
    ("GET", "/api/v1/sagas/schema"): V,
    ("GET", "/api/v1/sagas/definitions"): V,
    ("POST", "/api/v1/sagas/definitions"): A,
    ("GET", "/api/v1/sagas/definitions/{name}"): V,
    ("GET", "/api/v1/sagas/definitions/{name}/{version}"): V,
    ("POST", "/api/v1/sagas/definitions/{name}/{version}/deprecate"): A,
    ("POST", START): OP,
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
    known_overrides: Callable[[str], TenantLimits | NotCached | None] | None = None
    """What ``overrides`` would answer from its cache alone (for :meth:`refusal_now`)."""
    metrics_token: StaticToken | None = field(default=None, repr=False)
    """The platform's scrape token: every tenant's series on ``GET /metrics``, nothing else."""

    async def __call__(self, request: Request) -> Principal | None:
        route = getattr(request.scope.get("route"), "path", None)
        authorization = request.headers.get("authorization")
        if self.scrapes(request.method, route, authorization):
            # No tenant's buckets to spend from: the scraper is the platform's, not a tenant's.
            current_context().actor = SCRAPER
            request.state.every_tenant = True
            return None
        principal = await self.admit(request.method, route, authorization)
        if principal is not None:
            request.state.principal = principal
            # Without authentication there is no boundary between callers to keep: the
            # embedding sees what its node does.
            request.state.every_tenant = self.authenticator is None
        return principal

    def scrapes(self, method: str, route: str | None, authorization: str | None) -> bool:
        """Whether this is the platform's scraper reading ``/metrics`` (and only that route:
        elsewhere its token goes to the authenticator, which refuses it)."""
        return (
            self.metrics_token is not None
            and route == METRICS
            and method in ("GET", "HEAD")
            and self.metrics_token.matches(authorization)
        )

    async def admit(
        self, method: str, route: str | None, authorization: str | None
    ) -> Principal | None:
        """The caller of ``method`` on the route template ``route``, once its token, role and
        rate limits let it in (``None`` for a public route); raises the refusal otherwise."""
        rule = rule_for(method, route) if route is not None else None
        if rule is None:
            raise Forbidden(f"{method} {route} has no access rule")
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
            principal = await self.authenticator.authenticate(authorization)
        context = current_context()
        context.actor = principal.subject
        context.tenant_id = principal.tenant_id
        if not principal.has(rule):
            raise Forbidden(f"this needs the {rule.value} role")
        await self._limit(principal, method, route)
        return principal

    async def _limit(self, principal: Principal, method: str, route: str | None) -> None:
        """Each tenant's requests, and its starts, come out of token buckets of their own:
        one tenant flooding the API is refused without slowing another's. The tenant's own
        limits, if it set any, replace the node's defaults."""
        if self.limiter is None or self.limits is None:
            return
        buckets = await self._buckets(principal, method, route, self.limits)
        # One chain, one round trip: a request already refused must not spend a start as well.
        decisions = await self.limiter.check_chain(buckets)
        if not decisions[-1].allowed:
            raise self.refusal(principal, decisions)

    async def _buckets(
        self, principal: Principal, method: str, route: str | None, defaults: RequestLimits
    ) -> list[Bucket]:
        tenant = principal.tenant_id
        if route == SETTINGS:
            # Never the tenant's own limits here: one set too low must not lock its admins out
            # of raising it; and a bucket per caller, so no one else can drain theirs.
            key = bucket_key(tenant, "settings", principal.subject)
            return [Bucket(key, defaults.requests, "settings")]
        own = None if self.overrides is None else await self.overrides(tenant)
        return _tenant_buckets(principal, method, route, defaults, own)

    @staticmethod
    def refusal(principal: Principal, decisions: list[Decision]) -> RateLimited:
        policy = decisions[-1].policy
        who = f"tenant {principal.tenant_id!r}"
        if policy == "principal":
            who = f"caller {principal.subject!r} of {who}"
        return RateLimited(f"{who} is over its {policy} limit", combined_headers(decisions))

    async def known_refusal(
        self, method: str, path: str, authorization: str | None
    ) -> tuple[Principal, RateLimited] | None:
        """The 429 of a start by a caller whose token verified before and whose tenant the
        limiter already knows it refuses (see :meth:`.RateLimiter.refusal_if_known`), found
        without routing, dependencies or a signature check: what :meth:`__call__` would raise
        for that request, at a fraction of the cost. ``None``: let the request through, and
        :meth:`__call__` decides as usual (an unknown or expired token, a missing role, a
        tenant not known to be over its limits, any other route).

        Only the start route is answered here: it is the one a flood goes for, and its rule
        and buckets are known from the method and path alone."""
        principal = self._known_starter(method, path, authorization)
        if principal is None or self.limiter is None or self.limits is None:
            return None
        buckets = await self._buckets(principal, method, START, self.limits)
        decisions = await self.limiter.refusal_if_known(buckets)
        if decisions is None:
            return None
        return principal, self.refusal(principal, decisions)

    def refusal_now(
        self, method: str, path: str, authorization: str | None
    ) -> tuple[Principal, RateLimited] | None:
        """:meth:`known_refusal`'s answer when this node has it without a round trip (the
        token's principal, the tenant's limits and the refusal known, the buckets before it
        spent from memory): a caller that cannot await gets it at once. ``None`` otherwise."""
        principal = self._known_starter(method, path, authorization)
        if principal is None or self.limiter is None or self.limits is None:
            return None
        own = None if self.overrides is None else self._known_overrides(principal.tenant_id)
        if own is NOT_CACHED:
            return None
        buckets = _tenant_buckets(principal, method, START, self.limits, own)
        decisions = self.limiter.refusal_known_now(buckets)
        if decisions is None:
            return None
        return principal, self.refusal(principal, decisions)

    def _known_starter(self, method: str, path: str, authorization: str | None) -> Principal | None:
        """The caller of a start, if its token verified before and it may start: the only
        requests refused ahead of routing (``None`` also when nothing limits starts)."""
        if method != "POST" or path != START or self.authenticator is None:
            return None
        if self.limiter is None or self.limits is None:
            return None
        principal = self.authenticator.cached(authorization)
        return principal if principal is not None and principal.has(OP) else None

    def _known_overrides(self, tenant: str) -> TenantLimits | NotCached | None:
        return NOT_CACHED if self.known_overrides is None else self.known_overrides(tenant)


def _tenant_buckets(
    principal: Principal,
    method: str,
    route: str | None,
    defaults: RequestLimits,
    own: TenantLimits | None,
) -> list[Bucket]:
    """The buckets a request of ``principal`` takes from: its tenant's requests', its own
    (a caller's share) when there is a per-caller limit, and its tenant's starts' too for a
    start, shaped by the tenant's own limits if it has any."""
    tenant = principal.tenant_id
    limits = defaults if own is None else own.request_limits(defaults)
    buckets = [Bucket(bucket_key(tenant, "requests"), limits.requests, "requests")]
    if limits.principal is not None:
        key = bucket_key(tenant, "principal", principal.subject)
        buckets.append(Bucket(key, limits.principal, "principal"))
    if method == "POST" and route == START:
        buckets.append(Bucket(bucket_key(tenant, "starts"), limits.starts, "starts"))
    return buckets


def sees_every_tenant(request: Request) -> bool:
    """Whether :class:`Access` let this request in as one that may see every tenant's data:
    the scraper, or any caller of an app without authentication. False unless it said so."""
    return getattr(request.state, "every_tenant", False) is True


def principal_of(request: Request) -> Principal:
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None:
        raise Unauthenticated("no credentials", error="invalid_request")
    return principal
