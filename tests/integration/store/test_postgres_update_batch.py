"""A batch without audit records, outbox messages or start keys is written in one round trip
(``saga_update_batch``, or ``saga_write_batch`` when it creates; migration 0009), under
row-level security, and all or nothing; any other batch keeps its transaction. The statements
are counted with asyncpg's query logger on a ``saga_app`` session, as the store's own are."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import TYPE_CHECKING

import pytest

from saga_orchestrator.store import AppendRequest, AppendResult, AppendStatus, open_store
from saga_orchestrator.store import postgres_sql as sql
from saga_orchestrator.store.postgres_append import append_batch
from saga_orchestrator.store.postgres_session import tenant_scope

from .support import (
    OTHER_TENANT,
    TENANT,
    append,
    at,
    audit_entry,
    create,
    event,
    events_of,
    logged,
    update,
)

if TYPE_CHECKING:
    from .support import Session

pytestmark = pytest.mark.postgres

APPENDED_2 = AppendResult(status=AppendStatus.APPENDED, last_seq=2)


async def test_steps_of_several_instances_are_one_statement(
    app_session: tuple[Session, list[str]],
) -> None:
    conn, queries = app_session
    batch = [
        append("i-1", 1, [event(1)], state=update(wake_at=at(30))),
        append("i-2", 1, [event(2)]),
    ]
    assert await append_batch(conn, tenant_scope([TENANT]), batch) == [APPENDED_2, APPENDED_2]
    assert await logged(queries) == [sql.UPDATE_BATCH]
    assert await events_of(conn, "i-1") == [1, 2]
    assert await events_of(conn, "i-2") == [1, 2]
    async with conn.transaction():
        await conn.execute(sql.SET_LOCAL_TENANTS, [TENANT])
        wakes = await conn.fetch("SELECT instance_id, fire_at FROM timers ORDER BY 1")
    assert [(row[0], row[1]) for row in wakes] == [("i-1", at(30))]
    # The tenants were set for that statement's transaction only.
    assert await conn.fetchval("SELECT current_setting('saga.tenants', true)") in (None, "")


async def test_one_instance_that_moved_on_rolls_back_the_whole_statement(
    app_session: tuple[Session, list[str]],
) -> None:
    """``i-2`` is not where the batch expects it: nothing of the one-statement write stays,
    and the batch is planned again from the locked rows, in a transaction."""
    conn, queries = app_session
    batch = [append("i-1", 1, [event(1)]), append("i-2", 0, [event(2)])]
    results = await append_batch(conn, tenant_scope([TENANT]), batch)
    assert results == [APPENDED_2, AppendResult(status=AppendStatus.CONFLICT, last_seq=1)]
    first, *then = await logged(queries)
    assert first == sql.UPDATE_BATCH
    assert sql.LOCK_INSTANCES in then  # the second plan, from locked rows
    assert await events_of(conn, "i-1") == [1, 2]  # written once, by the second plan
    assert await events_of(conn, "i-2") == [1]


async def test_another_tenant_s_instance_is_not_written_through_the_function(
    app_session: tuple[Session, list[str]],
) -> None:
    """Row-level security holds inside the function: the scope's tenant cannot see
    ``theirs``, so the statement finds it missing and writes nothing, and the locked plan
    answers a conflict without learning anything of it."""
    conn, _ = app_session
    batch = [append("i-1", 1, [event(1)]), append("theirs", 1, [event(2)], tenant=OTHER_TENANT)]
    results = await append_batch(conn, tenant_scope([TENANT]), batch)
    assert results[0] == APPENDED_2
    assert results[1].status is AppendStatus.CONFLICT
    assert await events_of(conn, "theirs") == [1]


async def test_a_start_and_a_step_are_one_statement(
    app_session: tuple[Session, list[str]],
) -> None:
    conn, queries = app_session
    batch = [create("i-3"), append("i-1", 1, [event(1)])]
    assert await append_batch(conn, tenant_scope([TENANT]), batch) == [
        AppendResult(status=AppendStatus.APPENDED, last_seq=1),
        APPENDED_2,
    ]
    assert await logged(queries) == [sql.WRITE_BATCH]
    assert await events_of(conn, "i-3") == [1]
    assert await events_of(conn, "i-1") == [1, 2]


@pytest.mark.parametrize("taken", ["i-2", "theirs"], ids=["own", "another tenant's"])
async def test_a_creation_whose_id_is_taken_rolls_back_the_whole_statement(
    app_session: tuple[Session, list[str]], taken: str
) -> None:
    """The insert finds the id taken (by the same tenant, or by one the session cannot see):
    nothing of the one-statement write stays, and the locked plan answers a conflict, the
    step beside it written once."""
    conn, queries = app_session
    batch = [create(taken), append("i-1", 1, [event(1)])]
    results = await append_batch(conn, tenant_scope([TENANT]), batch)
    assert results[0].status is AppendStatus.CONFLICT
    assert results[1] == APPENDED_2
    first, *_ = await logged(queries)
    assert first == sql.WRITE_BATCH
    assert await events_of(conn, "i-1") == [1, 2]
    assert await events_of(conn, taken) == [1]


@pytest.mark.parametrize(
    "batch",
    [
        pytest.param([replace(append("i-1", 1, [event(1)]), audit=audit_entry("i-1"))], id="audit"),
        pytest.param([create("i-3", key="k", digest="d"), append("i-1", 1, [event(1)])], id="key"),
    ],
)
async def test_other_batches_keep_their_transaction(
    app_session: tuple[Session, list[str]], batch: list[AppendRequest]
) -> None:
    conn, queries = app_session
    await append_batch(conn, tenant_scope([TENANT]), batch)
    statements = await logged(queries)
    assert sql.UPDATE_BATCH not in statements
    assert statements[0].startswith("BEGIN") and statements[-1] == "COMMIT"


async def test_concurrent_batches_on_one_instance_append_each_event_once(pg_url: str) -> None:
    """Two stores race step appends on one instance through the one-statement path: every
    round has one winner and one conflict, and the events are exactly the winners'."""
    first, second = open_store(pg_url), open_store(pg_url)
    try:
        await first.append([create("i-1")])
        last = 1
        for n in range(20):
            results = await asyncio.gather(
                first.append([append("i-1", last, [event(2 * n)])]),
                second.append([append("i-1", last, [event(2 * n + 1)])]),
            )
            statuses = sorted(result.status for [result] in results)
            assert statuses == [AppendStatus.APPENDED, AppendStatus.CONFLICT]
            last += 1
        assert [e.seq for e in await first.load_events(TENANT, "i-1")] == list(range(1, 22))
    finally:
        await first.close()
        await second.close()
