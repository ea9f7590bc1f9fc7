"""In-process step handlers: ``@handler("inventory.reserve")`` on an async function.

The decorator only marks the function; a :class:`HandlerRegistry` collects marked functions
from modules or lists, so there is no global registry for tests to patch.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar

from saga_orchestrator.core.events import Phase
from saga_orchestrator.errors import ConfigurationError

HANDLER_ATTRIBUTE = "__saga_handler_name__"


@dataclass(frozen=True, slots=True, kw_only=True)
class StepContext:
    """What a handler receives for one attempt."""

    tenant_id: str
    instance_id: str
    node: str
    phase: Phase
    attempt: int
    idempotency_key: str
    input: Any
    action_output: Any = None
    """For a compensation: what the action returned, if it ever answered."""


HandlerFunction = Callable[[StepContext], Awaitable[Any]] | Callable[[StepContext], Any]
F = TypeVar("F", bound=Callable[..., Any])


def handler(name: str) -> Callable[[F], F]:
    """Mark a function as the handler of ``name`` (an action or a compensation)."""

    def mark(function: F) -> F:
        setattr(function, HANDLER_ATTRIBUTE, name)
        return function

    return mark


class HandlerRegistry:
    def __init__(self, handlers: Iterable[Callable[..., Any]] = ()) -> None:
        self._handlers: dict[str, HandlerFunction] = {}
        for function in handlers:
            self.register(function)

    def register(self, function: Callable[..., Any], name: str | None = None) -> None:
        key = name or getattr(function, HANDLER_ATTRIBUTE, None)
        if not key:
            raise ConfigurationError(
                f"{function!r} has no handler name: decorate it with @handler('...')"
            )
        existing = self._handlers.get(key)
        if existing is not None and existing is not function:
            raise ConfigurationError(f"handler {key!r} is registered twice")
        self._handlers[key] = function

    def include(self, module: ModuleType) -> int:
        """Register every ``@handler`` function of a module; return how many."""
        found = [
            value for value in vars(module).values() if getattr(value, HANDLER_ATTRIBUTE, None)
        ]
        for function in found:
            self.register(function)
        return len(found)

    def get(self, name: str) -> HandlerFunction | None:
        return self._handlers.get(name)

    def names(self) -> frozenset[str]:
        return frozenset(self._handlers)

    def __iter__(self) -> Iterator[str]:
        return iter(self._handlers)

    def __len__(self) -> int:
        return len(self._handlers)


async def invoke(function: HandlerFunction, context: StepContext) -> Any:
    """Await an async handler; run a plain function in a thread so it cannot block the loop."""
    if inspect.iscoroutinefunction(function):
        return await function(context)
    result = await asyncio.to_thread(function, context)
    if inspect.isawaitable(result):
        return await result
    return result
