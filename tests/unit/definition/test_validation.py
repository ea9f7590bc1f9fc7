"""One test per validation rule of the saga language (semantics §1-§2), each pinning the
exact rule and location of the violation an author would see."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from saga_orchestrator.definition.compiler import (
    MAX_DEPTH,
    MAX_NODES,
    CompiledDefinition,
    validate_input,
)
from saga_orchestrator.definition.loader import (
    MAX_DEFINITION_BYTES,
    canonical_json,
    definition_digest,
    load_and_compile,
    parse_definition,
)
from saga_orchestrator.errors import DefinitionError, InvalidInput

# --- helpers ------------------------------------------------------------------------------


def saga(*steps: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"name": "order", "version": "1.0.0", "steps": list(steps), **fields}


def step(name: str, action: Any = "do", **fields: Any) -> dict[str, Any]:
    return {"name": name, "action": action, **fields}


def parallel(name: str, *branches: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    return {"name": name, "type": "parallel", "branches": list(branches), **fields}


def switch(
    name: str, *cases: tuple[str, list[dict[str, Any]]], default: Sequence[dict[str, Any]] = ()
) -> dict[str, Any]:
    return {
        "name": name,
        "type": "switch",
        "cases": [{"when": when, "steps": steps} for when, steps in cases],
        "default": list(default),
    }


def sub_saga(name: str, child: str = "child", **fields: Any) -> dict[str, Any]:
    return {"name": name, "type": "saga", "saga": child, **fields}


def violations(document: dict[str, Any] | str, **options: Any) -> list[tuple[str, str]]:
    """(location, rule) of every violation, in the order reported."""
    with pytest.raises(DefinitionError) as raised:
        load_and_compile(document, **options)
    return [(v.location, v.rule) for v in raised.value.violations]


def compiles(document: dict[str, Any], **options: Any) -> CompiledDefinition:
    return load_and_compile(document, **options)


# --- §1 unique node names -----------------------------------------------------------------


def test_unique_names_at_the_top_level() -> None:
    assert violations(saga(step("a"), step("a"))) == [("steps[1]", "unique-names")]


def test_unique_names_across_nested_nodes() -> None:
    document = saga(
        step("a"),
        parallel("p", [step("b")], [switch("s", ("true", [step("a")]), default=[step("b")])]),
    )
    assert violations(document) == [
        ("steps[1].branches[1][0].cases[0].steps[0]", "unique-names"),
        ("steps[1].branches[1][0].default[0]", "unique-names"),
    ]


def test_unique_names_between_a_node_and_its_container() -> None:
    document = saga(parallel("p", [step("p")]))
    assert violations(document) == [("steps[0].branches[0][0]", "unique-names")]


# --- §2 step kinds ------------------------------------------------------------------------


def test_pivot_ordering_rejects_a_compensatable_step_after_a_pivot() -> None:
    document = saga(step("charge", kind="pivot"), step("ship", compensation="unship"))
    assert violations(document) == [("steps[1]", "pivot-ordering")]


def test_pivot_ordering_rejects_a_sub_saga_after_a_pivot() -> None:
    document = saga(step("charge", kind="pivot"), sub_saga("shipping"))
    assert violations(document) == [("steps[1]", "pivot-ordering")]


def test_pivot_ordering_reaches_into_later_nested_nodes() -> None:
    document = saga(
        switch("route", ("true", [step("charge", kind="pivot")])),
        parallel("notify", [step("email", kind="retriable")], [step("sms")]),
    )
    assert violations(document) == [("steps[1].branches[1][0]", "pivot-ordering")]


def test_pivot_ordering_accepts_retriable_steps_after_a_pivot() -> None:
    document = saga(
        step("reserve", compensation="release"),
        step("charge", kind="pivot"),
        step("ship", kind="retriable"),
        parallel("notify", [step("email", kind="retriable")], [step("sms", kind="retriable")]),
    )
    compiled = compiles(document)
    assert compiled.has_pivot
    assert compiled.nodes["reserve"].has_compensation


def test_pivot_placement_rejects_a_pivot_inside_a_parallel_branch() -> None:
    document = saga(parallel("p", [step("a")], [step("charge", kind="pivot")]))
    assert violations(document) == [("steps[0].branches[1][0]", "pivot-placement")]


def test_pivot_placement_rejects_a_pivot_in_a_switch_inside_a_parallel_branch() -> None:
    inner = switch("route", ("true", [step("charge", kind="pivot")]))
    document = saga(parallel("p", [inner]))
    assert violations(document) == [
        ("steps[0].branches[0][0].cases[0].steps[0]", "pivot-placement")
    ]


@pytest.mark.parametrize("kind", ["pivot", "retriable"])
def test_kind_compensation_rejects_a_compensation_on_a_non_compensatable_step(kind: str) -> None:
    document = saga(step("a", kind=kind, compensation="undo"))
    assert violations(document) == [("steps[0]", "kind-compensation")]


# --- §1 well-formed expressions ----------------------------------------------------------


def test_expression_rejects_bad_cel_in_a_when() -> None:
    assert violations(saga(step("a", when="input.amount >"))) == [("steps[0].when", "expression")]


def test_expression_rejects_bad_cel_in_a_switch_case() -> None:
    document = saga(switch("route", ("input.amount > 1", [step("a")]), ("input.(", [step("b")])))
    assert violations(document) == [("steps[0].cases[1].when", "expression")]


def test_expression_rejects_bad_cel_in_an_input_template() -> None:
    document = saga(step("a", input={"sku": "${input.sku +}"}))
    assert violations(document) == [("steps[0].input", "expression")]


def test_expression_rejects_unknown_variables_in_a_sub_saga_input() -> None:
    document = saga(sub_saga("child_saga", input="${secrets.token}"))
    assert violations(document) == [("steps[0].input", "expression")]


def test_step_reference_rejects_unknown_steps() -> None:
    document = saga(
        step("reserve"),
        step("charge", when="steps.reserv.output.ok", input={"r": "${steps.reserve.output}"}),
        step("ship", input={"c": "${steps['chrge'].output.id}"}),
    )
    assert violations(document) == [
        ("steps[1].when", "step-reference"),
        ("steps[2].input", "step-reference"),
    ]


# --- §1 known participants ----------------------------------------------------------------


def test_known_handler_rejects_unknown_handlers() -> None:
    document = saga(step("a", action="inventory.reserve", compensation="inventory.relase"))
    handlers = {"inventory.reserve", "inventory.release"}
    assert violations(document, known_handlers=handlers) == [
        ("steps[0].compensation", "known-handler")
    ]


def test_known_service_rejects_unknown_participant_services() -> None:
    action = {"http": {"service": "payments", "path": "/charges"}}
    document = saga(step("a", action=action, compensation="refund"))
    assert violations(document, known_services={"payment"}) == [
        ("steps[0].action", "known-service")
    ]


def test_credential_header_refuses_a_credential_written_into_a_step() -> None:
    headers = {"Authorization": "Bearer xyz", "X-Api-Key": "k", "X-Request-Kind": "plain"}
    action = {"http": {"service": "payments", "path": "/charges", "headers": headers}}
    assert violations(saga(step("a", action=action))) == [
        ("steps[0].action.http.headers.Authorization", "credential-header"),
        ("steps[0].action.http.headers.X-Api-Key", "credential-header"),
    ]


def test_credential_header_accepts_a_credential_taken_from_the_input() -> None:
    headers = {"Authorization": "Bearer ${ input.user_token }"}
    action = {"http": {"service": "payments", "path": "/charges", "headers": headers}}
    assert compiles(saga(step("a", action=action))).services() == {"payments"}


def test_known_handlers_and_services_are_not_checked_when_not_given() -> None:
    action = {"http": {"service": "anything", "path": "/x"}}
    compiled = compiles(saga(step("a", action=action, compensation="whatever")))
    assert compiled.services() == {"anything"}
    assert compiled.handlers() == {"whatever"}


def test_known_handlers_given_alone_leave_services_unchecked() -> None:
    action = {"http": {"service": "anything", "path": "/x"}}
    compiled = compiles(saga(step("a", action=action)), known_handlers=set())
    assert compiled.services() == {"anything"}


# --- §1 versions ------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.0", "v1.0.0", "1.0.0.0", "latest"])
def test_semantic_version_rejects_a_bad_version(version: str) -> None:
    assert violations(saga(step("a"), version=version)) == [("version", "semantic-version")]


@pytest.mark.parametrize("constraint", ["^x", ">=1.0.0 || <0.5", "1.0.0 - 2.0.0", "v1"])
def test_version_constraint_rejects_a_bad_sub_saga_constraint(constraint: str) -> None:
    document = saga(step("a"), sub_saga("child", version=constraint))
    assert violations(document) == [("steps[1].version", "version-constraint")]


def test_version_constraint_accepts_good_constraints() -> None:
    nodes = [sub_saga(f"c{i}", version=v) for i, v in enumerate(["^1.2", "~1", ">=1,<2", "*"])]
    assert compiles(saga(*nodes)).sub_sagas == {"child"}


# --- §1 input schema -----------------------------------------------------------------------


def test_json_schema_rejects_an_input_schema_that_is_not_a_json_schema() -> None:
    document = saga(step("a"), input_schema={"type": "objekt"})
    assert violations(document) == [("input_schema", "json-schema")]


def test_validate_input_names_the_path_that_breaks_the_input_schema() -> None:
    schema = {
        "type": "object",
        "required": ["items"],
        "properties": {"items": {"type": "array", "items": {"type": "integer"}}},
    }
    definition = parse_definition(saga(step("a"), input_schema=schema))
    validate_input(definition, {"items": [1, 2]})
    with pytest.raises(InvalidInput, match=r"\$\.items\[1\]: 'two' is not of type 'integer'"):
        validate_input(definition, {"items": [1, "two"]})
    with pytest.raises(InvalidInput, match="'items' is a required property"):
        validate_input(definition, {})


def test_validate_input_accepts_anything_without_an_input_schema() -> None:
    validate_input(parse_definition(saga(step("a"))), ["any", {"thing": None}])


# --- §1 sizes ----------------------------------------------------------------------------


def nested_parallels(levels: int) -> dict[str, Any]:
    node = step("leaf")
    for level in range(levels):
        node = parallel(f"p{level}", [node])
    return saga(node)


def test_max_depth_rejects_too_deep_nesting() -> None:
    compiles(nested_parallels(MAX_DEPTH - 1))  # the top-level sequence is the first level
    location = "steps[0]" + ".branches[0][0]" * (MAX_DEPTH - 1) + ".branches[0]"
    assert violations(nested_parallels(MAX_DEPTH)) == [(location, "max-depth")]


def test_max_nodes_rejects_too_many_nodes() -> None:
    compiles(saga(*(step(f"s{i}") for i in range(MAX_NODES))))
    too_many = saga(*(step(f"s{i}") for i in range(MAX_NODES + 1)))
    assert violations(too_many) == [(f"steps[{MAX_NODES}]", "max-nodes")]


def test_max_size_rejects_an_oversize_document() -> None:
    document = json.dumps(saga(step("a", input="x" * MAX_DEFINITION_BYTES)))
    assert violations(document) == [("(document)", "max-size")]


# --- shapes (pydantic) ------------------------------------------------------------------


def test_retry_policy_rejects_max_interval_below_initial_interval() -> None:
    retry = {"initial_interval": "10s", "max_interval": "5s"}
    document = saga(parallel("p", [step("a")], [step("b", compensation_retry=retry)]))
    assert violations(document) == [("steps[0].branches[1][0].compensation_retry", "value_error")]


def test_empty_steps_are_rejected() -> None:
    assert violations(saga()) == [("steps", "too_short")]


def test_empty_parallel_branch_is_rejected() -> None:
    assert violations(saga(parallel("p", [step("a")], []))) == [
        ("steps[0].branches", "value_error")
    ]


def test_empty_switch_case_is_rejected() -> None:
    assert violations(saga(switch("s", ("true", [])))) == [("steps[0].cases[0].steps", "too_short")]


@pytest.mark.parametrize("duration", ["5 minutes", "-1s", 0, "1w", True])
def test_bad_duration_is_rejected(duration: Any) -> None:
    document = saga(switch("s", ("true", [step("a", timeout=duration)])))
    assert violations(document) == [("steps[0].cases[0].steps[0].timeout", "value_error")]


def test_unknown_node_type_is_rejected() -> None:
    document = saga(step("a"), {"name": "b", "type": "loop", "steps": []})
    assert violations(document) == [("steps[1]", "invalid_node_type")]


def test_unknown_target_kind_is_rejected() -> None:
    document = saga(step("a", action={"grpc": {"service": "payment"}}))
    assert violations(document) == [("steps[0].action", "invalid_target")]


def test_unknown_fields_are_rejected() -> None:
    document = saga(
        step("a", retries=3, retry={"max_attempt": 3}),
        sub_saga("b", sagas="x"),
        owner="me",
    )
    assert sorted(violations(document)) == [
        ("owner", "extra_forbidden"),
        ("steps[0].retries", "extra_forbidden"),
        ("steps[0].retry.max_attempt", "extra_forbidden"),
        ("steps[1].sagas", "extra_forbidden"),
    ]


# --- all at once -------------------------------------------------------------------------


def test_every_violation_of_the_rules_is_reported_at_once() -> None:
    document = saga(
        step("a", when="input.x >"),
        step("a"),
        step("b", kind="pivot", compensation="undo"),
        step("c", input="${steps.nope.output}"),
        version="one",
        input_schema={"type": 5},
    )
    assert sorted(violations(document, known_handlers={"do"})) == [
        ("input_schema", "json-schema"),
        ("steps[0].when", "expression"),
        ("steps[1]", "unique-names"),
        ("steps[2]", "kind-compensation"),
        ("steps[2].compensation", "known-handler"),
        ("steps[3]", "pivot-ordering"),
        ("steps[3].input", "step-reference"),
        ("version", "semantic-version"),
    ]


def test_every_shape_violation_is_reported_at_once() -> None:
    document = saga(
        step("a", kind="sometimes"),
        step("1b"),
        parallel("p", []),
        version=1,
    )
    assert violations(document) == [
        ("version", "string_type"),
        ("steps[0].kind", "enum"),
        ("steps[1].name", "string_pattern_mismatch"),
        ("steps[2].branches", "value_error"),
    ]


def test_a_violation_reads_as_location_message_and_rule() -> None:
    with pytest.raises(DefinitionError) as raised:
        load_and_compile(saga(step("a"), step("a")))
    assert str(raised.value) == "steps[1]: node name 'a' is used more than once [unique-names]"


# --- round trip of the stored form --------------------------------------------------------

_names = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)
_durations = st.one_of(
    st.integers(1, 86_400),
    st.floats(0.001, 1e6, allow_nan=False, allow_infinity=False),
    st.sampled_from(["500ms", "30s", "1.5m", "2h", "1d", " 10 s "]),
)
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def _retry(draw: st.DrawFn) -> dict[str, Any]:
    initial = draw(st.integers(1, 60))
    policy = {
        "max_attempts": draw(st.none() | st.integers(1, 100)),
        "initial_interval": f"{initial}s",
        "backoff_coefficient": draw(st.floats(1.0, 10.0)),
        "max_interval": initial * draw(st.integers(1, 10)),
        "non_retryable_errors": draw(st.lists(_names, max_size=2)),
    }
    kept = draw(st.sets(st.sampled_from(sorted(policy))))
    return {key: value for key, value in policy.items() if key in kept}


_targets = st.one_of(
    _names,
    st.builds(lambda n: {"handler": n}, _names),
    st.builds(
        lambda s, p, m, b: {"http": {"service": s, "path": p, "method": m, "body": b}},
        _names,
        st.from_regex(r"/[a-z/]{0,10}", fullmatch=True),
        st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"]),
        _json,
    ),
    st.builds(lambda k, b: {"amqp": {"routing_key": k, "body": b}}, _names, _json),
)
_step_options = {
    "compensation": _targets,
    "kind": st.sampled_from(["compensatable", "retriable"]),
    "when": st.just("input.flag == true"),
    "input": _json,
    "retry": _retry(),
    "timeout": _durations,
    "compensation_timeout": _durations,
    "compensate_on_failure": st.sampled_from(["unknown", "always", "never"]),
    "on_compensation_failure": st.sampled_from(["park", "skip"]),
}
_leaves = st.one_of(
    st.fixed_dictionaries({"action": _targets}, optional=_step_options),
    st.fixed_dictionaries({"saga": _names}, optional={"version": st.just("^1"), "input": _json}),
)
_sequences = st.recursive(
    st.lists(_leaves, min_size=1, max_size=3),
    lambda inner: st.lists(
        _leaves
        | st.builds(lambda bs: {"branches": bs}, st.lists(inner, min_size=1, max_size=3))
        | st.builds(
            lambda cs, d: {"cases": [{"when": "true", "steps": c} for c in cs], "default": d},
            st.lists(inner, min_size=1, max_size=2),
            st.lists(_leaves, max_size=2),
        ),
        min_size=1,
        max_size=3,
    ),
    max_leaves=8,
)


def _named(sequence: list[dict[str, Any]], counter: list[int]) -> list[dict[str, Any]]:
    named = []
    for unnamed in sequence:
        counter[0] += 1
        node = {**unnamed, "name": f"n{counter[0]}"}
        if "branches" in node:
            node["branches"] = [_named(b, counter) for b in node["branches"]]
        if "cases" in node:
            cases = [{**c, "steps": _named(c["steps"], counter)} for c in node["cases"]]
            node["cases"] = cases
            node["default"] = _named(node["default"], counter)
        named.append(node)
    return named


_definitions = st.builds(
    lambda steps, timeout: saga(*_named(steps, [0]), timeout=timeout),
    _sequences,
    _durations,
)


@settings(deadline=None, max_examples=150)
@given(_definitions)
def test_random_definitions_round_trip_through_the_stored_form(document: dict[str, Any]) -> None:
    definition = parse_definition(document)
    stored = canonical_json(definition)
    again = parse_definition(stored)
    assert again == definition
    assert definition_digest(again) == definition_digest(definition)
    assert canonical_json(again) == stored
    as_yaml = parse_definition(yaml.safe_dump(document), format="yaml")
    assert definition_digest(as_yaml) == definition_digest(definition)


def test_expressions_in_http_and_amqp_targets_are_compiled_on_registration() -> None:
    from saga_orchestrator.definition.compiler import compile_definition
    from saga_orchestrator.definition.models import SagaDefinition
    from saga_orchestrator.errors import DefinitionError

    body = {
        "name": "t",
        "version": "1.0.0",
        "steps": [
            {
                "name": "pay",
                "action": {
                    "http": {
                        "service": "payment",
                        "path": "/p/${input.id",
                        "body": {"a": "${steps.ghost.output}"},
                    }
                },
                "compensation": {"amqp": {"routing_key": "undo", "body": "${1 +}"}},
            }
        ],
    }
    with pytest.raises(DefinitionError) as raised:
        compile_definition(SagaDefinition.model_validate(body))
    found = {(v.location, v.rule) for v in raised.value.violations}
    assert ("steps[0].action.http.body", "step-reference") in found
    assert ("steps[0].compensation.amqp.body", "expression") in found
