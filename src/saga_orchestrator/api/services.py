"""The narrow services between the routes and the node: what the API may ask of the engine and
of the store's read side, every call naming its tenant. Routes never reach past these."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from saga_orchestrator.api.audit import audit_entry, current_context
from saga_orchestrator.api.feed import EventFeed
from saga_orchestrator.core.events import Event
from saga_orchestrator.core.operations import (
    operator_resolve,
    operator_retry,
    operator_skip,
    request_cancel,
)
from saga_orchestrator.core.state import SagaState
from saga_orchestrator.core.status import InstanceStatus
from saga_orchestrator.core.view import InstanceView, describe
from saga_orchestrator.definition.loader import definition_digest, parse_definition
from saga_orchestrator.definition.schema import language_json_schema
from saga_orchestrator.engine.clock import Clock
from saga_orchestrator.engine.definitions import DefinitionRegistry, Registration
from saga_orchestrator.engine.runtime import Engine, StartResult
from saga_orchestrator.errors import InvalidInput, NotFound, SagaError, StoreError
from saga_orchestrator.store import (
    AuditEntry,
    DefinitionRecord,
    InstanceFilter,
    InstancePage,
    PostgresStore,
    SqliteStore,
    Store,
    StoredEvent,
)
from saga_orchestrator.store.migrator import latest_version

Format = Literal["json", "yaml"]


class StartInProgress(SagaError):
    """A start with the same idempotency key is still being made durable."""


class NotReady(SagaError):
    """The node cannot serve yet: the database schema is not the one this code expects."""


# --- definitions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Registered:
    outcome: Registration
    name: str
    version: str
    digest: str


class DefinitionService:
    def __init__(self, registry: DefinitionRegistry, store: Store) -> None:
        self._registry = registry
        self._store = store
        self._schema: dict[str, Any] | None = None

    async def register(self, tenant_id: str, body: bytes, format: Format | None) -> Registered:  # noqa: A002
        definition = parse_definition(body, format=format)
        digest = definition_digest(definition)
        audit = audit_entry(
            tenant_id,
            "definition.register",
            "definition",
            f"{definition.name}@{definition.version}",
            details={"digest": digest},
        )
        outcome = await self._registry.register(tenant_id, definition, audit=audit)
        return Registered(
            outcome=outcome, name=definition.name, version=definition.version, digest=digest
        )

    async def latest(self, tenant_id: str, prefix: str = "") -> list[DefinitionRecord]:
        """The highest version of each definition whose name starts with ``prefix``."""
        latest: list[DefinitionRecord] = []
        for name in await self._store.list_definition_names(tenant_id, prefix):
            versions = await self._store.list_definition_versions(tenant_id, name)
            if versions:
                latest.append(versions[-1])
        return latest

    async def versions(self, tenant_id: str, name: str) -> list[DefinitionRecord]:
        """Every version of ``name``, lowest first."""
        versions = await self._store.list_definition_versions(tenant_id, name)
        if not versions:
            raise NotFound(f"no definition named {name!r}")
        return versions

    async def get(self, tenant_id: str, name: str, version: str) -> DefinitionRecord:
        record = await self._store.get_definition(tenant_id, name, version)
        if record is None:
            raise NotFound(f"no definition {name} {version}")
        return record

    async def deprecate(self, tenant_id: str, name: str, version: str) -> DefinitionRecord:
        audit = audit_entry(tenant_id, "definition.deprecate", "definition", f"{name}@{version}")
        await self._registry.deprecate(tenant_id, name, version, audit=audit)
        return await self.get(tenant_id, name, version)

    def language_schema(self) -> dict[str, Any]:
        if self._schema is None:
            self._schema = language_json_schema()
        return self._schema


def document_of(record: DefinitionRecord) -> dict[str, Any]:
    document: dict[str, Any] = orjson.loads(record.body)
    return document


def description_of(record: DefinitionRecord) -> str | None:
    description = document_of(record).get("description")
    return description if isinstance(description, str) else None


# --- instances --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Started:
    result: StartResult
    status: InstanceStatus


MakeEvents = Callable[[SagaState], list[Event]]


class InstanceService:
    def __init__(
        self,
        *,
        engine: Engine,
        store: Store,
        clock: Clock,
        on_started: Callable[[str, str], None] = lambda _tenant, _name: None,
    ) -> None:
        self._engine = engine
        self._store = store
        self._clock = clock
        self._on_started = on_started
        self._starting: dict[tuple[str, str], str] = {}
        """Idempotency keys whose start is in flight in this process, with the request digest."""

    async def start(
        self,
        tenant_id: str,
        saga_name: str,
        *,
        version: str | None,
        context: Any,
        idempotency_key: str | None,
    ) -> Started:
        """Start an instance; return once the start is durable (``created`` False: the key
        named an existing instance)."""
        body = {} if context is None else context
        digest = start_digest(saga_name, version, body)
        slot = None if idempotency_key is None else (tenant_id, idempotency_key)
        if slot is not None:
            self._claim(slot, digest)
        try:
            result = await self._engine.start_saga(
                tenant_id,
                saga_name,
                body,
                version=version,
                idempotency_key=idempotency_key,
                request_digest=digest,
                audit=audit_entry(
                    tenant_id,
                    "instance.start",
                    "instance",
                    "",
                    details={"saga_name": saga_name, "version": version},
                ),
            )
        finally:
            if slot is not None:
                del self._starting[slot]
        if result.created:
            self._on_started(tenant_id, result.definition_name)
        state = await self._engine.state(tenant_id, result.instance_id)
        return Started(result=result, status=state.status)

    def _claim(self, slot: tuple[str, str], digest: str) -> None:
        in_flight = self._starting.get(slot)
        if in_flight is None:
            self._starting[slot] = digest
        elif in_flight != digest:
            raise InvalidInput("this Idempotency-Key was already used with another request")
        else:
            raise StartInProgress(
                "a start with this Idempotency-Key is still in progress; retry shortly"
            )

    @property
    def store(self) -> Store:
        return self._store

    async def list_instances(
        self, tenant_id: str, filters: InstanceFilter, *, limit: int, cursor: str | None
    ) -> InstancePage:
        return await self._store.list_instances(tenant_id, filters, limit=limit, cursor=cursor)

    async def get(self, tenant_id: str, instance_id: str) -> InstanceView:
        return describe(await self._state(tenant_id, instance_id))

    async def _state(self, tenant_id: str, instance_id: str) -> SagaState:
        # The engine finds the instances it drives by id alone: the tenant is checked here.
        state = await self._engine.state(tenant_id, instance_id)
        if state.tenant_id != tenant_id:
            raise NotFound(f"no instance {instance_id}")
        return state

    async def require(self, tenant_id: str, instance_id: str) -> None:
        if await self._store.get_instance(tenant_id, instance_id) is None:
            raise NotFound(f"no instance {instance_id}")

    async def events(
        self, tenant_id: str, instance_id: str, *, after: int, limit: int
    ) -> tuple[list[StoredEvent], bool]:
        """A page of the history after ``after``, and whether more events follow."""
        await self.require(tenant_id, instance_id)
        events = await self._store.load_events(
            tenant_id, instance_id, after_seq=after, limit=limit + 1
        )
        return events[:limit], len(events) > limit

    def feed(
        self, tenant_id: str, instance_id: str, *, after: int, poll_interval: float
    ) -> EventFeed:
        return EventFeed(
            store=self._store,
            bus=self._engine.bus,
            tenant_id=tenant_id,
            instance_id=instance_id,
            after=after,
            poll_interval=poll_interval,
        )

    # -- operator actions: events in the history, naming the reason and the actor --
    async def cancel(self, tenant_id: str, instance_id: str, reason: str) -> InstanceView:
        return await self._act(
            tenant_id,
            instance_id,
            lambda s: request_cancel(s, reason, self._clock.now()),
            audit_entry(tenant_id, "instance.cancel", "instance", instance_id, reason=reason),
        )

    async def retry(self, tenant_id: str, instance_id: str, reason: str) -> InstanceView:
        return await self._act(
            tenant_id,
            instance_id,
            lambda s: operator_retry(s, reason, self._actor_now(), self._clock.now()),
            audit_entry(tenant_id, "instance.retry", "instance", instance_id, reason=reason),
        )

    async def skip(self, tenant_id: str, instance_id: str, node: str, reason: str) -> InstanceView:
        state = await self._state(tenant_id, instance_id)
        definition = await self._engine.definitions.get(
            tenant_id, state.definition_name, state.definition_version
        )
        return await self._act(
            tenant_id,
            instance_id,
            lambda s: operator_skip(
                definition,
                s,
                node=node,
                reason=reason,
                actor=self._actor_now(),
                now=self._clock.now(),
            ),
            audit_entry(
                tenant_id,
                "instance.skip",
                "instance",
                instance_id,
                reason=reason,
                details={"step": node},
            ),
        )

    async def resolve(self, tenant_id: str, instance_id: str, reason: str) -> InstanceView:
        return await self._act(
            tenant_id,
            instance_id,
            lambda s: operator_resolve(s, reason, self._actor_now(), self._clock.now()),
            audit_entry(tenant_id, "instance.resolve", "instance", instance_id, reason=reason),
        )

    @staticmethod
    def _actor_now() -> str:
        """The caller, as the history names operators: the token's subject (or the API's
        configured actor when the app authenticates nobody)."""
        return current_context().actor

    async def _act(
        self, tenant_id: str, instance_id: str, make: MakeEvents, audit: AuditEntry
    ) -> InstanceView:
        await self._state(tenant_id, instance_id)
        state = await self._engine.advance(tenant_id, instance_id, make, audit=audit)
        return describe(state)


def start_digest(saga_name: str, version: str | None, context: Any) -> str:
    """What an idempotency key is bound to; the same digest as the Python SDK's starts.

    Also refuses what the history cannot hold: NUL characters (PostgreSQL's jsonb refuses
    them) and text that is not valid Unicode."""
    try:
        encoded = orjson.dumps([saga_name, version, context], option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError as error:
        raise InvalidInput(f"the context cannot be stored as JSON: {error}") from None
    if b"\\u0000" in encoded:
        raise InvalidInput("the context must not contain NUL characters")
    return hashlib.sha256(encoded).hexdigest()


# --- health -----------------------------------------------------------------------------------


class HealthService:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def ready(self) -> int:
        """The schema version, if the store answers and it is the one this code expects."""
        try:
            applied = await self._store.schema_version()
        except StoreError as error:
            raise NotReady("the database cannot be reached") from error
        expected = expected_schema_version(self._store)
        if expected is not None and applied != expected:
            raise NotReady(f"database schema version {applied}, this node needs {expected}")
        if applied < 1:
            raise NotReady("the database is not migrated")
        return applied


def expected_schema_version(store: Store) -> int | None:
    """The latest migration of the store's dialect (None for a store of another kind)."""
    if isinstance(store, SqliteStore):
        return latest_version("sqlite")
    if isinstance(store, PostgresStore):
        return latest_version("postgres")
    return None


__all__ = [
    "DefinitionService",
    "HealthService",
    "InstanceService",
    "NotReady",
    "Registered",
    "StartInProgress",
    "Started",
    "description_of",
    "document_of",
    "expected_schema_version",
]
