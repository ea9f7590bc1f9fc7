"""Migration 0009's functions run the same writes as ``UPDATE_INSTANCES_AND_EVENTS`` and
``WRITE_INSTANCES_AND_EVENTS``: a change to one side without the other (a new migration)
fails here."""

from __future__ import annotations

import re

import pytest

from saga_orchestrator.store import postgres_sql as sql
from saga_orchestrator.store.migrator import load_migrations

FUNCTIONS = {
    "saga_update_batch": (sql.UPDATE_INSTANCES_AND_EVENTS, sql.UPDATE_BATCH),
    "saga_write_batch": (sql.WRITE_INSTANCES_AND_EVENTS, sql.WRITE_BATCH),
}


def _words(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _body(function: str) -> str:
    (migration,) = [m for m in load_migrations("postgres") if m.version == 9]
    definition = migration.sql.split(f"CREATE FUNCTION {function}(", 1)[1]
    return definition.split("RETURN QUERY", 1)[1].split(";", 1)[0]


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_the_function_runs_the_statement_the_store_runs_in_a_transaction(function: str) -> None:
    statement, _ = FUNCTIONS[function]
    assert _words(_body(function)) == _words(statement)


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_the_call_passes_every_parameter_of_the_statement_and_then_the_tenants(
    function: str,
) -> None:
    statement, call = FUNCTIONS[function]
    used = {int(n) for n in re.findall(r"\$(\d+)", statement)}
    called = [int(n) for n in re.findall(r"\$(\d+)", call)]
    assert f"{function}(" in call
    assert called == sorted(used | {max(used) + 1})
