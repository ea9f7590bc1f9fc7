"""The public surface is curated: every name in ``__all__`` exists and nothing else leaks."""

from __future__ import annotations

import saga_orchestrator
import saga_orchestrator.definition
import saga_orchestrator.sdk


def test_top_level_exports_exactly_the_public_names() -> None:
    assert sorted(saga_orchestrator.__all__) == [
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


def test_every_exported_name_exists() -> None:
    for module in (saga_orchestrator, saga_orchestrator.sdk, saga_orchestrator.definition):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"


def test_the_decorator_registers_a_handler_name() -> None:
    @saga_orchestrator.handler("inventory.reserve")
    async def reserve(ctx: saga_orchestrator.StepContext) -> None:
        return None

    registry = saga_orchestrator.Orchestrator(
        ":memory:" and "sqlite:///:memory:", handlers=[reserve]
    ).handlers
    assert registry.names() == frozenset({"inventory.reserve"})
