"""The order saga of ``saga demo``, packaged so the demo runs from an installed wheel.

The definition is ``examples/definitions/order.yaml`` written with the SDK builder, plus one
field for the demo: the start context's ``fail_shipping`` reaches the shipping step's input,
and the demo's shipping handler then rejects the parcel for good. Its version,
``1.0.0-demo``, is a prerelease, which no version constraint selects unless it names it, so
the demo never shadows a real ``order`` definition registered in the same database.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from saga_orchestrator.core.events import Event
from saga_orchestrator.core.view import InstanceView
from saga_orchestrator.definition.models import SagaDefinition
from saga_orchestrator.errors import NonRetryableStepError, SagaError
from saga_orchestrator.orchestrator import Orchestrator
from saga_orchestrator.sdk import Retry, SagaBuilder, branch, step
from saga_orchestrator.transports.handlers import StepContext, handler

__all__ = [
    "DEFINITION_NAME",
    "DEFINITION_VERSION",
    "HANDLERS",
    "SCENARIOS",
    "DemoRun",
    "Scenario",
    "order_definition",
    "run_demo",
]

DEFINITION_NAME: Final = "order"
DEFINITION_VERSION: Final = "1.0.0-demo"
HANDLER_DELAY: Final = 0.02
"""Seconds each demo handler "works", so the timeline shows time passing."""

_ORDER_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["order_id", "customer", "items", "amount", "fail_shipping"],
    "properties": {
        "order_id": {"type": "string"},
        "customer": {
            "type": "object",
            "required": ["id", "email"],
            "properties": {"id": {"type": "string"}, "email": {"type": "string"}},
        },
        "items": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["sku", "quantity"],
                "properties": {
                    "sku": {"type": "string"},
                    "quantity": {"type": "integer", "minimum": 1},
                },
            },
        },
        "amount": {"type": "number", "exclusiveMinimum": 0},
        "fail_shipping": {"type": "boolean"},
    },
}


def order_definition() -> SagaDefinition:
    """Reserve stock, charge the customer, then ship and send the confirmation in parallel."""
    ship = step(
        "ship",
        "shipping.ship",
        compensation="shipping.cancel",
        input={
            "order_id": "${input.order_id}",
            "reservation": "${steps.reserve.output.reservation_id}",
            "fail": "${input.fail_shipping}",
        },
    )
    confirm = step(
        "confirm",
        "notify.email",
        kind="retriable",
        input={"to": "${input.customer.email}", "subject": "Order ${input.order_id} confirmed"},
    )
    return (
        SagaBuilder(
            DEFINITION_NAME,
            DEFINITION_VERSION,
            description="Reserve stock, charge the customer, then ship the parcel and notify "
            "the customer.",
            timeout="30m",
        )
        .input_schema(_ORDER_SCHEMA)
        .defaults(
            retry=Retry(max_attempts=5, initial_interval="500ms", max_interval="30s"),
            timeout="20s",
        )
        .step(
            "reserve",
            "inventory.reserve",
            compensation="inventory.release",
            input={"order_id": "${input.order_id}", "items": "${input.items}"},
        )
        .step(
            "charge",
            "payment.charge",
            compensation="payment.refund",
            input={
                "order_id": "${input.order_id}",
                "customer_id": "${input.customer.id}",
                "amount": "${input.amount}",
            },
            retry=Retry(max_attempts=3, non_retryable_errors=("CardDeclined",)),
        )
        .parallel("fulfil", branch(ship), branch(confirm))
        .build()
    )


# --- the participants, played in-process ----------------------------------------------------


@handler("inventory.reserve")
async def reserve(context: StepContext) -> dict[str, Any]:
    await asyncio.sleep(HANDLER_DELAY)
    return {"reservation_id": f"R-{context.input['order_id']}"}


@handler("inventory.release")
async def release(context: StepContext) -> dict[str, Any]:
    await asyncio.sleep(HANDLER_DELAY)
    return {"released": (context.action_output or {}).get("reservation_id")}


@handler("payment.charge")
async def charge(context: StepContext) -> dict[str, Any]:
    await asyncio.sleep(HANDLER_DELAY)
    return {"charge_id": f"CH-{context.input['order_id']}", "amount": context.input["amount"]}


@handler("payment.refund")
async def refund(context: StepContext) -> dict[str, Any]:
    await asyncio.sleep(HANDLER_DELAY)
    return {"refunded": (context.action_output or {}).get("charge_id")}


@handler("shipping.ship")
async def ship(context: StepContext) -> dict[str, Any]:
    await asyncio.sleep(HANDLER_DELAY * 2)
    if context.input.get("fail"):
        raise NonRetryableStepError("no carrier accepts the parcel", error_type="ShippingRejected")
    return {"tracking": f"TRK-{context.input['order_id']}"}


@handler("shipping.cancel")
async def cancel_shipment(context: StepContext) -> dict[str, Any]:
    await asyncio.sleep(HANDLER_DELAY)
    return {"cancelled": (context.action_output or {}).get("tracking")}


@handler("notify.email")
async def email(context: StepContext) -> dict[str, Any]:
    await asyncio.sleep(HANDLER_DELAY)
    return {"sent_to": context.input["to"]}


HANDLERS: Final[tuple[Callable[..., Any], ...]] = (
    reserve,
    release,
    charge,
    refund,
    ship,
    cancel_shipment,
    email,
)


# --- the two runs ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    title: str
    context: dict[str, Any]


def _order(order_id: str, *, fail_shipping: bool) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "customer": {"id": "C-42", "email": "ada@example.com"},
        "items": [{"sku": "BOOK-1", "quantity": 2}],
        "amount": 39.9,
        "fail_shipping": fail_shipping,
    }


SCENARIOS: Final = (
    Scenario(
        title="order A-1001: every step succeeds",
        context=_order("A-1001", fail_shipping=False),
    ),
    Scenario(
        title="order A-1002: shipping fails, so the charge is refunded, the stock released",
        context=_order("A-1002", fail_shipping=True),
    ),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoRun:
    scenario: Scenario
    view: InstanceView
    history: list[Event]


async def run_demo(saga: Orchestrator, *, timeout: float = 30.0) -> list[DemoRun]:
    """Register the demo definition on an open orchestrator (with :data:`HANDLERS`), then run
    each scenario to its end, one after the other."""
    await saga.register(order_definition())
    return [await _run(saga, scenario, timeout) for scenario in SCENARIOS]


async def _run(saga: Orchestrator, scenario: Scenario, timeout: float) -> DemoRun:
    started = await saga.start(DEFINITION_NAME, scenario.context, version=DEFINITION_VERSION)
    try:
        view = await saga.wait(started.instance_id, timeout)
    except TimeoutError:
        raise SagaError(
            f"instance {started.instance_id} did not finish within {timeout:g}s"
        ) from None
    return DemoRun(scenario=scenario, view=view, history=await saga.history(started.instance_id))
