"""No-op handlers of the AMQP benchmark, served by a ``saga worker`` process."""

from __future__ import annotations

from saga_orchestrator.sdk import StepContext, handler


@handler("bench.reserve")
async def reserve(ctx: StepContext) -> dict[str, str]:
    return {"reservation": "r-1"}


@handler("bench.charge")
async def charge(ctx: StepContext) -> dict[str, str]:
    return {"charge": "c-1"}


@handler("bench.ship")
async def ship(ctx: StepContext) -> dict[str, str]:
    return {"shipment": "s-1"}


@handler("bench.release")
async def release(ctx: StepContext) -> None:
    return None


@handler("bench.refund")
async def refund(ctx: StepContext) -> None:
    return None


@handler("bench.cancel")
async def cancel(ctx: StepContext) -> None:
    return None
