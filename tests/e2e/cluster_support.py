"""Shared machinery of the cluster tests (``tests/e2e/test_cluster*.py``): real ``saga serve``
nodes with ``CLUSTER_ENABLED=true`` on one PostgreSQL database, HAProxy in front of them with
the shipped ``deploy/haproxy/haproxy.cfg``, a load that starts sagas through it, and the checks
that read the store and the calls table of :mod:`tests.e2e.cluster_app` afterwards.

Waits are bounds that keep a broken run from hanging, never timed assertions: the machine is
small and shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import asyncpg
import httpx
import orjson
import pytest

from tests.e2e.cluster_app import CALLS_DDL, CALLS_TABLE, DEFINITION, FAILING_STEP, SAGA, STEPS
from tests.e2e.credentials import AUTH, SERVER_ENV

ROOT: Final = Path(__file__).resolve().parents[2]
HANDLERS: Final = "tests.e2e.cluster_app"
HAPROXY_CONFIG: Final = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
INSTANCES: Final = "/api/v1/sagas/instances"
TERMINAL: Final = ("completed", "compensated", "cancelled", "timed_out")
UNFINISHED: Final = ("running", "compensating")
NODE_APPLICATION: Final = "saga-orchestrator"
"""The ``application_name`` of every node's database sessions."""
TEST_APPLICATION: Final = "e2e-test"
UP_WAIT: Final = 60.0
"""Seconds a node or HAProxy gets to come up."""


def on_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require_haproxy() -> str:
    """The haproxy binary; without it the test is skipped, or fails on CI."""
    found = shutil.which("haproxy")
    if found is None:
        reason = "haproxy is not installed (apt-get install haproxy)"
        if on_ci():
            pytest.fail(f"{reason}; CI=true requires it", pytrace=False)
        pytest.skip(reason)
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def client_ports(pid: int) -> set[int]:
    """Local ports of the TCP connections process ``pid`` holds to PostgreSQL (port 5432):
    ``pg_stat_activity.client_port`` of its database sessions."""
    inodes: set[str] = set()
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
    ports: set[int] = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                local, remote, inode = fields[1], fields[2], fields[9]
                if inode in inodes and int(remote.rsplit(":", 1)[1], 16) == 5432:
                    ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


# -- processes -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSettings:
    lease_ttl: float = 3.0
    poll: float = 0.5
    max_takeovers: int = 100
    """High: these tests orphan instances on purpose and must never quarantine one."""
    grace: float = 5.0
    env: Mapping[str, str] = field(default_factory=dict)


class Node:
    """One ``saga serve`` process of the cluster."""

    def __init__(
        self, node_id: str, database_url: str, calls_url: str, log_dir: Path, settings: NodeSettings
    ) -> None:
        self.node_id = node_id
        self.database_url = database_url
        self.calls_url = calls_url
        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.address = f"127.0.0.1:{self.port}"
        self.log_dir = log_dir
        self.runs = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.log_dir / f"{self.node_id}.{self.runs}.log"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        self.runs += 1
        env = {
            **os.environ,
            **SERVER_ENV,
            "DATABASE_URL": self.database_url,
            "E2E_CALLS_URL": self.calls_url,
            "CLUSTER_ENABLED": "true",
            "NODE_ID": self.node_id,
            "LEASE_TTL": str(self.settings.lease_ttl),
            "CLAIM_POLL_INTERVAL": str(self.settings.poll),
            "MAX_TAKEOVERS": str(self.settings.max_takeovers),
            # The handlers' module is found from the repository's root; a PYTHONPATH the tests
            # run with (a worktree's src ahead of an installed copy) still applies to the node.
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            **self.settings.env,
        }
        command = [sys.executable, "-m", "saga_orchestrator.cli", "serve", "--handlers", HANDLERS]
        args = ["--port", str(self.port), "--grace", str(self.settings.grace)]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [*command, *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )

    async def ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + UP_WAIT
        async with httpx.AsyncClient(base_url=self.url, timeout=5) as client:
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/ready")).status_code == 200:
                        return
                assert self.process.poll() is None, f"{self.node_id} exited:\n{self.output()}"
                assert time.monotonic() < deadline, f"{self.node_id} never came up"
                await asyncio.sleep(0.1)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def send(self, signum: signal.Signals) -> float:
        """Send ``signum``; returns the time it was sent."""
        at = time.time()
        os.kill(self.pid, signum)
        return at

    async def kill(self) -> float:
        """SIGKILL and reap; returns the time of the kill."""
        assert self.process is not None
        at = time.time()
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        await self.exited(10)
        return at

    async def exited(self, bound: float) -> int:
        assert self.process is not None
        deadline = time.monotonic() + bound
        while (code := self.process.poll()) is None:
            assert time.monotonic() < deadline, f"{self.node_id} did not exit in {bound}s"
            await asyncio.sleep(0.05)
        return code

    def output(self, tail: int | None = 8000) -> str:
        """The logs of its runs, each cut to its last ``tail`` characters (None: whole)."""
        texts = [
            (self.log_dir / f"{self.node_id}.{run}.log").read_text(errors="replace")
            for run in range(1, self.runs + 1)
        ]
        return "\n".join(text if tail is None else text[-tail:] for text in texts)

    async def close(self) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)  # if the test left it stopped
            await self.kill()


class HAProxy:
    """HAProxy running the shipped configuration, its addresses given by the environment."""

    def __init__(self, nodes: Sequence[Node], log_dir: Path) -> None:
        assert len(nodes) <= 3, "the shipped configuration names three nodes"
        self.binary = require_haproxy()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log_dir / "haproxy.log"
        # A node missing from the cluster is a closed port: HAProxy keeps it down.
        addresses = [node.address for node in nodes] + [f"127.0.0.1:{free_port()}"] * 3
        self.env = {
            **os.environ,
            "SAGA_LISTEN": f"127.0.0.1:{self.port}",
            "SAGA_CHECK_INTER": "500ms",
            **{f"SAGA_NODE{n}": addresses[n - 1] for n in (1, 2, 3)},
        }
        self.process: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        command = [self.binary, "-db", "-f", str(HAPROXY_CONFIG)]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                command, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )

    async def start(self) -> None:
        self.spawn()
        assert self.process is not None
        deadline = time.monotonic() + UP_WAIT
        async with httpx.AsyncClient(base_url=self.url, timeout=5) as client:
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/ready")).status_code == 200:
                        return
                assert self.process.poll() is None, self.log.read_text(errors="replace")
                assert time.monotonic() < deadline, "haproxy never routed to a node"
                await asyncio.sleep(0.1)

    async def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            await asyncio.to_thread(self.process.wait, 10)


class Cluster:
    def __init__(
        self,
        database_url: str,
        log_dir: Path,
        node_ids: Sequence[str],
        settings: NodeSettings,
        urls: Mapping[str, str] | None = None,
    ) -> None:
        self.database_url = database_url
        self.nodes = {
            node_id: Node(
                node_id, (urls or {}).get(node_id, database_url), database_url, log_dir, settings
            )
            for node_id in node_ids
        }
        self.haproxy: HAProxy | None = None
        self.log_dir = log_dir

    @property
    def url(self) -> str:
        """Where clients go: HAProxy if it runs, else the first node."""
        if self.haproxy is not None:
            return self.haproxy.url
        return next(iter(self.nodes.values())).url

    def __getitem__(self, node_id: str) -> Node:
        return self.nodes[node_id]

    async def start(self, *, haproxy: bool) -> None:
        # One at a time, so the first one leads the chores.
        for node in self.nodes.values():
            node.start()
            await node.ready()
        if haproxy:
            self.haproxy = HAProxy(list(self.nodes.values()), self.log_dir)
            await self.haproxy.start()

    async def close(self) -> None:
        for node in self.nodes.values():
            await node.close()
        if self.haproxy is not None:
            await self.haproxy.close()

    def tracebacks(self) -> list[str]:
        """Nodes whose log shows a task dying with a traceback."""
        return [n.node_id for n in self.nodes.values() if "Traceback" in n.output(tail=None)]


@asynccontextmanager
async def running_cluster(
    database_url: str,
    log_dir: Path,
    node_ids: Sequence[str] = ("n1", "n2", "n3"),
    settings: NodeSettings | None = None,
    *,
    haproxy: bool = True,
    urls: Mapping[str, str] | None = None,
    clean_logs: bool = True,
) -> AsyncIterator[Cluster]:
    """The nodes (and HAProxy), with the calls table and the saga definition in place.
    ``urls`` gives a node a database URL of its own (another role); the calls are recorded
    through ``database_url`` whatever happens to a node's role. With ``clean_logs``, a node
    whose log shows a traceback fails the test (when the block ended normally)."""
    if haproxy:
        require_haproxy()
    conn = await connect(database_url)
    try:
        await conn.execute(CALLS_DDL)
    finally:
        await conn.close()
    cluster = Cluster(database_url, log_dir, node_ids, settings or NodeSettings(), urls)
    try:
        await cluster.start(haproxy=haproxy)
        async with api(cluster.url) as client:
            response = await client.post("/api/v1/sagas/definitions", json=DEFINITION)
            assert response.status_code in (200, 201), response.text
        yield cluster
        if clean_logs:
            assert cluster.tracebacks() == [], "a node logged a traceback"
    except BaseException:
        for node in cluster.nodes.values():
            sys.stderr.write(f"---- {node.node_id} ----\n{node.output()[-4000:]}\n")
        raise
    finally:
        await cluster.close()


@asynccontextmanager
async def api(url: str, connections: int = 100) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits, headers=AUTH) as client:
        yield client


async def connect(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(url, server_settings={"application_name": TEST_APPLICATION})


async def leader_of(client: httpx.AsyncClient) -> tuple[str, int]:
    """The leader (and its epoch) as ``GET /api/v1/cluster/nodes`` tells it."""
    response = await client.get("/api/v1/cluster/nodes")
    assert response.status_code == 200, response.text
    body = response.json()
    leaders = [node["id"] for node in body["items"] if node["leader"]]
    assert len(leaders) == 1, body
    return leaders[0], int(body["leader_epoch"])


# -- load ----------------------------------------------------------------------------------------


def assert_no_broken_answers(statuses: Mapping[str, int]) -> None:
    """No request was answered 500, or dropped without an answer, while the database was only
    unreachable for a moment (a terminated session, a restart): that is a 503."""
    broken = {k: n for k, n in statuses.items() if k == "500" or not k.isdigit()}
    assert not broken, f"broken answers {broken} among {dict(statuses)}"


def saga_context(index: int, *, fail_every: int = 5, **extra: Any) -> dict[str, Any]:
    """Every ``fail_every``-th saga's ``ship`` is rejected, so it compensates."""
    return {"index": index, "fail": fail_every > 0 and index % fail_every == 0, **extra}


@dataclass
class Load:
    """Starts sagas through the API; each start retried with its Idempotency-Key until it is
    acknowledged (200/201), so every saga index ends up with exactly one instance."""

    client: httpx.AsyncClient
    run: str
    context: Callable[[int], dict[str, Any]]
    acknowledged: dict[int, str] = field(default_factory=dict)
    statuses: Counter[str] = field(default_factory=Counter)
    failing: set[str] = field(default_factory=set)
    progress: asyncio.Condition = field(default_factory=asyncio.Condition)
    retried: frozenset[str] = frozenset({"409", "502", "503", "504"})
    """Answers after which a start is tried again (with its key); any other fails the test."""

    async def start_all(self, count: int, concurrency: int = 50, bound: float = 120.0) -> None:
        gate = asyncio.Semaphore(concurrency)

        async def one(index: int) -> None:
            async with gate:
                await self.start_one(index, bound)

        await asyncio.gather(*(one(index) for index in range(count)))

    async def start_one(self, index: int, bound: float = 120.0) -> str:
        context = self.context(index)
        headers = {"Idempotency-Key": f"{self.run}-{index}"}
        body = {"saga_name": SAGA, "context": context}
        deadline = time.monotonic() + bound
        while True:
            try:
                response = await self.client.post(INSTANCES, json=body, headers=headers)
                status = str(response.status_code)
            except httpx.TransportError as error:
                response, status = None, type(error).__name__
            self.statuses[status] += 1
            if response is not None and response.status_code in (200, 201):
                break
            assert status in self.retried or response is None, (
                f"start {index}: {status} {response.text if response else ''}"
            )
            assert time.monotonic() < deadline, f"start {index} never acknowledged"
            await asyncio.sleep(0.2)
        instance_id: str = response.json()["id"]
        self.acknowledged[index] = instance_id
        if context.get("fail"):
            self.failing.add(instance_id)
        async with self.progress:
            self.progress.notify_all()
        return instance_id

    async def reached(self, count: int) -> None:
        async with self.progress:
            await self.progress.wait_for(lambda: len(self.acknowledged) >= count)


# -- reading the store ---------------------------------------------------------------------------


async def owned_unfinished(conn: asyncpg.Connection, node_id: str) -> dict[str, int]:
    """Unfinished instances ``node_id`` holds the lease of now, with their epoch."""
    rows = await conn.fetch(
        "SELECT instance_id, lease_epoch FROM instances"
        " WHERE owner_id = $1 AND status = ANY($2::text[])",
        node_id,
        list(UNFINISHED),
    )
    return {row[0]: int(row[1]) for row in rows}


async def wait_settled(conn: asyncpg.Connection, ids: Iterable[str], bound: float) -> float:
    """Until every instance of the database is terminal and ``ids`` all exist; returns when
    (``time.time()``)."""
    wanted = list(ids)
    deadline = time.monotonic() + bound
    while True:
        row = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE status <> ALL($2::text[])),"
            " count(*) FILTER (WHERE instance_id = ANY($1::text[]))"
            " FROM instances",
            wanted,
            list(TERMINAL),
        )
        assert row is not None
        unsettled, present = int(row[0]), int(row[1])
        if unsettled == 0 and present == len(wanted):
            return time.time()
        assert time.monotonic() < deadline, (
            f"after {bound}s: {unsettled} instances not terminal, "
            f"{len(wanted) - present} acknowledged starts missing"
        )
        await asyncio.sleep(0.25)


@dataclass(frozen=True, slots=True)
class StoredEvent:
    seq: int
    type: str
    data: dict[str, Any]
    recorded_at: float


async def histories(conn: asyncpg.Connection) -> dict[str, list[StoredEvent]]:
    rows = await conn.fetch(
        "SELECT instance_id, seq, type, data::text, extract(epoch FROM recorded_at)"
        " FROM events ORDER BY instance_id, seq"
    )
    found: dict[str, list[StoredEvent]] = defaultdict(list)
    for row in rows:
        found[row[0]].append(StoredEvent(row[1], row[2], orjson.loads(row[3]), float(row[4])))
    return found


@dataclass(frozen=True, slots=True)
class InstanceRow:
    status: str
    last_seq: int
    owner_id: str | None
    lease_epoch: int
    takeovers: int


async def instance_rows(conn: asyncpg.Connection) -> dict[str, InstanceRow]:
    rows = await conn.fetch(
        "SELECT instance_id, status, last_seq, owner_id, lease_epoch, takeovers FROM instances"
    )
    return {row[0]: InstanceRow(row[1], row[2], row[3], row[4], row[5]) for row in rows}


def check_histories(
    events: Mapping[str, list[StoredEvent]],
    rows: Mapping[str, InstanceRow],
    acknowledged: Iterable[str],
    failing: set[str],
) -> None:
    """Every acknowledged start ended as its input says, with a gap-free history in which
    each succeeded step was compensated exactly once (if the saga failed) and nothing else."""
    problems: list[str] = []
    for instance_id in acknowledged:
        row = rows.get(instance_id)
        if row is None:
            problems.append(f"{instance_id}: acknowledged but not stored")
            continue
        history = events[instance_id]
        expected = "compensated" if instance_id in failing else "completed"
        if row.status != expected:
            problems.append(f"{instance_id}: {row.status}, expected {expected}")
        if [e.seq for e in history] != list(range(1, len(history) + 1)):
            problems.append(f"{instance_id}: sequence has gaps {[e.seq for e in history]}")
        if row.last_seq != len(history):
            problems.append(f"{instance_id}: last_seq {row.last_seq} != {len(history)} events")
        undone = Counter(
            e.data["node"]
            for e in history
            if e.type == "AttemptSucceeded" and e.data["phase"] == "compensation"
        )
        wanted = Counter(s for s in STEPS if s != FAILING_STEP) if expected == "compensated" else {}
        if undone != wanted:
            problems.append(f"{instance_id}: compensations {dict(undone)}, expected {wanted}")
    assert not problems, f"{len(problems)} bad instances, e.g. {problems[:10]}"


# -- reading the calls table ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Call:
    call_id: str
    node_id: str
    pid: int
    instance_id: str
    step: str
    phase: str
    attempt: int
    key: str
    started_at: float
    finished_at: float | None
    outcome: str | None


async def calls(conn: asyncpg.Connection) -> list[Call]:
    rows = await conn.fetch(
        "SELECT call_id::text, node_id, pid, instance_id, step, phase, attempt, idempotency_key,"
        f" started_at, finished_at, outcome FROM {CALLS_TABLE}"
        " WHERE outcome IS DISTINCT FROM 'abandoned'"  # gave up before doing anything
        " ORDER BY started_at"
    )
    return [Call(*row.values()) for row in rows]


def check_steps_called(
    recorded: Sequence[Call], acknowledged: Iterable[str], failing: set[str]
) -> None:
    """Each step's action was called at least once per saga, and compensations only of the
    steps that succeeded, only in sagas that failed."""
    actions: dict[str, set[str]] = defaultdict(set)
    undos: dict[str, set[str]] = defaultdict(set)
    for call in recorded:
        (actions if call.phase == "action" else undos)[call.instance_id].add(call.step)
    problems = []
    for instance_id in acknowledged:
        if actions[instance_id] != set(STEPS):
            problems.append(f"{instance_id}: actions called {sorted(actions[instance_id])}")
        wanted = {s for s in STEPS if s != FAILING_STEP} if instance_id in failing else set()
        if undos[instance_id] != wanted:
            problems.append(f"{instance_id}: compensations called {sorted(undos[instance_id])}")
    assert not problems, f"{len(problems)} bad instances, e.g. {problems[:10]}"


def overlapping_calls(
    recorded: Sequence[Call], killed_at: Mapping[int, float]
) -> list[tuple[Call, Call]]:
    """Pairs of calls of one idempotency key by two processes whose [start, end) intersect.
    A call without an end ends when its process was SIGKILLed (else it never ended)."""

    def end(call: Call) -> float:
        if call.finished_at is not None:
            return call.finished_at
        return killed_at.get(call.pid, float("inf"))

    by_key: dict[str, list[Call]] = defaultdict(list)
    for call in recorded:
        by_key[call.key].append(call)
    found = []
    for same_key in by_key.values():
        for i, first in enumerate(same_key):
            for second in same_key[i + 1 :]:
                if first.pid == second.pid:
                    continue
                if first.started_at < end(second) and second.started_at < end(first):
                    found.append((first, second))
    return found


# -- take-over ------------------------------------------------------------------------------------


async def first_events_after(
    conn: asyncpg.Connection, ids: Iterable[str], after: float
) -> dict[str, float]:
    """For each instance, when its first event after ``after`` was recorded."""
    rows = await conn.fetch(
        "SELECT instance_id, extract(epoch FROM min(recorded_at)) FROM events"
        " WHERE instance_id = ANY($1::text[]) AND recorded_at > to_timestamp($2)"
        " GROUP BY instance_id",
        list(ids),
        after,
    )
    return {row[0]: float(row[1]) for row in rows}


# -- the leader lease ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LeaseSeen:
    holder: str
    epoch: int
    expires_at: float
    db_now: float


LEADER_TTL: Final = 10.0
"""Seconds of the chores' lease (``ClusterMember.ttl``: not set by ``LEASE_TTL``)."""


class LeaderWatch:
    """Polls the chores' lease row every 50 ms and keeps every distinct state seen; and, for
    :meth:`check`, a trigger of the test's own logs every write to that row, so that a state
    that lasted less than a poll (a release taken over at once) is not missed."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.seen: list[LeaseSeen] = []
        self.written: list[LeaseSeen] = []
        """Every write to the row from the watch's start, in order (``db_now``: its time)."""
        self.errors = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LeaderWatch:
        conn = await connect(self.url)
        try:
            await conn.execute(self.LOG_WRITES)
        finally:
            await conn.close()
        self._task = asyncio.create_task(self._poll())
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        conn = await connect(self.url)
        try:
            rows = await conn.fetch(
                "SELECT holder, epoch, expires_at, at FROM test_leader_writes ORDER BY id"
            )
        finally:
            await conn.close()
        self.written = [LeaseSeen(r[0], int(r[1]), float(r[2]), float(r[3])) for r in rows]

    # The function runs as its owner (the test's login), whichever role the node writes as.
    LOG_WRITES: Final = """
    CREATE TABLE IF NOT EXISTS test_leader_writes (
        id bigserial PRIMARY KEY, holder text, epoch bigint, expires_at float8, at float8);
    CREATE OR REPLACE FUNCTION test_log_leader_write() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER AS $$
    BEGIN
        INSERT INTO test_leader_writes (holder, epoch, expires_at, at)
        VALUES (NEW.holder, NEW.epoch, extract(epoch FROM NEW.expires_at),
                extract(epoch FROM clock_timestamp()));
        RETURN NEW;
    END $$;
    DROP TRIGGER IF EXISTS test_leader_writes ON leader_leases;
    CREATE TRIGGER test_leader_writes AFTER INSERT OR UPDATE ON leader_leases
    FOR EACH ROW WHEN (NEW.name = 'chores') EXECUTE FUNCTION test_log_leader_write();
    """

    async def _poll(self) -> None:
        conn: asyncpg.Connection | None = None
        try:
            while True:
                try:
                    if conn is None or conn.is_closed():
                        conn = await connect(self.url)
                    self._note(await conn.fetchrow(self.QUERY))
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    self.errors += 1
                    conn = None
                await asyncio.sleep(0.05)
        finally:
            if conn is not None and not conn.is_closed():
                conn.terminate()

    QUERY: Final = (
        "SELECT holder, epoch, extract(epoch FROM expires_at), extract(epoch FROM now())"
        " FROM leader_leases WHERE name = 'chores'"
    )

    def _note(self, row: asyncpg.Record | None) -> None:
        if row is None:
            return
        seen = LeaseSeen(row[0], int(row[1]), float(row[2]), float(row[3]))
        last = self.seen[-1] if self.seen else None
        if last is None or (last.holder, last.epoch, last.expires_at) != (
            seen.holder,
            seen.epoch,
            seen.expires_at,
        ):
            self.seen.append(seen)

    def epochs(self) -> list[tuple[int, str]]:
        """(epoch, holder) in the order they were seen, without repeats."""
        found: list[tuple[int, str]] = []
        for seen in self.seen:
            if not found or found[-1] != (seen.epoch, seen.holder):
                found.append((seen.epoch, seen.holder))
        return found

    def check(self) -> list[float]:
        """One holder per epoch, epochs strictly rising, and each new epoch taken only after
        the previous one's lease (its expiry last seen) ran out. Returns the hand-over gaps.

        A take-over writes ``expires_at = now() + ttl``, and no renewal follows within one
        poll, so the first expiry seen of an epoch dates its taking (database clock)."""
        epochs = self.epochs()
        assert epochs, "the leader lease was never seen"
        numbers = [epoch for epoch, _ in epochs]
        assert numbers == sorted(set(numbers)), f"epochs not strictly rising: {epochs}"
        # The logged writes of an epoch, where there are any, say what happened between two
        # polls (a release taken over at once); polls cover an epoch written only before the
        # watch began.
        known = {*epochs, *((s.epoch, s.holder) for s in self.written)}
        assert len({epoch for epoch, _ in known}) == len(known), f"two holders: {known}"

        def states(epoch: int) -> list[LeaseSeen]:
            written = [s for s in self.written if s.epoch == epoch]
            return written or [s for s in self.seen if s.epoch == epoch]

        gaps = []
        for before, after in itertools.pairwise(sorted(known)):
            # The last state: renewals push the expiry on, a release brings it back.
            last_expiry = states(before[0])[-1].expires_at
            taken = states(after[0])[0].expires_at - LEADER_TTL
            assert taken >= last_expiry, (
                f"epoch {after} taken at {taken:.3f}, before epoch {before}'s lease ran out "
                f"at {last_expiry:.3f}"
            )
            gaps.append(taken - last_expiry)
        return gaps
