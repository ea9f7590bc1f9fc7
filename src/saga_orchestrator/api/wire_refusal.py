"""A flood answered from the HTTP parser: a start by a tenant this node already knows is over
its limits gets its 429 from uvicorn's own protocol callbacks
(:mod:`saga_orchestrator.console.refusing_protocol`), without an ASGI scope, task, middleware
or response object.

The edge layer (:mod:`.edge`) already answers such a start before routing, but the request
has crossed uvicorn's ASGI machinery by then: a task, a scope, ``receive``/``send``, a
Starlette response, all on the event loop every other tenant's requests wait on. Answered
here, a refusal cost the node a third to two fifths less CPU (docs/performance.md,
"Session 13").

Only what is certain without awaiting is answered here (:meth:`.Access.refusal_now`: a token
verified before, the tenant's limits cached, the refusal known and the buckets before it
spent from memory); every other request goes on as before, and the edge layer or the routes
decide it. The answer is the
edge layer's (a test compares them): the same problem document and headers (``Retry-After``,
``RateLimit``, ``RateLimit-Policy``, ``X-Request-Id``, uvicorn's ``date`` and ``server``), and
it is counted in the metrics as the edge layer counts it.

A request is answered here only when nothing of the connection is still being answered
(HTTP/1.1 answers in order), it declares a body within the node's limit (a larger one is the
edge layer's 413) and it does not expect ``100-continue``.
"""

from __future__ import annotations

import time
from typing import Final

from saga_orchestrator.api.access import START, Access
from saga_orchestrator.api.audit import request_id_of
from saga_orchestrator.api.metrics import ApiMetrics
from saga_orchestrator.api.problems import PROBLEM_MEDIA_TYPE, kind_of, problem_content

_START: Final = START.encode()
_STATUS_LINE: Final = b"HTTP/1.1 429 Too Many Requests\r\n"
_CONTENT_TYPE: Final = b"content-type: " + PROBLEM_MEDIA_TYPE.encode() + b"\r\n"


class WireRefusals:
    def __init__(self, access: Access, metrics: ApiMetrics, max_body_bytes: int) -> None:
        self.access = access
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.answered = 0
        """Requests answered here (tests tell by it which path answered)."""

    def answer(
        self,
        method: bytes,
        url: bytes,
        headers: list[tuple[bytes, bytes]],
        default_headers: list[tuple[bytes, bytes]],
        *,
        keep_alive: bool,
    ) -> bytes | None:
        """The whole 429 response to this request, or ``None``: let it go on. ``headers``
        are lower-cased names with their values, as uvicorn's protocol collects them."""
        if url != _START or method != b"POST":
            return None
        began = time.perf_counter()
        authorization: str | None = None
        request_id: bytes | None = None
        length: int | None = None
        for name, value in headers:
            if name == b"authorization" and authorization is None:
                authorization = value.decode("latin-1")
            elif name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    return None
            elif name == b"x-request-id" and request_id is None:
                request_id = value
            elif name in (b"transfer-encoding", b"expect"):
                return None
        if length is None or not 0 <= length <= self.max_body_bytes:
            return None
        refused = self.access.refusal_now("POST", START, authorization)
        if refused is None:
            return None
        _principal, error = refused
        content = problem_content(kind_of(error), str(error), instance=START)
        lines = [_STATUS_LINE]
        lines += [name + b": " + value + b"\r\n" for name, value in default_headers]
        lines.append(_CONTENT_TYPE)
        lines.append(b"content-length: %d\r\n" % len(content))
        lines += [
            f"{name.lower()}: {value}\r\n".encode("latin-1")
            for name, value in error.headers.items()
        ]
        lines.append(b"x-request-id: " + request_id_of(request_id).encode("latin-1") + b"\r\n")
        if not keep_alive:
            lines.append(b"connection: close\r\n")
        lines += [b"\r\n", content]
        self.answered += 1
        self.metrics.observe("POST", START, 429, time.perf_counter() - began)
        return b"".join(lines)
