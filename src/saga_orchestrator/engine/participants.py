"""The participant service registry: validated entries in the store, per tenant.

It is also the HTTP transport's directory. Lookups are cached for :data:`LOOKUP_TTL` seconds so
a step costs no store read; this node's own changes take effect at once, another node's within
the TTL.

An entry is refused before it is stored if its secret references or TLS files reach what the
node's :class:`~saga_orchestrator.transports.secrets.SecretPolicy` does not give its tenant, or
if it holds a credential as a plain string (the transport checks again at every call).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from pydantic import ValidationError

from saga_orchestrator.definition.participants import ParticipantRecord, ParticipantService
from saga_orchestrator.errors import ConfigurationError, InvalidInput, NotFound
from saga_orchestrator.store import AuditEntry, ParticipantEntry, Store
from saga_orchestrator.transports.secrets import SecretPolicy

log = logging.getLogger("saga_orchestrator.participants")

LOOKUP_TTL = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Saved:
    record: ParticipantRecord
    created: bool


class ParticipantRegistry:
    def __init__(self, store: Store, *, secrets: SecretPolicy | None = None) -> None:
        """``secrets``: what each tenant's secret references may reach (default: nothing)."""
        self._store = store
        self._secrets = secrets if secrets is not None else SecretPolicy()
        self._cache: dict[tuple[str, str], tuple[float, ParticipantRecord | None]] = {}
        self._reads: dict[tuple[str, str], asyncio.Future[ParticipantRecord | None]] = {}
        self.lookup_ttl = LOOKUP_TTL

    async def put(
        self,
        tenant_id: str,
        name: str,
        service: ParticipantService,
        *,
        audit: AuditEntry | None = None,
    ) -> Saved:
        problems = self._secrets.problems(tenant_id, service)
        if problems:
            raise InvalidInput(f"invalid participant service: {'; '.join(problems)}")
        config = service.model_dump(mode="json", exclude_defaults=True)
        version = await self._store.put_participant(tenant_id, name, config, audit)
        record = ParticipantRecord(name=name, service=service, version=version)
        self._cache[(tenant_id, name)] = (time.monotonic(), record)
        return Saved(record=record, created=version == 1)

    async def get(self, tenant_id: str, name: str) -> ParticipantRecord:
        entry = await self._store.get_participant(tenant_id, name)
        if entry is None:
            raise NotFound(f"no participant service {name!r}")
        return _record(entry)

    async def list(self, tenant_id: str) -> list[ParticipantRecord]:
        return [_record(entry) for entry in await self._store.list_participants(tenant_id)]

    async def names(self, tenant_id: str) -> frozenset[str]:
        return frozenset(e.name for e in await self._store.list_participants(tenant_id))

    async def delete(self, tenant_id: str, name: str, *, audit: AuditEntry | None = None) -> None:
        if not await self._store.delete_participant(tenant_id, name, audit):
            raise NotFound(f"no participant service {name!r}")
        self._cache[(tenant_id, name)] = (time.monotonic(), None)

    async def lookup(self, tenant_id: str, name: str) -> ParticipantRecord | None:
        """The transport's view: cached, None if not registered. When the cache entry is
        stale, one caller reads the store while the others wait for that read."""
        key = (tenant_id, name)
        cached = self._cache.get(key)
        if cached is not None and time.monotonic() - cached[0] < self.lookup_ttl:
            return cached[1]
        pending = self._reads.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._read(key))
            self._reads[key] = pending
            pending.add_done_callback(lambda _done: self._reads.pop(key, None))
        return await asyncio.shield(pending)

    async def _read(self, key: tuple[str, str]) -> ParticipantRecord | None:
        tenant_id, name = key
        entry = await self._store.get_participant(tenant_id, name)
        record = None
        if entry is not None:
            try:
                record = _record(entry)
            except ConfigurationError as error:
                log.warning("%s", error)
        self._cache[key] = (time.monotonic(), record)
        return record


def parse_service(data: object) -> ParticipantService:
    """A registry entry from a request body; InvalidInput names what is wrong."""
    try:
        return ParticipantService.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(body)'}: {e['msg']}"
            for e in error.errors(include_url=False)
        )
        raise InvalidInput(f"invalid participant service: {problems}") from None


def _record(entry: ParticipantEntry) -> ParticipantRecord:
    """Entries are validated when written; one that a rule tightened since (the SSRF wall,
    say) no longer passes is refused rather than called."""
    try:
        service = ParticipantService.model_validate(entry.config)
    except ValidationError as error:
        raise ConfigurationError(
            f"participant service {entry.name!r} is no longer valid; register it again: "
            f"{error.errors(include_url=False)[0]['msg']}"
        ) from None
    return ParticipantRecord(name=entry.name, service=service, version=entry.version)
