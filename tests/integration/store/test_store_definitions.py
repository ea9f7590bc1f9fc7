"""Contract: definition versions are immutable and sorted by semantic version."""

from __future__ import annotations

import hashlib
import random
from datetime import UTC, datetime

import pytest

from saga_orchestrator.errors import InvalidInput
from saga_orchestrator.store import PutDefinitionOutcome, Store

from .support import OTHER_TENANT, TENANT


def body(text: str) -> tuple[bytes, str]:
    data = b'{"name": "order", "note": "%s"}' % text.encode()
    return data, hashlib.sha256(data).hexdigest()


async def put(
    store: Store, version: str, text: str = "v", *, name: str = "order", tenant: str = TENANT
) -> PutDefinitionOutcome:
    data, digest = body(text)
    return await store.put_definition(
        tenant_id=tenant, name=name, version=version, body=data, digest=digest
    )


async def test_put_is_created_then_identical_then_conflict(store: Store) -> None:
    before = datetime.now(UTC)
    assert await put(store, "1.0.0", "first") is PutDefinitionOutcome.CREATED
    assert await put(store, "1.0.0", "first") is PutDefinitionOutcome.IDENTICAL
    assert await put(store, "1.0.0", "second") is PutDefinitionOutcome.CONFLICT

    record = await store.get_definition(TENANT, "order", "1.0.0")
    assert record is not None
    data, digest = body("first")
    assert (record.tenant_id, record.name, record.version) == (TENANT, "order", "1.0.0")
    assert (record.body, record.digest, record.deprecated) == (data, digest, False)
    assert before <= record.created_at <= datetime.now(UTC)
    assert record.created_at.utcoffset() is not None


async def test_get_missing_definition_is_none(store: Store) -> None:
    await put(store, "1.0.0")
    assert await store.get_definition(TENANT, "order", "1.0.1") is None
    assert await store.get_definition(TENANT, "orders", "1.0.0") is None


async def test_versions_are_listed_in_semantic_order(store: Store) -> None:
    expected = [
        "0.9.9",
        "1.2.0-alpha.2",
        "1.2.0-alpha.10",
        "1.2.0-rc.1",
        "1.2.0",
        "1.10.0",
        "2.0.0",
    ]
    shuffled = expected[:]
    random.Random(7).shuffle(shuffled)
    for version in shuffled:
        assert await put(store, version) is PutDefinitionOutcome.CREATED
    await put(store, "9.9.9", name="other")
    listed = await store.list_definition_versions(TENANT, "order")
    assert [record.version for record in listed] == expected


async def test_a_version_must_be_semantic(store: Store) -> None:
    with pytest.raises(InvalidInput, match="semantic version"):
        await put(store, "1.0")
    assert await store.list_definition_versions(TENANT, "order") == []


async def test_deprecate_and_restore(store: Store) -> None:
    await put(store, "1.0.0")
    await put(store, "1.1.0")
    assert await store.set_definition_deprecated(TENANT, "order", "1.0.0", True) is True
    deprecated = await store.get_definition(TENANT, "order", "1.0.0")
    untouched = await store.get_definition(TENANT, "order", "1.1.0")
    assert deprecated is not None
    assert deprecated.deprecated is True
    assert untouched is not None
    assert untouched.deprecated is False
    # Deprecation does not change identity: re-registering the same body is still identical.
    assert await put(store, "1.0.0") is PutDefinitionOutcome.IDENTICAL
    assert await store.set_definition_deprecated(TENANT, "order", "1.0.0", False) is True
    restored = await store.get_definition(TENANT, "order", "1.0.0")
    assert restored is not None
    assert restored.deprecated is False
    assert await store.set_definition_deprecated(TENANT, "order", "3.0.0", True) is False


async def test_names_are_listed_by_prefix(store: Store) -> None:
    for name in ("orders.create", "orders.cancel", "payments", "order", "a_b", "axb"):
        await put(store, "1.0.0", name=name)
    await put(store, "2.0.0", name="orders.create")
    assert await store.list_definition_names(TENANT) == [
        "a_b",
        "axb",
        "order",
        "orders.cancel",
        "orders.create",
        "payments",
    ]
    assert await store.list_definition_names(TENANT, "orders.") == [
        "orders.cancel",
        "orders.create",
    ]
    # The prefix is literal: no LIKE wildcards.
    assert await store.list_definition_names(TENANT, "a_") == ["a_b"]
    assert await store.list_definition_names(TENANT, "Order") == []


async def test_definitions_are_isolated_by_tenant(store: Store) -> None:
    await put(store, "1.0.0", "mine")
    assert await store.get_definition(OTHER_TENANT, "order", "1.0.0") is None
    assert await store.list_definition_versions(OTHER_TENANT, "order") == []
    assert await store.list_definition_names(OTHER_TENANT) == []
    assert await store.set_definition_deprecated(OTHER_TENANT, "order", "1.0.0", True) is False
    # Another tenant's same name and version is its own, independent definition.
    assert await put(store, "1.0.0", "theirs", tenant=OTHER_TENANT) is PutDefinitionOutcome.CREATED
    mine = await store.get_definition(TENANT, "order", "1.0.0")
    theirs = await store.get_definition(OTHER_TENANT, "order", "1.0.0")
    assert mine is not None
    assert theirs is not None
    assert (mine.body, theirs.body) == (body("mine")[0], body("theirs")[0])
    assert mine.deprecated is False
