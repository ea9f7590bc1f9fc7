"""Asynchronous completion: a participant that answered ``202 Accepted`` finishes the attempt
here, with the attempt's completion token (like Step Functions task tokens)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Header, Path

from saga_orchestrator.api.dependencies import callback_api
from saga_orchestrator.api.participants import (
    CallbackAccepted,
    CallbackApi,
    CompleteAttempt,
    FailAttempt,
)
from saga_orchestrator.api.problems import problem_responses
from saga_orchestrator.definition.models import NAME_PATTERN

router = APIRouter(prefix="/api/v1/sagas/instances", tags=["participant callbacks"])

Callbacks = Annotated[CallbackApi, Depends(callback_api)]
InstanceId = Annotated[uuid.UUID, Path(description="The instance's id (a UUID).")]
Step = Annotated[str, Path(pattern=NAME_PATTERN, description="The step of the attempt.")]
Token = Annotated[
    str | None,
    Header(
        alias="Saga-Completion-Token",
        max_length=4096,
        description="The token sent with the attempt's request (`Saga-Completion-Token`).",
    ),
]

_ERRORS: Final[dict[int | str, dict[str, Any]]] = problem_responses(
    400,
    403,
    404,
    409,
    410,
    413,
    422,
    503,
    s403="The completion token is missing, forged, or for another step.",
    s410="The attempt is over (timed out, retried or completed): too late.",
)


@router.post(
    "/{instance_id}/steps/{step}/complete",
    summary="Complete an accepted attempt successfully",
    responses=_ERRORS,
)
async def complete_step(
    instance_id: InstanceId,
    step: Step,
    body: CompleteAttempt,
    callbacks: Callbacks,
    token: Token = None,
) -> CallbackAccepted:
    return await callbacks.complete(token, str(instance_id), step, body)


@router.post(
    "/{instance_id}/steps/{step}/fail",
    summary="Fail an accepted attempt (retryable or not)",
    responses=_ERRORS,
)
async def fail_step(
    instance_id: InstanceId,
    step: Step,
    body: FailAttempt,
    callbacks: Callbacks,
    token: Token = None,
) -> CallbackAccepted:
    return await callbacks.fail(token, str(instance_id), step, body)


@router.post(
    "/{instance_id}/steps/{step}/heartbeat",
    summary="Extend an accepted attempt's deadline by the step's timeout",
    responses=_ERRORS,
)
async def heartbeat_step(
    instance_id: InstanceId, step: Step, callbacks: Callbacks, token: Token = None
) -> CallbackAccepted:
    return await callbacks.heartbeat(token, str(instance_id), step)
