"""An API over a real node (SQLite and PostgreSQL), driven in-process through httpx."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest_asyncio
from fastapi import FastAPI

from saga_orchestrator.api import ApiOptions, create_app
from saga_orchestrator.orchestrator import Orchestrator
from tests.integration.api.support import FAST_OPTIONS, NAMES
from tests.integration.engine.support import Participants


@pytest_asyncio.fixture
async def participants() -> Participants:
    return Participants(NAMES)


@pytest_asyncio.fixture
async def node(store_url: str, participants: Participants) -> AsyncIterator[Orchestrator]:
    async with Orchestrator(store_url, handlers=participants.registry()) as running:
        yield running


@pytest_asyncio.fixture
async def options() -> ApiOptions:
    return FAST_OPTIONS


@pytest_asyncio.fixture
async def app(node: Orchestrator, options: ApiOptions) -> AsyncIterator[FastAPI]:
    built = create_app(node, options)
    async with built.router.lifespan_context(built):
        yield built


@pytest_asyncio.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://saga.test") as opened:
        yield opened
