"""The participants of the README's tour, run in-process by ``saga serve --handlers
examples.tour.shop``. Each step takes half a second so the event stream is worth watching."""

from __future__ import annotations

import asyncio
from typing import Any

from saga_orchestrator import NonRetryableStepError, StepContext, handler

PAUSE = 0.5


@handler("inventory.reserve")
async def reserve(step: StepContext) -> dict[str, Any]:
    await asyncio.sleep(PAUSE)
    return {"reservation": f"R-{step.input['sku']}"}


@handler("inventory.release")
async def release(step: StepContext) -> dict[str, Any]:
    await asyncio.sleep(PAUSE)
    return {"released": (step.action_output or {}).get("reservation")}


@handler("payment.charge")
async def charge(step: StepContext) -> dict[str, Any]:
    await asyncio.sleep(PAUSE)
    return {"charge": f"CH-{step.instance_id[:8]}"}


@handler("payment.refund")
async def refund(step: StepContext) -> dict[str, Any]:
    await asyncio.sleep(PAUSE)
    return {"refunded": (step.action_output or {}).get("charge")}


@handler("shipping.ship")
async def ship(step: StepContext) -> dict[str, Any]:
    await asyncio.sleep(PAUSE)
    if step.input["address"] == "nowhere":
        raise NonRetryableStepError("no carrier delivers there", error_type="Undeliverable")
    return {"tracking": f"T-{step.input['sku']}"}
