"""When the store's statistics keeper checks, and what a failed or slow check does."""

from __future__ import annotations

import asyncio
import itertools
import logging

import pytest

from saga_orchestrator.errors import ConfigurationError
from saga_orchestrator.store.postgres_statistics import StatisticsKeeper


class Checks:
    def __init__(self) -> None:
        self.runs = 0
        self.release = asyncio.Event()
        self.release.set()
        self.fail = False

    async def __call__(self) -> None:
        self.runs += 1
        await self.release.wait()
        if self.fail:
            raise OSError("connection refused")


async def test_a_check_starts_once_every_so_many_rows() -> None:
    checks = Checks()
    keeper = StatisticsKeeper(checks, rows_between_checks=100)
    for _ in range(9):
        keeper.wrote(10)
    await keeper.settled()
    assert checks.runs == 0
    keeper.wrote(10)
    await keeper.settled()
    assert checks.runs == 1
    for _ in range(25):
        keeper.wrote(10)
        await keeper.settled()
    assert checks.runs == 3
    await keeper.aclose()


async def test_no_check_starts_while_one_runs() -> None:
    checks = Checks()
    checks.release.clear()
    keeper = StatisticsKeeper(checks, rows_between_checks=10)
    keeper.wrote(10)
    await asyncio.sleep(0)
    for _ in range(5):
        keeper.wrote(10)
        await asyncio.sleep(0)
    assert (checks.runs, keeper.checks) == (1, 1)
    checks.release.set()
    await keeper.settled()
    keeper.wrote(1)  # the rows written meanwhile were counted: this one starts the next
    await keeper.settled()
    assert (checks.runs, keeper.checks) == (2, 2)
    await keeper.aclose()


async def test_a_failed_check_is_logged_and_the_next_one_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    checks = Checks()
    checks.fail = True
    keeper = StatisticsKeeper(checks, rows_between_checks=5)
    with caplog.at_level(logging.WARNING, logger="saga_orchestrator.store"):
        keeper.wrote(5)
        await keeper.settled()
    assert "connection refused" in caplog.text
    checks.fail = False
    keeper.wrote(5)
    await keeper.settled()
    assert checks.runs == 2
    await keeper.aclose()


async def test_closing_cancels_a_running_check_and_starts_no_other() -> None:
    checks = Checks()
    checks.release.clear()
    keeper = StatisticsKeeper(checks, rows_between_checks=1)
    keeper.wrote(1)
    await asyncio.sleep(0)
    await keeper.aclose()
    keeper.wrote(100)
    await asyncio.sleep(0)
    assert checks.runs == 1
    await keeper.settled()


def test_rows_between_checks_must_be_positive() -> None:
    with pytest.raises(ConfigurationError, match="positive"):
        StatisticsKeeper(Checks(), rows_between_checks=0)


async def test_checks_start_early_and_spread_out_as_rows_are_written() -> None:
    checks = Checks()
    keeper = StatisticsKeeper(checks, rows_between_checks=1_000, first_check_after=10)
    due_at: list[int] = []
    for written in range(1, 20_001):
        keeper.wrote(1)
        await keeper.settled()
        if checks.runs > len(due_at):
            due_at.append(written)
    # Every 10 rows until 40 were written, then a quarter of all so far, then every 1,000.
    assert due_at[:6] == [10, 20, 30, 40, 50, 62]
    gaps = [later - earlier for earlier, later in itertools.pairwise(due_at)]
    assert gaps == sorted(gaps)
    assert gaps[-1] == 1_000
    await keeper.aclose()
