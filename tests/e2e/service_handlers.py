"""Participants of ``tests/e2e/test_service.py``, run in-process by ``saga serve --handlers
tests.e2e.service_handlers``.

Every outcome depends only on the instance's input, so each instance's final state is known in
advance:

- ``svc.reserve`` / ``svc.charge`` / ``svc.ship`` sleep 10-50 ms and succeed; ``svc.ship``
  fails definitively (``NonRetryableStepError``) when ``input.fail_ship`` is true.
- ``svc.slow`` sleeps ``input.slow_seconds`` (1 s by default), or, when ``input.hold_file`` is
  set, runs until the test removes that file: the test cancels its saga while it runs, with no
  race against the clock.
- ``undo.charge`` (the compensation of ``charge`` in the ``service-parking`` saga) fails
  retryably while the file named by ``input.block_file`` exists; with a compensation retry
  policy of one attempt the saga parks in ``failed`` until the file is gone and an operator
  retries it.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

from saga_orchestrator import NonRetryableStepError, RetryableStepError, StepContext, handler


async def _pause() -> None:
    await asyncio.sleep(random.uniform(0.01, 0.05))


@handler("svc.reserve")
async def reserve(step: StepContext) -> dict[str, Any]:
    await _pause()
    return {"reservation": f"R-{step.instance_id[:8]}"}


@handler("svc.release")
async def release(step: StepContext) -> dict[str, Any]:
    await _pause()
    return {"released": (step.action_output or {}).get("reservation")}


@handler("svc.charge")
async def charge(step: StepContext) -> dict[str, Any]:
    await _pause()
    return {"charge": f"CH-{step.instance_id[:8]}"}


@handler("svc.refund")
async def refund(step: StepContext) -> dict[str, Any]:
    await _pause()
    return {"refunded": (step.action_output or {}).get("charge")}


@handler("svc.ship")
async def ship(step: StepContext) -> dict[str, Any]:
    await _pause()
    if step.input.get("fail_ship"):
        raise NonRetryableStepError("no carrier delivers there", error_type="Undeliverable")
    return {"tracking": f"T-{step.instance_id[:8]}"}


@handler("svc.slow")
async def slow(step: StepContext) -> dict[str, Any]:
    """Runs ~1 s; with ``input.hold_file``, runs until that file is gone (at most 30 s)."""
    hold = step.input.get("hold_file")
    if not hold:
        await asyncio.sleep(float(step.input.get("slow_seconds", 1.0)))
        return {"slow": "done"}
    for _ in range(1500):
        if not await asyncio.to_thread(Path(hold).exists):
            return {"slow": "released"}
        await asyncio.sleep(0.02)
    return {"slow": "gave up waiting"}


@handler("svc.undo_slow")
async def undo_slow(step: StepContext) -> dict[str, Any]:
    await _pause()
    return {"undone": (step.action_output or {}).get("slow")}


@handler("undo.charge")
async def undo_charge(step: StepContext) -> dict[str, Any]:
    await _pause()
    block = step.input.get("block_file")
    if block and await asyncio.to_thread(Path(block).exists):
        raise RetryableStepError(f"{block} still blocks the refund", error_type="RefundBlocked")
    return {"refunded": (step.action_output or {}).get("charge")}
