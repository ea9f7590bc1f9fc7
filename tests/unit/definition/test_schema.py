"""The exported JSON Schema: committed, valid, and in agreement with the models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from saga_orchestrator.definition.loader import (
    canonical_json,
    load_definition_file,
    parse_definition,
)
from saga_orchestrator.definition.schema import SCHEMA_ID, json_schema_text, language_json_schema
from saga_orchestrator.errors import DefinitionError

ROOT = Path(__file__).parents[3]
COMMITTED = ROOT / "docs" / "reference" / "definition.schema.json"
EXAMPLES = sorted((ROOT / "examples" / "definitions").glob("*.*"))


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(language_json_schema())


def read(path: Path) -> Any:
    return yaml.safe_load(path.read_text())  # JSON is YAML


def test_the_committed_schema_is_the_generated_one() -> None:
    assert COMMITTED.read_text() == json_schema_text(), (
        "regenerate: python -m saga_orchestrator.definition.schema"
        " > docs/reference/definition.schema.json"
    )


def test_the_module_prints_the_schema() -> None:
    printed = subprocess.run(
        [sys.executable, "-W", "error", "-m", "saga_orchestrator.definition.schema"],
        check=True,
        capture_output=True,
        text=True,
    )
    assert printed.stdout == json_schema_text()
    assert not printed.stderr


def test_the_schema_is_a_valid_draft_2020_12_schema() -> None:
    schema = language_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == SCHEMA_ID
    assert schema["title"] == "Saga definition"
    assert json.loads(json_schema_text()) == schema


def test_there_are_examples() -> None:
    assert {path.name for path in EXAMPLES} >= {"order.yaml", "order.json", "showcase.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_the_examples_satisfy_the_schema(
    path: Path, validator: jsonschema.Draft202012Validator
) -> None:
    validator.validate(read(path))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_the_stored_form_of_the_examples_satisfies_the_schema(
    path: Path, validator: jsonschema.Draft202012Validator
) -> None:
    validator.validate(json.loads(canonical_json(load_definition_file(path))))


def order(**changes: Any) -> dict[str, Any]:
    """The order example with its first step changed (a None value removes a field)."""
    document = read(ROOT / "examples" / "definitions" / "order.yaml")
    first = {**document["steps"][0], **changes}
    first = {key: value for key, value in first.items() if value is not None}
    return {**document, "steps": [first, *document["steps"][1:]]}


EMPTY_BRANCH = order(branches=[[]], action=None, compensation=None, input=None)


@pytest.mark.parametrize(
    "document",
    [
        pytest.param({"name": "order", "version": "1.0.0"}, id="no steps"),
        pytest.param({"name": "order", "version": "1.0.0", "steps": []}, id="empty steps"),
        pytest.param({**order(), "owner": "me"}, id="unknown field"),
        pytest.param(order(retries=3), id="unknown step field"),
        pytest.param(order(kind="sometimes"), id="unknown kind"),
        pytest.param(order(timeout="soon"), id="bad duration"),
        pytest.param(order(action={"grpc": {"service": "inventory"}}), id="unknown target"),
        pytest.param(order(action="not a name"), id="bad handler name"),
        pytest.param(order(action={"http": {"service": "s", "path": "no-slash"}}), id="bad path"),
        pytest.param(order(name="1st"), id="bad node name"),
        pytest.param(order(type="loop"), id="unknown node type"),
        pytest.param(order(action=None), id="a step without action"),
        pytest.param(order(saga="shipping"), id="a step with a sub-saga's field"),
        pytest.param(EMPTY_BRANCH, id="empty parallel branch"),
        pytest.param(order(retry={"max_attempts": 0}), id="too few attempts"),
    ],
)
def test_the_schema_and_the_models_reject_invalid_definitions(
    document: dict[str, Any], validator: jsonschema.Draft202012Validator
) -> None:
    assert not validator.is_valid(document)
    with pytest.raises(DefinitionError):
        parse_definition(document)


@pytest.mark.parametrize(
    "document",
    [
        pytest.param(order(), id="order"),
        pytest.param(order(type="step", action={"handler": "inventory.reserve"}), id="explicit"),
        pytest.param(order(action={"amqp": {"routing_key": "inventory.reserve"}}), id="amqp"),
        pytest.param(
            {**order(), "steps": [{"name": "p", "branches": [[{"name": "b", "action": "h"}]]}]},
            id="parallel without a type",
        ),
        pytest.param(
            {**order(), "steps": [{"name": "c", "saga": "child", "version": "^1", "input": [1]}]},
            id="sub-saga without a type",
        ),
    ],
)
def test_the_schema_accepts_what_the_models_accept(
    document: dict[str, Any], validator: jsonschema.Draft202012Validator
) -> None:
    parse_definition(document)
    validator.validate(document)
