"""Integration events: a saga's lifecycle published to a topic exchange, for other services.

They travel through the transactional outbox, written in the same transaction as the events
they announce, so a subscriber never hears of a change that was rolled back and never misses
one that committed (delivery is at least once; ``message_id`` is stable for deduplication).

Routing keys are ``<tenant>.<saga name>.<kind>``: bind ``*.order.completed`` to hear every
tenant's completed orders, or ``acme.#`` for everything of one tenant.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from saga_orchestrator.core.events import (
    CompensationStarted,
    Event,
    SagaCancelled,
    SagaCompensated,
    SagaCompleted,
    SagaParked,
    SagaStarted,
    SagaTimedOut,
)
from saga_orchestrator.core.state import SagaState
from saga_orchestrator.store import OutboxMessage
from saga_orchestrator.transports.amqp_messages import (
    INTEGRATION_EXCHANGE,
    PROPERTY_BROADCAST,
    PROPERTY_MESSAGE_ID,
)

_KINDS: Final[dict[type[Event], str]] = {
    SagaStarted: "started",
    CompensationStarted: "compensating",
    SagaCompleted: "completed",
    SagaCompensated: "compensated",
    SagaCancelled: "cancelled",
    SagaTimedOut: "timed_out",
    SagaParked: "failed",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class IntegrationEvents:
    """Which tenants publish their sagas' lifecycle (a tenant setting)."""

    enabled_for: Callable[[str], bool]
    exchange: str = INTEGRATION_EXCHANGE

    @staticmethod
    def for_tenants(tenants: Sequence[str]) -> IntegrationEvents:
        """``["*"]`` for every tenant."""
        chosen = frozenset(tenants)
        return IntegrationEvents(enabled_for=lambda t: "*" in chosen or t in chosen)

    def messages(
        self, state: SagaState, events: Sequence[Event], first_seq: int
    ) -> list[OutboxMessage]:
        """Messages for the lifecycle events among ``events`` (numbered from ``first_seq``);
        ``state`` is the instance after them."""
        if not self.enabled_for(state.tenant_id):
            return []
        found: list[OutboxMessage] = []
        for seq, event in enumerate(events, start=first_seq):
            kind = _KINDS.get(type(event))
            if kind is not None:
                found.append(self._message(state, event, kind, seq))
        return found

    def _message(self, state: SagaState, event: Event, kind: str, seq: int) -> OutboxMessage:
        body: dict[str, Any] = {
            "type": f"saga.{kind}",
            "tenant_id": state.tenant_id,
            "instance_id": state.instance_id,
            "saga_name": state.definition_name,
            "saga_version": state.definition_version,
            "sequence": seq,
            "at": event.at.isoformat(),
        }
        if isinstance(event, SagaCompleted):
            body["output"] = event.output
        elif isinstance(event, SagaParked):
            body["reason"] = event.reason
        elif isinstance(event, CompensationStarted):
            body["cause"] = event.cause.value
        key = f"{state.instance_id}:{seq}"
        return OutboxMessage(
            tenant_id=state.tenant_id,
            instance_id=state.instance_id,
            message_id=key,
            exchange=self.exchange,
            routing_key=f"{state.tenant_id}.{state.definition_name}.{kind}",
            body=orjson.dumps(body),
            headers={
                PROPERTY_MESSAGE_ID: key,
                PROPERTY_BROADCAST: "1",
                "saga-event": f"saga.{kind}",
            },
        )
