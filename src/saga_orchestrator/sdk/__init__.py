"""The Python SDK: define sagas in code and write the handlers that run their steps.

- :class:`SagaBuilder` and its helpers build the same definition as JSON or YAML would;
- :func:`handler` marks a function as the handler of an action or compensation, and
  :class:`StepContext` is what it receives.
"""

from saga_orchestrator.sdk.builder import (
    DefaultsOptions,
    Retry,
    SagaBuilder,
    StepOptions,
    SubSagaOptions,
    Target,
    amqp,
    branch,
    case,
    handler_call,
    http,
    parallel,
    step,
    sub_saga,
    switch,
)
from saga_orchestrator.transports.handlers import StepContext, handler

__all__ = [
    "DefaultsOptions",
    "Retry",
    "SagaBuilder",
    "StepContext",
    "StepOptions",
    "SubSagaOptions",
    "Target",
    "amqp",
    "branch",
    "case",
    "handler",
    "handler_call",
    "http",
    "parallel",
    "step",
    "sub_saga",
    "switch",
]
