"""Who did what, through the API: the request's context and the audited actions.

Every mutating route is listed in :data:`AUDITED` with the action it performs. A change that
succeeds is recorded by the service that makes it, in the same transaction as the change
(:func:`audit_entry` builds the entry from the request's context). A call that is refused or
fails changes nothing, so :func:`record_failure` records it on its own afterwards (called by
:class:`~saga_orchestrator.api.edge.EdgeMiddleware`).
Requests without a tenant (no valid credentials: 401) are not in any tenant's chain; they are
logged.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from starlette.types import Scope

from saga_orchestrator.store import AuditEntry, AuditOutcome, Store

log = logging.getLogger("saga_orchestrator.audit")

REQUEST_ID_HEADER: Final = "X-Request-Id"


@dataclass(slots=True)
class RequestContext:
    request_id: str
    actor: str
    """The caller: a token's subject once authenticated, else the node's configured actor."""
    tenant_id: str | None = None
    """Set when the caller's tenant is known."""
    details: dict[str, Any] = field(default_factory=dict)


_context: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "saga_request_context", default=None
)


def current_context() -> RequestContext:
    context = _context.get()
    if context is None:  # outside a request (tests calling services directly)
        context = RequestContext(request_id=str(uuid.uuid4()), actor="system")
        _context.set(context)
    return context


@dataclass(frozen=True, slots=True)
class Audited:
    action: str
    target_type: str
    target_param: str | None
    """The path parameter naming the target (None: the target is known after the change)."""
    of_tenant: bool = False
    """The target is the caller's tenant itself (its settings)."""


AUDITED: Final[dict[tuple[str, str], Audited]] = {
    ("POST", "/api/v1/sagas/definitions"): Audited("definition.register", "definition", None),
    ("POST", "/api/v1/sagas/definitions/{name}/{version}/deprecate"): Audited(
        "definition.deprecate", "definition", "name"
    ),
    ("POST", "/api/v1/sagas/instances"): Audited("instance.start", "instance", None),
    ("POST", "/api/v1/sagas/instances/{instance_id}/cancel"): Audited(
        "instance.cancel", "instance", "instance_id"
    ),
    ("POST", "/api/v1/sagas/instances/{instance_id}/retry"): Audited(
        "instance.retry", "instance", "instance_id"
    ),
    ("POST", "/api/v1/sagas/instances/{instance_id}/steps/{step}/skip"): Audited(
        "instance.skip", "instance", "instance_id"
    ),
    ("POST", "/api/v1/sagas/instances/{instance_id}/resolve"): Audited(
        "instance.resolve", "instance", "instance_id"
    ),
    ("POST", "/api/v1/sagas/instances/{instance_id}/steps/{step}/complete"): Audited(
        "attempt.complete", "instance", "instance_id"
    ),
    ("POST", "/api/v1/sagas/instances/{instance_id}/steps/{step}/fail"): Audited(
        "attempt.fail", "instance", "instance_id"
    ),
    ("POST", "/api/v1/sagas/instances/{instance_id}/steps/{step}/heartbeat"): Audited(
        "attempt.heartbeat", "instance", "instance_id"
    ),
    ("POST", "/api/v1/cluster/quarantine/{instance_id}/release"): Audited(
        "instance.release_quarantine", "instance", "instance_id"
    ),
    ("PUT", "/api/v1/participants/{name}"): Audited("participant.put", "participant", "name"),
    ("DELETE", "/api/v1/participants/{name}"): Audited("participant.delete", "participant", "name"),
    ("PUT", "/api/v1/tenant/limits"): Audited(
        "tenant_limits.put", "tenant_limits", None, of_tenant=True
    ),
    ("DELETE", "/api/v1/tenant/limits"): Audited(
        "tenant_limits.delete", "tenant_limits", None, of_tenant=True
    ),
}


def audit_entry(
    tenant_id: str,
    action: str,
    target_type: str,
    target_id: str,
    *,
    reason: str | None = None,
    details: dict[str, Any] | None = None,
    outcome: AuditOutcome = AuditOutcome.SUCCEEDED,
) -> AuditEntry:
    context = current_context()
    return AuditEntry(
        tenant_id=tenant_id,
        at=datetime.now(UTC),
        actor=context.actor,
        action=action,
        target_type=target_type,
        target_id=target_id,
        outcome=outcome,
        reason=reason,
        request_id=context.request_id,
        details={**context.details, **(details or {})},
    )


def outcome_of(status: int) -> AuditOutcome:
    return AuditOutcome.REFUSED if status in (403, 409, 410, 429) else AuditOutcome.FAILED


@contextlib.contextmanager
def use_context(context: RequestContext) -> Iterator[RequestContext]:
    """``context`` is the request's (:func:`current_context`) until the block ends."""
    token = _context.set(context)
    try:
        yield context
    finally:
        _context.reset(token)


async def record_failure(store: Store, scope: Scope, context: RequestContext, status: int) -> None:
    """Records a mutating call that ended in ``status`` (an error): nothing changed, so
    nothing else recorded it. Calls without a tenant (no valid credentials: 401) are logged,
    not recorded: they are in no tenant's chain."""
    route = getattr(scope.get("route"), "path", None)
    audited = AUDITED.get((scope["method"], route)) if route else None
    if audited is None:
        return
    if status == 429:
        # A flood is refused without touching the store: recording each refusal would let
        # the flooder write at its own rate (counted in /metrics instead).
        return
    if context.tenant_id is None:
        log.info(
            "unauthenticated %s %s answered %d (request %s)",
            scope["method"], scope["path"], status, context.request_id,
        )  # fmt: skip
        return
    params = scope.get("path_params", {})
    target = str(params.get(audited.target_param, "")) if audited.target_param else ""
    if audited.of_tenant:
        target = context.tenant_id
    entry = audit_entry(
        context.tenant_id,
        audited.action,
        audited.target_type,
        target,
        outcome=outcome_of(status),
        details={"status": status},
    )
    try:
        await store.append_audit([entry])
    except Exception:  # the answer is already sent; the log keeps the trace
        log.exception("could not record %s in the audit log", audited.action)


def request_id_of(header: bytes | None) -> str:
    """The client's ``X-Request-Id`` if it is printable and at most 128 characters, else a
    new UUID."""
    if header is not None:
        text = bytes(header).decode("latin-1")
        if 0 < len(text) <= 128 and text.isprintable():
            return text
    return str(uuid.uuid4())
