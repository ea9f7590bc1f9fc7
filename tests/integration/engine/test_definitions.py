"""Semantics §1 (definitions) through the registry, on real stores."""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

import pytest

from saga_orchestrator.core.status import InstanceStatus
from saga_orchestrator.engine.definitions import DefinitionRegistry, Registration
from saga_orchestrator.errors import (
    DefinitionConflict,
    DefinitionError,
    NotFound,
    StoreUnavailable,
)
from saga_orchestrator.orchestrator import Orchestrator
from saga_orchestrator.store import DefinitionRecord, Store
from tests.integration.engine.support import Participants, saga, steps
from tests.support.waiting import until


async def test_a_registered_version_is_immutable(orchestrator: Orchestrator) -> None:
    assert await orchestrator.register(saga("order", steps("reserve"))) is Registration.CREATED
    with pytest.raises(DefinitionConflict, match="immutable"):
        await orchestrator.register(saga("order", steps("reserve", "charge")))


async def test_registering_an_identical_body_again_is_idempotent(
    orchestrator: Orchestrator,
) -> None:
    await orchestrator.register(saga("order", steps("reserve")))
    written_differently = {
        "version": "1.0.0",
        "name": "order",
        "steps": [
            {
                "name": "reserve",
                "action": {"handler": "reserve"},
                "compensation": "undo.reserve",
                "kind": "compensatable",
            }
        ],
    }
    assert await orchestrator.register(written_differently) is Registration.IDENTICAL


async def test_starting_without_a_version_takes_the_highest_registered_version(
    orchestrator: Orchestrator,
) -> None:
    for version in ("1.2.0", "1.10.0", "1.9.3", "2.0.0-rc.1"):
        await orchestrator.register(saga("order", steps("reserve"), version=version))
    started = await orchestrator.start("order", {})
    assert started.definition_version == "1.10.0"
    pinned = await orchestrator.start("order", {}, version="~1.2")
    assert pinned.definition_version == "1.2.0"


async def test_a_running_instance_stays_pinned_to_its_version(
    orchestrator: Orchestrator, participants: Participants
) -> None:
    import asyncio

    gate = participants.gates["reserve"] = asyncio.Event()
    await orchestrator.register(saga("order", steps("reserve", "charge")))
    started = await orchestrator.start("order", {})
    await orchestrator.register(saga("order", steps("reserve", "ship"), version="1.1.0"))
    gate.set()
    view = await orchestrator.wait(started.instance_id, timeout=10)
    assert view.version == "1.0.0"
    assert participants.called(started.instance_id) == ["reserve", "charge"]
    newer = await orchestrator.start("order", {})
    assert newer.definition_version == "1.1.0"


async def test_a_deprecated_version_takes_no_new_starts_but_is_kept(
    orchestrator: Orchestrator,
) -> None:
    await orchestrator.register(saga("order", steps("reserve")))
    await orchestrator.register(saga("order", steps("reserve"), version="1.1.0"))
    await orchestrator.deprecate("order", "1.1.0")
    assert (await orchestrator.start("order", {})).definition_version == "1.0.0"
    await orchestrator.deprecate("order", "1.0.0")
    with pytest.raises(NotFound):
        await orchestrator.start("order", {})
    versions = await orchestrator.store.list_definition_versions("default", "order")
    assert [v.version for v in versions] == ["1.0.0", "1.1.0"]


async def test_unknown_handlers_are_rejected_on_registration(orchestrator: Orchestrator) -> None:
    with pytest.raises(DefinitionError) as raised:
        await orchestrator.register(saga("order", [{"name": "x", "action": "nobody.home"}]))
    assert [v.rule for v in raised.value.violations] == ["known-handler"]
    assert raised.value.violations[0].location == "steps[0].action"


async def test_sub_saga_cycles_are_rejected_and_nothing_is_written(
    orchestrator: Orchestrator,
) -> None:
    await orchestrator.register(saga("b", steps("reserve")))
    await orchestrator.register(saga("a", [{"name": "call_b", "saga": "b"}]))
    cyclic_b = saga("b", [{"name": "call_a", "saga": "a"}], version="2.0.0")
    with pytest.raises(DefinitionError) as raised:
        await orchestrator.register(cyclic_b)
    violation = raised.value.violations[0]
    assert violation.rule == "sub-saga-cycle"
    assert "b -> a -> b" in violation.message
    assert [
        v.version for v in await orchestrator.store.list_definition_versions("default", "b")
    ] == ["1.0.0"]
    with pytest.raises(DefinitionError) as self_ref:
        await orchestrator.register(saga("c", [{"name": "me", "saga": "c"}]))
    assert self_ref.value.violations[0].rule == "sub-saga-cycle"


async def test_a_sub_saga_must_name_a_registered_definition(orchestrator: Orchestrator) -> None:
    with pytest.raises(DefinitionError) as raised:
        await orchestrator.register(saga("a", [{"name": "call", "saga": "ghost"}]))
    assert raised.value.violations[0].rule == "sub-saga-exists"


async def test_starting_an_unknown_saga_is_not_found(orchestrator: Orchestrator) -> None:
    with pytest.raises(NotFound):
        await orchestrator.start("ghost", {})
    with pytest.raises(NotFound):
        await orchestrator.get("no-such-instance")


async def test_an_instance_completes_after_a_graceful_restart_mid_flight(
    make_orchestrator: object, participants: Participants
) -> None:
    import asyncio

    first = make_orchestrator()  # type: ignore[operator]
    await first.open()
    participants.gates["charge"] = asyncio.Event()
    await first.register(saga("order", steps("reserve", "charge", "ship")))
    started = await first.start("order", {})
    await asyncio.wait_for(participants.reached("charge").wait(), timeout=10)
    await first.close(grace=0.1)  # the charge attempt is abandoned mid-flight
    participants.gates.clear()
    second = make_orchestrator()  # type: ignore[operator]
    await second.open()
    view = await second.wait(started.instance_id, timeout=10)
    assert view.status is InstanceStatus.COMPLETED
    assert view.steps["charge"].attempts == 2
    assert participants.called() == ["reserve", "charge", "charge", "ship"]


async def test_concurrent_starts_resolve_a_name_with_one_store_read(
    orchestrator: Orchestrator,
) -> None:
    await orchestrator.register(saga("order", steps("reserve")))
    registry = orchestrator.definitions
    reads = 0
    real = orchestrator.store.list_definition_versions

    async def counting(tenant_id: str, name: str) -> list[DefinitionRecord]:
        nonlocal reads
        reads += 1
        await asyncio.sleep(0.01)  # a read that takes a while, so the starts overlap
        return await real(tenant_id, name)

    orchestrator.store.list_definition_versions = counting  # type: ignore[method-assign]
    registry.resolve_ttl = 0.0  # always expired: only the single flight saves reads
    found = await asyncio.gather(*(registry.resolve("default", "order") for _ in range(50)))
    assert {f.version for f in found} == {"1.0.0"}
    assert reads == 1
    await orchestrator.register(saga("order", steps("reserve"), version="1.1.0"))
    assert (await registry.resolve("default", "order")).version == "1.1.0"


class _HeldReads:
    """The real store; its version listings are counted, held while ``gate`` is shut and
    refused while ``down``."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.reads = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.down = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def list_definition_versions(self, tenant_id: str, name: str) -> list[DefinitionRecord]:
        self.reads += 1
        await self.gate.wait()
        if self.down:
            raise StoreUnavailable("the database cannot be reached")
        return await self.store.list_definition_versions(tenant_id, name)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_name_in_use_is_resolved_again_in_the_background_before_it_expires(
    orchestrator: Orchestrator, caplog: pytest.LogCaptureFixture
) -> None:
    """Another node's new version is picked up within the TTL without a start waiting for
    the store; a background resolution that fails leaves the last one until it expires."""
    await orchestrator.register(saga("order", steps("reserve")))
    store, clock = _HeldReads(orchestrator.store), _Clock()
    here = DefinitionRegistry(store, clock=clock)
    assert (await here.resolve("default", "order")).version == "1.0.0"
    clock.now += 0.7  # before the last fifth of the TTL: no read
    assert (await here.resolve("default", "order")).version == "1.0.0"
    assert store.reads == 1
    await orchestrator.register(saga("order", steps("reserve"), version="1.1.0"))  # elsewhere
    store.gate.clear()
    clock.now += 0.15
    for _ in range(3):  # answered while the read they started is held
        resolved = await asyncio.wait_for(here.resolve("default", "order"), timeout=5)
        assert resolved.version == "1.0.0"
    await until(lambda: store.reads == 2)
    store.gate.set()
    async with asyncio.timeout(5):
        while (await here.resolve("default", "order")).version != "1.1.0":  # noqa: ASYNC110
            await asyncio.sleep(0.001)
    assert store.reads == 2  # one read for the three, and the new answer counts from it

    store.down = True
    clock.now += 0.85
    with caplog.at_level(logging.ERROR):
        assert (await here.resolve("default", "order")).version == "1.1.0"
        await until(lambda: store.reads == 3)
        for _ in range(3):
            await asyncio.sleep(0)  # the read fails, with no one waiting for it
        gc.collect()
    assert "never retrieved" not in caplog.text
    assert (await here.resolve("default", "order")).version == "1.1.0"  # until it expires
    clock.now += 0.2  # expired: the start waits for the store and gets its error
    with pytest.raises(StoreUnavailable):
        await here.resolve("default", "order")
