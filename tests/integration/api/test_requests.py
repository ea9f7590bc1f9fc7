"""Bad requests never get a 500: oversized bodies (413, with or without Content-Length),
malformed JSON, wrong types, unknown routes and methods all answer problem+json."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from saga_orchestrator.api import create_app
from saga_orchestrator.orchestrator import Orchestrator
from tests.integration.api.support import (
    DEFINITIONS,
    FAST_OPTIONS,
    INSTANCES,
    assert_problem,
    register,
    saga,
    start,
    steps,
)

LIMIT = FAST_OPTIONS.max_body_bytes
SOME_ID = "0b7e2c9e-6f7c-4a44-9b59-2d7f4c1e8a10"
POST_ROUTES = [
    DEFINITIONS,
    INSTANCES,
    f"{INSTANCES}/{SOME_ID}/cancel",
    f"{INSTANCES}/{SOME_ID}/retry",
    f"{INSTANCES}/{SOME_ID}/resolve",
    f"{INSTANCES}/{SOME_ID}/steps/reserve/skip",
    f"{DEFINITIONS}/order/1.0.0/deprecate",
]
BODY_ROUTES = POST_ROUTES[:-1]


@pytest.mark.parametrize("url", POST_ROUTES)
async def test_a_declared_oversized_body_is_413(client: httpx.AsyncClient, url: str) -> None:
    response = await client.post(url, content=b"x" * (LIMIT + 1))
    problem = assert_problem(response, 413, "body-too-large")
    assert str(LIMIT) in problem["detail"]


async def _chunks(total: int, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        chunk = min(size, total - sent)
        sent += chunk
        yield b" " * chunk


@pytest.mark.parametrize("url", BODY_ROUTES)
async def test_a_chunked_oversized_body_is_413(client: httpx.AsyncClient, url: str) -> None:
    response = await client.post(
        url, content=_chunks(LIMIT + 10), headers={"content-type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert_problem(response, 413, "body-too-large")


async def test_a_body_at_the_limit_is_read(client: httpx.AsyncClient) -> None:
    await register(client, saga("order", steps("reserve")))
    body = b'{"saga_name": "order", "context": {"pad": "%s"}}'
    padding = LIMIT - len(body % b"")
    response = await client.post(
        INSTANCES, content=body % (b"p" * padding), headers={"content-type": "application/json"}
    )
    assert len(response.request.content) == LIMIT
    assert response.status_code == 201, response.text


@pytest.mark.parametrize("url", BODY_ROUTES)
@pytest.mark.parametrize(
    "content",
    [b"", b"{", b"null", b"[]", b'"text"', b"\xff\xfe", b'{"reason": ', b"{}" * 3, b"1e999999"],
)
async def test_malformed_bodies_are_4xx_problems(
    client: httpx.AsyncClient, url: str, content: bytes
) -> None:
    response = await client.post(url, content=content, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500, response.text
    assert_problem(response, response.status_code)


@pytest.mark.parametrize(("depth", "status"), [(100, 201), (300, 422), (5000, 400)])
async def test_deeply_nested_contexts_are_refused_with_4xx(
    client: httpx.AsyncClient, depth: int, status: int
) -> None:
    await register(client, saga("order", steps("reserve")))
    deep = b'{"saga_name": "order", "context": ' + b"[" * depth + b"]" * depth + b"}"
    response = await client.post(
        INSTANCES, content=deep, headers={"content-type": "application/json"}
    )
    assert response.status_code == status, response.text


async def test_the_default_limit_is_one_mebibyte(node: Orchestrator) -> None:
    app = create_app(node)
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://saga.test") as client:
        over = await client.post(DEFINITIONS, content=b" " * (1024 * 1024 + 1))
        under = await client.post(DEFINITIONS, content=b" " * (1024 * 1024))
    assert_problem(over, 413, "body-too-large")
    assert_problem(under, 422, "invalid-definition")


async def test_unknown_routes_and_methods(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/api/v1/nothing"), 404, "not-found")
    not_allowed = await client.delete(f"{INSTANCES}/{uuid.uuid4()}")
    assert_problem(not_allowed, 405, "method-not-allowed")
    assert "GET" in not_allowed.headers["allow"]
    assert_problem(await client.put(DEFINITIONS, json={}), 405, "method-not-allowed")


async def test_wrong_types_in_query_and_headers(client: httpx.AsyncClient) -> None:
    await register(client, saga("order", steps("reserve")))
    instance_id = await start(client, "order", {})
    assert_problem(await client.get(INSTANCES, params={"limit": "many"}), 422, "invalid-request")
    bad_key = await client.post(
        INSTANCES, json={"saga_name": "order"}, headers={"Idempotency-Key": "x" * 300}
    )
    assert_problem(bad_key, 422, "invalid-request")
    events = await client.get(f"{INSTANCES}/{instance_id}/events", params={"after": "1.5"})
    assert_problem(events, 422, "invalid-request")
