"""The definition registry: immutable versions in the store, compiled once, resolved by
semantic version, checked for sub-saga cycles on registration."""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass

from saga_orchestrator.definition.compiler import CompiledDefinition, compile_definition
from saga_orchestrator.definition.features import (
    FeatureFlags,
    another_version_violation,
    disabled_features,
)
from saga_orchestrator.definition.loader import canonical_json, definition_digest
from saga_orchestrator.definition.models import SagaDefinition
from saga_orchestrator.definition.versions import VersionConstraint, resolve
from saga_orchestrator.errors import DefinitionConflict, DefinitionError, NotFound, Violation
from saga_orchestrator.store import AuditEntry, DefinitionRecord, PutDefinitionOutcome, Store

KnownNames = Callable[[], Collection[str] | None]
KnownServices = Callable[[str], Awaitable[Collection[str]]]
"""A tenant's registered participant services."""

RESOLVE_TTL = 1.0
"""Seconds a name's resolution to a version is reused: another node's new version is picked up
within this delay; this node's own registrations and deprecations take effect at once."""
REFRESH_AFTER = 0.8
"""Share of the TTL after which a resolution still answers but is made again in the
background: a name in steady use never has a start wait for the store read (three round trips
on PostgreSQL), which without it one start per name and TTL did."""


class Registration(enum.StrEnum):
    CREATED = "created"
    IDENTICAL = "identical"


@dataclass(frozen=True, slots=True, kw_only=True)
class RegisteredDefinition:
    compiled: CompiledDefinition
    digest: str
    deprecated: bool


class DefinitionRegistry:
    def __init__(
        self,
        store: Store,
        *,
        known_handlers: KnownNames = lambda: None,
        known_services: KnownServices | None = None,
        features: FeatureFlags | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.features = features or FeatureFlags()
        self._store = store
        self._known_handlers = known_handlers
        self._known_services = known_services
        self._compiled: dict[tuple[str, str, str], CompiledDefinition] = {}
        self._resolved: dict[tuple[str, str, str | None], tuple[float, CompiledDefinition]] = {}
        self._resolving: dict[tuple[str, str, str | None], asyncio.Future[CompiledDefinition]] = {}
        self._generation: dict[tuple[str, str], int] = {}
        """Bumped by this node's registrations, so a read begun before one is not cached."""
        self.resolve_ttl = RESOLVE_TTL
        self._clock = clock

    async def register(
        self, tenant_id: str, definition: SagaDefinition, *, audit: AuditEntry | None = None
    ) -> Registration:
        """Validate and store a version; raise DefinitionError or DefinitionConflict.
        ``audit`` is recorded with the version if it is created."""
        handlers = self._known_handlers()
        compiled = compile_definition(definition, known_handlers=handlers)
        if self._known_services is not None and compiled.services():
            # Again, now naming every service the tenant has not registered, with its location.
            compiled = compile_definition(
                definition,
                known_handlers=handlers,
                known_services=await self._known_services(tenant_id),
            )
        await self._check_features(tenant_id, compiled)
        await self._check_sub_sagas(tenant_id, compiled)
        outcome = await self._store.put_definition(
            tenant_id=tenant_id,
            name=definition.name,
            version=definition.version,
            body=canonical_json(definition),
            digest=definition_digest(definition),
            audit=audit,
        )
        if outcome is PutDefinitionOutcome.CONFLICT:
            raise DefinitionConflict(
                f"{definition.name} {definition.version} is already registered with another "
                "body; versions are immutable, register a new version"
            )
        self._compiled[(tenant_id, definition.name, definition.version)] = compiled
        self._forget(tenant_id, definition.name)
        if outcome is PutDefinitionOutcome.CREATED:
            return Registration.CREATED
        return Registration.IDENTICAL

    async def get(self, tenant_id: str, name: str, version: str) -> CompiledDefinition:
        key = (tenant_id, name, version)
        compiled = self._compiled.get(key)
        if compiled is None:
            record = await self._store.get_definition(tenant_id, name, version)
            if record is None:
                raise NotFound(f"no definition {name} {version}")
            compiled = _compile_record(record)
            self._compiled[key] = compiled
        return compiled

    async def resolve(
        self, tenant_id: str, name: str, constraint: str | None = None
    ) -> CompiledDefinition:
        """The highest non-deprecated version allowed by ``constraint`` (default: latest).

        Resolutions are cached for ``resolve_ttl`` seconds (and dropped at once when this node
        registers or deprecates a version of that name), so a start costs no store read; one
        used in the last fifth of its TTL is made again in the background."""
        key = (tenant_id, name, constraint)
        cached = self._resolved.get(key)
        if cached is not None:
            age = self._clock() - cached[0]
            if age < self.resolve_ttl:
                if age >= self.resolve_ttl * REFRESH_AFTER:
                    self._resolution(key)
                return cached[1]
        return await asyncio.shield(self._resolution(key))

    def _resolution(self, key: tuple[str, str, str | None]) -> asyncio.Future[CompiledDefinition]:
        """The resolution of ``key`` under way, started if there is none: one store read per
        expiry, however many starts arrive meanwhile."""
        pending = self._resolving.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._resolve_and_cache(key))
            self._resolving[key] = pending
            pending.add_done_callback(lambda done: self._settled(key, done))
        return pending

    def _settled(
        self, key: tuple[str, str, str | None], done: asyncio.Future[CompiledDefinition]
    ) -> None:
        if self._resolving.get(key) is done:
            del self._resolving[key]
        if not done.cancelled():
            done.exception()  # retrieved here: a background resolution may have no waiter

    async def _resolve_and_cache(self, key: tuple[str, str, str | None]) -> CompiledDefinition:
        generation = self._generation.get(key[:2], 0)
        compiled = await self._resolve(*key)
        if self._generation.get(key[:2], 0) == generation:  # no registration meanwhile
            self._resolved[key] = (self._clock(), compiled)
        return compiled

    async def _resolve(
        self, tenant_id: str, name: str, constraint: str | None
    ) -> CompiledDefinition:
        records = await self._store.list_definition_versions(tenant_id, name)
        if not records:
            raise NotFound(f"no definition named {name!r}")
        chosen = resolve(
            [r.version for r in records],
            VersionConstraint.parse(constraint),
            exclude=[r.version for r in records if r.deprecated],
        )
        if chosen is None:
            raise NotFound(f"no usable version of {name!r} matches {constraint or 'latest'!r}")
        return await self.get(tenant_id, name, chosen)

    async def deprecate(
        self, tenant_id: str, name: str, version: str, *, audit: AuditEntry | None = None
    ) -> None:
        if not await self._store.set_definition_deprecated(
            tenant_id, name, version, True, audit=audit
        ):
            raise NotFound(f"no definition {name} {version}")
        self._forget(tenant_id, name)

    def _forget(self, tenant_id: str, name: str) -> None:
        self._generation[(tenant_id, name)] = self._generation.get((tenant_id, name), 0) + 1
        for key in [k for k in self._resolved if k[0] == tenant_id and k[1] == name]:
            del self._resolved[key]
        for key in [k for k in self._resolving if k[0] == tenant_id and k[1] == name]:
            del self._resolving[key]

    async def _check_features(self, tenant_id: str, compiled: CompiledDefinition) -> None:
        violations = disabled_features(compiled, self.features)
        if not self.features.versioning:
            versions = await self._store.list_definition_versions(tenant_id, compiled.name)
            if any(record.version != compiled.version for record in versions):
                violations.append(another_version_violation(compiled.name))
        if violations:
            raise DefinitionError(violations)

    async def _check_sub_sagas(self, tenant_id: str, compiled: CompiledDefinition) -> None:
        """Every sub-saga must exist, and no chain of sub-sagas may lead back to this one."""
        violations: list[Violation] = []
        for child in sorted(compiled.sub_sagas):
            cycle = await self._path_back(tenant_id, child, compiled.name, [compiled.name, child])
            if cycle == []:
                violations.append(
                    _violation(compiled, child, "sub-saga-exists", "is not registered")
                )
            elif cycle is not None:
                message = "forms a cycle: " + " -> ".join(cycle)
                violations.append(_violation(compiled, child, "sub-saga-cycle", message))
        if violations:
            raise DefinitionError(violations)

    async def _path_back(
        self, tenant_id: str, name: str, target: str, path: list[str]
    ) -> list[str] | None:
        """A path of sub-saga references from ``name`` to ``target`` over every registered
        version; [] if ``name`` is not registered at all; None if there is no cycle."""
        if name == target:
            return path
        records = await self._store.list_definition_versions(tenant_id, name)
        if not records:
            return [] if len(path) == 2 else None
        for record in records:
            children = (await self.get(tenant_id, name, record.version)).sub_sagas
            for child in sorted(children):
                if child in path[1:-1]:
                    continue
                found = await self._path_back(tenant_id, child, target, [*path, child])
                if found:
                    return found
        return None


def _violation(compiled: CompiledDefinition, child: str, rule: str, message: str) -> Violation:
    location = next(
        (
            node.path
            for node in compiled.nodes.values()
            if getattr(node.model, "saga", None) == child
        ),
        "steps",
    )
    return Violation(location=location, rule=rule, message=f"sub-saga {child!r} {message}")


def _compile_record(record: DefinitionRecord) -> CompiledDefinition:
    # Stored versions were validated on registration; handlers may have moved to workers since,
    # so registry checks are not repeated here.
    return compile_definition(SagaDefinition.model_validate_json(record.body))
