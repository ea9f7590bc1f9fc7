"""The one ASGI layer in front of the routes: what every HTTP request gets before routing and
after its answer, in a single pass instead of one middleware each.

In order, for each request:

1. its context (:class:`.RequestContext`) and ``X-Request-Id`` (the client's, if printable and
   at most 128 characters, else a new UUID), added to the answer;
2. the body size limit, enforced on the body as it arrives: a declared ``Content-Length``
   over the limit is refused at once, and a body sent without one (chunked) as soon as it
   grows past the limit, before any route reads it (413);
3. a start refused early: a caller whose tenant the limiter already knows is over its limits
   gets its 429 here (:meth:`.Access.known_refusal`), without routing, dependency resolution
   or a signature check, so that a flood costs the node as little as possible;
4. a well-formed start answered directly (:class:`.DirectStart`), without FastAPI's routing;
5. the app; then, for a mutating call that ended in an error, its audit entry (nothing
   changed, so nothing else recorded it: :func:`.record_failure`);
6. the request's count and duration in the metrics, labelled with its route's template.

Each of these was a middleware of its own; merged, a request crosses one ``send`` wrapper and
one frame instead of three.
"""

from __future__ import annotations

import time
from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from saga_orchestrator.api.access import START, Access
from saga_orchestrator.api.audit import RequestContext, record_failure, request_id_of, use_context
from saga_orchestrator.api.direct_start import DirectStart
from saga_orchestrator.api.metrics import UNMATCHED_ROUTE, ApiMetrics
from saga_orchestrator.api.problems import TOO_LARGE, kind_of, problem
from saga_orchestrator.store import Store

_REQUEST_ID: Final = b"x-request-id"


class _ClientGone(Exception):
    """The client disconnected before its whole body arrived."""


class EdgeMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        access: Access,
        metrics: ApiMetrics,
        store: Store,
        default_actor: str,
        max_body_bytes: int,
        direct_start: DirectStart | None = None,
    ) -> None:
        self.app = app
        self.direct_start = direct_start
        self.access = access
        self.metrics = metrics
        self.store = store
        self.default_actor = default_actor
        self.max_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        request_id, length, authorization = _read_headers(scope)
        context = RequestContext(request_id=request_id, actor=self.default_actor)
        status = 500  # unless a response starts: an exception becomes a 500 further out
        route: str | None = None
        id_header = (_REQUEST_ID, request_id.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), id_header]}
            await send(message)

        with use_context(context):
            try:
                route = await self._serve(
                    scope,
                    receive,
                    send_with_id,
                    context,
                    length=length,
                    authorization=authorization,
                )
            finally:
                try:
                    if status >= 400:
                        await record_failure(self.store, scope, context, status)
                finally:
                    if route is None:
                        route = getattr(scope.get("route"), "path", None) or UNMATCHED_ROUTE
                    elapsed = time.perf_counter() - began
                    self.metrics.observe(scope["method"], route, status, elapsed)

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        context: RequestContext,
        *,
        length: int,
        authorization: str | None,
    ) -> str | None:
        """Answer the request; returns the route template when this layer answered it for a
        known route (else the router sets it in ``scope``)."""
        if length > self.max_bytes:
            await self._too_large(scope, receive, send)
            return None
        try:
            body = await self._body(receive)
        except _ClientGone:
            return None  # before sending its whole body: there is no one to answer
        if body is None:
            await self._too_large(scope, receive, send)
            return None
        refused = await self.access.known_refusal(scope["method"], scope["path"], authorization)
        if refused is not None:
            principal, error = refused
            context.actor = principal.subject
            context.tenant_id = principal.tenant_id
            response = problem(
                kind_of(error), str(error), instance=scope["path"], headers=error.headers
            )
            await response(scope, receive, send)
            return START
        direct = self.direct_start
        if direct is not None and await direct.answer(
            scope, receive, send, body=body, authorization=authorization, context=context
        ):
            return START
        await self.app(scope, _replay(body, receive), send)
        return None

    async def _body(self, receive: Receive) -> bytes | None:
        """The whole body, or ``None`` once it grows past the limit."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise _ClientGone
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = f"the request body exceeds {self.max_bytes} bytes"
        response = problem(TOO_LARGE, detail, instance=scope.get("path"))
        await response(scope, receive, send)


def _read_headers(scope: Scope) -> tuple[str, int, str | None]:
    """The request id, the declared body length (0 if none or not a number) and the
    ``Authorization`` header, in one pass over the headers."""
    request_id: str | None = None
    length = 0
    authorization: str | None = None
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                length = 0
        elif name == b"authorization" and authorization is None:
            authorization = bytes(value).decode("latin-1")
        elif name == _REQUEST_ID and request_id is None:
            request_id = request_id_of(value)
    return request_id_of(None) if request_id is None else request_id, length, authorization


def _replay(body: bytes, receive: Receive) -> Receive:
    """The whole body as one message, then whatever the client sends next (a disconnect)."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replayed
