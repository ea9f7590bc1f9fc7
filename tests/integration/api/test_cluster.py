"""The cluster registry through the API: every open node is listed with its heartbeat; one of
them leads the chores; a node that closes leaves and hands the lease over at once."""

from __future__ import annotations

import asyncpg
import httpx
import pytest

from saga_orchestrator.api import create_app
from saga_orchestrator.orchestrator import Orchestrator
from tests.integration.api.support import FAST_OPTIONS, assert_problem, register, saga, start


async def test_nodes_and_the_leader(client: httpx.AsyncClient, node: Orchestrator) -> None:
    listed = (await client.get("/api/v1/cluster/nodes")).json()
    [me] = listed["items"]
    assert me["id"] == node.member.node_id
    assert me["leader"] is True
    assert me["this_node"] is True
    assert listed["leader_epoch"] >= 1


async def test_a_second_node_follows_and_takes_over_when_the_first_leaves(
    store_url: str,
) -> None:
    first = Orchestrator(store_url, node_id="node-1")
    second = Orchestrator(store_url, node_id="node-2")
    await first.open()
    try:
        await second.open()
        try:
            app = create_app(second, FAST_OPTIONS)
            transport = httpx.ASGITransport(app)
            async with httpx.AsyncClient(transport=transport, base_url="http://b") as client:
                listed = (await client.get("/api/v1/cluster/nodes")).json()
                leaders = {n["id"]: n["leader"] for n in listed["items"]}
                assert leaders == {"node-1": True, "node-2": False}
                assert first.member.is_leader and not second.member.is_leader
                epoch = listed["leader_epoch"]
                await first.close()
                await second.member.beat()  # its next round, without waiting for it
                listed = (await client.get("/api/v1/cluster/nodes")).json()
                assert [(n["id"], n["leader"]) for n in listed["items"]] == [("node-2", True)]
                assert listed["leader_epoch"] == epoch + 1
                assert second.member.is_leader
        finally:
            await second.close()
    finally:
        await first.close()


@pytest.mark.postgres
async def test_a_quarantined_instance_is_listed_and_released_for_claims(pg_url: str) -> None:
    async with Orchestrator(pg_url, node_id="node-1", require_known_handlers=False) as node:
        app = create_app(node, FAST_OPTIONS)
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://a") as client:
            await register(client, saga("quiet", [{"name": "wait", "action": "never"}]))
            instance_id = await start(client, "quiet")
            conn = await asyncpg.connect(pg_url)
            try:  # as a claim does once an instance crashed its owners too often
                await conn.execute(
                    "UPDATE instances SET quarantined_at = now(), takeovers = 4 "
                    "WHERE instance_id = $1",
                    instance_id,
                )
                listed = (await client.get("/api/v1/cluster/quarantine")).json()
                assert [(i["instance_id"], i["takeovers"]) for i in listed["items"]] == [
                    (instance_id, 4)
                ]

                release = f"/api/v1/cluster/quarantine/{instance_id}/release"
                assert (await client.post(release)).status_code == 204
                row = await conn.fetchrow(
                    "SELECT quarantined_at, takeovers FROM instances WHERE instance_id = $1",
                    instance_id,
                )
                assert row is not None and tuple(row) == (None, 0)
                assert (await client.get("/api/v1/cluster/quarantine")).json()["items"] == []
                assert_problem(await client.post(release), 404)
            finally:
                await conn.close()
            audit = (await client.get("/api/v1/audit")).json()["items"]
            released = [a for a in audit if a["action"] == "instance.release_quarantine"]
            assert [(a["target_id"], a["outcome"]) for a in released] == [
                (instance_id, "succeeded"),
                (instance_id, "failed"),
            ]
