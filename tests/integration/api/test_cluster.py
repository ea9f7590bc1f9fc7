"""The cluster registry through the API: every open node is listed with its heartbeat; one of
them leads the chores; a node that closes leaves and hands the lease over at once."""

from __future__ import annotations

import httpx

from saga_orchestrator.api import create_app
from saga_orchestrator.orchestrator import Orchestrator
from tests.integration.api.support import FAST_OPTIONS


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
