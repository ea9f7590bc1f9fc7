"""Sub-sagas: starting a child, undoing a completed child as a whole, and reporting a child's
outcome to its parent as the parent node's attempt outcome. Each is idempotent, so recovery can
simply issue it again."""

from __future__ import annotations

from typing import TYPE_CHECKING

from saga_orchestrator.core.commands import CompensateChild, ReportToParent, StartChild
from saga_orchestrator.core.effects import report_for
from saga_orchestrator.core.events import ErrorInfo, Event, Phase
from saga_orchestrator.core.operations import outcome_events, request_undo
from saga_orchestrator.core.state import SagaState
from saga_orchestrator.definition.compiler import validate_input
from saga_orchestrator.errors import InvalidInput, InvalidTransition, NotFound

if TYPE_CHECKING:
    from saga_orchestrator.engine.runtime import Engine


class ChildSagas:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def start(self, effect: StartChild) -> None:
        child = await self._engine.store.get_instance(effect.tenant_id, effect.child_instance_id)
        if child is not None:
            await self._report_existing(effect.tenant_id, effect.child_instance_id)
            return
        try:
            definition = await self._engine.definitions.resolve(
                effect.tenant_id, effect.saga, effect.version
            )
            validate_input(definition.definition, effect.input)
        except (NotFound, InvalidInput) as error:
            await self._fail_parent(effect, Phase.ACTION, type(error).__name__, str(error))
            return
        await self._engine.create_instance(
            definition,
            tenant_id=effect.tenant_id,
            instance_id=effect.child_instance_id,
            context=effect.input,
            parent=(effect.parent_instance_id, effect.node),
            timeout=effect.timeout,
        )

    async def _report_existing(self, tenant_id: str, child_id: str) -> None:
        """After a crash the child may have finished without telling its parent: re-decide it,
        which re-derives the report from its (settled) state."""
        live = await self._engine.load(tenant_id, child_id)
        state = live.state
        if not state.status.is_settled:
            return
        for effect in settled_report(state):
            await self.report(effect)

    async def compensate(self, effect: CompensateChild) -> None:
        def make(state: SagaState) -> list[Event]:
            if state.undo_requested:
                return []
            return request_undo(
                state, f"parent {effect.parent_instance_id} compensates", self._engine.clock.now()
            )

        try:
            state = await self._engine.advance(effect.tenant_id, effect.child_instance_id, make)
        except InvalidTransition as refused:
            # e.g. the child passed its own pivot: the parent's compensation policy decides.
            await self._fail_parent(effect, Phase.COMPENSATION, "ChildUndoRefused", str(refused))
            return
        if state.undo_requested and state.status.is_settled:
            for report in settled_report(state):
                await self.report(report)

    async def _fail_parent(
        self, effect: StartChild | CompensateChild, phase: Phase, kind: str, message: str
    ) -> None:
        await self.report(
            ReportToParent(
                tenant_id=effect.tenant_id,
                parent_instance_id=effect.parent_instance_id,
                parent_node=effect.node,
                phase=phase,
                succeeded=False,
                error=ErrorInfo(type=kind, message=message, retryable=False),
            )
        )

    async def report(self, effect: ReportToParent) -> None:
        def make(state: SagaState) -> list[Event]:
            progress = state.node(effect.parent_node).phase(effect.phase)
            return outcome_events(
                state,
                node=effect.parent_node,
                phase=effect.phase,
                attempt=progress.attempts,
                now=self._engine.clock.now(),
                output=effect.output,
                error=effect.error,
            )

        await self._engine.advance(effect.tenant_id, effect.parent_instance_id, make)


def settled_report(state: SagaState) -> list[ReportToParent]:
    report = report_for(state)
    return [] if report is None else [report]
