"""Turning a dispatch into what a transport sends: rendered targets, tokens, trace context,
and for the dispatches that go through RabbitMQ, the outbox rows that carry them.

Templates are rendered at dispatch time over the same data ``decide`` sees. That data is fixed
for an attempt: expressions may only name steps that finished before this one started (the
compiler's step-reference rule), so a re-dispatch after a crash renders the same request.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from saga_orchestrator.core.commands import Dispatch, Effect
from saga_orchestrator.core.decide import activation
from saga_orchestrator.core.events import Phase
from saga_orchestrator.core.state import SagaState
from saga_orchestrator.definition.compiler import CompiledDefinition
from saga_orchestrator.definition.models import AmqpCall, HandlerCall, HttpCall
from saga_orchestrator.engine.completion import AttemptRef, CompletionTokens
from saga_orchestrator.errors import ExpressionError
from saga_orchestrator.store import OutboxMessage
from saga_orchestrator.transports.amqp_messages import (
    COMMAND_EXCHANGE,
    command_for,
    command_message,
)
from saga_orchestrator.transports.base import AmqpCallSpec, HttpCallSpec, StepRequest


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


@dataclass(slots=True, kw_only=True)
class OutboxRouting:
    """Which dispatches travel through the transactional outbox to RabbitMQ: amqp targets,
    and handler targets that no handler of this process serves (workers run them)."""

    local_handlers: Callable[[], Collection[str]]
    remote_handlers: bool = True
    wake: Callable[[], None] = lambda: None
    """Called after a commit that wrote outbox rows, so the relay publishes at once."""

    def routes(self, dispatch: Dispatch) -> bool:
        target = dispatch.target
        if isinstance(target, AmqpCall):
            return True
        return (
            self.remote_handlers
            and isinstance(target, HandlerCall)
            and target.handler not in self.local_handlers()
        )


RequestFor = Callable[[Dispatch, HttpCallSpec | AmqpCallSpec | None], StepRequest]


def route_to_outbox(
    routing: OutboxRouting,
    definition: CompiledDefinition,
    state: SagaState,
    effects: Sequence[Effect],
    request_for: RequestFor,
) -> tuple[list[Effect], list[OutboxMessage]]:
    """The effects to perform after the commit, and the outbox rows of the others."""
    immediate: list[Effect] = []
    messages: list[OutboxMessage] = []
    for effect in effects:
        if isinstance(effect, Dispatch) and routing.routes(effect):
            message = outbox_message(definition, state, effect, request_for)
            if message is not None:
                messages.append(message)
                continue
        immediate.append(effect)  # a template that fails to render fails at dispatch
    return immediate, messages


def outbox_message(
    definition: CompiledDefinition, state: SagaState, dispatch: Dispatch, request_for: RequestFor
) -> OutboxMessage | None:
    try:
        request = request_for(dispatch, render_call(definition, state, dispatch))
    except ExpressionError:
        return None
    if isinstance(request.call, AmqpCallSpec):
        command = command_for(request, handler=None)
        message = command_message(
            command, exchange=request.call.exchange, routing_key=request.call.routing_key
        )
    else:
        assert isinstance(dispatch.target, HandlerCall)
        name = dispatch.target.handler
        command = command_for(request, handler=name)
        message = command_message(command, exchange=COMMAND_EXCHANGE, routing_key=name)
    return OutboxMessage(
        tenant_id=dispatch.tenant_id,
        instance_id=dispatch.instance_id,
        message_id=message.key,
        exchange=message.exchange,
        routing_key=message.routing_key,
        body=message.body,
        headers=message.headers,
    )


def step_request(
    dispatch: Dispatch,
    call: HttpCallSpec | AmqpCallSpec | None,
    tokens: CompletionTokens | None,
) -> StepRequest:
    """What the transport gets for one attempt: the rendered call, a completion token and
    the trace context for calls that leave the process."""
    leaves = call is not None
    token = ""
    if tokens is not None and leaves:
        token = tokens.mint(
            AttemptRef(
                tenant_id=dispatch.tenant_id,
                instance_id=dispatch.instance_id,
                node=dispatch.node,
                phase=dispatch.phase,
                attempt=dispatch.attempt,
            )
        )
    return StepRequest(
        tenant_id=dispatch.tenant_id,
        instance_id=dispatch.instance_id,
        node=dispatch.node,
        phase=dispatch.phase,
        attempt=dispatch.attempt,
        idempotency_key=dispatch.idempotency_key,
        target=dispatch.target,
        input=dispatch.input,
        action_output=dispatch.action_output,
        timeout=dispatch.timeout,
        call=call,
        completion_token=token,
        traceparent=traceparent(dispatch.instance_id, dispatch.idempotency_key, dispatch.attempt)
        if leaves
        else "",
    )
