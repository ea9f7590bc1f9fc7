"""The JSON Schema (draft 2020-12) of the saga language, exported from the pydantic models.

Editors and CI pipelines can check a definition with it before registering it. It checks the
shape only: rules across nodes (unique names, pivot ordering, expressions, versions, sizes,
``max_interval >= initial_interval``) are the compiler's, so a document the schema accepts may
still be refused on registration, never the reverse.

``docs/reference/definition.schema.json`` is this schema, regenerated with::

    python -m saga_orchestrator.definition.schema > docs/reference/definition.schema.json
"""

from __future__ import annotations

import json
from typing import Any, Final

from saga_orchestrator.definition.models import NAME_PATTERN, SagaDefinition

__all__ = ["SCHEMA_ID", "json_schema_text", "language_json_schema"]

SCHEMA_ID: Final = "https://saga-orchestrator.dev/schema/definition.json"
_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
_TARGET_REFS: Final = tuple(f"#/$defs/{name}" for name in ("HandlerCall", "HttpCall", "AmqpCall"))


def language_json_schema() -> dict[str, Any]:
    """The schema of a definition document (JSON or YAML), as a JSON object."""
    generated = SagaDefinition.model_json_schema(mode="validation")
    _patch_target_shorthand(generated)
    _patch_nonempty_branches(generated)
    definitions = generated.pop("$defs")
    del generated["title"]
    return {
        "$schema": _DIALECT,
        "$id": SCHEMA_ID,
        "title": "Saga definition",
        **generated,
        "$defs": definitions,
    }


def json_schema_text() -> str:
    """The schema as committed in ``docs/reference/definition.schema.json``."""
    return json.dumps(language_json_schema(), indent=2, ensure_ascii=False) + "\n"


# Two rules of the models live in validators, which pydantic cannot export; they are added
# here so that the schema accepts exactly the shapes the models accept.


def _patch_target_shorthand(schema: dict[str, Any]) -> None:
    """A target may be written as a bare handler name: ``action: inventory.reserve``."""
    shorthand = {
        "type": "string",
        "pattern": NAME_PATTERN,
        "description": "A handler name: shorthand for {handler: <name>}.",
    }
    for node in _subschemas(schema):
        alternatives = node.get("oneOf")
        if isinstance(alternatives, list) and tuple(a.get("$ref") for a in alternatives) == (
            _TARGET_REFS
        ):
            node["oneOf"] = [shorthand, *alternatives]


def _patch_nonempty_branches(schema: dict[str, Any]) -> None:
    """Every branch of a parallel node holds at least one node."""
    schema["$defs"]["ParallelNode"]["properties"]["branches"]["items"]["minItems"] = 1


def _subschemas(schema: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    stack = [schema]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            found.append(value)
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return found


if __name__ == "__main__":
    import sys

    sys.stdout.write(json_schema_text())
