"""Every error of the API as an RFC 9457 ``application/problem+json`` document.

This is the one place where the project's error hierarchy meets HTTP status codes:

    DefinitionConflict   409   definition-conflict
    DefinitionError      422   invalid-definition (with ``violations``)
    Unauthenticated      401   unauthenticated (with ``WWW-Authenticate: Bearer ...``)
    Forbidden            403   forbidden
    RateLimited          429   rate-limited (with ``Retry-After`` and ``RateLimit`` headers)
    NotFound             404   not-found
    InvalidInput         422   invalid-input (with ``violations`` when it names fields)
    ExpressionError      422   invalid-expression
    AttemptNotInFlight   410   attempt-over (a completion token for an attempt that ended)
    InvalidTransition    409   invalid-transition
    InvalidCompletionToken 403 invalid-completion-token
    StartInProgress      409   start-in-progress
    SequenceConflict     409   concurrent-update
    NotReady             503   not-ready (with ``Retry-After``)
    StoreUnavailable     503   store-unavailable (with ``Retry-After``)
    LeaseLost            503   instance-moved (with ``Retry-After``): another node took it over
    anything else        500   internal-error (no internals in the answer)

plus FastAPI's request validation (422 with ``violations``), routing (404, 405) and the body
size limit (413).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from saga_orchestrator.api.schemas import Problem
from saga_orchestrator.api.services import NotReady, StartInProgress
from saga_orchestrator.errors import (
    AttemptNotInFlight,
    DefinitionConflict,
    DefinitionError,
    ExpressionError,
    Forbidden,
    InvalidCompletionToken,
    InvalidInput,
    InvalidTransition,
    LeaseLost,
    NotFound,
    RateLimited,
    SagaError,
    SequenceConflict,
    StoreUnavailable,
    Unauthenticated,
    Violation,
)

log = logging.getLogger("saga_orchestrator.api")

PROBLEM_MEDIA_TYPE: Final = "application/problem+json"
PROBLEM_BASE: Final = "https://saga-orchestrator.dev/problems/"


@dataclass(frozen=True, slots=True, kw_only=True)
class Kind:
    """A kind of problem: its status, the last segment of its type URI, and its title."""

    status: int
    slug: str
    title: str
    expose_detail: bool = True
    """False for server-side failures: their message may name internals."""


_SAGA_ERRORS: Final[tuple[tuple[type[SagaError], Kind], ...]] = (
    (Unauthenticated, Kind(status=401, slug="unauthenticated", title="Unauthenticated")),
    (Forbidden, Kind(status=403, slug="forbidden", title="Forbidden")),
    (RateLimited, Kind(status=429, slug="rate-limited", title="Too many requests")),
    (DefinitionConflict, Kind(status=409, slug="definition-conflict", title="Definition conflict")),
    (DefinitionError, Kind(status=422, slug="invalid-definition", title="Invalid definition")),
    (NotFound, Kind(status=404, slug="not-found", title="Not found")),
    (InvalidInput, Kind(status=422, slug="invalid-input", title="Invalid input")),
    (ExpressionError, Kind(status=422, slug="invalid-expression", title="Invalid expression")),
    (AttemptNotInFlight, Kind(status=410, slug="attempt-over", title="Attempt is over")),
    (InvalidTransition, Kind(status=409, slug="invalid-transition", title="Not allowed now")),
    (
        InvalidCompletionToken,
        Kind(status=403, slug="invalid-completion-token", title="Invalid completion token"),
    ),
    (StartInProgress, Kind(status=409, slug="start-in-progress", title="Start in progress")),
    (SequenceConflict, Kind(status=409, slug="concurrent-update", title="Concurrent update")),
    (NotReady, Kind(status=503, slug="not-ready", title="Not ready")),
    (LeaseLost, Kind(status=503, slug="instance-moved", title="Instance moved to another node")),
    (
        StoreUnavailable,
        Kind(status=503, slug="store-unavailable", title="Unavailable", expose_detail=False),
    ),
)
INTERNAL: Final = Kind(
    status=500, slug="internal-error", title="Internal error", expose_detail=False
)
VALIDATION: Final = Kind(status=422, slug="invalid-request", title="Invalid request")
TOO_LARGE: Final = Kind(status=413, slug="body-too-large", title="Request body too large")
_HTTP_SLUGS: Final = {
    400: "bad-request",
    404: "not-found",
    405: "method-not-allowed",
    415: "unsupported-media-type",
}
_DETAILS: Final = {
    500: "an unexpected error occurred; it has been logged",
    503: "the database cannot be reached; try again later",
}


def kind_of(error: SagaError) -> Kind:
    for cls, kind in _SAGA_ERRORS:
        if isinstance(error, cls):
            return kind
    return INTERNAL


def problem(
    kind: Kind,
    detail: str | None = None,
    *,
    instance: str | None = None,
    violations: Sequence[Violation] = (),
    headers: Mapping[str, str] | None = None,
) -> Response:
    content = problem_content(kind, detail, instance=instance, violations=violations)
    return Response(
        content, status_code=kind.status, headers=headers, media_type=PROBLEM_MEDIA_TYPE
    )


def problem_content(
    kind: Kind,
    detail: str | None = None,
    *,
    instance: str | None = None,
    violations: Sequence[Violation] = (),
) -> bytes:
    """The problem document :func:`problem` answers with, as bytes."""
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + kind.slug,
        "title": kind.title,
        "status": kind.status,
        "detail": detail if kind.expose_detail else _DETAILS.get(kind.status),
    }
    if instance is not None:
        body["instance"] = instance
    if violations:
        body["violations"] = [
            {"location": v.location, "rule": v.rule, "message": v.message} for v in violations
        ]
    return _dumps(body)


def _dumps(body: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError:
        # A message quoting a lone surrogate from the request: ASCII escapes carry it safely.
        return json.dumps(body, ensure_ascii=True, default=str).encode("ascii")


AllowedMethods = Callable[[str], Sequence[str]]
"""The methods that some route serves at a path (for the ``Allow`` header of a 405)."""


class ProblemHandlers:
    """The exception handlers, with the ``Retry-After`` value of 503 answers."""

    def __init__(self, retry_after: int, allowed_methods: AllowedMethods) -> None:
        self._retry_after = str(retry_after)
        self._allowed_methods = allowed_methods

    def install(self, app: FastAPI) -> None:
        app.add_exception_handler(SagaError, self.saga_error)  # type: ignore[arg-type]
        app.add_exception_handler(RequestValidationError, self.validation)  # type: ignore[arg-type]
        app.add_exception_handler(HTTPException, self.http)  # type: ignore[arg-type]
        app.add_exception_handler(Exception, self.unexpected)

    async def saga_error(self, request: Request, error: SagaError) -> Response:
        return self.saga_problem(error, request.url.path)

    def saga_problem(self, error: SagaError, path: str) -> Response:
        """The answer to ``error`` raised while serving ``path``."""
        kind = kind_of(error)
        if kind is INTERNAL:
            log.error("request %s failed", path, exc_info=error)
        headers = {"Retry-After": self._retry_after} if kind.status == 503 else None
        if isinstance(error, Unauthenticated):
            headers = {"WWW-Authenticate": _challenge(error)}
        elif isinstance(error, RateLimited):
            headers = error.headers
        violations = error.violations if isinstance(error, DefinitionError | InvalidInput) else ()
        return problem(kind, str(error), instance=path, violations=violations, headers=headers)

    async def validation(self, request: Request, error: RequestValidationError) -> Response:
        violations = [
            Violation(
                location=".".join(str(part) for part in details.get("loc", ())),
                rule=str(details.get("type", "invalid")),
                message=str(details.get("msg", "invalid value")),
            )
            for details in error.errors()
        ]
        detail = "; ".join(f"{v.location}: {v.message}" for v in violations[:5])
        return problem(VALIDATION, detail, instance=request.url.path, violations=violations)

    async def http(self, request: Request, error: HTTPException) -> Response:
        status = error.status_code
        slug = _HTTP_SLUGS.get(status, f"http-{status}")
        title = _title(status)
        kind = Kind(status=status, slug=slug, title=title)
        headers = dict(error.headers or {})
        if status == 405:
            # Starlette names the methods of the first route matching the path only.
            headers["Allow"] = ", ".join(self._allowed_methods(request.scope["path"]))
        return problem(kind, str(error.detail), instance=request.url.path, headers=headers)

    async def unexpected(self, request: Request, error: Exception) -> Response:
        # Starlette re-raises after answering, so the server logs the traceback as well.
        return problem(INTERNAL, instance=request.url.path)


def _challenge(error: Unauthenticated) -> str:
    """RFC 6750 §3: the scheme, the realm, and what was wrong (a fixed, safe phrase)."""
    description = error.description.replace("\\", "").replace('"', "'")
    return f'Bearer realm="saga", error="{error.error}", error_description="{description}"'


def _title(status: int) -> str:
    from http import HTTPStatus  # noqa: PLC0415 - only for rare HTTP errors

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


# --- OpenAPI ----------------------------------------------------------------------------------

_DESCRIPTIONS: Final = {
    400: "The body cannot be decoded (JSON text must be UTF-8).",
    401: "No valid bearer token (`WWW-Authenticate` says why).",
    403: "Not allowed (problem+json says why).",
    404: "No such resource (for this tenant).",
    409: "The resource's state does not allow this (problem+json says why).",
    410: "The resource is gone (problem+json says why).",
    413: "The request body exceeds the size limit.",
    429: "Over the tenant's rate limit: retry after `Retry-After` seconds.",
    415: "The body's Content-Type is not supported.",
    422: "The request is invalid; `violations` lists each broken rule.",
    503: "The database cannot be reached or is not migrated; retry after `Retry-After` seconds.",
}


def problem_responses(*statuses: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """``responses=`` of a route: each status documented with the Problem model.

    ``descriptions`` override the default text, keyed ``s409="..."``.
    """
    documented: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {
            "model": Problem,
            "description": descriptions.get(f"s{status}", _DESCRIPTIONS[status]),
        }
        if status == 503:
            entry["headers"] = {
                "Retry-After": {
                    "description": "Seconds to wait before retrying.",
                    "schema": {"type": "integer"},
                }
            }
        documented[status] = entry
    return documented


__all__ = [
    "PROBLEM_MEDIA_TYPE",
    "TOO_LARGE",
    "AllowedMethods",
    "Kind",
    "ProblemHandlers",
    "kind_of",
    "problem",
    "problem_responses",
]
