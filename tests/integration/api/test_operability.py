"""Liveness, readiness, metrics, and the answers when the database fails or a bug escapes."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from saga_orchestrator.api.services import expected_schema_version
from saga_orchestrator.errors import StoreError, StoreUnavailable
from saga_orchestrator.orchestrator import Orchestrator
from tests.integration.api.support import (
    DEFINITIONS,
    INSTANCES,
    assert_problem,
    register,
    saga,
    start,
    steps,
    wait_status,
)
from tests.integration.engine.support import Participants


async def test_health_is_always_200(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_ready_when_the_schema_is_current(
    client: httpx.AsyncClient, node: Orchestrator
) -> None:
    response = await client.get("/ready")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "schema_version": expected_schema_version(node.store),
    }


async def test_not_ready_when_the_schema_is_behind(
    client: httpx.AsyncClient, node: Orchestrator, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def old_schema() -> int:
        return 0

    monkeypatch.setattr(node.store, "schema_version", old_schema)
    response = await client.get("/ready")
    problem = assert_problem(response, 503, "not-ready")
    assert "schema version 0" in problem["detail"]
    assert response.headers["retry-after"] == "5"
    assert (await client.get("/health")).status_code == 200


@pytest.mark.parametrize("error", [StoreUnavailable("down"), StoreError("disk I/O error")])
async def test_not_ready_when_the_database_fails(
    client: httpx.AsyncClient,
    node: Orchestrator,
    monkeypatch: pytest.MonkeyPatch,
    error: Exception,
) -> None:
    async def failing() -> int:
        raise error

    monkeypatch.setattr(node.store, "schema_version", failing)
    response = await client.get("/ready")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"


async def test_an_unavailable_store_is_503_with_retry_after(
    client: httpx.AsyncClient, node: Orchestrator, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailable("PostgreSQL unavailable: connection refused to 10.0.0.7")

    monkeypatch.setattr(node.store, "list_instances", unavailable)
    response = await client.get(INSTANCES)
    problem = assert_problem(response, 503, "store-unavailable")
    assert response.headers["retry-after"] == "5"
    assert "10.0.0.7" not in response.text, "no internals in answers"
    assert problem["detail"]


@pytest.mark.parametrize(
    "error",
    [RuntimeError("secret table exploded"), StoreError("PostgreSQL error: secret column")],
)
async def test_an_unexpected_error_is_a_500_problem_without_internals(
    app: FastAPI, node: Orchestrator, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise error

    monkeypatch.setattr(node.store, "list_definition_names", broken)
    transport = httpx.ASGITransport(app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://saga.test") as client:
        response = await client.get(DEFINITIONS)
    problem = assert_problem(response, 500, "internal-error")
    assert "secret" not in response.text
    assert "Traceback" not in response.text
    assert problem["detail"]


async def test_metrics_count_requests_and_sagas(
    client: httpx.AsyncClient, participants: Participants
) -> None:
    participants.script["charge"] = ["reject"]
    await register(client, saga("order", steps("reserve", "charge")))
    await register(client, saga("easy", steps("reserve")))
    failing = await start(client, "order", {})
    passing = await start(client, "easy", {})
    for instance_id in (failing, passing):
        await wait_status(client, instance_id)
    await client.get(f"{INSTANCES}/not-a-uuid")
    await client.get("/no/such/route")
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text

    def value(sample: str) -> float:
        match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
        assert match, f"{sample} not in metrics:\n{text}"
        return float(match.group(1))

    started = 'saga_http_requests_total{method="POST",route="/api/v1/sagas/instances",status="201"}'
    assert value(started) == 2
    invalid = (
        'saga_http_requests_total{method="GET",route="/api/v1/sagas/instances/{instance_id}",'
        'status="422"}'
    )
    assert value(invalid) == 1
    assert value('saga_http_requests_total{method="GET",route="<unmatched>",status="404"}') == 1
    duration = (
        'saga_http_request_duration_seconds_count{method="POST",route="/api/v1/sagas/instances"}'
    )
    assert value(duration) == 2
    own = 'tenant="default"'
    assert value(f'saga_instances_started_total{{saga_name="order",{own}}}') == 1
    order = f'saga_instances_finished_total{{saga_name="order",status="compensated",{own}}}'
    assert value(order) == 1
    easy = f'saga_instances_finished_total{{saga_name="easy",status="completed",{own}}}'
    assert value(easy) == 1


async def test_each_app_has_its_own_metrics(node: Orchestrator) -> None:
    from saga_orchestrator.api import create_app

    one, two = create_app(node), create_app(node)
    for app in (one, two):
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://saga.test") as client:
            await client.get("/health")
            text = (await client.get("/metrics")).text
        assert 'saga_http_requests_total{method="GET",route="/health",status="200"} 1.0' in text
