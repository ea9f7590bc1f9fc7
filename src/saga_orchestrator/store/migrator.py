"""Versioned schema migrations, shipped as ``migrations/<dialect>/NNNN_name.sql`` files.

Each backend applies the pending files in version order inside one transaction and records
every applied version in ``schema_migrations``; this module only finds and parses the files.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Literal

Dialect = Literal["sqlite", "postgres"]

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True, kw_only=True)
class Migration:
    version: int
    name: str
    sql: str


@cache
def load_migrations(dialect: Dialect) -> tuple[Migration, ...]:
    """Every migration of ``dialect``, in version order (read once per process)."""
    folder = resources.files(__package__) / "migrations" / dialect
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = _FILE_NAME.match(entry.name)
        if match is None:
            continue
        version, name = int(match.group(1)), match.group(2)
        found.append(Migration(version=version, name=name, sql=entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"{dialect} migrations must be numbered 1..n without gaps: {versions}")
    return tuple(found)


def latest_version(dialect: Dialect) -> int:
    return len(load_migrations(dialect))


def split_sqlite_script(script: str) -> Iterator[str]:
    """Split a script into statements, so they can run inside one explicit transaction.

    ``sqlite3.Connection.executescript`` would COMMIT first; SQLite's own
    ``complete_statement`` knows where a statement ends, even inside a trigger body.
    """
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statement = pending.strip()
            pending = ""
            if _has_code(statement):
                yield statement
    if _has_code(pending):
        raise ValueError(f"incomplete SQL statement at the end of a migration: {pending!r}")


def _has_code(sql: str) -> bool:
    return any(line.strip() and not line.strip().startswith("--") for line in sql.splitlines())
