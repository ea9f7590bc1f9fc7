"""A "test build" of the PostgreSQL store without its tenant filters.

``without_tenant_filters`` rewrites every tenant predicate of every query text sent through
asyncpg (``tenant_id = $1``, ``i.tenant_id = $2``, ``tenant_id = ANY($1::text[])``) into one
that is always true but still uses its parameter, so each statement keeps its signature. With
it, only the database's row-level security stands between tenants.
"""

from __future__ import annotations

import re
from typing import Any

import asyncpg
import pytest

_TENANT_PREDICATE = re.compile(
    r"\b(?:\w+\.)?tenant_id = (?:ANY\((\$\d+)::text\[\]\)|(\$\d+))", re.IGNORECASE
)


def _strip_tenant_filters(query: str) -> str:
    """``tenant_id = $1`` (or ``= ANY($1::text[])``) becomes a predicate that is always true
    but still uses the parameter, so the statement keeps its signature."""
    return _TENANT_PREDICATE.sub(
        lambda m: (
            f"{m.group(1)}::text[] IS NOT NULL" if m.group(1) else f"{m.group(2)}::text IS NOT NULL"
        ),
        query,
    )


@pytest.fixture
def without_tenant_filters(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every query the store sends loses its tenant predicates; yields the rewritten texts."""
    rewritten: list[str] = []
    for name in ("fetch", "fetchrow", "fetchval", "execute"):
        original = getattr(asyncpg.Connection, name)

        def patched(
            self: asyncpg.Connection[Any],
            query: str,
            *args: Any,
            _original: Any = original,
            **kwargs: Any,
        ) -> Any:
            stripped = _strip_tenant_filters(query)
            if stripped != query:
                rewritten.append(stripped)
            return _original(self, stripped, *args, **kwargs)

        monkeypatch.setattr(asyncpg.Connection, name, patched)
    return rewritten
