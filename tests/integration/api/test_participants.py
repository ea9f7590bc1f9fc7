"""The participant registry and the completion callbacks over HTTP."""

from __future__ import annotations

import httpx
import pytest

from saga_orchestrator.core.status import InstanceStatus
from saga_orchestrator.orchestrator import Orchestrator
from tests.support.stub_participant import Canary, Reply, StubParticipant

BASE = "/api/v1/participants"


async def test_register_read_replace_and_delete(client: httpx.AsyncClient) -> None:
    body = {
        "base_url": "https://inventory.example.com/v1",
        "headers": {
            "Authorization": {"secret": {"env": "SAGA_SECRET_INVENTORY"}, "prefix": "Bearer "}
        },
        "timeout": "5s",
    }
    created = await client.put(f"{BASE}/inventory", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["version"] == 1
    assert created.json()["service"]["timeout"] == 5.0
    replaced = await client.put(f"{BASE}/inventory", json={**body, "timeout": 7})
    assert replaced.status_code == 200
    assert replaced.json()["version"] == 2
    read = await client.get(f"{BASE}/inventory")
    assert read.status_code == 200
    header = read.json()["service"]["headers"]["Authorization"]  # a reference, never a value
    assert (header["secret"]["env"], header["prefix"]) == ("SAGA_SECRET_INVENTORY", "Bearer ")
    listed = await client.get(BASE)
    assert [item["name"] for item in listed.json()["items"]] == ["inventory"]
    assert (await client.delete(f"{BASE}/inventory")).status_code == 204
    assert (await client.get(f"{BASE}/inventory")).status_code == 404
    assert (await client.delete(f"{BASE}/inventory")).status_code == 404


@pytest.mark.parametrize(
    "base_url",
    [
        "http://127.0.0.1:8080",
        "http://localhost",
        "http://2130706433",
        "http://0x7f000001",
        "http://127.1",
        "http://[::1]",
        "http://[::ffff:127.0.0.1]",
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.8",
        "http://172.16.3.4",
        "http://192.168.1.1",
        "http://100.64.0.1",
        "http://0.0.0.0",
        "http://internal.localhost",
        "file:///etc/passwd",
        "ftp://example.com",
        "http://user:pw@example.com",
    ],
)
async def test_the_registry_refuses_private_and_odd_destinations(
    client: httpx.AsyncClient, base_url: str
) -> None:
    response = await client.put(f"{BASE}/evil", json={"base_url": base_url})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert (await client.get(f"{BASE}/evil")).status_code == 404


async def test_private_destinations_need_an_explicit_opt_in(client: httpx.AsyncClient) -> None:
    body = {"base_url": "http://127.0.0.1:9000", "allow_private_network": True}
    assert (await client.put(f"{BASE}/local", json=body)).status_code == 201


async def test_orchestrator_headers_cannot_be_configured(client: httpx.AsyncClient) -> None:
    body = {"base_url": "https://a.example.com", "headers": {"Idempotency-Key": "fixed"}}
    assert (await client.put(f"{BASE}/a", json=body)).status_code == 422


async def test_a_definition_naming_an_unknown_service_is_refused(
    client: httpx.AsyncClient,
) -> None:
    definition = {
        "name": "remote",
        "version": "1.0.0",
        "steps": [{"name": "a", "action": {"http": {"service": "ghost", "path": "/a"}}}],
    }
    refused = await client.post("/api/v1/sagas/definitions", json=definition)
    assert refused.status_code == 422
    assert [v["rule"] for v in refused.json()["violations"]] == ["known-service"]
    await client.put(f"{BASE}/ghost", json={"base_url": "https://ghost.example.com"})
    accepted = await client.post("/api/v1/sagas/definitions", json=definition)
    assert accepted.status_code == 201


async def test_callbacks_complete_accepted_attempts_and_refuse_bad_tokens(
    client: httpx.AsyncClient, node: Orchestrator
) -> None:
    async with StubParticipant() as stub, Canary() as canary:
        stub.script("/ship", Reply(status=202))
        await client.put(
            f"{BASE}/carrier", json={"base_url": stub.base_url, "allow_private_network": True}
        )
        definition = {
            "name": "shipping",
            "version": "1.0.0",
            "steps": [
                {
                    "name": "ship",
                    "timeout": 30,
                    "action": {"http": {"service": "carrier", "path": "/ship"}},
                }
            ],
        }
        assert (await client.post("/api/v1/sagas/definitions", json=definition)).status_code == 201
        started = await client.post(
            "/api/v1/sagas/instances", json={"saga_name": "shipping", "context": {}}
        )
        instance_id = started.json()["id"]
        await stub.wait_for_calls(1)
        token = stub.calls[0].headers["saga-completion-token"]
        url = f"/api/v1/sagas/instances/{instance_id}/steps/ship"

        missing = await client.post(f"{url}/complete", json={"output": 1})
        assert missing.status_code == 403, missing.text
        forged = await client.post(
            f"{url}/complete", json={"output": 1}, headers={"Saga-Completion-Token": token + "x"}
        )
        assert forged.status_code == 403
        beat = await client.post(f"{url}/heartbeat", headers={"Saga-Completion-Token": token})
        assert beat.status_code == 200, beat.text
        assert beat.json()["deadline"] is not None
        done = await client.post(
            f"{url}/complete",
            json={"output": {"tracking": "T-1"}},
            headers={"Saga-Completion-Token": token},
        )
        assert done.status_code == 200, done.text
        view = await node.wait(instance_id, timeout=10)
        assert view.status is InstanceStatus.COMPLETED
        assert view.steps["ship"].output == {"tracking": "T-1"}
        again = await client.post(
            f"{url}/complete", json={"output": 2}, headers={"Saga-Completion-Token": token}
        )
        assert again.status_code == 410
        assert again.json()["type"].endswith("/attempt-over")
        assert canary.connections == 0


async def test_an_open_breaker_shows_in_the_registry_and_in_metrics(
    client: httpx.AsyncClient, node: Orchestrator
) -> None:
    async with StubParticipant(Reply(status=500)) as stub:
        breaker = {"minimum_calls": 2, "failure_rate": 0.5, "open_for": 60}
        service = {"base_url": stub.base_url, "allow_private_network": True}
        await client.put(f"{BASE}/flaky", json={**service, "circuit_breaker": breaker})
        definition = {
            "name": "flaky",
            "version": "1.0.0",
            "steps": [
                {
                    "name": "poke",
                    "retry": {"max_attempts": 2, "initial_interval": 0.01},
                    "action": {"http": {"service": "flaky", "path": "/poke"}},
                }
            ],
        }
        await client.post("/api/v1/sagas/definitions", json=definition)
        started = await client.post(
            "/api/v1/sagas/instances", json={"saga_name": "flaky", "context": {}}
        )
        view = await node.wait(started.json()["id"], timeout=10)
        assert view.status is InstanceStatus.COMPENSATED
        assert len(stub.calls) == 2
        shown = (await client.get(f"{BASE}/flaky")).json()["circuit_breaker"]
        assert shown["state"] == "open"
        assert shown["failure_rate"] == 1.0
        assert shown["retry_after"] > 0
        metrics = (await client.get("/metrics")).text
        assert (
            'saga_participant_circuit_state{service="flaky",state="open",tenant="default"} 1.0'
            in metrics
        )
        assert 'saga_participant_failure_rate{service="flaky",tenant="default"} 1.0' in metrics
