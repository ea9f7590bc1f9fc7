"""Contract: a tenant's limit overrides — one versioned document per tenant, its audit entry
written in the same transaction, and no tenant ever reading another's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from saga_orchestrator.store import AuditEntry, Store

from .support import OTHER_TENANT, TENANT, at

LOW = {"requests": {"per_second": 1.5, "burst": 3}, "max_running_sagas": 2}
HIGH = {"starts": {"per_second": 100, "burst": 200}}


def entry(action: str, n: int, *, details: dict[str, object] | None = None) -> AuditEntry:
    return AuditEntry(
        tenant_id=TENANT,
        at=at(n),
        actor="ada",
        action=action,
        target_type="tenant_limits",
        target_id=TENANT,
        reason=None,
        request_id=f"req-{n}",
        details=details or {},
    )


async def test_limits_are_versioned_per_tenant(store: Store) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)
    assert await store.get_tenant_limits(TENANT) is None
    assert await store.put_tenant_limits(TENANT, LOW) == 1
    assert await store.put_tenant_limits(TENANT, HIGH) == 2
    assert await store.put_tenant_limits(OTHER_TENANT, LOW) == 1
    stored = await store.get_tenant_limits(TENANT)
    assert stored is not None
    assert (stored.tenant_id, stored.config, stored.version) == (TENANT, HIGH, 2)
    assert stored.updated_at.tzinfo is not None
    assert stored.updated_at > before
    other = await store.get_tenant_limits(OTHER_TENANT)
    assert other is not None
    assert (other.config, other.version) == (LOW, 1)


async def test_a_reset_removes_only_that_tenants_limits(store: Store) -> None:
    await store.put_tenant_limits(TENANT, LOW)
    await store.put_tenant_limits(OTHER_TENANT, HIGH)
    assert await store.delete_tenant_limits(TENANT) is True
    assert await store.delete_tenant_limits(TENANT) is False
    assert await store.get_tenant_limits(TENANT) is None
    assert await store.delete_tenant_limits("nobody") is False
    kept = await store.get_tenant_limits(OTHER_TENANT)
    assert kept is not None
    assert kept.config == HIGH
    assert await store.put_tenant_limits(TENANT, LOW) == 1  # a new document starts over


async def test_changes_are_audited_in_their_transaction(store: Store) -> None:
    await store.put_tenant_limits(TENANT, LOW, entry("tenant_limits.put", 1))
    assert await store.delete_tenant_limits(TENANT, entry("tenant_limits.delete", 2))
    assert not await store.delete_tenant_limits(TENANT, entry("tenant_limits.delete", 3))
    records, _ = await store.audit_chain(TENANT)
    assert [(r.seq, r.entry.action, r.entry.target_id) for r in records] == [
        (1, "tenant_limits.put", TENANT),
        (2, "tenant_limits.delete", TENANT),
    ]
    assert (await store.audit_chain(OTHER_TENANT))[0] == []


async def test_a_change_whose_audit_entry_fails_is_not_made(store: Store) -> None:
    await store.put_tenant_limits(TENANT, LOW, entry("tenant_limits.put", 1))
    unwritable = entry("tenant_limits.put", 2, details={"not json": object()})
    with pytest.raises(Exception):  # noqa: B017, PT011 - whatever the serializer raises
        await store.put_tenant_limits(TENANT, HIGH, unwritable)
    with pytest.raises(Exception):  # noqa: B017, PT011
        await store.delete_tenant_limits(TENANT, unwritable)
    stored = await store.get_tenant_limits(TENANT)
    assert stored is not None
    assert (stored.config, stored.version) == (LOW, 1)
    records, _ = await store.audit_chain(TENANT)
    assert [r.seq for r in records] == [1]
