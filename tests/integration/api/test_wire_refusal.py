"""A start by a tenant the node knows is over its first bucket is answered by uvicorn's own
protocol (``console.refusing_protocol``), from the parser, with the answer the edge layer
gives: the same problem document and headers. Everything else (another tenant, a refusal that
must spend a bucket first, a request still being answered on the connection) goes through
uvicorn as before, and HTTP/1.1 stays whole: answers in order, keep-alive, ``Connection:
close``. Real servers on real sockets; which path answered is told by
:attr:`.WireRefusals.answered`."""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import httpx
import jwt
import pytest_asyncio
import uvicorn

from saga_orchestrator.api import create_app
from saga_orchestrator.api.wire_refusal import WireRefusals
from saga_orchestrator.console.refusing_protocol import refusing_protocol
from saga_orchestrator.orchestrator import Orchestrator
from saga_orchestrator.security.limits import Limit, RateLimiter, RequestLimits
from saga_orchestrator.security.tokens import Authenticator, AuthSettings, generate_secret
from tests.integration.api.support import FAST_OPTIONS, INSTANCES, until
from tests.integration.engine.support import Participants

SECRET = generate_secret()
ORDER = {"name": "order", "version": "1.0.0", "steps": [{"name": "a", "action": "reserve"}]}
REQUESTS_BURST = 3
LIMITS = RequestLimits(
    requests=Limit(rate=0.01, burst=REQUESTS_BURST), starts=Limit(rate=1000, burst=1000)
)
"""The requests bucket refuses first (a flood over its request rate, as the flood of the
isolation bench mostly is); it refills one token per 100 s, however slow the run."""
KEEP_ALIVE = 5
"""Seconds the wire server keeps an idle connection."""
BODY = b'{"saga_name": "order", "context": {}}'
# Headers whose values change from one answer to the next.
MOMENT = {"date", "retry-after", "ratelimit", "x-request-id"}


@functools.cache
def token(tenant: str) -> str:
    """One token per tenant for the whole module: the node verifies it once, then knows it."""
    now = int(time.time())
    claims = {"sub": f"{tenant}-user", "tenant": tenant, "roles": ["operator"], "jti": tenant}
    return jwt.encode(claims | {"iat": now, "exp": now + 600}, SECRET, algorithm="HS256")


@dataclass
class Served:
    wire: str
    """A server with the refusing protocol."""
    plain: str
    """A server of the same app with uvicorn's own protocol."""
    refusals: WireRefusals
    port: int


async def _serve(config: uvicorn.Config) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    await until(lambda: server.started)
    return server, task, server.servers[0].sockets[0].getsockname()[1]


@pytest_asyncio.fixture
async def served(sqlite_url: str) -> AsyncIterator[Served]:
    node = Orchestrator(sqlite_url, handlers=Participants(("reserve",)).registry())
    limiter = RateLimiter(None)
    authenticator = Authenticator(AuthSettings(hmac_secret=SECRET, leeway=0))
    options = replace(
        FAST_OPTIONS, authenticator=authenticator, rate_limiter=limiter, limits=LIMITS
    )
    app = create_app(node, options)
    refusals: WireRefusals = app.state.wire_refusals
    async with node, app.router.lifespan_context(app):
        for tenant in ("flood", "calm"):
            node.tenant_id = tenant
            await node.register(ORDER)
        wire = uvicorn.Config(
            app,
            http=refusing_protocol(refusals),
            timeout_keep_alive=KEEP_ALIVE,
            host="127.0.0.1",
            port=0,
            log_level="warning",
            lifespan="off",
        )
        plain = uvicorn.Config(
            app, http="httptools", host="127.0.0.1", port=0, log_level="warning", lifespan="off"
        )
        wire_server, wire_task, wire_port = await _serve(wire)
        plain_server, plain_task, plain_port = await _serve(plain)
        try:
            yield Served(
                wire=f"http://127.0.0.1:{wire_port}",
                plain=f"http://127.0.0.1:{plain_port}",
                refusals=refusals,
                port=wire_port,
            )
        finally:
            wire_server.should_exit = plain_server.should_exit = True
            await asyncio.wait_for(asyncio.gather(wire_task, plain_task), 10)
    await limiter.aclose()


async def start(base_url: str, tenant: str, **headers: str) -> httpx.Response:
    auth = {"Authorization": f"Bearer {token(tenant)}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        return await client.post(INSTANCES, content=BODY, headers=auth | headers)


async def exhaust(served: Served, tenant: str = "flood") -> None:
    """Spend the tenant's requests bucket (its token is verified and cached meanwhile)."""
    codes = [(await start(served.plain, tenant)).status_code for _ in range(REQUESTS_BURST)]
    assert codes == [201] * REQUESTS_BURST


def raw_request(tenant: str, *, close: bool = False, path: str = INSTANCES) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: saga.test",
        f"Authorization: Bearer {token(tenant)}",
        "Content-Type: application/json",
        f"Content-Length: {len(BODY)}",
    ]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + BODY


async def read_answers(reader: asyncio.StreamReader, count: int) -> list[tuple[int, bytes]]:
    """``count`` HTTP/1.1 answers off one connection: each status and body."""
    answers = []
    for _ in range(count):
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE)[1])  # type: ignore[index]
        answers.append((status, await reader.readexactly(length)))
    return answers


async def test_a_known_flood_gets_the_edge_layers_answer_from_the_protocol(
    served: Served,
) -> None:
    await exhaust(served)
    before = served.refusals.answered

    early = await start(served.wire, "flood", **{"X-Request-Id": "flood-4"})
    full = await start(served.plain, "flood")

    assert served.refusals.answered == before + 1  # the wire server's answer only
    assert early.status_code == full.status_code == 429
    assert early.json() == full.json()
    assert early.json()["detail"] == "tenant 'flood' is over its requests limit"
    assert set(early.headers) == set(full.headers)
    for name in set(full.headers) - MOMENT:
        assert early.headers[name] == full.headers[name], name
    assert early.headers["x-request-id"] == "flood-4"
    assert early.headers["ratelimit-policy"] == '"requests";q=3;w=300'
    assert re.fullmatch(r'"requests";r=0;t=\d+', early.headers["ratelimit"])
    assert 1 <= int(early.headers["retry-after"]) <= 100


async def test_a_refusal_of_the_starts_bucket_is_answered_by_the_protocol_too(
    served: Served,
) -> None:
    """The tenant's own limits (read once, then cached) leave requests to spare and refuse
    its starts: the request token is spent from memory and the refusal written at once."""
    admin = jwt.encode(
        {"sub": "root", "tenant": "own", "roles": ["admin"], "exp": int(time.time()) + 600},
        SECRET,
        algorithm="HS256",
    )
    async with httpx.AsyncClient(base_url=served.plain, timeout=10) as client:
        limits = {"requests": {"per_second": 1000}, "starts": {"per_second": 0.01, "burst": 1}}
        answer = await client.put(
            "/api/v1/tenant/limits", json=limits, headers={"Authorization": f"Bearer {admin}"}
        )
        assert answer.status_code == 200, answer.text
        registered = await client.post(
            "/api/v1/sagas/definitions", json=ORDER, headers={"Authorization": f"Bearer {admin}"}
        )
        assert registered.status_code in (200, 201), registered.text
    assert (await start(served.plain, "own")).status_code == 201
    before = served.refusals.answered

    refused = await start(served.wire, "own")

    assert served.refusals.answered == before + 1
    assert refused.status_code == 429
    assert refused.json()["detail"] == "tenant 'own' is over its starts limit"
    assert refused.headers["ratelimit-policy"] == '"requests";q=2000;w=2, "starts";q=1;w=100'


async def test_other_requests_go_through_uvicorn(served: Served) -> None:
    """Another tenant starts; a caller whose token the node has not verified yet, or a route
    other than the start, is answered by the app."""
    await exhaust(served)
    before = served.refusals.answered

    assert (await start(served.wire, "calm")).status_code == 201
    async with httpx.AsyncClient(base_url=served.wire, timeout=10) as client:
        assert (await client.get("/health")).status_code == 200
        unverified = await client.post(INSTANCES, content=BODY, headers={"Authorization": "x"})
    assert unverified.status_code == 401

    assert served.refusals.answered == before


async def test_answers_stay_in_order_on_a_pipelined_connection(served: Served) -> None:
    """Two known refusals and a health check sent in one write: three answers, in order, on
    the connection it keeps open; the health check went through the app."""
    await exhaust(served)
    before = served.refusals.answered
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    try:
        health = b"GET /health HTTP/1.1\r\nHost: saga.test\r\n\r\n"
        writer.write(raw_request("flood") + raw_request("flood") + health)
        answers = await asyncio.wait_for(read_answers(reader, 3), 10)
        assert [status for status, _ in answers] == [429, 429, 200]
        writer.write(raw_request("flood"))  # the connection is still open
        assert [s for s, _ in await asyncio.wait_for(read_answers(reader, 1), 10)] == [429]
    finally:
        writer.close()
    assert served.refusals.answered == before + 3


async def test_a_request_behind_one_still_being_answered_waits_its_turn(served: Served) -> None:
    """A start admitted (answered by the app) and a known refusal right behind it: the
    refusal is not answered first, so it goes through uvicorn's queue."""
    await exhaust(served, "calm")
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    try:
        writer.write(raw_request("flood") + raw_request("calm"))
        answers = await asyncio.wait_for(read_answers(reader, 2), 10)
    finally:
        writer.close()
    # flood has tokens left (its bucket is untouched here); calm's is spent.
    assert [status for status, _ in answers] == [201, 429]


async def test_connection_close_is_honoured_and_idle_connections_time_out(
    served: Served,
) -> None:
    await exhaust(served)
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(raw_request("flood", close=True))
    # Closed after the answer, well before the keep-alive would have closed it.
    head = await asyncio.wait_for(reader.read(), KEEP_ALIVE - 1)
    writer.close()
    assert head.startswith(b"HTTP/1.1 429 ") and b"\r\nconnection: close\r\n" in head

    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(raw_request("flood"))
    assert [s for s, _ in await asyncio.wait_for(read_answers(reader, 1), 10)] == [429]
    assert await asyncio.wait_for(reader.read(), 2 * KEEP_ALIVE) == b""  # keep-alive ran out
    writer.close()


async def test_protocol_refusals_are_counted_in_the_metrics(served: Served) -> None:
    await exhaust(served)
    for _ in range(4):
        await start(served.wire, "flood")
    admin = jwt.encode(
        {"sub": "root", "tenant": "calm", "roles": ["admin"], "exp": int(time.time()) + 600},
        SECRET,
        algorithm="HS256",
    )
    async with httpx.AsyncClient(base_url=served.plain, timeout=10) as client:
        metrics = (await client.get("/metrics", headers={"Authorization": f"Bearer {admin}"})).text
    line = next(
        line
        for line in metrics.splitlines()
        if line.startswith("saga_http_requests_total{")
        and f'route="{INSTANCES}"' in line
        and 'status="429"' in line
    )
    assert line.endswith(" 4.0")
