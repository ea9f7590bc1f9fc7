"""The in-process handler of ``tenant_isolation_bench.py``'s saga, loaded by ``saga serve
--handlers tenant_isolation_handlers`` (the bench puts ``bench/`` on ``PYTHONPATH``).

Every step does nothing: what the bench measures is the node admitting and starting sagas,
while the engine still runs each admitted saga's steps as a node does.
"""

from __future__ import annotations

from saga_orchestrator.transports.handlers import StepContext, handler

ACTION = "tenant_isolation.noop"


@handler(ACTION)
async def noop(step: StepContext) -> None:
    """A step that succeeds at once."""
