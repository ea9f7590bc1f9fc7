"""Payment: a participant service the orchestrator calls over HTTP, and one that sometimes
answers later.

    python examples/order-saga/payment.py 8102

``POST /charges`` charges an amount up to 1000 at once (200). A larger amount needs a slow
check, so the service answers ``202 Accepted`` and reports the result about a second later
through the ``Saga-Callback-Url`` it was given, with the ``Saga-Completion-Token`` that proves
which attempt it completes. The card ``4000-DECLINED`` is refused with 402. ``POST /refunds``
(the compensation) gives the money back; ``GET /charges`` shows every charge.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
import uvicorn
from fastapi import BackgroundTasks, FastAPI, Header
from fastapi.responses import JSONResponse
from pydantic import BaseModel

INSTANT_LIMIT = 1000
"""Larger amounts are checked first: they complete by callback."""
DECLINED_CARD = "4000-DECLINED"
CHECK_SECONDS = 1.0

log = logging.getLogger("payment")


class ChargeRequest(BaseModel):
    order: str
    amount: float
    card: str


class RefundRequest(BaseModel):
    order: str


@dataclass(slots=True)
class Callback:
    """Where and how to report on an accepted attempt."""

    url: str
    token: str


Answer = tuple[int, dict[str, Any]]

app = FastAPI(title="payment")
charges: dict[str, dict[str, Any]] = {}
"""Order id -> its charge."""
answers: dict[str, Answer] = {}
"""Idempotency-Key -> the final answer given to it."""
checking: dict[str, Callback] = {}
"""Idempotency-Key -> the attempt to complete when the check of a large amount is done."""

IdempotencyKey = Annotated[str, Header(alias="Idempotency-Key")]
CallbackUrl = Annotated[str, Header(alias="Saga-Callback-Url")]
CompletionToken = Annotated[str, Header(alias="Saga-Completion-Token")]


@app.post("/charges")
async def charge(
    request: ChargeRequest,
    key: IdempotencyKey,
    callback_url: CallbackUrl,
    token: CompletionToken,
    background: BackgroundTasks,
) -> JSONResponse:
    if key in answers:  # a retry of an attempt already answered: the same answer
        status, body = answers[key]
        return JSONResponse(body, status_code=status)
    if key in checking:
        # A retry while the check still runs (the first attempt timed out): charge once, and
        # complete the newest attempt, since the orchestrator only waits for that one.
        checking[key] = Callback(callback_url, token)
        return JSONResponse({"status": "checking"}, status_code=202)
    if request.card == DECLINED_CARD:
        answers[key] = 402, {"title": "card declined"}  # a 4xx: failed for good
    elif request.amount <= INSTANT_LIMIT:
        answers[key] = 200, _charge(request)
    else:
        checking[key] = Callback(callback_url, token)
        background.add_task(_check_then_complete, key, request)  # runs after the 202 is sent
        return JSONResponse({"status": "checking"}, status_code=202)
    status, body = answers[key]
    return JSONResponse(body, status_code=status)


def _charge(request: ChargeRequest) -> dict[str, Any]:
    charges[request.order] = {
        "charge_id": f"CH-{request.order}",
        "amount": request.amount,
        "status": "charged",
    }
    return charges[request.order]


async def _check_then_complete(key: str, request: ChargeRequest) -> None:
    await asyncio.sleep(CHECK_SECONDS)
    output = _charge(request)
    answers[key] = 200, output
    callback = checking.pop(key)
    # What a 200 would have carried goes to `{Saga-Callback-Url}/complete`; a failure would
    # go to `/fail` as {"error": {"type": ..., "message": ..., "retryable": ...}}.
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{callback.url}/complete",
            json={"output": output},
            headers={"Saga-Completion-Token": callback.token},
        )
    log.info("completed %s by callback: %s", request.order, response.status_code)


@app.post("/refunds")
async def refund(request: RefundRequest) -> dict[str, Any]:
    # Keyed by order, so a repeated refund gives the money back once; a refund of a charge
    # that never happened has nothing to do, and says so.
    charged = charges.get(request.order)
    if charged is None:
        return {"order": request.order, "status": "nothing to refund"}
    charged["status"] = "refunded"
    return charged


@app.get("/charges")
async def list_charges() -> dict[str, dict[str, Any]]:
    return charges


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
    port = int(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("PORT", "8102"))
    uvicorn.run(app, host="127.0.0.1", port=port)
