"""A cluster whose database misbehaves (issue 5; semantics §5): the leader's sessions
terminated, the leader cut off from the database, PostgreSQL restarted under load.

- **Leader sessions**: every node connects as a role of its own, so the leader's sessions are
  found by ``usename``. Terminated (``pg_terminate_backend``, three times), the leader
  reconnects and every node beats again. Then the leader is cut off (its role refused any
  connection, its sessions terminated) until another node leads: every leadership recorded in
  the lease row (polled every 50 ms) and in the nodes' own logs of their chores (the outbox
  relay, so the nodes get a RabbitMQ virtual host) shows one leader at a time, the new one only
  after the old one stopped and its lease ran out; the hand-over takes seconds.
- **A wake-up during an outage**: an attempt's deadline passes while its node cannot reach the
  database; once it can again, the instance still moves on.
- **PostgreSQL restart**: restarted with ``-m immediate`` while sagas start through HAProxy and
  straight at each node. Meanwhile every answer is 2xx or 503 with ``Retry-After`` (never 500);
  afterwards every node serves again and every acknowledged start ends terminal, as its input
  says, with no key run by two nodes at once. This restarts the machine's shared server; the
  test waits for it to be back whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

from tests.e2e.cluster_app import DEFINITION, SAGA
from tests.e2e.cluster_support import (
    INSTANCES,
    LEADER_TTL,
    Cluster,
    LeaderWatch,
    Load,
    NodeSettings,
    api,
    assert_no_broken_answers,
    calls,
    check_histories,
    check_steps_called,
    connect,
    histories,
    instance_rows,
    leader_of,
    on_ci,
    overlapping_calls,
    running_cluster,
    saga_context,
    wait_settled,
)
from tests.integration.transports.rabbitmq import rabbitmq_vhost

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(240)]

SETTINGS = NodeSettings(lease_ttl=3.0, poll=0.5)
NODE_IDS = ("n1", "n2", "n3")


# -- the leader's sessions ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def node_roles(server_url: str, database_url: str) -> AsyncIterator[dict[str, str]]:
    """A login role per node (not a superuser: a connection limit binds it), allowed what a
    node does on the test's database; yields each node's database URL. Dropped afterwards."""
    prefix = f"e2e_{uuid.uuid4().hex[:10]}"
    roles = {node_id: f"{prefix}_{node_id}" for node_id in NODE_IDS}
    server = await connect(server_url)
    database = await connect(database_url)
    try:
        for role in roles.values():
            await server.execute(f'CREATE ROLE "{role}" LOGIN')
            # The store's sessions act as these roles (row-level security, migration 0008).
            await server.execute(f'GRANT saga_app, saga_cluster TO "{role}"')
            await database.execute(
                f'GRANT USAGE, CREATE ON SCHEMA public TO "{role}";'
                f'GRANT ALL ON ALL TABLES IN SCHEMA public TO "{role}";'
                f'GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO "{role}"'
            )
        parts = urlsplit(database_url)
        host = parts.netloc.rpartition("@")[2]
        yield {n: urlunsplit(parts._replace(netloc=f"{r}@{host}")) for n, r in roles.items()}
    finally:
        for role in roles.values():
            await database.execute(f'DROP OWNED BY "{role}"')
            await server.execute(f'DROP ROLE IF EXISTS "{role}"')
        await database.close()
        await server.close()


def role_of(url: str) -> str:
    user = urlsplit(url).username
    assert user is not None
    return user


async def terminate_sessions(conn: asyncpg.Connection, role: str) -> int:
    terminated: int = await conn.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = $1", role
    )
    return terminated


async def beats_after(cluster: Cluster, conn: asyncpg.Connection, after: float) -> float:
    """Until each node's heartbeat is later than ``after``; returns when (bounded). A node
    that never beats is asked for its threads and tasks (in its log) before the test fails."""
    deadline = time.monotonic() + 60
    node_ids = list(cluster.nodes)
    while True:
        rows = await conn.fetch(
            "SELECT node_id FROM nodes"
            " WHERE node_id = ANY($1::text[]) AND heartbeat_at > to_timestamp($2)",
            node_ids,
            after,
        )
        silent = set(node_ids) - {row[0] for row in rows}
        if not silent:
            return time.time()
        if time.monotonic() > deadline:
            for node_id in silent:
                cluster[node_id].send(signal.SIGUSR1)
                cluster[node_id].send(signal.SIGUSR2)
            await asyncio.sleep(1.0)
            raise AssertionError(f"{sorted(silent)} never beat again (stacks in their logs)")
        await asyncio.sleep(0.1)


_CHORE_LINE = re.compile(
    r"^(?P<at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ saga_orchestrator\.cluster: "
    r"(?P<what>leader: starting|cannot confirm leadership in time)"
)


def chore_spans(cluster: Cluster) -> list[tuple[str, float, float]]:
    """(node, from, to) of every span a node ran the chores, from its own log; a span still
    open at the end lasts forever."""
    spans = []
    for node in cluster.nodes.values():
        began: float | None = None
        for line in node.output(tail=None).splitlines():
            found = _CHORE_LINE.match(line)
            if found is None:
                continue
            # asctime is the node's local time, like this process's.
            stamp = datetime.strptime(found["at"], "%Y-%m-%d %H:%M:%S,%f").astimezone()
            at = stamp.timestamp()
            if found["what"] == "leader: starting" and began is None:
                began = at
            elif found["what"] != "leader: starting" and began is not None:
                spans.append((node.node_id, began, at))
                began = None
        if began is not None:
            spans.append((node.node_id, began, float("inf")))
    return spans


TERMINATIONS = 3
"""Times the leader's sessions are terminated before it is cut off."""
LEADER_LOAD = 600
"""Sagas started meanwhile."""


async def test_the_leader_cut_off_from_the_database_hands_over_without_overlap(
    pg_url: str, postgres_server_url: str, tmp_path: Path
) -> None:
    conn = await connect(pg_url)
    try:
        async with (
            rabbitmq_vhost() as amqp_url,
            node_roles(postgres_server_url, pg_url) as urls,
        ):
            settings = NodeSettings(lease_ttl=3.0, poll=0.5, env={"AMQP_URL": amqp_url})
            async with (
                running_cluster(
                    pg_url, tmp_path, NODE_IDS, settings, urls=urls, clean_logs=False
                ) as cluster,
                api(cluster.url) as client,
                LeaderWatch(pg_url) as watch,
            ):
                load = Load(client, run=uuid.uuid4().hex, context=saga_context)
                load.retried |= {"500"}  # counted: reported at the end
                loading = asyncio.create_task(load.start_all(LEADER_LOAD, concurrency=8))
                try:
                    leader, _ = await leader_of(client)
                    role = role_of(urls[leader])
                    # Its sessions terminated: it reconnects, every node beats again.
                    for _ in range(TERMINATIONS):
                        await load.reached(min(len(load.acknowledged) + 30, LEADER_LOAD))
                        killed_at = time.time()
                        assert await terminate_sessions(conn, role) > 0
                        await beats_after(cluster, conn, killed_at)
                    # Cut off: no connection of its role is allowed any more.
                    await conn.execute(f'ALTER ROLE "{role}" CONNECTION LIMIT 0')
                    cut_at = time.time()
                    await terminate_sessions(conn, role)
                    successor = await new_leader(watch, leader)
                    await asyncio.sleep(1.0)
                    await conn.execute(f'ALTER ROLE "{role}" CONNECTION LIMIT -1')
                    back_at = time.time()
                    await beats_after(cluster, conn, back_at)
                    await loading
                finally:
                    loading.cancel()
                ids = list(load.acknowledged.values())
                await wait_settled(conn, ids, bound=120)
                views = await leaders_seen_by(cluster)
                rows = await instance_rows(conn)
                events = await histories(conn)
                recorded = await calls(conn)
    finally:
        await conn.close()

    gaps = watch.check()
    epochs = watch.epochs()
    spans = sorted(chore_spans(cluster), key=lambda span: span[1])
    failover = min(s.expires_at for s in watch.seen if s.holder == successor) - LEADER_TTL - cut_at
    print(  # noqa: T201
        f"\nleader {leader} cut off: {successor} leads {failover:.1f}s later (lease "
        f"{LEADER_TTL:.0f}s), {gaps[-1]:.2f}s after the old lease ran out; epochs {epochs}; "
        f"chore spans {[(n, round(b - cut_at, 2), round(e - cut_at, 2)) for n, b, e in spans]} "
        f"(s from the cut); start answers {dict(load.statuses)}; nodes see {views}"
    )
    assert successor != leader
    assert [holder for _, holder in epochs][-1] == successor
    # The nodes' own view of their chores: one at a time, the old leader's stopped first.
    assert len(spans) >= 2
    for before, after in itertools.pairwise(spans):
        assert before[2] <= after[1], f"two nodes ran the chores at once: {before} {after}"
    assert spans[-1][0] == successor
    assert set(views.values()) == {successor}
    assert failover <= LEADER_TTL + LEADER_TTL / 3 + 2.0, "leadership failed over too late"
    assert overlapping_calls(recorded, {}) == []
    check_histories(events, rows, ids, load.failing)
    check_steps_called(recorded, ids, load.failing)
    assert_no_broken_answers(load.statuses)


async def new_leader(watch: LeaderWatch, old: str) -> str:
    deadline = time.monotonic() + 3 * LEADER_TTL
    while not watch.seen or watch.seen[-1].holder == old:
        assert time.monotonic() < deadline, f"no node took over from {old}"
        await asyncio.sleep(0.05)
    return watch.seen[-1].holder


async def leaders_seen_by(cluster: Cluster) -> dict[str, str]:
    """The leader according to each node, asked directly."""
    views = {}
    for node in cluster.nodes.values():
        async with api(node.url) as client:
            views[node.node_id] = (await leader_of(client))[0]
    return views


# -- a wake-up due while the database is away ------------------------------------------------------

HANGING = {
    **DEFINITION,
    "name": "cluster-hanging",
    "steps": [{**step, "timeout": 2} for step in DEFINITION["steps"]],
}
"""Steps time out after 2 s; started with ``hang``, the first ``reserve`` attempt takes 4 s."""


async def test_a_wake_up_due_while_the_database_is_away_is_not_lost(
    pg_url: str, postgres_server_url: str, tmp_path: Path
) -> None:
    # Leases of 10 s outlive the 4 s outage: the node keeps them, no claim can interfere.
    settings = NodeSettings(lease_ttl=10.0, poll=0.5)
    conn = await connect(pg_url)
    try:
        async with (
            node_roles(postgres_server_url, pg_url) as urls,
            running_cluster(
                pg_url, tmp_path, ("n1",), settings, haproxy=False, urls=urls, clean_logs=False
            ) as cluster,
            api(cluster["n1"].url) as client,
        ):
            response = await client.post("/api/v1/sagas/definitions", json=HANGING)
            assert response.status_code == 201, response.text
            ids = []
            for index in range(10):
                body = {"saga_name": "cluster-hanging", "context": {"index": index, "hang": 4}}
                response = await client.post(INSTANCES, json=body)
                assert response.status_code == 201, response.text
                ids.append(response.json()["id"])
            # The first attempts hang; their deadlines (2 s) pass while the node is cut off.
            role = role_of(urls["n1"])
            await conn.execute(f'ALTER ROLE "{role}" CONNECTION LIMIT 0')
            await terminate_sessions(conn, role)
            await asyncio.sleep(4.0)
            await conn.execute(f'ALTER ROLE "{role}" CONNECTION LIMIT -1')
            await beats_after(cluster, conn, time.time())
            # Moving on takes a retry of 0.1 s and a fast attempt: 20 s is only a bound.
            await wait_settled(conn, ids, bound=20)
    finally:
        await conn.close()


# -- PostgreSQL restarted -------------------------------------------------------------------------

OUTAGE_LOAD = 8
"""Concurrent starts through HAProxy during the restart (and one per node, straight at it)."""


def restart_command() -> list[str]:
    """``pg_ctlcluster VERSION main restart -m immediate`` for the local cluster (root or the
    postgres user only): skip without it, or fail on CI."""
    versions = sorted(os.listdir("/etc/postgresql")) if Path("/etc/postgresql").is_dir() else []
    allowed = os.geteuid() == 0 or os.environ.get("USER") == "postgres"
    if not versions or shutil.which("pg_ctlcluster") is None or not allowed:
        reason = "restarting PostgreSQL needs pg_ctlcluster, as root or postgres"
        if on_ci():
            pytest.fail(f"{reason}; CI=true requires it", pytrace=False)
        pytest.skip(reason)
    version = versions[-1]
    return [
        "pg_ctlcluster",
        "--skip-systemctl-redirect",
        version,
        "main",
        "restart",
        "-m",
        "immediate",
    ]


def postgres_ready() -> bool:
    probe = ["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432"]
    return subprocess.run(probe, check=False, timeout=10).returncode == 0


async def until_postgres_ready(bound: float = 120.0) -> None:
    deadline = time.monotonic() + bound
    while not await asyncio.to_thread(postgres_ready):
        assert time.monotonic() < deadline, "PostgreSQL did not come back"
        await asyncio.sleep(0.5)


@dataclass
class Answers:
    """What clients got while the database went away and came back."""

    statuses: Counter[str] = field(default_factory=Counter)
    without_retry_after: int = 0
    acknowledged: dict[str, bool] = field(default_factory=dict)
    """Instance id -> whether it was started to fail."""
    count: int = 0

    def note(self, response: httpx.Response | None, error: Exception | None = None) -> None:
        if response is None:
            self.statuses[type(error).__name__] += 1
            return
        self.statuses[str(response.status_code)] += 1
        if response.status_code == 503 and "retry-after" not in response.headers:
            self.without_retry_after += 1


async def keep_starting(client: httpx.AsyncClient, answers: Answers, stop: asyncio.Event) -> None:
    """Starts (no Idempotency-Key: an unanswered start is simply not acknowledged) and reads,
    one after the other, until ``stop``."""
    while not stop.is_set():
        answers.count += 1
        context = saga_context(answers.count)
        body = {"saga_name": SAGA, "context": context}
        try:
            response = await client.post(INSTANCES, json=body)
        except httpx.TransportError as error:
            answers.note(None, error)
            await asyncio.sleep(0.1)
            continue
        answers.note(response)
        if response.status_code == 201:
            instance_id = response.json()["id"]
            answers.acknowledged[instance_id] = bool(context["fail"])
            with contextlib.suppress(httpx.TransportError):
                answers.note(await client.get(f"{INSTANCES}/{instance_id}"))
        else:
            await asyncio.sleep(0.1)


async def test_a_postgres_restart_under_load_loses_no_acknowledged_start(
    pg_url: str, tmp_path: Path
) -> None:
    command = restart_command()
    through_haproxy, straight = Answers(), Answers()
    try:
        async with running_cluster(
            pg_url, tmp_path, NODE_IDS, SETTINGS, clean_logs=False
        ) as cluster:
            stop = asyncio.Event()
            async with contextlib.AsyncExitStack() as stack:
                client = await stack.enter_async_context(api(cluster.url))
                workers = [keep_starting(client, through_haproxy, stop) for _ in range(OUTAGE_LOAD)]
                for node in cluster.nodes.values():
                    node_client = await stack.enter_async_context(api(node.url))
                    workers.append(keep_starting(node_client, straight, stop))
                running = asyncio.gather(*workers)
                try:
                    await asyncio.sleep(3.0)
                    before = dict(through_haproxy.statuses)
                    began = time.time()
                    restart = await asyncio.to_thread(
                        subprocess.run, command, check=False, capture_output=True, timeout=120
                    )
                    restarted = time.time()
                    await until_postgres_ready()
                    await asyncio.sleep(10.0)  # the nodes reconnect under load
                finally:
                    stop.set()
                    await running
            conn = await connect(pg_url)
            try:
                await asyncio.gather(*(node.ready() for node in cluster.nodes.values()))
                acknowledged = {**through_haproxy.acknowledged, **straight.acknowledged}
                await wait_settled(conn, acknowledged, bound=120)
                rows = await instance_rows(conn)
                events = await histories(conn)
                recorded = await calls(conn)
            finally:
                await conn.close()
    finally:
        await until_postgres_ready()  # whatever happened: the machine's PostgreSQL is back

    print(  # noqa: T201
        f"\nPostgreSQL restart took {restarted - began:.1f}s ({restart.returncode}); answers "
        f"through HAProxy {dict(through_haproxy.statuses)} (before the restart {before}), "
        f"straight at the nodes {dict(straight.statuses)}"
    )
    assert restart.returncode == 0, restart.stderr
    for answers in (through_haproxy, straight):
        codes = {k for k in answers.statuses if k.isdigit()}
        assert codes <= {"200", "201", "503", "500"}, answers.statuses
        assert answers.without_retry_after == 0
    assert straight.statuses["503"] > 0, "no request met the outage: nothing was tested"
    failing = {iid for iid, fail in acknowledged.items() if fail}
    check_histories(events, rows, acknowledged, failing)
    check_steps_called(recorded, acknowledged, failing)
    assert overlapping_calls(recorded, {}) == []
    assert_no_broken_answers(through_haproxy.statuses + straight.statuses)
