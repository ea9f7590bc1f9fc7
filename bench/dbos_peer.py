"""The DBOS Transact peer of ``bench/engine_bench.py``: the same three-step saga as a DBOS
workflow, run in its own process (DBOS keeps global state, threads and an event loop).

    python bench/dbos_peer.py --url sqlite:////tmp/x/dbos.sqlite --sagas 1000 --scenario A \
        --mode async --json result.json

One ``@DBOS.workflow`` calls three ``@DBOS.step`` functions (reserve -> charge -> ship). In
scenario B ship raises, the workflow catches the failure and calls the two compensation steps
in reverse (refund, release), and returns ``"compensated"``: the same work as a saga that ends
``compensated``. Steps are no-ops that only take timestamps for the dispatch latency (from one
step returning to the next step being invoked in the same workflow).

Modes: ``async`` runs ``async def`` workflows through ``DBOS.start_workflow_async`` on one event
loop with ``--concurrency`` workflows in flight (DBOS hands each database call to its thread
pool); ``threads`` calls ``def`` workflows directly from ``--concurrency`` client threads.

The result (one JSON object) is written to ``--json`` (or printed): throughput, latency
percentiles, the row counts DBOS wrote, and the terminal results it verified.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import sqlalchemy as sa
from dbos import DBOS, DBOSConfig

_last_return: dict[int, float] = {}
_latencies: list[float] = []
_calls: Counter[str] = Counter()


class ShipRejected(Exception):
    """The definite failure of step 3 in scenario B."""


def _enter(key: int, name: str) -> None:
    now = time.perf_counter()
    previous = _last_return.get(key)
    if previous is not None:
        _latencies.append(now - previous)
    _calls[name] += 1


def _leave(key: int) -> None:
    _last_return[key] = time.perf_counter()


# -- async flavour --
@DBOS.step()
async def reserve_a(key: int) -> str:
    _enter(key, "reserve")
    _leave(key)
    return "reserved"


@DBOS.step()
async def charge_a(key: int) -> str:
    _enter(key, "charge")
    _leave(key)
    return "charged"


@DBOS.step()
async def ship_a(key: int, fail: bool) -> str:
    _enter(key, "ship")
    _leave(key)
    if fail:
        raise ShipRejected("no carrier")
    return "shipped"


@DBOS.step()
async def refund_a(key: int) -> str:
    _enter(key, "refund")
    _leave(key)
    return "refunded"


@DBOS.step()
async def release_a(key: int) -> str:
    _enter(key, "release")
    _leave(key)
    return "released"


@DBOS.workflow()
async def order_async(key: int, fail: bool) -> str:
    await reserve_a(key)
    await charge_a(key)
    try:
        await ship_a(key, fail)
    except Exception:
        await refund_a(key)
        await release_a(key)
        return "compensated"
    return "completed"


# -- sync flavour --
@DBOS.step()
def reserve_s(key: int) -> str:
    _enter(key, "reserve")
    _leave(key)
    return "reserved"


@DBOS.step()
def charge_s(key: int) -> str:
    _enter(key, "charge")
    _leave(key)
    return "charged"


@DBOS.step()
def ship_s(key: int, fail: bool) -> str:
    _enter(key, "ship")
    _leave(key)
    if fail:
        raise ShipRejected("no carrier")
    return "shipped"


@DBOS.step()
def refund_s(key: int) -> str:
    _enter(key, "refund")
    _leave(key)
    return "refunded"


@DBOS.step()
def release_s(key: int) -> str:
    _enter(key, "release")
    _leave(key)
    return "released"


@DBOS.workflow()
def order_sync(key: int, fail: bool) -> str:
    reserve_s(key)
    charge_s(key)
    try:
        ship_s(key, fail)
    except Exception:
        refund_s(key)
        release_s(key)
        return "compensated"
    return "completed"


async def _run_async(keys: range, fail: bool, concurrency: int) -> list[str]:
    results: list[str] = [""] * len(keys)
    iterator = iter(enumerate(keys))

    async def worker() -> None:
        for index, key in iterator:
            try:
                handle = await DBOS.start_workflow_async(order_async, key, fail)
                results[index] = await handle.get_result()
            except Exception as error:  # counted as a wrong terminal state
                results[index] = f"error: {type(error).__name__}: {error}"

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


def _run_threads(keys: range, fail: bool, concurrency: int) -> list[str]:
    def one(key: int) -> str:
        try:
            return str(order_sync(key, fail))
        except Exception as error:
            return f"error: {type(error).__name__}: {error}"

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(pool.map(one, keys))


def _count_rows(url: str) -> dict[str, int]:
    engine_url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    engine = sa.create_engine(engine_url)
    schema = "" if url.startswith("sqlite") else "dbos."
    try:
        with engine.connect() as conn:
            return {
                table: int(
                    conn.execute(sa.text(f"SELECT count(*) FROM {schema}{table}")).scalar_one()
                )
                for table in ("workflow_status", "operation_outputs")
            }
    finally:
        engine.dispose()


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="DBOS system database URL")
    parser.add_argument("--sagas", type=int, default=1000)
    parser.add_argument("--scenario", choices=["A", "B"], default="A")
    parser.add_argument("--mode", choices=["async", "threads"], default="async")
    parser.add_argument("--concurrency", type=int, default=1000)
    parser.add_argument("--pool-size", type=int, default=20, help="sys_db_pool_size")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument(
        "--sqlite-journal",
        choices=["wal", "default"],
        default="wal",
        help="wal: create the SQLite file in WAL mode first (what our store uses); "
        "default: leave DBOS's rollback journal",
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    if args.url.startswith("sqlite:///") and args.sqlite_journal == "wal":
        # journal_mode=WAL is stored in the file: DBOS's connections (synchronous=FULL, the
        # default) then commit like our store does, one fsync of the WAL per transaction.
        with contextlib.closing(sqlite3.connect(args.url.removeprefix("sqlite:///"))) as db:
            db.execute("PRAGMA journal_mode=WAL")

    logging.getLogger("dbos").setLevel(logging.WARNING)
    config: DBOSConfig = {
        "name": "saga-bench",
        "system_database_url": args.url,
        "sys_db_pool_size": args.pool_size,
        "log_level": "WARNING",
    }
    DBOS(config=config)
    DBOS.launch()
    fail = args.scenario == "B"
    expected = "compensated" if fail else "completed"
    run: Callable[[range], list[str]]
    if args.mode == "async":

        def run(keys: range) -> list[str]:
            return asyncio.run(_run_async(keys, fail, args.concurrency))

    else:

        def run(keys: range) -> list[str]:
            return _run_threads(keys, fail, args.concurrency)

    try:
        run(range(-args.warmup, 0))  # warm-up: negative keys, excluded from every count
        rows_before = _count_rows(args.url)
        _latencies.clear()
        _calls.clear()
        began = time.perf_counter()
        results = run(range(args.sagas))
        elapsed = time.perf_counter() - began
        rows_after = _count_rows(args.url)
    finally:
        with contextlib.suppress(Exception):
            DBOS.destroy(destroy_registry=True)

    outcomes = Counter(results)
    rows = {table: rows_after[table] - rows_before[table] for table in rows_after}
    report: dict[str, Any] = {
        "system": "dbos",
        "mode": args.mode,
        "concurrency": args.concurrency,
        "pool_size": args.pool_size,
        "sqlite_journal": args.sqlite_journal if args.url.startswith("sqlite") else None,
        "scenario": args.scenario,
        "sagas": args.sagas,
        "elapsed": elapsed,
        "sagas_per_s": args.sagas / elapsed,
        "records": rows["workflow_status"] + rows["operation_outputs"],
        "rows": rows,
        "p50_ms": _percentile(_latencies, 0.50) * 1000,
        "p99_ms": _percentile(_latencies, 0.99) * 1000,
        "latency_samples": len(_latencies),
        "calls": dict(_calls),
        "outcomes": dict(outcomes.most_common(5)),
        "ok": outcomes[expected] == args.sagas,
        "pid": os.getpid(),
    }
    text = json.dumps(report)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            out.write(text)
    else:
        print(text)
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
