"""A small synchronous client of the REST API, for the ``saga definitions|instances`` commands.

Every answer is plain JSON (dicts and lists). A problem+json answer (4xx/5xx) becomes the
project's error for its status, carrying the server's ``detail`` (and, for an invalid
definition, its ``violations``); a server that cannot be reached becomes ``Unreachable`` with
one line that says what to check.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import httpx
import orjson

from saga_orchestrator.errors import (
    DefinitionConflict,
    DefinitionError,
    InvalidInput,
    InvalidTransition,
    NotFound,
    SagaError,
    StoreUnavailable,
    Violation,
)

__all__ = ["DEFAULT_URL", "SagaClient", "Unreachable", "media_type_of"]

DEFAULT_URL: Final = "http://127.0.0.1:8000"
API: Final = "/api/v1/sagas"
PARTICIPANTS: Final = "/api/v1/participants"
TENANT_LIMITS: Final = "/api/v1/tenant/limits"
EVENTS_PAGE: Final = 1000
_YAML_SUFFIXES: Final = frozenset({".yaml", ".yml"})


class Unreachable(SagaError):
    """The server did not answer: not running, wrong URL, or the network is down."""


def media_type_of(path: Path) -> str:
    """``application/yaml`` for ``.yaml``/``.yml`` files, ``application/json`` otherwise."""
    return "application/yaml" if path.suffix.lower() in _YAML_SUFFIXES else "application/json"


def find_token(token_file: str = ".saga-token") -> str | None:
    """The bearer token of the client commands: ``SAGA_TOKEN``, else the file a local
    ``saga serve`` wrote (``TOKEN_FILE``, default ``.saga-token``), else none."""
    token = os.environ.get("SAGA_TOKEN", "").strip()
    if token:
        return token
    path = Path(os.environ.get("TOKEN_FILE", token_file))
    try:
        return path.read_text(encoding="ascii").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


class SagaClient:
    """The REST API of one ``saga serve`` node, at ``base_url``."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        token: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        self._http = httpx.Client(
            base_url=self.base_url, timeout=timeout, transport=transport, headers=headers
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- definitions ------------------------------------------------------------------------

    def apply_definition(self, body: bytes, media_type: str) -> dict[str, Any]:
        """Register a definition; the answer's ``status`` is ``created`` or ``identical``."""
        return self._json(
            "POST", f"{API}/definitions", content=body, headers={"Content-Type": media_type}
        )

    def list_definitions(self, prefix: str = "") -> list[dict[str, Any]]:
        params = {"prefix": prefix} if prefix else None
        items: list[dict[str, Any]] = self._json("GET", f"{API}/definitions", params=params)[
            "items"
        ]
        return items

    # --- participant services ---------------------------------------------------------------

    def put_participant(self, name: str, service: Any) -> dict[str, Any]:
        return self._json("PUT", f"{PARTICIPANTS}/{name}", json=service)

    def get_participant(self, name: str) -> dict[str, Any]:
        return self._json("GET", f"{PARTICIPANTS}/{name}")

    def list_participants(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self._json("GET", PARTICIPANTS)["items"]
        return items

    def delete_participant(self, name: str) -> None:
        self._json("DELETE", f"{PARTICIPANTS}/{name}", empty=True)

    # --- the tenant's own limits ------------------------------------------------------------

    def get_limits(self) -> dict[str, Any]:
        """The overrides stored for the caller's tenant, and what the node applies."""
        return self._json("GET", TENANT_LIMITS)

    def put_limits(self, limits: Mapping[str, Any]) -> dict[str, Any]:
        """Replace the tenant's overrides; a limit left out goes back to the node's default."""
        return self._json("PUT", TENANT_LIMITS, json=limits)

    def reset_limits(self) -> None:
        self._json("DELETE", TENANT_LIMITS, empty=True)

    def cluster_nodes(self) -> dict[str, Any]:
        return self._json("GET", "/api/v1/cluster/nodes")

    # --- instances --------------------------------------------------------------------------

    def start_instance(
        self,
        saga_name: str,
        *,
        context: Any,
        version: str | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"saga_name": saga_name, "context": context}
        if version is not None:
            body["version"] = version
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self._json("POST", f"{API}/instances", json=body, headers=headers)

    def list_instances(
        self,
        *,
        status: str | None = None,
        saga_name: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """One page: ``{"items": [...], "next_cursor": ...}``."""
        params = {
            name: value
            for name, value in (
                ("status", status),
                ("saga_name", saga_name),
                ("limit", limit),
                ("cursor", cursor),
            )
            if value is not None
        }
        return self._json("GET", f"{API}/instances", params=params)

    def get_instance(self, instance_id: str) -> dict[str, Any]:
        return self._json("GET", f"{API}/instances/{instance_id}")

    def events(self, instance_id: str) -> list[dict[str, Any]]:
        """The whole history, every page followed, in sequence order."""
        events: list[dict[str, Any]] = []
        after = 0
        while True:
            page = self._json(
                "GET",
                f"{API}/instances/{instance_id}/events",
                params={"after": after, "limit": EVENTS_PAGE},
            )
            events.extend(page["items"])
            if page.get("next_after") is None:
                return events
            after = int(page["next_after"])

    def cancel(self, instance_id: str, reason: str) -> dict[str, Any]:
        return self._action(instance_id, "cancel", reason)

    def retry(self, instance_id: str, reason: str) -> dict[str, Any]:
        return self._action(instance_id, "retry", reason)

    # --- plumbing ---------------------------------------------------------------------------

    def _action(self, instance_id: str, action: str, reason: str) -> dict[str, Any]:
        return self._json(
            "POST", f"{API}/instances/{instance_id}/{action}", json={"reason": reason}
        )

    def _json(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        params: Mapping[str, str | int] | None = None,
        headers: Mapping[str, str] | None = None,
        empty: bool = False,
    ) -> dict[str, Any]:
        """The answer's JSON object (``empty``: the answer has no body, e.g. 204)."""
        try:
            response = self._http.request(
                method, path, json=json, content=content, params=params, headers=headers
            )
        except httpx.ConnectError as error:
            raise Unreachable(
                f"cannot reach {self.base_url}: {_reason(error)} — is `saga serve` running?"
            ) from None
        except httpx.TimeoutException:
            raise Unreachable(f"{self.base_url} did not answer in time") from None
        except httpx.TransportError as error:
            raise Unreachable(f"cannot reach {self.base_url}: {_reason(error)}") from None
        if response.is_error:
            raise error_of(response)
        if empty:
            return {}
        try:
            answer = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            answer = None
        if not isinstance(answer, dict):
            raise SagaError(
                f"{method} {path}: the server answered {response.status_code} with no JSON object"
            )
        return answer


def error_of(response: httpx.Response) -> SagaError:
    """The project's error for a 4xx/5xx answer, with the server's detail."""
    try:
        problem = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        problem = None
    if not isinstance(problem, dict):
        problem = {}
    status = response.status_code
    title = problem.get("title") or response.reason_phrase or "error"
    detail = problem.get("detail") or title
    raw_violations = problem.get("violations") or []
    violations = [
        Violation(
            location=str(item.get("location", "")),
            rule=str(item.get("rule", "")),
            message=str(item.get("message", "")),
        )
        for item in raw_violations
        if isinstance(item, dict)
    ]
    slug = str(problem.get("type", "")).rsplit("/", 1)[-1]
    if violations and slug == "invalid-definition":
        return DefinitionError(violations)
    message = f"{detail} ({status} {title})"
    if status == 404:
        return NotFound(message)
    if status == 409:
        if slug == "definition-conflict":
            return DefinitionConflict(message)
        return InvalidTransition(message)
    if status in (400, 413, 415, 422):
        return InvalidInput(message)
    if status == 503:
        return StoreUnavailable(message)
    return SagaError(message)


def _reason(error: httpx.TransportError) -> str:
    text = str(error).lower()
    if "refused" in text:
        return "connection refused"
    if "name or service not known" in text or "nodename nor servname" in text:
        return "unknown host"
    return str(error) or type(error).__name__
