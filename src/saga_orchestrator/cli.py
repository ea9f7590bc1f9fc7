"""The ``saga`` command: wiring only. Settings come from the environment (and options), the
parts are assembled here, and the work is done by the modules they come from.

Exit codes: 0 success; 1 an error of Saga Orchestrator (one line on stderr); 2 invalid
settings or usage. Imports of the engine are deferred to the commands that need them, so
``saga version`` and ``saga --help`` stay fast.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from importlib.metadata import version as package_version
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.text import Text

from saga_orchestrator.errors import ConfigurationError, SagaError
from saga_orchestrator.settings import Settings, load_settings, mask_password

if TYPE_CHECKING:
    from saga_orchestrator.console.client import SagaClient
    from saga_orchestrator.console.demo import DemoRun
    from saga_orchestrator.errors import DefinitionError

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


audit_app = typer.Typer(
    name="audit", help="Check the audit log's hash chains.", no_args_is_help=True
)
app.add_typer(audit_app)


@audit_app.command("verify")
def audit_verify(
    database_url: DatabaseUrl = None,
    tenant: Annotated[
        str | None, typer.Option(help="Only this tenant (default: every tenant).")
    ] = None,
) -> None:
    """Recompute every tenant's hash chain from the database; exit 1 at the first broken
    link, naming the tenant, the record and what is wrong."""
    with _reported_errors():
        settings = _settings(database_url=database_url)
        checked, broken = asyncio.run(_verify_audit(settings, tenant))
    out = Console()
    if broken is not None:
        _fail(
            f"broken: tenant {broken.tenant_id!r}, record {broken.seq}: {broken.reason}",
            EXIT_ERROR,
        )
    for name, count in checked:
        out.print(f"{name}: {count} records, chain intact")
    if not checked:
        out.print("no audit records")


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
def serve(  # Typer reads the options by name
    *,
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
    tls_cert: Annotated[
        str | None,
        typer.Option(help="PEM certificate (chain) to serve HTTPS; env TLS_CERT_FILE."),
    ] = None,
    tls_key: Annotated[
        str | None, typer.Option(help="Its PEM private key; env TLS_KEY_FILE.")
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            help="Node processes sharing the port (more than 1 needs CLUSTER_ENABLED and "
            "PostgreSQL).",
            min=1,
            max=64,
        ),
    ] = 1,
) -> None:
    """Run a node: the engine and the REST API (docs at /docs) on the configured database."""
    from saga_orchestrator.console.serve import serve as run_node
    from saga_orchestrator.console.workers import Supervisor, check_workers
    from saga_orchestrator.orchestrator import default_node_id

    with _reported_errors():
        settings = _settings(
            database_url=database_url, tls_cert_file=tls_cert, tls_key_file=tls_key
        )
        check_workers(settings, workers)
        if workers > 1:
            forwarded = [f"--handlers={module}" for module in handlers or []]
            forwarded += [f"--grace={grace}"]
            forwarded += [f"--tls-cert={tls_cert}"] if tls_cert else []
            forwarded += [f"--tls-key={tls_key}"] if tls_key else []
            supervisor = Supervisor(
                settings=settings,
                host=host,
                port=port,
                workers=workers,
                worker_args=forwarded,
                grace=grace,
                node_id_base=settings.node_id or default_node_id(),
            )
            raise typer.Exit(supervisor.run())
        asyncio.run(
            run_node(settings, host=host, port=port, handler_modules=handlers or [], grace=grace)
        )


@app.command()
def worker(
    handlers: Annotated[
        list[str],
        typer.Option(
            "--handlers",
            help="A module whose @handler functions this worker runs (repeatable).",
            show_default=False,
        ),
    ],
    amqp_url: Annotated[
        str,
        typer.Option("--amqp-url", envvar="AMQP_URL", help="RabbitMQ URL."),
    ] = "amqp://guest:guest@127.0.0.1:5672/",
    concurrency: Annotated[
        int, typer.Option(help="Commands handled at once.", min=1, max=10_000)
    ] = 16,
) -> None:
    """Run the handlers of steps dispatched over RabbitMQ until SIGINT/SIGTERM (in-flight
    commands finish first)."""
    from saga_orchestrator.console.serve import load_handlers
    from saga_orchestrator.sdk.worker import run_worker
    from saga_orchestrator.transports.amqp import AmqpSettings

    with _reported_errors():
        _settings()
        registry = load_handlers(handlers)
        logging.getLogger("saga_orchestrator.worker").info(
            "connecting to %s", mask_password(amqp_url)
        )
        asyncio.run(run_worker(AmqpSettings(amqp_url), registry, concurrency=concurrency))


@app.command()
def version() -> None:
    """Print the installed version."""
    Console().print(f"saga-orchestrator {package_version('saga-orchestrator')}")


# --- client commands: a running server over its REST API -----------------------------------

definitions_app = typer.Typer(
    name="definitions", help="Register and list saga definitions on a server.", no_args_is_help=True
)
instances_app = typer.Typer(
    name="instances",
    help="Start, inspect, cancel and retry saga instances on a server.",
    no_args_is_help=True,
)
participants_app = typer.Typer(
    name="participants",
    help="Register, list, show and remove participant services on a server.",
    no_args_is_help=True,
)
app.add_typer(definitions_app)
app.add_typer(instances_app)
app.add_typer(participants_app)
cluster_app = typer.Typer(
    name="cluster", help="See the nodes serving a database.", no_args_is_help=True
)
app.add_typer(cluster_app)
limits_app = typer.Typer(
    name="limits",
    help="Show, set and reset the tenant's own limits (requests, starts, running sagas).",
    no_args_is_help=True,
)
app.add_typer(limits_app)


class OutputFormat(StrEnum):
    TABLE = "table"
    JSON = "json"


ServerUrl = Annotated[
    str,
    typer.Option("--url", envvar="SAGA_URL", help="The server's base URL."),
]
OutputOption = Annotated[
    OutputFormat,
    typer.Option("--output", "-o", help="table for people, json for scripts."),
]
InstanceIdArgument = Annotated[str, typer.Argument(help="The instance's id.", show_default=False)]
ReasonOption = Annotated[
    str, typer.Option("--reason", help="Why (recorded in the history).", show_default=False)
]
DEFAULT_URL = "http://127.0.0.1:8000"


@definitions_app.command("apply")
def definitions_apply(
    files: Annotated[
        list[Path],
        typer.Argument(
            help="Definition files (.json, .yaml or .yml).",
            exists=True,
            dir_okay=False,
            readable=True,
            show_default=False,
        ),
    ],
    url: ServerUrl = DEFAULT_URL,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Register each file's definition: prints created or identical per file; stops at the
    first invalid one with its violations."""
    from saga_orchestrator.console.client import media_type_of
    from saga_orchestrator.console.output import print_applied, print_json
    from saga_orchestrator.errors import DefinitionError

    applied: list[dict[str, Any]] = []
    with _reported_errors(), _client(url) as client:
        for file in files:
            try:
                body = file.read_bytes()
            except OSError as error:
                _fail(f"error: cannot read {file}: {error.strerror}", EXIT_ERROR)
            try:
                registered = client.apply_definition(body, media_type_of(file))
            except DefinitionError as error:
                _fail_with_violations(f"error: {file}: invalid definition", error)
            applied.append({"file": str(file), **registered})
            if output is OutputFormat.TABLE:
                print_applied(Console(), str(file), registered)
    if output is OutputFormat.JSON:
        print_json(applied)


@definitions_app.command("list")
def definitions_list(
    prefix: Annotated[str, typer.Option(help="Only names starting with this.")] = "",
    url: ServerUrl = DEFAULT_URL,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """The latest version of each definition."""
    from saga_orchestrator.console.output import print_definitions

    with _reported_errors(), _client(url) as client:
        definitions = client.list_definitions(prefix)
    _emit(output, definitions, print_definitions)


@cluster_app.command("status")
def cluster_status(url: ServerUrl = DEFAULT_URL, output: OutputOption = OutputFormat.TABLE) -> None:
    """Every node with its heartbeat, and which one leads the cluster chores."""
    from saga_orchestrator.console.output import print_cluster

    with _reported_errors(), _client(url) as client:
        cluster = client.cluster_nodes()
    _emit(output, cluster, print_cluster)


NameArgument = Annotated[str, typer.Argument(help="The service's name.", show_default=False)]


@participants_app.command("put")
def participants_put(
    name: NameArgument,
    file: Annotated[
        Path,
        typer.Argument(
            help="The service's settings (.json, .yaml or .yml): base_url, headers, ...",
            exists=True,
            dir_okay=False,
            readable=True,
            show_default=False,
        ),
    ],
    url: ServerUrl = DEFAULT_URL,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Register or replace a participant service (http steps name it)."""
    import yaml

    from saga_orchestrator.console.output import print_json

    try:
        service = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        _fail(f"error: cannot read {file}: {error}", EXIT_ERROR)
    with _reported_errors(), _client(url) as client:
        saved = client.put_participant(name, service)
    if output is OutputFormat.JSON:
        print_json(saved)
    else:
        Console().print(f"{name}: version {saved.get('version')}")


@participants_app.command("list")
def participants_list(
    url: ServerUrl = DEFAULT_URL, output: OutputOption = OutputFormat.TABLE
) -> None:
    """Every participant service of the tenant, with its circuit breaker's state."""
    from saga_orchestrator.console.output import print_participants

    with _reported_errors(), _client(url) as client:
        participants = client.list_participants()
    _emit(output, participants, print_participants)


@participants_app.command("show")
def participants_show(name: NameArgument, url: ServerUrl = DEFAULT_URL) -> None:
    """One participant service as JSON (secret headers are references, never values)."""
    from saga_orchestrator.console.output import print_json

    with _reported_errors(), _client(url) as client:
        print_json(client.get_participant(name))


@participants_app.command("delete")
def participants_delete(name: NameArgument, url: ServerUrl = DEFAULT_URL) -> None:
    """Remove a participant service; http steps naming it then fail."""
    with _reported_errors(), _client(url) as client:
        client.delete_participant(name)
    Console().print(f"{name}: deleted")


@limits_app.command("show")
def limits_show(url: ServerUrl = DEFAULT_URL, output: OutputOption = OutputFormat.TABLE) -> None:
    """The tenant's own limits and what the node applies (its defaults where none is set)."""
    from saga_orchestrator.console.output import print_limits

    with _reported_errors(), _client(url) as client:
        shown = client.get_limits()
    _emit(output, shown, print_limits)


def _rate_option(name: str) -> Any:
    return typer.Option(f"--{name}-per-second", help=f"{name.capitalize()} per second.")


def _burst_option(name: str) -> Any:
    return typer.Option(
        f"--{name}-burst", help=f"{name.capitalize()} at once (default: twice the rate).", min=1
    )


@limits_app.command("set")
def limits_set(
    *,
    requests_per_second: Annotated[float | None, _rate_option("requests")] = None,
    requests_burst: Annotated[int | None, _burst_option("requests")] = None,
    starts_per_second: Annotated[float | None, _rate_option("starts")] = None,
    starts_burst: Annotated[int | None, _burst_option("starts")] = None,
    max_running_sagas: Annotated[
        int | None, typer.Option(help="Sagas running on one node at once.", min=1)
    ] = None,
    url: ServerUrl = DEFAULT_URL,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Replace the tenant's own limits with these (admin): a limit not given goes back to the
    node's default."""
    from saga_orchestrator.console.output import print_limits

    body: dict[str, Any] = {}
    for name, rate, burst in (
        ("requests", requests_per_second, requests_burst),
        ("starts", starts_per_second, starts_burst),
    ):
        if rate is None and burst is not None:
            raise typer.BadParameter(f"--{name}-burst needs --{name}-per-second")
        if rate is not None:
            body[name] = {"per_second": rate} | ({} if burst is None else {"burst": burst})
    if max_running_sagas is not None:
        body["max_running_sagas"] = max_running_sagas
    if not body:
        raise typer.BadParameter("give at least one limit (`saga limits reset` clears them)")
    with _reported_errors(), _client(url) as client:
        saved = client.put_limits(body)
    _emit(output, saved, print_limits)


@limits_app.command("reset")
def limits_reset(url: ServerUrl = DEFAULT_URL) -> None:
    """Back to the node's defaults for every limit of the tenant (admin)."""
    with _reported_errors(), _client(url) as client:
        client.reset_limits()
    Console().print("limits reset to the node's defaults")


@instances_app.command("start")
def instances_start(
    saga: Annotated[str, typer.Argument(help="The saga's name.", show_default=False)],
    *,
    saga_version: Annotated[
        str | None,
        typer.Option("--version", help="A version or constraint (default: the latest)."),
    ] = None,
    context: Annotated[
        str | None, typer.Option("--context", help="The saga's input, as JSON.")
    ] = None,
    context_file: Annotated[
        Path | None,
        typer.Option(
            "--context-file",
            help="The saga's input, from a JSON or YAML file.",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option("--idempotency-key", help="Starts with the same key and input start once."),
    ] = None,
    url: ServerUrl = DEFAULT_URL,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Start an instance of a saga."""
    from saga_orchestrator.console.output import print_started

    payload = _context(context, context_file)
    with _reported_errors(), _client(url) as client:
        started = client.start_instance(
            saga, context=payload, version=saga_version, idempotency_key=idempotency_key
        )
    _emit(output, started, print_started)


@instances_app.command("list")
def instances_list(
    *,
    status: Annotated[
        str | None,
        typer.Option(
            help="running, compensating, completed, compensated, failed, cancelled, timed_out."
        ),
    ] = None,
    saga: Annotated[str | None, typer.Option(help="Only instances of this saga.")] = None,
    limit: Annotated[int | None, typer.Option(help="Page size (1-500).", min=1, max=500)] = None,
    cursor: Annotated[str | None, typer.Option(help="The previous page's next cursor.")] = None,
    url: ServerUrl = DEFAULT_URL,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """List instances, newest first, one page at a time."""
    from saga_orchestrator.console.output import print_instances

    with _reported_errors(), _client(url) as client:
        page = client.list_instances(status=status, saga_name=saga, limit=limit, cursor=cursor)
    _emit(output, page, print_instances)


@instances_app.command("show")
def instances_show(
    instance_id: InstanceIdArgument,
    url: ServerUrl = DEFAULT_URL,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """An instance: its steps, then the timeline of its history."""
    from saga_orchestrator.console.output import print_instance, print_json

    with _reported_errors(), _client(url) as client:
        detail = client.get_instance(instance_id)
        if output is OutputFormat.JSON:
            print_json(detail)
            return
        events = client.events(instance_id)
        print_instance(Console(), detail, events)


@instances_app.command("events")
def instances_events(
    instance_id: InstanceIdArgument,
    url: ServerUrl = DEFAULT_URL,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """An instance's whole history, in sequence order."""
    from saga_orchestrator.console.output import print_events

    with _reported_errors(), _client(url) as client:
        events = client.events(instance_id)
    _emit(output, events, print_events)


@instances_app.command("cancel")
def instances_cancel(
    instance_id: InstanceIdArgument,
    reason: ReasonOption,
    url: ServerUrl = DEFAULT_URL,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Cancel a running instance: it compensates, then ends cancelled."""
    from saga_orchestrator.console.output import print_operator_action

    with _reported_errors(), _client(url) as client:
        detail = client.cancel(instance_id, reason)
    _emit(
        output,
        detail,
        lambda console, value: print_operator_action(console, "cancel requested", value),
    )


@instances_app.command("retry")
def instances_retry(
    instance_id: InstanceIdArgument,
    reason: ReasonOption,
    url: ServerUrl = DEFAULT_URL,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Retry the failed step or compensation of a parked (failed) instance."""
    from saga_orchestrator.console.output import print_operator_action

    with _reported_errors(), _client(url) as client:
        detail = client.retry(instance_id, reason)
    _emit(
        output,
        detail,
        lambda console, value: print_operator_action(console, "retry requested", value),
    )


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


async def _verify_audit(
    settings: Settings, tenant: str | None
) -> tuple[list[tuple[str, int]], Any]:
    from saga_orchestrator.store import PostgresOptions, PostgresStore, open_store
    from saga_orchestrator.store.audit import verify

    logins = PostgresOptions(
        app_url=settings.database_app_url, cluster_url=settings.database_cluster_url
    )
    store = open_store(settings.database_url, postgres=logins)
    checked: list[tuple[str, int]] = []
    try:
        if isinstance(store, PostgresStore):
            await store.check_logins()  # as a node does, whether or not a tenant has records
        tenants = [tenant] if tenant is not None else await store.audit_tenants()
        for name in tenants:
            records, head = await store.audit_chain(name)
            broken = verify(name, records, head)
            if broken is not None:
                return checked, broken
            checked.append((name, len(records)))
    finally:
        await store.close()
    return checked, None


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
def _client(url: str) -> Iterator[SagaClient]:
    from saga_orchestrator.console.client import SagaClient, find_token

    with SagaClient(url, token=find_token()) as client:
        yield client


def _context(text: str | None, file: Path | None) -> Any:
    """The start's context from ``--context`` or ``--context-file`` (not both); ``{}`` if
    neither."""
    if text is not None and file is not None:
        raise typer.BadParameter("give --context or --context-file, not both")
    if text is not None:
        try:
            return json.loads(text)
        except ValueError as error:
            raise typer.BadParameter(f"not JSON: {error}", param_hint="--context") from None
    if file is not None:
        import yaml

        try:
            return yaml.safe_load(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
            raise typer.BadParameter(
                f"cannot read {file}: {error}", param_hint="--context-file"
            ) from None
    return {}


def _fail_with_violations(message: str, error: DefinitionError) -> NoReturn:
    err = Console(stderr=True)
    err.print(Text(message, style="red"), soft_wrap=True)
    for violation in error.violations:
        err.print(Text(f"  {violation}", style="red"), soft_wrap=True)
    raise typer.Exit(EXIT_ERROR)


def _emit(output: OutputFormat, data: Any, render: Callable[[Console, Any], None]) -> None:
    """JSON on stdout for scripts, or the Rich rendering for people."""
    from saga_orchestrator.console.output import print_json

    if output is OutputFormat.JSON:
        print_json(data)
    else:
        render(Console(), data)


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
