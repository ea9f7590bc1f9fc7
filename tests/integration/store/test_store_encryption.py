"""Contract: histories and outbox messages sealed at rest — a dump shows no business data,
the store gives events and message bodies back as written, rotated keys still open old
records, and a sealed record moved elsewhere, or opened without its key, is refused. A
published message keeps no body at all."""

from __future__ import annotations

import pytest

from saga_orchestrator.errors import ConfigurationError, StoreError
from saga_orchestrator.store import OutboxMessage, OutboxRow, Store, open_store
from saga_orchestrator.store.encryption import EventCipher, generate_key

from .support import TENANT, RawDatabase, append, create, event

SECRET_CONTEXT = b'{"card": "4242-4242-4242-4242", "name": "Ada Lovelace"}'


def command(message_id: str, body: bytes = SECRET_CONTEXT) -> OutboxMessage:
    return OutboxMessage(
        tenant_id=TENANT,
        instance_id="i-1",
        message_id=message_id,
        exchange="saga.commands",
        routing_key="charge",
        body=body,
        headers={"x-saga-message-id": message_id},
    )


async def _raw_outbox(url: str) -> list[tuple[str, bytes, str | None, str]]:
    """(message id, body, sealed_with, headers) of every row, as a dump would show them."""
    async with RawDatabase(url) as db:
        rows = await db.fetch(
            "SELECT message_id, body, sealed_with, headers FROM outbox ORDER BY id"
        )
    return [(r[0], bytes(r[1]), r[2], str(r[3])) for r in rows]


async def _claim(store: Store) -> dict[str, OutboxRow]:
    """Claim every unpublished message, then give them back (so another store can claim)."""
    rows = await store.claim_outbox(100, lease_seconds=60)
    await store.release_outbox([row.id for row in rows])
    return {row.message_id: row for row in rows}


async def _opened(url: str, keys: str) -> Store:
    store = open_store(url, cipher=EventCipher.parse(keys))
    await store.migrate()
    return store


async def test_a_dump_shows_nothing_and_the_store_gives_events_back(store_url: str) -> None:
    keys = f"k1={generate_key()}"
    store = await _opened(store_url, keys)
    try:
        await store.append([create("i-1", events=[("SagaStarted", SECRET_CONTEXT)])])
        await store.append([append("i-1", 1, [("StepSucceeded", b'{"out": "Ada Lovelace"}')])])
        events = await store.load_events(TENANT, "i-1")
    finally:
        await store.close()
    assert [(e.seq, e.type, e.data) for e in events] == [
        (1, "SagaStarted", SECRET_CONTEXT),
        (2, "StepSucceeded", b'{"out": "Ada Lovelace"}'),
    ]
    async with RawDatabase(store_url) as db:
        stored = [str(row[0]) for row in await db.fetch("SELECT data FROM events")]
    assert all("Lovelace" not in text and "4242" not in text for text in stored)
    assert all("enc:v1:k1:" in text for text in stored)


async def test_rotated_keys_still_open_older_events(store_url: str) -> None:
    old, new = generate_key(), generate_key()
    store = await _opened(store_url, f"k1={old}")
    try:
        await store.append([create("i-1", events=[("SagaStarted", SECRET_CONTEXT)])])
    finally:
        await store.close()
    rotated = await _opened(store_url, f"k2={new},k1={old}")
    try:
        await rotated.append([append("i-1", 1, [("StepSucceeded", b'{"n": 2}')])])
        events = await rotated.load_events(TENANT, "i-1")
    finally:
        await rotated.close()
    assert [e.data for e in events] == [SECRET_CONTEXT, b'{"n": 2}']
    async with RawDatabase(store_url) as db:
        stored = sorted(str(row[0]) for row in await db.fetch("SELECT data FROM events"))
    assert sum("enc:v1:k1:" in text for text in stored) == 1  # the first, sealed before
    assert sum("enc:v1:k2:" in text for text in stored) == 1  # the second, after rotation
    forgotten = await _opened(store_url, f"k2={new}")
    try:
        with pytest.raises(StoreError, match="key 'k1', which is not configured"):
            await forgotten.load_events(TENANT, "i-1")
    finally:
        await forgotten.close()


async def test_a_sealed_event_moved_elsewhere_does_not_open(store_url: str) -> None:
    keys = f"k1={generate_key()}"
    store = await _opened(store_url, keys)
    try:
        await store.append(
            [
                create("i-1", events=[("SagaStarted", SECRET_CONTEXT)]),
                create("i-2", events=[("SagaStarted", b"{}")]),
            ]
        )
        async with RawDatabase(store_url) as db:
            [(sealed,)] = await db.fetch("SELECT data FROM events WHERE instance_id = 'i-1'")
            await db.replace_event_data("i-2", 1, str(sealed))
        with pytest.raises(StoreError, match="does not open"):
            await store.load_events(TENANT, "i-2")
    finally:
        await store.close()


async def test_outbox_bodies_are_sealed_until_published_then_erased(store_url: str) -> None:
    store = await _opened(store_url, f"k1={generate_key()}")
    try:
        await store.append([create("i-1", outbox=[command("m-1"), command("m-2", b"{}")])])
        before = await _raw_outbox(store_url)
        [first, second] = await store.claim_outbox(10, lease_seconds=60)
        await store.mark_outbox_published([first.id])
        after = await _raw_outbox(store_url)
    finally:
        await store.close()
    assert [(mid, sealed_with) for mid, _, sealed_with, _ in before] == [
        ("m-1", "k1"),
        ("m-2", "k1"),
    ]
    assert all(b"Lovelace" not in body and b"4242" not in body for _, body, _, _ in before)
    assert (first.body, first.unreadable) == (SECRET_CONTEXT, None)
    assert (second.body, second.unreadable) == (b"{}", None)
    # Published: no body left, sealed or not; the ids and headers stay, for inspection.
    assert [(mid, body, sealed_with) for mid, body, sealed_with, _ in after] == [
        ("m-1", b"", None),
        ("m-2", before[1][1], "k1"),
    ]
    assert "x-saga-message-id" in after[0][3]


async def test_rotated_keys_still_open_older_outbox_messages(store_url: str) -> None:
    old, new = generate_key(), generate_key()
    store = await _opened(store_url, f"k1={old}")
    try:
        await store.append([create("i-1", outbox=[command("before")])])
    finally:
        await store.close()
    rotated = await _opened(store_url, f"k2={new},k1={old}")
    try:
        await rotated.append([append("i-1", 1, [event(2)], outbox=[command("after", b"{}")])])
        claimed = await _claim(rotated)
    finally:
        await rotated.close()
    assert {mid: sealed_with for mid, _, sealed_with, _ in await _raw_outbox(store_url)} == {
        "before": "k1",
        "after": "k2",
    }
    assert {mid: (row.body, row.unreadable) for mid, row in claimed.items()} == {
        "before": (SECRET_CONTEXT, None),
        "after": (b"{}", None),
    }
    # Without its key a body does not open: the row says why, and carries no body to publish.
    forgotten = await _opened(store_url, f"k2={new}")
    try:
        claimed = await _claim(forgotten)
    finally:
        await forgotten.close()
    assert (claimed["after"].body, claimed["after"].unreadable) == (b"{}", None)
    assert claimed["before"].body == b""
    assert "key 'k1', which is not configured" in str(claimed["before"].unreadable)
    keyless = open_store(store_url)
    try:
        claimed = await _claim(keyless)
    finally:
        await keyless.close()
    assert [row.body for row in claimed.values()] == [b"", b""]
    assert all("no encryption key is configured" in str(r.unreadable) for r in claimed.values())


async def test_a_sealed_outbox_body_moved_or_rerouted_does_not_open(store_url: str) -> None:
    store = await _opened(store_url, f"k1={generate_key()}")
    try:
        await store.append([create("i-1", outbox=[command("m-1"), command("m-2", b"{}")])])
        async with RawDatabase(store_url) as db:
            [(sealed,)] = await db.fetch("SELECT body FROM outbox WHERE message_id = 'm-1'")
            await db.execute("UPDATE outbox SET body = ? WHERE message_id = 'm-2'", sealed)
        claimed = await _claim(store)
        async with RawDatabase(store_url) as db:
            await db.execute("UPDATE outbox SET routing_key = 'eve' WHERE message_id = 'm-1'")
        rerouted = await _claim(store)
    finally:
        await store.close()
    assert (claimed["m-1"].body, claimed["m-1"].unreadable) == (SECRET_CONTEXT, None)
    assert claimed["m-2"].body == b""
    assert "does not open" in str(claimed["m-2"].unreadable)
    assert rerouted["m-1"].body == b""
    assert "does not open" in str(rerouted["m-1"].unreadable)


def test_bad_keys_are_refused_at_start() -> None:
    with pytest.raises(ConfigurationError, match="32 bytes"):
        EventCipher.parse("k1=c2hvcnQ=")
    with pytest.raises(ConfigurationError, match="not base64"):
        EventCipher.parse("k1=???")
    with pytest.raises(ConfigurationError, match="no key"):
        EventCipher.parse(" , ")
