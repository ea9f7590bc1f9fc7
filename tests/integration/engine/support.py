"""Participants for engine tests: handlers that record every call and obey a script."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from saga_orchestrator.core.events import Phase
from saga_orchestrator.errors import NonRetryableStepError, RetryableStepError
from saga_orchestrator.transports.handlers import HandlerRegistry, StepContext


@dataclass
class Participants:
    """Handlers ``<name>`` and ``undo.<name>``; ``script[name]`` lists what each successive
    call does: "ok", "retry" (retryable error), "reject" (definite), or "hang" (never answers
    before its timeout)."""

    names: tuple[str, ...]
    script: dict[str, list[str]] = field(default_factory=dict)
    calls: list[tuple[str, str, Phase, int, str]] = field(default_factory=list)
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    entered: dict[str, asyncio.Event] = field(default_factory=dict)
    """Set when the named handler is first called."""

    def reached(self, name: str) -> asyncio.Event:
        return self.entered.setdefault(name, asyncio.Event())

    def registry(self) -> HandlerRegistry:
        registry = HandlerRegistry()
        for name in self.names:
            registry.register(self._handler(name), name)
            registry.register(self._handler(f"undo.{name}"), f"undo.{name}")
        return registry

    def _handler(self, name: str) -> Callable[[StepContext], Any]:
        async def handle(ctx: StepContext) -> Any:
            self.calls.append((ctx.instance_id, name, ctx.phase, ctx.attempt, ctx.idempotency_key))
            self.reached(name).set()
            gate = self.gates.get(name)
            if gate is not None:
                await gate.wait()
            plan = self.script.get(name, [])
            count = sum(1 for call in self.calls if call[1] == name and call[0] == ctx.instance_id)
            action = plan[count - 1] if count <= len(plan) else "ok"
            if action == "retry":
                raise RetryableStepError(f"{name} is busy")
            if action == "reject":
                raise NonRetryableStepError(f"{name} says no", error_type="Rejected")
            if action == "hang":
                await asyncio.sleep(3600)
            return {"by": name, "input": ctx.input}

        return handle

    def called(self, instance_id: str | None = None) -> list[str]:
        return [c[1] for c in self.calls if instance_id is None or c[0] == instance_id]

    def counts(self) -> Counter[str]:
        return Counter(c[1] for c in self.calls)


def steps(*names: str, **options: Any) -> list[dict[str, Any]]:
    return [
        {"name": name, "action": name, "compensation": f"undo.{name}", **options} for name in names
    ]


def saga(
    name: str, nodes: list[dict[str, Any]], version: str = "1.0.0", **extra: Any
) -> dict[str, Any]:
    return {"name": name, "version": version, "steps": nodes, **extra}


FAST_RETRY = {"max_attempts": 3, "initial_interval": 0.05, "max_interval": 0.1}
