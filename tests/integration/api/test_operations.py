"""Operator actions over HTTP: cancel, retry, skip and resolve, each with a reason that the
history records, refused (409) when the instance's state does not allow it."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest

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

ORDER = saga("order", steps("reserve", "charge", "ship"))
FRAGILE = saga("order", steps("reserve", "charge", compensation_retry={"max_attempts": 1}))
ACTIONS = ["cancel", "retry", "resolve", "steps/reserve/skip"]


async def _parked(client: httpx.AsyncClient, participants: Participants) -> str:
    """An instance parked in `failed` on `reserve`, whose compensation could not finish."""
    participants.script["charge"] = ["reject"]
    participants.script["undo.reserve"] = ["retry", "ok"]
    await register(client, FRAGILE)
    instance_id = await start(client, "order", {})
    detail = await wait_status(client, instance_id)
    assert detail["status"] == "failed"
    assert detail["parked_node"] == "reserve"
    return instance_id


def _of_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [event["data"] for event in events if event["type"] == kind]


async def test_cancel_compensates_and_records_the_reason(
    client: httpx.AsyncClient, participants: Participants
) -> None:
    gate = participants.gates["charge"] = asyncio.Event()
    await register(client, ORDER)
    instance_id = await start(client, "order", {})
    await asyncio.wait_for(participants.reached("charge").wait(), 10)
    response = await client.post(
        f"{INSTANCES}/{instance_id}/cancel", json={"reason": "customer changed their mind"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["id"] == instance_id
    gate.set()
    assert (await wait_status(client, instance_id))["status"] == "cancelled"
    cancels = _of_type(await history(client, instance_id), "CancelRequested")
    assert [c["reason"] for c in cancels] == ["customer changed their mind"]
    again = await client.post(f"{INSTANCES}/{instance_id}/cancel", json={"reason": "again"})
    assert_problem(again, 409, "invalid-transition")


async def test_retry_resumes_a_parked_saga(
    client: httpx.AsyncClient, participants: Participants
) -> None:
    instance_id = await _parked(client, participants)
    response = await client.post(
        f"{INSTANCES}/{instance_id}/retry", json={"reason": "inventory is back"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "compensating"
    assert (await wait_status(client, instance_id))["status"] == "compensated"
    retried = _of_type(await history(client, instance_id), "OperatorRetried")
    assert retried == [{"at": retried[0]["at"], "reason": "inventory is back", "actor": "api"}]


async def test_skip_marks_the_parked_node_manual(
    client: httpx.AsyncClient, participants: Participants
) -> None:
    instance_id = await _parked(client, participants)
    response = await client.post(
        f"{INSTANCES}/{instance_id}/steps/reserve/skip", json={"reason": "released by hand"}
    )
    assert response.status_code == 200, response.text
    detail = await wait_status(client, instance_id)
    assert detail["status"] == "compensated"
    reserve = next(s for s in detail["steps"] if s["name"] == "reserve")
    assert reserve["manual"] is True
    skipped = _of_type(await history(client, instance_id), "OperatorSkipped")
    assert [(s["node"], s["reason"], s["actor"]) for s in skipped] == [
        ("reserve", "released by hand", "api")
    ]


async def test_skip_refuses_other_and_unknown_nodes(
    client: httpx.AsyncClient, participants: Participants
) -> None:
    instance_id = await _parked(client, participants)
    body = {"reason": "why not"}
    other = await client.post(f"{INSTANCES}/{instance_id}/steps/charge/skip", json=body)
    assert_problem(other, 409, "invalid-transition")
    unknown = await client.post(f"{INSTANCES}/{instance_id}/steps/nothing/skip", json=body)
    assert_problem(unknown, 404, "not-found")
    bad = await client.post(f"{INSTANCES}/{instance_id}/steps/no%20such/skip", json=body)
    assert_problem(bad, 422, "invalid-request")


async def test_resolve_ends_a_parked_saga(
    client: httpx.AsyncClient, participants: Participants
) -> None:
    instance_id = await _parked(client, participants)
    response = await client.post(f"{INSTANCES}/{instance_id}/resolve", json={"reason": "fixed"})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "compensated"
    resolved = _of_type(await history(client, instance_id), "OperatorResolved")
    assert [(r["reason"], r["actor"]) for r in resolved] == [("fixed", "api")]


@pytest.mark.parametrize("action", ["retry", "resolve", "steps/reserve/skip"])
async def test_operator_actions_on_a_completed_saga_are_409(
    client: httpx.AsyncClient, action: str
) -> None:
    await register(client, ORDER)
    instance_id = await start(client, "order", {})
    await wait_status(client, instance_id)
    response = await client.post(f"{INSTANCES}/{instance_id}/{action}", json={"reason": "x"})
    assert_problem(response, 409, "invalid-transition")


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize(
    "body",
    [None, {}, {"reason": ""}, {"reason": 5}, {"reason": "x", "extra": 1}, {"reason": "a\u0000"}],
)
async def test_a_reason_is_required(
    client: httpx.AsyncClient, action: str, body: dict[str, Any] | None
) -> None:
    await register(client, ORDER)
    instance_id = await start(client, "order", {})
    response = await client.post(f"{INSTANCES}/{instance_id}/{action}", json=body)
    problem = assert_problem(response, 422, "invalid-request")
    assert all(v["location"].startswith("body") for v in problem["violations"])


@pytest.mark.parametrize("action", ACTIONS)
async def test_actions_on_unknown_instances_are_404(client: httpx.AsyncClient, action: str) -> None:
    response = await client.post(f"{INSTANCES}/{uuid.uuid4()}/{action}", json={"reason": "x"})
    assert_problem(response, 404, "not-found")
