"""Property-based checks of the whole API against its own /openapi.json (schemathesis, every
check): no 5xx, and every answer matches the documented statuses, media types and schemas.

The node runs on a SQLite file and is opened in the app's lifespan, on the event loop where
schemathesis serves the app (as ``saga serve`` will own it). Bounded: 25 examples per operation.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig
from starlette.types import Receive, Scope, Send

from saga_orchestrator.api import create_app
from saga_orchestrator.orchestrator import Orchestrator
from saga_orchestrator.security.tenant_limits import LimitCeilings, bucket_ceiling
from saga_orchestrator.security.tokens import (
    Authenticator,
    AuthSettings,
    Role,
    generate_secret,
    mint_token,
)
from tests.integration.api.support import FAST_OPTIONS, NAMES
from tests.integration.engine.support import Participants

# 422 is a valid answer to data the schema accepts: business rules lie beyond any schema (an
# opaque cursor that does not decode, a context failing the definition's input_schema, a
# definition naming unknown handlers, a version constraint no version matches).
# The coverage phase is unbounded by max_examples; over the saga language's recursive schema
# (the definitions body) it runs for over ten minutes, so that one operation is left to the
# generated (positive and negative) examples.
# A completion callback's token is a credential no schema can generate: without the real one
# the answer is 403 (or 410 for an attempt that is over).
CONFIG = SchemathesisConfig.from_dict(
    {
        "checks": {
            "positive_data_acceptance": {
                "expected-statuses": ["2xx", "3xx", "403", "404", "409", "422"],
            }
        },
        "operations": [
            {
                "include-path-regex": "/steps/\\{step\\}/(complete|fail|heartbeat)$",
                "checks": {
                    "positive_data_acceptance": {
                        "expected-statuses": ["2xx", "403", "404", "409", "410", "422"],
                    }
                },
            },
            {
                "include-path": "/api/v1/sagas/definitions",
                "include-method": "POST",
                "phases": {"coverage": {"enabled": False}},
            },
        ],
    }
)


ORDER = {"name": "order", "version": "1.0.0", "steps": [{"name": "a", "action": "reserve"}]}


# Ceilings as saga serve's default settings make them (with a running cap), so that fuzzed
# PUT /tenant/limits bodies above them meet the refusal and its documented problem.
CEILINGS = LimitCeilings(
    requests=bucket_ceiling(100.0), starts=bucket_ceiling(50.0), max_running_sagas=1000
)

SECRET = generate_secret()
TOKENS = {
    role: mint_token(SECRET, subject=f"a-{role.value}", tenant_id="default", roles=[role], ttl=3600)
    for role in Role
}


def served_app(database_url: str) -> FastAPI:
    """The API with a node that its lifespan opens and closes, behind bearer tokens."""
    node = Orchestrator(
        database_url, handlers=Participants(NAMES).registry(), limit_ceilings=CEILINGS
    )
    authenticator = Authenticator(AuthSettings(hmac_secret=SECRET))
    app = create_app(node, replace(FAST_OPTIONS, authenticator=authenticator))
    own_lifespan = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(served: Any) -> AsyncIterator[None]:
        async with node, own_lifespan(served):
            await node.register(ORDER)
            # Limits a fuzzed PUT /tenant/limits stored (a cap of one running saga, say) would
            # turn the next operation's starts into 429s: each operation starts on defaults.
            await node.tenant_limits.reset(node.tenant_id)
            yield

    app.router.lifespan_context = lifespan
    return app


class Server:
    """An ASGI app that, like a server process, builds a node each time its lifespan starts:
    schemathesis ends the lifespan after each operation, and a closed node does not reopen."""

    def __init__(self, database_url: str) -> None:
        self._database_url = database_url
        self._app = served_app(database_url)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            self._app = served_app(self._database_url)
        await self._app(scope, receive, send)


# Loaded when the module is imported, as @schema.parametrize needs (schemathesis' lazy
# from_fixture loader does not work with pytest 9).
_DATABASE = Path(tempfile.mkdtemp(prefix="saga-schemathesis-")) / "saga.db"
atexit.register(shutil.rmtree, _DATABASE.parent, ignore_errors=True)
schema = schemathesis.openapi.from_asgi(
    "/openapi.json", Server(f"sqlite:///{_DATABASE}"), config=CONFIG
)


class _Caller:
    role: Role = Role.ADMIN


@schema.auth()
class RoleToken:
    """The bearer token of the role under test; schemathesis' ``ignored_auth`` check replays
    each request without it and with a forged one."""

    def get(self, case: schemathesis.Case[Any], context: Any) -> str:
        return TOKENS[_Caller.role]

    def set(self, case: schemathesis.Case[Any], data: str, context: Any) -> None:
        case.headers["Authorization"] = f"Bearer {data}"


@schema.parametrize()
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@pytest.mark.parametrize("role", list(Role), ids=lambda role: role.value)
def test_the_api_keeps_its_openapi_promises(case: schemathesis.Case[Any], role: Role) -> None:
    """With each role's token; every check, ``ignored_auth`` included (a forged or missing
    token must get 401 wherever a role is needed)."""
    _Caller.role = role
    case.call_and_validate()
