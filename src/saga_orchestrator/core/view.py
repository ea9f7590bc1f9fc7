"""A read-only picture of an instance, for the SDK, the CLI and the API."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from saga_orchestrator.core.events import ErrorInfo, FailureCause
from saga_orchestrator.core.records import fast_init
from saga_orchestrator.core.state import SagaState
from saga_orchestrator.core.status import InstanceStatus, StepStatus


@dataclass(frozen=True, slots=True, kw_only=True)
class StepView:
    name: str
    status: StepStatus
    attempts: int
    compensation_attempts: int
    output: Any
    error: ErrorInfo | None
    started_at: datetime | None
    finished_at: datetime | None
    compensation_error: ErrorInfo | None
    manual: bool
    child_instance_id: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceView:
    instance_id: str
    tenant_id: str
    saga_name: str
    version: str
    status: InstanceStatus
    input: Any
    output: Any
    steps: dict[str, StepView]
    started_at: datetime
    finished_at: datetime | None
    deadline: datetime | None
    cause: FailureCause | None
    parked_reason: str | None
    parked_node: str | None
    in_flight: tuple[str, ...]
    events: int
    parent_instance_id: str | None


fast_init(StepView, InstanceView)


def describe(state: SagaState) -> InstanceView:
    steps = {
        name: StepView(
            name=name,
            status=node.status,
            attempts=node.action.attempts,
            compensation_attempts=node.compensation.attempts,
            output=node.output,
            error=node.error or node.action.last_error,
            started_at=node.action.started_at,
            finished_at=node.compensation.finished_at or node.action.finished_at,
            compensation_error=node.compensation.last_error,
            manual=node.manual,
            child_instance_id=node.child_instance_id,
        )
        for name, node in state.nodes.items()
    }
    return InstanceView(
        instance_id=state.instance_id,
        tenant_id=state.tenant_id,
        saga_name=state.definition_name,
        version=state.definition_version,
        status=state.status,
        input=state.input,
        output=state.output,
        steps=steps,
        started_at=state.started_at,
        finished_at=state.finished_at,
        deadline=state.deadline,
        cause=state.cause,
        parked_reason=state.parked_reason,
        parked_node=state.parked_node,
        in_flight=tuple(state.in_flight()),
        events=state.seq,
        parent_instance_id=state.parent_instance_id,
    )
