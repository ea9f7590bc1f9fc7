"""Contract: group-commit appends, the event log and the instance read model."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import orjson
import pytest

from saga_orchestrator.errors import InvalidInput
from saga_orchestrator.store import (
    AppendResult,
    AppendStatus,
    InstanceFilter,
    InstanceRecord,
    InstanceStatus,
    Store,
)

from .support import OTHER_TENANT, T0, TENANT, append, at, create, event, update

APPENDED, CONFLICT = AppendStatus.APPENDED, AppendStatus.CONFLICT


def ok(last_seq: int) -> AppendResult:
    return AppendResult(status=APPENDED, last_seq=last_seq)


def conflict(last_seq: int) -> AppendResult:
    return AppendResult(status=CONFLICT, last_seq=last_seq)


def duplicate(instance_id: str, digest: str | None) -> AppendResult:
    return AppendResult(
        status=AppendStatus.DUPLICATE_START,
        last_seq=0,
        existing_instance_id=instance_id,
        existing_request_digest=digest,
    )


async def seqs(store: Store, instance_id: str, tenant: str = TENANT) -> list[int]:
    return [e.seq for e in await store.load_events(tenant, instance_id)]


async def test_create_append_load_round_trip(store: Store) -> None:
    # Aware, non-UTC input comes back as the same instant, in UTC, to the microsecond.
    paris = timezone(timedelta(hours=2))
    created_at = T0.astimezone(paris)
    started = create(
        "i-1",
        created_at=created_at,
        key="start-1",
        digest="d1",
        parent=("parent-9", "charge"),
        state=update(nodes=("reserve",), updated_at=created_at, wake_at=at(30)),
    )
    assert await store.append([started]) == [ok(1)]
    later = update(status=InstanceStatus.COMPENSATING, nodes=("a", "b"), updated_at=at(5))
    assert await store.append([append("i-1", 1, [event(1), event(2)], state=later)]) == [ok(3)]

    events = await store.load_events(TENANT, "i-1")
    assert [(e.instance_id, e.seq, e.type) for e in events] == [
        ("i-1", 1, "SagaStarted"),
        ("i-1", 2, "StepSucceeded"),
        ("i-1", 3, "StepSucceeded"),
    ]
    assert [orjson.loads(e.data) for e in events] == [
        {"input": {"order": 1}},
        {"n": 1, "text": "café"},
        {"n": 2, "text": "café"},
    ]
    assert [e.recorded_at for e in events] == [T0, at(5), at(5)]
    assert all(e.recorded_at.utcoffset() == timedelta(0) for e in events)

    record = await store.get_instance(TENANT, "i-1")
    assert record == InstanceRecord(
        tenant_id=TENANT,
        instance_id="i-1",
        definition_name="order",
        definition_version="1.0.0",
        status=InstanceStatus.COMPENSATING,
        current_nodes=("a", "b"),
        last_seq=3,
        created_at=T0,
        updated_at=at(5),
        wake_at=None,
        parent_instance_id="parent-9",
        parent_node="charge",
        idempotency_key="start-1",
    )
    assert record.created_at.tzinfo is not None
    assert record.created_at.utcoffset() == timedelta(0)


async def test_load_events_after_and_limit(store: Store) -> None:
    await store.append([create("i-1", events=[event(n) for n in range(1, 8)])])
    assert await seqs(store, "i-1") == [1, 2, 3, 4, 5, 6, 7]
    assert [e.seq for e in await store.load_events(TENANT, "i-1", after_seq=4)] == [5, 6, 7]
    assert [e.seq for e in await store.load_events(TENANT, "i-1", 2, limit=3)] == [3, 4, 5]
    assert await store.load_events(TENANT, "i-1", after_seq=7) == []
    assert await store.load_events(TENANT, "missing") == []


async def test_sequences_stay_gap_free(store: Store) -> None:
    await store.append([create("i-1")])
    last = 1
    for n in range(20):
        events = [event(k) for k in range(n % 4)]
        [result] = await store.append([append("i-1", last, events)])
        last += len(events)
        assert result == ok(last)
    assert await seqs(store, "i-1") == list(range(1, last + 1))
    record = await store.get_instance(TENANT, "i-1")
    assert record is not None
    assert record.last_seq == last == 31


async def test_wrong_expected_seq_conflicts_and_writes_nothing(store: Store) -> None:
    await store.append([create("i-1", state=update(wake_at=at(60)))])
    before = await store.get_instance(TENANT, "i-1")
    stale = update(status=InstanceStatus.FAILED, updated_at=at(9), wake_at=None)
    for expected in (0, 2, 7):
        [result] = await store.append([append("i-1", expected, [event(1)], state=stale)])
        assert result == conflict(1)
    assert await store.get_instance(TENANT, "i-1") == before
    assert await seqs(store, "i-1") == [1]
    assert await store.next_timer_at() == at(60)


async def test_append_to_missing_or_foreign_instance_conflicts(store: Store) -> None:
    await store.append([create("i-1")])
    assert await store.append([append("nope", 0, [event(1)])]) == [conflict(0)]
    # Another tenant sees neither the instance nor its sequence.
    foreign = append("i-1", 1, [event(1)], tenant=OTHER_TENANT)
    assert await store.append([foreign]) == [conflict(0)]
    assert await seqs(store, "i-1") == [1]
    assert await store.get_instance(TENANT, "nope") is None


async def test_create_collision_conflicts(store: Store) -> None:
    await store.append([create("i-1", created_at=T0)])
    again = create("i-1", created_at=at(1), definition=("other", "2.0.0"), key="k-2")
    assert await store.append([again]) == [conflict(1)]
    record = await store.get_instance(TENANT, "i-1")
    assert record is not None
    assert (record.definition_name, record.created_at, record.idempotency_key) == (
        "order",
        T0,
        None,
    )
    # The losing create did not claim its start key.
    assert await store.find_start(TENANT, "k-2") is None
    # A create colliding with another tenant's instance id conflicts without leaking it.
    assert await store.append([create("i-1", tenant=OTHER_TENANT)]) == [conflict(0)]


async def test_a_batch_of_creates_with_one_collision_creates_the_others(store: Store) -> None:
    await store.append([create("i-1", created_at=T0)])
    batch = [create("i-0", key="k-0"), create("i-1", key="k-1"), create("i-2")]
    assert await store.append(batch) == [ok(1), conflict(1), ok(1)]
    assert await seqs(store, "i-0") == await seqs(store, "i-2") == [1]
    assert await seqs(store, "i-1") == [1]
    assert await store.find_start(TENANT, "k-1") is None
    assert await store.find_start(TENANT, "k-0") is not None


async def test_duplicate_start_key_across_batches(store: Store) -> None:
    assert await store.append([create("i-1", key="k", digest="d1")]) == [ok(1)]
    retry = create("i-2", key="k", digest="d2", events=[event(1), event(2)])
    assert await store.append([retry]) == [duplicate("i-1", "d1")]
    assert await store.get_instance(TENANT, "i-2") is None
    assert await store.load_events(TENANT, "i-2") == []
    assert await store.find_start(TENANT, "k") == ("i-1", "d1")
    # Keys are per tenant.
    assert await store.append([create("i-3", tenant=OTHER_TENANT, key="k")]) == [ok(1)]
    assert await store.find_start(OTHER_TENANT, "k") == ("i-3", None)
    assert await store.find_start(TENANT, "unused") is None


async def test_duplicate_start_key_within_one_batch(store: Store) -> None:
    results = await store.append(
        [
            create("i-1", key="k", digest="d1"),
            create("i-2", key="k", digest="d2"),
            create("i-3", key="other"),
        ]
    )
    assert results == [ok(1), duplicate("i-1", "d1"), ok(1)]
    assert await store.get_instance(TENANT, "i-2") is None
    assert await store.find_start(TENANT, "k") == ("i-1", "d1")


async def test_one_conflict_does_not_block_the_batch(store: Store) -> None:
    await store.append([create("b")])
    results = await store.append(
        [
            create("a", events=[event(0)]),
            append("b", 5, [event(1)]),
            create("c", events=[event(0), event(1)]),
            append("a", 1, [event(1), event(2)]),
            append("b", 1, [event(1)]),
        ]
    )
    assert results == [ok(1), conflict(1), ok(2), ok(3), ok(2)]
    assert await seqs(store, "a") == [1, 2, 3]
    assert await seqs(store, "b") == [1, 2]
    assert await seqs(store, "c") == [1, 2]


async def test_same_instance_twice_in_a_batch_runs_in_order(store: Store) -> None:
    await store.append([create("i-1")])
    final = update(status=InstanceStatus.COMPLETED, updated_at=at(3))
    results = await store.append(
        [
            append("i-1", 1, [event(1)], state=update(updated_at=at(1))),
            append("i-1", 1, [event(9)], state=update(updated_at=at(2))),
            append("i-1", 2, [event(2), event(3)], state=final),
        ]
    )
    assert results == [ok(2), conflict(2), ok(4)]
    assert [orjson.loads(e.data)["n"] for e in await store.load_events(TENANT, "i-1", 1)] == [
        1,
        2,
        3,
    ]
    record = await store.get_instance(TENANT, "i-1")
    assert record is not None
    assert (record.status, record.updated_at, record.last_seq) == (
        InstanceStatus.COMPLETED,
        at(3),
        4,
    )


async def test_empty_batch_and_event_free_append(store: Store) -> None:
    assert await store.append([]) == []
    await store.append([create("i-1")])
    moved = update(nodes=("x",), updated_at=at(2), wake_at=at(10))
    assert await store.append([append("i-1", 1, [], state=moved)]) == [ok(1)]
    record = await store.get_instance(TENANT, "i-1")
    assert record is not None
    assert (record.current_nodes, record.wake_at, record.last_seq) == (("x",), at(10), 1)


async def test_invalid_requests_are_refused_before_writing(store: Store) -> None:
    wrong_seq = replace(create("i-1"), expected_seq=1)
    with pytest.raises(InvalidInput, match="sequence 0"):
        await store.append([create("i-0"), wrong_seq])
    naive = datetime(2025, 1, 1)  # noqa: DTZ001 - the point of the test
    with pytest.raises(InvalidInput, match="naive"):
        await store.append([create("i-0"), create("i-2", created_at=naive)])
    with pytest.raises(InvalidInput, match="naive"):
        await store.due_timers(naive, 10)
    assert await store.get_instance(TENANT, "i-0") is None


async def test_reads_are_isolated_by_tenant(store: Store) -> None:
    await store.append([create("i-1", key="k", state=update(wake_at=at(5)))])
    assert await store.get_instance(OTHER_TENANT, "i-1") is None
    assert await store.load_events(OTHER_TENANT, "i-1") == []
    assert await store.find_start(OTHER_TENANT, "k") is None
    page = await store.list_instances(OTHER_TENANT, InstanceFilter())
    assert page.items == ()
    assert page.next_cursor is None
    assert await store.get_instance(TENANT, "i-1") is not None
