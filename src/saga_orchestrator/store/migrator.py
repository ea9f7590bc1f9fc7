"""Versioned schema migrations, shipped as ``migrations/<dialect>/NNNN_name.sql`` files.

Each backend applies the pending files in version order inside one transaction and records
every applied version in ``schema_migrations``; this module only finds and parses the files.

Versions rise but may skip numbers (branches developed side by side each take their own), so a
database is judged by the set of versions it applied, never by a count: a version that is
missing is applied later even when a higher one is already in.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Iterator
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
    found = parse_migrations((entry.name, entry.read_text("utf-8")) for entry in folder.iterdir())
    if not found:
        raise RuntimeError(f"no {dialect} migrations found")
    return found


def parse_migrations(files: Iterable[tuple[str, str]]) -> tuple[Migration, ...]:
    """Migrations from (file name, SQL) pairs, in version order; other files are ignored."""
    found: list[Migration] = []
    for file_name, text in files:
        match = _FILE_NAME.match(file_name)
        if match is not None:
            found.append(Migration(version=int(match.group(1)), name=match.group(2), sql=text))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions) or (versions and versions[0] < 1):
        raise RuntimeError(f"migrations need distinct versions from 1 up: {versions}")
    return tuple(found)


def latest_version(dialect: Dialect) -> int:
    """The highest version shipped: the schema version of a fully migrated database."""
    return load_migrations(dialect)[-1].version


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
