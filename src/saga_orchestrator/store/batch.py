"""The group-commit decision, shared by both backends and free of IO.

A backend reads the facts a batch depends on (the locked instance rows and the start keys it
mentions), :func:`plan_batch` decides every request in order, and the backend writes the plan
with one bulk statement per table. Deciding in Python keeps the number of round trips constant
whatever the batch size, and keeps SQLite and PostgreSQL in exact agreement.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from saga_orchestrator.errors import InvalidInput
from saga_orchestrator.store.codec import utc
from saga_orchestrator.store.encryption import EventCipher
from saga_orchestrator.store.protocol import (
    AppendRequest,
    AppendResult,
    AppendStatus,
    AuditEntry,
    InstanceUpdate,
    Lease,
    NewInstance,
    OutboxMessage,
)

StartKey = tuple[str, str]
"""(tenant_id, idempotency_key)"""

EventRow = tuple[str, str, int, str, bytes, datetime]
"""(tenant_id, instance_id, seq, type, data, recorded_at)"""

OutboxRowToWrite = tuple[OutboxMessage, bytes, str | None, datetime]
"""(message, body as stored, id of the key that sealed it or None, created_at)"""


@dataclass(frozen=True, slots=True, kw_only=True)
class Facts:
    instances: Mapping[str, tuple[str, int]]
    """instance_id -> (tenant_id, last_seq) of the batch's instances that already exist."""
    start_keys: Mapping[StartKey, tuple[str, str | None]]
    """Start keys the batch mentions that are already taken -> (instance_id, request_digest)."""
    leases: Mapping[str, tuple[str | None, int]] = field(default_factory=dict)
    """instance_id -> (owner, epoch) of the batch's existing instances (clustered stores)."""


@dataclass(slots=True, kw_only=True)
class CreatedRow:
    """An instance created by this batch, with its state after the batch's last request."""

    create: NewInstance
    update: InstanceUpdate
    last_seq: int
    lease: Lease | None = None


@dataclass(slots=True, kw_only=True)
class Plan:
    results: list[AppendResult] = field(default_factory=list)
    created: dict[str, CreatedRow] = field(default_factory=dict)
    updated: dict[str, tuple[InstanceUpdate, int]] = field(default_factory=dict)
    """Existing instance -> its final (update, last_seq)."""
    start_keys: list[NewInstance] = field(default_factory=list)
    events: list[EventRow] = field(default_factory=list)
    outbox: list[OutboxRowToWrite] = field(default_factory=list)
    timers: dict[str, tuple[str, datetime | None]] = field(default_factory=dict)
    """instance_id -> (tenant_id, fire_at): an upsert, or a delete when fire_at is None."""
    audit: list[AuditEntry] = field(default_factory=list)
    """Entries of the appended requests, in order."""


def batch_instance_ids(requests: Sequence[AppendRequest]) -> list[str]:
    """Distinct instance ids, sorted: the order in which PostgreSQL locks them."""
    return sorted({r.instance_id for r in requests})


def batch_start_keys(requests: Sequence[AppendRequest]) -> list[StartKey]:
    keys = {
        (r.tenant_id, r.create.idempotency_key)
        for r in requests
        if r.create is not None and r.create.idempotency_key is not None
    }
    return sorted(keys)


def expected_facts(
    requests: Sequence[AppendRequest], start_keys: Mapping[StartKey, tuple[str, str | None]]
) -> Facts:
    """The facts the requests themselves expect: each existing instance at the sequence (and
    under the lease) its first request in the batch names. A plan made from them is the plan
    the real facts give wherever they agree, which a backend checks as it writes (PostgreSQL
    updates each instance only where it still is what was expected, and otherwise plans again
    from the rows it locks). An instance the batch creates before anything appends to it is
    expected not to exist."""
    instances: dict[str, tuple[str, int]] = {}
    leases: dict[str, tuple[str | None, int]] = {}
    created: set[str] = set()
    for request in requests:
        instance_id = request.instance_id
        if request.create is not None:
            created.add(instance_id)
        elif instance_id not in created:
            instances.setdefault(instance_id, (request.tenant_id, request.expected_seq))
            if request.lease is not None:
                leases.setdefault(instance_id, (request.lease.owner, request.lease.epoch))
    return Facts(instances=instances, start_keys=start_keys, leases=leases)


def validate(requests: Sequence[AppendRequest]) -> None:
    """Refuse malformed requests before any write (a programming error, not a conflict).

    Naive datetimes are refused here too, so no backend ever has to guess a time zone.
    """
    for request in requests:
        if not request.tenant_id:
            raise InvalidInput(f"append to {request.instance_id} names no tenant")
        utc(request.update.updated_at)
        if request.update.wake_at is not None:
            utc(request.update.wake_at)
        create = request.create
        if create is None:
            continue
        utc(create.created_at)
        if request.expected_seq != 0:
            raise InvalidInput(f"create of {request.instance_id} must expect sequence 0")
        if (create.tenant_id, create.instance_id) != (request.tenant_id, request.instance_id):
            raise InvalidInput(f"create of {request.instance_id} names another instance")


def plan_batch(
    requests: Sequence[AppendRequest], facts: Facts, cipher: EventCipher | None = None
) -> Plan:
    """Decide each request in order, as if they ran one after another; with a ``cipher``,
    the events are sealed as they are planned."""
    planner = _Planner(facts, cipher)
    for request in requests:
        planner.plan.results.append(planner.decide(request))
    return planner.plan


class _Planner:
    def __init__(self, facts: Facts, cipher: EventCipher | None = None) -> None:
        self.cipher = cipher
        self.plan = Plan()
        self.instances: dict[str, tuple[str, int]] = dict(facts.instances)
        self.keys: dict[StartKey, tuple[str, str | None]] = dict(facts.start_keys)
        self.leases: dict[str, tuple[str | None, int]] = dict(facts.leases)

    def decide(self, request: AppendRequest) -> AppendResult:
        if request.create is not None:
            return self._create(request, request.create)
        return self._append(request)

    def _create(self, request: AppendRequest, create: NewInstance) -> AppendResult:
        key = create.idempotency_key
        if key is not None and (request.tenant_id, key) in self.keys:
            instance_id, digest = self.keys[(request.tenant_id, key)]
            return AppendResult(
                status=AppendStatus.DUPLICATE_START,
                last_seq=0,
                existing_instance_id=instance_id,
                existing_request_digest=digest,
            )
        if request.instance_id in self.instances:
            return self._conflict(request)
        if key is not None:
            self.keys[(request.tenant_id, key)] = (request.instance_id, create.request_digest)
            self.plan.start_keys.append(create)
        last_seq = len(request.events)
        self.plan.created[request.instance_id] = CreatedRow(
            create=create, update=request.update, last_seq=last_seq, lease=request.lease
        )
        if request.lease is not None:
            self.leases[request.instance_id] = (request.lease.owner, 1)
        return self._write(request)

    def _settle_lease(self, request: AppendRequest) -> None:
        """A settled instance has no owner (the backends clear it): a later request of the
        batch under the old lease is refused, as it would be in a batch of its own."""
        if request.update.status.is_settled and request.instance_id in self.leases:
            _, epoch = self.leases[request.instance_id]
            self.leases[request.instance_id] = (None, epoch)

    def _append(self, request: AppendRequest) -> AppendResult:
        current = self.instances.get(request.instance_id)
        if current is None or current[0] != request.tenant_id:
            return self._conflict(request)
        lease = request.lease
        if lease is not None and self.leases.get(request.instance_id) != (lease.owner, lease.epoch):
            # Checked before the sequence: a deposed owner must learn that it is deposed.
            return AppendResult(status=AppendStatus.LEASE_LOST, last_seq=current[1])
        if current[1] != request.expected_seq:
            return self._conflict(request)
        last_seq = request.expected_seq + len(request.events)
        created = self.plan.created.get(request.instance_id)
        if created is not None:
            created.update, created.last_seq = request.update, last_seq
        else:
            self.plan.updated[request.instance_id] = (request.update, last_seq)
        return self._write(request)

    def _stored(self, message: OutboxMessage, at: datetime) -> OutboxRowToWrite:
        # Sealed like the events: a step command's body is a step input, business data.
        if self.cipher is None:
            return (message, message.body, None, at)
        key_id, sealed = self.cipher.seal_message(message)
        return (message, sealed, key_id, at)

    def _conflict(self, request: AppendRequest) -> AppendResult:
        current = self.instances.get(request.instance_id)
        # Another tenant's instance is reported as missing: no sequence leaks across tenants.
        last_seq = current[1] if current is not None and current[0] == request.tenant_id else 0
        return AppendResult(status=AppendStatus.CONFLICT, last_seq=last_seq)

    def _write(self, request: AppendRequest) -> AppendResult:
        tenant, instance_id = request.tenant_id, request.instance_id
        # Events are stamped with the writer's clock (update.updated_at), not the database's,
        # so a test clock drives every stored timestamp.
        recorded_at = request.update.updated_at
        numbered = enumerate(request.events, start=request.expected_seq + 1)
        # List comprehensions, not generators: this runs for every request of every batch.
        if self.cipher is None:
            self.plan.events += [
                (tenant, instance_id, seq, event_type, data, recorded_at)
                for seq, (event_type, data) in numbered
            ]
        else:
            seal = self.cipher.seal
            self.plan.events += [
                (
                    tenant,
                    instance_id,
                    seq,
                    event_type,
                    seal(tenant, instance_id, seq, data),
                    recorded_at,
                )
                for seq, (event_type, data) in numbered
            ]
        last_seq = request.expected_seq + len(request.events)
        self.instances[instance_id] = (tenant, last_seq)
        if request.outbox:
            self.plan.outbox += [self._stored(m, recorded_at) for m in request.outbox]
        self.plan.timers[instance_id] = (tenant, request.update.wake_at)
        if request.audit is not None:
            self.plan.audit.append(request.audit)
        self._settle_lease(request)
        return AppendResult(status=AppendStatus.APPENDED, last_seq=last_seq)
