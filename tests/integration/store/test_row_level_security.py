"""Row-level security on PostgreSQL: the second wall between tenants.

The store's own queries filter by tenant; these tests show that the database keeps tenants
apart even when those filters are gone. ``without_tenant_filters`` is the "test build" of the
store: every tenant predicate in every query text it sends is rewritten into one that is always
true. Each probe runs twice: through the real roles (nothing of tenant A reaches tenant B), and
through a control store that connects as the login itself, where row-level security does not
apply (a superuser bypasses it), and the same probes leak. The control proves the rewrite
really removed the application's filters, so the first run's silence is the database's doing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from saga_orchestrator.store import AppendStatus, AuditFilter, InstanceFilter
from saga_orchestrator.store.postgres import PostgresOptions, PostgresStore
from tests.integration.store.support import (
    OTHER_TENANT,
    TENANT,
    append,
    audit_entry,
    create,
    event,
)
from tests.support.tenant_filters import without_tenant_filters

pytestmark = pytest.mark.postgres
__all__ = ["without_tenant_filters"]  # a fixture, used by name

TENANT_TABLES = (
    "definitions",
    "instances",
    "events",
    "timers",
    "start_keys",
    "outbox",
    "participants",
    "tenant_limits",
    "audit_log",
    "audit_heads",
)


class _NoRowSecurity(PostgresStore):
    """The control: every session is the URL's login (a superuser here), which bypasses
    row-level security."""

    app_role = None
    cluster_role = None


@pytest_asyncio.fixture
async def secured(pg_url: str) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(pg_url)
    try:
        yield store
    finally:
        await store.close()


@pytest_asyncio.fixture
async def unsecured(pg_url: str) -> AsyncIterator[PostgresStore]:
    store = _NoRowSecurity(pg_url)
    try:
        yield store
    finally:
        await store.close()


async def _seed_tenant_a(store: PostgresStore, pg_url: str) -> None:
    await store.put_definition(
        tenant_id=TENANT, name="order", version="1.0.0", body=b"{}", digest="d"
    )
    await store.append([create("i-a", key="key-a")])
    await store.append([append("i-a", 1, [event(2)])])
    await store.put_participant(TENANT, "shop", {"base_url": "https://shop.example"})
    await store.put_tenant_limits(TENANT, {"starts_per_second": 5})
    shop = audit_entry("shop", action="participant.put", target_type="participant")
    await store.append_audit([shop])
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute("UPDATE instances SET quarantined_at = now() WHERE instance_id = 'i-a'")
    finally:
        await conn.close()


async def _reads_as_tenant_b(store: PostgresStore) -> dict[str, Any]:
    """What tenant B's reads return about tenant A's rows (empty values: nothing)."""
    page = await store.list_instances(OTHER_TENANT, InstanceFilter())
    chain, head = await store.audit_chain(OTHER_TENANT)
    return {
        "get_instance": await store.get_instance(OTHER_TENANT, "i-a"),
        "list_instances": page.items,
        "load_events": await store.load_events(OTHER_TENANT, "i-a"),
        "find_start": await store.find_start(OTHER_TENANT, "key-a"),
        "get_definition": await store.get_definition(OTHER_TENANT, "order", "1.0.0"),
        "list_definition_versions": await store.list_definition_versions(OTHER_TENANT, "order"),
        "list_definition_names": await store.list_definition_names(OTHER_TENANT),
        "get_participant": await store.get_participant(OTHER_TENANT, "shop"),
        "list_participants": await store.list_participants(OTHER_TENANT),
        "get_tenant_limits": await store.get_tenant_limits(OTHER_TENANT),
        "list_audit": await store.list_audit(OTHER_TENANT, AuditFilter()),
        "audit_chain": chain,
        "audit_head": head,
        "list_quarantined": await store.list_quarantined(OTHER_TENANT),
    }


async def test_row_level_security_alone_keeps_reads_apart(
    secured: PostgresStore,
    unsecured: PostgresStore,
    pg_url: str,
    without_tenant_filters: list[str],
) -> None:
    await _seed_tenant_a(secured, pg_url)
    walled = await _reads_as_tenant_b(secured)
    assert {probe: value for probe, value in walled.items() if value} == {}
    # The control: the same filter-less queries without the roles see tenant A's rows in
    # every probe, so each probe above was really answered without a tenant filter.
    leaked = await _reads_as_tenant_b(unsecured)
    assert [probe for probe, value in leaked.items() if not value] == []
    assert without_tenant_filters  # the rewrite happened


async def test_row_level_security_alone_keeps_writes_apart(
    secured: PostgresStore,
    unsecured: PostgresStore,
    pg_url: str,
    without_tenant_filters: list[str],
) -> None:
    await _seed_tenant_a(secured, pg_url)

    async def writes_as_tenant_b(store: PostgresStore) -> dict[str, Any]:
        return {
            "deprecate": await store.set_definition_deprecated(
                OTHER_TENANT, "order", "1.0.0", True
            ),
            "release_quarantine": await store.release_quarantine(OTHER_TENANT, "i-a"),
            "claim_instance": await store.claim_instance("node-b", 30.0, OTHER_TENANT, "i-a"),
            "delete_participant": await store.delete_participant(OTHER_TENANT, "shop"),
            "delete_tenant_limits": await store.delete_tenant_limits(OTHER_TENANT),
        }

    walled = await writes_as_tenant_b(secured)
    assert walled == dict.fromkeys(walled, False) | {"claim_instance": None}
    [appended] = await secured.append([append("i-a", 2, [event(3)], tenant=OTHER_TENANT)])
    assert (appended.status, appended.last_seq) == (AppendStatus.CONFLICT, 0)
    # Tenant A's rows are untouched.
    assert len(await secured.load_events(TENANT, "i-a")) == 2
    assert await secured.get_participant(TENANT, "shop") is not None
    assert await secured.get_tenant_limits(TENANT) is not None
    assert [q.instance_id for q in await secured.list_quarantined(TENANT)] == ["i-a"]
    definition = await secured.get_definition(TENANT, "order", "1.0.0")
    assert definition is not None and not definition.deprecated
    # The control: the same calls without the roles reach tenant A's rows.
    leaked = await writes_as_tenant_b(unsecured)
    assert [name for name, value in leaked.items() if not value] == []


async def test_a_create_colliding_with_an_unseen_instance_conflicts(
    secured: PostgresStore,
) -> None:
    await secured.append([create("i-shared")])
    [result] = await secured.append([create("i-shared", tenant=OTHER_TENANT)])
    assert (result.status, result.last_seq) == (AppendStatus.CONFLICT, 0)
    record = await secured.get_instance(TENANT, "i-shared")
    assert record is not None and record.tenant_id == TENANT


async def test_a_pooled_session_forgets_its_tenants_before_anyone_else_uses_it(
    pg_url: str,
) -> None:
    """The tenants are set for each transaction, and the pool does not reset its sessions:
    a setting that outlived its transaction would reach the connection's next user."""
    store = PostgresStore(pg_url, PostgresOptions(min_size=1, max_size=1))
    try:
        for n in range(3):
            [result] = await store.append([create(f"i-{n}")])
            assert result.status is AppendStatus.APPENDED
            # The pool's only connection: the one the append used and gave back.
            pool = await store._get_pool(tenants=True)
            async with pool.acquire() as conn:
                assert not await conn.fetchval("SELECT current_setting('saga.tenants', true)")
                assert await conn.fetchval("SELECT count(*) FROM instances") == 0
        assert len((await store.list_instances(TENANT, InstanceFilter())).items) == 3
    finally:
        await store.close()


@pytest.mark.parametrize("odd", ["o'brien", 'say "hi"', "a,b", "{x}", "back\\slash", "NULL"])
async def test_a_tenant_id_a_literal_would_have_to_quote_keeps_its_rows_and_no_more(
    pg_url: str, odd: str
) -> None:
    """Such an id reaches the server as a parameter, never inside the ``BEGIN``'s literal:
    its rows are written and read back, and a plain tenant's session still sees none."""
    store = PostgresStore(pg_url, PostgresOptions(min_size=1, max_size=1))
    try:
        [created] = await store.append([create("odd-1", tenant=odd)])
        [moved] = await store.append([append("odd-1", 1, [event(1)], tenant=odd)])
        assert (created.status, moved.status) == (AppendStatus.APPENDED, AppendStatus.APPENDED)
        found = await store.get_instance(odd, "odd-1")
        assert found is not None and found.last_seq == 2
        assert [e.seq for e in await store.load_events(odd, "odd-1")] == [1, 2]
        assert await store.get_instance(TENANT, "odd-1") is None
        assert not (await store.list_instances(TENANT, InstanceFilter())).items
    finally:
        await store.close()


async def test_every_tenant_table_is_forced_under_row_level_security(pg_url: str) -> None:
    conn = await asyncpg.connect(pg_url)
    try:
        with_tenant = {
            row[0]
            for row in await conn.fetch(
                "SELECT table_name FROM information_schema.columns"
                " WHERE table_schema = 'public' AND column_name = 'tenant_id'"
            )
        }
        assert with_tenant == set(TENANT_TABLES)  # a new table must be added to the walls
        rows = await conn.fetch(
            "SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class"
            " WHERE relname = ANY($1::text[])",
            list(TENANT_TABLES),
        )
        assert {r[0]: (r[1], r[2]) for r in rows} == dict.fromkeys(TENANT_TABLES, (True, True))
        policies = await conn.fetch(
            "SELECT tablename, roles::text[], qual FROM pg_policies WHERE schemaname = 'public'"
        )
        app_policies = {p[0]: p[2] for p in policies if p[1] == ["saga_app"]}
        assert set(app_policies) == set(TENANT_TABLES)
        assert all("saga_tenants()" in qual for qual in app_policies.values())
        roles = await conn.fetch(
            "SELECT rolname, rolsuper, rolbypassrls, rolcanlogin FROM pg_roles"
            " WHERE rolname IN ('saga_app', 'saga_cluster') ORDER BY rolname"
        )
        assert [tuple(r) for r in roles] == [
            ("saga_app", False, False, False),
            ("saga_cluster", False, False, False),
        ]
    finally:
        await conn.close()


@pytest_asyncio.fixture
async def as_role(pg_url: str) -> AsyncIterator[dict[str, asyncpg.Connection[asyncpg.Record]]]:
    """Raw sessions in each role, as the store opens them."""
    sessions = {
        role: await asyncpg.connect(pg_url, server_settings={"role": role})
        for role in ("saga_app", "saga_cluster")
    }
    try:
        yield sessions
    finally:
        for session in sessions.values():
            await session.close()


async def _tenants(conn: asyncpg.Connection[asyncpg.Record], *tenants: str) -> None:
    await conn.execute("SELECT set_config('saga.tenants', $1::text[]::text, false)", tenants)


async def test_a_session_sees_only_the_tenants_it_names(
    secured: PostgresStore,
    pg_url: str,
    as_role: dict[str, asyncpg.Connection[asyncpg.Record]],
) -> None:
    await _seed_tenant_a(secured, pg_url)
    await secured.append([create("i-b", tenant=OTHER_TENANT)])
    app = as_role["saga_app"]

    async def visible() -> dict[str, set[str]]:
        return {
            table: {row[0] for row in await app.fetch(f"SELECT tenant_id FROM {table}")}
            for table in TENANT_TABLES
        }

    assert await visible() == {table: set() for table in TENANT_TABLES}  # no tenant named: nothing
    await _tenants(app, OTHER_TENANT)
    seen = await visible()
    assert seen["instances"] == {OTHER_TENANT} and seen["events"] == {OTHER_TENANT}
    assert all(tenants <= {OTHER_TENANT} for tenants in seen.values())
    await _tenants(app, TENANT, OTHER_TENANT)
    assert (await visible())["instances"] == {TENANT, OTHER_TENANT}
    # RESET ALL (what the pool runs between uses) forgets the tenants, not the role.
    await app.execute("RESET ALL")
    assert await visible() == {table: set() for table in TENANT_TABLES}
    assert await app.fetchval("SELECT current_user") == "saga_app"
    # The cluster role sees every tenant's rows.
    cluster = as_role["saga_cluster"]
    assert {r[0] for r in await cluster.fetch("SELECT tenant_id FROM instances")} == {
        TENANT,
        OTHER_TENANT,
    }


async def test_the_application_role_cannot_cross_or_rewrite(
    secured: PostgresStore,
    pg_url: str,
    as_role: dict[str, asyncpg.Connection[asyncpg.Record]],
) -> None:
    await _seed_tenant_a(secured, pg_url)
    app = as_role["saga_app"]
    await _tenants(app, OTHER_TENANT)
    # Writing a row for a tenant the session does not name.
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
        await app.execute(
            "INSERT INTO participants (tenant_id, name, config, version, updated_at)"
            " VALUES ($1, 'x', '{}', 1, now())",
            TENANT,
        )
    await _tenants(app, TENANT)
    for statement in (
        "UPDATE instances SET tenant_id = 'tenant-b'",  # moving a row to another tenant
        "UPDATE events SET type = 'Forged'",  # history is append-only
        "DELETE FROM events",
        "UPDATE audit_log SET actor = 'mallory'",  # the audit log takes inserts only
        "DELETE FROM audit_log",
        "UPDATE definitions SET body = 'x'",
        "SELECT * FROM shared_secrets",  # node-wide tables are the cluster role's
        "SELECT * FROM nodes",
        "DELETE FROM instances",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
            await app.execute(statement)
    # The cluster role may move leases and purge, but not rewrite what happened.
    cluster = as_role["saga_cluster"]
    for statement in (
        "UPDATE instances SET status = 'completed'",
        "INSERT INTO events (tenant_id, instance_id, seq, type, data, recorded_at)"
        " VALUES ('tenant-a', 'i-a', 9, 'Forged', '{}', now())",
        "UPDATE audit_log SET actor = 'mallory'",
        "DELETE FROM audit_log",
        "INSERT INTO participants (tenant_id, name, config, version, updated_at)"
        " VALUES ('tenant-a', 'x', '{}', 1, now())",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
            await cluster.execute(statement)
    assert len(await secured.load_events(TENANT, "i-a")) == 2


async def test_a_login_without_the_roles_gets_a_clear_error(pg_url: str) -> None:
    admin = await asyncpg.connect(pg_url)
    try:
        await admin.execute("DROP ROLE IF EXISTS saga_test_stranger")
        await admin.execute("CREATE ROLE saga_test_stranger LOGIN")
        stranger = PostgresStore(pg_url.replace("postgres@", "saga_test_stranger@", 1))
        try:
            with pytest.raises(Exception, match="GRANT saga_app, saga_cluster TO"):
                await stranger.get_instance(TENANT, "i-a")
        finally:
            await stranger.close()
    finally:
        await admin.execute("DROP ROLE IF EXISTS saga_test_stranger")
        await admin.close()
