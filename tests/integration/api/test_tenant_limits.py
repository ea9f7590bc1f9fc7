"""A tenant's own limits through the real app: its admins set them for their tenant only, up
to the operator's ceilings, the rate limiter and the running cap apply them in place of the
node's defaults (an override stored above a ceiling applying as the ceiling), and a reset brings
the defaults back.

Buckets refill one token per 1000 s, so what a test admits is exactly a burst however slowly it
runs; the limiter keeps its buckets in memory, or in the shared Redis when one answers."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from typing import Any

import httpx
import pytest
import pytest_asyncio
import redis

from saga_orchestrator.api import create_app
from saga_orchestrator.orchestrator import Orchestrator
from saga_orchestrator.security.limits import Limit, RateLimiter, RequestLimits
from saga_orchestrator.security.tenant_limits import LimitCeilings
from saga_orchestrator.security.tokens import (
    Authenticator,
    AuthSettings,
    Role,
    generate_secret,
    mint_token,
)
from tests.integration.api.support import FAST_OPTIONS, PROBLEM
from tests.integration.engine.support import Participants

SECRET = generate_secret()
LIMITS = "/api/v1/tenant/limits"
INSTANCES = "/api/v1/sagas/instances"
ORDER = {"name": "order", "version": "1.0.0", "steps": [{"name": "a", "action": "reserve"}]}
DEFAULTS = RequestLimits(requests=Limit(rate=0.001, burst=8), starts=Limit(rate=0.001, burst=6))
CEILINGS = LimitCeilings(
    requests=Limit(rate=100.0, burst=200),
    starts=Limit(rate=10.0, burst=15),  # below twice the rate: a burst left out may exceed it
    max_running_sagas=100,
)
"""The operator's ceilings of these tests (as ``saga serve`` builds from its settings): above
the defaults, so the tests may raise a tenant's limits as an operator allowing it would."""


@dataclass(frozen=True, slots=True)
class Api:
    client: httpx.AsyncClient
    node: Orchestrator
    participants: Participants
    a: str
    """A tenant (a fresh name per test, so shared Redis keys never meet)."""
    b: str

    def auth(self, tenant: str, role: Role = Role.ADMIN) -> dict[str, str]:
        token = mint_token(
            SECRET, subject=f"{tenant}-{role}", tenant_id=tenant, roles=[role], ttl=600
        )
        return {"Authorization": f"Bearer {token}"}

    async def get(self, tenant: str, url: str = INSTANCES, **extra: Any) -> httpx.Response:
        return await self.client.get(url, headers=self.auth(tenant), **extra)

    async def admitted(self, tenant: str, attempts: int) -> list[int]:
        return [(await self.get(tenant)).status_code for _ in range(attempts)]

    async def put(self, tenant: str, body: Any, role: Role = Role.ADMIN) -> httpx.Response:
        return await self.client.put(LIMITS, json=body, headers=self.auth(tenant, role))

    async def start(self, tenant: str) -> httpx.Response:
        body = {"saga_name": "order", "context": {}}
        return await self.client.post(INSTANCES, json=body, headers=self.auth(tenant))


def shared_redis_url() -> str | None:
    url = os.environ.get("SAGA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"Redis at {url} is unreachable; CI=true requires it")
        return None
    finally:
        client.close()
    return url


@pytest.fixture(params=["memory", "redis"])
def buckets(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """Where the limiter keeps its buckets: ``None`` (memory) or a Redis URL."""
    if request.param == "memory":
        yield None
        return
    url = shared_redis_url()
    if url is None:
        pytest.skip("no Redis answers")
    yield url


async def _api(database_url: str, redis_url: str | None, **node_options: Any) -> AsyncIterator[Api]:
    participants = Participants(("reserve",))
    node_options.setdefault("limit_ceilings", CEILINGS)
    node = Orchestrator(database_url, handlers=participants.registry(), **node_options)
    # A generous timeout: a loaded machine must not look like a Redis outage here.
    limiter = RateLimiter(redis_url, timeout=5.0, max_connections=16)
    options = replace(
        FAST_OPTIONS,
        authenticator=Authenticator(AuthSettings(hmac_secret=SECRET)),
        rate_limiter=limiter,
        limits=DEFAULTS,
    )
    app = create_app(node, options)
    run = uuid.uuid4().hex[:8]
    a, b = f"acme-{run}", f"globex-{run}"
    try:
        async with node, app.router.lifespan_context(app):
            for tenant in (a, b):
                node.tenant_id = tenant
                await node.register(ORDER)
            transport = httpx.ASGITransport(app)
            async with httpx.AsyncClient(transport=transport, base_url="http://saga.test") as c:
                yield Api(client=c, node=node, participants=participants, a=a, b=b)
            if redis_url is not None:  # Redis decided every check: no silent fallback
                assert limiter.counters.fallback_checks == 0
            participants.gates.pop("reserve", asyncio.Event()).set()
    finally:
        await limiter.aclose()
        if redis_url is not None:
            cleanup = redis.Redis.from_url(redis_url)
            try:
                keys = [k for t in (a, b) for k in cleanup.scan_iter(match=f"saga:rl:{t}:*")]
                if keys:
                    cleanup.delete(*keys)
            finally:
                cleanup.close()


@pytest_asyncio.fixture
async def limited(sqlite_url: str, buckets: str | None) -> AsyncIterator[Api]:
    async for api in _api(sqlite_url, buckets):
        yield api


@pytest_asyncio.fixture
async def api(store_url: str) -> AsyncIterator[Api]:
    async for opened in _api(store_url, None, max_running_sagas_per_tenant=4):
        yield opened


# Enforcement


async def test_a_tenant_over_its_own_limit_is_refused_while_another_is_not(
    limited: Api,
) -> None:
    saved = await limited.put(limited.a, {"requests": {"per_second": 0.001, "burst": 3}})
    assert saved.status_code == 200, saved.text
    assert await limited.admitted(limited.a, 5) == [200] * 3 + [429] * 2
    assert await limited.admitted(limited.b, 5) == [200] * 5  # the defaults: a burst of 8
    refused = await limited.get(limited.a)
    assert refused.headers["content-type"] == PROBLEM
    assert refused.headers["ratelimit-policy"] == '"requests";q=3;w=3000'
    assert refused.headers["ratelimit"] == '"requests";r=0;t=1000'
    assert refused.headers["retry-after"] == "1000"


async def test_after_a_reset_the_tenant_is_back_on_the_defaults(limited: Api) -> None:
    raised = await limited.put(limited.a, {"requests": {"per_second": 0.001, "burst": 20}})
    assert raised.status_code == 200, raised.text
    assert await limited.admitted(limited.a, 10) == [200] * 10  # past the default burst of 8
    assert await limited.admitted(limited.b, 10) == [200] * 8 + [429] * 2
    reset = await limited.client.delete(LIMITS, headers=limited.auth(limited.a))
    assert reset.status_code == 204, reset.text
    # Ten tokens left in a bucket of the default size hold eight.
    assert await limited.admitted(limited.a, 10) == [200] * 8 + [429] * 2
    refused = await limited.get(limited.a)
    assert refused.headers["ratelimit-policy"] == '"requests";q=8;w=8000'


async def test_a_tenants_own_start_limit_refuses_its_extra_starts(limited: Api) -> None:
    await limited.put(limited.a, {"starts": {"per_second": 0.001, "burst": 2}})
    assert [(await limited.start(limited.a)).status_code for _ in range(3)] == [201, 201, 429]
    assert [(await limited.start(limited.b)).status_code for _ in range(3)] == [201] * 3
    refused = await limited.start(limited.a)
    policies = refused.headers["ratelimit-policy"].split(", ")
    assert policies == ['"requests";q=8;w=8000', '"starts";q=2;w=2000']


async def test_a_limit_set_too_low_does_not_lock_the_admins_out(limited: Api) -> None:
    await limited.put(limited.a, {"requests": {"per_second": 0.001, "burst": 1}})
    assert await limited.admitted(limited.a, 2) == [200, 429]
    shown = await limited.get(limited.a, LIMITS)
    assert shown.status_code == 200, shown.text
    fixed = await limited.put(limited.a, {"requests": {"per_second": 0.001, "burst": 3}})
    assert fixed.status_code == 200, fixed.text
    refused = await limited.get(limited.a)  # the bucket refills at its rate, not at once
    assert refused.status_code == 429
    assert refused.headers["ratelimit-policy"] == '"requests";q=3;w=3000'
    assert (await limited.client.delete(LIMITS, headers=limited.auth(limited.a))).status_code == 204


async def test_a_tenants_own_running_cap_refuses_its_extra_start(api: Api) -> None:
    api.participants.gates["reserve"] = asyncio.Event()  # every saga waits at its first step
    saved = await api.put(api.a, {"max_running_sagas": 1})
    assert saved.json()["applied"]["max_running_sagas"] == 1
    first = await api.start(api.a)
    assert first.status_code == 201, first.text
    refused = await api.start(api.a)
    assert refused.status_code == 429
    assert refused.headers["content-type"] == PROBLEM
    assert "sagas running" in refused.json()["detail"]
    assert [(await api.start(api.b)).status_code for _ in range(4)] == [201] * 4  # node's cap
    assert (await api.start(api.b)).status_code == 429
    raised = await api.put(api.a, {"max_running_sagas": 2})
    assert raised.status_code == 200
    assert (await api.start(api.a)).status_code == 201  # this node applies it at once


# The admin API


async def test_the_limits_show_what_is_stored_and_what_applies(api: Api) -> None:
    empty = await api.get(api.a, LIMITS)
    assert empty.status_code == 200, empty.text
    assert empty.json() == {
        "tenant_id": api.a,
        "limits": {"requests": None, "starts": None, "max_running_sagas": None},
        "version": None,
        "updated_at": None,
        "applied": {
            "requests": {"per_second": 0.001, "burst": 8},
            "starts": {"per_second": 0.001, "burst": 6},
            "max_running_sagas": 4,
        },
        "ceilings": {
            "requests": {"per_second": 100.0, "burst": 200},
            "starts": {"per_second": 10.0, "burst": 15},
            "max_running_sagas": 100,
        },
    }
    first = await api.put(api.a, {"starts": {"per_second": 2.5}, "max_running_sagas": 10})
    assert first.status_code == 200, first.text
    second = await api.put(api.a, {"requests": {"per_second": 50, "burst": 60}})
    assert second.status_code == 200, second.text
    shown = (await api.get(api.a, LIMITS)).json()
    assert shown["version"] == second.json()["version"] == 2
    assert shown["updated_at"] is not None
    assert shown["limits"] == {  # a PUT replaces the whole document
        "requests": {"per_second": 50.0, "burst": 60},
        "starts": None,
        "max_running_sagas": None,
    }
    assert shown["applied"] == {
        "requests": {"per_second": 50.0, "burst": 60},
        "starts": {"per_second": 0.001, "burst": 6},
        "max_running_sagas": 4,
    }
    assert first.json()["applied"]["starts"] == {"per_second": 2.5, "burst": 5}
    assert (await api.client.delete(LIMITS, headers=api.auth(api.a))).status_code == 204
    assert (await api.client.delete(LIMITS, headers=api.auth(api.a))).status_code == 204
    assert (await api.get(api.a, LIMITS)).json() == empty.json()


async def test_viewers_read_the_limits_and_only_admins_change_them(api: Api) -> None:
    body = {"max_running_sagas": 2}
    assert (await api.put(api.a, body)).status_code == 200
    viewer = api.auth(api.a, Role.VIEWER)
    shown = await api.client.get(LIMITS, headers=viewer)
    assert shown.status_code == 200
    assert shown.json()["limits"]["max_running_sagas"] == 2
    for role in (Role.VIEWER, Role.OPERATOR):
        refused = await api.put(api.a, {"max_running_sagas": 100}, role)
        assert refused.status_code == 403, (role, refused.text)
        assert refused.headers["content-type"] == PROBLEM
        deleted = await api.client.delete(LIMITS, headers=api.auth(api.a, role))
        assert deleted.status_code == 403, (role, deleted.text)
    assert (await api.client.get(LIMITS)).status_code == 401
    assert (await api.client.put(LIMITS, json=body)).status_code == 401
    assert (await api.get(api.a, LIMITS)).json()["version"] == 1  # nothing changed


async def test_an_admin_sees_and_changes_only_its_own_tenants_limits(api: Api) -> None:
    assert (await api.put(api.a, {"max_running_sagas": 1})).status_code == 200
    other = await api.get(api.b, LIMITS, params={"tenant_id": api.a})
    assert other.json()["tenant_id"] == api.b
    assert other.json()["version"] is None
    smuggled = await api.put(api.b, {"tenant_id": api.a, "max_running_sagas": 100})
    assert smuggled.status_code == 422
    assert (await api.put(api.b, {"max_running_sagas": 100})).status_code == 200
    assert (await api.client.delete(LIMITS, headers=api.auth(api.b))).status_code == 204
    mine = (await api.get(api.a, LIMITS)).json()
    assert (mine["version"], mine["limits"]["max_running_sagas"]) == (1, 1)


@pytest.mark.parametrize(
    ("body", "location"),
    [
        ({"requests": {"per_second": 0, "burst": 1}}, "body.requests.per_second"),
        ({"requests": {"per_second": 5, "burst": 0}}, "body.requests.burst"),
        ({"starts": {"burst": 5}}, "body.starts.per_second"),
        ({"starts": {"per_second": 1e9}}, "body.starts.per_second"),
        ({"max_running_sagas": 0}, "body.max_running_sagas"),
        ({"max_running_sagas": "many"}, "body.max_running_sagas"),
        ({"requests_per_second": 5}, "body.requests_per_second"),
        ([1, 2], "body"),
    ],
)
async def test_a_bad_body_is_refused_naming_the_field(api: Api, body: Any, location: str) -> None:
    refused = await api.put(api.a, body)
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"] == PROBLEM
    assert [v["location"] for v in refused.json()["violations"]] == [location]
    assert (await api.get(api.a, LIMITS)).json()["version"] is None


async def test_changes_and_refusals_are_in_the_audit_log(api: Api) -> None:
    await api.put(api.a, {"max_running_sagas": 3})
    await api.put(api.a, {"max_running_sagas": 3}, Role.OPERATOR)  # refused: 403
    await api.put(api.a, {"max_running_sagas": -1})  # failed: 422
    await api.client.delete(LIMITS, headers=api.auth(api.a))
    await api.client.delete(LIMITS, headers=api.auth(api.a))  # nothing stored: no change
    page = (await api.client.get("/api/v1/audit", headers=api.auth(api.a))).json()
    rows = [
        (r["action"], r["outcome"], r["target_type"], r["target_id"], r["actor"])
        for r in page["items"]
        if r["action"].startswith("tenant_limits.")
    ]
    assert rows == [
        ("tenant_limits.put", "succeeded", "tenant_limits", api.a, f"{api.a}-admin"),
        ("tenant_limits.put", "refused", "tenant_limits", api.a, f"{api.a}-operator"),
        ("tenant_limits.put", "failed", "tenant_limits", api.a, f"{api.a}-admin"),
        ("tenant_limits.delete", "succeeded", "tenant_limits", api.a, f"{api.a}-admin"),
    ]
    assert page["items"][-1]["details"] == {}
    put = next(r for r in page["items"] if r["action"] == "tenant_limits.put")
    assert put["details"] == {"limits": {"max_running_sagas": 3}}
    other = (await api.client.get("/api/v1/audit", headers=api.auth(api.b))).json()
    assert not [r for r in other["items"] if r["action"].startswith("tenant_limits.")]


# The operator's ceilings


@pytest.mark.parametrize(
    ("body", "location", "asked", "ceiling"),
    [
        (
            {"requests": {"per_second": 100.5, "burst": 5}},
            "body.requests.per_second",
            "100.5",
            "100",
        ),
        ({"requests": {"per_second": 1, "burst": 201}}, "body.requests.burst", "201", "200"),
        ({"starts": {"per_second": 11, "burst": 5}}, "body.starts.per_second", "11", "10"),
        ({"starts": {"per_second": 1, "burst": 16}}, "body.starts.burst", "16", "15"),
        ({"starts": {"per_second": 8}}, "body.starts.burst", "16", "15"),  # twice the rate
        ({"max_running_sagas": 101}, "body.max_running_sagas", "101", "100"),
    ],
)
async def test_a_put_above_a_ceiling_is_refused_naming_the_field_and_both_values(
    api: Api, body: dict[str, Any], location: str, asked: str, ceiling: str
) -> None:
    kept = {"max_running_sagas": 3}
    assert (await api.put(api.a, kept)).status_code == 200
    refused = await api.put(api.a, body)
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"] == PROBLEM
    problem = refused.json()
    [violation] = problem["violations"]
    assert (violation["location"], violation["rule"]) == (location, "ceiling")
    assert f"{asked} " in violation["message"]
    assert f"ceiling of {ceiling}" in violation["message"]
    assert problem["detail"] == f"{location}: {violation['message']}"
    shown = (await api.get(api.a, LIMITS)).json()  # nothing stored
    assert (shown["version"], shown["limits"]["max_running_sagas"]) == (1, 3)


async def test_every_value_above_its_ceiling_is_named_at_once(api: Api) -> None:
    body = {"requests": {"per_second": 500, "burst": 1000}, "max_running_sagas": 1000}
    refused = await api.put(api.a, body)
    assert refused.status_code == 422, refused.text
    assert [v["location"] for v in refused.json()["violations"]] == [
        "body.requests.per_second",
        "body.requests.burst",
        "body.max_running_sagas",
    ]
    assert (await api.get(api.a, LIMITS)).json()["version"] is None


async def test_limits_at_their_ceilings_are_accepted(api: Api) -> None:
    at = {
        "requests": {"per_second": 100, "burst": 200},
        "starts": {"per_second": 7.5},  # a burst of 15, from twice the rate
        "max_running_sagas": 100,
    }
    saved = await api.put(api.a, at)
    assert saved.status_code == 200, saved.text
    assert saved.json()["applied"] == {
        "requests": {"per_second": 100.0, "burst": 200},
        "starts": {"per_second": 7.5, "burst": 15},
        "max_running_sagas": 100,
    }


async def test_an_override_stored_above_a_ceiling_applies_as_the_ceiling(api: Api) -> None:
    # As stored before the ceilings were lowered, or by a version without them.
    above = {
        "requests": {"per_second": 5000},
        "starts": {"per_second": 2},
        "max_running_sagas": 900,
    }
    await api.node.store.put_tenant_limits(api.a, above)
    shown = (await api.get(api.a, LIMITS)).json()
    assert shown["limits"] == {  # what is stored, as stored
        "requests": {"per_second": 5000.0, "burst": None},
        "starts": {"per_second": 2.0, "burst": None},
        "max_running_sagas": 900,
    }
    assert shown["applied"] == {
        "requests": {"per_second": 100.0, "burst": 200},
        "starts": {"per_second": 2.0, "burst": 4},  # within its ceiling: as set
        "max_running_sagas": 100,
    }
    assert await api.node.running_quota(api.a) == 100


@pytest_asyncio.fixture
async def tight(sqlite_url: str, buckets: str | None) -> AsyncIterator[Api]:
    """Ceilings at the defaults, as ``saga serve`` has them unless the operator raises them."""
    ceilings = LimitCeilings(
        requests=DEFAULTS.requests, starts=DEFAULTS.starts, max_running_sagas=1
    )
    async for api in _api(
        sqlite_url, buckets, max_running_sagas_per_tenant=1, limit_ceilings=ceilings
    ):
        yield api


async def test_an_override_stored_above_a_ceiling_is_not_admitted_past_it(tight: Api) -> None:
    tight.participants.gates["reserve"] = asyncio.Event()  # every saga waits at its first step
    above = {"requests": {"per_second": 1000, "burst": 50}, "max_running_sagas": 40}
    await tight.node.store.put_tenant_limits(tight.a, above)
    assert (await tight.start(tight.a)).status_code == 201
    refused = await tight.start(tight.a)  # the running cap's ceiling: 1
    assert refused.status_code == 429, refused.text
    assert "sagas running" in refused.json()["detail"]
    # Two starts spent two requests of a bucket of 8 (the ceiling, not 50).
    assert await tight.admitted(tight.a, 8) == [200] * 6 + [429] * 2
    refused = await tight.get(tight.a)
    assert refused.headers["ratelimit-policy"] == '"requests";q=8;w=8000'


async def test_with_the_ceilings_at_the_defaults_an_admin_may_only_lower_them(tight: Api) -> None:
    raised = await tight.put(tight.a, {"requests": {"per_second": 0.001, "burst": 9}})
    assert raised.status_code == 422, raised.text
    assert "above the ceiling of 8" in raised.json()["detail"]
    lowered = await tight.put(tight.a, {"requests": {"per_second": 0.001, "burst": 2}})
    assert lowered.status_code == 200, lowered.text
    assert await tight.admitted(tight.a, 3) == [200, 200, 429]
