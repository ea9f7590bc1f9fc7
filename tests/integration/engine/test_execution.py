"""The engine against real stores (SQLite and PostgreSQL): semantics §3-§4 end to end."""

from __future__ import annotations

import asyncio

import pytest

from saga_orchestrator.core.events import AttemptScheduled, Phase, SagaStarted
from saga_orchestrator.core.status import InstanceStatus, StepStatus
from saga_orchestrator.errors import InvalidInput, InvalidTransition, RateLimited
from saga_orchestrator.orchestrator import Orchestrator
from saga_orchestrator.security.tenant_limits import TenantLimits
from saga_orchestrator.store import InstanceFilter
from tests.integration.engine.support import FAST_RETRY, Participants, saga, steps

A, C = Phase.ACTION, Phase.COMPENSATION


async def test_a_saga_runs_its_steps_in_order_and_completes(
    orchestrator: Orchestrator, participants: Participants
) -> None:
    await orchestrator.register(saga("order", steps("reserve", "charge", "ship")))
    started = await orchestrator.start("order", {"sku": "A-1"})
    view = await orchestrator.wait(started.instance_id, timeout=10)
    assert view.status is InstanceStatus.COMPLETED
    assert participants.called() == ["reserve", "charge", "ship"]
    assert view.steps["ship"].output == {"by": "ship", "input": {"sku": "A-1"}}
    history = await orchestrator.history(started.instance_id)
    assert isinstance(history[0], SagaStarted)
    assert [type(e).__name__ for e in history][-1] == "SagaCompleted"


async def test_a_failed_step_compensates_the_succeeded_steps_in_reverse(
    orchestrator: Orchestrator, participants: Participants
) -> None:
    participants.script["ship"] = ["reject"]
    await orchestrator.register(saga("order", steps("reserve", "charge", "ship")))
    started = await orchestrator.start("order", {})
    view = await orchestrator.wait(started.instance_id, timeout=10)
    assert view.status is InstanceStatus.COMPENSATED
    assert participants.called() == ["reserve", "charge", "ship", "undo.charge", "undo.reserve"]
    assert view.steps["ship"].status is StepStatus.FAILED
    assert view.steps["reserve"].status is StepStatus.COMPENSATED


async def test_retries_wait_on_durable_timers_and_count_attempts_exactly(
    orchestrator: Orchestrator, participants: Participants
) -> None:
    participants.script["charge"] = ["retry", "retry", "ok"]
    await orchestrator.register(saga("order", steps("reserve", "charge", retry=FAST_RETRY)))
    started = await orchestrator.start("order", {})
    view = await orchestrator.wait(started.instance_id, timeout=10)
    assert view.status is InstanceStatus.COMPLETED
    assert participants.counts()["charge"] == 3
    assert view.steps["charge"].attempts == 3
    keys = {c[4] for c in participants.calls if c[1] == "charge"}
    assert keys == {f"{started.instance_id}:charge:action"}
    history = await orchestrator.history(started.instance_id)
    assert sum(type(e).__name__ == "RetryScheduled" for e in history) == 2


async def test_an_attempt_that_times_out_is_unknown_and_its_step_is_compensated(
    orchestrator: Orchestrator, participants: Participants
) -> None:
    participants.script["charge"] = ["hang"]
    nodes = [
        *steps("reserve"),
        *steps("charge", timeout=0.2, retry={"max_attempts": 1}),
    ]
    await orchestrator.register(saga("order", nodes))
    started = await orchestrator.start("order", {})
    view = await orchestrator.wait(started.instance_id, timeout=10)
    assert view.status is InstanceStatus.COMPENSATED
    error = view.steps["charge"].error
    assert error is not None
    assert error.unknown
    assert participants.called()[-2:] == ["undo.charge", "undo.reserve"]


async def test_parallel_branches_run_concurrently_and_compensate_in_reverse(
    orchestrator: Orchestrator, participants: Participants
) -> None:
    participants.script["ship"] = ["reject"]
    nodes = [
        *steps("reserve"),
        {"name": "fan", "branches": [steps("email", "sms"), steps("pack")]},
        *steps("ship"),
    ]
    await orchestrator.register(saga("order", nodes))
    started = await orchestrator.start("order", {})
    view = await orchestrator.wait(started.instance_id, timeout=10)
    assert view.status is InstanceStatus.COMPENSATED
    called = participants.called()
    assert called.index("undo.sms") < called.index("undo.email") < called.index("undo.reserve")
    assert called.index("undo.pack") < called.index("undo.reserve")
    assert "undo.ship" not in called  # a definite rejection is not compensated


async def test_switch_routes_on_the_input_and_only_the_taken_case_runs(
    orchestrator: Orchestrator, participants: Participants
) -> None:
    nodes = [
        {
            "name": "route",
            "cases": [{"when": "input.amount > 100", "steps": steps("review")}],
            "default": steps("label"),
        },
        *steps("ship"),
    ]
    await orchestrator.register(saga("order", nodes))
    big = await orchestrator.start("order", {"amount": 500})
    small = await orchestrator.start("order", {"amount": 5})
    await orchestrator.wait(big.instance_id, timeout=10)
    await orchestrator.wait(small.instance_id, timeout=10)
    assert participants.called(big.instance_id) == ["review", "ship"]
    assert participants.called(small.instance_id) == ["label", "ship"]


async def test_a_sub_saga_runs_as_a_child_and_is_compensated_as_a_whole(
    orchestrator: Orchestrator, participants: Participants
) -> None:
    participants.script["ship"] = ["reject"]
    await orchestrator.register(saga("payment", steps("charge", "notify")))
    nodes = [*steps("reserve"), {"name": "pay", "saga": "payment", "version": "^1"}, *steps("ship")]
    await orchestrator.register(saga("order", nodes))
    started = await orchestrator.start("order", {"sku": "x"})
    view = await orchestrator.wait(started.instance_id, timeout=10)
    assert view.status is InstanceStatus.COMPENSATED
    child_id = view.steps["pay"].child_instance_id
    assert child_id is not None
    child = await orchestrator.get(child_id)
    assert child.status is InstanceStatus.COMPENSATED
    assert child.parent_instance_id == started.instance_id
    assert participants.called() == [
        "reserve",
        "charge",
        "notify",
        "ship",
        "undo.notify",
        "undo.charge",
        "undo.reserve",
    ]


async def test_a_failing_child_fails_the_parent_step(
    orchestrator: Orchestrator, participants: Participants
) -> None:
    participants.script["notify"] = ["reject"]
    await orchestrator.register(saga("payment", steps("charge", "notify")))
    await orchestrator.register(
        saga("order", [*steps("reserve"), {"name": "pay", "saga": "payment"}])
    )
    started = await orchestrator.start("order", {})
    view = await orchestrator.wait(started.instance_id, timeout=10)
    assert view.status is InstanceStatus.COMPENSATED
    assert view.steps["pay"].status is StepStatus.FAILED
    assert participants.called() == ["reserve", "charge", "notify", "undo.charge", "undo.reserve"]


async def test_cancel_lets_the_in_flight_step_finish_then_compensates(
    orchestrator: Orchestrator, participants: Participants
) -> None:
    gate = participants.gates["charge"] = asyncio.Event()
    await orchestrator.register(saga("order", steps("reserve", "charge", "ship")))
    started = await orchestrator.start("order", {})
    await asyncio.wait_for(participants.reached("charge").wait(), timeout=10)
    await orchestrator.cancel(started.instance_id, "customer changed their mind")
    gate.set()
    view = await orchestrator.wait(started.instance_id, timeout=10)
    assert view.status is InstanceStatus.CANCELLED
    assert participants.called() == ["reserve", "charge", "undo.charge", "undo.reserve"]
    with pytest.raises(InvalidTransition):
        await orchestrator.cancel(started.instance_id, "again")


async def test_a_parked_saga_is_retried_by_an_operator(
    orchestrator: Orchestrator, participants: Participants
) -> None:
    participants.script["undo.reserve"] = ["retry", "ok"]
    participants.script["charge"] = ["reject"]
    nodes = steps("reserve", "charge", compensation_retry={"max_attempts": 1})
    await orchestrator.register(saga("order", nodes))
    started = await orchestrator.start("order", {})
    parked = await orchestrator.wait(started.instance_id, timeout=10)
    assert parked.status is InstanceStatus.FAILED
    assert parked.parked_node == "reserve"
    resumed = await orchestrator.retry(started.instance_id, "inventory is back")
    assert resumed.status is InstanceStatus.COMPENSATING
    view = await orchestrator.wait(started.instance_id, timeout=10)
    assert view.status is InstanceStatus.COMPENSATED
    assert participants.counts()["undo.reserve"] == 2
    history = await orchestrator.history(started.instance_id)
    retried = [e for e in history if type(e).__name__ == "OperatorRetried"]
    assert len(retried) == 1
    assert retried[0].reason == "inventory is back"  # type: ignore[attr-defined]


async def test_an_operator_skips_or_resolves_a_parked_saga(
    orchestrator: Orchestrator, participants: Participants
) -> None:
    participants.script["undo.reserve"] = ["retry", "retry"]
    participants.script["charge"] = ["reject", "reject"]
    nodes = steps("reserve", "charge", compensation_retry={"max_attempts": 1})
    await orchestrator.register(saga("order", nodes))
    one = await orchestrator.start("order", {})
    two = await orchestrator.start("order", {})
    for started in (one, two):
        assert (
            await orchestrator.wait(started.instance_id, timeout=10)
        ).status is InstanceStatus.FAILED
    skipped = await orchestrator.skip(one.instance_id, "reserve", "released by hand")
    assert skipped.status is InstanceStatus.COMPENSATED
    assert skipped.steps["reserve"].manual
    resolved = await orchestrator.resolve(two.instance_id, "reconciled")
    assert resolved.status is InstanceStatus.COMPENSATED


async def test_starts_with_an_idempotency_key_return_the_same_instance(
    orchestrator: Orchestrator,
) -> None:
    await orchestrator.register(saga("order", steps("reserve")))
    results = await asyncio.gather(
        *(orchestrator.start("order", {"n": 1}, idempotency_key="k-1") for _ in range(20))
    )
    assert len({r.instance_id for r in results}) == 1
    assert sum(r.created for r in results) == 1
    with pytest.raises(InvalidInput):
        await orchestrator.start("order", {"n": 2}, idempotency_key="k-1")


async def test_a_context_that_fails_the_input_schema_is_refused_and_nothing_is_written(
    orchestrator: Orchestrator, participants: Participants
) -> None:
    schema = {"type": "object", "required": ["sku"], "properties": {"sku": {"type": "string"}}}
    await orchestrator.register(saga("order", steps("reserve"), input_schema=schema))
    with pytest.raises(InvalidInput, match="sku"):
        await orchestrator.start("order", {"sku": 7})
    page = await orchestrator.store.list_instances(
        "default",
        InstanceFilter(),
    )
    assert page.items == ()
    assert participants.calls == []


async def test_every_attempt_is_recorded_as_scheduled_before_it_is_dispatched(
    orchestrator: Orchestrator, participants: Participants
) -> None:
    participants.gates["reserve"] = asyncio.Event()
    await orchestrator.register(saga("order", steps("reserve", "charge")))
    started = await orchestrator.start("order", {})
    # Before any outcome is recorded, the first attempt is already in the durable history.
    events = await orchestrator.store.load_events("default", started.instance_id)
    assert [e.type for e in events] == ["SagaStarted", AttemptScheduled.__name__]
    participants.gates["reserve"].set()
    await orchestrator.wait(started.instance_id, timeout=10)


async def test_many_concurrent_sagas_share_group_commits(orchestrator: Orchestrator) -> None:
    await orchestrator.register(saga("order", steps("reserve", "charge", "ship")))
    starts = await asyncio.gather(*(orchestrator.start("order", {"i": i}) for i in range(200)))
    views = await asyncio.gather(*(orchestrator.wait(s.instance_id, timeout=30) for s in starts))
    assert all(v.status is InstanceStatus.COMPLETED for v in views)
    writer = orchestrator.engine.writer
    assert writer.requests >= 800
    assert writer.batches < writer.requests / 4  # many instances per transaction


async def test_max_concurrent_sagas_applies_back_pressure(
    make_orchestrator: object, participants: Participants
) -> None:
    gate = participants.gates["reserve"] = asyncio.Event()
    node = make_orchestrator(max_concurrent_sagas=2)  # type: ignore[operator]
    await node.open()
    await node.register(saga("order", steps("reserve")))
    first = [await node.start("order", {}) for _ in range(2)]
    third = asyncio.create_task(node.start("order", {}))
    await asyncio.sleep(0.3)
    assert not third.done()  # waits for a slot instead of failing
    gate.set()
    started = await asyncio.wait_for(third, timeout=10)
    for result in [*first, started]:
        assert (await node.wait(result.instance_id, timeout=10)).status is InstanceStatus.COMPLETED


async def test_oversize_payloads_get_a_specific_error_and_nothing_is_half_written(
    orchestrator: Orchestrator, participants: Participants
) -> None:
    await orchestrator.register(saga("order", steps("reserve")))
    with pytest.raises(InvalidInput, match="limit is 1000000"):
        await orchestrator.start("order", {"blob": "x" * 1_000_001})
    assert (await orchestrator.store.list_instances("default", InstanceFilter())).items == ()

    @orchestrator.handler("huge")
    async def huge(ctx: object) -> str:
        return "y" * 1_000_001

    await orchestrator.register(
        saga("big", [{"name": "huge", "action": "huge", "retry": {"max_attempts": 5}}])
    )
    started = await orchestrator.start("big", {})
    view = await orchestrator.wait(started.instance_id, timeout=10)
    error = view.steps["huge"].error
    assert error is not None
    assert error.type == "OutputTooLarge"
    assert view.steps["huge"].attempts == 1  # a definite failure: not retried
    assert view.status is InstanceStatus.COMPENSATED


async def test_a_parked_child_fails_its_parents_step_instead_of_leaving_it_waiting(
    orchestrator: Orchestrator, participants: Participants
) -> None:
    participants.script["notify"] = ["reject"]
    participants.script["undo.charge"] = ["retry"]
    child = steps("charge", "notify", compensation_retry={"max_attempts": 1})
    await orchestrator.register(saga("payment", child))
    await orchestrator.register(
        saga("order", [*steps("reserve"), {"name": "pay", "saga": "payment"}])
    )
    started = await orchestrator.start("order", {})
    view = await orchestrator.wait(started.instance_id, timeout=10)
    assert view.status is InstanceStatus.COMPENSATED
    error = view.steps["pay"].error
    assert error is not None
    assert error.type == "ChildSagaParked"
    child_id = view.steps["pay"].child_instance_id
    assert child_id is not None
    assert (await orchestrator.get(child_id)).status is InstanceStatus.FAILED


async def test_a_child_past_its_pivot_cannot_be_undone_and_the_parent_parks(
    orchestrator: Orchestrator, participants: Participants
) -> None:
    participants.script["ship"] = ["reject"]
    child = [
        {"name": "charge", "action": "charge", "kind": "pivot"},
        {"name": "notify", "action": "notify", "kind": "retriable"},
    ]
    await orchestrator.register(saga("payment", child))
    nodes = [{"name": "pay", "saga": "payment"}, *steps("ship")]
    await orchestrator.register(saga("order", nodes))
    started = await orchestrator.start("order", {})
    view = await orchestrator.wait(started.instance_id, timeout=10)
    assert view.status is InstanceStatus.FAILED
    assert view.parked_node == "pay"
    error = view.steps["pay"].compensation_error
    assert error is not None
    assert error.type == "ChildUndoRefused"


async def test_a_live_instance_is_invisible_to_another_tenant(
    orchestrator: Orchestrator, participants: Participants
) -> None:
    from saga_orchestrator.errors import NotFound

    gate = participants.gates["reserve"] = asyncio.Event()
    await orchestrator.register(saga("order", steps("reserve")))
    started = await orchestrator.start("order", {})
    engine = orchestrator.engine
    with pytest.raises(NotFound):
        await engine.state("other-tenant", started.instance_id)
    with pytest.raises(NotFound):
        await engine.advance("other-tenant", started.instance_id, lambda s: [])
    with pytest.raises(NotFound):
        await engine.wait("other-tenant", started.instance_id, timeout=1)
    gate.set()
    assert (await orchestrator.wait(started.instance_id, 10)).status is InstanceStatus.COMPLETED


async def test_a_tenant_over_its_running_quota_is_refused_while_another_starts(
    store_url: str, participants: Participants
) -> None:
    participants.gates["reserve"] = asyncio.Event()  # every saga waits at its first step
    async with Orchestrator(
        store_url, handlers=participants.registry(), max_running_sagas_per_tenant=3
    ) as node:
        node.tenant_id = "busy"
        await node.register(saga("order", steps("reserve")))
        busy = [await node.start("order", {}) for _ in range(3)]
        with pytest.raises(RateLimited) as refused:
            await node.start("order", {})
        assert refused.value.headers == {"Retry-After": "1"}
        assert node.engine.running("busy") == 3
        node.tenant_id = "calm"
        await node.register(saga("order", steps("reserve")))
        calm = await node.start("order", {})  # another tenant is not held back
        assert node.engine.running("calm") == 1
        participants.gates["reserve"].set()
        for started in busy:
            node.tenant_id = "busy"
            assert (
                await node.wait(started.instance_id, timeout=10)
            ).status is InstanceStatus.COMPLETED
        node.tenant_id = "calm"
        await node.wait(calm.instance_id, timeout=10)
        assert node.engine.running("busy") == node.engine.running("calm") == 0
        node.tenant_id = "busy"
        await node.start("order", {})  # room again once they finished


async def test_a_tenants_own_cap_replaces_the_nodes_and_a_reset_restores_it(
    store_url: str, participants: Participants
) -> None:
    participants.gates["reserve"] = asyncio.Event()  # every saga waits at its first step
    async with Orchestrator(
        store_url, handlers=participants.registry(), max_running_sagas_per_tenant=3
    ) as node:
        for tenant in ("low", "high"):
            node.tenant_id = tenant
            await node.register(saga("order", steps("reserve")))
        await node.tenant_limits.put("low", TenantLimits(max_running_sagas=1))
        await node.tenant_limits.put("high", TenantLimits(max_running_sagas=5))
        node.tenant_id = "low"
        await node.start("order", {})
        with pytest.raises(RateLimited):
            await node.start("order", {})
        node.tenant_id = "high"
        for _ in range(5):  # past the node's cap of 3
            await node.start("order", {})
        with pytest.raises(RateLimited):
            await node.start("order", {})
        assert await node.tenant_limits.reset("low")
        node.tenant_id = "low"
        await node.start("order", {})
        await node.start("order", {})  # the node's cap again: 3
        with pytest.raises(RateLimited):
            await node.start("order", {})
        assert (node.engine.running("low"), node.engine.running("high")) == (3, 5)
        participants.gates["reserve"].set()


async def test_a_node_with_encryption_keys_runs_sagas_on_sealed_histories(
    store_url: str, participants: Participants
) -> None:
    from saga_orchestrator.store.encryption import generate_key
    from tests.integration.store.support import RawDatabase

    keys = f"main={generate_key()}"
    async with Orchestrator(
        store_url, handlers=participants.registry(), encryption_keys=keys
    ) as node:
        await node.register(saga("order", steps("reserve", "charge")))
        started = await node.start("order", {"card": "4242-4242-4242-4242"})
        view = await node.wait(started.instance_id, timeout=10)
        assert view.status is InstanceStatus.COMPLETED
        assert view.input == {"card": "4242-4242-4242-4242"}
    async with Orchestrator(
        store_url, handlers=participants.registry(), encryption_keys=keys
    ) as again:  # another process with the same keys reads the history back
        history = await again.history(started.instance_id)
        assert isinstance(history[0], SagaStarted)
        assert history[0].input == {"card": "4242-4242-4242-4242"}
    async with RawDatabase(store_url) as db:
        rows = await db.fetch("SELECT data FROM events")
    assert rows and all("4242" not in str(row[0]) for row in rows)
