"""Helpers of the API tests: definitions, starting, waiting, reading problems and streams."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from fastapi import FastAPI
from fastapi.routing import APIRoute

from saga_orchestrator.api import ApiOptions

NAMES = ("reserve", "charge", "ship", "notify", "pack")
API = "/api/v1/sagas"
DEFINITIONS = f"{API}/definitions"
INSTANCES = f"{API}/instances"
PROBLEM = "application/problem+json"
SETTLED = frozenset({"completed", "compensated", "cancelled", "timed_out", "failed"})

FAST_OPTIONS = ApiOptions(
    max_body_bytes=256 * 1024,
    heartbeat_interval=0.05,
    stream_poll_interval=0.05,
)


def routes(app: FastAPI) -> list[tuple[str, str]]:
    """Every (method, path template) the app serves, through included routers too."""
    found: list[tuple[str, str]] = []
    pending: list[Any] = list(app.routes)
    while pending:
        route = pending.pop()
        included = getattr(route, "original_router", None)
        if included is not None:
            pending.extend(included.routes)
        elif isinstance(route, APIRoute):
            found.extend((method, route.path) for method in route.methods or ())
    assert len(found) > 20, "the app's routes were not found"
    return sorted(found)


def concrete(path: str) -> str:
    """A URL of the path template ``path``."""
    values = {"instance_id": str(uuid.uuid4()), "step": "a", "name": "order", "version": "1.0.0"}
    return re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], path)


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds (for state that no event announces)."""
    async with asyncio.timeout(timeout):
        while True:
            if condition():
                return
            await asyncio.sleep(0.01)


def steps(*names: str, **options: Any) -> list[dict[str, Any]]:
    return [
        {"name": name, "action": name, "compensation": f"undo.{name}", **options} for name in names
    ]


def saga(name: str, nodes: list[dict[str, Any]], version: str = "1.0.0", **extra: Any) -> Any:
    return {"name": name, "version": version, "steps": nodes, **extra}


async def register(client: httpx.AsyncClient, definition: dict[str, Any]) -> httpx.Response:
    response = await client.post(DEFINITIONS, json=definition)
    assert response.status_code in (200, 201), response.text
    return response


async def start(client: httpx.AsyncClient, saga_name: str, context: Any = None, **body: Any) -> str:
    response = await client.post(
        INSTANCES, json={"saga_name": saga_name, "context": context, **body}
    )
    assert response.status_code == 201, response.text
    instance_id: str = response.json()["id"]
    return instance_id


async def wait_status(
    client: httpx.AsyncClient,
    instance_id: str,
    statuses: Collection[str] = SETTLED,
    timeout: float = 10.0,
) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            response = await client.get(f"{INSTANCES}/{instance_id}")
            assert response.status_code == 200, response.text
            detail: dict[str, Any] = response.json()
            if detail["status"] in statuses:
                return detail
            await asyncio.sleep(0.02)


async def history(client: httpx.AsyncClient, instance_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"{INSTANCES}/{instance_id}/events", params={"limit": 1000})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def assert_problem(
    response: httpx.Response, status: int, slug: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["title"]
    if slug is not None:
        assert body["type"].endswith(f"/problems/{slug}"), body
    return body


@dataclass(frozen=True, slots=True, kw_only=True)
class Frame:
    """One Server-Sent Event (comments are kept apart as heartbeats)."""

    id: int
    event: str
    data: dict[str, Any]


def parse_stream(text: str) -> tuple[list[Frame], int]:
    """The events of an SSE body, and how many comment lines (heartbeats) it held."""
    frames: list[Frame] = []
    comments = 0
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith(":"):
                comments += 1
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
        if "event" in fields:
            frames.append(
                Frame(
                    id=int(fields["id"]), event=fields["event"], data=orjson.loads(fields["data"])
                )
            )
    return frames, comments
