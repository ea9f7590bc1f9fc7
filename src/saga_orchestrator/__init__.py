"""Saga Orchestrator: durable sagas for distributed transactions across microservices.

The embedded entry points::

    from saga_orchestrator import Orchestrator, SagaBuilder, StepContext, handler
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from saga_orchestrator.core.status import InstanceStatus, StepStatus
    from saga_orchestrator.core.view import InstanceView, StepView
    from saga_orchestrator.definition.models import SagaDefinition
    from saga_orchestrator.errors import (
        DefinitionConflict,
        DefinitionError,
        InvalidInput,
        InvalidTransition,
        NonRetryableStepError,
        NotFound,
        RetryableStepError,
        SagaError,
        StepError,
    )
    from saga_orchestrator.orchestrator import Orchestrator
    from saga_orchestrator.sdk import SagaBuilder, StepContext, handler

try:
    __version__ = version("saga-orchestrator")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without metadata
    __version__ = "0.0.0"

# Loaded on first use (PEP 562), so `import saga_orchestrator.cli` does not pay for the engine,
# the store drivers and the CEL compiler before a command needs them.
_HOMES = {
    "InstanceStatus": "saga_orchestrator.core.status",
    "StepStatus": "saga_orchestrator.core.status",
    "InstanceView": "saga_orchestrator.core.view",
    "StepView": "saga_orchestrator.core.view",
    "SagaDefinition": "saga_orchestrator.definition.models",
    "Orchestrator": "saga_orchestrator.orchestrator",
    "SagaBuilder": "saga_orchestrator.sdk",
    "StepContext": "saga_orchestrator.sdk",
    "handler": "saga_orchestrator.sdk",
    **dict.fromkeys(
        (
            "DefinitionConflict",
            "DefinitionError",
            "InvalidInput",
            "InvalidTransition",
            "NonRetryableStepError",
            "NotFound",
            "RetryableStepError",
            "SagaError",
            "StepError",
        ),
        "saga_orchestrator.errors",
    ),
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'saga_orchestrator' has no attribute {name!r}")
    value = getattr(import_module(home), name)
    globals()[name] = value
    return value


__all__ = [
    "DefinitionConflict",
    "DefinitionError",
    "InstanceStatus",
    "InstanceView",
    "InvalidInput",
    "InvalidTransition",
    "NonRetryableStepError",
    "NotFound",
    "Orchestrator",
    "RetryableStepError",
    "SagaBuilder",
    "SagaDefinition",
    "SagaError",
    "StepContext",
    "StepError",
    "StepStatus",
    "StepView",
    "__version__",
    "handler",
]
