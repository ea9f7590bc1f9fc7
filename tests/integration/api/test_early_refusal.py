"""A start by a tenant the limiter already knows is over its limits is refused by the edge
layer, before routing and dependency resolution: the same 429 (problem document, request id,
``Retry-After``, ``RateLimit``, ``RateLimit-Policy``) as the full path gives, for that tenant
only, and never for a caller the full path would answer otherwise (an expired token, a role
that may not start).

Which path answered is told by the authenticator: the edge layer only reads its cache, the full
path calls :meth:`Authenticator.authenticate`."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import httpx
import jwt
import pytest_asyncio

from saga_orchestrator.api import create_app
from saga_orchestrator.orchestrator import Orchestrator
from saga_orchestrator.security.limits import Limit, RateLimiter, RequestLimits
from saga_orchestrator.security.tokens import (
    Authenticator,
    AuthSettings,
    Principal,
    Role,
    generate_secret,
    mint_token,
)
from tests.integration.api.support import FAST_OPTIONS, INSTANCES
from tests.integration.engine.support import Participants

SECRET = generate_secret()
ORDER = {"name": "order", "version": "1.0.0", "steps": [{"name": "a", "action": "reserve"}]}
LIMITS = RequestLimits(requests=Limit(rate=1000, burst=1000), starts=Limit(rate=0.01, burst=2))
"""Starts refill one token per 100 s: what is admitted is the burst, however slow the run."""
BODY = {"saga_name": "order", "context": {}}


class CountingAuthenticator(Authenticator):
    """Counts the calls of the full path (the edge layer only reads the cache)."""

    def __init__(self, settings: AuthSettings) -> None:
        super().__init__(settings)
        self.calls = 0

    async def authenticate(self, authorization_header: str | None) -> Principal:
        self.calls += 1
        return await super().authenticate(authorization_header)


def token(tenant: str, role: Role = Role.OPERATOR, jti: str = "one") -> dict[str, str]:
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": f"{tenant}-user",
        "tenant": tenant,
        "roles": [role.value],
        "jti": jti,
    }
    claims |= {"iat": now, "exp": now + 600}
    return {"Authorization": f"Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}"}


@dataclass
class Api:
    client: httpx.AsyncClient
    authenticator: CountingAuthenticator
    limiter: RateLimiter


@pytest_asyncio.fixture
async def api(sqlite_url: str) -> AsyncIterator[Api]:
    node = Orchestrator(sqlite_url, handlers=Participants(("reserve",)).registry())
    authenticator = CountingAuthenticator(AuthSettings(hmac_secret=SECRET, leeway=0))
    limiter = RateLimiter(None)
    options = replace(
        FAST_OPTIONS, authenticator=authenticator, rate_limiter=limiter, limits=LIMITS
    )
    app = create_app(node, options)
    async with node, app.router.lifespan_context(app):
        for tenant in ("flood", "calm"):
            node.tenant_id = tenant
            await node.register(ORDER)
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://saga.test") as client:
            yield Api(client, authenticator, limiter)
    await limiter.aclose()


async def start(api: Api, headers: dict[str, str]) -> httpx.Response:
    return await api.client.post(INSTANCES, json=BODY, headers=headers)


async def test_a_tenant_over_its_starts_is_refused_early_with_the_full_headers(api: Api) -> None:
    flood = token("flood")
    assert [(await start(api, flood)).status_code for _ in range(2)] == [201, 201]
    full_path_calls = api.authenticator.calls

    refused = await start(api, {**flood, "X-Request-Id": "flood-3"})

    assert api.authenticator.calls == full_path_calls  # answered before the dependencies
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.headers["x-request-id"] == "flood-3"
    problem = refused.json()
    assert problem["type"].endswith("/rate-limited")
    assert problem["detail"] == "tenant 'flood' is over its starts limit"
    assert problem["instance"] == INSTANCES
    retry_after = int(refused.headers["retry-after"])
    assert 1 <= retry_after <= 100
    # The request bucket was checked (and spent) first, as on the full path: both policies.
    assert refused.headers["ratelimit-policy"] == '"requests";q=1000;w=1, "starts";q=2;w=200'
    limit_items = refused.headers["ratelimit"].split(", ")
    assert re.fullmatch(r'"requests";r=99[0-9];t=1', limit_items[0])
    assert limit_items[1] == f'"starts";r=0;t={retry_after}'


async def test_the_early_refusal_matches_the_full_paths(api: Api) -> None:
    """The first refusal with a fresh token goes the full path (the token is not cached yet);
    the next one, with the same token, is answered early: same status, detail and headers
    (but for the seconds and tokens that passed between them)."""
    for _ in range(2):
        await start(api, token("flood"))
    fresh = token("flood", jti="two")
    calls = api.authenticator.calls
    full = await start(api, fresh)
    assert api.authenticator.calls == calls + 1
    early = await start(api, fresh)
    assert api.authenticator.calls == calls + 1

    assert full.status_code == early.status_code == 429
    assert full.json() == early.json()
    for name in ("content-type", "retry-after", "ratelimit-policy"):
        assert full.headers[name] == early.headers[name], name
    shape = re.compile(r'"requests";r=\d+;t=1, "starts";r=0;t=\d+')
    assert shape.fullmatch(full.headers["ratelimit"])
    assert shape.fullmatch(early.headers["ratelimit"])


async def test_another_tenant_still_starts_while_one_is_refused_early(api: Api) -> None:
    flood, calm = token("flood"), token("calm")
    codes = [(await start(api, flood)).status_code for _ in range(6)]
    assert codes == [201, 201, 429, 429, 429, 429]

    assert [(await start(api, calm)).status_code for _ in range(2)] == [201, 201]
    assert (await start(api, flood)).status_code == 429


async def test_a_role_that_may_not_start_gets_403_not_an_early_429(api: Api) -> None:
    for _ in range(2):
        await start(api, token("flood"))
    viewer = token("flood", Role.VIEWER, jti="viewer")
    await api.client.get(INSTANCES, headers=viewer)  # cached now

    refused = await start(api, viewer)

    assert refused.status_code == 403


async def test_an_expired_token_gets_401_not_an_early_429(api: Api) -> None:
    now = int(time.time())
    claims = {"sub": "u", "tenant": "flood", "roles": ["operator"], "iat": now, "exp": now + 2}
    expiring = {"Authorization": f"Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}"}
    codes = [(await start(api, expiring)).status_code for _ in range(3)]
    assert codes == [201, 201, 429]

    await asyncio.sleep(max(0.0, now + 2 - time.time()) + 0.05)

    answer = await start(api, expiring)
    assert answer.status_code == 401
    assert "token expired" in answer.headers["www-authenticate"]


async def test_early_refusals_are_counted_in_the_metrics(api: Api) -> None:
    flood = token("flood")
    for _ in range(5):
        await start(api, flood)
    admin = {"Authorization": f"Bearer {admin_token()}"}

    metrics = (await api.client.get("/metrics", headers=admin)).text

    line = next(
        line
        for line in metrics.splitlines()
        if line.startswith("saga_http_requests_total{")
        and 'route="/api/v1/sagas/instances"' in line
        and 'status="429"' in line
    )
    assert line.endswith(" 3.0")


def admin_token() -> str:
    return mint_token(SECRET, subject="root", tenant_id="calm", roles=[Role.ADMIN], ttl=600)
