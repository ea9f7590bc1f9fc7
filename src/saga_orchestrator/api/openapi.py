"""The OpenAPI document: FastAPI's, completed with the saga language's own JSON Schema (the
body of ``POST /definitions``) and with ``application/problem+json`` as the media type of
every error."""

from __future__ import annotations

import copy
from typing import Any, Final

from fastapi import FastAPI

from saga_orchestrator.api.access import rule_for
from saga_orchestrator.api.problems import PROBLEM_MEDIA_TYPE
from saga_orchestrator.definition.schema import language_json_schema
from saga_orchestrator.security.tokens import Role

DEFINITION_SCHEMA_NAME: Final = "SagaDefinition"
_PROBLEM_REF: Final = "#/components/schemas/Problem"


class SagaApi(FastAPI):
    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            self.openapi_schema = complete(super().openapi())
        return self.openapi_schema


def complete(document: dict[str, Any]) -> dict[str, Any]:
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name, schema in language_components().items():
        if name in schemas:
            raise RuntimeError(f"the saga language's schema {name!r} clashes with the API's")
        schemas[name] = schema
    _secure(document)
    for operation in _operations(document):
        for status, response in operation.get("responses", {}).items():
            _problem_media_type(status, response)
    return document


BEARER: Final = "bearerAuth"


def _secure(document: dict[str, Any]) -> None:
    """Routes that need a role say so: the bearer scheme, the role, and 401/403/429."""
    components = document.setdefault("components", {})
    components.setdefault("securitySchemes", {})[BEARER] = {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "A JWT naming the tenant and the roles (viewer, operator, admin).",
    }
    errors = {
        "401": _problem("No valid bearer token.", "WWW-Authenticate", "Bearer realm=..."),
        "403": _problem("The token's roles do not allow this."),
        "429": _problem("Over the tenant's rate limit.", "Retry-After", "Seconds to wait."),
    }
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            rule = rule_for(method.upper(), path) if isinstance(operation, dict) else None
            if not isinstance(rule, Role):
                continue
            operation["security"] = [{BEARER: []}]
            operation["description"] = (
                f"{operation.get('description', '')}\n\nNeeds the `{rule.value}` role "
                "(or a role that includes it)."
            ).strip()
            responses = operation.setdefault("responses", {})
            for status, response in errors.items():
                responses.setdefault(status, copy.deepcopy(response))


def _problem(description: str, header: str | None = None, about: str = "") -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": _PROBLEM_REF}}},
    }
    if header is not None:
        response["headers"] = {header: {"description": about, "schema": {"type": "string"}}}
    return response


def language_components() -> dict[str, Any]:
    """The language's schema split into OpenAPI components, its ``$defs`` references
    rewritten to point at them."""
    language = copy.deepcopy(language_json_schema())
    definitions: dict[str, Any] = language.pop("$defs")
    for key in ("$schema", "$id"):
        language.pop(key, None)
    components = {DEFINITION_SCHEMA_NAME: language, **definitions}
    _rewrite_refs(components)
    return components


def _rewrite_refs(value: Any) -> None:
    if isinstance(value, dict):
        ref = value.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            value["$ref"] = "#/components/schemas/" + ref.removeprefix("#/$defs/")
        for item in value.values():
            _rewrite_refs(item)
    elif isinstance(value, list):
        for item in value:
            _rewrite_refs(item)


def _operations(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        operation
        for path in document.get("paths", {}).values()
        for operation in path.values()
        if isinstance(operation, dict) and "responses" in operation
    ]


def _problem_media_type(status: str, response: dict[str, Any]) -> None:
    """Errors are problem documents, whatever the media type of the route's success."""
    content = response.get("content", {})
    if not status.startswith(("4", "5")):
        return
    for media in list(content):
        if content[media].get("schema", {}).get("$ref") == _PROBLEM_REF:
            response["content"] = {PROBLEM_MEDIA_TYPE: content[media]}
            return
