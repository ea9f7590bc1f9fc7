"""An instance's events as Server-Sent Events: the history after ``Last-Event-ID`` (or
``?after=``), then live events, until a terminal event; comment lines as heartbeats."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing, suppress
from typing import Annotated, Final

import anyio
import orjson
from fastapi import APIRouter, Depends, Header, Path, Query
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from saga_orchestrator.api.dependencies import Services, current_tenant, services
from saga_orchestrator.api.feed import EventFeed
from saga_orchestrator.api.problems import problem_responses
from saga_orchestrator.api.schemas import MAX_SEQ
from saga_orchestrator.store import StoredEvent

router = APIRouter(prefix="/api/v1/sagas/instances", tags=["instances"])

Tenant = Annotated[str, Depends(current_tenant)]
InstanceId = Annotated[uuid.UUID, Path(description="The instance's id (a UUID).")]

RECONNECT_MILLISECONDS: Final = 3000
_STREAM_HEADERS: Final = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_DESCRIPTION: Final = """\
Each event is sent as

```
id: <seq>
event: <type>
data: {"seq": <seq>, "type": "<type>", "recorded_at": "<time>", "data": {...}}
```

The stream replays the history after `Last-Event-ID` (sent by browsers when they reconnect) or
`after`, then follows live events, and ends after the terminal event (`SagaCompleted`,
`SagaCompensated`, `SagaCancelled`, `SagaTimedOut`, or an operator's `OperatorResolved`); a
parked saga (`SagaParked`) may resume, so its stream stays open. Comment lines
(`: heartbeat`) are sent when nothing happens.
"""


class EventStreamResponse(StreamingResponse):
    """Streams until the body ends or the client goes away, whichever comes first: a client
    that disconnects is noticed at once, not at the next write."""

    media_type = "text/event-stream"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as group:

            async def stream() -> None:
                with suppress(OSError):
                    await self.stream_response(send)
                group.cancel_scope.cancel()

            group.start_soon(stream)
            await self.listen_for_disconnect(receive)
            group.cancel_scope.cancel()


@router.get(
    "/{instance_id}/stream",
    summary="Follow an instance's events (Server-Sent Events)",
    description=_DESCRIPTION,
    response_class=EventStreamResponse,
    responses={
        200: {
            "description": "A stream of events (text/event-stream).",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **problem_responses(404, 422, 503),
    },
)
async def stream_events(
    instance_id: InstanceId,
    tenant: Tenant,
    node: Annotated[Services, Depends(services)],
    after: Annotated[
        int | None, Query(ge=0, le=MAX_SEQ, description="Replay the events after this seq.")
    ] = None,
    last_event_id: Annotated[
        int | None,
        Header(alias="Last-Event-ID", ge=0, le=MAX_SEQ, description="Overrides `after`."),
    ] = None,
) -> EventStreamResponse:
    instance = str(instance_id)
    await node.instances.require(tenant, instance)
    options = node.options
    feed = node.instances.feed(
        tenant,
        instance,
        after=last_event_id if last_event_id is not None else (after or 0),
        poll_interval=min(options.stream_poll_interval, options.heartbeat_interval),
    )
    return EventStreamResponse(_frames(feed, options.heartbeat_interval), headers=_STREAM_HEADERS)


async def _frames(feed: EventFeed, heartbeat: float) -> AsyncIterator[bytes]:
    yield f"retry: {RECONNECT_MILLISECONDS}\n\n".encode()
    quiet_since = time.monotonic()
    async with aclosing(feed.events()) as events:
        async for event in events:
            if event is not None:
                yield frame(event)
            elif time.monotonic() - quiet_since >= heartbeat:
                yield b": heartbeat\n\n"
            else:
                continue
            quiet_since = time.monotonic()


def frame(event: StoredEvent) -> bytes:
    payload = orjson.dumps(
        {
            "seq": event.seq,
            "type": event.type,
            "recorded_at": event.recorded_at,
            "data": orjson.loads(event.data),
        },
        option=orjson.OPT_UTC_Z,
    )
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event.seq, event.type.encode(), payload)
