"""A start is answered by :class:`.DirectStart`, outside FastAPI's routing, exactly as the
FastAPI route answers it: each request of a table goes to two fresh nodes, one with the direct
path and one without, and the answers (status, problem document, the headers a client reads)
and what each node recorded in its audit log must be equal. The table also says which path
must answer: a request the direct path takes on when it must leave it to the route (or the
other way round) fails, so the comparison never passes by comparing the route with itself.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from saga_orchestrator.api import create_app
from saga_orchestrator.api.direct_start import DirectStart
from saga_orchestrator.orchestrator import Orchestrator
from saga_orchestrator.security.limits import Limit, RateLimiter, RequestLimits
from saga_orchestrator.security.tokens import Authenticator, AuthSettings, Role, generate_secret
from saga_orchestrator.store import AuditFilter
from tests.integration.api.support import FAST_OPTIONS, INSTANCES
from tests.integration.engine.support import Participants

SECRET = generate_secret()
ORDER = {
    "name": "order",
    "version": "1.0.0",
    "input_schema": {
        "type": "object",
        "properties": {"sku": {"type": "string"}},
        "required": ["sku"],
    },
    "steps": [{"name": "a", "action": "reserve"}],
}
LIMITS = RequestLimits(requests=Limit(rate=1000, burst=1000), starts=Limit(rate=0.01, burst=3))
JSON = {"Content-Type": "application/json"}


def bearer(role: Role = Role.OPERATOR, tenant: str = "acme") -> dict[str, str]:
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": f"{tenant}-user",
        "tenant": tenant,
        "roles": [role.value],
        "jti": "j1",
    }
    claims |= {"iat": now, "exp": now + 600}
    return {"Authorization": f"Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}"}


@dataclass(frozen=True)
class Call:
    body: bytes
    headers: dict[str, str]


def call(body: Any, **headers: str) -> Call:
    raw = body if isinstance(body, bytes) else httpx.Request("POST", "/", json=body).content
    return Call(raw, {**JSON, **bearer(), **headers})


VALID = {"saga_name": "order", "context": {"sku": "A-1"}}
CASES: dict[str, tuple[list[Call], bool]] = {
    # name: (the calls, in order; whether the direct path answers the last one, and every
    # call before it)
    "a start": ([call(VALID)], True),
    "a start of a version": ([call({**VALID, "version": "^1.0.0"})], True),
    "a start with a charset": (
        [call(VALID, **{"Content-Type": "application/json; charset=utf-8"})],
        True,
    ),
    "the same key and body again": (
        [call(VALID, **{"Idempotency-Key": "k-1"}), call(VALID, **{"Idempotency-Key": "k-1"})],
        True,
    ),
    "the same key, another body": (
        [
            call(VALID, **{"Idempotency-Key": "k-1"}),
            call({**VALID, "context": {"sku": "B"}}, **{"Idempotency-Key": "k-1"}),
        ],
        True,
    ),
    "no such saga": ([call({"saga_name": "nothing"})], True),
    "no such version": ([call({**VALID, "version": "2.0.0"})], True),
    "a context failing the input schema": ([call({"saga_name": "order", "context": {}})], True),
    "a context with NUL": ([call({"saga_name": "order", "context": {"sku": "a\x00"}})], True),
    "no token": ([Call(call(VALID).body, JSON)], True),
    "a bad token": ([call(VALID, Authorization="Bearer nope")], True),
    "a viewer": ([call(VALID, **bearer(Role.VIEWER))], True),
    # Spent by the third start: the fourth is refused by the edge layer before it gets here
    # (test_early_refusal.py); the last call checked is the third.
    "up to the start limit": ([call(VALID) for _ in range(3)], True),
    # left to the route: it owns every validation error
    "not JSON": ([call(b"{nope")], False),
    "an empty body": ([call(b"")], False),
    "an unknown field": ([call({**VALID, "owner": "x"})], False),
    "no saga name": ([call({"context": {}})], False),
    "a version that is no constraint": ([call({**VALID, "version": "one"})], True),
    "a version with other characters": ([call({**VALID, "version": "1.0.0;x"})], False),
    "a bad idempotency key": ([call(VALID, **{"Idempotency-Key": "k\x7f"})], False),
    "NaN in the context": ([call(b'{"saga_name": "order", "context": {"sku": NaN}}')], False),
    "a form body": (
        [call(b"saga_name=order", **{"Content-Type": "application/x-www-form-urlencoded"})],
        False,
    ),
    "no content type": ([Call(call(VALID).body, bearer())], False),
    "bad JSON and no token": ([Call(b"{nope", JSON)], False),
}
READ_HEADERS = (
    "content-type",
    "location",
    "www-authenticate",
    "retry-after",
    "ratelimit",
    "ratelimit-policy",
)


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: Any
    audit: list[tuple[str, str, str, str, Any]]
    answered_directly: list[bool]


@asynccontextmanager
async def node_api(
    url: str, running_quota: int | None
) -> AsyncIterator[tuple[httpx.AsyncClient, Orchestrator]]:
    participants = Participants(("reserve",))
    participants.gates["reserve"] = asyncio.Event()  # never set: every saga stays running
    node = Orchestrator(
        url,
        tenant_id="acme",
        handlers=participants.registry(),
        max_running_sagas_per_tenant=running_quota,
    )
    options = replace(
        FAST_OPTIONS,
        authenticator=Authenticator(AuthSettings(hmac_secret=SECRET, leeway=0)),
        rate_limiter=RateLimiter(None),
        limits=LIMITS,
    )
    await node.open()
    try:
        await node.register(ORDER)
        app = create_app(node, options)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app)
            async with httpx.AsyncClient(transport=transport, base_url="http://saga.test") as c:
                yield c, node
    finally:
        await node.close(grace=0.1)  # the gated steps are cut short, not awaited


async def answer(
    tmp_path: Path, calls: list[Call], *, direct: bool, running_quota: int | None = None
) -> Answer:
    answered: list[bool] = []
    original = DirectStart.answer

    async def spying(self: DirectStart, *args: Any, **kwargs: Any) -> bool:
        took = await original(self, *args, **kwargs) if direct else False
        answered.append(took)
        return took

    url = f"sqlite:///{tmp_path}/{uuid.uuid4().hex}.db"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DirectStart, "answer", spying)
        async with node_api(url, running_quota) as (client, node):
            responses = [
                await client.post(INSTANCES, content=c.body, headers=c.headers) for c in calls
            ]
            records = await node.store.list_audit("acme", AuditFilter(), limit=100)
    last = responses[-1]
    ids = {r.json()["id"]: f"<id {n}>" for n, r in enumerate(responses) if "id" in r.json()}
    return Answer(
        status=last.status_code,
        headers={h: _same_ids(last.headers[h], ids) for h in READ_HEADERS if h in last.headers},
        body=_same_ids(last.json(), ids),
        audit=[
            (
                r.entry.actor,
                r.entry.action,
                r.entry.outcome,
                _same_ids(r.entry.target_id, ids),
                _same_ids(r.entry.details, ids),
            )
            for r in records
        ],
        answered_directly=answered,
    )


def _same_ids(value: Any, ids: dict[str, str]) -> Any:
    """``value`` with the instances' random ids replaced by their order of creation."""
    if isinstance(value, str):
        for real, stable in ids.items():
            value = value.replace(real, stable)
        return value
    if isinstance(value, dict):
        return {k: _same_ids(v, ids) for k, v in value.items() if k != "request_id"}
    if isinstance(value, list):
        return [_same_ids(v, ids) for v in value]
    return value


@pytest.mark.parametrize("case", list(CASES))
async def test_the_direct_start_answers_as_the_route_does(tmp_path: Path, case: str) -> None:
    calls, direct_answers = CASES[case]
    direct = await answer(tmp_path, calls, direct=True)
    routed = await answer(tmp_path, calls, direct=False)
    assert direct.answered_directly == [True] * (len(calls) - 1) + [direct_answers]
    assert routed.answered_directly == [False] * len(calls)
    assert (direct.status, direct.headers, direct.body) == (
        routed.status,
        routed.headers,
        routed.body,
    )
    assert direct.audit == routed.audit


async def test_a_start_over_the_running_quota_is_refused_as_the_route_does(
    tmp_path: Path,
) -> None:
    calls = [call(VALID), call(VALID)]
    direct = await answer(tmp_path, calls, direct=True, running_quota=1)
    routed = await answer(tmp_path, calls, direct=False, running_quota=1)
    assert direct.answered_directly == [True, True]
    assert direct.status == 429
    assert (direct.status, direct.headers, direct.body, direct.audit) == (
        routed.status,
        routed.headers,
        routed.body,
        routed.audit,
    )


def test_every_case_is_told_apart() -> None:
    """The table holds successes and each kind of failure, on both paths (a table of only
    successes, or only fallbacks, would not show that the two paths agree)."""
    directly = [name for name, (_, direct) in CASES.items() if direct]
    routed = [name for name, (_, direct) in CASES.items() if not direct]
    assert len(directly) >= 10
    assert len(routed) >= 8
