"""What the client commands print: Rich tables for people, plain JSON for scripts.

``--output json`` writes one JSON document on stdout and nothing else; ``--output table``
renders the same answers for a terminal. The functions take the API's JSON as the client
returns it and print it on the given console.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any, Final

import orjson
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from saga_orchestrator.console.timeline import STATUS_STYLES, render_instance
from saga_orchestrator.core.codec import decode
from saga_orchestrator.core.status import InstanceStatus

__all__ = [
    "print_applied",
    "print_definitions",
    "print_events",
    "print_instance",
    "print_instances",
    "print_json",
    "print_operator_action",
    "print_started",
]

DETAIL_MAX_CHARS: Final = 80
_STEP_STYLES: Final[Mapping[str, str]] = {
    "succeeded": "green",
    "completed": "green",
    "running": "blue",
    "failed": "red",
    "compensating": "yellow",
    "compensated": "yellow",
    "skipped": "dim",
}


def print_json(value: Any) -> None:
    """One JSON document on stdout, indented, newline-terminated."""
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")
    sys.stdout.flush()


# --- definitions ------------------------------------------------------------------------------


def print_applied(console: Console, file: str, registered: Mapping[str, Any]) -> None:
    """``order.json: order 1.0.0 created``."""
    status = str(registered.get("status", ""))
    style = "green" if status == "created" else "dim"
    console.print(
        Text.assemble(
            f"{file}: ",
            (f"{registered.get('name')} {registered.get('version')} ", "bold"),
            (status, style),
        ),
        soft_wrap=True,
    )


def print_definitions(console: Console, definitions: Sequence[Mapping[str, Any]]) -> None:
    table = Table(box=box.SIMPLE_HEAD, title="Definitions (latest versions)", title_justify="left")
    for column in ("name", "version", "description", "deprecated", "created"):
        table.add_column(column)
    for item in definitions:
        table.add_row(
            str(item.get("name", "")),
            str(item.get("version", "")),
            _cut(str(item.get("description") or "")),
            "yes" if item.get("deprecated") else "",
            _time(item.get("created_at")),
        )
    console.print(table if definitions else Text("no definitions", style="dim"))


# --- participant services -----------------------------------------------------------------------


def print_participants(console: Console, participants: Sequence[Mapping[str, Any]]) -> None:
    table = Table(box=box.SIMPLE_HEAD, title="Participant services", title_justify="left")
    for column in ("name", "base url", "version", "circuit breaker"):
        table.add_column(column)
    for item in participants:
        service = item.get("service") or {}
        breaker = item.get("circuit_breaker") or {}
        table.add_row(
            str(item.get("name", "")),
            str(service.get("base_url", "")),
            str(item.get("version", "")),
            str(breaker.get("state", "")),
        )
    console.print(table if participants else Text("no participant services", style="dim"))


# --- the tenant's own limits --------------------------------------------------------------------


def print_limits(console: Console, shown: Mapping[str, Any]) -> None:
    version = shown.get("version")
    stored = "the node's defaults" if version is None else f"version {version}"
    title = f"Limits of tenant {shown.get('tenant_id')} ({stored})"
    table = Table(box=box.SIMPLE_HEAD, title=title, title_justify="left")
    for column in ("limit", "tenant's own", "applied", "ceiling"):
        table.add_column(column)
    own: Mapping[str, Any] = shown.get("limits") or {}
    applied: Mapping[str, Any] = shown.get("applied") or {}
    ceilings: Mapping[str, Any] = shown.get("ceilings") or {}
    for name in ("requests", "starts"):
        table.add_row(
            f"{name} per second",
            _bucket(own.get(name), "-"),
            _bucket(applied.get(name), "not limited"),
            _bucket(ceilings.get(name), "none"),
        )
    running = "max running sagas"
    table.add_row(
        running,
        _cap(own.get("max_running_sagas"), "-"),
        _cap(applied.get("max_running_sagas")),
        _cap(ceilings.get("max_running_sagas"), "none"),
    )
    console.print(table)


def _bucket(bucket: Mapping[str, Any] | None, missing: str) -> str:
    if bucket is None:
        return missing
    burst = bucket.get("burst")
    return f"{bucket.get('per_second')}" + ("" if burst is None else f" (burst {burst})")


def _cap(value: object, missing: str = "no cap") -> str:
    return missing if value is None else str(value)


def print_cluster(console: Console, cluster: Mapping[str, Any]) -> None:
    title = f"Cluster nodes (leader epoch {cluster.get('leader_epoch')})"
    table = Table(box=box.SIMPLE_HEAD, title=title, title_justify="left")
    columns = ("node", "address", "version", "started", "last heartbeat", "instances", "leader")
    for column in columns:
        table.add_column(column, justify="right" if column == "instances" else "left")
    for node in cluster.get("items", []):
        table.add_row(
            str(node.get("id", "")) + (" (this)" if node.get("this_node") else ""),
            str(node.get("address", "")),
            str(node.get("version", "")),
            _time(node.get("started_at")),
            _time(node.get("last_heartbeat")),
            str(node.get("instances", "")),
            "yes" if node.get("leader") else "",
        )
    console.print(table if cluster.get("items") else Text("no nodes", style="dim"))


# --- instances --------------------------------------------------------------------------------


def print_started(console: Console, started: Mapping[str, Any]) -> None:
    console.print(
        Text.assemble(
            "started ",
            (f"{started.get('saga_name')} {started.get('version')}", "bold"),
            f" · {started.get('id')} · status: ",
            _status(str(started.get("status", ""))),
        ),
        soft_wrap=True,
    )


def print_instances(console: Console, page: Mapping[str, Any]) -> None:
    items: Sequence[Mapping[str, Any]] = page.get("items", [])
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("id", "saga", "status", "in flight", "updated"):
        table.add_column(column, no_wrap=column in {"id", "status"})
    for item in items:
        table.add_row(
            str(item.get("id", "")),
            f"{item.get('saga_name', '')} {item.get('version', '')}",
            _status(str(item.get("status", ""))),
            ", ".join(item.get("current_nodes") or []),
            _time(item.get("updated_at")),
        )
    console.print(table if items else Text("no instances", style="dim"))
    cursor = page.get("next_cursor")
    if cursor:
        console.print(Text(f"more: --cursor {cursor}", style="dim"), soft_wrap=True)


def print_instance(
    console: Console, detail: Mapping[str, Any], events: Sequence[Mapping[str, Any]]
) -> None:
    """The steps (state, attempts, output or error), then the timeline of the history."""
    steps = Table(box=box.SIMPLE_HEAD)
    for column in ("step", "status", "attempts", "compensations", "output / error"):
        steps.add_column(column)
    for step in detail.get("steps", []):
        steps.add_row(
            str(step.get("name", "")),
            Text(str(step.get("status", "")), style=_STEP_STYLES.get(step.get("status", ""), "")),
            str(step.get("attempts", 0)),
            str(step.get("compensation_attempts", 0)),
            _step_detail(step),
        )
    console.print(steps)
    if events:
        history = [decode(str(event["type"]), orjson.dumps(event["data"])) for event in events]
        console.print(render_instance(history))
    else:
        console.print(Text.assemble("status: ", _status(str(detail.get("status", "")))))
    parked = detail.get("parked_node")
    if parked:
        console.print(
            Text(f"parked on {parked}: {detail.get('parked_reason') or ''}", style="red"),
            soft_wrap=True,
        )


def print_events(console: Console, events: Sequence[Mapping[str, Any]]) -> None:
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("seq", "recorded", "type", "data"):
        table.add_column(column, justify="right" if column == "seq" else "left")
    for event in events:
        table.add_row(
            str(event.get("seq", "")),
            _time(event.get("recorded_at")),
            str(event.get("type", "")),
            Text(_cut(orjson.dumps(event.get("data", {})).decode()), style="dim"),
        )
    console.print(table)


def print_operator_action(console: Console, action: str, detail: Mapping[str, Any]) -> None:
    """``cancel requested: <id> · status: compensating``."""
    console.print(
        Text.assemble(
            f"{action}: {detail.get('id')} · status: ", _status(str(detail.get("status", "")))
        ),
        soft_wrap=True,
    )


# --- pieces -----------------------------------------------------------------------------------


def _status(status: str) -> Text:
    try:
        style = STATUS_STYLES[InstanceStatus(status)]
    except ValueError:
        style = ""
    return Text(status, style=style)


def _step_detail(step: Mapping[str, Any]) -> Text:
    error = step.get("compensation_error") or step.get("error")
    if error:
        return Text(_cut(f"{error.get('type')}: {error.get('message')}"), style="red")
    output = step.get("output")
    if output is None:
        return Text("")
    return Text(_cut(orjson.dumps(output).decode()), style="dim")


def _time(value: Any) -> str:
    """ISO timestamps to the second: ``2026-01-02 03:04:05``."""
    if not value:
        return ""
    text = str(value).replace("T", " ")
    return text[:19]


def _cut(text: str) -> str:
    return text if len(text) <= DETAIL_MAX_CHARS else text[: DETAIL_MAX_CHARS - 1] + "…"
