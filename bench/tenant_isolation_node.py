"""The processes around ``tenant_isolation_bench.py``'s measurements: the ``saga serve`` node
(its environment, start, readiness and exit), a Redis of the bench's own that it may stop,
and the CPU counters of ``/proc``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis.asyncio as aioredis

from saga_orchestrator.settings import Settings

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


class BenchFailure(Exception):
    """The bench could not run a phase: no figure may be printed for it."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process, from ``/proc`` (NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its living children (``saga serve --workers``)."""
    return process_cpu(pid) + sum(process_cpu(child) for child in _children(pid))


def _children(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended while the scan ran
        if int(stat[1]) == pid:
            children.append(int(entry.name))
    return children


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of every CPU since boot, from ``/proc/stat`` (NaN elsewhere)."""
    try:
        line = Path("/proc/stat").read_text(encoding="ascii").split("\n", 1)[0]
    except OSError:
        return float("nan"), float("nan")
    ticks = [int(n) for n in line.split()[1:]]
    idle = ticks[3] + ticks[4]  # idle and iowait
    return float(sum(ticks[:8]) - idle), float(sum(ticks[:8]))


def cpu_stall() -> float:
    """Seconds during which some task of the machine waited for a CPU, since boot (the
    ``some`` line of ``/proc/pressure/cpu``; NaN without PSI)."""
    try:
        line = Path("/proc/pressure/cpu").read_text(encoding="ascii").split("\n", 1)[0]
    except OSError:
        return float("nan")
    return int(line.rsplit("total=", 1)[1]) / 1e6


# -- Redis --
@dataclass(slots=True, kw_only=True)
class RedisChoice:
    url: str | None
    process: asyncio.subprocess.Process | None = None
    """The bench's own redis-server, which it may stop."""

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await asyncio.wait_for(self.process.wait(), timeout=30)


@contextlib.asynccontextmanager
async def redis_for(choice: str) -> AsyncIterator[RedisChoice]:
    if choice != "private":
        yield RedisChoice(url=None if choice == "none" else choice)
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchFailure("redis-server is not installed (use --redis URL or --redis none)")
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    redis = RedisChoice(url=f"redis://127.0.0.1:{port}/0", process=process)
    try:
        await _wait_for_redis(redis.url or "")
        yield redis
    finally:
        await redis.stop()


async def _wait_for_redis(url: str) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        for _ in range(100):
            with contextlib.suppress(OSError, aioredis.RedisError):
                if await client.ping():
                    return
            await asyncio.sleep(0.1)
    finally:
        await client.aclose()
    raise BenchFailure("the private redis-server did not answer PING")


# -- the node --
@dataclass(slots=True, kw_only=True)
class Node:
    process: asyncio.subprocess.Process
    url: str
    log: Path

    def cpu_seconds(self) -> float:
        return tree_cpu(self.process.pid)


def node_env(settings: dict[str, str]) -> dict[str, str]:
    """The node's environment: these settings (``DATABASE_URL``...), none inherited."""
    # Settings of the bench's own environment must not leak into the node it measures.
    env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    path = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    return env | {"LOG_LEVEL": "warning", "PYTHONPATH": path} | settings


@contextlib.asynccontextmanager
async def node(
    env: dict[str, str], directory: Path, profile: Path | None, workers: int = 1
) -> AsyncIterator[Node]:
    port = free_port()
    serve = ["-m", "saga_orchestrator.cli", "serve", "--handlers", "tenant_isolation_handlers"]
    serve += ["--port", str(port), "--grace", "5", "--workers", str(workers)]
    if profile is not None:
        session = profile.with_suffix(".pyisession")
        session.parent.mkdir(parents=True, exist_ok=True)
        serve = ["-m", "pyinstrument", "-i", "0.001", "-r", "pyisession", "-o", str(session),
                 *serve]  # fmt: skip
    log = directory / "serve.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, *serve, cwd=ROOT, env=env, stdout=out, stderr=out
        )
    running = Node(process=process, url=f"http://127.0.0.1:{port}", log=log)
    try:
        await _wait_ready(running)
        yield running
    finally:
        if process.returncode is None:
            process.terminate()
            await asyncio.wait_for(process.wait(), timeout=120)
    if process.returncode != 0:
        raise BenchFailure(f"saga serve exited {process.returncode}: {_tail(log)}")
    _show_limiter_warnings(log)


def _show_limiter_warnings(log: Path) -> None:
    """The node's warnings about its rate limiter (Redis failing, the fallback taking over):
    they explain a run in which a tenant got more than its bucket allows."""
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    for line in [line for line in lines if "rate limits fall back" in line][:20]:
        print(f"node: {line}", file=sys.stderr)


async def _wait_ready(running: Node) -> None:
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient(trust_env=False) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(f"{running.url}/ready")).status_code == 200:
                    return
            if running.process.returncode is not None:
                break
            await asyncio.sleep(0.1)
    raise BenchFailure(f"saga serve did not become ready: {_tail(running.log)}")


def _tail(log: Path) -> str:
    return log.read_text(encoding="utf-8", errors="replace")[-3000:]


@dataclass(frozen=True, slots=True, kw_only=True)
class CpuUse:
    node: float
    """Cores the node used."""
    machine: float
    """Cores busy machine-wide."""
    stall: float
    """Share of the time some task waited for a CPU."""


class CpuMeter:
    """CPU counters from its creation to :meth:`read`."""

    def __init__(self, running: Node) -> None:
        self._node = running
        self._began = time.monotonic()
        self._node_cpu = running.cpu_seconds()
        self._busy, self._total = machine_busy()
        self._stall = cpu_stall()

    def read(self) -> CpuUse:
        wall = time.monotonic() - self._began
        busy, total = machine_busy()
        return CpuUse(
            node=(self._node.cpu_seconds() - self._node_cpu) / wall,
            machine=(busy - self._busy) / (total - self._total) * (os.cpu_count() or 1),
            stall=(cpu_stall() - self._stall) / wall,
        )
