"""Saga Orchestrator: durable sagas for distributed transactions across microservices.

The embedded entry points::

    from saga_orchestrator import Orchestrator, SagaBuilder, StepContext, handler
"""

from importlib.metadata import PackageNotFoundError, version

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
