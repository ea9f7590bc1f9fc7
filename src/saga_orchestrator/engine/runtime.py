"""The engine: feeds events to the core and the core's effects to transports.

Every change to an instance follows one path, :meth:`Engine._advance`: under the instance's
(in-memory) lock, compute the input's events, let ``decide`` conclude, append all of them in one
group-committed write that states the expected sequence, and only after the commit perform the
effects. No database lock is ever held across a participant call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import orjson

from saga_orchestrator.core import codec
from saga_orchestrator.core.commands import (
    CompensateChild,
    Dispatch,
    Effect,
    ReportToParent,
    StartChild,
)
from saga_orchestrator.core.decide import decide
from saga_orchestrator.core.events import (
    AttemptFailed,
    AttemptSucceeded,
    ErrorInfo,
    Event,
    Phase,
)
from saga_orchestrator.core.operations import (
    accepted_events,
    heartbeat_events,
    is_current_attempt,
    outcome_events,
    recover,
    start_event,
)
from saga_orchestrator.core.state import SagaState, evolve, fold
from saga_orchestrator.definition.compiler import CompiledDefinition, validate_input
from saga_orchestrator.engine.bus import CommittedEvent, EventBus
from saga_orchestrator.engine.calls import (
    OutboxRouting,
    render_call,
    route_to_outbox,
    step_request,
)
from saga_orchestrator.engine.children import ChildSagas
from saga_orchestrator.engine.clock import Clock, SystemClock
from saga_orchestrator.engine.completion import KEY_NAME, AttemptRef, CompletionTokens
from saga_orchestrator.engine.definitions import DefinitionRegistry
from saga_orchestrator.engine.integration import IntegrationEvents
from saga_orchestrator.engine.leases import LeaseKeeper, LeaseOptions
from saga_orchestrator.engine.timers import TimerQueue
from saga_orchestrator.engine.writer import BatchWriter
from saga_orchestrator.errors import (
    AttemptNotInFlight,
    ExpressionError,
    InvalidCompletionToken,
    InvalidInput,
    InvalidTransition,
    LeaseLost,
    NotFound,
    RateLimited,
    SagaError,
    SequenceConflict,
    StoreError,
)
from saga_orchestrator.store import (
    AppendRequest,
    AppendStatus,
    AuditEntry,
    ClaimedInstance,
    InstanceRef,
    InstanceUpdate,
    NewInstance,
    OutboxMessage,
    Store,
)
from saga_orchestrator.store.protocol import Watch
from saga_orchestrator.transports.base import (
    AmqpCallSpec,
    HttpCallSpec,
    StepOutcome,
    StepRequest,
    Transport,
)

log = logging.getLogger("saga_orchestrator.engine")

MakeEvents = Callable[[SagaState], list[Event]]

RECOVERY_CONCURRENCY = 64
"""Instances resumed at once after a restart (their appends share group commits)."""
TIMER_RETRY = 1.0
"""Seconds after which a wake-up that could not be written (database away) fires again."""
CONFLICT_RETRIES = 5
"""Times an input is re-applied on a newer history after another writer moved it first."""
WAIT_POLL = 0.05
"""Seconds between reads of the store by ``Engine.wait`` for an instance this node does not
drive (another node's, or one not loaded here)."""
_NO_TIMEOUT = contextlib.nullcontext()
_SETTLING = (AttemptFailed, AttemptSucceeded)


@dataclass(slots=True, kw_only=True)
class Live:
    """An instance this node drives: its definition, its folded state, its lock."""

    definition: CompiledDefinition
    state: SagaState
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    holds_slot: bool = False
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    epoch: int = 0
    """The fencing token of this node's lease on the instance (0: no leases, one node)."""
    sure_until: float = 0.0
    """Monotonic time until which the lease certainly holds (see engine.leases)."""
    lost: bool = False
    """Another node took the instance over: this copy must not act any more."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StartResult:
    instance_id: str
    definition_name: str
    definition_version: str
    created: bool
    """False when the idempotency key returned an existing instance."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineOptions:
    max_concurrent_sagas: int = 1000
    """Instances driven at once; further starts wait for a slot (back-pressure)."""
    max_batch: int = 500
    """Instances' appends per group-commit transaction."""
    commit_lanes: int = 2
    """Group-commit transactions in flight at once (see :class:`.BatchWriter`)."""
    running_quota: Callable[[str], Awaitable[int | None]] | None = None
    """A tenant's cap on its sagas running on this node at once (None: no cap), asked at every
    start (so it should answer from memory): a start over it is refused (429) instead of
    waiting, so one tenant cannot take every slot."""
    leases: LeaseOptions | None = None
    """Several nodes share the database (PostgreSQL): each drives only the instances it holds
    a lease on. None: this is the only node, and it drives every unfinished instance."""


class Engine:
    def __init__(
        self,
        *,
        store: Store,
        definitions: DefinitionRegistry,
        transports: Sequence[Transport],
        clock: Clock | None = None,
        options: EngineOptions | None = None,
        outbox: OutboxRouting | None = None,
        integration_events: IntegrationEvents | None = None,
    ) -> None:
        self.store = store
        self.outbox = outbox
        self.integration_events = integration_events
        self.definitions = definitions
        self.transports = tuple(transports)
        self.clock = clock or SystemClock()
        self.options = options or EngineOptions()
        self.writer = BatchWriter(
            store, max_batch=self.options.max_batch, max_in_flight=self.options.commit_lanes
        )
        self.timers = TimerQueue(self._on_timer)
        self.bus = EventBus()
        self.children = ChildSagas(self)
        self.settled_listeners: list[Callable[[SagaState], None]] = []
        """Called with each instance's state when it settles (terminal or parked), whichever
        way it got there: the seam for metrics and integrations."""
        self._slots = asyncio.Semaphore(self.options.max_concurrent_sagas)
        self._per_tenant: Counter[str] = Counter()
        """Top-level instances holding a slot, per tenant."""
        self._live: dict[str, Live] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._attempt_tasks: dict[tuple[str, str, Phase, int], asyncio.Task[Any]] = {}
        """Attempts running in this process, so an attempt settled otherwise (its deadline
        passed, the saga moved on) is cancelled instead of running on unobserved."""
        self._running = False
        self.completion_tokens: CompletionTokens | None = None
        self._watch: Watch | None = None
        self.leases = self.options.leases
        self.keeper: LeaseKeeper | None = (
            None if self.leases is None else LeaseKeeper(store, self.leases, self)
        )
        self._adopting: dict[str, asyncio.Task[Live]] = {}
        """Instances being taken over by this node, so two paths never load one twice."""
        self.quarantine_listeners: list[Callable[[Sequence[InstanceRef]], None]] = []

    # -- lifecycle --
    async def start(self) -> None:
        key = await self.store.shared_secret(KEY_NAME, os.urandom(32))
        self.completion_tokens = CompletionTokens(key)
        self._watch = self.store.watch(
            self._changed_elsewhere, None if self.keeper is None else self.keeper.wake
        )
        if self._watch is not None:
            self._watch.start()
        self.writer.start()
        self.timers.start()
        self._running = True
        if self.keeper is not None:
            await self.keeper.start()
        else:
            self._spawn(self._recover_all(), "saga-recovery")

    async def stop(self, grace: float = 5.0) -> None:
        """Stop taking work, let in-flight attempts finish within ``grace`` seconds; anything
        still running then is resumed from its history at the next start."""
        self._running = False
        if self.keeper is not None:
            self.keeper.stop_claiming()
        if self._watch is not None:
            await self._watch.close()
            self._watch = None
        await self.timers.stop()
        # Effects decided while stopping are not started (_after_commit): they are durable,
        # and whoever resumes the instance performs them. Tasks already running get the grace.
        deadline = asyncio.get_running_loop().time() + grace
        while pending := [task for task in self._tasks if not task.done()]:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                break
            await asyncio.wait(pending, timeout=left)
        await self.writer.stop()
        if self.keeper is not None:
            await self.keeper.stop()
            # Whatever is still unfinished here continues on another node right away.
            await self.keeper.release(list(self._live.values()))

    # -- starting --
    async def start_saga(
        self,
        tenant_id: str,
        name: str,
        context: Any,
        *,
        version: str | None = None,
        idempotency_key: str | None = None,
        request_digest: str | None = None,
        audit: AuditEntry | None = None,
    ) -> StartResult:
        """Start an instance; returns once its start (and first dispatches) are durable.
        ``audit`` (its target filled in with the new instance's id) is recorded with it."""
        if idempotency_key is not None:
            existing = await self._existing_start(tenant_id, idempotency_key, request_digest)
            if existing is not None:
                return existing
        _check_size(context)
        definition = await self.definitions.resolve(tenant_id, name, version)
        validate_input(definition.definition, context)
        quota = (
            None
            if self.options.running_quota is None
            else await self.options.running_quota(tenant_id)
        )
        # No await between the check and the count below while a slot is free.
        self._check_quota(tenant_id, quota)
        await self._slots.acquire()
        self._per_tenant[tenant_id] += 1
        try:
            return await self.create_instance(
                definition,
                tenant_id=tenant_id,
                instance_id=str(uuid.uuid4()),
                context=context,
                idempotency_key=idempotency_key,
                request_digest=request_digest,
                audit=audit,
            )
        except DuplicateStart as duplicate:
            self._release_slot(tenant_id)
            return duplicate.existing
        except BaseException:
            self._release_slot(tenant_id)
            raise

    def _check_quota(self, tenant_id: str, quota: int | None) -> None:
        if quota is not None and self._per_tenant[tenant_id] >= quota:
            raise RateLimited(
                f"tenant {tenant_id!r} has {self._per_tenant[tenant_id]} sagas running, its quota",
                {"Retry-After": "1"},
            )

    def _release_slot(self, tenant_id: str) -> None:
        self._slots.release()
        self._per_tenant[tenant_id] -= 1
        if self._per_tenant[tenant_id] <= 0:
            del self._per_tenant[tenant_id]

    def running(self, tenant_id: str) -> int:
        """Top-level sagas of the tenant this node drives now."""
        return self._per_tenant[tenant_id]

    async def _existing_start(
        self, tenant_id: str, key: str, digest: str | None
    ) -> StartResult | None:
        found = await self.store.find_start(tenant_id, key)
        if found is None:
            return None
        instance_id, stored_digest = found
        if digest is not None and stored_digest is not None and digest != stored_digest:
            raise InvalidInput("this Idempotency-Key was already used with another request")
        record = await self.store.get_instance(tenant_id, instance_id)
        assert record is not None
        return StartResult(
            instance_id=instance_id,
            definition_name=record.definition_name,
            definition_version=record.definition_version,
            created=False,
        )

    async def create_instance(
        self,
        definition: CompiledDefinition,
        *,
        tenant_id: str,
        instance_id: str,
        context: Any,
        idempotency_key: str | None = None,
        request_digest: str | None = None,
        parent: tuple[str, str] | None = None,
        timeout: float | None = None,
        audit: AuditEntry | None = None,
    ) -> StartResult:
        now = self.clock.now()
        started = start_event(
            definition,
            tenant_id=tenant_id,
            instance_id=instance_id,
            context=context,
            now=now,
            timeout=timeout,
            parent_instance_id=parent[0] if parent else None,
            parent_node=parent[1] if parent else None,
        )
        state = fold([started])
        decision = decide(definition, state, now)
        effects, outbox = self._route(definition, decision.state, decision.effects)
        events = (started, *decision.events)
        if self.integration_events is not None:
            outbox += self.integration_events.messages(decision.state, events, 1)
        request = AppendRequest(
            tenant_id=tenant_id,
            instance_id=instance_id,
            expected_seq=0,
            events=[codec.encode(e) for e in events],
            update=_update(decision.state, now, decision.wake_at),
            outbox=outbox,
            audit=None if audit is None else replace(audit, target_id=instance_id),
            create=NewInstance(
                tenant_id=tenant_id,
                instance_id=instance_id,
                definition_name=definition.name,
                definition_version=definition.version,
                created_at=now,
                idempotency_key=idempotency_key,
                request_digest=request_digest,
                parent_instance_id=parent[0] if parent else None,
                parent_node=parent[1] if parent else None,
            ),
            lease=None if self.leases is None else self.leases.lease(0),
        )
        began = time.monotonic()
        result = await self.writer.submit(request)
        if result.status is AppendStatus.DUPLICATE_START:
            assert idempotency_key is not None
            existing = await self._existing_start(tenant_id, idempotency_key, request_digest)
            assert existing is not None
            raise DuplicateStart(existing)
        if result.status is not AppendStatus.APPENDED:
            raise SequenceConflict(f"instance {instance_id} already exists")
        self._publish(request, now)
        live = Live(definition=definition, state=decision.state, holds_slot=parent is None)
        if self.leases is not None:
            live.epoch, live.sure_until = 1, self.leases.sure_until(began)
        self._live[instance_id] = live
        self._after_commit(live, effects, decision.wake_at, wrote_outbox=bool(outbox))
        return StartResult(
            instance_id=instance_id,
            definition_name=definition.name,
            definition_version=definition.version,
            created=True,
        )

    # -- the one path by which instances change --
    async def advance(
        self,
        tenant_id: str,
        instance_id: str,
        make_events: MakeEvents,
        *,
        audit: AuditEntry | None = None,
    ) -> SagaState:
        """Apply an outside input (outcome, cancel, operator action) and what follows from it;
        ``audit`` is recorded in the same transaction as its events.

        With leases, the input is applied by the node that drives the instance: this one if it
        owns the instance or can take it (nobody's lease on it is current), else it is recorded
        here as an input alone, fenced by the sequence, and the owner decides what follows."""
        for _ in range(CONFLICT_RETRIES):
            # An instance this node drives is its own driver, leases or not: the common case
            # skips the two coroutines of _driver_of and load.
            live = self._live.get(instance_id)
            if live is None or live.lost:
                live = await self._driver_of(tenant_id, instance_id)
                if live is None:
                    return await self._record_input(tenant_id, instance_id, make_events, audit)
            elif live.state.tenant_id != tenant_id:
                raise NotFound(f"no instance {instance_id}")  # another tenant's: not found
            try:
                state = await self._advance(live, make_events, audit=audit)
            except LeaseLost:
                continue  # taken over meanwhile: now another node's to decide
            if state.status.is_settled and not live.holds_slot:
                self._live.pop(instance_id, None)  # loaded only for this input
            return state
        raise SequenceConflict(f"instance {instance_id} keeps changing under us")

    async def _driver_of(self, tenant_id: str, instance_id: str) -> Live | None:
        """The live copy through which this node applies an input, or None if another node
        drives the instance."""
        if self.leases is None:
            return await self.load(tenant_id, instance_id)
        live = self._live.get(instance_id)
        if live is not None and not live.lost:
            if live.state.tenant_id != tenant_id:
                raise NotFound(f"no instance {instance_id}")
            return live
        adopting = self._adopting.get(instance_id)
        if adopting is not None:
            adopted = await asyncio.shield(adopting)
            if adopted.state.tenant_id == tenant_id and not adopted.lost:
                return adopted
        epoch = await self.store.claim_instance(
            self.leases.node_id, self.leases.ttl, tenant_id, instance_id
        )
        if epoch is None:
            return None
        claimed = ClaimedInstance(tenant_id=tenant_id, instance_id=instance_id, epoch=epoch)
        return await asyncio.shield(self._start_adoption(claimed, take_slot=False))

    async def _record_input(
        self,
        tenant_id: str,
        instance_id: str,
        make_events: MakeEvents,
        audit: AuditEntry | None,
    ) -> SagaState:
        """Record an input for an instance another node drives: the events of the input only,
        fenced by the sequence; the owner hears of them (notification, else its next renewal)
        and decides what follows."""
        for _ in range(CONFLICT_RETRIES):
            stored = await self.store.load_events(tenant_id, instance_id)
            if not stored:
                raise NotFound(f"no instance {instance_id}")
            before = fold(codec.decode(e.type, e.data) for e in stored)
            inputs = make_events(before)
            if not inputs:
                return before
            state = before
            for event in inputs:
                state = evolve(state, event)
            record = await self.store.get_instance(tenant_id, instance_id)
            now = self.clock.now()
            request = AppendRequest(
                tenant_id=tenant_id,
                instance_id=instance_id,
                expected_seq=before.seq,
                events=[codec.encode(e) for e in inputs],
                update=_update(state, now, None if record is None else record.wake_at),
                audit=audit,
            )
            result = await self.writer.submit(request)
            if result.status is AppendStatus.APPENDED:
                self._publish(request, now)
                return state
        raise SequenceConflict(f"instance {instance_id} keeps changing under us")

    async def _advance(
        self,
        live: Live,
        make_events: MakeEvents,
        *,
        redecide: bool = False,
        catch_up: bool = False,
        unless_at: int | None = None,
        audit: AuditEntry | None = None,
    ) -> SagaState:
        async with live.lock:
            if unless_at is not None and live.state.seq >= unless_at:
                return live.state  # e.g. our own commit, heard before its writer returned
            for _ in range(CONFLICT_RETRIES):
                if live.lost:
                    raise LeaseLost(f"instance {live.state.instance_id} is driven elsewhere")
                if catch_up:
                    await self._catch_up(live)
                before = live.state
                inputs = make_events(before)
                now = self.clock.now()  # read after the inputs stamped theirs: never back
                if not inputs and not redecide and not catch_up:
                    return before
                state = before
                for event in inputs:
                    state = evolve(state, event)
                decision = decide(live.definition, state, now)
                events = [*inputs, *decision.events]
                effects, outbox = self._route(live.definition, decision.state, decision.effects)
                if self.integration_events is not None:
                    first = before.seq + 1
                    outbox += self.integration_events.messages(decision.state, events, first)
                if events:
                    request = AppendRequest(
                        tenant_id=before.tenant_id,
                        instance_id=before.instance_id,
                        expected_seq=before.seq,
                        events=[codec.encode(e) for e in events],
                        update=_update(decision.state, now, decision.wake_at),
                        outbox=outbox,
                        audit=audit,
                        lease=None if self.leases is None else self.leases.lease(live.epoch),
                    )
                    result = await self.writer.submit(request)
                    if result.status is AppendStatus.LEASE_LOST:
                        self.lost(live)
                        raise LeaseLost(f"instance {before.instance_id} was taken over")
                    if result.status is not AppendStatus.APPENDED:
                        catch_up = True  # an input recorded elsewhere: apply ours after it
                        continue
                    live.state = decision.state
                    self._publish(request, now)
                    self._cancel_settled_attempts(before.instance_id, events)
                self._after_commit(live, effects, decision.wake_at, wrote_outbox=bool(outbox))
                return live.state
            raise SequenceConflict(f"instance {live.state.instance_id} keeps changing under us")

    async def _catch_up(self, live: Live) -> None:
        """Fold into ``live`` what other writers appended since (outside inputs recorded at
        other nodes); attempts those events settled stop running here."""
        state = live.state
        stored = await self.store.load_events(state.tenant_id, state.instance_id, state.seq)
        if not stored:
            return
        events = [codec.decode(e.type, e.data) for e in stored]
        for event in events:
            state = evolve(state, event)
        live.state = state
        self._cancel_settled_attempts(state.instance_id, events)

    def _route(
        self, definition: CompiledDefinition, state: SagaState, effects: Sequence[Effect]
    ) -> tuple[Sequence[Effect], list[OutboxMessage]]:
        """Split off the dispatches that go out through the outbox: their messages are written
        in the same transaction as the events that justify them."""
        if self.outbox is None:
            return effects, []
        return route_to_outbox(self.outbox, definition, state, effects, self._request)

    def _request(self, dispatch: Dispatch, call: HttpCallSpec | AmqpCallSpec | None) -> StepRequest:
        return step_request(dispatch, call, self.completion_tokens)

    def _changed_elsewhere(self, changes: list[tuple[str, int]]) -> None:
        """A commit (maybe another node's) wrote events of these instances: wake their live
        streams here, which re-read the store (this node's own commits already reached them),
        and let this node decide after an input another node recorded for an instance it
        drives."""
        elsewhere: list[str] = []
        for instance_id, last_seq in changes:
            live = self._live.get(instance_id)
            if live is None:
                elsewhere.append(instance_id)
            elif last_seq > live.state.seq and self.leases is not None:
                self._spawn(self._decide_after(live, last_seq), f"saga-input-{instance_id}")
        if elsewhere:
            self.bus.nudge(elsewhere)

    async def _decide_after(self, live: Live, last_seq: int | None = None) -> None:
        if last_seq is not None and live.state.seq >= last_seq:
            return  # our own commit, heard before its writer returned
        try:
            # Checked again under the lock: our own append may be committing right now.
            await self._advance(live, lambda _state: [], catch_up=True, unless_at=last_seq)
        except SagaError as error:
            log.info("could not act on input to %s: %s", live.state.instance_id, error)

    # -- leases (engine.leases.Driver) --
    def owned(self) -> list[Live]:
        return [live for live in self._live.values() if live.epoch]

    def free_capacity(self) -> int:
        if not self._running:
            return 0
        # Adoptions under way take their slot only once loaded: count them already.
        taken = sum(self._per_tenant.values()) + len(self._adopting)
        return self.options.max_concurrent_sagas - taken

    def adopt(self, claimed: ClaimedInstance) -> None:
        """Drive an instance this node just claimed (its previous owner went silent)."""
        if claimed.instance_id not in self._live and claimed.instance_id not in self._adopting:
            task = self._start_adoption(claimed, take_slot=True)
            task.add_done_callback(_log_failure)

    def _start_adoption(self, claimed: ClaimedInstance, *, take_slot: bool) -> asyncio.Task[Live]:
        existing = self._adopting.get(claimed.instance_id)
        if existing is not None:
            return existing
        task = asyncio.create_task(
            self._adopt(claimed, take_slot=take_slot), name=f"saga-adopt-{claimed.instance_id}"
        )
        self._adopting[claimed.instance_id] = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _t: self._adopting.pop(claimed.instance_id, None))
        return task

    async def _adopt(self, claimed: ClaimedInstance, *, take_slot: bool) -> Live:
        began = time.monotonic()
        live = await self._read(claimed.tenant_id, claimed.instance_id)
        assert self.leases is not None
        live.epoch, live.sure_until = claimed.epoch, self.leases.sure_until(began)
        current = self._live.get(claimed.instance_id)
        if current is not None and not current.lost:
            if current.epoch == claimed.epoch:
                return current
            self.lost(current)  # this node's own lease had lapsed: its old copy stops
        self._live[claimed.instance_id] = live
        try:
            await self._resume_live(live, take_slot=take_slot)
        except BaseException:
            self.lost(live)  # not driven here after all: let the lease lapse for another claim
            raise
        return live

    def lost(self, live: Live) -> None:
        """Another node took ``live`` over: stop driving it here at once."""
        if live.lost:
            return
        live.lost = True
        if not live.settled.is_set():
            # Wake whoever waits for it to settle here: they read on from the store.
            live.settled.set()
            live.settled.clear()
        instance_id = live.state.instance_id
        if self._live.get(instance_id) is live:
            del self._live[instance_id]
        if live.holds_slot:
            live.holds_slot = False
            self._release_slot(live.state.tenant_id)
        for key, task in list(self._attempt_tasks.items()):
            if key[0] == instance_id and task is not asyncio.current_task():
                task.cancel()

    def moved_elsewhere(self, live: Live, last_seq: int) -> None:
        self._spawn(self._decide_after(live, last_seq), f"saga-input-{live.state.instance_id}")

    def quarantined(self, refs: Sequence[InstanceRef]) -> None:
        for ref in refs:
            log.error(
                "instance %s of tenant %s was orphaned too often: quarantined for an operator",
                ref.instance_id,
                ref.tenant_id,
            )
        for listener in self.quarantine_listeners:
            listener(refs)

    def _cancel_settled_attempts(self, instance_id: str, events: Sequence[Event]) -> None:
        for event in events:
            if isinstance(event, _SETTLING):
                key = (instance_id, event.node, event.phase, event.attempt)
                task = self._attempt_tasks.get(key)
                # The current task is looked up only for a match: an attempt recording its
                # own outcome has left _attempt_tasks already.
                if task is not None and task is not asyncio.current_task():
                    task.cancel()

    def _publish(self, request: AppendRequest, recorded_at: Any) -> None:
        if not self.bus.has_subscribers(request.instance_id):
            return
        self.bus.publish(
            [
                CommittedEvent(
                    tenant_id=request.tenant_id,
                    instance_id=request.instance_id,
                    seq=request.expected_seq + offset,
                    type=kind,
                    data=data,
                    recorded_at=recorded_at,
                )
                for offset, (kind, data) in enumerate(request.events, start=1)
            ]
        )

    def _after_commit(
        self, live: Live, effects: Sequence[Effect], wake_at: Any, *, wrote_outbox: bool = False
    ) -> None:
        if wrote_outbox and self.outbox is not None:
            self.outbox.wake()
        state = live.state
        if state.status.is_settled:
            self._settle(live)
        else:
            live.settled.clear()  # an operator may have resumed a parked instance
            if wake_at is not None:
                self.timers.schedule(state.tenant_id, state.instance_id, wake_at)
        if not self._running:
            return  # stopping: the effects are durable; the next driver performs them
        for effect in effects:
            self._spawn(self._perform(effect, live), f"saga-effect-{state.instance_id}")

    def _settle(self, live: Live) -> None:
        if live.settled.is_set():
            return  # announced already (a re-decision that changed nothing)
        live.settled.set()
        for listener in self.settled_listeners:
            try:
                listener(live.state)
            except Exception:  # a listener's bug must not stop the engine
                log.exception("settled listener failed")
        if live.holds_slot:
            live.holds_slot = False
            self._release_slot(live.state.tenant_id)
        self._live.pop(live.state.instance_id, None)

    # -- effects --
    async def _perform(self, effect: Effect, live: Live) -> None:
        try:
            if isinstance(effect, Dispatch):
                await self._dispatch(effect, live)
            elif isinstance(effect, StartChild):
                await self.children.start(effect)
            elif isinstance(effect, CompensateChild):
                await self.children.compensate(effect)
            elif isinstance(effect, ReportToParent):
                await self.children.report(effect)
        except SagaError as error:
            # The attempt stays in flight; its durable deadline turns it into a retry.
            log.warning("effect %s failed: %s", type(effect).__name__, error)

    async def _dispatch(self, dispatch: Dispatch, live: Live) -> None:
        if self.keeper is not None and not await self.keeper.sure(live):
            # The lease may have passed to another node: it re-attempts the step itself.
            log.warning("not calling %s of %s: lease in doubt", dispatch.node, dispatch.instance_id)
            return
        try:
            call = render_call(live.definition, live.state, dispatch)
        except ExpressionError as error:
            failure = ErrorInfo(type="ExpressionError", message=str(error), retryable=False)
            outcome = StepOutcome(error=failure)
        else:
            outcome = await self._call(dispatch, self._request(dispatch, call))
        if outcome.accepted:
            await self._record_here(dispatch, live, self._accepted_events(dispatch))
            return
        make = self._outcome_events(
            node=dispatch.node, phase=dispatch.phase, attempt=dispatch.attempt, outcome=outcome
        )
        await self._record_here(dispatch, live, make)

    async def _record_here(self, dispatch: Dispatch, live: Live, make: MakeEvents) -> None:
        """Record what this node's own call gave. With leases, only while this node still
        drives the instance: a deposed owner's late results are dropped (the new owner
        already treats the attempt as interrupted)."""
        if self.leases is None:
            await self.advance(dispatch.tenant_id, dispatch.instance_id, make)
        elif not live.lost:
            await self._advance(live, make)

    async def _call(self, dispatch: Dispatch, request: StepRequest) -> StepOutcome:
        attempt = (dispatch.instance_id, dispatch.node, dispatch.phase, dispatch.attempt)
        task = asyncio.current_task()
        assert task is not None
        self._attempt_tasks[attempt] = task
        try:
            return await self._transport_for(dispatch).call(request)
        except Exception as error:  # a transport's bug must not leave the attempt hanging
            log.exception("transport failed on %s of %s", dispatch.node, dispatch.instance_id)
            failure = ErrorInfo(
                type="TransportError",
                message=f"{type(error).__name__}: {error}"[:500],
                retryable=True,
                unknown=True,  # it may have been sent before failing
            )
            return StepOutcome(error=failure)
        finally:
            self._attempt_tasks.pop(attempt, None)

    def _accepted_events(self, dispatch: Dispatch) -> MakeEvents:
        def make(state: SagaState) -> list[Event]:
            return accepted_events(
                state,
                node=dispatch.node,
                phase=dispatch.phase,
                attempt=dispatch.attempt,
                now=self.clock.now(),
            )

        return make

    def _transport_for(self, dispatch: Dispatch) -> Transport:
        for transport in self.transports:
            if transport.accepts(dispatch.target):
                return transport
        return _Unreachable()

    async def record_outcome(
        self,
        tenant_id: str,
        instance_id: str,
        *,
        node: str,
        phase: Phase,
        attempt: int,
        outcome: StepOutcome,
    ) -> None:
        make = self._outcome_events(node=node, phase=phase, attempt=attempt, outcome=outcome)
        await self.advance(tenant_id, instance_id, make)

    def _outcome_events(
        self, *, node: str, phase: Phase, attempt: int, outcome: StepOutcome
    ) -> MakeEvents:
        def make(state: SagaState) -> list[Event]:
            return outcome_events(
                state,
                node=node,
                phase=phase,
                attempt=attempt,
                now=self.clock.now(),
                output=outcome.output,
                error=outcome.error,
            )

        return make

    async def record_reply(
        self,
        tenant_id: str,
        instance_id: str,
        *,
        node: str,
        phase: Phase,
        attempt: int,
        outcome: StepOutcome,
    ) -> None:
        """A worker's reply over RabbitMQ. NotFound for an instance or step that does not
        exist (the consumer dead-letters it); a duplicate or late reply changes nothing."""
        live = await self.load(tenant_id, instance_id)
        if node not in live.definition.nodes:
            raise NotFound(f"instance {instance_id} has no step {node!r}")
        await self.record_outcome(
            tenant_id, instance_id, node=node, phase=phase, attempt=attempt, outcome=outcome
        )

    # -- asynchronous completion (callbacks authorized by completion tokens) --
    def attempt_of(self, token: str, instance_id: str, node: str) -> AttemptRef:
        """The attempt a completion token names; InvalidCompletionToken if it is forged or
        names another instance or step."""
        if self.completion_tokens is None:
            raise InvalidCompletionToken("the engine is not started")
        ref = self.completion_tokens.verify(token)
        if ref.instance_id != instance_id or ref.node != node:
            raise InvalidCompletionToken("the completion token is for another step")
        return ref

    async def complete_attempt(
        self,
        token: str,
        *,
        instance_id: str,
        node: str,
        outcome: StepOutcome,
        audit: AuditEntry | None = None,
    ) -> SagaState:
        """A participant finishes an accepted attempt. Refused (AttemptNotInFlight) once the
        attempt is over: timed out, superseded by a retry, or already completed."""
        ref = self.attempt_of(token, instance_id, node)

        def make(state: SagaState) -> list[Event]:
            if not is_current_attempt(state, ref.node, ref.phase, ref.attempt):
                raise AttemptNotInFlight("this attempt is over; its completion token expired")
            return outcome_events(
                state,
                node=ref.node,
                phase=ref.phase,
                attempt=ref.attempt,
                now=self.clock.now(),
                output=outcome.output,
                error=outcome.error,
            )

        return await self.advance(ref.tenant_id, instance_id, make, audit=audit)

    async def heartbeat_attempt(
        self, token: str, *, instance_id: str, node: str, audit: AuditEntry | None = None
    ) -> SagaState:
        """A participant still working on an attempt extends its deadline by the step's
        timeout (the compensation timeout for a compensation)."""
        ref = self.attempt_of(token, instance_id, node)
        live = await self.load(ref.tenant_id, instance_id)
        spec = live.definition.nodes[ref.node]
        extend_by = spec.timeout if ref.phase is Phase.ACTION else spec.compensation_timeout

        def make(state: SagaState) -> list[Event]:
            try:
                return heartbeat_events(
                    state,
                    node=ref.node,
                    phase=ref.phase,
                    attempt=ref.attempt,
                    now=self.clock.now(),
                    extend_by=extend_by,
                )
            except InvalidTransition as error:
                raise AttemptNotInFlight(str(error)) from None

        return await self.advance(ref.tenant_id, instance_id, make, audit=audit)

    # -- timers and recovery --
    async def _on_timer(self, tenant_id: str, instance_id: str) -> None:
        live = self._live.get(instance_id)
        if live is None:
            return
        try:
            await self._advance(live, lambda _state: [], redecide=True)
        except LeaseLost:
            return  # another node drives it now, with its own timers
        except StoreError as error:
            # The database is away: the wake-up is not lost, it comes again shortly.
            log.warning(
                "timer of %s failed (%s): retrying in %s s", instance_id, error, TIMER_RETRY
            )
            retry_at = self.clock.now() + timedelta(seconds=TIMER_RETRY)
            self.timers.schedule(tenant_id, instance_id, retry_at)

    async def _recover_all(self) -> None:
        """Resume every unfinished instance, many at once so their appends share commits."""
        gate = asyncio.Semaphore(RECOVERY_CONCURRENCY)

        async def one(ref: InstanceRef) -> None:
            async with gate:
                if not self._running or ref.instance_id in self._live:
                    return
                try:
                    await self.resume(ref.tenant_id, ref.instance_id)
                except SagaError as error:
                    log.error("could not resume %s: %s", ref.instance_id, error)

        await asyncio.gather(*(one(ref) for ref in await self.store.list_unfinished()))

    async def resume(self, tenant_id: str, instance_id: str) -> None:
        """Pick an instance up from its history after a crash."""
        await self._resume_live(await self.load(tenant_id, instance_id), take_slot=True)

    async def _resume_live(self, live: Live, *, take_slot: bool) -> None:
        state = live.state
        top_level = state.parent_instance_id is None and not state.status.is_settled
        if take_slot and top_level and not live.holds_slot:
            await self._slots.acquire()
            self._per_tenant[state.tenant_id] += 1
            live.holds_slot = True
        events, effects = recover(live.definition, state, self.clock.now())
        await self._advance(live, lambda _state: events, redecide=True)
        for effect in effects:
            self._spawn(self._perform(effect, live), f"saga-recover-{state.instance_id}")

    async def load(self, tenant_id: str, instance_id: str) -> Live:
        """The instance as this node knows it. With leases, an instance this node does not
        drive comes back detached (for reading): only adoption makes a copy live here."""
        live = self._live.get(instance_id)
        if live is not None and not live.lost:
            if live.state.tenant_id != tenant_id:
                raise NotFound(f"no instance {instance_id}")  # another tenant's: not found
            return live
        read = await self._read(tenant_id, instance_id)
        if self.leases is not None:
            return read
        return self._live.setdefault(instance_id, read)

    async def _read(self, tenant_id: str, instance_id: str) -> Live:
        stored = await self.store.load_events(tenant_id, instance_id)
        if not stored:
            raise NotFound(f"no instance {instance_id}")
        state = fold(codec.decode(e.type, e.data) for e in stored)
        definition = await self.definitions.get(
            tenant_id, state.definition_name, state.definition_version
        )
        live = Live(definition=definition, state=state)
        if state.status.is_settled:
            live.settled.set()
        return live

    # -- reading --
    async def state(self, tenant_id: str, instance_id: str) -> SagaState:
        live = self._live.get(instance_id)
        if live is not None and live.state.tenant_id == tenant_id:
            return live.state
        stored = await self.store.load_events(tenant_id, instance_id)
        if not stored:
            raise NotFound(f"no instance {instance_id}")
        return fold(codec.decode(e.type, e.data) for e in stored)

    async def wait(
        self, tenant_id: str, instance_id: str, timeout: float | None = None
    ) -> SagaState:
        """Until the instance is settled (terminal, or parked for an operator).

        An instance this node drives wakes its waiters when it settles, or when this node
        stops driving it (``lost``): then, as for an instance driven elsewhere or not loaded,
        the store is read every ``WAIT_POLL`` seconds."""
        live = self._live.get(instance_id)
        if live is not None and live.settled.is_set() and live.state.tenant_id == tenant_id:
            return live.state  # no timer armed for what is already over
        # Without a timeout, asyncio.timeout(None) would still cost a Timeout object and a
        # look-up of the current task on every wait.
        limit = _NO_TIMEOUT if timeout is None else asyncio.timeout(timeout)
        async with limit:
            while True:
                live = self._live.get(instance_id)
                if live is None or live.lost or live.state.tenant_id != tenant_id:
                    state = await self.state(tenant_id, instance_id)
                    if state.status.is_settled:
                        return state
                    await asyncio.sleep(WAIT_POLL)
                    continue
                await live.settled.wait()
                if live.settled.is_set():
                    return live.state

    def _spawn(self, coroutine: Any, name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def live_instances(self) -> int:
        return len(self._live)


MAX_CONTEXT_BYTES = 1_000_000
"""A start context is stored in the first event: keep histories (and replays) bounded."""


def _check_size(context: Any) -> None:
    try:
        size = len(orjson.dumps(context))
    except TypeError as error:
        raise InvalidInput(f"the context is not JSON: {error}") from error
    if size > MAX_CONTEXT_BYTES:
        raise InvalidInput(f"the context is {size} bytes; the limit is {MAX_CONTEXT_BYTES}")


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("taking over an instance failed", exc_info=task.exception())


class DuplicateStart(SagaError):
    def __init__(self, existing: StartResult) -> None:
        super().__init__("duplicate start")
        self.existing = existing


class _Unreachable:
    """No transport reaches the target: a definite failure, visible in the history."""

    def accepts(self, target: Any) -> bool:
        return True

    async def call(self, request: StepRequest) -> StepOutcome:
        kind = type(request.target).__name__
        error = ErrorInfo(
            type="TransportUnavailable",
            message=f"no transport for {kind} targets is configured on this node",
            retryable=True,
        )
        return StepOutcome(error=error)


def _update(state: SagaState, now: Any, wake_at: Any) -> InstanceUpdate:
    return InstanceUpdate(
        status=state.status,
        current_nodes=tuple(state.in_flight()),
        updated_at=now,
        wake_at=wake_at,
    )


__all__ = ["Engine", "EngineOptions", "StartResult"]
