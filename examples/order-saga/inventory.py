"""Inventory: a participant service the orchestrator calls over HTTP.

    python examples/order-saga/inventory.py 8101

``POST /reservations`` reserves an order's items (409 when one is sold out),
``DELETE /reservations/{order_id}`` releases them (the compensation), and ``GET /reservations``
shows what is held. Everything lives in memory: a restart forgets it.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

import uvicorn
from fastapi import FastAPI, Header
from fastapi.responses import JSONResponse
from pydantic import BaseModel

SOLD_OUT = "SOLD-OUT"
"""The SKU this shop never has in stock."""


class Item(BaseModel):
    sku: str
    quantity: int = 1


class ReservationRequest(BaseModel):
    order: str
    items: list[Item]


Answer = tuple[int, dict[str, Any]]

app = FastAPI(title="inventory")
reservations: dict[str, dict[str, Any]] = {}
"""Order id -> its reservation."""
answers: dict[str, Answer] = {}
"""Idempotency-Key -> the first answer given to it."""


@app.post("/reservations")
async def reserve(
    request: ReservationRequest, key: Annotated[str, Header(alias="Idempotency-Key")]
) -> JSONResponse:
    # The orchestrator retries with the same key after a timeout or a lost answer: the items
    # must be reserved once, and the retry must hear what the first attempt was told.
    if key not in answers:
        answers[key] = _reserve(request)
    status, body = answers[key]
    return JSONResponse(body, status_code=status)


def _reserve(request: ReservationRequest) -> Answer:
    if any(item.sku == SOLD_OUT for item in request.items):
        # A 4xx is a definite "no": the step fails at once, without retries.
        return 409, {"title": "out of stock", "detail": f"{SOLD_OUT} is not available"}
    reservation = {
        "reservation_id": f"R-{request.order}",
        "items": [item.model_dump() for item in request.items],
        "status": "reserved",
    }
    reservations[request.order] = reservation
    return 200, reservation  # a 2xx's JSON body becomes the step's output


@app.delete("/reservations/{order_id}")
async def release(order_id: str) -> dict[str, str]:
    # Releasing twice, or releasing what was never reserved, is not an error: a compensation
    # may be retried, and may run for an attempt whose outcome the orchestrator never heard.
    reservation = reservations.get(order_id)
    if reservation is None:
        return {"order": order_id, "status": "nothing to release"}
    reservation["status"] = "released"
    return {"order": order_id, "status": "released"}


@app.get("/reservations")
async def list_reservations() -> dict[str, dict[str, Any]]:
    return reservations


if __name__ == "__main__":
    port = int(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("PORT", "8101"))
    uvicorn.run(app, host="127.0.0.1", port=port)
