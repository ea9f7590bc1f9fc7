"""The audit log through the API and the CLI: every mutating call recorded with its actor,
outcome and request id; ``GET /api/v1/audit`` for admins; ``saga audit verify`` finds the
first tampered record."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import httpx

from saga_orchestrator.orchestrator import Orchestrator
from tests.integration.store.support import RawDatabase

ORDER = {"name": "order", "version": "1.0.0", "steps": [{"name": "a", "action": "reserve"}]}
SAGA = [sys.executable, "-m", "saga_orchestrator.cli"]


def verify(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SAGA, "audit", "verify"], capture_output=True, text=True, env=env, check=False
    )


async def test_mutating_calls_are_recorded_with_their_outcome(
    client: httpx.AsyncClient, node: Orchestrator
) -> None:
    assert (await client.post("/api/v1/sagas/definitions", json=ORDER)).status_code == 201
    started = await client.post(
        "/api/v1/sagas/instances",
        json={"saga_name": "order", "context": {}},
        headers={"X-Request-Id": "req-start-1"},
    )
    instance = started.json()["id"]
    await node.wait(instance, timeout=10)
    refused = await client.post(
        f"/api/v1/sagas/instances/{instance}/cancel", json={"reason": "too late"}
    )
    assert refused.status_code == 409
    await client.put("/api/v1/participants/shop", json={"base_url": "https://shop.example.com"})
    await client.delete("/api/v1/participants/shop")
    page = (await client.get("/api/v1/audit")).json()
    rows = [
        (r["seq"], r["action"], r["outcome"], r["target_id"], r["actor"]) for r in page["items"]
    ]
    assert rows == [
        (1, "definition.register", "succeeded", "order@1.0.0", "api"),
        (2, "instance.start", "succeeded", instance, "api"),
        (3, "instance.cancel", "refused", instance, "api"),
        (4, "participant.put", "succeeded", "shop", "api"),
        (5, "participant.delete", "succeeded", "shop", "api"),
    ]
    assert page["items"][1]["request_id"] == "req-start-1"
    assert page["items"][1]["prev_hash"] == page["items"][0]["hash"]
    first = (await client.get("/api/v1/audit", params={"limit": 2})).json()
    assert [r["seq"] for r in first["items"]] == [1, 2]
    rest = await client.get("/api/v1/audit", params={"cursor": first["next_cursor"]})
    assert [r["seq"] for r in rest.json()["items"]] == [3, 4, 5]
    cancels = await client.get("/api/v1/audit", params={"action": "instance.cancel"})
    assert [r["seq"] for r in cancels.json()["items"]] == [3]


async def test_saga_audit_verify_reports_the_first_broken_link(
    client: httpx.AsyncClient, store_url: str
) -> None:
    for n in range(4):
        await client.put(f"/api/v1/participants/p{n}", json={"base_url": "https://a.example.com"})
    env = {"DATABASE_URL": store_url, "PATH": "/usr/bin:/bin"}
    intact = await asyncio.to_thread(verify, env)
    assert intact.returncode == 0, intact.stderr
    assert "default: 4 records, chain intact" in intact.stdout
    async with RawDatabase(store_url) as db:
        await db.without_audit_triggers(["UPDATE audit_log SET actor = 'mallory' WHERE seq = 3"])
    broken = await asyncio.to_thread(verify, env)
    assert broken.returncode == 1
    assert "tenant 'default', record 3: its content was altered" in broken.stderr
