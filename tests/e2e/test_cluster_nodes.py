"""One node of a cluster paused, restarted under its name, or stopped gracefully (issue 5;
semantics §5). The nodes, HAProxy and the checks are in :mod:`tests.e2e.cluster_support`.

- **Zombie**: a node driving instances is paused (SIGSTOP) for twice the lease TTL, then
  resumed. Its instances were taken over meanwhile; once awake it writes nothing to them (every
  event is traced to the database session that wrote it), the results of the calls it was in
  the middle of never reach the histories, it starts no new call for them, and no step is
  compensated twice.
- **Same NODE_ID**: a node killed with SIGKILL and started again under its name takes its
  leases back at once (epoch up, no take-over counted) instead of after their 30 s expiry.
- **SIGTERM**: the node stops accepting work, lets the attempts it is in the middle of finish
  within the grace period and releases its leases, so another node continues at once instead
  of after their 30 s expiry; no key ever runs on two nodes at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.e2e.cluster_support import (
    NODE_APPLICATION,
    LeaderWatch,
    Load,
    Node,
    NodeSettings,
    api,
    calls,
    check_histories,
    check_steps_called,
    client_ports,
    connect,
    histories,
    instance_rows,
    leader_of,
    overlapping_calls,
    owned_unfinished,
    running_cluster,
    saga_context,
    wait_settled,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(180)]


def slow_saga(index: int) -> dict[str, Any]:
    """Steps of 0.3-1 s: a node is always in the middle of some calls."""
    return saga_context(index, min_sleep=0.3, max_sleep=1.0)


async def until_driving(conn: asyncpg.Connection, node: Node, count: int) -> None:
    for _ in range(600):
        if len(await owned_unfinished(conn, node.node_id)) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{node.node_id} never drove {count} instances at once")


# -- zombie ---------------------------------------------------------------------------------------

ZOMBIE = NodeSettings(lease_ttl=3.0, poll=0.5)
WAKE_GRACE = 1.0
"""Seconds after SIGCONT in which a call may still start: it was already past the lease check
(inside the handler's first statement) when the node was paused."""

TRACE_WRITERS = """
CREATE TABLE e2e_event_writers (
    instance_id text NOT NULL,
    seq         bigint NOT NULL,
    backend_pid integer NOT NULL,
    client_port integer,
    written_at  double precision NOT NULL
);
-- SECURITY DEFINER: the nodes write events as saga_app, which has no grant on this table.
CREATE FUNCTION e2e_trace_writer() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    INSERT INTO e2e_event_writers
    VALUES (NEW.instance_id, NEW.seq, pg_backend_pid(), inet_client_port(),
            extract(epoch FROM clock_timestamp()));
    RETURN NEW;
END $$;
CREATE TRIGGER e2e_trace_writer AFTER INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION e2e_trace_writer();
"""


class Sessions:
    """The database sessions (backend pid, client port) of one node process, sampled every
    50 ms from its sockets: an event row whose writer matches one was written by it. Reads on
    a connection of its own."""

    def __init__(self, conn: asyncpg.Connection, pid: int) -> None:
        self.conn = conn
        self.pid = pid
        self.seen: set[tuple[int, int]] = set()

    async def sample(self) -> list[str]:
        """Adds the current sessions; returns the states of its saga sessions."""
        rows = await self.conn.fetch(
            "SELECT pid, client_port, state FROM pg_stat_activity"
            " WHERE application_name = $1 AND client_port = ANY($2::int[])",
            NODE_APPLICATION,
            list(client_ports(self.pid)),
        )
        self.seen.update((row[0], row[1]) for row in rows)
        return [row[2] for row in rows]

    @contextlib.asynccontextmanager
    async def sampling(self) -> AsyncIterator[None]:
        async def forever() -> None:
            while True:
                await self.sample()
                await asyncio.sleep(0.05)

        task = asyncio.create_task(forever())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def pause_between_transactions(node: Node, sessions: Sessions) -> tuple[float, float]:
    """SIGSTOP ``node`` at a moment none of its sessions is inside a transaction (paused
    mid-transaction, it would keep its instances' rows locked, so no one could take them over
    until it woke: safe, but not the case this test is about). Returns when it was stopped and
    when its sessions were seen idle: a write between the two is a statement it sent before
    the stop, finishing on the server; after the second, only a woken node can write."""
    for _ in range(100):
        stopped_at = node.send(signal.SIGSTOP)
        await asyncio.sleep(0.3)  # statements already sent finish on the server
        states = await sessions.sample()
        if states and all(state == "idle" for state in states):
            return stopped_at, time.time()
        node.send(signal.SIGCONT)
        await asyncio.sleep(random.uniform(0.05, 0.3))
    raise AssertionError(f"{node.node_id} was never paused between transactions")


async def test_a_paused_node_wakes_as_a_zombie_whose_writes_are_refused(
    pg_url: str, tmp_path: Path
) -> None:
    conn = await connect(pg_url)
    watcher = await connect(pg_url)
    try:
        await conn.execute(TRACE_WRITERS)
        async with (
            running_cluster(pg_url, tmp_path, settings=ZOMBIE) as cluster,
            api(cluster.url) as client,
        ):
            leader, _ = await leader_of(client)
            zombie = next(node for node in cluster.nodes.values() if node.node_id != leader)
            load = Load(client, run=uuid.uuid4().hex, context=slow_saga)
            await load.start_all(300, concurrency=30)  # before the pause: none waits on it
            await until_driving(conn, zombie, 15)
            sessions = Sessions(watcher, zombie.pid)
            stopped_at, quiet_at = await pause_between_transactions(zombie, sessions)
            owned = await owned_unfinished(conn, zombie.node_id)
            await asyncio.sleep(stopped_at + 2 * ZOMBIE.lease_ttl - time.time())
            async with sessions.sampling():
                woke_at = zombie.send(signal.SIGCONT)
                ids = list(load.acknowledged.values())
                await wait_settled(conn, ids, bound=90)
                await asyncio.sleep(1.0)  # whatever it still tries, it tries now
            rows = await instance_rows(conn)
            events = await histories(conn)
            recorded = await calls(conn)
            writers = await conn.fetch("SELECT * FROM e2e_event_writers")
    finally:
        await watcher.close()
        await conn.close()

    assert len(owned) >= 10, f"the zombie drove only {len(owned)} instances when paused"
    # Taken over while it slept: epoch up, and a survivor called their steps meanwhile.
    assert [iid for iid in owned if rows[iid].lease_epoch <= owned[iid]] == []
    taken = {
        c.instance_id
        for c in recorded
        if c.instance_id in owned
        and c.node_id != zombie.node_id
        and stopped_at < c.started_at < woke_at
    }
    assert taken == set(owned)
    # No write of the zombie to them after the pause (its sessions did write before)...
    by_zombie = [w for w in writers if (w["backend_pid"], w["client_port"]) in sessions.seen]
    assert any(w["written_at"] < stopped_at for w in by_zombie), "its writes were not traced"
    late_writes = [
        (w["instance_id"], w["seq"], f"{w['written_at'] - stopped_at:+.3f} s after the stop")
        for w in by_zombie
        if w["instance_id"] in owned and w["written_at"] > quiet_at
    ]
    assert late_writes == [], f"the zombie wrote {len(late_writes)} events after its pause"
    # ... so the results of the calls it was in the middle of are nowhere in the histories.
    mine = [c for c in recorded if c.node_id == zombie.node_id and c.instance_id in owned]
    interrupted = [c for c in mine if c.started_at < stopped_at < (c.finished_at or 0)]
    assert interrupted, "the zombie was in the middle of no call: nothing was tested"
    leaked = [
        c.call_id
        for c in interrupted
        if any(c.call_id in str(e.data) for e in events[c.instance_id])
    ]
    assert leaked == [], f"results of the zombie's calls were recorded: {leaked}"
    # Once awake it called no participant for them.
    late_calls = [c for c in mine if c.started_at > woke_at + WAKE_GRACE]
    assert late_calls == [], f"the zombie called participants after waking: {late_calls[:3]}"
    print(  # noqa: T201
        f"\nzombie {zombie.node_id}: drove {len(owned)} instances when paused, "
        f"{len(interrupted)} calls in flight, {len(taken)} instances taken over while it slept; "
        f"{len(by_zombie)} events written by its {len(sessions.seen)} sessions, none after"
    )
    check_histories(events, rows, ids, load.failing)  # one compensation per succeeded step
    check_steps_called(recorded, ids, load.failing)


# -- restart under the same NODE_ID ---------------------------------------------------------------

LONG_LEASES = NodeSettings(lease_ttl=30.0, poll=0.5, grace=5.0)
"""Leases that outlive the test's waits: anything continuing early was handed over, not
taken over after expiry."""


async def test_a_node_restarted_under_its_name_takes_its_leases_back_at_once(
    pg_url: str, tmp_path: Path
) -> None:
    conn = await connect(pg_url)
    try:
        async with running_cluster(
            pg_url, tmp_path, ("n1", "n2"), LONG_LEASES, haproxy=False
        ) as cluster:
            n1 = cluster["n1"]
            async with api(n1.url) as client:
                load = Load(client, run=uuid.uuid4().hex, context=slow_saga)
                await load.start_all(100, concurrency=25)
            owned = await owned_unfinished(conn, "n1")
            old_pid = n1.pid
            killed_at = await n1.kill()
            n1.start()
            await n1.ready()
            ids = list(load.acknowledged.values())
            done_at = await wait_settled(conn, ids, bound=90)
            rows = await instance_rows(conn)
            events = await histories(conn)
            recorded = await calls(conn)
    finally:
        await conn.close()

    print(  # noqa: T201
        f"\nrestarted n1 settled the {len(owned)} instances it drove "
        f"{done_at - killed_at:.1f}s after the kill (lease TTL {LONG_LEASES.lease_ttl:.0f}s)"
    )
    assert len(owned) >= 10, f"n1 drove only {len(owned)} instances when killed"
    assert done_at - killed_at < LONG_LEASES.lease_ttl, "the leases were left to expire"
    assert [iid for iid in owned if rows[iid].lease_epoch <= owned[iid]] == []
    assert [iid for iid in owned if rows[iid].takeovers != 0] == []
    after = [c for c in recorded if c.instance_id in owned and c.started_at > killed_at]
    assert after, "nothing was left to do after the kill: nothing was tested"
    assert {(c.node_id, c.pid) for c in after} == {("n1", n1.pid)}
    assert overlapping_calls(recorded, {old_pid: killed_at}) == []
    check_histories(events, rows, ids, load.failing)
    check_steps_called(recorded, ids, load.failing)


# -- SIGTERM ---------------------------------------------------------------------------------------

SHORT_GRACE = NodeSettings(lease_ttl=30.0, poll=0.5, grace=2.0)
"""Leases of 30 s, and a grace (2 s) shorter than a saga (three steps of 0.3-1 s), so the
stopping node leaves work behind for the others."""


async def test_sigterm_finishes_in_flight_attempts_and_hands_leases_over_at_once(
    pg_url: str, tmp_path: Path
) -> None:
    conn = await connect(pg_url)
    try:
        async with (
            running_cluster(pg_url, tmp_path, settings=SHORT_GRACE) as cluster,
            api(cluster.url) as client,
            LeaderWatch(pg_url) as watch,
        ):
            leader, _ = await leader_of(client)
            node = cluster[leader]  # the leader: its chores' lease is handed over too
            load = Load(client, run=uuid.uuid4().hex, context=slow_saga)
            loading = asyncio.create_task(load.start_all(400, concurrency=20))
            try:
                await load.reached(100)
                await until_driving(conn, node, 15)
                owned = await owned_unfinished(conn, node.node_id)
                termed_at = node.send(signal.SIGTERM)
                code = await node.exited(SHORT_GRACE.grace + 30)
                exited_at = time.time()
                await loading
            finally:
                loading.cancel()
            ids = list(load.acknowledged.values())
            await wait_settled(conn, ids, bound=90)
            new_leader, _ = await leader_of(client)
            rows = await instance_rows(conn)
            events = await histories(conn)
            recorded = await calls(conn)
    finally:
        await conn.close()

    mine = [c for c in recorded if c.pid == node.pid]
    in_flight = [c for c in mine if c.started_at < termed_at < (c.finished_at or float("inf"))]
    during_grace = [c for c in mine if c.started_at > termed_at]
    continued = {
        c.instance_id: c.started_at - termed_at
        for c in reversed(recorded)
        if c.instance_id in owned and c.pid != node.pid and c.started_at > termed_at
    }
    handovers = watch.check()
    delays = sorted(continued.values())
    overlaps = overlapping_calls(recorded, {})
    cut_short = [c for c in mine if c.finished_at is None or c.outcome == "cancelled"]
    print(  # noqa: T201
        f"\nSIGTERM to {node.node_id}: exited after {exited_at - termed_at:.1f}s (grace "
        f"{SHORT_GRACE.grace:.0f}s); {len(in_flight)} calls were in flight, {len(during_grace)} "
        f"started during the grace; {len(continued)} of its {len(owned)} instances continued "
        "elsewhere"
        + (f", first {delays[0]:.2f}s, last {delays[-1]:.2f}s after SIGTERM" if delays else "")
        + f"; leadership gaps {[round(gap, 2) for gap in handovers]}s; "
        f"start answers {dict(load.statuses)}; {len(overlaps)} keys ran twice at once; "
        f"{len(cut_short)} calls begun after SIGTERM were cut short, "
        f"{sorted(round((c.finished_at or 0) - termed_at, 2) for c in cut_short)}s after it"
    )
    assert code == 0, node.output()
    assert in_flight, "the node was in the middle of no call: nothing was tested"
    # The calls under way at SIGTERM ended normally, within the grace.
    late = [
        c
        for c in in_flight
        if c.finished_at is None
        or c.outcome == "cancelled"
        or c.finished_at > termed_at + SHORT_GRACE.grace
    ]
    assert late == [], f"in-flight calls cut short or ended after the grace: {late[:3]}"
    assert overlaps == []
    # What it left continued elsewhere at once: handed over (released), not taken over.
    assert continued, "the node left nothing unfinished: nothing was handed over"
    assert [iid for iid in owned if rows[iid].takeovers != 0] == []
    assert delays[-1] < SHORT_GRACE.lease_ttl * 2 / 3, "leases were left to expire"
    assert new_leader != leader
    # Through HAProxy no start got an error status (a request caught in the node's accept
    # backlog when it closed its socket loses its connection: retried, with its key).
    codes = {status for status in load.statuses if status.isdigit()}
    assert codes <= {"200", "201"}, f"a graceful stop failed starts: {load.statuses}"
    check_histories(events, rows, ids, load.failing)
    check_steps_called(recorded, ids, load.failing)
    # Nor did it abandon any call it began during the shutdown (before the engine stopped).
    assert cut_short == [], f"{len(cut_short)} calls begun after SIGTERM were cut short"
