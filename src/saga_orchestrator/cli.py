"""The ``saga`` command: wiring only. Settings come from the environment (and options), the
parts are assembled here, and the work is done by the modules they come from.

Exit codes: 0 success; 1 an error of Saga Orchestrator (one line on stderr); 2 invalid
settings or usage. Imports of the engine are deferred to the commands that need them, so
``saga version`` and ``saga --help`` stay fast.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version as package_version
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.text import Text

from saga_orchestrator.errors import ConfigurationError, SagaError
from saga_orchestrator.settings import Settings, load_settings, mask_password

if TYPE_CHECKING:
    from saga_orchestrator.console.demo import DemoRun

app = typer.Typer(
    name="saga",
    help="Saga Orchestrator: durable sagas for distributed transactions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="Database URL; overrides DATABASE_URL (default: sqlite:///saga.db).",
        show_default=False,
    ),
]

EXIT_ERROR = 1
EXIT_CONFIGURATION = 2


@app.command()
def migrate(database_url: DatabaseUrl = None) -> None:
    """Apply the database migrations and print the schema version."""
    with _reported_errors():
        settings = _settings(database_url=database_url)
        schema = asyncio.run(_migrate(settings))
    Console().print(f"schema version {schema} ({mask_password(settings.database_url)})")


@app.command()
def demo(database_url: DatabaseUrl = None) -> None:
    """Run the order saga twice in-process (once it succeeds, once shipping fails) and show
    each instance's timeline with its compensations."""
    from rich.rule import Rule

    from saga_orchestrator.console.timeline import render_instance

    with _reported_errors():
        settings = _settings(database_url=database_url)
        runs = asyncio.run(_demo(settings))
    out = Console()
    out.print(f"Order saga on {mask_password(settings.database_url)}, handlers in-process.")
    for number, run in enumerate(runs, start=1):
        out.print(Rule(f"{number}. {run.scenario.title}", align="left"))
        out.print(render_instance(run.history))
        out.print()


@app.command()
def serve(
    database_url: DatabaseUrl = None,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.", min=1, max=65535)] = 8000,
    handlers: Annotated[
        list[str] | None,
        typer.Option(
            "--handlers",
            help="A module whose @handler functions run in-process (repeatable).",
        ),
    ] = None,
    grace: Annotated[
        float, typer.Option(help="Seconds in-flight attempts get to finish on shutdown.", min=0)
    ] = 10.0,
) -> None:
    """Run a node: the engine and the REST API (docs at /docs) on the configured database."""
    from saga_orchestrator.console.serve import serve as run_node

    with _reported_errors():
        settings = _settings(database_url=database_url)
        asyncio.run(
            run_node(settings, host=host, port=port, handler_modules=handlers or [], grace=grace)
        )


@app.command()
def version() -> None:
    """Print the installed version."""
    Console().print(f"saga-orchestrator {package_version('saga-orchestrator')}")


# --- wiring ---------------------------------------------------------------------------------


def _settings(**overrides: str | None) -> Settings:
    settings = load_settings(**overrides)
    logging.basicConfig(
        level=settings.log_level.value.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return settings


async def _migrate(settings: Settings) -> int:
    from saga_orchestrator.store import open_store

    store = open_store(settings.database_url)
    try:
        return await store.migrate()
    finally:
        await store.close()


async def _demo(settings: Settings) -> list[DemoRun]:
    from saga_orchestrator.console.demo import HANDLERS, run_demo
    from saga_orchestrator.orchestrator import Orchestrator

    async with Orchestrator(
        settings.database_url,
        handlers=HANDLERS,
        max_concurrent_sagas=settings.max_concurrent_sagas,
        tenant_id=settings.tenant_id,
    ) as saga:
        return await run_demo(saga)


@contextmanager
def _reported_errors() -> Iterator[None]:
    """Our errors end the command with one red line on stderr, never a traceback."""
    try:
        yield
    except ConfigurationError as error:
        _fail(f"configuration error: {error}", EXIT_CONFIGURATION)
    except SagaError as error:
        _fail(f"error: {error}", EXIT_ERROR)


def _fail(message: str, code: int) -> NoReturn:
    Console(stderr=True).print(Text(message, style="red"), soft_wrap=True)
    raise typer.Exit(code)


if __name__ == "__main__":
    app()
