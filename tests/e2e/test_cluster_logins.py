"""A node on logins of its own (``DATABASE_APP_URL``, ``DATABASE_CLUSTER_URL``), as
docs/security.md recommends for production: ``saga serve`` migrates as ``DATABASE_URL``'s
login, then does all its work (tenants' requests and appends on one login; lease claims and
renewals, timers and notifications on the other) without a session as the owner, and says
nothing about logins that can leave their role. A node whose tenants' login could leave its
role does not start."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.e2e.cluster_app import CALLS_APPLICATION
from tests.e2e.cluster_support import (
    NODE_APPLICATION,
    TEST_APPLICATION,
    Load,
    Node,
    NodeSettings,
    api,
    check_histories,
    connect,
    histories,
    instance_rows,
    running_cluster,
    saga_context,
    wait_settled,
)
from tests.support.pg_logins import MakeLogin, login_of, make_login, own_logins

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(180)]
__all__ = ["make_login", "own_logins"]  # fixtures, used by name

SAGAS = 40


async def test_a_node_on_logins_of_its_own_serves_without_an_owners_session(
    pg_url: str, tmp_path: Path, own_logins: tuple[str, str]
) -> None:
    app_url, cluster_url = own_logins
    env = {"DATABASE_APP_URL": app_url, "DATABASE_CLUSTER_URL": cluster_url}
    settings = NodeSettings(lease_ttl=5.0, poll=0.5, env=env)
    conn = await connect(pg_url)
    try:
        async with running_cluster(pg_url, tmp_path, ("n1",), settings, haproxy=False) as cluster:
            async with api(cluster.url) as client:
                load = Load(client, run=uuid.uuid4().hex, context=saga_context)
                await load.start_all(SAGAS, concurrency=10)
            ids = list(load.acknowledged.values())
            await wait_settled(conn, ids, bound=90)
            sessions = await conn.fetch(
                "SELECT usename, application_name FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND usename = ANY($1::text[])",
                [login_of(app_url), login_of(cluster_url), login_of(pg_url)],
            )
            rows = await instance_rows(conn)
            events = await histories(conn)
            log = cluster["n1"].output(tail=None)
    finally:
        await conn.close()
    check_histories(events, rows, ids, load.failing)
    # The node's pools and its listener (no application name) are the two logins; the
    # owner's only sessions are this test's and its handlers' (the node migrated as the owner
    # and let go).
    node_sessions = {(r[0], r[1]) for r in sessions if r[0] != login_of(pg_url)}
    assert node_sessions == {
        (login_of(app_url), NODE_APPLICATION),
        (login_of(cluster_url), NODE_APPLICATION),
        (login_of(cluster_url), ""),
    }
    owner_sessions = {r[1] for r in sessions if r[0] == login_of(pg_url)}
    assert owner_sessions <= {TEST_APPLICATION, CALLS_APPLICATION}
    assert "can leave the role" not in log


async def test_a_node_whose_tenants_login_could_leave_its_role_does_not_start(
    pg_url: str, tmp_path: Path, make_login: MakeLogin, own_logins: tuple[str, str]
) -> None:
    both = await make_login("IN ROLE saga_app, saga_cluster")
    env = {"DATABASE_APP_URL": both, "DATABASE_CLUSTER_URL": own_logins[1]}
    node = Node("refused", pg_url, pg_url, tmp_path, NodeSettings(env=env))
    node.start()
    try:
        assert await node.exited(60) == 2
    finally:
        await node.close()
    output = node.output()
    assert "configuration error: DATABASE_APP_URL:" in output
    assert "can SET ROLE saga_cluster" in output
    assert "Traceback" not in output
