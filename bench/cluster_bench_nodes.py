"""The nodes of ``cluster_bench.py``: ``saga serve`` processes on one database, started with
the bench's settings, waited for until ready, stopped with SIGTERM (a node that exits with an
error fails the run), and read through their API (registering the saga, ``/metrics``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from cluster_bench_handlers import DEFINITION, SAGA
from cluster_bench_report import completed_in_metrics, label
from saga_orchestrator.settings import Settings

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFINITIONS = "/api/v1/sagas/definitions"


class BenchFailure(Exception):
    """A run could not be measured: no figure may be printed for it."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# -- the nodes --
@dataclass(frozen=True, slots=True, kw_only=True)
class Setup:
    nodes: int
    cluster: bool = True

    @property
    def label(self) -> str:
        return label(self.nodes, self.cluster)


@dataclass(frozen=True, slots=True, kw_only=True)
class Node:
    node_id: str
    process: asyncio.subprocess.Process
    url: str
    log: Path


def node_env(
    database_url: str, secret: str, node_id: str, *, solo: bool, max_concurrent_sagas: int
) -> dict[str, str]:
    # Settings of the bench's own environment must not leak into the nodes it measures.
    env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    return env | {
        "DATABASE_URL": database_url,
        "CLUSTER_ENABLED": "false" if solo else "true",
        "NODE_ID": node_id,
        "JWT_SECRET": secret,
        "RATE_LIMIT_REQUESTS": "1000000",
        "RATE_LIMIT_STARTS": "1000000",
        "MAX_CONCURRENT_SAGAS": str(max_concurrent_sagas),
        "LOG_LEVEL": "warning",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
    }


async def start_node(env: dict[str, str], directory: Path) -> Node:
    port = free_port()
    node_id = env["NODE_ID"]
    serve = ["-m", "saga_orchestrator.cli", "serve", "--handlers", "cluster_bench_handlers"]
    serve += ["--port", str(port), "--grace", "5"]
    log = directory / f"{node_id}.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, *serve, cwd=ROOT, env=env, stdout=out, stderr=out
        )
    return Node(node_id=node_id, process=process, url=f"http://127.0.0.1:{port}", log=log)


async def wait_ready(node: Node, client: httpx.AsyncClient) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if (await client.get(f"{node.url}/ready")).status_code == 200:
                return
        if node.process.returncode is not None:
            break
        await asyncio.sleep(0.1)
    raise BenchFailure(f"{node.node_id} did not become ready: {tail(node.log)}")


def tail(log: Path) -> str:
    return log.read_text(encoding="utf-8", errors="replace")[-2000:]


@contextlib.asynccontextmanager
async def cluster(
    setup: Setup, database_url: str, secret: str, directory: Path, max_concurrent_sagas: int
) -> AsyncIterator[list[Node]]:
    """The setup's nodes on one database, all ready; stopped with SIGTERM afterwards."""
    nodes: list[Node] = []
    try:
        for i in range(1, setup.nodes + 1):
            node_id = f"cluster-bench-{i}"
            env = node_env(
                database_url, secret, node_id,
                solo=not setup.cluster, max_concurrent_sagas=max_concurrent_sagas,
            )  # fmt: skip
            nodes.append(await start_node(env, directory))
        async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
            await asyncio.gather(*(wait_ready(node, client) for node in nodes))
        yield nodes
    finally:
        for node in nodes:
            if node.process.returncode is None:
                node.process.terminate()
        for node in nodes:
            await asyncio.wait_for(node.process.wait(), timeout=60)
    bad = [n for n in nodes if n.process.returncode != 0]
    if bad:
        raise BenchFailure(
            f"{bad[0].node_id} exited {bad[0].process.returncode}: {tail(bad[0].log)}"
        )


async def register(node: Node, token: str) -> None:
    async with httpx.AsyncClient(trust_env=False, timeout=30) as client:
        answer = await client.post(
            node.url + DEFINITIONS, json=DEFINITION, headers={"Authorization": f"Bearer {token}"}
        )
    if answer.status_code not in (200, 201):
        raise BenchFailure(f"registering the saga: {answer.status_code} {answer.text[:300]}")


async def completed_by_node(nodes: list[Node], token: str) -> dict[str, int]:
    """Sagas each node saw complete, from its ``/metrics`` (-1: the scrape failed)."""
    found: dict[str, int] = {}
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(trust_env=False, timeout=10, headers=headers) as client:
        for node in nodes:
            try:
                answer = await client.get(f"{node.url}/metrics")
                answer.raise_for_status()
            except httpx.HTTPError:
                found[node.node_id] = -1
                continue
            found[node.node_id] = completed_in_metrics(answer.text, SAGA)
    return found
