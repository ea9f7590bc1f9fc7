"""The wire format with workers: commands and replies round-trip; malformed replies say why."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from saga_orchestrator.core.events import ErrorInfo, Phase
from saga_orchestrator.definition.models import HandlerCall
from saga_orchestrator.errors import InvalidInput
from saga_orchestrator.transports.amqp_messages import (
    PROPERTY_EXPIRATION,
    PROPERTY_MESSAGE_ID,
    StepReply,
    command_for,
    command_message,
    decode_command,
    decode_reply,
    encode_reply,
)
from saga_orchestrator.transports.base import AmqpCallSpec, StepOutcome, StepRequest


def request(**changes: Any) -> StepRequest:
    fields: dict[str, Any] = {
        "tenant_id": "t",
        "instance_id": "i-1",
        "node": "reserve",
        "phase": Phase.ACTION,
        "attempt": 2,
        "idempotency_key": "i-1:reserve:action",
        "target": HandlerCall(handler="inventory.reserve"),
        "input": {"sku": "A"},
        "action_output": None,
        "timeout": 30.0,
        "traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01",
    }
    return StepRequest(**{**fields, **changes})


def test_a_command_round_trips_and_its_message_id_is_the_idempotency_key() -> None:
    command = command_for(request(), handler="inventory.reserve")
    message = command_message(command, exchange="saga.commands", routing_key="inventory.reserve")
    assert message.key == "i-1:reserve:action:2"  # one outbox row per attempt
    assert message.headers[PROPERTY_MESSAGE_ID] == "i-1:reserve:action"
    assert message.headers[PROPERTY_EXPIRATION] == "30000"
    assert decode_command(message.body) == command


def test_an_amqp_target_sends_its_rendered_body() -> None:
    call = AmqpCallSpec(exchange="x", routing_key="k", body={"rendered": True})
    assert command_for(request(call=call), handler=None).input == {"rendered": True}


@pytest.mark.parametrize(
    "outcome",
    [
        StepOutcome(output={"id": 1}),
        StepOutcome(error=ErrorInfo(type="OutOfStock", message="none", retryable=False)),
        StepOutcome(
            error=ErrorInfo(
                type="Timeout", message="slow", retryable=True, unknown=True, retry_after=2.5
            )
        ),
    ],
)
def test_a_reply_round_trips_with_its_classification(outcome: StepOutcome) -> None:
    reply = StepReply(
        tenant_id="t", instance_id="i-1", node="reserve", phase=Phase.COMPENSATION, attempt=3,
        outcome=outcome,
    )  # fmt: skip
    assert decode_reply(encode_reply(reply)) == reply


GOOD = {
    "tenant_id": "t",
    "instance_id": "i-1",
    "node": "reserve",
    "phase": "action",
    "attempt": 1,
    "status": "succeeded",
}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (orjson.dumps({**GOOD, "status": "maybe"}), "status must be"),
        (orjson.dumps({**GOOD, "status": "failed"}), "needs an 'error' object"),
        (orjson.dumps({**GOOD, "attempt": 0}), "positive integer"),
        (orjson.dumps({**GOOD, "attempt": True}), "positive integer"),
        (orjson.dumps({**GOOD, "phase": "sideways"}), "sideways"),
        (orjson.dumps({k: v for k, v in GOOD.items() if k != "node"}), "node"),
        (orjson.dumps({**GOOD, "instance_id": ""}), "non-empty string"),
        (
            orjson.dumps({**GOOD, "status": "failed", "error": {"type": "X", "retryable": "no"}}),
            "true or false",
        ),
        (
            orjson.dumps({**GOOD, "status": "failed", "error": {"type": "X", "retry_after": "1"}}),
            "retry_after",
        ),
    ],
)
def test_malformed_replies_are_refused_with_a_reason(body: bytes, reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason):
        decode_reply(body)
