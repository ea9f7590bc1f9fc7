"""Rate limits through the real app and a real Redis: a tenant flooding the API is refused with
429 and the draft-standard headers while another tenant's starts all go through; when Redis
dies mid-run the documented fallback (per-node buckets) takes over, and nothing answers 500.

Latency isolation is measured as a ratio in ``bench/`` (never a timed assertion here)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from saga_orchestrator.api import create_app
from saga_orchestrator.orchestrator import Orchestrator
from saga_orchestrator.security.limits import Limit, RateLimiter, RequestLimits
from saga_orchestrator.security.tokens import (
    Authenticator,
    AuthSettings,
    Role,
    generate_secret,
    mint_token,
)
from tests.integration.api.support import FAST_OPTIONS, INSTANCES, register, saga, steps
from tests.integration.engine.support import Participants

SECRET = generate_secret()
FLOOD, CALM = "flood", "calm"
ORDER = {"name": "order", "version": "1.0.0", "steps": [{"name": "a", "action": "reserve"}]}
LIMITS = RequestLimits(requests=Limit(rate=1000, burst=1000), starts=Limit(rate=0.01, burst=10))
"""Starts refill one token per 100 s: however slowly a run goes, what is admitted is the burst."""


def auth(tenant: str) -> dict[str, str]:
    token = mint_token(SECRET, subject=tenant, tenant_id=tenant, roles=[Role.ADMIN], ttl=600)
    return {"Authorization": f"Bearer {token}"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def redis_server() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A Redis of this test's own, so killing it touches nothing else."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("redis-server is not installed; CI=true requires it")
        pytest.skip("redis-server is not installed")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield f"redis://127.0.0.1:{port}/0", process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait()


@pytest_asyncio.fixture
async def limited(
    sqlite_url: str, redis_server: tuple[str, subprocess.Popen[bytes]]
) -> AsyncIterator[tuple[FastAPI, RateLimiter]]:
    node = Orchestrator(sqlite_url, handlers=Participants(("reserve",)).registry())
    # A dead Redis refuses connections at once; a live one may be slow to accept on a loaded
    # machine, which must not look like an outage here.
    limiter = RateLimiter(redis_server[0], cooldown=0.2, timeout=5.0, max_connections=16)
    options = replace(
        FAST_OPTIONS,
        authenticator=Authenticator(AuthSettings(hmac_secret=SECRET)),
        rate_limiter=limiter,
        limits=LIMITS,
    )
    app = create_app(node, options)
    async with node, app.router.lifespan_context(app):
        for tenant in (FLOOD, CALM):
            node.tenant_id = tenant
            await node.register(ORDER)
        yield app, limiter
    await limiter.aclose()


def metric(text: str, name: str) -> float:
    """A sample's value in a Prometheus exposition (``name`` with its labels, if any)."""
    (value,) = [line.split(" ")[1] for line in text.splitlines() if line.startswith(name + " ")]
    return float(value)


async def _wait_for_redis(limiter: RateLimiter) -> None:
    async with asyncio.timeout(10):
        while limiter.mode != "redis":
            await limiter.check("probe", "requests", LIMITS.requests)
            await asyncio.sleep(0.05)


async def test_a_flooding_tenant_is_refused_and_another_is_not(
    limited: tuple[FastAPI, RateLimiter],
) -> None:
    app, limiter = limited
    await _wait_for_redis(limiter)
    body = {"saga_name": "order", "context": {}}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app), base_url="http://saga.test"
    ) as client:
        flood = await asyncio.gather(
            *(
                client.post("/api/v1/sagas/instances", json=body, headers=auth(FLOOD))
                for _ in range(100)
            )
        )
        calm = [
            await client.post("/api/v1/sagas/instances", json=body, headers=auth(CALM))
            for _ in range(5)
        ]
    statuses = Counter(r.status_code for r in flood)
    assert statuses[201] == LIMITS.starts.burst  # the burst, then refusals (10x the quota)
    assert statuses[429] == 100 - LIMITS.starts.burst
    assert set(statuses) == {201, 429}
    assert [r.status_code for r in calm] == [201] * 5
    refused = next(r for r in flood if r.status_code == 429)
    assert refused.headers["content-type"] == "application/problem+json"
    assert int(refused.headers["retry-after"]) >= 1
    assert re.fullmatch(
        r'"starts";q=10;w=1000', refused.headers["ratelimit-policy"].split(", ")[-1]
    )
    assert re.search(r'"starts";r=0;t=\d+', refused.headers["ratelimit"])
    assert limiter.mode == "redis"

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app), base_url="http://saga.test"
    ) as client:
        text = (await client.get("/metrics", headers=auth(CALM))).text
    assert metric(text, "saga_rate_limit_refused_total") == 100 - LIMITS.starts.burst
    assert metric(text, 'saga_rate_limit_bucket_decisions_total{decided_by="redis"}') >= 15
    assert metric(text, 'saga_rate_limit_bucket_decisions_total{decided_by="fallback"}') == 0
    assert metric(text, "saga_rate_limit_fallback_active") == 0


async def test_redis_dying_mid_run_falls_back_without_a_500(
    limited: tuple[FastAPI, RateLimiter], redis_server: tuple[str, subprocess.Popen[bytes]]
) -> None:
    app, limiter = limited
    await _wait_for_redis(limiter)
    body = {"saga_name": "order", "context": {}}
    statuses: Counter[int] = Counter()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app), base_url="http://saga.test"
    ) as client:
        for n in range(30):
            if n == 5:
                redis_server[1].send_signal(signal.SIGKILL)
                redis_server[1].wait()
            answer = await client.post("/api/v1/sagas/instances", json=body, headers=auth(CALM))
            statuses[answer.status_code] += 1
            listing = await client.get("/api/v1/sagas/instances", headers=auth(CALM))
            statuses[listing.status_code] += 1
    assert limiter.mode == "memory"  # the documented fallback: this node's own buckets
    assert not [s for s in statuses if s >= 500]
    assert statuses[201] >= LIMITS.starts.burst  # starts went on (within the node's buckets)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app), base_url="http://saga.test"
    ) as client:
        text = (await client.get("/metrics", headers=auth(CALM))).text
    assert metric(text, "saga_rate_limit_fallback_active") == 1  # what an alert watches
    assert metric(text, "saga_rate_limit_redis_errors_total") >= 1
    assert metric(text, 'saga_rate_limit_bucket_decisions_total{decided_by="fallback"}') >= 25


async def test_one_caller_cannot_spend_its_whole_tenants_requests(node: Orchestrator) -> None:
    """With a per-caller limit, a runaway client of a tenant is refused on its own bucket
    while another caller of the same tenant goes on."""
    per_caller = RequestLimits(
        requests=Limit(rate=1000, burst=1000),
        starts=Limit(rate=1000, burst=1000),
        principal=Limit(rate=0.01, burst=3),
    )
    options = replace(
        FAST_OPTIONS,
        authenticator=Authenticator(AuthSettings(hmac_secret=SECRET)),
        rate_limiter=RateLimiter(None),
        limits=per_caller,
    )
    app = create_app(node, options)

    def caller(subject: str) -> dict[str, str]:
        token = mint_token(SECRET, subject=subject, tenant_id=CALM, roles=[Role.ADMIN], ttl=600)
        return {"Authorization": f"Bearer {token}"}

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://a") as client:
            runaway = [
                await client.get("/api/v1/sagas/instances", headers=caller("batch-job"))
                for _ in range(5)
            ]
            other = await client.get("/api/v1/sagas/instances", headers=caller("web-ui"))
    assert [answer.status_code for answer in runaway] == [200, 200, 200, 429, 429]
    refused = runaway[-1]
    assert refused.headers["ratelimit-policy"].split(", ")[-1] == '"principal";q=3;w=300'
    assert int(refused.headers["retry-after"]) >= 1
    assert "caller 'batch-job'" in refused.json()["detail"]
    assert other.status_code == 200


TWO_STARTS = RequestLimits(requests=Limit(rate=1000, burst=1000), starts=Limit(rate=0.01, burst=2))


async def test_rate_limited_calls_leave_no_audit_record_each(node: Orchestrator) -> None:
    """A flood must not become writes: a 429 is refused before the store is touched."""
    options = replace(FAST_OPTIONS, rate_limiter=RateLimiter(None), limits=TWO_STARTS)
    app = create_app(node, options)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://a") as client:
            await register(client, saga("flood", steps("reserve")))
            answers = [
                (await client.post(INSTANCES, json={"saga_name": "flood", "context": {}}))
                for _ in range(6)
            ]
            codes = [answer.status_code for answer in answers]
            assert codes.count(201) == 2 and codes.count(429) == 4, codes
            audit = (await client.get("/api/v1/audit")).json()["items"]
    starts = [a["outcome"] for a in audit if a["action"] == "instance.start"]
    assert starts == ["succeeded", "succeeded"]
