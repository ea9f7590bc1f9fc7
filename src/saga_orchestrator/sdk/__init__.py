"""Define sagas in Python: see :mod:`saga_orchestrator.sdk.builder`."""

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
    handler,
    http,
    parallel,
    step,
    sub_saga,
    switch,
)

__all__ = [
    "DefaultsOptions",
    "Retry",
    "SagaBuilder",
    "StepOptions",
    "SubSagaOptions",
    "Target",
    "amqp",
    "branch",
    "case",
    "handler",
    "http",
    "parallel",
    "step",
    "sub_saga",
    "switch",
]
