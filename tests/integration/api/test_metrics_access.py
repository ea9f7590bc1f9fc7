"""Who sees what on ``GET /metrics``: a tenant admin its own tenant's series and the node-wide
ones, the platform's scrape token (``metrics_token``) every tenant's and nothing but
``/metrics``, and an app without authentication everything."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from saga_orchestrator.api import create_app
from saga_orchestrator.api.access import Public, rule_for
from saga_orchestrator.errors import ConfigurationError
from saga_orchestrator.orchestrator import Orchestrator
from saga_orchestrator.security.tokens import (
    Authenticator,
    AuthSettings,
    Role,
    generate_secret,
    mint_token,
)
from tests.integration.api.support import FAST_OPTIONS, SETTLED, concrete, routes
from tests.integration.engine.support import Participants
from tests.support.stub_participant import StubParticipant

SECRET = generate_secret()
SCRAPE = generate_secret()
ACME, GLOBEX = "acme", "globex"
# Names that appear nowhere but in the series of the tenant that registered them.
SAGA = {ACME: "acme-order", GLOBEX: "globex-payout"}
SERVICE = {ACME: "acme-shop", GLOBEX: "globex-bank"}


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def token(role: Role, tenant: str = ACME) -> dict[str, str]:
    minted = mint_token(SECRET, subject=f"{tenant}-{role}", tenant_id=tenant, roles=[role], ttl=600)
    return bearer(minted)


@pytest_asyncio.fixture
async def secured(store_url: str) -> AsyncIterator[FastAPI]:
    node = Orchestrator(store_url, handlers=Participants(("reserve",)).registry())
    options = replace(
        FAST_OPTIONS,
        authenticator=Authenticator(AuthSettings(hmac_secret=SECRET)),
        metrics_token=SCRAPE,
    )
    app = create_app(node, options)
    async with node, app.router.lifespan_context(app):
        yield app


@pytest_asyncio.fixture
async def client(secured: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(secured)
    async with httpx.AsyncClient(transport=transport, base_url="http://saga.test") as opened:
        yield opened


async def run_a_saga(client: httpx.AsyncClient, tenant: str, stub: StubParticipant) -> None:
    """A participant service and a saga calling it, both named after ``tenant``, and one
    instance run to its end: the tenant's saga counters and breaker exist."""
    admin = token(Role.ADMIN, tenant)
    service = {"base_url": stub.base_url, "allow_private_network": True}
    put = await client.put(f"/api/v1/participants/{SERVICE[tenant]}", json=service, headers=admin)
    assert put.status_code in (200, 201), put.text
    definition: dict[str, Any] = {
        "name": SAGA[tenant],
        "version": "1.0.0",
        "steps": [{"name": "call", "action": {"http": {"service": SERVICE[tenant], "path": "/"}}}],
    }
    registered = await client.post("/api/v1/sagas/definitions", json=definition, headers=admin)
    assert registered.status_code == 201, registered.text
    started = await client.post(
        "/api/v1/sagas/instances", json={"saga_name": SAGA[tenant], "context": {}}, headers=admin
    )
    assert started.status_code == 201, started.text
    instance = f"/api/v1/sagas/instances/{started.json()['id']}"
    async with asyncio.timeout(10):
        while True:
            status = (await client.get(instance, headers=admin)).json()["status"]
            if status in SETTLED:
                break
            await asyncio.sleep(0.02)
    assert status == "completed"


@pytest_asyncio.fixture
async def two_tenants(client: httpx.AsyncClient) -> AsyncIterator[httpx.AsyncClient]:
    async with StubParticipant() as stub:
        for tenant in (ACME, GLOBEX):
            await run_a_saga(client, tenant, stub)
        yield client


def series_of(tenant: str) -> list[str]:
    """Samples only ``tenant``'s data produces (labels in the exposition's sorted order)."""
    saga, service, own = SAGA[tenant], SERVICE[tenant], f'tenant="{tenant}"'
    return [
        f'saga_instances_started_total{{saga_name="{saga}",{own}}} 1.0',
        f'saga_instances_finished_total{{saga_name="{saga}",status="completed",{own}}} 1.0',
        f'saga_participant_circuit_state{{service="{service}",state="closed",{own}}} 1.0',
        f'saga_participant_failure_rate{{service="{service}",{own}}} 0.0',
    ]


@pytest.mark.parametrize(("tenant", "other"), [(ACME, GLOBEX), (GLOBEX, ACME)])
async def test_a_tenant_admin_sees_its_own_tenants_series_and_none_of_anothers(
    two_tenants: httpx.AsyncClient, tenant: str, other: str
) -> None:
    answer = await two_tenants.get("/metrics", headers=token(Role.ADMIN, tenant))
    assert answer.status_code == 200, answer.text
    text = answer.text
    for sample in series_of(tenant):
        assert sample in text.splitlines(), f"{sample} not in:\n{text}"
    # Nothing of the other tenant: not its id, its saga's name, nor its service's.
    for secret in (f'tenant="{other}"', SAGA[other], SERVICE[other]):
        assert secret not in text
    # The node-wide series stay: requests by route template (the other tenant's included,
    # they name no tenant) and the families of every tenant-labelled metric.
    assert 'saga_http_requests_total{method="POST",route="/api/v1/sagas/instances",' in text
    assert "# TYPE saga_participant_circuit_state gauge" in text


async def test_the_scrape_token_sees_every_tenant(two_tenants: httpx.AsyncClient) -> None:
    answer = await two_tenants.get("/metrics", headers=bearer(SCRAPE))
    assert answer.status_code == 200, answer.text
    lines = answer.text.splitlines()
    for sample in [*series_of(ACME), *series_of(GLOBEX)]:
        assert sample in lines, f"{sample} not in:\n{answer.text}"


@pytest.mark.parametrize(
    "header",
    [
        f"Bearer {generate_secret()}",  # a static token of the right shape, not the node's
        f"Bearer {SCRAPE[:-1]}",
        f"Bearer {SCRAPE}x",
        f"Basic {SCRAPE}",
        SCRAPE,
    ],
    ids=["another-secret", "prefix", "longer", "basic-scheme", "no-scheme"],
)
async def test_a_wrong_static_token_is_401_with_a_challenge(
    client: httpx.AsyncClient, header: str
) -> None:
    answer = await client.get("/metrics", headers={"Authorization": header})
    assert answer.status_code == 401, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.headers["www-authenticate"].startswith('Bearer realm="saga", error=')
    assert SCRAPE not in answer.text


async def test_the_scheme_is_case_insensitive_as_for_any_bearer(client: httpx.AsyncClient) -> None:
    answer = await client.get("/metrics", headers={"Authorization": f"bearer  {SCRAPE} "})
    assert answer.status_code == 200


async def test_the_scrape_token_is_refused_on_every_other_route(
    secured: FastAPI, client: httpx.AsyncClient
) -> None:
    checked = 0
    for method, path in routes(secured):
        rule = rule_for(method, path)
        if isinstance(rule, Public) or (method, path) == ("GET", "/metrics"):
            continue  # public routes take no bearer; completion routes take their own token
        answer = await client.request(method, concrete(path), headers=bearer(SCRAPE), json={})
        assert answer.status_code == 401, (method, path, answer.status_code, answer.text)
        assert answer.headers["www-authenticate"].startswith('Bearer realm="saga"')
        checked += 1
    assert checked >= 20


@pytest.mark.parametrize("role", [Role.VIEWER, Role.OPERATOR])
async def test_viewers_and_operators_still_get_403(client: httpx.AsyncClient, role: Role) -> None:
    answer = await client.get("/metrics", headers=token(role))
    assert answer.status_code == 403
    assert answer.headers["content-type"] == "application/problem+json"


async def test_without_authentication_metrics_show_every_tenant(node: Orchestrator) -> None:
    """The embedding's app (no authenticator) sees what its node does, whatever the tenant."""
    app = create_app(node, FAST_OPTIONS)
    app.state.services.metrics.saga_started(GLOBEX, SAGA[GLOBEX])
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://saga.test") as client:
        text = (await client.get("/metrics")).text
    assert f'saga_instances_started_total{{saga_name="{SAGA[GLOBEX]}",tenant="globex"}}' in text


async def test_a_weak_scrape_token_is_refused_by_create_app(node: Orchestrator) -> None:
    weak = "changeme" * 4
    with pytest.raises(ConfigurationError, match="metrics_token: too predictable") as caught:
        create_app(node, replace(FAST_OPTIONS, metrics_token=weak))
    assert weak not in str(caught.value)
