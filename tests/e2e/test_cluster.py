"""A cluster of real nodes behind HAProxy, two of them killed mid-run (issue 5; semantics §5).

Three ``saga serve`` processes share one PostgreSQL database (``CLUSTER_ENABLED=true``, leases
of 3 s, claims polled every 0.5 s) behind HAProxy running the shipped
``deploy/haproxy/haproxy.cfg``. 2,000 sagas are started through HAProxy; their handlers
(:mod:`tests.e2e.cluster_app`) sleep 0-200 ms and record every call. A follower is killed with
SIGKILL while it drives instances, then the leader. Afterwards every acknowledged start is
terminal, exactly as its input says; no idempotency key ran on two processes at once; every
step ran at least once; every succeeded step of a failed saga was compensated exactly once; all
histories are gap-free; and the dead nodes' instances were taken over within the lease TTL and
two claim polls of the kill.
"""

from __future__ import annotations

import asyncio
import statistics
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from tests.e2e.cluster_support import (
    Load,
    Node,
    NodeSettings,
    api,
    calls,
    check_histories,
    check_steps_called,
    connect,
    first_events_after,
    histories,
    instance_rows,
    leader_of,
    overlapping_calls,
    owned_unfinished,
    running_cluster,
    saga_context,
    wait_settled,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(300)]

SAGAS = 2000
FIRST_KILL_AT = 500
SECOND_KILL_AT = 1100
"""Acknowledged starts after which the follower, then the leader, is killed."""
SETTINGS = NodeSettings(lease_ttl=3.0, poll=0.5)
TAKEOVER_BOUND = SETTINGS.lease_ttl + 2 * SETTINGS.poll
"""Kill → first event of one of the dead node's instances written by a survivor. No slack for
the loaded machine was needed (see the measured times in the report this test prints)."""


@dataclass(frozen=True, slots=True)
class Kill:
    node_id: str
    pid: int
    at: float
    owned: dict[str, int]
    """Unfinished instances it held the lease of just before the kill, with their epoch."""


async def kill_while_busy(
    node: Node, conn: asyncpg.Connection, load: Load, after_starts: int
) -> Kill:
    """SIGKILL ``node`` once ``after_starts`` sagas were acknowledged and it drives some."""
    await load.reached(after_starts)
    for _ in range(200):
        owned = await owned_unfinished(conn, node.node_id)
        if len(owned) >= 10:
            break
        await asyncio.sleep(0.05)
    pid = node.pid
    at = await node.kill()
    assert len(owned) >= 5, f"{node.node_id} drove only {len(owned)} instances when killed"
    return Kill(node.node_id, pid, at, owned)


async def report_takeover(conn: asyncpg.Connection, kill: Kill) -> float:
    """Seconds from the kill to the first event of a dead node's instance (and the spread)."""
    resumed = await first_events_after(conn, kill.owned, kill.at)
    assert resumed, f"no instance of {kill.node_id} moved after its kill"
    delays = sorted(at - kill.at for at in resumed.values())
    print(  # noqa: T201
        f"\ntake-over after killing {kill.node_id}: first {delays[0]:.2f}s, "
        f"median {statistics.median(delays):.2f}s, last {delays[-1]:.2f}s "
        f"({len(resumed)} of {len(kill.owned)} instances it drove were unfinished; "
        f"bound {TAKEOVER_BOUND:.1f}s)"
    )
    return delays[0]


async def test_two_kills_under_load_lose_nothing_and_run_no_key_twice(
    pg_url: str, tmp_path: Path
) -> None:
    async with running_cluster(pg_url, tmp_path, settings=SETTINGS) as cluster:
        conn = await connect(pg_url)
        try:
            async with api(cluster.url) as client:
                load = Load(client, run=uuid.uuid4().hex, context=saga_context)
                loading = asyncio.create_task(load.start_all(SAGAS, concurrency=40))
                try:
                    leader, _ = await leader_of(client)
                    follower = next(n for n in cluster.nodes if n != leader)
                    first = await kill_while_busy(cluster[follower], conn, load, FIRST_KILL_AT)
                    still_leader, _ = await leader_of(client)
                    assert still_leader == leader
                    second = await kill_while_busy(cluster[leader], conn, load, SECOND_KILL_AT)
                    await loading
                finally:
                    loading.cancel()
            ids = list(load.acknowledged.values())
            assert len(ids) == SAGAS
            done = await wait_settled(conn, ids, bound=180)
            print(  # noqa: T201
                f"\n{SAGAS} sagas settled {done - first.at:.1f}s after the first kill; "
                f"start answers: {dict(load.statuses)}"
            )

            takeovers = [await report_takeover(conn, kill) for kill in (first, second)]
            rows = await instance_rows(conn)
            events = await histories(conn)
            recorded = await calls(conn)
        finally:
            await conn.close()

    check_histories(events, rows, ids, load.failing)
    check_steps_called(recorded, ids, load.failing)
    # HAProxy spread the starts: each node made the first call of some instances.
    first_calls = {c.instance_id: c.node_id for c in reversed(recorded)}
    assert set(first_calls.values()) == set(cluster.nodes)
    killed_at = {first.pid: first.at, second.pid: second.at}
    overlaps = overlapping_calls(recorded, killed_at)
    assert not overlaps, f"{len(overlaps)} keys ran on two nodes at once, e.g. {overlaps[:3]}"
    for kill in (first, second):
        moved = [iid for iid in kill.owned if events[iid][-1].recorded_at > kill.at]
        # The dead node's work really was taken over: epoch up, survivors called its steps.
        assert all(rows[iid].lease_epoch > kill.owned[iid] for iid in moved)
        by_survivors = {
            c.instance_id
            for c in recorded
            if c.instance_id in kill.owned and c.pid != kill.pid and c.started_at > kill.at
        }
        assert by_survivors, f"no survivor called a step of {kill.node_id}'s instances"
    assert max(takeovers) <= TAKEOVER_BOUND, f"take-over took {takeovers}s"
