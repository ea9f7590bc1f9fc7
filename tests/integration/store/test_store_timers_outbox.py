"""Contract: durable timers, the outbox, and recovery's list of unfinished instances."""

from __future__ import annotations

import orjson

from saga_orchestrator.store import DueTimer, InstanceRef, InstanceStatus, Store

from .support import OTHER_TENANT, TENANT, RawDatabase, append, at, create, event, message, update


def due(instance_id: str, seconds: float, tenant: str = TENANT) -> DueTimer:
    return DueTimer(tenant_id=tenant, instance_id=instance_id, fire_at=at(seconds))


async def test_timers_are_upserted_deleted_and_due_in_order(store: Store) -> None:
    assert await store.next_timer_at() is None
    await store.append(
        [
            create("a", state=update(wake_at=at(30))),
            create("b", state=update(wake_at=at(10))),
            create("c", tenant=OTHER_TENANT, state=update(wake_at=at(20))),
            create("d"),
        ]
    )
    assert await store.next_timer_at() == at(10)
    assert await store.due_timers(at(25), 10) == [due("b", 10), due("c", 20, OTHER_TENANT)]
    assert await store.due_timers(at(30), 2) == [due("b", 10), due("c", 20, OTHER_TENANT)]
    assert await store.due_timers(at(9.999999), 10) == []

    # Upsert: a later append moves the timer (and creates one where there was none).
    await store.append(
        [
            append("b", 1, [event(1)], state=update(wake_at=at(40))),
            append("d", 1, [], state=update(wake_at=at(5))),
        ]
    )
    assert await store.due_timers(at(100), 10) == [
        due("d", 5),
        due("c", 20, OTHER_TENANT),
        due("a", 30),
        due("b", 40),
    ]
    record = await store.get_instance(TENANT, "b")
    assert record is not None
    assert record.wake_at == at(40)

    # wake_at=None deletes the instance's timer.
    await store.append([append("d", 1, [event(1)]), append("a", 1, [])])
    assert await store.due_timers(at(100), 10) == [due("c", 20, OTHER_TENANT), due("b", 40)]
    assert await store.next_timer_at() == at(20)
    record = await store.get_instance(TENANT, "d")
    assert record is not None
    assert record.wake_at is None


async def test_a_conflicting_request_leaves_the_timer_alone(store: Store) -> None:
    await store.append([create("a", state=update(wake_at=at(30)))])
    results = await store.append([append("a", 7, [event(1)], state=update(wake_at=None))])
    assert results[0].last_seq == 1
    assert await store.due_timers(at(30), 10) == [due("a", 30)]


async def test_outbox_rows_commit_with_their_events(store: Store, store_url: str) -> None:
    await store.append(
        [create("a", outbox=[message("a", "a:charge:action"), message("a", "a:ship:action")])]
    )
    results = await store.append(
        [
            append("a", 0, [event(1)], outbox=[message("a", "lost:conflict")]),
            append("a", 1, [event(1)], outbox=[message("a", "a:notify:action")]),
        ]
    )
    assert [r.last_seq for r in results] == [1, 2]
    async with RawDatabase(store_url) as db:
        rows = await db.fetch(
            "SELECT tenant_id, instance_id, message_id, exchange, routing_key, body, headers,"
            " published_at, attempts, sealed_with FROM outbox ORDER BY id"
        )
    assert [(r[0], r[1], r[2], r[3], r[4], bytes(r[5])) for r in rows] == [
        (TENANT, "a", mid, "saga.steps", f"payments.{mid}", b'{"amount": 10}')
        for mid in ("a:charge:action", "a:ship:action", "a:notify:action")
    ]
    assert [orjson.loads(r[6]) for r in rows] == [
        {"idempotency-key": mid} for mid in ("a:charge:action", "a:ship:action", "a:notify:action")
    ]
    assert [(r[7], r[8], r[9]) for r in rows] == [(None, 0, None)] * 3  # no keys: not sealed


async def test_an_outbox_message_is_written_once(store: Store, store_url: str) -> None:
    await store.append([create("a", outbox=[message("a", "m-1")])])
    again = [append("a", 1, [event(1)], outbox=[message("a", "m-1"), message("a", "m-2")])]
    assert (await store.append(again))[0].last_seq == 2
    async with RawDatabase(store_url) as db:
        rows = await db.fetch("SELECT message_id FROM outbox ORDER BY id")
    assert rows == [("m-1",), ("m-2",)]


async def test_list_unfinished_spans_tenants(store: Store) -> None:
    statuses = {
        "r": InstanceStatus.RUNNING,
        "c": InstanceStatus.COMPENSATING,
        "done": InstanceStatus.COMPLETED,
        "undone": InstanceStatus.COMPENSATED,
        "parked": InstanceStatus.FAILED,
        "x": InstanceStatus.CANCELLED,
        "t": InstanceStatus.TIMED_OUT,
    }
    await store.append([create(iid, state=update(status=s)) for iid, s in statuses.items()])
    await store.append([create("other", tenant=OTHER_TENANT)])
    unfinished = await store.list_unfinished()
    assert sorted(unfinished, key=lambda ref: ref.instance_id) == [
        InstanceRef(tenant_id=TENANT, instance_id="c"),
        InstanceRef(tenant_id=OTHER_TENANT, instance_id="other"),
        InstanceRef(tenant_id=TENANT, instance_id="r"),
    ]
    # Finishing an instance takes it off the list.
    done = update(status=InstanceStatus.COMPLETED)
    await store.append([append("r", 1, [event(1)], state=done)])
    assert {ref.instance_id for ref in await store.list_unfinished()} == {"c", "other"}
