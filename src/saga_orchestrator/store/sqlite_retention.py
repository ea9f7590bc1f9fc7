"""SQLite: the retention purge of old terminal instances."""

from __future__ import annotations

import sqlite3
from datetime import datetime

from saga_orchestrator.store.codec import to_micros
from saga_orchestrator.store.sqlite_append import write_transaction

DOOMED = """
SELECT instance_id FROM instances
WHERE status IN ('completed', 'compensated', 'cancelled', 'timed_out') AND updated_at < ?
ORDER BY updated_at
LIMIT ?
"""


def purge_terminal(conn: sqlite3.Connection, before: datetime, limit: int) -> int:
    with write_transaction(conn):
        ids = [row[0] for row in conn.execute(DOOMED, (to_micros(before), limit))]
        if not ids:
            return 0
        # The mark lets the append-only trigger through; cleared before the commit, so no
        # other connection ever sees it.
        conn.execute("INSERT INTO retention_purge (active) VALUES (1)")
        rows = [(instance_id,) for instance_id in ids]
        conn.executemany("DELETE FROM events WHERE instance_id = ?", rows)
        conn.executemany("DELETE FROM timers WHERE instance_id = ?", rows)
        conn.executemany("DELETE FROM start_keys WHERE instance_id = ?", rows)
        conn.executemany(
            "DELETE FROM outbox WHERE instance_id = ? AND published_at IS NOT NULL", rows
        )
        conn.executemany("DELETE FROM instances WHERE instance_id = ?", rows)
        conn.execute("DELETE FROM retention_purge")
    return len(ids)
