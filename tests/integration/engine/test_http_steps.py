"""HTTP steps end to end: a node on a real store calling real HTTP participants on loopback.

Every assertion counts calls the stub participant actually received: attempts per retry
policy, the idempotency key that stays the same across them, compensations in reverse order,
asynchronous completion by callback, and a circuit breaker that does not burn attempts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from saga_orchestrator.core.events import AttemptAccepted, AttemptFailed, RetryScheduled
from saga_orchestrator.core.status import InstanceStatus, StepStatus
from saga_orchestrator.errors import (
    AttemptNotInFlight,
    DefinitionError,
    InvalidCompletionToken,
)
from saga_orchestrator.orchestrator import Orchestrator
from saga_orchestrator.transports.base import StepOutcome
from tests.support.stub_participant import Reply, StubParticipant

FAST = {"max_attempts": 3, "initial_interval": 0.02, "max_interval": 0.05}


def http_step(name: str, *, compensate: bool = True, **extra: Any) -> dict[str, Any]:
    node: dict[str, Any] = {
        "name": name,
        "action": {"http": {"service": "shop", "path": f"/{name}/${{input.order}}"}},
        "retry": FAST,
        **extra,
    }
    if compensate:
        node["compensation"] = {
            "http": {"service": "shop", "method": "DELETE", "path": f"/{name}/${{input.order}}"}
        }
    return node


def order_saga(*nodes: dict[str, Any], name: str = "order") -> dict[str, Any]:
    return {"name": name, "version": "1.0.0", "steps": list(nodes)}


@pytest_asyncio.fixture
async def stub() -> AsyncIterator[StubParticipant]:
    async with StubParticipant() as running:
        yield running


@pytest_asyncio.fixture
async def node(store_url: str, stub: StubParticipant) -> AsyncIterator[Orchestrator]:
    async with Orchestrator(store_url) as running:
        await running.put_participant(
            "shop", {"base_url": stub.base_url, "allow_private_network": True}
        )
        yield running


async def _run(node: Orchestrator, context: dict[str, Any]) -> Any:
    started = await node.start("order", context)
    return await node.wait(started.instance_id, timeout=20), started.instance_id


async def test_three_http_steps_complete_with_stable_keys_and_trace_context(
    node: Orchestrator, stub: StubParticipant
) -> None:
    await node.register(order_saga(http_step("reserve"), http_step("charge"), http_step("ship")))
    stub.set_default(Reply(json={"done": True}))
    view, instance_id = await _run(node, {"order": 7})
    assert view.status is InstanceStatus.COMPLETED
    assert [(c.method, c.path) for c in stub.calls] == [
        ("POST", "/reserve/7"),
        ("POST", "/charge/7"),
        ("POST", "/ship/7"),
    ]
    for call, step in zip(stub.calls, ("reserve", "charge", "ship"), strict=True):
        assert call.headers["idempotency-key"] == f"{instance_id}:{step}:action"
        assert call.headers["saga-instance-id"] == instance_id
        assert call.headers["saga-step"] == step
        assert call.headers["traceparent"].startswith("00-")
        assert call.json == {"order": 7}  # no body template: the step's input
    trace_ids = {c.headers["traceparent"].split("-")[1] for c in stub.calls}
    assert len(trace_ids) == 1  # one trace per saga
    assert view.steps["ship"].output == {"done": True}


async def test_server_errors_are_retried_with_the_same_key_exactly_per_policy(
    node: Orchestrator, stub: StubParticipant
) -> None:
    await node.register(order_saga(http_step("reserve"), http_step("charge")))
    stub.script("/charge/1", Reply(status=500), Reply(status=503), Reply(json={"id": "C-1"}))
    view, instance_id = await _run(node, {"order": 1})
    assert view.status is InstanceStatus.COMPLETED
    charges = stub.calls_to("/charge/1")
    assert len(charges) == 3
    assert {c.headers["idempotency-key"] for c in charges} == {f"{instance_id}:charge:action"}
    assert [c.headers["saga-attempt"] for c in charges] == ["1", "2", "3"]
    assert view.steps["charge"].attempts == 3


async def test_exhausted_retries_fail_the_step_and_compensate_in_reverse(
    node: Orchestrator, stub: StubParticipant
) -> None:
    await node.register(order_saga(http_step("reserve"), http_step("charge"), http_step("ship")))
    stub.set_default(Reply(status=502), path="/ship/2")
    view, _ = await _run(node, {"order": 2})
    assert view.status is InstanceStatus.COMPENSATED
    assert len(stub.calls_to("/ship/2")) == 3  # FAST allows 3 attempts
    assert [(c.method, c.path) for c in stub.calls if c.method == "DELETE"] == [
        ("DELETE", "/charge/2"),
        ("DELETE", "/reserve/2"),
    ]  # a definite (5xx) failure of ship is not compensated; the others in reverse


async def test_a_client_error_is_not_retried(node: Orchestrator, stub: StubParticipant) -> None:
    await node.register(order_saga(http_step("reserve"), http_step("charge")))
    stub.script("/charge/3", Reply(status=400, json={"title": "card declined"}))
    view, _ = await _run(node, {"order": 3})
    assert view.status is InstanceStatus.COMPENSATED
    assert len(stub.calls_to("/charge/3")) == 1
    assert view.steps["charge"].error is not None
    assert view.steps["charge"].error.type == "HTTP400"
    assert "card declined" in view.steps["charge"].error.message
    assert [c.path for c in stub.calls if c.method == "DELETE"] == ["/reserve/3"]


async def test_a_timed_out_attempt_is_unknown_so_the_step_is_compensated_too(
    node: Orchestrator, stub: StubParticipant
) -> None:
    slow = http_step("charge", timeout=0.3, retry={"max_attempts": 2, "initial_interval": 0.02})
    await node.register(order_saga(http_step("reserve"), slow))
    stub.set_default(Reply(delay=5), path="/charge/4")
    view, _ = await _run(node, {"order": 4})
    assert view.status is InstanceStatus.COMPENSATED
    assert [c.method for c in stub.calls_to("/charge/4")] == ["POST", "POST", "DELETE"]
    error = view.steps["charge"].error
    assert error is not None and error.unknown
    assert [c.path for c in stub.calls if c.method == "DELETE"] == ["/charge/4", "/reserve/4"]


async def test_retry_after_sets_the_earliest_next_attempt(
    node: Orchestrator, stub: StubParticipant
) -> None:
    await node.register(order_saga(http_step("reserve")))
    stub.script("/reserve/5", Reply(status=429, headers={"Retry-After": "1"}))
    view, instance_id = await _run(node, {"order": 5})
    assert view.status is InstanceStatus.COMPLETED
    [retry] = [e for e in await node.history(instance_id) if isinstance(e, RetryScheduled)]
    assert (retry.due - retry.at).total_seconds() >= 1.0


async def test_accepted_attempts_complete_by_callback(
    node: Orchestrator, stub: StubParticipant
) -> None:
    await node.register(order_saga(http_step("reserve"), http_step("ship", timeout=30)))
    stub.script("/ship/6", Reply(status=202))
    started = await node.start("order", {"order": 6})
    await stub.wait_for_calls(2)
    ship = stub.calls_to("/ship/6")[0]
    token = ship.headers["saga-completion-token"]
    await _wait_for(node, started.instance_id, AttemptAccepted)
    assert (await node.get(started.instance_id)).steps["ship"].status is StepStatus.RUNNING

    with pytest.raises(InvalidCompletionToken):  # forged
        await node.engine.complete_attempt(
            token[:-2] + "xx", instance_id=started.instance_id, node="ship", outcome=StepOutcome()
        )
    with pytest.raises(InvalidCompletionToken):  # another step's
        await node.engine.complete_attempt(
            token, instance_id=started.instance_id, node="reserve", outcome=StepOutcome()
        )
    await node.engine.complete_attempt(
        token,
        instance_id=started.instance_id,
        node="ship",
        outcome=StepOutcome(output={"tracking": "T-6"}),
    )
    view = await node.wait(started.instance_id, timeout=10)
    assert view.status is InstanceStatus.COMPLETED
    assert view.steps["ship"].output == {"tracking": "T-6"}
    with pytest.raises(AttemptNotInFlight):  # used once: the attempt is over
        await node.engine.complete_attempt(
            token, instance_id=started.instance_id, node="ship", outcome=StepOutcome()
        )


async def test_an_accepted_attempt_can_fail_by_callback(
    node: Orchestrator, stub: StubParticipant
) -> None:
    from saga_orchestrator.core.events import ErrorInfo

    await node.register(order_saga(http_step("reserve"), http_step("ship", timeout=30)))
    stub.script("/ship/8", Reply(status=202))
    started = await node.start("order", {"order": 8})
    await stub.wait_for_calls(2)
    token = stub.calls_to("/ship/8")[0].headers["saga-completion-token"]
    await _wait_for(node, started.instance_id, AttemptAccepted)
    error = ErrorInfo(type="NoCarrier", message="no carrier today", retryable=False)
    await node.engine.complete_attempt(
        token, instance_id=started.instance_id, node="ship", outcome=StepOutcome(error=error)
    )
    view = await node.wait(started.instance_id, timeout=10)
    assert view.status is InstanceStatus.COMPENSATED
    assert len(stub.calls_to("/ship/8")) == 1


async def test_an_accepted_attempt_without_callback_expires(
    node: Orchestrator, stub: StubParticipant
) -> None:
    late = http_step("ship", timeout=0.5, retry={"max_attempts": 1})
    await node.register(order_saga(http_step("reserve"), late))
    stub.script("/ship/9", Reply(status=202))
    started = await node.start("order", {"order": 9})
    view = await node.wait(started.instance_id, timeout=10)
    assert view.status is InstanceStatus.COMPENSATED
    token = stub.calls_to("/ship/9")[0].headers["saga-completion-token"]
    with pytest.raises(AttemptNotInFlight):
        await node.engine.complete_attempt(
            token, instance_id=started.instance_id, node="ship", outcome=StepOutcome()
        )


async def test_an_open_breaker_makes_steps_wait_instead_of_failing(
    store_url: str, stub: StubParticipant
) -> None:
    async with Orchestrator(store_url) as node:
        await node.put_participant(
            "shop",
            {
                "base_url": stub.base_url,
                "allow_private_network": True,
                "circuit_breaker": {"minimum_calls": 2, "failure_rate": 0.5, "open_for": 0.3},
            },
        )
        await node.register(order_saga(http_step("reserve", retry=FAST)))
        stub.script("/reserve/10", Reply(status=500), Reply(status=500))
        view, _ = await _run(node, {"order": 10})
        assert view.status is InstanceStatus.COMPLETED
        # two failures opened the breaker; the third real call was the half-open probe
        assert [c.reply.status for c in stub.calls_to("/reserve/10")] == [500, 500, 200]
        assert view.steps["reserve"].attempts >= 3


async def test_a_definition_naming_an_unregistered_service_is_refused(node: Orchestrator) -> None:
    nowhere = {"name": "a", "action": {"http": {"service": "nowhere", "path": "/x"}}}
    with pytest.raises(DefinitionError) as raised:
        await node.register(order_saga(nowhere, name="lost"))
    assert [v.rule for v in raised.value.violations] == ["known-service"]


async def _wait_for(node: Orchestrator, instance_id: str, kind: type) -> None:
    async with asyncio.timeout(10):
        # The history lives in the store: reading it until the event shows is the point.
        while not any(isinstance(e, kind) for e in await node.history(instance_id)):  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def test_a_paced_participant_makes_steps_wait_without_using_attempts(
    store_url: str, stub: StubParticipant
) -> None:
    async with Orchestrator(store_url) as node:
        await node.put_participant(
            "shop",
            {
                "base_url": stub.base_url,
                "allow_private_network": True,
                "rate_limit": {"per_second": 20, "burst": 1},
            },
        )
        one_attempt = http_step("reserve", compensate=False, retry={"max_attempts": 1})
        await node.register(order_saga(one_attempt))
        started = [await node.start("order", {"order": n}) for n in range(6)]
        views = [await node.wait(s.instance_id, timeout=20) for s in started]
        assert [v.status for v in views] == [InstanceStatus.COMPLETED] * 6
        assert len(stub.calls) == 6  # paced calls were never sent, only delayed
        paced = [
            e
            for s in started
            for e in await node.history(s.instance_id)
            if isinstance(e, AttemptFailed) and e.error.type == "RateLimited"
        ]
        assert paced, "six calls in a burst of one: some must have waited"
        assert all(not e.error.budgeted and e.error.retry_after for e in paced)
