"""The in-process handlers of ``cluster_bench.py``'s saga, loaded by every node with ``saga serve
--handlers cluster_bench_handlers`` (the bench puts ``bench/`` on ``PYTHONPATH``).

Three steps and their compensations, all no-ops: what the bench measures is the nodes and the
database they share, not the steps.
"""

from __future__ import annotations

from typing import Any, Final

from saga_orchestrator.transports.handlers import StepContext, handler

SAGA: Final = "cluster-bench"
DEFINITION: Final[dict[str, Any]] = {
    "name": SAGA,
    "version": "1.0.0",
    "steps": [
        {"name": "reserve", "action": "cluster.reserve", "compensation": "cluster.release"},
        {"name": "charge", "action": "cluster.charge", "compensation": "cluster.refund"},
        {"name": "ship", "action": "cluster.ship", "compensation": "cluster.cancel"},
    ],
}


@handler("cluster.reserve")
async def reserve(step: StepContext) -> None:
    """Succeeds at once."""


@handler("cluster.charge")
async def charge(step: StepContext) -> None:
    """Succeeds at once."""


@handler("cluster.ship")
async def ship(step: StepContext) -> None:
    """Succeeds at once."""


@handler("cluster.release")
async def release(step: StepContext) -> None:
    """Compensates ``reserve`` (never called: every step succeeds)."""


@handler("cluster.refund")
async def refund(step: StepContext) -> None:
    """Compensates ``charge``."""


@handler("cluster.cancel")
async def cancel(step: StepContext) -> None:
    """Compensates ``ship``."""
