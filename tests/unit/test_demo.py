"""The packaged demo saga is the example order saga, plus only what the demo needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from saga_orchestrator.console.demo import (
    DEFINITION_VERSION,
    HANDLERS,
    SCENARIOS,
    order_definition,
)
from saga_orchestrator.definition import canonical_json, compile_definition, load_definition_file
from saga_orchestrator.transports.handlers import HandlerRegistry

EXAMPLE = Path(__file__).parents[2] / "examples" / "definitions" / "order.yaml"


def stored_form(document: bytes) -> dict[str, Any]:
    parsed: dict[str, Any] = orjson.loads(document)
    return parsed


def test_the_demo_definition_is_the_example_with_a_failure_switch() -> None:
    demo = stored_form(canonical_json(order_definition()))
    example = stored_form(canonical_json(load_definition_file(EXAMPLE)))

    assert demo.pop("version") == DEFINITION_VERSION
    example.pop("version")
    schema = demo["input_schema"]
    assert schema["properties"].pop("fail_shipping") == {"type": "boolean"}
    assert schema["required"].pop() == "fail_shipping"
    ship = demo["steps"][2]["branches"][0][0]
    assert ship["input"].pop("fail") == "${input.fail_shipping}"
    assert demo == example


def test_the_demo_handlers_cover_the_definition() -> None:
    registry = HandlerRegistry(HANDLERS)
    compile_definition(order_definition(), known_handlers=registry.names())


def test_the_scenarios_succeed_then_fail_at_shipping() -> None:
    assert [s.context["fail_shipping"] for s in SCENARIOS] == [False, True]
