"""The garbage-collector tuning: what it applies, that it freezes once, who opts in."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from saga_orchestrator.engine import collector
from saga_orchestrator.engine.collector import THROUGHPUT_THRESHOLDS, tune_garbage_collector
from saga_orchestrator.orchestrator import Orchestrator


@pytest.fixture(autouse=True)
def pristine_collector(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts as a fresh process would, and leaves the test process as it found it."""
    thresholds = gc.get_threshold()
    gc.unfreeze()
    monkeypatch.setattr(collector._Process, "frozen", False)
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_it_applies_the_thresholds_and_freezes_the_heap() -> None:
    assert gc.get_freeze_count() == 0
    assert tune_garbage_collector() is True
    assert gc.get_threshold() == THROUGHPUT_THRESHOLDS
    assert gc.get_freeze_count() > 0


def test_a_second_call_freezes_nothing_more_but_restores_the_thresholds() -> None:
    tune_garbage_collector()
    frozen = gc.get_freeze_count()
    allocated_since = [[index] for index in range(1_000)]  # tracked containers
    gc.set_threshold(700, 10, 10)  # the host changed them back meanwhile
    assert tune_garbage_collector() is False
    assert gc.get_freeze_count() == frozen
    assert gc.get_threshold() == THROUGHPUT_THRESHOLDS
    assert len(allocated_since) == 1_000


async def test_an_embedded_orchestrator_leaves_the_collector_alone_by_default(
    tmp_path: Path,
) -> None:
    before = gc.get_threshold()
    async with Orchestrator(f"sqlite:///{tmp_path}/saga.db"):
        assert gc.get_threshold() == before
        assert gc.get_freeze_count() == 0


async def test_an_orchestrator_opened_with_tune_gc_tunes_it(tmp_path: Path) -> None:
    async with Orchestrator(f"sqlite:///{tmp_path}/saga.db", tune_gc=True):
        assert gc.get_threshold() == THROUGHPUT_THRESHOLDS
        assert gc.get_freeze_count() > 0
