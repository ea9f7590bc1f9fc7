"""Turning a dispatch into what a transport sends: rendered targets, tokens, trace context.

Templates are rendered at dispatch time over the same data ``decide`` sees. That data is fixed
for an attempt: expressions may only name steps that finished before this one started (the
compiler's step-reference rule), so a re-dispatch after a crash renders the same request.
"""

from __future__ import annotations

import hashlib
from typing import Any

from saga_orchestrator.core.commands import Dispatch
from saga_orchestrator.core.decide import activation
from saga_orchestrator.core.events import Phase
from saga_orchestrator.core.state import SagaState
from saga_orchestrator.definition.compiler import CompiledDefinition
from saga_orchestrator.definition.models import AmqpCall, HttpCall
from saga_orchestrator.transports.base import AmqpCallSpec, HttpCallSpec


def render_call(
    definition: CompiledDefinition, state: SagaState, dispatch: Dispatch
) -> HttpCallSpec | AmqpCallSpec | None:
    """The request of an http or amqp target (None for handlers); raises ExpressionError."""
    target = dispatch.target
    if not isinstance(target, HttpCall | AmqpCall):
        return None
    node = definition.nodes[dispatch.node]
    compiled = node.action_call if dispatch.phase is Phase.ACTION else node.compensation_call
    data: dict[str, Any] = activation(definition, state)
    body = dispatch.input
    if compiled is not None and compiled.body is not None:
        body = compiled.body.render(data)
    if isinstance(target, AmqpCall):
        return AmqpCallSpec(
            exchange=target.amqp.exchange, routing_key=target.amqp.routing_key, body=body
        )
    spec = target.http
    path = spec.path
    headers: dict[str, str] = {}
    if compiled is not None:
        if compiled.path is not None:
            path = str(compiled.path.render(data))
        if compiled.headers is not None:
            rendered = compiled.headers.render(data)
            headers = {str(k): _header_text(v) for k, v in rendered.items()}
    return HttpCallSpec(
        service=spec.service, method=spec.method, path=path, headers=headers, body=body
    )


def _header_text(value: Any) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


def traceparent(instance_id: str, idempotency_key: str, attempt: int) -> str:
    """W3C trace context: one trace per saga instance, one span id per attempt, derived from
    durable ids so a re-dispatch after a crash continues the same trace."""
    trace_id = hashlib.blake2b(instance_id.encode(), digest_size=16).hexdigest()
    span_id = hashlib.blake2b(f"{idempotency_key}#{attempt}".encode(), digest_size=8).hexdigest()
    return f"00-{trace_id}-{span_id}-01"
