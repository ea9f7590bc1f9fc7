"""The two pools on logins of their own (``DATABASE_APP_URL``, ``DATABASE_CLUSTER_URL``).

Row-level security binds a session's current role, and a session may change it to any role its
login is a member of (``SET ROLE``), or back to the login (``SET ROLE NONE``). On one URL the
login is a member of both roles, so SQL on a tenants' session can reach every tenant; on logins
whose only power is their role it cannot. These tests make such logins the way docs/security.md
tells an operator to (``CREATE ROLE ... LOGIN IN ROLE saga_app``), run the store on them, try
the escapes on a raw session (with the one-URL login as the control that does escape), and
check that the store refuses a login of its own that could leave its role. Roles belong to the
whole server: each test makes logins of unique names and drops them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import NamedTuple

import asyncpg
import pytest
import pytest_asyncio

from saga_orchestrator.errors import ConfigurationError
from saga_orchestrator.orchestrator import Orchestrator
from saga_orchestrator.store import AuditFilter, DueTimer, InstanceFilter, NodeRecord
from saga_orchestrator.store.postgres import PostgresOptions, PostgresStore
from tests.integration.store.support import (
    OTHER_TENANT,
    TENANT,
    append,
    at,
    audit_entry,
    create,
    event,
    message,
    update,
)
from tests.support.pg_logins import MakeLogin, as_admin, login_of, make_login, own_logins

pytestmark = pytest.mark.postgres
__all__ = ["make_login", "own_logins"]  # fixtures, used by name


@pytest_asyncio.fixture
async def on_own_logins(pg_url: str, own_logins: tuple[str, str]) -> AsyncIterator[PostgresStore]:
    app_url, cluster_url = own_logins
    store = PostgresStore(pg_url, PostgresOptions(app_url=app_url, cluster_url=cluster_url))
    try:
        yield store
    finally:
        await store.close()


async def _logins_connected(pg_url: str) -> set[str]:
    conn = await asyncpg.connect(pg_url)
    try:
        rows = await conn.fetch(
            "SELECT DISTINCT usename FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()
    return {row[0] for row in rows}


async def test_a_store_on_logins_of_their_own_does_its_work_and_warns_of_nothing(
    pg_url: str,
    own_logins: tuple[str, str],
    on_own_logins: PostgresStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = on_own_logins
    with caplog.at_level(logging.WARNING, logger="saga_orchestrator.store"):
        await store.check_logins()
        # Tenants' work: definitions, starts, appends, reads, participants, the audit log.
        await store.put_definition(
            tenant_id=TENANT, name="order", version="1.0.0", body=b"{}", digest="d"
        )
        await store.append(
            [
                create(
                    "i-a", key="k-a", state=update(wake_at=at(10)), outbox=[message("i-a", "m")]
                ),
                create("i-b", tenant=OTHER_TENANT),
            ]
        )
        await store.append([append("i-a", 1, [event(2)], state=update(wake_at=at(10)))])
        assert [e.seq for e in await store.load_events(TENANT, "i-a")] == [1, 2]
        page = await store.list_instances(TENANT, InstanceFilter())
        assert [i.instance_id for i in page.items] == ["i-a"]
        assert await store.find_start(TENANT, "k-a") is not None
        await store.put_participant(TENANT, "shop", {"base_url": "https://shop.example"})
        await store.append_audit([audit_entry("i-a")])
        assert len(await store.list_audit(TENANT, AuditFilter())) == 1
        # The chores that span tenants: timers, claims, the outbox relay, the node registry.
        assert await store.due_timers(at(20), 10) == [
            DueTimer(tenant_id=TENANT, instance_id="i-a", fire_at=at(10))
        ]
        claims = await store.claim_instances("node-a", 30.0, 10, 3)
        assert {c.instance_id for c in claims.claimed} == {"i-a", "i-b"}
        held = [(c.instance_id, c.epoch) for c in claims.claimed]
        assert set(await store.renew_leases("node-a", 30.0, held)) == {"i-a", "i-b"}
        [row] = await store.claim_outbox(10, 30.0)
        await store.mark_outbox_published([row.id])
        assert await store.outbox_backlog() == 0
        now = datetime.now(UTC)
        node = NodeRecord(node_id="n", address="a", version="v", started_at=now, heartbeat_at=now)
        await store.heartbeat_node(node)
        assert [n.node_id for n in await store.list_nodes()] == ["n"]
        assert await store.shared_secret("callbacks", b"x" * 32) == b"x" * 32
        assert await store.schema_version() > 0
        # Other nodes' notifications are heard on the chores' login.
        seen: list[tuple[str, int]] = []
        watcher = store.watch(seen.extend)
        watcher.start()
        try:
            await asyncio.wait_for(watcher.connected.wait(), timeout=10)
            await store.append([append("i-b", 1, [event(2)], tenant=OTHER_TENANT)])
            for _ in range(100):
                if ("i-b", 2) in seen:
                    break
                await asyncio.sleep(0.05)
            assert ("i-b", 2) in seen
            # Every session of the store is one of the two logins: none is the owner's.
            assert await _logins_connected(pg_url) == {login_of(url) for url in own_logins}
        finally:
            await watcher.close()
    assert [r.getMessage() for r in caplog.records] == []


async def _visible(conn: asyncpg.Connection[asyncpg.Record]) -> set[str]:
    return {row[0] for row in await conn.fetch("SELECT tenant_id FROM instances")}


async def test_a_tenants_login_of_its_own_cannot_leave_its_tenants(
    pg_url: str, own_logins: tuple[str, str], on_own_logins: PostgresStore
) -> None:
    await on_own_logins.append([create("i-a"), create("i-b", tenant=OTHER_TENANT)])
    app_url, _ = own_logins

    async def escapes(url: str) -> dict[str, object]:
        """What a tenants' session, opened as the store opens it and working for TENANT,
        sees after each way out of its role (a set of tenants, or the refusal)."""
        conn = await asyncpg.connect(url, server_settings={"role": "saga_app"})
        try:
            await conn.execute("SELECT set_config('saga.tenants', $1, false)", f"{{{TENANT}}}")
            seen: dict[str, object] = {"as opened": await _visible(conn)}
            for way in ("RESET ROLE", "SET ROLE NONE", "SET ROLE saga_cluster"):
                try:
                    await conn.execute(way)
                    seen[way] = await _visible(conn)
                except asyncpg.InsufficientPrivilegeError as refused:
                    seen[way] = type(refused).__name__
                await conn.execute("SET ROLE saga_app")
            try:
                await conn.execute("ALTER TABLE instances NO FORCE ROW LEVEL SECURITY")
                await conn.execute("SET ROLE NONE")
                seen["lift the policies"] = await _visible(conn)
            except asyncpg.InsufficientPrivilegeError as refused:
                seen["lift the policies"] = type(refused).__name__
            return seen
        finally:
            await conn.close()

    mine = {TENANT}
    assert await escapes(app_url) == {
        "as opened": mine,
        "RESET ROLE": mine,  # back to the startup parameter's role
        "SET ROLE NONE": mine,  # the login itself holds saga_app's policies
        "SET ROLE saga_cluster": "InsufficientPrivilegeError",
        "lift the policies": "InsufficientPrivilegeError",  # not the owner
    }
    # The control: the one-URL login (the owner here, a superuser) leaves by either door.
    every = {TENANT, OTHER_TENANT}
    control = await escapes(pg_url)
    assert (control["SET ROLE NONE"], control["SET ROLE saga_cluster"]) == (every, every)


async def test_a_chores_login_of_its_own_cannot_write_tenants_history(
    own_logins: tuple[str, str], on_own_logins: PostgresStore
) -> None:
    await on_own_logins.append([create("i-a")])
    _, cluster_url = own_logins
    conn = await asyncpg.connect(cluster_url, server_settings={"role": "saga_cluster"})
    try:
        await conn.execute("SET ROLE NONE")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("SET ROLE saga_app")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
            await conn.execute(
                "INSERT INTO events (tenant_id, instance_id, seq, type, data, recorded_at)"
                " VALUES ($1, 'i-a', 9, 'Forged', '{}', now())",
                TENANT,
            )
    finally:
        await conn.close()


class Refusal(NamedTuple):
    setting: str
    """The pool whose login is given the ``options``: its setting."""
    options: str
    how: str
    """The way out the error names."""


@pytest.mark.parametrize(
    "case",
    [
        Refusal("DATABASE_APP_URL", "SUPERUSER", "is a superuser"),
        Refusal("DATABASE_APP_URL", "BYPASSRLS IN ROLE saga_app", "has BYPASSRLS"),
        Refusal("DATABASE_APP_URL", "IN ROLE saga_app, saga_cluster", "can SET ROLE saga_cluster"),
        Refusal("DATABASE_APP_URL", "IN ROLE saga_app", "owns the tables"),  # given one below
        Refusal("DATABASE_CLUSTER_URL", "IN ROLE saga_cluster, saga_app", "can SET ROLE saga_app"),
    ],
    ids=lambda case: f"{case.setting}-{case.how}",
)
async def test_a_login_of_its_own_that_could_leave_its_role_is_refused(
    pg_url: str, make_login: MakeLogin, own_logins: tuple[str, str], case: Refusal
) -> None:
    bad = await make_login(case.options)
    if case.how == "owns the tables":
        await as_admin(pg_url, f'ALTER TABLE timers OWNER TO "{login_of(bad)}"')
    app_url, cluster_url = own_logins
    for_tenants = case.setting == "DATABASE_APP_URL"
    store = PostgresStore(
        pg_url,
        PostgresOptions(
            app_url=bad if for_tenants else app_url,
            cluster_url=cluster_url if for_tenants else bad,
        ),
    )
    try:
        with pytest.raises(ConfigurationError, match=f"^{case.setting}: .*{case.how}") as refused:
            await store.check_logins()
        assert login_of(bad) in str(refused.value)
        # Every later use is refused too: no pool was kept, and a refused chores' login is
        # not answered for by the owner instead.
        later = store.get_instance(TENANT, "i-a") if for_tenants else store.schema_version()
        with pytest.raises(ConfigurationError, match=case.setting):
            await later
    finally:
        await store.close()


async def test_a_node_whose_tenants_login_could_leave_does_not_start(
    pg_url: str, make_login: MakeLogin
) -> None:
    superuser = await make_login("SUPERUSER")
    node = Orchestrator(pg_url, database_app_url=superuser, node_id="refused")
    try:
        with pytest.raises(ConfigurationError, match=r"DATABASE_APP_URL: .*is a superuser"):
            await node.open()
    finally:
        await node.store.close()


async def test_one_url_works_as_before_and_warns_once_that_its_login_can_leave(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = PostgresStore(pg_url)
    try:
        with caplog.at_level(logging.WARNING, logger="saga_orchestrator.store"):
            await store.check_logins()
            await store.append([create("i-a")])
            assert await store.get_instance(TENANT, "i-a") is not None
            assert await store.due_timers(at(0), 10) == []
    finally:
        await store.close()
    [warning] = [r.getMessage() for r in caplog.records]
    assert "'postgres' can leave the role" in warning
    assert "is a superuser" in warning and "DATABASE_APP_URL" in warning
