"""Contract: histories sealed at rest — a dump shows no business data, the store gives the
events back as written, rotated keys still open old events, and a sealed event moved
elsewhere, or opened without its key, is refused."""

from __future__ import annotations

import pytest

from saga_orchestrator.errors import ConfigurationError, StoreError
from saga_orchestrator.store import Store, open_store
from saga_orchestrator.store.encryption import EventCipher, generate_key

from .support import TENANT, RawDatabase, append, create

SECRET_CONTEXT = b'{"card": "4242-4242-4242-4242", "name": "Ada Lovelace"}'


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


def test_bad_keys_are_refused_at_start() -> None:
    with pytest.raises(ConfigurationError, match="32 bytes"):
        EventCipher.parse("k1=c2hvcnQ=")
    with pytest.raises(ConfigurationError, match="not base64"):
        EventCipher.parse("k1=???")
    with pytest.raises(ConfigurationError, match="no key"):
        EventCipher.parse(" , ")
