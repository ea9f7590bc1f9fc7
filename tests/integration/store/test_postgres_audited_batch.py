"""An audited batch (every API call that changes something) is written in one round trip
(``saga_update_audited_batch`` / ``saga_write_audited_batch``, migration 0010) once the node
knows its tenants' audit chain heads, and never breaks a chain: a head moved meanwhile rolls
the whole batch back into the locked path. Statements are counted on a ``saga_app`` session
(asyncpg's query logger), chains checked with :func:`~saga_orchestrator.store.audit.verify`."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import replace
from typing import TYPE_CHECKING

import pytest

from saga_orchestrator.store import AppendRequest, AppendResult, AppendStatus, open_store
from saga_orchestrator.store import postgres_sql as sql
from saga_orchestrator.store.audit import verify
from saga_orchestrator.store.chain_heads import ChainHeads
from saga_orchestrator.store.postgres_append import append_batch
from saga_orchestrator.store.postgres_audit import LOCK_HEADS, write_audit
from saga_orchestrator.store.postgres_session import tenant_scope, transaction

from .support import TENANT, append, audit_entry, create, event, events_of, logged

if TYPE_CHECKING:
    from .support import Session

pytestmark = pytest.mark.postgres

SCOPE = tenant_scope([TENANT])
APPENDED_2 = AppendResult(status=AppendStatus.APPENDED, last_seq=2)


def audited(request: AppendRequest) -> AppendRequest:
    return replace(request, audit=audit_entry(request.instance_id))


async def chain_of(conn: Session) -> list[int]:
    """The tenant's record sequences, after checking its chain is whole."""
    async with conn.transaction():
        await conn.execute(sql.SET_LOCAL_TENANTS, [TENANT])
        rows = await conn.fetch(
            "SELECT seq, prev_hash, hash FROM audit_log WHERE tenant_id = $1 ORDER BY seq", TENANT
        )
        head = await conn.fetchrow("SELECT seq, hash FROM audit_heads WHERE tenant_id = $1", TENANT)
    assert head is not None
    assert (rows[-1][0], rows[-1][2]) == (head[0], head[1])
    for before, after in itertools.pairwise(rows):
        assert after[1] == before[2]
    return [row[0] for row in rows]


async def learn(conn: Session, heads: ChainHeads, queries: list[str]) -> list[str]:
    """A first audited batch: the node knows no head yet, so it locks it (and learns it).
    Returns its statements, and forgets them."""
    await append_batch(conn, SCOPE, [audited(append("i-2", 1, [event(9)]))], known_heads=heads)
    statements = list(await logged(queries))
    queries.clear()
    return statements


async def test_an_audited_step_is_one_statement_once_the_head_is_known(
    app_session: tuple[Session, list[str]],
) -> None:
    conn, queries = app_session
    heads = ChainHeads()
    first = await learn(conn, heads, queries)
    assert first[0].startswith("BEGIN") and LOCK_HEADS in first and first[-1] == "COMMIT"
    batch = [audited(append("i-1", 1, [event(1)]))]
    assert await append_batch(conn, SCOPE, batch, known_heads=heads) == [APPENDED_2]
    assert await logged(queries) == [sql.UPDATE_AUDITED_BATCH]
    assert await events_of(conn, "i-1") == [1, 2]
    assert await chain_of(conn) == [1, 2]


async def test_an_audited_start_is_one_statement_once_the_head_is_known(
    app_session: tuple[Session, list[str]],
) -> None:
    conn, queries = app_session
    heads = ChainHeads()
    await learn(conn, heads, queries)
    batch = [audited(create("i-3")), audited(append("i-1", 1, [event(1)]))]
    results = await append_batch(conn, SCOPE, batch, known_heads=heads)
    assert results == [AppendResult(status=AppendStatus.APPENDED, last_seq=1), APPENDED_2]
    assert await logged(queries) == [sql.WRITE_AUDITED_BATCH]
    assert await events_of(conn, "i-3") == [1]
    assert await chain_of(conn) == [1, 2, 3]


async def test_a_head_moved_meanwhile_rolls_back_into_the_locked_path(
    app_session: tuple[Session, list[str]],
) -> None:
    """Another writer extended the chain after this node learned its head: the one-statement
    write leaves nothing (no event, no record), the batch is written again under the head's
    lock, from the real head, and the node learns it again after sitting out two batches."""
    conn, queries = app_session
    heads = ChainHeads()
    await learn(conn, heads, queries)
    async with transaction(conn, SCOPE):
        await write_audit(conn, [audit_entry("elsewhere")])  # the chain is at 2 now
    await logged(queries)
    queries.clear()
    assert await append_batch(
        conn, SCOPE, [audited(append("i-1", 1, [event(1)]))], known_heads=heads
    ) == [APPENDED_2]
    first, *then = await logged(queries)
    assert first == sql.UPDATE_AUDITED_BATCH
    assert then[0].startswith("BEGIN") and LOCK_HEADS in then and then[-1] == "COMMIT"
    assert await events_of(conn, "i-1") == [1, 2]
    assert await chain_of(conn) == [1, 2, 3]
    plans: list[str] = []
    for n in range(3):  # a miss in a row: two batches sit out, the third is one statement
        await logged(queries)
        queries.clear()
        await append_batch(
            conn, SCOPE, [audited(append("i-1", 2 + n, [event(10 + n)]))], known_heads=heads
        )
        plans.append((await logged(queries))[0])
    assert [plan.startswith("BEGIN") for plan in plans] == [True, True, False]
    assert plans[2] == sql.UPDATE_AUDITED_BATCH
    assert await chain_of(conn) == [1, 2, 3, 4, 5, 6]


async def test_an_instance_that_moved_on_leaves_no_record_behind(
    app_session: tuple[Session, list[str]],
) -> None:
    """The batch's plan fails on an instance, not on the head: the records the one-statement
    write made are rolled back with it, and the locked plan writes each once."""
    conn, queries = app_session
    heads = ChainHeads()
    await learn(conn, heads, queries)
    batch = [audited(append("i-1", 1, [event(1)])), audited(append("i-2", 1, [event(2)]))]
    results = await append_batch(conn, SCOPE, batch, known_heads=heads)
    assert results[0] == APPENDED_2
    assert results[1].status is AppendStatus.CONFLICT  # i-2 is at 2 since learn()
    first, *then = await logged(queries)
    assert first == sql.UPDATE_AUDITED_BATCH
    assert sql.LOCK_INSTANCES in then
    assert await events_of(conn, "i-1") == [1, 2]
    assert await chain_of(conn) == [1, 2]  # learn()'s and i-1's: a refused append records none


async def test_two_nodes_extending_one_chain_never_break_it(pg_url: str) -> None:
    """Two stores (each with its own knowledge of the head) race audited appends of one
    tenant: every round appends both events, and the chain holds every record once, whole."""
    first, second = open_store(pg_url), open_store(pg_url)
    try:
        await first.append([create("i-1"), create("i-2")])
        rounds = 25
        for n in range(rounds):
            results = await asyncio.gather(
                first.append([audited(append("i-1", 1 + n, [event(n)]))]),
                second.append([audited(append("i-2", 1 + n, [event(n)]))]),
            )
            assert [r.status for [r] in results] == [AppendStatus.APPENDED] * 2
        records, head = await first.audit_chain(TENANT)
        assert verify(TENANT, records, head) is None
        assert [r.seq for r in records] == list(range(1, 2 * rounds + 1))
        assert sorted(r.entry.target_id for r in records) == ["i-1"] * rounds + ["i-2"] * rounds
    finally:
        await first.close()
        await second.close()
