"""Migration 0009's function runs the same write as ``UPDATE_INSTANCES_AND_EVENTS``: a change
to one without the other (a new migration) fails here."""

from __future__ import annotations

import re

from saga_orchestrator.store import postgres_sql as sql
from saga_orchestrator.store.migrator import load_migrations


def _words(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def test_the_function_runs_the_statement_the_store_runs_in_a_transaction() -> None:
    (migration,) = [m for m in load_migrations("postgres") if m.version == 9]
    body = migration.sql.split("RETURN QUERY", 1)[1].split(";", 1)[0]
    assert _words(body) == _words(sql.UPDATE_INSTANCES_AND_EVENTS)


def test_the_call_names_every_parameter_of_the_statement_and_the_tenants() -> None:
    used = {int(n) for n in re.findall(r"\$(\d+)", sql.UPDATE_INSTANCES_AND_EVENTS)}
    called = {int(n) for n in re.findall(r"\$(\d+)", sql.UPDATE_BATCH)}
    assert called == used | {max(used) + 1}
