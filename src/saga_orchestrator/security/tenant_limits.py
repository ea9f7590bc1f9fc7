"""A tenant's own limits, set by its admins through the API, and each node's cache of them.

Every limit has a node-wide default from the settings (``RATE_LIMIT_REQUESTS``,
``RATE_LIMIT_STARTS``, ``MAX_RUNNING_SAGAS_PER_TENANT``). A tenant's :class:`TenantLimits`
override any of them; a field left out (``None``) keeps the node's default, so a change of the
settings still reaches every tenant that did not override that field.

A tenant's admin administers the tenant, not the node: the operator's :class:`LimitCeilings`
(the ``*_CEILING`` settings, by default the defaults themselves) bound what it may set, so no
tenant can lift its own limits and flood the node the other tenants share. The API refuses an
override above a ceiling; one stored anyway (before the ceiling was lowered, by an older
version, or straight into the database) is clamped to the ceiling wherever it applies, since
every reader takes the overrides from :class:`TenantLimitsBook`.

The overrides live in the store, one document per tenant. Checking them must not cost a query
per request, so :class:`TenantLimitsBook` keeps them on each node for :data:`CACHE_TTL`
seconds: when an entry is stale, one caller reads the store while the others wait for that
read (single flight). An entry asked for in the last fifth of its TTL is read again in the
background while the cache still answers (:data:`REFRESH_AFTER`), so a tenant that keeps
sending never has a request wait for that read: without it, one request per tenant every TTL
waited for a store round trip (three on PostgreSQL), the slowest of a quiet tenant's starts.
A change made through a node applies on that node at once; every other node picks it up
within the TTL. While the store cannot be read, a node keeps the overrides it last read; one
that it never read fails the request like any other store outage.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from saga_orchestrator.errors import InvalidInput, StoreError, Violation
from saga_orchestrator.security.limits import Limit, RequestLimits
from saga_orchestrator.store import AuditEntry, Store, TenantLimitsEntry

__all__ = [
    "CACHE_TTL",
    "NO_CEILINGS",
    "REFRESH_AFTER",
    "BucketLimit",
    "LimitCeilings",
    "StoredLimits",
    "TenantLimits",
    "TenantLimitsBook",
    "bucket_ceiling",
]

log = logging.getLogger("saga_orchestrator.limits")

CACHE_TTL: Final = 5.0
"""Seconds a node trusts the overrides it read: the longest another node's change waits."""
REFRESH_AFTER: Final = 0.8
"""Share of the TTL after which an entry still answers but is read again in the background."""

MAX_RATE: Final = 1_000_000.0
MIN_RATE: Final = 0.001
"""One token every 1000 s: slower buckets would hold their keys (and refusals) for ages."""
MAX_BURST: Final = 1_000_000
MAX_RUNNING: Final = 1_000_000


class BucketLimit(BaseModel):
    """A token bucket: a sustained rate and the burst allowed after a quiet spell."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    per_second: float = Field(
        ge=MIN_RATE, le=MAX_RATE, allow_inf_nan=False, description="Tokens added per second."
    )
    burst: int | None = Field(
        default=None,
        ge=1,
        le=MAX_BURST,
        description="Bucket size (default: twice `per_second`, at least 1, as for the settings).",
    )

    def to_limit(self) -> Limit:
        if self.burst is None:
            return Limit.per_second(self.per_second)
        return Limit(rate=self.per_second, burst=self.burst)


class TenantLimits(BaseModel):
    """A tenant's overrides of the node's limits; a field left out keeps the node's default."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"requests": {"per_second": 20, "burst": 40}, "max_running_sagas": 100},
            ]
        },
    )

    requests: BucketLimit | None = Field(
        default=None, description="API requests of the tenant (default: `RATE_LIMIT_REQUESTS`)."
    )
    starts: BucketLimit | None = Field(
        default=None, description="Saga starts of the tenant (default: `RATE_LIMIT_STARTS`)."
    )
    max_running_sagas: int | None = Field(
        default=None,
        ge=1,
        le=MAX_RUNNING,
        description=(
            "Sagas of the tenant running on one node at once "
            "(default: `MAX_RUNNING_SAGAS_PER_TENANT`)."
        ),
    )

    def request_limits(self, defaults: RequestLimits) -> RequestLimits:
        """``defaults`` with this tenant's request and start buckets in their place."""
        if self.requests is None and self.starts is None:
            return defaults
        return replace(
            defaults,
            requests=defaults.requests if self.requests is None else self.requests.to_limit(),
            starts=defaults.starts if self.starts is None else self.starts.to_limit(),
        )

    def running_cap(self, default: int | None) -> int | None:
        return default if self.max_running_sagas is None else self.max_running_sagas


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitCeilings:
    """The most a tenant's admins may set for their tenant; ``None``: no ceiling beyond the
    bounds of :class:`TenantLimits` itself."""

    requests: Limit | None = None
    starts: Limit | None = None
    max_running_sagas: int | None = None

    def __post_init__(self) -> None:
        for name, bucket in (("requests", self.requests), ("starts", self.starts)):
            # The clamped value must still be a valid override (per_second >= MIN_RATE).
            if bucket is not None and bucket.rate < MIN_RATE:
                raise InvalidInput(f"the {name} ceiling must be at least {MIN_RATE} per second")
        if self.max_running_sagas is not None and self.max_running_sagas < 1:
            raise InvalidInput("the max_running_sagas ceiling must be at least 1")

    def violations(self, limits: TenantLimits, prefix: str = "") -> list[Violation]:
        """Each value of ``limits`` above its ceiling, named ``prefix`` + its field."""
        found = [
            violation
            for name, bucket, ceiling in (
                ("requests", limits.requests, self.requests),
                ("starts", limits.starts, self.starts),
            )
            if bucket is not None and ceiling is not None
            for violation in _bucket_violations(f"{prefix}{name}", bucket, ceiling)
        ]
        cap, ceiling = limits.max_running_sagas, self.max_running_sagas
        if cap is not None and ceiling is not None and cap > ceiling:
            found.append(_above(f"{prefix}max_running_sagas", cap, ceiling))
        return found

    def check(self, limits: TenantLimits, prefix: str = "") -> None:
        """Raise :class:`InvalidInput` naming every value of ``limits`` above its ceiling."""
        found = self.violations(limits, prefix)
        if found:
            detail = "; ".join(f"{v.location}: {v.message}" for v in found)
            raise InvalidInput(detail, violations=found)

    def clamp(self, limits: TenantLimits) -> TenantLimits:
        """``limits`` with each value above its ceiling lowered to it."""
        requests = _clamped(limits.requests, self.requests)
        starts = _clamped(limits.starts, self.starts)
        cap, ceiling = limits.max_running_sagas, self.max_running_sagas
        running = cap if cap is None or ceiling is None else min(cap, ceiling)
        if (requests, starts, running) == (limits.requests, limits.starts, cap):
            return limits
        return TenantLimits(requests=requests, starts=starts, max_running_sagas=running)


NO_CEILINGS: Final = LimitCeilings()
"""What an embedded node has: its code's caller is the operator, and no API lets a tenant in."""


def bucket_ceiling(per_second: float, burst: int | None = None) -> Limit:
    """The ceiling of a bucket: ``burst`` defaults to twice the rate, the rule of the
    ``RATE_LIMIT_*`` defaults. A rate below :data:`MIN_RATE` is raised to it: no override can
    go lower, so a lower ceiling would only refuse every one."""
    rate = max(per_second, MIN_RATE)
    return Limit.per_second(rate) if burst is None else Limit(rate=rate, burst=burst)


def _bucket_violations(name: str, bucket: BucketLimit, ceiling: Limit) -> list[Violation]:
    found = []
    if bucket.per_second > ceiling.rate:
        found.append(_above(f"{name}.per_second", bucket.per_second, ceiling.rate))
    burst = bucket.to_limit().burst
    if burst > ceiling.burst:
        if bucket.burst is None:  # the admin gave none: say where the number comes from
            message = (
                f"{burst} (twice per_second, as no burst was given) is above the ceiling of "
                f"{ceiling.burst}; give a burst of at most {ceiling.burst}"
            )
            found.append(Violation(location=f"{name}.burst", rule="ceiling", message=message))
        else:
            found.append(_above(f"{name}.burst", burst, ceiling.burst))
    return found


def _above(location: str, asked: float, ceiling: float) -> Violation:
    return Violation(
        location=location,
        rule="ceiling",
        message=f"{_number(asked)} is above the ceiling of {_number(ceiling)} set by the node's "
        "operator",
    )


def _number(value: float) -> str:
    """``100`` rather than ``100.0``, and never ``1e+06``: the numbers an admin would type."""
    return str(int(value)) if float(value).is_integer() else str(value)


def _clamped(bucket: BucketLimit | None, ceiling: Limit | None) -> BucketLimit | None:
    if bucket is None or ceiling is None:
        return bucket
    limit = bucket.to_limit()
    if limit.rate <= ceiling.rate and limit.burst <= ceiling.burst:
        return bucket
    return BucketLimit(
        per_second=min(limit.rate, ceiling.rate), burst=min(limit.burst, ceiling.burst)
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredLimits:
    """A tenant's overrides as stored, with the document's version."""

    limits: TenantLimits
    version: int
    """1 when first stored, bumped by every change (a reset starts over at 1)."""
    updated_at: datetime


_Cached = tuple[float, TenantLimits | None]


class NotCached(enum.Enum):
    """A tenant whose overrides this node would have to read first."""

    NOT_CACHED = "not cached"


NOT_CACHED: Final = NotCached.NOT_CACHED


class TenantLimitsBook:
    """The tenants' overrides: changed in the store, read through a per-node cache.

    What it answers for enforcement (:meth:`overrides`, :meth:`known_overrides`) is clamped to
    :attr:`ceilings`; what it answers as stored (:meth:`stored`, :meth:`put`) is not, so an
    admin sees what was set and, beside it, what applies."""

    def __init__(
        self,
        store: Store,
        *,
        ceilings: LimitCeilings = NO_CEILINGS,
        ttl: float = CACHE_TTL,
        max_tenants: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self.ceilings = ceilings
        self.ttl = ttl
        self._max_tenants = max_tenants
        self._clock = clock
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self._reads: dict[str, asyncio.Task[TenantLimits | None]] = {}

    async def overrides(self, tenant_id: str) -> TenantLimits | None:
        """The tenant's overrides (``None``: none stored), at most :attr:`ttl` seconds old.
        This is the hot path: a store read per tenant per TTL, whatever the traffic."""
        known = self.known_overrides(tenant_id)
        if known is not NOT_CACHED:
            return known
        return await asyncio.shield(self._read(tenant_id))

    def known_overrides(self, tenant_id: str) -> TenantLimits | NotCached | None:
        """What :meth:`overrides` would answer without reading the store, or
        :data:`NOT_CACHED` when it would have to. Like it, starts the background read of an
        entry near its expiry."""
        cached = self._cache.get(tenant_id)
        if cached is None:
            return NOT_CACHED
        age = self._clock() - cached[0]
        if age >= self.ttl:
            return NOT_CACHED
        if age >= self.ttl * REFRESH_AFTER:
            self._read(tenant_id)
        return cached[1]

    def _read(self, tenant_id: str) -> asyncio.Task[TenantLimits | None]:
        """The tenant's read under way, started if there is none (single flight)."""
        pending = self._reads.get(tenant_id)
        if pending is None:
            pending = asyncio.create_task(self._load(tenant_id, self._cache.get(tenant_id)))
            self._reads[tenant_id] = pending
            pending.add_done_callback(lambda done: self._read_done(tenant_id, done))
        return pending

    async def stored(self, tenant_id: str) -> StoredLimits | None:
        """The tenant's document as the store has it now (read past the cache, which it
        refreshes): what an admin asking for the limits should see."""
        entry = await self._store.get_tenant_limits(tenant_id)
        stored = None if entry is None else _parse(entry)
        self._settle(tenant_id, None if stored is None else stored.limits)
        return stored

    async def put(
        self, tenant_id: str, limits: TenantLimits, *, audit: AuditEntry | None = None
    ) -> StoredLimits:
        """Store the tenant's overrides (replacing any); this node applies them at once."""
        config = limits.model_dump(mode="json", exclude_none=True)
        version = await self._store.put_tenant_limits(tenant_id, config, audit)
        self._settle(tenant_id, limits)
        return StoredLimits(limits=limits, version=version, updated_at=datetime.now(UTC))

    async def reset(self, tenant_id: str, *, audit: AuditEntry | None = None) -> bool:
        """Back to the node's defaults; False if the tenant had no overrides."""
        deleted = await self._store.delete_tenant_limits(tenant_id, audit)
        self._settle(tenant_id, None)
        return deleted

    def _settle(self, tenant_id: str, limits: TenantLimits | None) -> None:
        """What this node now knows to be stored; a read already under way no longer counts
        (it may have started before the change)."""
        self._reads.pop(tenant_id, None)
        self._remember(tenant_id, self._applied(limits))

    async def _load(self, tenant_id: str, stale: _Cached | None) -> TenantLimits | None:
        try:
            entry = await self._store.get_tenant_limits(tenant_id)
        except StoreError as error:
            if stale is None:
                raise
            log.warning("tenant %r: keeping the limits last read (%s)", tenant_id, error)
            limits = stale[1]
        else:
            stored = None if entry is None else _parse(entry)
            limits = None if stored is None else self._applied(stored.limits)
        if self._reads.get(tenant_id) is asyncio.current_task():
            self._remember(tenant_id, limits)
        return limits

    def _applied(self, limits: TenantLimits | None) -> TenantLimits | None:
        """What applies of ``limits``: clamped once, on the way into the cache, rather than
        on every request."""
        return None if limits is None else self.ceilings.clamp(limits)

    def _read_done(self, tenant_id: str, done: asyncio.Task[TenantLimits | None]) -> None:
        if self._reads.get(tenant_id) is done:
            del self._reads[tenant_id]
        if not done.cancelled():
            done.exception()  # retrieved here: every waiter may have gone

    def _remember(self, tenant_id: str, limits: TenantLimits | None) -> None:
        self._cache[tenant_id] = (self._clock(), limits)
        self._cache.move_to_end(tenant_id)
        if len(self._cache) > self._max_tenants:
            self._cache.popitem(last=False)


def _parse(entry: TenantLimitsEntry) -> StoredLimits | None:
    """Documents are validated when written; one that a rule tightened since no longer passes
    is ignored (the node's defaults apply) and logged, rather than failing every request."""
    try:
        limits = TenantLimits.model_validate(entry.config)
    except ValidationError as error:
        log.warning(
            "tenant %r: stored limits are no longer valid, using the defaults; set them again: %s",
            entry.tenant_id,
            error.errors(include_url=False)[0]["msg"],
        )
        return None
    return StoredLimits(limits=limits, version=entry.version, updated_at=entry.updated_at)
