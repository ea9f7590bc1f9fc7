"""Shipping: a participant reached over RabbitMQ, served by a worker process.

    cd examples/order-saga && saga worker --handlers shipping  # RabbitMQ from AMQP_URL

``saga serve`` runs no shipping code: the steps naming these handlers go through its outbox to
RabbitMQ, the worker runs them and sends the outcome back. The handlers are written exactly as
in-process ones would be; moving them into a worker changes configuration, not code.
"""

from __future__ import annotations

import asyncio
from typing import Any

from saga_orchestrator.sdk import StepContext, handler


@handler("shipping.ship")
async def ship(step: StepContext) -> dict[str, Any]:
    await asyncio.sleep(0.2)  # booking a carrier
    return {"tracking": f"TRK-{step.input['order']}", "address": step.input["address"]}


@handler("shipping.cancel")
async def cancel(step: StepContext) -> dict[str, Any]:
    # The action's output is there if the action ever answered; a cancel of a parcel that was
    # never booked has nothing to do.
    booked = step.action_output or {}
    return {"cancelled": booked.get("tracking")}
