"""The API's options: one documented object, passed to :func:`~saga_orchestrator.api.create_app`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from saga_orchestrator.security.limits import RateLimiter, RequestLimits
    from saga_orchestrator.security.tokens import Authenticator


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiOptions:
    max_body_bytes: int = 1024 * 1024
    """Request bodies above this size are refused with 413, before any route reads them."""
    heartbeat_interval: float = 15.0
    """Seconds of silence after which an event stream sends a comment line, so that proxies
    and clients know the connection is alive."""
    stream_poll_interval: float = 2.0
    """How often a quiet event stream re-reads the store. Events written by another node reach
    a stream here through PostgreSQL notifications at once; this bounds the delay when a
    notification is lost."""
    retry_after: int = 5
    """Seconds announced in ``Retry-After`` when the database is unavailable (503)."""
    actor: str = "api"
    """Recorded as the actor of operator actions until requests carry an identity."""
    authenticator: Authenticator | None = None
    """Verifies bearer tokens. None: no authentication, every caller acts as an admin of the
    node's tenant (embedding, tests); ``saga serve`` always sets one."""
    rate_limiter: RateLimiter | None = None
    """Per-tenant request and start limits (None: unlimited)."""
    limits: RequestLimits | None = None
    """The node's default request and start limits of every tenant (None: unlimited); a
    tenant's admins may override them (``PUT /api/v1/tenant/limits``)."""
    metrics_token: str | None = field(default=None, repr=False)
    """The platform's scrape token: a request to ``GET /metrics`` whose bearer is this secret
    (not a JWT) sees every tenant's series, where a tenant admin sees its own tenant's. Refused
    by :func:`~saga_orchestrator.api.create_app` if short or guessable. None: no scraper."""
