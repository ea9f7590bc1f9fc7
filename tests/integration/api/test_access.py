"""Who may call what, through the real app: the role matrix over every route (generated from
the app, so a route without a rule fails here), tenants that cannot see each other, and
credentials that do not get in."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import httpx
import jwt
import pytest
import pytest_asyncio
from fastapi import FastAPI

from saga_orchestrator.api import create_app
from saga_orchestrator.api.access import ACCESS, Public, rule_for
from saga_orchestrator.orchestrator import Orchestrator
from saga_orchestrator.security.tokens import (
    Authenticator,
    AuthSettings,
    Role,
    generate_secret,
    mint_token,
)
from tests.integration.api.support import FAST_OPTIONS, concrete, routes
from tests.integration.engine.support import Participants

SECRET = generate_secret()
TENANT, OTHER = "acme", "globex"
ORDER = {"name": "order", "version": "1.0.0", "steps": [{"name": "a", "action": "reserve"}]}


def token(role: Role | None, tenant: str = TENANT, **claims: Any) -> str:
    roles = [] if role is None else [role]
    return mint_token(SECRET, subject=f"{tenant}-{role}", tenant_id=tenant, roles=roles, ttl=600)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


@pytest_asyncio.fixture
async def secured(store_url: str) -> AsyncIterator[FastAPI]:
    node = Orchestrator(store_url, handlers=Participants(("reserve",)).registry())
    options = replace(FAST_OPTIONS, authenticator=Authenticator(AuthSettings(hmac_secret=SECRET)))
    app = create_app(node, options)
    async with node, app.router.lifespan_context(app):
        yield app


@pytest_asyncio.fixture
async def client(secured: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(secured)
    async with httpx.AsyncClient(transport=transport, base_url="http://saga.test") as opened:
        yield opened


def test_every_route_has_exactly_one_rule(secured: FastAPI) -> None:
    served = routes(secured)
    missing = [key for key in served if rule_for(*key) is None]
    assert missing == [], "add these routes to api/access.py ACCESS"
    stale = sorted(set(ACCESS) - set(served) - {k for k in ACCESS if k[1] in _NON_API})
    assert stale == [], "these ACCESS rules name routes that no longer exist"


_NON_API = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


ALLOWED = {
    None: set[Role](),
    Role.VIEWER: {Role.VIEWER},
    Role.OPERATOR: {Role.VIEWER, Role.OPERATOR},
    Role.ADMIN: {Role.VIEWER, Role.OPERATOR, Role.ADMIN},
}


@pytest.mark.parametrize("role", [None, *Role], ids=lambda r: "no-role" if r is None else r.value)
async def test_the_role_matrix(
    secured: FastAPI, client: httpx.AsyncClient, role: Role | None
) -> None:
    """Every route x every role: a role that the rule does not include gets 403, one that it
    includes gets anything but 401/403 (the request may still be invalid: 404, 422...); no
    token at all gets 401 wherever a role is needed."""
    checked = 0
    for method, path in routes(secured):
        rule = rule_for(method, path)
        assert rule is not None
        url = concrete(path)
        answer = await client.request(method, url, headers=bearer(token(role)), json={})
        anonymous = await client.request(method, url, json={})
        if isinstance(rule, Public):
            assert answer.status_code not in (401,), (method, path)
            continue
        assert anonymous.status_code == 401, (method, path, anonymous.text)
        assert anonymous.headers["www-authenticate"].startswith('Bearer realm="saga"')
        if rule in ALLOWED[role]:
            assert answer.status_code not in (401, 403), (method, path, role, answer.text)
        else:
            assert answer.status_code == 403, (method, path, role, answer.text)
            assert answer.headers["content-type"] == "application/problem+json"
        checked += 1
    assert checked >= 20  # the matrix really ran over the API


async def test_tenants_do_not_see_each_other(client: httpx.AsyncClient) -> None:
    admin, other_admin = bearer(token(Role.ADMIN)), bearer(token(Role.ADMIN, OTHER))
    assert (
        await client.post("/api/v1/sagas/definitions", json=ORDER, headers=admin)
    ).status_code == 201
    started = await client.post(
        "/api/v1/sagas/instances", json={"saga_name": "order", "context": {}}, headers=admin
    )
    assert started.status_code == 201, started.text
    instance = started.json()["id"]
    await client.put(
        "/api/v1/participants/shop", json={"base_url": "https://shop.example.com"}, headers=admin
    )
    base = f"/api/v1/sagas/instances/{instance}"
    for method, url in [
        ("GET", base),
        ("GET", f"{base}/events"),
        ("GET", f"{base}/stream"),
        ("POST", f"{base}/cancel"),
        ("POST", f"{base}/retry"),
        ("POST", f"{base}/resolve"),
        ("POST", f"{base}/steps/a/skip"),
        ("GET", "/api/v1/sagas/definitions/order"),
        ("GET", "/api/v1/sagas/definitions/order/1.0.0"),
        ("POST", "/api/v1/sagas/definitions/order/1.0.0/deprecate"),
        ("GET", "/api/v1/participants/shop"),
        ("DELETE", "/api/v1/participants/shop"),
    ]:
        body = {"reason": "not mine"} if method == "POST" else None
        answer = await client.request(method, url, json=body, headers=other_admin)
        assert answer.status_code == 404, (method, url, answer.status_code, answer.text)
    # Lists and starts see only the caller's tenant.
    listed = await client.get("/api/v1/sagas/instances", headers=other_admin)
    assert listed.json()["items"] == []
    assert (await client.get("/api/v1/sagas/definitions", headers=other_admin)).json()[
        "items"
    ] == []
    assert (await client.get("/api/v1/participants", headers=other_admin)).json()["items"] == []
    foreign_start = await client.post(
        "/api/v1/sagas/instances", json={"saga_name": "order", "context": {}}, headers=other_admin
    )
    assert foreign_start.status_code == 404
    # The owner still sees everything.
    assert (await client.get(base, headers=admin)).status_code == 200
    assert (await client.get("/api/v1/participants/shop", headers=admin)).status_code == 200


async def test_a_body_cannot_name_another_tenant(client: httpx.AsyncClient) -> None:
    admin = bearer(token(Role.ADMIN))
    await client.post("/api/v1/sagas/definitions", json=ORDER, headers=admin)
    smuggled = await client.post(
        "/api/v1/sagas/instances",
        json={"saga_name": "order", "context": {}, "tenant_id": OTHER},
        headers=admin,
    )
    assert smuggled.status_code == 422
    status = await client.post(
        "/api/v1/sagas/instances",
        json={"saga_name": "order", "context": {}, "status": "completed"},
        headers=admin,
    )
    assert status.status_code == 422


def _forged(kind: str) -> str:
    good = {"sub": "x", "tenant": TENANT, "roles": ["admin"], "exp": 4_102_444_800}
    if kind == "alg-none":
        return jwt.encode(good, key="", algorithm="none")
    if kind == "wrong-secret":
        return jwt.encode(good, key=generate_secret(), algorithm="HS256")
    if kind == "expired":
        return jwt.encode({**good, "exp": 1_000_000}, key=SECRET, algorithm="HS256")
    if kind == "no-exp":
        claims = {k: v for k, v in good.items() if k != "exp"}
        return jwt.encode(claims, key=SECRET, algorithm="HS256")
    if kind == "jku":
        return jwt.encode(good, key=SECRET, algorithm="HS256", headers={"jku": "https://evil"})
    if kind == "garbage":
        return "not.a.token"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind", ["alg-none", "wrong-secret", "expired", "no-exp", "jku", "garbage"]
)
async def test_forged_tokens_get_401_with_a_challenge(client: httpx.AsyncClient, kind: str) -> None:
    """The full matrix is tests/unit/security/test_tokens.py; this checks the HTTP answer."""
    answer = await client.get("/api/v1/sagas/instances", headers=bearer(_forged(kind)))
    assert answer.status_code == 401
    assert answer.headers["content-type"] == "application/problem+json"
    challenge = answer.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="saga", error="invalid_token"')
    assert _forged(kind)[:20] not in answer.text


async def test_refused_calls_are_in_the_audit_log(
    client: httpx.AsyncClient, secured: FastAPI
) -> None:
    viewer = bearer(token(Role.VIEWER))
    refused = await client.post("/api/v1/sagas/definitions", json=ORDER, headers=viewer)
    assert refused.status_code == 403
    store = secured.state.services.instances._store
    records, _ = await store.audit_chain(TENANT)
    assert [(r.entry.action, r.entry.outcome.value, r.entry.actor) for r in records] == [
        ("definition.register", "refused", f"{TENANT}-{Role.VIEWER}")
    ]
    assert records[0].entry.request_id == refused.headers["x-request-id"]
