"""The store port: what the engine and the API need from a database, and nothing more.

Implementations: :mod:`saga_orchestrator.store.sqlite` (embedded default) and
:mod:`saga_orchestrator.store.postgres`. One contract suite (tests/integration/store) runs
against both, so neither can drift from this protocol.

Events cross this boundary already encoded (``type`` + JSON ``data`` bytes): the store does not
know the core's event classes, it only keeps an append-only, gap-free log per instance.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from saga_orchestrator.core.status import InstanceStatus

__all__ = [
    "AppendRequest",
    "AppendResult",
    "AppendStatus",
    "DefinitionRecord",
    "DueTimer",
    "InstanceFilter",
    "InstancePage",
    "InstanceRecord",
    "InstanceRef",
    "InstanceStatus",
    "InstanceUpdate",
    "Lease",
    "NewInstance",
    "OutboxMessage",
    "PutDefinitionOutcome",
    "Store",
    "StoredEvent",
]


class PutDefinitionOutcome(enum.StrEnum):
    CREATED = "created"
    IDENTICAL = "identical"
    CONFLICT = "conflict"


@dataclass(frozen=True, slots=True, kw_only=True)
class DefinitionRecord:
    tenant_id: str
    name: str
    version: str
    body: bytes
    """The definition as canonical JSON (sorted keys), exactly as registered."""
    digest: str
    """SHA-256 hex of ``body``: equal digests mean identical definitions."""
    deprecated: bool
    created_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredEvent:
    instance_id: str
    seq: int
    """1-based, gap-free per instance."""
    type: str
    data: bytes
    """JSON document of the event's fields."""
    recorded_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class NewInstance:
    """Everything needed to create an instance row with its first events."""

    tenant_id: str
    instance_id: str
    definition_name: str
    definition_version: str
    created_at: datetime
    idempotency_key: str | None = None
    request_digest: str | None = None
    """Digest of the start request, stored beside the idempotency key to detect reuse."""
    parent_instance_id: str | None = None
    parent_node: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceUpdate:
    """The read-model columns that change with each append."""

    status: InstanceStatus
    current_nodes: tuple[str, ...]
    """Nodes with an attempt or compensation in flight (for listings and dashboards)."""
    updated_at: datetime
    wake_at: datetime | None
    """The instance's durable timer: when the engine must look at it again (None: no timer)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxMessage:
    """A message to publish after commit (used by the AMQP transport and integration events)."""

    tenant_id: str
    instance_id: str
    message_id: str
    exchange: str
    routing_key: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


class AuditOutcome(enum.StrEnum):
    SUCCEEDED = "succeeded"
    REFUSED = "refused"
    """Not allowed (authorization, state): nothing changed."""
    FAILED = "failed"
    """Allowed, but it could not be done (invalid input, a conflict): nothing changed."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEntry:
    """What someone did: written in the same transaction as the change it records."""

    tenant_id: str
    at: datetime
    actor: str
    action: str
    """e.g. ``instance.cancel``, ``definition.register``, ``participant.delete``."""
    target_type: str
    target_id: str
    outcome: AuditOutcome = AuditOutcome.SUCCEEDED
    reason: str | None = None
    request_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditRecord:
    """An entry at its place in its tenant's hash chain."""

    entry: AuditEntry
    seq: int
    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditFilter:
    actor: str | None = None
    action: str | None = None
    target_id: str | None = None
    after: datetime | None = None
    before: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Lease:
    """Who writes an append, under which ownership (clustering, semantics §5).

    The append commits only if the instance is still owned by ``owner`` at ``epoch`` (the
    fencing token: every take-over raises it). A create makes ``owner`` the owner at epoch 1
    for ``ttl`` seconds of the database's clock; renewals extend it."""

    owner: str
    epoch: int
    ttl: float


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendRequest:
    """One instance's share of a group commit.

    If ``create`` is set the instance does not exist yet: the row, the idempotency key (if any)
    and the events are written together, and ``expected_seq`` must be 0. Otherwise the append
    succeeds only if the instance's last sequence equals ``expected_seq``.
    """

    tenant_id: str
    instance_id: str
    expected_seq: int
    events: Sequence[tuple[str, bytes]]
    """(type, JSON data) pairs; they get sequences expected_seq+1, expected_seq+2, ..."""
    update: InstanceUpdate
    create: NewInstance | None = None
    outbox: Sequence[OutboxMessage] = ()
    audit: AuditEntry | None = None
    """Recorded in the audit log only if this request is appended."""
    lease: Lease | None = None
    """None: no ownership is claimed (one node per database, or an outside input recorded
    at a node that does not own the instance: fenced by ``expected_seq`` alone)."""


class AppendStatus(enum.StrEnum):
    APPENDED = "appended"
    CONFLICT = "conflict"
    """The instance's last sequence was not ``expected_seq`` (or it already existed)."""
    DUPLICATE_START = "duplicate_start"
    """The tenant already used this start idempotency key; see ``existing_instance_id``."""
    LEASE_LOST = "lease_lost"
    """The request's lease is no longer the instance's: another node took it over."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendResult:
    status: AppendStatus
    last_seq: int
    """The instance's last sequence after this request (unchanged on conflict)."""
    existing_instance_id: str | None = None
    existing_request_digest: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceRecord:
    tenant_id: str
    instance_id: str
    definition_name: str
    definition_version: str
    status: InstanceStatus
    current_nodes: tuple[str, ...]
    last_seq: int
    created_at: datetime
    updated_at: datetime
    wake_at: datetime | None
    parent_instance_id: str | None
    parent_node: str | None
    idempotency_key: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceFilter:
    status: InstanceStatus | None = None
    definition_name: str | None = None
    definition_version: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    updated_after: datetime | None = None
    updated_before: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class InstancePage:
    items: tuple[InstanceRecord, ...]
    next_cursor: str | None
    """Opaque; pass back to get the next page (order: created_at desc, instance_id desc)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceRef:
    tenant_id: str
    instance_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DueTimer:
    tenant_id: str
    instance_id: str
    fire_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxRow:
    """A claimed outbox message: publish it, then mark it published (or release it)."""

    id: int
    tenant_id: str
    instance_id: str
    message_id: str
    exchange: str
    routing_key: str
    body: bytes
    headers: dict[str, str]
    attempts: int
    """Claims so far, this one included."""
    created_at: datetime
    unreadable: str | None = None
    """Why the stored body could not be opened (sealed with a key this node does not have,
    or altered): ``body`` is then empty and the message must not be published. It stays
    claimed until its lease ends, and is tried again from then on (say, once the key is
    configured again)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ParticipantEntry:
    """A participant service as stored: its settings are JSON the caller validates."""

    tenant_id: str
    name: str
    config: dict[str, Any]
    version: int
    updated_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class TenantLimitsEntry:
    """A tenant's limit overrides as stored: JSON the caller validates."""

    tenant_id: str
    config: dict[str, Any]
    version: int
    """1 when first stored, bumped by every change (a reset starts over at 1)."""
    updated_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeRecord:
    node_id: str
    address: str
    version: str
    started_at: datetime
    heartbeat_at: datetime
    instances: int = 0
    """Unfinished instances the node holds a current lease on (an embedded node: all)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Leadership:
    """A leader lease as the database sees it after an attempt to take or renew it."""

    holder: str
    epoch: int
    expires_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimedInstance:
    tenant_id: str
    instance_id: str
    epoch: int
    """The fencing token of the new lease."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Claims:
    claimed: list[ClaimedInstance]
    quarantined: list[InstanceRef]
    """Instances found orphaned once too often: parked for an operator instead of claimed."""


@dataclass(frozen=True, slots=True, kw_only=True)
class QuarantinedInstance:
    tenant_id: str
    instance_id: str
    takeovers: int
    quarantined_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaderFence:
    """A leader lease as its holder believes it is: writes it fences need it unchanged."""

    name: str
    holder: str
    epoch: int


class Watch(Protocol):
    def start(self) -> None: ...

    async def close(self) -> None: ...


class Store(Protocol):
    """The persistence port. All methods are coroutines; none holds a lock across calls."""

    async def migrate(self) -> int:
        """Apply pending migrations; return the schema version now in force."""
        ...

    async def schema_version(self) -> int:
        """The applied schema version (0 for an empty database)."""
        ...

    async def close(self) -> None: ...

    # -- definitions (immutable versions) --
    async def put_definition(
        self,
        *,
        tenant_id: str,
        name: str,
        version: str,
        body: bytes,
        digest: str,
        audit: AuditEntry | None = None,
    ) -> PutDefinitionOutcome:
        """``audit`` is recorded in the same transaction if the version is created."""
        ...

    async def get_definition(
        self, tenant_id: str, name: str, version: str
    ) -> DefinitionRecord | None: ...

    async def list_definition_versions(
        self, tenant_id: str, name: str
    ) -> list[DefinitionRecord]: ...

    async def list_definition_names(self, tenant_id: str, prefix: str = "") -> list[str]: ...

    async def set_definition_deprecated(
        self,
        tenant_id: str,
        name: str,
        version: str,
        deprecated: bool,
        audit: AuditEntry | None = None,
    ) -> bool:
        """Return False if no such version exists (``audit`` is then not recorded)."""
        ...

    # -- instances and their events --
    async def append(self, requests: Sequence[AppendRequest]) -> list[AppendResult]:
        """Group commit: every request in one transaction; a result per request, same order.

        A conflicting or duplicate request does not prevent the others from committing.
        """
        ...

    async def load_events(
        self, tenant_id: str, instance_id: str, after_seq: int = 0, limit: int | None = None
    ) -> list[StoredEvent]: ...

    async def get_instance(self, tenant_id: str, instance_id: str) -> InstanceRecord | None: ...

    async def find_start(
        self, tenant_id: str, idempotency_key: str
    ) -> tuple[str, str | None] | None:
        """(instance_id, request_digest) of the start that used this key, if any."""
        ...

    async def list_instances(
        self,
        tenant_id: str,
        filters: InstanceFilter,
        *,
        limit: int = 50,
        cursor: str | None = None,
    ) -> InstancePage: ...

    async def list_unfinished(self) -> list[InstanceRef]:
        """Every instance (all tenants) whose status is running or compensating: for recovery."""
        ...

    async def due_timers(self, now: datetime, limit: int) -> list[DueTimer]:
        """Timers with ``fire_at <= now`` (all tenants), earliest first."""
        ...

    async def next_timer_at(self) -> datetime | None:
        """The earliest pending timer, so the engine can sleep exactly until then."""
        ...

    # -- the transactional outbox (rows are written by ``append``) --
    async def claim_outbox(
        self, limit: int, lease_seconds: float, leader: LeaderFence | None = None
    ) -> list[OutboxRow]:
        """Claim up to ``limit`` unpublished messages, oldest first, for ``lease_seconds``
        (judged by the database's clock): no other claimer gets them until the lease ends.
        Rows whose claim expired unpublished (a relay died) are claimed again. With a
        ``leader`` fence, nothing is claimed unless that leader lease is still current (a
        deposed leader's relay gets nothing, checked in the same statement). Bodies sealed at
        rest come back opened; one that does not open is flagged ``unreadable``."""
        ...

    async def mark_outbox_published(self, ids: Sequence[int]) -> None:
        """Called only after the broker confirmed these messages (or dropped them unsent).
        The same statement erases their bodies: a published message keeps its ids and
        headers, for inspection, but no payload."""
        ...

    async def release_outbox(self, ids: Sequence[int]) -> None:
        """Give claimed messages back at once (publishing failed)."""
        ...

    async def outbox_backlog(self) -> int:
        """Messages not yet published."""
        ...

    # -- participant services (per tenant) --
    async def put_participant(
        self,
        tenant_id: str,
        name: str,
        config: dict[str, Any],
        audit: AuditEntry | None = None,
    ) -> int:
        """Create or replace; return the entry's new version (1 when created)."""
        ...

    async def get_participant(self, tenant_id: str, name: str) -> ParticipantEntry | None: ...

    async def list_participants(self, tenant_id: str) -> list[ParticipantEntry]: ...

    async def delete_participant(
        self, tenant_id: str, name: str, audit: AuditEntry | None = None
    ) -> bool:
        """Return False if there was no such entry (``audit`` is then not recorded)."""
        ...

    # -- tenant limit overrides (one document per tenant) --
    async def get_tenant_limits(self, tenant_id: str) -> TenantLimitsEntry | None: ...

    async def put_tenant_limits(
        self, tenant_id: str, config: dict[str, Any], audit: AuditEntry | None = None
    ) -> int:
        """Create or replace, with ``audit`` in the same transaction; return the new version
        (1 when created)."""
        ...

    async def delete_tenant_limits(self, tenant_id: str, audit: AuditEntry | None = None) -> bool:
        """Return False if the tenant had none (``audit`` is then not recorded)."""
        ...

    # -- the audit log (entries of appends are written by ``append``) --
    async def append_audit(self, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
        """Record entries that change nothing else (refused or failed actions)."""
        ...

    async def list_audit(
        self, tenant_id: str, filters: AuditFilter, *, limit: int = 50, after_seq: int = 0
    ) -> list[AuditRecord]:
        """Oldest first, after ``after_seq``."""
        ...

    async def audit_tenants(self) -> list[str]: ...

    async def audit_chain(self, tenant_id: str) -> tuple[list[AuditRecord], tuple[int, str] | None]:
        """Every record of a tenant in sequence order, and its head: for verification."""
        ...

    # -- cluster membership and leadership (expiry judged by the database's clock) --
    async def heartbeat_node(self, node: NodeRecord) -> None:
        """Record the node, its heartbeat stamped now by the database."""
        ...

    async def list_nodes(self) -> list[NodeRecord]: ...

    async def remove_node(self, node_id: str) -> None: ...

    async def reap_nodes(self, silent_for: float) -> list[str]:
        """Forget the nodes whose last heartbeat is older than ``silent_for`` seconds (they
        died without leaving); return their ids."""
        ...

    async def acquire_leadership(self, name: str, holder: str, ttl: float) -> Leadership:
        """Take the lease if it is free or expired (the epoch rises), renew it if ``holder``
        has it; either way return who holds it now."""
        ...

    async def release_leadership(self, name: str, holder: str) -> None:
        """Give the lease up at once (if ``holder`` has it) so another node takes over."""
        ...

    async def purge_terminal(self, before: datetime, limit: int) -> int:
        """Delete up to ``limit`` terminal instances (all tenants) last changed before
        ``before``, oldest first, with their whole histories: the retention chore. Returns how
        many went; the audit log is kept."""
        ...

    # -- instance leases (clustering; expiry judged by the database's clock) --
    async def claim_instances(
        self, owner: str, ttl: float, limit: int, max_takeovers: int
    ) -> Claims:
        """Take up to ``limit`` unfinished instances whose lease is missing or expired (their
        epoch rises). One whose lease was already taken over from a silent owner
        ``max_takeovers`` times is quarantined instead."""
        ...

    async def claim_instance(
        self, owner: str, ttl: float, tenant_id: str, instance_id: str
    ) -> int | None:
        """Take one instance that is not terminal if no other owner's lease on it is
        current (quarantined or not): its new epoch, or None if another node owns it."""
        ...

    async def reclaim_own(self, owner: str, ttl: float) -> list[ClaimedInstance]:
        """At start-up: the unfinished instances whose lease names ``owner`` (a node restarted
        with the same id), under new epochs that fence its previous incarnation."""
        ...

    async def renew_leases(
        self, owner: str, ttl: float, leases: Sequence[tuple[str, int]]
    ) -> dict[str, int]:
        """Extend the leases (instance_id, epoch) ``owner`` still holds; return each held
        instance's last sequence (the others were lost)."""
        ...

    async def release_leases(self, owner: str, leases: Sequence[tuple[str, int]]) -> None:
        """Give up the leases (instance_id, epoch) ``owner`` still holds, at once (graceful
        shutdown), and wake the other nodes' claims."""
        ...

    async def list_quarantined(self, tenant_id: str) -> list[QuarantinedInstance]:
        """The tenant's instances parked as poison, oldest first."""
        ...

    async def release_quarantine(
        self, tenant_id: str, instance_id: str, audit: AuditEntry | None = None
    ) -> bool:
        """Let the cluster claim a quarantined instance again; False if it is not quarantined
        (``audit`` is then not recorded)."""
        ...

    # -- other nodes --
    def watch(
        self,
        on_instances: Callable[[list[tuple[str, int]]], None],
        on_claimable: Callable[[], None] | None = None,
    ) -> Watch | None:
        """Call ``on_instances`` with (instance id, last sequence) of instances another node
        (or this one) appended events to, and ``on_claimable`` when leases were released:
        hints only; None if this store has no such channel (SQLite: one node)."""
        ...

    # -- node-wide secrets --
    async def shared_secret(self, name: str, candidate: bytes) -> bytes:
        """The secret stored under ``name``, storing ``candidate`` first if there is none: every
        node sharing the database gets the same bytes (e.g. the key of completion tokens)."""
        ...
