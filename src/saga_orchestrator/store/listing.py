"""The instance listing query, built once for both dialects (``?`` placeholders)."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from datetime import datetime

from saga_orchestrator.store.codec import Position, encode_cursor
from saga_orchestrator.store.protocol import InstanceFilter, InstancePage, InstanceRecord

TimestampParam = Callable[[datetime], object]


def listing_where(
    tenant_id: str, filters: InstanceFilter, after: Position | None, ts: TimestampParam
) -> tuple[str, list[object]]:
    """The WHERE clause and its parameters; ``ts`` converts datetimes for the dialect.

    Time windows are half-open: ``*_after`` is inclusive, ``*_before`` exclusive, so adjacent
    windows neither overlap nor leave a gap.
    """
    conditions = ["i.tenant_id = ?"]
    params: list[object] = [tenant_id]

    def add(condition: str, *values: object) -> None:
        conditions.append(condition)
        params.extend(values)

    if filters.status is not None:
        add("i.status = ?", str(filters.status))
    if filters.definition_name is not None:
        add("i.definition_name = ?", filters.definition_name)
    if filters.definition_version is not None:
        add("i.definition_version = ?", filters.definition_version)
    if filters.created_after is not None:
        add("i.created_at >= ?", ts(filters.created_after))
    if filters.created_before is not None:
        add("i.created_at < ?", ts(filters.created_before))
    if filters.updated_after is not None:
        add("i.updated_at >= ?", ts(filters.updated_after))
    if filters.updated_before is not None:
        add("i.updated_at < ?", ts(filters.updated_before))
    if after is not None:
        add("(i.created_at, i.instance_id) < (?, ?)", ts(after.created_at), after.instance_id)
    return " AND ".join(conditions), params


def numbered_placeholders(sql: str) -> str:
    """``?`` -> ``$1``, ``$2``... (asyncpg's style); the listing SQL has no ``?`` literals."""
    counter = itertools.count(1)
    return re.sub(r"\?", lambda _: f"${next(counter)}", sql)


def make_page(records: Sequence[InstanceRecord], limit: int) -> InstancePage:
    """``records`` holds up to ``limit + 1`` rows: the extra one proves another page exists."""
    items = tuple(records[:limit])
    if len(records) <= limit:
        return InstancePage(items=items, next_cursor=None)
    last = items[-1]
    cursor = encode_cursor(Position(created_at=last.created_at, instance_id=last.instance_id))
    return InstancePage(items=items, next_cursor=cursor)
