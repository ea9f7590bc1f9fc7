"""Contract: the audit log — one hash chain per tenant, written in the transaction of the
change it records, append-only, and any tampering found at the exact record."""

from __future__ import annotations

from dataclasses import replace

import pytest

from saga_orchestrator.store import (
    AppendRequest,
    AuditEntry,
    AuditFilter,
    AuditOutcome,
    Store,
)
from saga_orchestrator.store.audit import GENESIS, verify

from .support import OTHER_TENANT, TENANT, RawDatabase, append, at, create, event


def entry(action: str, n: int, *, tenant: str = TENANT, **extra: object) -> AuditEntry:
    return AuditEntry(
        tenant_id=tenant,
        at=at(n),
        actor="ada",
        action=action,
        target_type="instance",
        target_id=f"i-{n}",
        reason="because",
        request_id=f"req-{n}",
        details={"n": n, "text": "café"},
        **extra,  # type: ignore[arg-type]
    )


async def _verified(store: Store, tenant: str = TENANT) -> tuple[int, object]:
    records, head = await store.audit_chain(tenant)
    return len(records), verify(tenant, records, head)


async def test_appends_record_their_entries_in_one_chain_per_tenant(store: Store) -> None:
    results = await store.append(
        [
            _with_audit(create("a"), entry("instance.start", 1)),
            _with_audit(
                create("b", tenant=OTHER_TENANT), entry("instance.start", 2, tenant=OTHER_TENANT)
            ),
            _with_audit(append("a", 7, [event(1)]), entry("instance.cancel", 3)),  # conflict
        ]
    )
    assert [r.status.value for r in results] == ["appended", "appended", "conflict"]
    await store.append([_with_audit(append("a", 1, [event(1)]), entry("instance.cancel", 4))])
    records, head = await store.audit_chain(TENANT)
    assert [(r.seq, r.entry.action) for r in records] == [
        (1, "instance.start"),
        (2, "instance.cancel"),
    ]
    assert records[0].prev_hash == GENESIS
    assert records[1].prev_hash == records[0].hash
    assert head == (2, records[1].hash)
    assert records[0].entry == entry("instance.start", 1)
    other, _ = await store.audit_chain(OTHER_TENANT)
    assert [(r.seq, r.entry.tenant_id) for r in other] == [(1, OTHER_TENANT)]
    assert verify(TENANT, records, head) is None
    assert sorted(await store.audit_tenants()) == sorted([TENANT, OTHER_TENANT])


def _with_audit(request: AppendRequest, audit: AuditEntry) -> AppendRequest:
    return replace(request, audit=audit)


async def test_definition_and_participant_changes_are_audited_with_them(store: Store) -> None:
    created = await store.put_definition(
        tenant_id=TENANT, name="order", version="1.0.0", body=b"{}", digest="d",
        audit=entry("definition.register", 1),
    )  # fmt: skip
    again = await store.put_definition(
        tenant_id=TENANT, name="order", version="1.0.0", body=b"{}", digest="d",
        audit=entry("definition.register", 2),
    )  # fmt: skip
    assert (created.value, again.value) == ("created", "identical")
    assert await store.set_definition_deprecated(
        TENANT, "order", "1.0.0", True, audit=entry("definition.deprecate", 3)
    )
    assert not await store.set_definition_deprecated(
        TENANT, "nope", "1.0.0", True, audit=entry("definition.deprecate", 4)
    )
    await store.put_participant(
        TENANT, "shop", {"base_url": "https://x.example"}, entry("participant.put", 5)
    )
    assert await store.delete_participant(TENANT, "shop", entry("participant.delete", 6))
    assert not await store.delete_participant(TENANT, "shop", entry("participant.delete", 7))
    records, _ = await store.audit_chain(TENANT)
    assert [r.entry.action for r in records] == [
        "definition.register", "definition.deprecate", "participant.put", "participant.delete",
    ]  # fmt: skip
    assert await _verified(store) == (4, None)


async def test_refused_actions_are_recorded_on_their_own(store: Store) -> None:
    refused = entry("instance.cancel", 1, outcome=AuditOutcome.REFUSED)
    [record] = await store.append_audit([refused])
    assert (record.seq, record.entry.outcome) == (1, AuditOutcome.REFUSED)
    assert await _verified(store) == (1, None)


async def test_listing_filters_and_pages(store: Store) -> None:
    await store.append_audit([entry("instance.start", n) for n in range(1, 6)])
    await store.append_audit([entry("instance.cancel", 6)])
    page = await store.list_audit(TENANT, AuditFilter(), limit=4)
    assert [r.seq for r in page] == [1, 2, 3, 4]
    rest = await store.list_audit(TENANT, AuditFilter(), limit=4, after_seq=4)
    assert [r.seq for r in rest] == [5, 6]
    cancels = await store.list_audit(TENANT, AuditFilter(action="instance.cancel"))
    assert [r.seq for r in cancels] == [6]
    window = await store.list_audit(TENANT, AuditFilter(after=at(2), before=at(4)))
    assert [r.seq for r in window] == [2, 3]
    assert await store.list_audit(OTHER_TENANT, AuditFilter()) == []
    assert [r.seq for r in await store.list_audit(TENANT, AuditFilter(target_id="i-3"))] == [3]


async def test_the_log_refuses_updates_and_deletes(store: Store, store_url: str) -> None:
    await store.append_audit([entry("instance.start", 1)])
    async with RawDatabase(store_url) as db:
        for statement in (
            "UPDATE audit_log SET actor = 'mallory'",
            "DELETE FROM audit_log",
        ):
            with pytest.raises(Exception, match="append-only"):
                await db.execute(statement)


TAMPERING = {
    # what an attacker with the table's owner rights does -> the first record that breaks
    "rewrite": (["UPDATE audit_log SET actor = 'mallory' WHERE seq = 3"], 3),
    "rewrite with a recomputed hash": (
        ["UPDATE audit_log SET reason = 'nothing', hash = 'f' || substr(hash, 2) WHERE seq = 2"],
        2,
    ),
    "delete in the middle": (["DELETE FROM audit_log WHERE seq = 3"], 3),
    "delete the tail": (["DELETE FROM audit_log WHERE seq = 5"], 5),
    "reorder": (
        [
            "UPDATE audit_log SET seq = 100 WHERE seq = 2",
            "UPDATE audit_log SET seq = 2 WHERE seq = 4",
            "UPDATE audit_log SET seq = 4 WHERE seq = 100",
        ],
        2,
    ),
}


@pytest.mark.parametrize("kind", sorted(TAMPERING))
async def test_tampering_is_found_at_the_exact_record(
    store: Store, store_url: str, kind: str
) -> None:
    await store.append_audit([entry("instance.start", n) for n in range(1, 6)])
    assert await _verified(store) == (5, None)
    statements, first_broken = TAMPERING[kind]
    async with RawDatabase(store_url) as db:
        await db.without_audit_triggers(statements)
    records, head = await store.audit_chain(TENANT)
    broken = verify(TENANT, records, head)
    assert broken is not None
    assert broken.seq == first_broken, broken
