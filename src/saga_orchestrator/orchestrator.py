"""Embedded use from Python: a whole orchestrator node inside any asyncio application.

    async with Orchestrator("sqlite:///saga.db", handlers=[reserve, release]) as saga:
        await saga.register(order_definition)
        started = await saga.start("order", {"sku": "A-1"})
        view = await saga.wait(started.instance_id)

This is also the one place (with the CLI and the API's app factory) that wires store,
registry, transports and engine together; everything is passed in, nothing is global.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from datetime import timedelta
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from types import TracebackType
from typing import Any, Self, TypedDict

import orjson

from saga_orchestrator.core import codec
from saga_orchestrator.core.events import Event
from saga_orchestrator.core.operations import (
    operator_resolve,
    operator_retry,
    operator_skip,
    request_cancel,
)
from saga_orchestrator.core.view import InstanceView, describe
from saga_orchestrator.definition.features import FeatureFlags
from saga_orchestrator.definition.loader import parse_definition
from saga_orchestrator.definition.models import SagaDefinition
from saga_orchestrator.definition.participants import ParticipantRecord, ParticipantService
from saga_orchestrator.engine.calls import OutboxRouting
from saga_orchestrator.engine.clock import Clock, SystemClock
from saga_orchestrator.engine.cluster import Chore, ClusterMember
from saga_orchestrator.engine.collector import tune_garbage_collector
from saga_orchestrator.engine.definitions import DefinitionRegistry, Registration
from saga_orchestrator.engine.integration import IntegrationEvents
from saga_orchestrator.engine.leases import LeaseOptions
from saga_orchestrator.engine.participants import ParticipantRegistry
from saga_orchestrator.engine.relay import OutboxRelay
from saga_orchestrator.engine.retention import RetentionChore
from saga_orchestrator.engine.runtime import Engine, EngineOptions, StartResult
from saga_orchestrator.errors import ConfigurationError, SagaError
from saga_orchestrator.security.tenant_limits import NO_CEILINGS, LimitCeilings, TenantLimitsBook
from saga_orchestrator.store import PostgresOptions, PostgresStore, Store, open_store
from saga_orchestrator.store.encryption import EventCipher
from saga_orchestrator.transports.amqp import AmqpPublisher, AmqpSettings, ReplyConsumer
from saga_orchestrator.transports.amqp_messages import StepReply
from saga_orchestrator.transports.base import Transport
from saga_orchestrator.transports.breaker import BreakerBook, BreakerSnapshot
from saga_orchestrator.transports.handlers import HandlerRegistry
from saga_orchestrator.transports.http import HttpTransport, Resolver
from saga_orchestrator.transports.inprocess import InProcessTransport
from saga_orchestrator.transports.secrets import SecretPolicy

log = logging.getLogger("saga_orchestrator")

DEFAULT_DATABASE_URL = "sqlite:///saga.db"
DEFAULT_TENANT = "default"


class Orchestrator:
    def __init__(
        self,
        database_url: str = DEFAULT_DATABASE_URL,
        *,
        handlers: Iterable[Callable[..., Any]] | HandlerRegistry = (),
        max_concurrent_sagas: int = 1000,
        tenant_id: str = DEFAULT_TENANT,
        clock: Clock | None = None,
        store: Store | None = None,
        transports: Iterable[Transport] = (),
        require_known_handlers: bool = True,
        features: FeatureFlags | None = None,
        callback_base_url: str | None = None,
        resolver: Resolver | None = None,
        amqp_url: str | None = None,
        integration_event_tenants: Iterable[str] = (),
        max_running_sagas_per_tenant: int | None = None,
        limit_ceilings: LimitCeilings = NO_CEILINGS,
        encryption_keys: str | None = None,
        node_id: str | None = None,
        node_address: str = "embedded",
        cluster: bool = False,
        lease_ttl: float = 10.0,
        leader_lease_ttl: float = 10.0,
        database_pool_size: int | None = None,
        database_app_url: str | None = None,
        database_cluster_url: str | None = None,
        claim_poll_interval: float = 1.0,
        max_takeovers: int = 3,
        retention_days: float | None = None,
        tune_gc: bool = False,
        secrets: SecretPolicy | None = None,
    ) -> None:
        """``secrets``: what the secret references of participant services may reach; by
        default environment variables ``SAGA_SECRET_*`` for ``tenant_id`` only, and no files.

        ``tune_gc``: at :meth:`open`, tune this process's garbage collector for throughput
        (:func:`~saga_orchestrator.engine.collector.tune_garbage_collector`: freeze the start-up
        heap, raise the thresholds; about 20 % less CPU per saga under load). Off by default
        because it is process-wide state that belongs to the host application."""
        self.handlers = (
            handlers if isinstance(handlers, HandlerRegistry) else HandlerRegistry(handlers)
        )
        self.tenant_id = tenant_id
        self.clock = clock or SystemClock()
        cipher = None if not encryption_keys else EventCipher.parse(encryption_keys)
        postgres = PostgresOptions(app_url=database_app_url, cluster_url=database_cluster_url)
        if database_pool_size is not None:
            postgres = replace(postgres, max_size=database_pool_size)
        self.store = store or open_store(database_url, cipher=cipher, postgres=postgres)
        if cluster and not isinstance(self.store, PostgresStore):
            raise ConfigurationError(
                "CLUSTER_ENABLED needs a PostgreSQL DATABASE_URL: an embedded SQLite file "
                "serves a single node"
            )
        secrets = secrets if secrets is not None else SecretPolicy.of([tenant_id])
        self.participants = ParticipantRegistry(self.store, secrets=secrets)
        # The ceilings bind what the API lets a tenant's admins set; embedded, the caller is
        # the operator and none is needed.
        self.tenant_limits = TenantLimitsBook(self.store, ceilings=limit_ceilings)
        self.max_running_sagas_per_tenant = max_running_sagas_per_tenant
        """The node's default cap; a tenant's overrides (:attr:`tenant_limits`) may change it,
        up to their ceiling."""
        self.definitions = DefinitionRegistry(
            self.store,
            known_handlers=self.handlers.names if require_known_handlers else lambda: None,
            known_services=self.participants.names,
            features=features,
        )
        self.breakers = BreakerBook()
        self.http = HttpTransport(
            self.participants,
            breakers=self.breakers,
            resolver=resolver,
            callback_base_url=callback_base_url,
            secrets=secrets,
        )
        self.amqp: AmqpSettings | None = None if amqp_url is None else AmqpSettings(amqp_url)
        self.publisher: AmqpPublisher | None = None
        self.relay: OutboxRelay | None = None
        self.replies: ReplyConsumer | None = None
        routing: OutboxRouting | None = None
        if self.amqp is not None:
            self.publisher = AmqpPublisher(self.amqp)
            self.relay = OutboxRelay(self.store, self.publisher)
            self.replies = ReplyConsumer(self.amqp, self._on_reply)
            routing = OutboxRouting(local_handlers=self.handlers.names, wake=self.relay.wake)
        node_id = node_id or default_node_id()
        self.member = ClusterMember(
            store=self.store,
            node_id=node_id,
            address=node_address,
            version=_version(),
            ttl=leader_lease_ttl,
            margin=min(2.0, leader_lease_ttl / 4),
        )
        if self.relay is not None:
            relay = self.relay
            relay.fence = self.member.fence
            self.member.chores.append(
                Chore(name="outbox relay", start=relay.start, stop=relay.stop)
            )
        self.retention: RetentionChore | None = None
        if retention_days is not None:
            self.retention = RetentionChore(self.store, timedelta(days=retention_days))
            chore = self.retention
            self.member.chores.append(Chore(name="retention", start=chore.start, stop=chore.stop))
        tenants = list(integration_event_tenants)
        if tenants and self.amqp is None:
            raise ConfigurationError("integration events are published to RabbitMQ: set AMQP_URL")
        self.engine = Engine(
            store=self.store,
            outbox=routing,
            integration_events=IntegrationEvents.for_tenants(tenants) if tenants else None,
            definitions=self.definitions,
            transports=[
                InProcessTransport(self.handlers, enforce_timeout=False),
                self.http,
                *transports,
            ],
            clock=self.clock,
            options=EngineOptions(
                **_write_profile(self.store),
                max_concurrent_sagas=max_concurrent_sagas,
                running_quota=self.running_quota,
                leases=LeaseOptions(
                    node_id=node_id,
                    ttl=lease_ttl,
                    margin=min(2.0, lease_ttl / 4),
                    poll_interval=claim_poll_interval,
                    max_takeovers=max_takeovers,
                )
                if cluster
                else None,
            ),
        )
        self.tune_gc = tune_gc
        self._open = False

    # -- lifecycle --
    async def open(self) -> Self:
        """Migrate the database, start the engine, resume unfinished instances, join the
        cluster's registry (and lead its chores if no other node does)."""
        await self.store.migrate()
        if isinstance(self.store, PostgresStore):
            await self.store.check_logins()  # a login it refuses stops the start, here
        await self.engine.start()
        if self.replies is not None:
            await self.replies.start()
        try:
            await self.member.beat()  # the chores start now if this node leads
        except SagaError as error:
            log.warning("first cluster heartbeat failed (retrying in the background): %s", error)
        self.member.start()
        self._open = True
        if self.tune_gc:
            tune_garbage_collector()  # last: what start-up allocated is frozen with the rest
        return self

    async def close(self, grace: float = 5.0) -> None:
        if self._open:
            if self.replies is not None:
                await self.replies.stop()
            await self.engine.stop(grace)
            await self.member.stop()  # the relay last: in-flight attempts may still write
            self._open = False
        if self.publisher is not None:
            await self.publisher.close()
        await self.http.aclose()
        await self.store.close()

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def handler(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register a handler on this orchestrator: ``@saga.handler("inventory.reserve")``."""

        def register(function: Callable[..., Any]) -> Callable[..., Any]:
            self.handlers.register(function, name)
            return function

        return register

    # -- definitions --
    async def register(
        self, definition: SagaDefinition | Mapping[str, Any] | str | bytes
    ) -> Registration:
        model = (
            definition if isinstance(definition, SagaDefinition) else parse_definition(definition)
        )
        return await self.definitions.register(self.tenant_id, model)

    async def deprecate(self, name: str, version: str) -> None:
        await self.definitions.deprecate(self.tenant_id, name, version)

    async def _on_reply(self, reply: StepReply) -> None:
        await self.engine.record_reply(
            reply.tenant_id,
            reply.instance_id,
            node=reply.node,
            phase=reply.phase,
            attempt=reply.attempt,
            outcome=reply.outcome,
        )

    # -- participant services --
    async def put_participant(
        self, name: str, service: ParticipantService | Mapping[str, Any]
    ) -> ParticipantRecord:
        """Register (or replace) where the http steps naming ``name`` go."""
        model = (
            service
            if isinstance(service, ParticipantService)
            else ParticipantService.model_validate(service)
        )
        return (await self.participants.put(self.tenant_id, name, model)).record

    async def running_quota(self, tenant_id: str) -> int | None:
        """The tenant's cap on its sagas running on this node at once (None: no cap)."""
        overrides = await self.tenant_limits.overrides(tenant_id)
        default = self.max_running_sagas_per_tenant
        return default if overrides is None else overrides.running_cap(default)

    def breaker_snapshots(self) -> list[BreakerSnapshot]:
        return self.breakers.snapshot()

    # -- instances --
    async def start(
        self,
        saga: str,
        context: Any = None,
        *,
        version: str | None = None,
        idempotency_key: str | None = None,
    ) -> StartResult:
        """Start an instance; returns once the start is durable."""
        body = context if context is not None else {}
        # The digest binds an idempotency key to its request; without a key it is never read.
        digest = (
            None
            if idempotency_key is None
            else hashlib.sha256(
                orjson.dumps([saga, version, body], option=orjson.OPT_SORT_KEYS)
            ).hexdigest()
        )
        return await self.engine.start_saga(
            self.tenant_id,
            saga,
            body,
            version=version,
            idempotency_key=idempotency_key,
            request_digest=digest,
        )

    async def get(self, instance_id: str) -> InstanceView:
        return describe(await self.engine.state(self.tenant_id, instance_id))

    async def wait(self, instance_id: str, timeout: float | None = None) -> InstanceView:
        """Until the instance is terminal or parked (``failed``) for an operator."""
        return describe(await self.engine.wait(self.tenant_id, instance_id, timeout))

    async def history(self, instance_id: str) -> list[Event]:
        stored = await self.store.load_events(self.tenant_id, instance_id)
        return [codec.decode(e.type, e.data) for e in stored]

    async def cancel(self, instance_id: str, reason: str) -> InstanceView:
        state = await self.engine.advance(
            self.tenant_id, instance_id, lambda s: request_cancel(s, reason, self.clock.now())
        )
        return describe(state)

    async def retry(self, instance_id: str, reason: str, actor: str = "sdk") -> InstanceView:
        state = await self.engine.advance(
            self.tenant_id,
            instance_id,
            lambda s: operator_retry(s, reason, actor, self.clock.now()),
        )
        return describe(state)

    async def skip(
        self, instance_id: str, node: str, reason: str, actor: str = "sdk"
    ) -> InstanceView:
        async def definition_of() -> Any:
            state = await self.engine.state(self.tenant_id, instance_id)
            return await self.definitions.get(
                self.tenant_id, state.definition_name, state.definition_version
            )

        compiled = await definition_of()
        state = await self.engine.advance(
            self.tenant_id,
            instance_id,
            lambda s: operator_skip(
                compiled, s, node=node, reason=reason, actor=actor, now=self.clock.now()
            ),
        )
        return describe(state)

    async def resolve(self, instance_id: str, reason: str, actor: str = "sdk") -> InstanceView:
        state = await self.engine.advance(
            self.tenant_id,
            instance_id,
            lambda s: operator_resolve(s, reason, actor, self.clock.now()),
        )
        return describe(state)


def default_node_id() -> str:
    """Unique per process; set ``NODE_ID`` to something stable (a pod's name) so a restarted
    node takes its leases back at once instead of after they expire."""
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


def _version() -> str:
    try:
        return package_version("saga-orchestrator")
    except PackageNotFoundError:  # running from a source tree without installing
        return "unknown"


class _WriteProfile(TypedDict):
    max_batch: int
    commit_lanes: int


def _write_profile(store: Store) -> _WriteProfile:
    """How the engine's group commit suits its store. PostgreSQL runs each transaction in a
    server process of its own, so several smaller batches at once keep its cores busy while
    the event loop plans the next (docs/performance.md: batches of 250, 4 at once, complete
    8-12 % more sagas/s than 500, 2 at once); SQLite has one writer, so larger batches, and
    one waiting behind the running one."""
    if isinstance(store, PostgresStore):
        return {"max_batch": 250, "commit_lanes": 4}
    return {"max_batch": 500, "commit_lanes": 2}
