"""The wire format of step commands and replies over RabbitMQ: the contract with workers.

A command is a persistent JSON message whose AMQP ``message_id`` is the step's idempotency key
(stable across retries and crashes: participants dedupe on it) and whose ``correlation_id``
names the attempt. Its reply names the same attempt and says explicitly whether it succeeded,
and if not, whether the failure is retryable (semantics §3). Pure functions, no IO: the
engine writes commands to the outbox with them, the relay and workers read them back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from saga_orchestrator.core.events import ErrorInfo, Phase
from saga_orchestrator.errors import InvalidInput
from saga_orchestrator.transports.base import AmqpCallSpec, StepOutcome, StepRequest

COMMAND_EXCHANGE = "saga.commands"
"""Direct exchange: handler targets run by workers are routed by handler name."""
REPLY_QUEUE = "saga.replies"
INTEGRATION_EXCHANGE = "saga.events"
"""Topic exchange of saga lifecycle events (routing key ``<tenant>.<saga>.<kind>``)."""
DEAD_LETTER_EXCHANGE = "saga.dead-letter"
DEAD_LETTER_QUEUE = "saga.dead-letter"
PROTOCOL_VERSION = 1

# Outbox headers that the relay turns into AMQP message properties instead of headers.
PROPERTY_MESSAGE_ID = "x-saga-message-id"
PROPERTY_CORRELATION_ID = "x-saga-correlation-id"
PROPERTY_REPLY_TO = "x-saga-reply-to"
PROPERTY_EXPIRATION = "x-saga-expiration-ms"
PROPERTY_BROADCAST = "x-saga-broadcast"
"""Set on events (not commands): having no subscriber is fine, so the publish is not
``mandatory`` and an unroutable message counts as delivered."""
PROPERTY_HEADERS = frozenset(
    {
        PROPERTY_MESSAGE_ID,
        PROPERTY_CORRELATION_ID,
        PROPERTY_REPLY_TO,
        PROPERTY_EXPIRATION,
        PROPERTY_BROADCAST,
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class AmqpMessage:
    """A message to publish; the engine keeps it in the outbox until the broker confirms it.

    ``key`` identifies the message in the outbox (one per attempt); ``headers`` whose names are
    in :data:`PROPERTY_HEADERS` become AMQP properties when published."""

    key: str
    exchange: str
    routing_key: str
    body: bytes
    headers: dict[str, str]


@dataclass(frozen=True, slots=True, kw_only=True)
class StepCommand:
    tenant_id: str
    instance_id: str
    node: str
    phase: Phase
    attempt: int
    idempotency_key: str
    handler: str | None
    """The handler a worker runs; None for a raw amqp target (the consumer knows its queue)."""
    input: Any
    action_output: Any
    timeout: float
    traceparent: str

    @property
    def correlation_id(self) -> str:
        return attempt_id(self.instance_id, self.node, self.phase, self.attempt)


@dataclass(frozen=True, slots=True, kw_only=True)
class StepReply:
    tenant_id: str
    instance_id: str
    node: str
    phase: Phase
    attempt: int
    outcome: StepOutcome


def attempt_id(instance_id: str, node: str, phase: Phase, attempt: int) -> str:
    return f"{instance_id}:{node}:{phase.value}:{attempt}"


def command_for(request: StepRequest, *, handler: str | None) -> StepCommand:
    return StepCommand(
        tenant_id=request.tenant_id,
        instance_id=request.instance_id,
        node=request.node,
        phase=request.phase,
        attempt=request.attempt,
        idempotency_key=request.idempotency_key,
        handler=handler,
        input=request.call.body if isinstance(request.call, AmqpCallSpec) else request.input,
        action_output=request.action_output,
        timeout=request.timeout,
        traceparent=request.traceparent,
    )


def command_message(
    command: StepCommand, *, exchange: str, routing_key: str, reply_to: str = REPLY_QUEUE
) -> AmqpMessage:
    """The message that carries a command. Its outbox key includes the attempt (each attempt
    is a message of its own); its AMQP message id is the idempotency key."""
    return AmqpMessage(
        key=command.correlation_id,
        exchange=exchange,
        routing_key=routing_key,
        body=encode_command(command),
        headers={
            PROPERTY_MESSAGE_ID: command.idempotency_key,
            PROPERTY_CORRELATION_ID: command.correlation_id,
            PROPERTY_REPLY_TO: reply_to,
            # A command nobody consumed before its attempt timed out is void: the engine has
            # moved on (retry or compensation), so the broker may drop it.
            PROPERTY_EXPIRATION: str(max(1000, int(command.timeout * 1000))),
            "traceparent": command.traceparent,
            "saga-tenant": command.tenant_id,
            "saga-instance-id": command.instance_id,
            "saga-step": command.node,
            "saga-phase": command.phase.value,
            "saga-attempt": str(command.attempt),
        },
    )


def encode_command(command: StepCommand) -> bytes:
    return orjson.dumps(
        {
            "v": PROTOCOL_VERSION,
            "tenant_id": command.tenant_id,
            "instance_id": command.instance_id,
            "node": command.node,
            "phase": command.phase.value,
            "attempt": command.attempt,
            "idempotency_key": command.idempotency_key,
            "handler": command.handler,
            "input": command.input,
            "action_output": command.action_output,
            "timeout": command.timeout,
            "traceparent": command.traceparent,
        }
    )


def decode_command(body: bytes) -> StepCommand:
    data = _object(body)
    try:
        return StepCommand(
            tenant_id=_text(data, "tenant_id"),
            instance_id=_text(data, "instance_id"),
            node=_text(data, "node"),
            phase=Phase(data["phase"]),
            attempt=_positive(data, "attempt"),
            idempotency_key=_text(data, "idempotency_key"),
            handler=data.get("handler"),
            input=data.get("input"),
            action_output=data.get("action_output"),
            timeout=float(data.get("timeout", 60.0)),
            traceparent=str(data.get("traceparent", "")),
        )
    except (KeyError, ValueError, TypeError) as error:
        raise InvalidInput(f"malformed step command: {error}") from error


def encode_reply(reply: StepReply) -> bytes:
    outcome = reply.outcome
    error = outcome.error
    return orjson.dumps(
        {
            "v": PROTOCOL_VERSION,
            "tenant_id": reply.tenant_id,
            "instance_id": reply.instance_id,
            "node": reply.node,
            "phase": reply.phase.value,
            "attempt": reply.attempt,
            "status": "succeeded" if error is None else "failed",
            "output": outcome.output,
            "error": None
            if error is None
            else {
                "type": error.type,
                "message": error.message,
                "retryable": error.retryable,
                "unknown": error.unknown,
                "retry_after": error.retry_after,
            },
        }
    )


def decode_reply(body: bytes) -> StepReply:
    """Parse a reply; :class:`InvalidInput` says what is wrong with a malformed one."""
    data = _object(body)
    try:
        return StepReply(
            tenant_id=_text(data, "tenant_id"),
            instance_id=_text(data, "instance_id"),
            node=_text(data, "node"),
            phase=Phase(data["phase"]),
            attempt=_positive(data, "attempt"),
            outcome=_outcome(data),
        )
    except (KeyError, ValueError, TypeError) as error:
        raise InvalidInput(f"malformed step reply: {error}") from error


def _outcome(data: dict[str, Any]) -> StepOutcome:
    status = data["status"]
    if status == "succeeded":
        return StepOutcome(output=data.get("output"))
    if status != "failed":
        raise ValueError(f"status must be 'succeeded' or 'failed', not {status!r}")
    error = data.get("error")
    if not isinstance(error, dict):
        raise TypeError("a failed reply needs an 'error' object")
    retry_after = error.get("retry_after")
    if retry_after is not None and (
        isinstance(retry_after, bool) or not isinstance(retry_after, int | float)
    ):
        raise TypeError("'retry_after' must be a number of seconds")
    return StepOutcome(
        error=ErrorInfo(
            type=str(error.get("type") or "StepFailed")[:200],
            message=str(error.get("message") or "")[:4000],
            retryable=_flag(error, "retryable"),
            unknown=_flag(error, "unknown", default=False),
            retry_after=None if retry_after is None else min(max(float(retry_after), 0.0), 3600),
        )
    )


def _object(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise InvalidInput(f"not JSON: {error}") from error
    if not isinstance(data, dict):
        raise InvalidInput("not a JSON object")
    return data


def _text(data: dict[str, Any], key: str) -> str:
    value = data[key]
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key!r} must be a non-empty string")
    return value


def _positive(data: dict[str, Any], key: str) -> int:
    value = data[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{key!r} must be a positive integer")
    return value


def _flag(data: dict[str, Any], key: str, *, default: bool = True) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise TypeError(f"{key!r} must be true or false")
    return value


__all__ = [
    "COMMAND_EXCHANGE",
    "DEAD_LETTER_EXCHANGE",
    "DEAD_LETTER_QUEUE",
    "INTEGRATION_EXCHANGE",
    "PROPERTY_BROADCAST",
    "PROPERTY_HEADERS",
    "REPLY_QUEUE",
    "AmqpMessage",
    "StepCommand",
    "StepReply",
    "attempt_id",
    "command_for",
    "command_message",
    "decode_command",
    "decode_reply",
    "encode_command",
    "encode_reply",
]
