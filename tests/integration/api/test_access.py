"""Who may call what, through the real app: the role matrix over every route (generated from
the app, so a route without a rule fails here), tenants that cannot see each other, and
credentials that do not get in."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import httpx
import jwt
import pytest
import pytest_asyncio
from fastapi import FastAPI

from saga_orchestrator.api import create_app
from saga_orchestrator.api.access import ACCESS, SETTINGS, Public, rule_for
from saga_orchestrator.api.audit import AUDITED
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


def test_every_route_that_changes_something_is_audited(secured: FastAPI) -> None:
    """Every mutating route names its audit action (api/audit.py AUDITED): a new one without
    an entry fails here instead of changing things unrecorded."""
    mutating = [(method, path) for method, path in routes(secured) if method != "GET"]
    assert [key for key in mutating if key not in AUDITED] == []
    assert sorted(set(AUDITED) - set(mutating)) == [], "AUDITED names routes that are gone"


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


LEDGER = "acme-ledger"
SHOP_URL = "https://acme-shop.example.com"
NODE_WIDE = {
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"),
    ("GET", "/api/v1/sagas/schema"),  # the saga language's JSON Schema
    ("GET", "/api/v1/cluster/nodes"),  # the cluster's nodes: no tenant's data
}
"""Routes that answer no tenant's data, whoever asks."""
CALLERS_OWN = {
    ("POST", "/api/v1/sagas/definitions"),
    ("PUT", "/api/v1/participants/{name}"),
    ("GET", SETTINGS),
    ("PUT", SETTINGS),
    ("DELETE", SETTINGS),
}
"""Routes that act on the caller's own tenant whatever they name: probed for leaving the other
tenant's objects as they were."""
FILTERS = {
    "saga_name": LEDGER,
    "version": "1.0.0",
    "target_id": "{instance}",
    "actor": "acme-admin",
}
"""Values of the other tenant's objects for the list routes' query parameters of these names."""


async def test_tenants_do_not_see_each_other(client: httpx.AsyncClient) -> None:
    """Every route the app serves, called with another tenant's ids and filters, answers 404
    or nothing of theirs. The routes come from the app: a new route is probed as its shape
    says (a path with ids: 404; a list: none of the other tenant's markers), or fails here
    until it is classified above."""
    app = client._transport.app  # type: ignore[attr-defined]
    admin, other_admin = bearer(token(Role.ADMIN)), bearer(token(Role.ADMIN, OTHER))
    ledger = {**ORDER, "name": LEDGER}
    created = await client.post("/api/v1/sagas/definitions", json=ledger, headers=admin)
    assert created.status_code == 201, created.text
    started = await client.post(
        "/api/v1/sagas/instances", json={"saga_name": LEDGER, "context": {}}, headers=admin
    )
    assert started.status_code == 201, started.text
    instance = started.json()["id"]
    shop = await client.put("/api/v1/participants/shop", json={"base_url": SHOP_URL}, headers=admin)
    assert shop.status_code in (200, 201), shop.text
    markers = (instance, LEDGER, SHOP_URL.removeprefix("https://"))
    ids = {"instance_id": instance, "version": "1.0.0", "step": "a"}

    def theirs_in(path: str) -> str:
        name = "shop" if path.startswith("/api/v1/participants/") else LEDGER
        return re.sub(r"\{(\w+)\}", lambda m: {**ids, "name": name}[m.group(1)], path)

    probed: list[tuple[str, str]] = []
    for method, path in routes(app):
        rule = rule_for(method, path)
        if (method, path) in NODE_WIDE | CALLERS_OWN:
            continue
        url = theirs_in(path)
        if method == "POST" and path == "/api/v1/sagas/instances":
            body: Any = {"saga_name": LEDGER, "context": {}}  # a start of their saga
        elif rule is Public.COMPLETION_TOKEN:  # a well-formed report of each kind
            body = {"error": {"type": "Nope"}} if path.endswith("/fail") else {"output": {}}
        else:
            body = {"reason": "not mine"} if method == "POST" else None
        if "{" in path or method != "GET":
            answer = await client.request(method, url, json=body, headers=other_admin)
            # Another tenant's bearer is no completion token: refused before any lookup.
            expected = (401, 403) if rule is Public.COMPLETION_TOKEN else (404,)
            assert answer.status_code in expected, (method, url, answer.status_code, answer.text)
        else:  # a list: with the other tenant's values in every filter it has
            query = {
                name: value.replace("{instance}", instance)
                for name, value in FILTERS.items()
                if name in _query_parameters(app, path)
            }
            for params in ({}, query) if query else ({},):
                answer = await client.get(url, params=params, headers=other_admin)
                assert answer.status_code == 200, (method, url, answer.status_code, answer.text)
                leaked = [marker for marker in markers if marker in answer.text]
                assert leaked == [], (method, url, params, answer.status_code, leaked)
        probed.append((method, path))
    assert len(probed) >= 20  # the sweep really ran over the API

    # The caller's own namespace: the same names made there leave the other tenant's alone.
    for method, url, body in [
        (
            "POST",
            "/api/v1/sagas/definitions",
            {**ledger, "steps": [{"name": "b", "action": "reserve"}]},
        ),
        ("PUT", "/api/v1/participants/shop", {"base_url": "https://globex.example.com"}),
        ("PUT", SETTINGS, {"starts": {"per_second": 1}}),
        ("DELETE", SETTINGS, None),
    ]:
        answer = await client.request(method, url, json=body, headers=other_admin)
        assert answer.status_code < 300, (method, url, answer.status_code, answer.text)
    mine = await client.get(f"/api/v1/sagas/definitions/{LEDGER}/1.0.0", headers=admin)
    assert [step["name"] for step in mine.json()["definition"]["steps"]] == ["a"]
    theirs = await client.get("/api/v1/participants/shop", headers=admin)
    assert theirs.json()["service"]["base_url"].startswith(SHOP_URL)
    limits, untouched = [
        (await client.get(SETTINGS, headers=headers)).json()
        for headers in (admin, bearer(token(Role.ADMIN, "initech")))
    ]
    assert (limits.pop("tenant_id"), untouched.pop("tenant_id")) == (TENANT, "initech")
    assert limits == untouched  # still the defaults, as a tenant that never set any
    still = await client.get(f"/api/v1/sagas/instances/{instance}", headers=admin)
    assert still.status_code == 200


def _query_parameters(app: FastAPI, path: str) -> set[str]:
    operation = app.openapi()["paths"][path]["get"]
    return {p["name"] for p in operation.get("parameters", []) if p["in"] == "query"}


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


async def test_an_app_without_authentication_says_so(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Authentication off is an embedding's choice, never a silent one."""
    node = Orchestrator(store_url, handlers=Participants(("reserve",)).registry())
    with caplog.at_level("WARNING", logger="saga_orchestrator.api"):
        create_app(node, replace(FAST_OPTIONS, authenticator=None))
        verified = Authenticator(AuthSettings(hmac_secret=SECRET))
        create_app(node, replace(FAST_OPTIONS, authenticator=verified))
    warnings = [r.getMessage() for r in caplog.records if r.name == "saga_orchestrator.api"]
    assert len(warnings) == 1
    assert "authentication is off" in warnings[0] and "admin" in warnings[0]
