"""Runs handler targets in this process, classifying what the handler raises."""

from __future__ import annotations

import asyncio
import contextlib

import orjson

from saga_orchestrator.core.commands import Target
from saga_orchestrator.core.events import ErrorInfo
from saga_orchestrator.definition.models import HandlerCall
from saga_orchestrator.errors import StepError
from saga_orchestrator.transports.base import StepOutcome, StepRequest
from saga_orchestrator.transports.handlers import HandlerRegistry, StepContext, invoke

MAX_OUTPUT_BYTES = 1_000_000

_NO_TIMEOUT = contextlib.nullcontext()
"""Stands in for ``asyncio.timeout(None)``, which would still cost a ``Timeout`` object and a
look-up of the current task on every call."""


class InProcessTransport:
    def __init__(self, registry: HandlerRegistry, *, enforce_timeout: bool = True) -> None:
        self.registry = registry
        self.enforce_timeout = enforce_timeout
        """False when the caller enforces attempt deadlines itself (the engine cancels an
        attempt whose durable deadline passed), which spares a timer per call."""

    def accepts(self, target: Target) -> bool:
        return isinstance(target, HandlerCall)

    async def call(self, request: StepRequest) -> StepOutcome:
        assert isinstance(request.target, HandlerCall)
        function = self.registry.get(request.target.handler)
        if function is None:
            return _failure(
                "HandlerNotFound", f"no handler {request.target.handler!r} in this process", False
            )
        context = StepContext(
            tenant_id=request.tenant_id,
            instance_id=request.instance_id,
            node=request.node,
            phase=request.phase,
            attempt=request.attempt,
            idempotency_key=request.idempotency_key,
            input=request.input,
            action_output=request.action_output,
        )
        try:
            limit = asyncio.timeout(request.timeout) if self.enforce_timeout else _NO_TIMEOUT
            async with limit:
                output = await invoke(function, context)
        except TimeoutError:
            return _failure("Timeout", f"handler exceeded {request.timeout}s", True, unknown=True)
        except StepError as error:
            return _failure(error.error_type, str(error), error.retryable)
        except Exception as error:  # any handler bug is a retryable failure
            return _failure(type(error).__name__, str(error) or repr(error), True)
        return _checked_output(output)


def _checked_output(output: object) -> StepOutcome:
    """Outputs are stored in the history, so they must be JSON and of bounded size."""
    try:
        size = len(orjson.dumps(output))
    except TypeError as error:
        return _failure("InvalidOutput", f"handler output is not JSON: {error}", False)
    if size > MAX_OUTPUT_BYTES:
        return _failure("OutputTooLarge", f"output is {size} bytes (max {MAX_OUTPUT_BYTES})", False)
    return StepOutcome(output=output)


def _failure(kind: str, message: str, retryable: bool, *, unknown: bool = False) -> StepOutcome:
    return StepOutcome(
        error=ErrorInfo(type=kind, message=message, retryable=retryable, unknown=unknown)
    )
