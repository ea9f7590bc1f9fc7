"""Instances over HTTP: starting (durable, idempotent), listing with filters and cursors,
reading an instance and its history."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from saga_orchestrator.definition.loader import parse_definition
from saga_orchestrator.orchestrator import Orchestrator
from tests.integration.api.support import (
    INSTANCES,
    assert_problem,
    history,
    register,
    saga,
    start,
    steps,
    wait_status,
)
from tests.integration.engine.support import Participants

ORDER = saga("order", steps("reserve", "charge"))


async def test_a_start_is_201_with_the_instance(
    client: httpx.AsyncClient, node: Orchestrator
) -> None:
    await register(client, ORDER)
    response = await client.post(INSTANCES, json={"saga_name": "order", "context": {"sku": "A"}})
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {"id", "saga_name", "version", "status"}
    assert (body["saga_name"], body["version"]) == ("order", "1.0.0")
    assert body["status"] in ("running", "completed")
    assert response.headers["location"] == f"{INSTANCES}/{body['id']}"
    # durable before the answer: the store already holds it
    assert await node.store.get_instance("default", body["id"]) is not None


async def test_an_unknown_saga_is_404(client: httpx.AsyncClient) -> None:
    response = await client.post(INSTANCES, json={"saga_name": "nope", "context": {}})
    assert_problem(response, 404, "not-found")


async def test_a_context_failing_the_input_schema_is_422(client: httpx.AsyncClient) -> None:
    schema = {"type": "object", "required": ["sku"], "properties": {"sku": {"type": "string"}}}
    await register(client, saga("order", steps("reserve"), input_schema=schema))
    problem = assert_problem(
        await client.post(INSTANCES, json={"saga_name": "order", "context": {"sku": 7}}),
        422,
        "invalid-input",
    )
    assert "sku" in problem["detail"]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"saga_name": 7},
        {"saga_name": "order", "unknown": 1},
        {"saga_name": "bad name"},
        {"saga_name": "order", "version": "1 || 2"},
        {"saga_name": "order", "context": {"text": "nul\u0000here"}},
    ],
)
async def test_invalid_start_requests_are_422(
    client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    await register(client, ORDER)
    assert_problem(await client.post(INSTANCES, json=body), 422)


async def test_same_key_and_body_return_the_same_instance(client: httpx.AsyncClient) -> None:
    await register(client, ORDER)
    body = {"saga_name": "order", "context": {"n": 1}}
    first = await client.post(INSTANCES, json=body, headers={"Idempotency-Key": "order-1"})
    again = await client.post(INSTANCES, json=body, headers={"Idempotency-Key": "order-1"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]


async def test_same_key_with_another_body_is_422(client: httpx.AsyncClient) -> None:
    await register(client, ORDER)
    key = {"Idempotency-Key": "order-1"}
    await client.post(INSTANCES, json={"saga_name": "order", "context": {"n": 1}}, headers=key)
    other = await client.post(
        INSTANCES, json={"saga_name": "order", "context": {"n": 2}}, headers=key
    )
    assert_problem(other, 422, "invalid-input")


async def test_a_start_still_in_flight_with_the_same_key_is_409(
    client: httpx.AsyncClient, node: Orchestrator, monkeypatch: pytest.MonkeyPatch
) -> None:
    await register(client, ORDER)
    release = asyncio.Event()
    entered = asyncio.Event()
    real_start = node.engine.start_saga

    async def slow_start(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        await release.wait()
        return await real_start(*args, **kwargs)

    monkeypatch.setattr(node.engine, "start_saga", slow_start)
    key = {"Idempotency-Key": "slow"}
    body = {"saga_name": "order", "context": {}}
    first = asyncio.create_task(client.post(INSTANCES, json=body, headers=key))
    await asyncio.wait_for(entered.wait(), 10)
    assert_problem(await client.post(INSTANCES, json=body, headers=key), 409, "start-in-progress")
    other = await client.post(INSTANCES, json={**body, "context": {"x": 1}}, headers=key)
    assert_problem(other, 422, "invalid-input")
    release.set()
    assert (await first).status_code == 201


async def test_fifty_parallel_starts_with_one_key_create_one_instance(
    client: httpx.AsyncClient, node: Orchestrator
) -> None:
    await register(client, ORDER)
    body = {"saga_name": "order", "context": {"n": 1}}
    responses = await asyncio.gather(
        *(client.post(INSTANCES, json=body, headers={"Idempotency-Key": "one"}) for _ in range(50))
    )
    statuses = [r.status_code for r in responses]
    assert statuses.count(201) == 1, statuses
    assert set(statuses) <= {200, 201, 409}
    ids = {r.json()["id"] for r in responses if r.status_code in (200, 201)}
    assert len(ids) == 1
    listed = await client.get(INSTANCES)
    assert [item["id"] for item in listed.json()["items"]] == list(ids)
    # once the first start is durable, every repeat answers 200 with the same instance
    again = await client.post(INSTANCES, json=body, headers={"Idempotency-Key": "one"})
    assert again.status_code == 200
    assert again.json()["id"] in ids


async def test_an_instance_shows_steps_attempts_timings_and_outputs(
    client: httpx.AsyncClient,
) -> None:
    await register(client, ORDER)
    instance_id = await start(client, "order", {"sku": "A"})
    detail = await wait_status(client, instance_id)
    assert detail["status"] == "completed"
    assert detail["input"] == {"sku": "A"}
    assert [s["name"] for s in detail["steps"]] == ["reserve", "charge"]
    for step in detail["steps"]:
        assert step["status"] == "succeeded"
        assert step["attempts"] == 1
        assert step["output"]["by"] == step["name"]
        assert step["started_at"] <= step["finished_at"]
    assert detail["compensation"] == {"compensating": 0, "compensated": 0, "failed": 0}
    assert detail["events"] == len(await history(client, instance_id))


async def test_a_failed_step_shows_its_error_and_the_compensation(
    client: httpx.AsyncClient, participants: Participants
) -> None:
    participants.script["charge"] = ["reject"]
    await register(client, ORDER)
    instance_id = await start(client, "order", {})
    detail = await wait_status(client, instance_id)
    assert detail["status"] == "compensated"
    assert detail["cause"] == "step_failed"
    by_name = {s["name"]: s for s in detail["steps"]}
    assert by_name["charge"]["status"] == "failed"
    assert by_name["charge"]["error"]["type"] == "Rejected"
    assert by_name["reserve"]["status"] == "compensated"
    assert detail["compensation"]["compensated"] == 1


async def test_unknown_and_malformed_instance_ids(client: httpx.AsyncClient) -> None:
    missing = f"{INSTANCES}/{uuid.uuid4()}"
    assert_problem(await client.get(missing), 404, "not-found")
    assert_problem(await client.get(f"{missing}/events"), 404, "not-found")
    assert_problem(await client.get(f"{INSTANCES}/not-a-uuid"), 422, "invalid-request")
    assert_problem(await client.get(f"{INSTANCES}/not-a-uuid/events"), 422, "invalid-request")


async def test_the_history_is_paged_without_gaps(client: httpx.AsyncClient) -> None:
    await register(client, ORDER)
    instance_id = await start(client, "order", {})
    await wait_status(client, instance_id)
    whole = await history(client, instance_id)
    assert [e["seq"] for e in whole] == list(range(1, len(whole) + 1))
    assert whole[0]["type"] == "SagaStarted"
    assert whole[-1]["type"] == "SagaCompleted"
    paged: list[dict[str, Any]] = []
    after: int | None = 0
    while after is not None:
        response = await client.get(
            f"{INSTANCES}/{instance_id}/events", params={"after": after, "limit": 3}
        )
        page = response.json()
        assert len(page["items"]) <= 3
        paged += page["items"]
        after = page["next_after"]
    assert paged == whole
    for event in whole:
        assert set(event) == {"seq", "type", "recorded_at", "data"}


@pytest.mark.parametrize(
    "params",
    [{"after": -1}, {"limit": 0}, {"limit": 1001}, {"after": "x"}, {"after": 2**63}],
)
async def test_bad_history_parameters_are_422(
    client: httpx.AsyncClient, params: dict[str, Any]
) -> None:
    await register(client, ORDER)
    instance_id = await start(client, "order", {})
    response = await client.get(f"{INSTANCES}/{instance_id}/events", params=params)
    assert_problem(response, 422, "invalid-request")


# --- listing ----------------------------------------------------------------------------------


async def _start_many(client: httpx.AsyncClient, count: int, saga_name: str = "order") -> list[str]:
    return [await start(client, saga_name, {"n": n}) for n in range(count)]


async def test_pages_cover_every_instance_once_in_a_stable_order(
    client: httpx.AsyncClient,
) -> None:
    await register(client, ORDER)
    started = await _start_many(client, 11)
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor is not None:
            params["cursor"] = cursor
        page = (await client.get(INSTANCES, params=params)).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(started)
    assert len(seen) == len(set(seen))
    whole = (await client.get(INSTANCES, params={"limit": 500})).json()["items"]
    assert [item["id"] for item in whole] == seen
    keys = [(item["created_at"], item["id"]) for item in whole]
    assert keys == sorted(keys, reverse=True)


async def test_filters_by_saga_version_and_status(
    client: httpx.AsyncClient, participants: Participants
) -> None:
    participants.script["charge"] = ["reject"]
    await register(client, ORDER)
    await register(client, saga("order", steps("reserve"), version="2.0.0"))
    await register(client, saga("refund", steps("ship")))
    failing = await start(client, "order", {}, version="1.0.0")
    newer = await start(client, "order", {})
    refund = await start(client, "refund", {})
    for instance_id in (failing, newer, refund):
        await wait_status(client, instance_id)

    async def ids(**params: Any) -> set[str]:
        response = await client.get(INSTANCES, params=params)
        assert response.status_code == 200, response.text
        return {item["id"] for item in response.json()["items"]}

    assert await ids(saga_name="order") == {failing, newer}
    assert await ids(saga_name="order", version="2.0.0") == {newer}
    assert await ids(status="compensated") == {failing}
    assert await ids(status="completed") == {newer, refund}
    assert await ids(status="running") == set()


async def test_filters_by_time_windows(client: httpx.AsyncClient) -> None:
    await register(client, ORDER)
    started = await _start_many(client, 3)
    for instance_id in started:
        await wait_status(client, instance_id)
    items = (await client.get(INSTANCES)).json()["items"]
    middle = next(item for item in items if item["id"] == started[1])
    created = middle["created_at"]

    async def ids(**params: Any) -> set[str]:
        response = await client.get(INSTANCES, params=params)
        assert response.status_code == 200, response.text
        return {item["id"] for item in response.json()["items"]}

    before = await ids(created_before=created)
    after = await ids(created_after=created)
    assert started[1] in after
    assert before.isdisjoint(after)
    assert before | after == set(started)
    later = datetime.fromisoformat(items[0]["updated_at"]) + timedelta(seconds=1)
    assert await ids(updated_after=later.isoformat()) == set()
    assert await ids(updated_before=later.isoformat()) == set(started)
    offset = await ids(created_after="2000-01-01T02:00:00+02:00")
    assert offset == set(started)


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 501},
        {"cursor": "not a cursor!"},
        {"cursor": "bm90LWpzb24"},
        {"status": "sleeping"},
        {"created_after": "yesterday"},
        {"created_after": "2024-01-01T00:00:00"},
        {"updated_before": "9999-12-31T23:59:59-23:59"},
        {"saga_name": "a b"},
    ],
)
async def test_bad_listing_parameters_are_422(
    client: httpx.AsyncClient, params: dict[str, Any]
) -> None:
    assert_problem(await client.get(INSTANCES, params=params), 422)


async def test_another_tenants_instances_are_not_found(
    client: httpx.AsyncClient, node: Orchestrator
) -> None:
    await node.definitions.register("other", parse_definition(ORDER))
    theirs = await node.engine.start_saga("other", "order", {})
    url = f"{INSTANCES}/{theirs.instance_id}"
    assert_problem(await client.get(url), 404, "not-found")
    assert_problem(await client.get(f"{url}/events"), 404, "not-found")
    assert_problem(await client.get(f"{url}/stream"), 404, "not-found")
    cancel = await client.post(f"{url}/cancel", json={"reason": "not mine"})
    assert_problem(cancel, 404, "not-found")
    assert (await client.get(INSTANCES)).json()["items"] == []
    assert_problem(await client.post(INSTANCES, json={"saga_name": "order"}), 404, "not-found")
