"""Scenarios whose histories are committed under ``golden/`` (regenerate deliberately with
``python -m tests.unit.core.golden_scenarios``, and say why in the commit)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from saga_orchestrator.core import codec
from tests.unit.core.harness import C, Run, definition, step

GOLDEN = Path(__file__).parent / "golden"


def completed() -> Run:
    run = Run(definition([step("reserve"), step("charge")]), {"sku": "A-1"})
    run.succeed("reserve", {"hold": 1})
    run.succeed("charge", {"paid": True})
    return run


def compensated_in_parallel() -> Run:
    nodes = [
        step("reserve"),
        {"name": "fan", "branches": [[step("email")], [step("sms", retry={"max_attempts": 2})]]},
        step("ship", timeout=5),
    ]
    run = Run(definition(nodes))
    run.succeed("reserve")
    run.succeed("email")
    run.fail("sms", retryable=True)
    run.advance_to_wake()
    run.succeed("sms")
    run.advance(5)
    run.advance_to_wake()
    run.advance(5)
    run.advance_to_wake()
    run.advance(5)
    for node in ("ship", "sms", "email", "reserve"):
        if run.state.node(node).compensation.in_flight:
            run.succeed(node, phase=C)
    for node in ("email", "reserve"):
        if run.state.node(node).compensation.in_flight:
            run.succeed(node, phase=C)
    return run


def parked_then_retried() -> Run:
    nodes = [step("a", compensation_retry={"max_attempts": 1}), step("b")]
    run = Run(definition(nodes))
    run.succeed("a")
    run.fail("b")
    run.fail("a", retryable=True, phase=C)
    run.retry()
    run.succeed("a", phase=C)
    return run


def pivot_then_park_and_skip() -> Run:
    nodes = [
        step("charge", kind="pivot"),
        step("ship", kind="retriable", retry={"max_attempts": 1}),
        step("notify", kind="retriable"),
    ]
    run = Run(definition(nodes))
    run.succeed("charge")
    run.fail("ship", retryable=True)
    run.skip("ship")
    run.succeed("notify")
    return run


SCENARIOS: dict[str, Callable[[], Run]] = {
    "completed": completed,
    "compensated_in_parallel": compensated_in_parallel,
    "parked_then_retried": parked_then_retried,
    "pivot_then_park_and_skip": pivot_then_park_and_skip,
}


def summary(run_state: Any) -> dict[str, Any]:
    return {
        "status": run_state.status.value,
        "steps": {name: node.status.value for name, node in sorted(run_state.nodes.items())},
        "seq": run_state.seq,
    }


def record(name: str, run: Run) -> bytes:
    events = [codec.encode(event) for event in run.history]
    document = {
        "scenario": name,
        "events": [{"type": kind, "data": orjson.loads(data)} for kind, data in events],
        "final": summary(run.state),
    }
    return orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


if __name__ == "__main__":
    for scenario, build in SCENARIOS.items():
        (GOLDEN / f"{scenario}.json").write_bytes(record(scenario, build()))
