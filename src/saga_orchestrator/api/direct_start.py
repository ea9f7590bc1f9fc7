"""``POST /api/v1/sagas/instances`` answered without FastAPI's routing and dependency
resolution: the start is the route a node serves most, and those two cost about as much as
the start itself (docs/performance.md, "Starting over HTTP").

Only a well-formed start is answered here: a JSON body that :class:`.StartRequest` accepts and
at most one valid ``Idempotency-Key``. Anything else goes on to the FastAPI route, which stays
the one definition of the route (its OpenAPI description, and every validation error in its
usual form), so this path never answers a request differently from it. From the access check
on, the path is the route's own: the same :meth:`.Access.admit` (token, role, rate limits),
the same :meth:`.InstanceService.start`, the same problem documents
(:meth:`.ProblemHandlers.saga_problem`), and the route set in the scope for the failure audit.
"""

from __future__ import annotations

import logging
import re
from typing import Final

import orjson
import pydantic
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import Receive, Scope, Send

from saga_orchestrator.api.access import START, Access
from saga_orchestrator.api.audit import RequestContext
from saga_orchestrator.api.problems import INTERNAL, ProblemHandlers, problem
from saga_orchestrator.api.schemas import KEY_PATTERN, StartRequest
from saga_orchestrator.api.services import InstanceService
from saga_orchestrator.errors import SagaError

log = logging.getLogger("saga_orchestrator.api")

_JSON_TYPES: Final = frozenset({b"application/json", b"application/json; charset=utf-8"})
_KEY: Final = re.compile(KEY_PATTERN)
_IDEMPOTENCY_KEY: Final = b"idempotency-key"
_CONTENT_TYPE: Final = b"content-type"


class DirectStart:
    def __init__(
        self,
        *,
        access: Access,
        instances: InstanceService,
        problems: ProblemHandlers,
        route: BaseRoute,
    ) -> None:
        self.access = access
        self.instances = instances
        self.problems = problems
        self.route = route
        """The FastAPI route of the start, for what reads ``scope["route"]`` afterwards."""

    async def answer(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        body: bytes,
        authorization: str | None,
        context: RequestContext,
    ) -> bool:
        """Answer the start in ``scope`` if it is well-formed; ``False``: it was not
        answered (not a start, or one the FastAPI route must judge)."""
        if scope["method"] != "POST" or scope["path"] != START:
            return False
        parsed = _well_formed(scope, body)
        if parsed is None:
            return False
        start, key = parsed
        scope["route"] = self.route
        response = await self._start(start, key, authorization, context)
        await response(scope, receive, send)
        return True

    async def _start(
        self,
        start: StartRequest,
        key: str | None,
        authorization: str | None,
        context: RequestContext,
    ) -> Response:
        try:
            principal = await self.access.admit("POST", START, authorization)
            tenant = self.access.default_tenant if principal is None else principal.tenant_id
            started = await self.instances.start(
                tenant,
                start.saga_name,
                version=start.version,
                context=start.context,
                idempotency_key=key,
            )
        except SagaError as error:
            return self.problems.saga_problem(error, START)
        except Exception:  # the route's handler would answer it the same way
            log.exception("request %s failed", START)
            return problem(INTERNAL, instance=START)
        result = started.result
        body = {
            "id": result.instance_id,
            "saga_name": result.definition_name,
            "version": result.definition_version,
            "status": started.status.value,
        }
        return Response(
            orjson.dumps(body),
            status_code=201 if result.created else 200,
            headers={"Location": f"{START}/{result.instance_id}"},
            media_type="application/json",
        )


def _well_formed(scope: Scope, body: bytes) -> tuple[StartRequest, str | None] | None:
    """The start and its idempotency key, if the route would accept both as they are."""
    content_type: bytes | None = None
    keys: list[bytes] = []
    for name, value in scope["headers"]:
        if name == _CONTENT_TYPE:
            if content_type is not None:
                return None
            content_type = bytes(value).lower()
        elif name == _IDEMPOTENCY_KEY:
            keys.append(value)
    if content_type not in _JSON_TYPES or len(keys) > 1:
        return None
    key = None
    if keys:
        key = bytes(keys[0]).decode("latin-1")
        if _KEY.fullmatch(key) is None:
            return None
    try:
        # orjson accepts a subset of what the route's json.loads does, with the same values
        # (it refuses NaN, lone surrogates, integers past 64 bits: the route judges those).
        start = StartRequest.model_validate(orjson.loads(body))
    except (orjson.JSONDecodeError, pydantic.ValidationError):
        return None
    return start, key
