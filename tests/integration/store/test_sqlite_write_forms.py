"""SQLite writes a table's share of a batch row by row when it is small and with one JSON bulk
statement when it is large (``sqlite_append.ROWS_BOUND_ONE_BY_ONE``): both forms store the
same rows and answer the same results."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from saga_orchestrator.store import (
    AppendRequest,
    AppendResult,
    AppendStatus,
    InstanceStatus,
    open_store,
    sqlite_append,
)

from .support import append, at, create, event, update

ALWAYS_BULK = 0
ALWAYS_ROW_BY_ROW = 1_000
INSTANCES = 6
"""More rows per table than the real bound, so each form writes several rows at once."""

Dump = dict[str, list[tuple[Any, ...]]]


def batches() -> list[list[AppendRequest]]:
    ids = [f"i-{n}" for n in range(INSTANCES)]
    created = [
        create(
            iid,
            key=f"key-{iid}",
            digest=f"digest-{iid}",
            state=update(nodes=("reserve",), wake_at=at(60) if n % 2 else None),
        )
        for n, iid in enumerate(ids)
    ]
    # Every instance moves on: half get a timer, the other half lose theirs.
    moved = [
        append(
            iid,
            1,
            [event(1), event(2)],
            state=update(
                status=InstanceStatus.COMPENSATING,
                nodes=("charge", "ship"),
                updated_at=at(5),
                wake_at=None if n % 2 else at(30 + n),
            ),
        )
        for n, iid in enumerate(ids)
    ]
    # A stale append (its instance is at 3, not 1) and a repeated start key are refused.
    refused = [
        append("i-0", 1, [event(9)]),
        create("i-new", key="key-i-1", digest="digest-other"),
        append("i-1", 3, [event(3)], state=update(status=InstanceStatus.COMPLETED)),
    ]
    return [created, moved, refused]


async def write(path: Path, bound: int, monkeypatch: pytest.MonkeyPatch) -> list[AppendResult]:
    monkeypatch.setattr(sqlite_append, "ROWS_BOUND_ONE_BY_ONE", bound)
    store = open_store(f"sqlite:///{path}")
    try:
        await store.migrate()
        results = []
        for batch in batches():
            results += await store.append(batch)
        return results
    finally:
        await store.close()


def dump(path: Path) -> Dump:
    with sqlite3.connect(path) as conn:
        return {
            table: conn.execute(f"SELECT * FROM {table} ORDER BY {order}").fetchall()
            for table, order in {
                "instances": "instance_id",
                "events": "instance_id, seq",
                "timers": "instance_id",
                "start_keys": "tenant_id, idempotency_key",
            }.items()
        }


async def test_row_by_row_and_bulk_writes_store_the_same_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bulk_results = await write(tmp_path / "bulk.db", ALWAYS_BULK, monkeypatch)
    row_results = await write(tmp_path / "rows.db", ALWAYS_ROW_BY_ROW, monkeypatch)

    assert row_results == bulk_results
    statuses = [result.status for result in bulk_results]
    assert statuses == [AppendStatus.APPENDED] * 2 * INSTANCES + [
        AppendStatus.CONFLICT,
        AppendStatus.DUPLICATE_START,
        AppendStatus.APPENDED,
    ]
    bulk, rows = dump(tmp_path / "bulk.db"), dump(tmp_path / "rows.db")
    assert rows == bulk
    # Not a comparison of two empty databases: every kind of write happened.
    assert len(bulk["instances"]) == INSTANCES
    assert len(bulk["events"]) == 3 * INSTANCES + 1
    assert [row[0] for row in bulk["timers"]] == ["i-0", "i-2", "i-4"]
    assert len(bulk["start_keys"]) == INSTANCES
