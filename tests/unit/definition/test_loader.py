"""Reading definitions (JSON, YAML, mappings), their error locations and the stored form."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

import saga_orchestrator.definition as definition_package
from saga_orchestrator.definition import (
    CompiledDefinition,
    SagaDefinition,
    StepKind,
    canonical_json,
    definition_digest,
    load_and_compile,
    load_definition_file,
    parse_definition,
)
from saga_orchestrator.definition.loader import MAX_DEFINITION_BYTES, MAX_DOCUMENT_DEPTH
from saga_orchestrator.errors import DefinitionError

EXAMPLES = Path(__file__).parents[3] / "examples" / "definitions"

ORDER = {
    "name": "order",
    "version": "1.0.0",
    "steps": [
        {"name": "reserve", "action": "inventory.reserve", "compensation": "inventory.release"},
        {"name": "charge", "action": {"http": {"service": "payment", "path": "/charges"}}},
    ],
}
ORDER_YAML = """
name: order
version: 1.0.0
steps:
  - name: reserve
    action: inventory.reserve
    compensation: inventory.release
  - name: charge
    action:
      http: {service: payment, path: /charges}
"""


def problems(data: Any, **options: Any) -> list[tuple[str, str]]:
    with pytest.raises(DefinitionError) as raised:
        parse_definition(data, **options)
    return [(v.location, v.rule) for v in raised.value.violations]


# --- formats ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "text_format"),
    [
        (ORDER, None),
        (json.dumps(ORDER), None),
        (json.dumps(ORDER).encode(), None),
        (json.dumps(ORDER, indent=4), "json"),
        (ORDER_YAML, None),
        (ORDER_YAML.encode(), "yaml"),
        (json.dumps(ORDER), "yaml"),  # JSON is YAML
    ],
)
def test_every_format_gives_the_same_definition(data: Any, text_format: Any) -> None:
    definition = parse_definition(data, format=text_format)
    assert definition == parse_definition(ORDER)
    assert definition.steps[1].action.http.service == "payment"  # type: ignore[union-attr]


def test_yaml_is_read_safely() -> None:
    document = "!!python/object/apply:os.system ['echo pwned']"
    assert problems(document) == [("line 1, column 1", "syntax")]


def test_json_syntax_errors_name_line_and_column() -> None:
    text = '{\n  "name": "order",\n  "version": 1.0.0\n}'
    with pytest.raises(DefinitionError) as raised:
        parse_definition(text, format="json")
    (violation,) = raised.value.violations
    assert (violation.location, violation.rule) == ("line 3, column 17", "syntax")
    assert violation.message.startswith("invalid JSON:")


def test_yaml_syntax_errors_name_line_and_column() -> None:
    text = "name: order\nsteps:\n  - name: a\n   action: b\n"
    with pytest.raises(DefinitionError) as raised:
        parse_definition(text)
    (violation,) = raised.value.violations
    assert (violation.location, violation.rule) == ("line 4, column 4", "syntax")
    assert violation.message.startswith("invalid YAML:")


def test_malformed_json_without_a_format_is_read_as_yaml() -> None:
    assert problems('{"name": "order",') == [("line 1, column 18", "syntax")]


@pytest.mark.parametrize(
    ("data", "text_format", "message"),
    [
        ("", None, "not an empty document"),
        ("- a\n- b\n", None, "not an array"),
        ("[1, 2]", "json", "not an array"),
        ("just text", None, "not a string"),
        ("42", None, "not an integer"),
    ],
)
def test_a_document_must_be_an_object(data: str, text_format: Any, message: str) -> None:
    with pytest.raises(DefinitionError, match=message) as raised:
        parse_definition(data, format=text_format)
    assert [(v.location, v.rule) for v in raised.value.violations] == [
        ("(document)", "document-type")
    ]


@pytest.mark.parametrize(
    ("value", "location", "message"),
    [
        ("2024-01-31", "steps[0].input.when", "a date is not JSON"),
        ("2024-01-31T10:00:00Z", "steps[0].input.when", "a datetime is not JSON"),
        (".nan", "steps[0].input.when", "nan is not a JSON number"),
        ("-.inf", "steps[0].input.when", "-inf is not a JSON number"),
        ("!!binary aGVsbG8=", "steps[0].input.when", "a bytes is not JSON"),
        ("18446744073709551616", "steps[0].input.when", "out of the integer range"),
        ("{1: x}", "steps[0].input.when", "key 1 is an integer"),
        ("{yes: x}", "steps[0].input.when", "key True is a boolean"),
    ],
)
def test_yaml_values_that_json_lacks_are_refused(value: str, location: str, message: str) -> None:
    text = f"name: a\nversion: 1.0.0\nsteps:\n- name: a\n  action: b\n  input:\n    when: {value}\n"
    with pytest.raises(DefinitionError, match=message) as raised:
        parse_definition(text)
    assert [(v.location, v.rule) for v in raised.value.violations] == [(location, "json-value")]


def test_quoted_yaml_values_stay_strings() -> None:
    text = "name: a\nversion: 1.0.0\nsteps:\n  - name: a\n    action: b\n    input: '2024-01-31'\n"
    assert parse_definition(text).steps[0].input == "2024-01-31"  # type: ignore[union-attr]


# --- limits -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["bytes", "str", "mapping"])
def test_documents_over_the_size_limit_are_refused(kind: str) -> None:
    document = {**ORDER, "description": "x" * MAX_DEFINITION_BYTES}
    data: Any = {
        "bytes": orjson.dumps(document),
        "str": json.dumps(document),
        "mapping": document,
    }[kind]
    assert problems(data) == [("(document)", "max-size")]


def test_a_yaml_alias_bomb_is_refused_quickly() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    started = time.monotonic()
    assert problems("\n".join(lines)) == [("(document)", "max-size")]
    assert time.monotonic() - started < 30


def test_too_deep_documents_are_refused() -> None:
    deep: Any = "leaf"
    for _ in range(MAX_DOCUMENT_DEPTH + 5):
        deep = [deep]
    (violation,) = problems({**ORDER, "description": deep})
    assert violation[1] == "max-depth"
    assert violation[0].startswith("description[0][0]")


@pytest.mark.parametrize("text_format", ["json", "yaml"])
def test_absurdly_deep_text_is_refused(text_format: Any) -> None:
    text = '{"a": ' + "[" * 5000 + "]" * 5000 + "}"
    (violation,) = problems(text, format=text_format)
    assert violation[1] in {"syntax", "max-depth"}


# --- error locations ----------------------------------------------------------------------


def with_steps(*steps: Any) -> dict[str, Any]:
    return {"name": "order", "version": "1.0.0", "steps": list(steps)}


@pytest.mark.parametrize(
    ("document", "location", "rule"),
    [
        pytest.param(
            with_steps(
                {"name": "a", "action": "h"},
                {
                    "name": "p",
                    "branches": [
                        [
                            {"name": "b", "action": "h"},
                            {"name": "c", "action": "h"},
                            {"name": "d", "action": "h", "retry": {"max_attempts": 0}},
                        ]
                    ],
                },
            ),
            "steps[1].branches[0][2].retry.max_attempts",
            "greater_than_equal",
            id="node tags are dropped",
        ),
        pytest.param(
            with_steps({"name": "a", "action": {"http": {"service": "s", "path": "x"}}}),
            "steps[0].action.http.path",
            "string_pattern_mismatch",
            id="the http field stays, the http tag goes",
        ),
        pytest.param(
            with_steps({"name": "a", "action": {"handler": "9"}}),
            "steps[0].action.handler",
            "string_pattern_mismatch",
            id="the handler field stays, the handler tag goes",
        ),
        pytest.param(
            with_steps({"name": "a", "action": "h", "compensation": {"amqp": {}}}),
            "steps[0].compensation.amqp.routing_key",
            "missing",
            id="compensation targets",
        ),
        pytest.param(
            with_steps({"name": "a", "saga": "-"}),
            "steps[0].saga",
            "string_pattern_mismatch",
            id="the saga field stays, the saga tag goes",
        ),
        pytest.param(
            with_steps(
                {
                    "name": "s",
                    "cases": [
                        {"when": "true", "steps": [{"name": "a", "action": "h"}], "saga": "x"}
                    ],
                }
            ),
            "steps[0].cases[0].saga",
            "extra_forbidden",
            id="a case is no union: a field named like a tag stays",
        ),
        pytest.param(
            with_steps(
                {
                    "name": "s",
                    "type": "switch",
                    "cases": [{"when": "true", "steps": [{"name": "a", "action": "h"}]}],
                    "default": [{"name": "b", "saga": "c", "timeout": "soon"}],
                }
            ),
            "steps[0].default[0].timeout",
            "value_error",
            id="switch defaults",
        ),
        pytest.param(
            with_steps(
                {
                    "name": "a",
                    "action": {"http": {"service": "s", "path": "/", "headers": {"X-Id": 1}}},
                }
            ),
            'steps[0].action.http.headers["X-Id"]',
            "string_type",
            id="keys that are not identifiers are quoted",
        ),
        pytest.param(
            {
                **with_steps({"name": "a", "action": "h"}),
                "defaults": {"retry": {"max_attempts": "x"}},
            },
            "defaults.retry.max_attempts",
            "int_parsing",
            id="definition fields",
        ),
        pytest.param(
            with_steps(7),
            "steps[0]",
            "model_type",
            id="a node that is no object",
        ),
    ],
)
def test_violations_are_located_by_a_readable_path(
    document: dict[str, Any], location: str, rule: str
) -> None:
    assert problems(document) == [(location, rule)]


def test_value_error_messages_lose_pydantics_prefix() -> None:
    document = with_steps({"name": "a", "action": "h", "timeout": "soon"})
    with pytest.raises(DefinitionError) as raised:
        parse_definition(document)
    assert raised.value.violations[0].message.startswith("invalid duration 'soon'")


# --- the stored form ----------------------------------------------------------------------


def test_the_stored_form_is_compact_sorted_json_without_defaults() -> None:
    stored = canonical_json(parse_definition(ORDER))
    assert stored == (
        b'{"name":"order","steps":['
        b'{"action":{"handler":"inventory.reserve"},'
        b'"compensation":{"handler":"inventory.release"},"name":"reserve"},'
        b'{"action":{"http":{"path":"/charges","service":"payment"}},"name":"charge"}],'
        b'"version":"1.0.0"}'
    )
    assert definition_digest(parse_definition(ORDER)) == hashlib.sha256(stored).hexdigest()


def test_formatting_key_order_and_written_defaults_do_not_change_the_digest() -> None:
    terse = """
name: order
version: 1.0.0
timeout: 300
steps:
  - {name: reserve, action: inventory.reserve, timeout: 30}
  - name: notify
    branches: [[{name: email, action: notify.email}]]
"""
    verbose: dict[str, Any] = {
        "steps": [
            {
                "compensate_on_failure": "unknown",
                "kind": "compensatable",
                "timeout": "30s",
                "type": "step",
                "action": {"handler": "inventory.reserve"},
                "name": "reserve",
                "compensation": None,
                "on_compensation_failure": "park",
            },
            {
                "type": "parallel",
                "name": "notify",
                "branches": [
                    [{"name": "email", "action": "notify.email", "kind": "compensatable"}]
                ],
            },
        ],
        "timeout": "5m",
        "defaults": {},
        "description": None,
        "version": "1.0.0",
        "name": "order",
    }
    assert definition_digest(parse_definition(terse)) == definition_digest(
        parse_definition(verbose)
    )


def test_written_defaults_of_nested_options_do_not_change_the_digest() -> None:
    plain = with_steps({"name": "a", "action": {"http": {"service": "s", "path": "/a"}}})
    spelled = with_steps(
        {
            "name": "a",
            "action": {"http": {"service": "s", "path": "/a", "method": "POST", "headers": {}}},
        }
    )
    assert definition_digest(parse_definition(plain)) == definition_digest(
        parse_definition(spelled)
    )


@pytest.mark.parametrize(
    "change",
    [
        {"kind": "retriable"},
        {"retry": {}},  # an explicit policy overrides the saga's defaults
        {"timeout": 31},
        {"input": {"n": 1.0}},  # CEL tells doubles from ints
        {"action": "inventory.reserve2"},
    ],
)
def test_a_different_definition_has_a_different_digest(change: dict[str, Any]) -> None:
    base = {"name": "a", "action": "inventory.reserve", "timeout": 30, "input": {"n": 1}}
    assert definition_digest(parse_definition(with_steps(base))) != definition_digest(
        parse_definition(with_steps({**base, **change}))
    )


def test_the_stored_form_parses_back_to_the_same_definition() -> None:
    definition = load_definition_file(EXAMPLES / "showcase.yaml")
    again = parse_definition(canonical_json(definition))
    assert again == definition
    assert canonical_json(again) == canonical_json(definition)


# --- files and compilation ------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml", ".txt", ".JSON"])
def test_load_definition_file_reads_the_format_of_the_suffix(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"order{suffix}"
    path.write_text(json.dumps(ORDER) if suffix.lower() == ".json" else ORDER_YAML)
    assert load_definition_file(path) == parse_definition(ORDER)


def test_load_definition_file_does_not_read_past_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_bytes(b"#" * (MAX_DEFINITION_BYTES * 3))
    with pytest.raises(DefinitionError, match="max-size"):
        load_definition_file(path)


def test_a_json_file_is_read_as_json_only(tmp_path: Path) -> None:
    path = tmp_path / "order.json"
    path.write_text(ORDER_YAML)
    with pytest.raises(DefinitionError, match="invalid JSON"):
        load_definition_file(path)


def test_load_and_compile_checks_the_registries_it_is_given() -> None:
    compiled = load_and_compile(ORDER_YAML)
    assert isinstance(compiled, CompiledDefinition)
    assert compiled.root == ("reserve", "charge")
    with pytest.raises(DefinitionError, match="known-service"):
        load_and_compile(ORDER_YAML, format="yaml", known_services={"billing"})
    with pytest.raises(DefinitionError, match="known-handler"):
        load_and_compile(ORDER, known_handlers={"inventory.reserve"})


@pytest.mark.parametrize("name", ["order.yaml", "order.json", "showcase.yaml"])
def test_the_examples_load_and_compile(name: str) -> None:
    compiled = load_and_compile((EXAMPLES / name).read_bytes())
    assert compiled.definition == load_definition_file(EXAMPLES / name)


def test_the_order_example_is_the_same_in_json_and_yaml() -> None:
    order_yaml = load_definition_file(EXAMPLES / "order.yaml")
    order_json = load_definition_file(EXAMPLES / "order.json")
    assert definition_digest(order_yaml) == definition_digest(order_json)


def test_the_order_example_uses_the_documented_handlers() -> None:
    compiled = load_and_compile(
        (EXAMPLES / "order.yaml").read_bytes(),
        known_handlers={
            "inventory.reserve",
            "inventory.release",
            "payment.charge",
            "payment.refund",
            "shipping.ship",
            "shipping.cancel",
            "notify.email",
        },
    )
    assert compiled.nodes["charge"].kind is StepKind.COMPENSATABLE
    assert compiled.nodes["charge"].has_compensation
    assert not compiled.has_pivot


def test_the_showcase_example_uses_every_construct() -> None:
    showcase = (EXAMPLES / "showcase.yaml").read_text()
    document = yaml.safe_load(showcase)
    compiled = load_and_compile(document)
    types = {node.type for node in compiled.nodes.values()}
    kinds = {node.kind for node in compiled.nodes.values() if node.type == "step"}
    assert types == {"step", "parallel", "switch", "saga"}
    assert kinds == set(StepKind)
    for construct in ("http:", "amqp:", "handler:", "non_retryable_errors", "compensation_retry"):
        assert construct in showcase
    for option in ("compensate_on_failure", "on_compensation_failure", "when", "input"):
        assert option in showcase


# --- the public surface ---------------------------------------------------------------------


def test_the_definition_package_exports_its_public_names() -> None:
    exported = set(definition_package.__all__)
    assert {
        "SagaDefinition",
        "StepNode",
        "ParallelNode",
        "SwitchNode",
        "SubSagaNode",
        "RetryPolicy",
        "compile_definition",
        "validate_input",
        "CompiledDefinition",
        "parse_definition",
        "load_definition_file",
        "load_and_compile",
        "canonical_json",
        "definition_digest",
        "language_json_schema",
        "Expression",
        "Template",
        "VersionConstraint",
        "parse_version",
        "resolve",
    } <= exported
    for name in exported:
        assert getattr(definition_package, name) is not None, name
    assert definition_package.SagaDefinition is SagaDefinition
    assert definition_package.language_json_schema()["title"] == "Saga definition"
    with pytest.raises(AttributeError):
        _ = definition_package.no_such_name  # type: ignore[attr-defined]
