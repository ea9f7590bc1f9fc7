"""``saga serve``: one node — the engine on the configured database, the REST API over it,
and the in-process handlers of the modules named on the command line."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import signal
import sys
from collections.abc import Iterator, Sequence

import uvicorn

from saga_orchestrator.api import create_app
from saga_orchestrator.errors import ConfigurationError
from saga_orchestrator.orchestrator import Orchestrator
from saga_orchestrator.settings import Settings
from saga_orchestrator.transports.handlers import HandlerRegistry

log = logging.getLogger("saga_orchestrator.serve")


def load_handlers(modules: Sequence[str]) -> HandlerRegistry:
    """Import each module and register its ``@handler`` functions."""
    registry = HandlerRegistry()
    if modules and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like uvicorn: modules of the working directory
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ImportError as error:
            raise ConfigurationError(f"--handlers {name}: cannot import it ({error})") from None
        if registry.include(module) == 0:
            raise ConfigurationError(f"--handlers {name}: it defines no @handler function")
    return registry


async def serve(
    settings: Settings,
    *,
    host: str,
    port: int,
    handler_modules: Sequence[str],
    grace: float,
) -> None:
    """Serve until SIGINT/SIGTERM; then stop accepting requests, give in-flight attempts
    ``grace`` seconds, and leave anything unfinished to be resumed from its history."""
    handlers = load_handlers(handler_modules)
    orchestrator = Orchestrator(
        settings.database_url,
        handlers=handlers,
        max_concurrent_sagas=settings.max_concurrent_sagas,
        tenant_id=settings.tenant_id,
        # Handlers may also be served by workers in other processes.
        require_known_handlers=False,
        features=settings.feature_flags(),
        callback_base_url=settings.public_url or _local_url(host, port),
        amqp_url=settings.amqp_url,
        integration_event_tenants=settings.integration_event_tenants(),
    )
    await orchestrator.open()
    try:
        config = uvicorn.Config(
            create_app(orchestrator),
            host=host,
            port=port,
            log_level=settings.log_level.value,
            lifespan="on",
            timeout_graceful_shutdown=int(grace) or 1,
            access_log=False,
        )
        log.info("serving on http://%s:%d with %d handlers", host, port, len(handlers))
        await _Server(config).serve()
    finally:
        await orchestrator.close(grace=grace)


def _local_url(host: str, port: int) -> str:
    """Where participants on this machine reach the service when PUBLIC_URL is not set."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM once it has stopped, which would kill the process before the
    engine's own graceful stop; here a signal only asks the server to exit, and the caller
    stops the engine afterwards."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._ask_to_exit)
        try:
            yield
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)

    def _ask_to_exit(self) -> None:
        self.should_exit = True
