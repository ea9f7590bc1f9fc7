"""Committed histories replayed through the current code: a change that alters the meaning of
old events (a renamed type, a field read differently, another fold) fails here."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from saga_orchestrator.core import codec
from saga_orchestrator.core.state import fold
from tests.unit.core.golden_scenarios import GOLDEN, SCENARIOS, summary

FILES = sorted(GOLDEN.glob("*.json"))


def test_every_scenario_has_a_committed_history() -> None:
    assert {path.stem for path in FILES} == set(SCENARIOS)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_an_old_history_folds_to_the_same_state(path: Path) -> None:
    document = orjson.loads(path.read_bytes())
    events = [codec.decode(e["type"], orjson.dumps(e["data"])) for e in document["events"]]
    assert summary(fold(events)) == document["final"]


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_todays_decider_still_writes_the_same_history(name: str) -> None:
    """Compared as events, not bytes: a field added since (with a default) is written now and
    absent from the old file, and both must mean the same."""
    document = orjson.loads((GOLDEN / f"{name}.json").read_bytes())
    run = SCENARIOS[name]()
    fresh = [codec.decode(*codec.encode(e)) for e in run.history]
    old = [codec.decode(e["type"], orjson.dumps(e["data"])) for e in document["events"]]
    assert fresh == old
    assert [type(e).__name__ for e in fresh] == [e["type"] for e in document["events"]]
