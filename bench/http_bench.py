"""Starting sagas over HTTP: ``saga serve`` on embedded SQLite, loaded by a real HTTP load
generator at fixed rates, beside ``Orchestrator.start`` called directly in-process.

    python bench/http_bench.py [--rates 250,500,1000] [--duration 10] [--connections 64]
                               [--steps 3] [--direct 5000] [--loadgen auto|wrk|httpx]

The server is a subprocess (``saga serve --handlers http_bench``: this module's no-op
handlers) on a SQLite file in a temporary directory. The load comes from another process:
``wrk`` when installed (``apt-get install wrk``), paced by a Lua script to an open-loop
schedule (each request has a send time ``t0 + i / rate``; a connection that falls behind sends
at once, so queueing shows up as latency, up to ``--connections`` requests in flight);
otherwise an async httpx generator in a subprocess with the same schedule. Each rate runs for
``--duration`` seconds; between rates the server drains (no instance left ``running``).

Reported per rate: starts/s achieved (201 responses / wall time), p50 / p99 latency of the
``POST /api/v1/sagas/instances`` requests, errors (non-201, timeouts), and the node's CPU per
start (from ``/proc``, until the rate's backlog has run: the HTTP layer and the saga's own
steps; on a shared machine a steadier comparison than the rates).

The node authenticates every request (a JWT key of the run, an admin token) and rate-limits
it in memory, with limits far above the load: their cost is measured, never a refusal.

The comparison row calls ``Orchestrator.start`` directly (same saga, same SQLite,
``--connections`` concurrent callers, closed loop) and reports its starts/s and latency. In
both cases the engine also runs the started sagas (``--steps`` no-op steps each) in the same
process, as a node does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from saga_orchestrator.orchestrator import Orchestrator
from saga_orchestrator.security.tokens import Role, generate_secret, mint_token
from saga_orchestrator.transports.handlers import StepContext, handler

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
START_PATH = "/api/v1/sagas/instances"
SAGA = "http-bench"


@handler("httpbench.noop")
async def noop(step: StepContext) -> None:
    """A step that does nothing: what is measured is the orchestrator."""


def definition(steps: int) -> dict[str, Any]:
    return {
        "name": SAGA,
        "version": "1.0.0",
        "steps": [{"name": f"s{n}", "action": "httpbench.noop"} for n in range(steps)],
    }


BODY = json.dumps({"saga_name": SAGA, "context": {"order": 1}})

# wrk's LuaJIT has an FFI: gettimeofday gives the sub-millisecond clock the schedule needs.
WRK_SCRIPT = """
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_usec; } timeval;
int gettimeofday(timeval *tv, void *tz);
]]
local tv = ffi.new("timeval")
local function now_ms()
  ffi.C.gettimeofday(tv, nil)
  return tonumber(tv.tv_sec) * 1000 + tonumber(tv.tv_usec) / 1000
end
wrk.method = "POST"
wrk.body = [[%(body)s]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(token)s"
local interval = %(interval_ms)f
local next_send = nil
function delay()
  local now = now_ms()
  if next_send == nil then next_send = now end
  local wait = next_send - now
  next_send = next_send + interval
  if wait > 0 then return wait end
  return 0
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %%d, "duration_us": %%d, "connect": %%d, "read": %%d, ' ..
    '"write": %%d, "status": %%d, "timeout": %%d, "p50_us": %%d, "p99_us": %%d, ' ..
    '"max_us": %%d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


@dataclass(slots=True)
class Row:
    mode: str
    target: float | None
    starts: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    cpu_ms: float = float("nan")
    """CPU of the node per start (ms), from the rate's first request until its backlog ran:
    the HTTP layer plus running the saga; less disturbed by a busy machine than starts/s."""

    @property
    def rate(self) -> float:
        return self.starts / self.seconds if self.seconds else 0.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# -- the server --
class Server:
    def __init__(self, directory: Path, synchronous: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = directory / "serve.log"
        secret = generate_secret()
        # Every request is authenticated and rate-limited, as in production; the limits are
        # set far above the load so that the limiter's cost is measured, never its refusals.
        self.token = mint_token(
            secret, subject="bench", tenant_id="default", roles=[Role.ADMIN], ttl=3600
        )
        self.headers = {"Authorization": f"Bearer {self.token}"}
        env = {
            **os.environ,
            "DATABASE_URL": f"sqlite:///{directory / 'http-bench.db'}?synchronous={synchronous}",
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
            "LOG_LEVEL": "warning",
            "JWT_SECRET": secret,
            "RATE_LIMIT_REQUESTS": "1000000",
            "RATE_LIMIT_STARTS": "1000000",
        }
        command = [sys.executable, "-m", "saga_orchestrator.cli", "serve"]
        args = ["--handlers", "http_bench", "--port", str(self.port)]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [*command, *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.url}/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"saga serve did not come up:\n{self.log.read_text()}")
            time.sleep(0.1)

    def drain(self, timeout: float = 120) -> None:
        """Wait until no instance is still running (the previous rate's backlog)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            page = httpx.get(
                f"{self.url}{START_PATH}",
                params={"status": "running", "limit": 1},
                headers=self.headers,
            ).json()
            if not page["items"]:
                return
            time.sleep(0.2)
        raise SystemExit("the server did not drain its backlog")

    def load(self, rate: float, duration: float, connections: int, script: Path | None) -> Row:
        """One rate from a load generator (wrk with its Lua ``script``, else httpx), and the
        node's CPU until the backlog it left has run."""
        self.drain()
        cpu = self.cpu_seconds()
        if script is not None:
            row = run_wrk(self.url, rate, duration, connections, script=script, token=self.token)
        else:
            row = run_httpx(self.url, rate, duration, connections, self.token)
        self.drain()
        row.cpu_ms = (self.cpu_seconds() - cpu) * 1000 / max(1, row.starts)
        return row

    def cpu_seconds(self) -> float:
        """User + system CPU of the node so far, from ``/proc`` (NaN elsewhere)."""
        try:
            stat = Path(f"/proc/{self.process.pid}/stat").read_text(encoding="ascii")
        except OSError:
            return float("nan")
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> int:
        self.process.terminate()
        return self.process.wait(timeout=60)


# -- load generators (separate processes) --
def run_wrk(
    url: str, rate: float, duration: float, connections: int, *, script: Path, token: str
) -> Row:
    script.write_text(WRK_SCRIPT % {"body": BODY, "interval_ms": 1000.0 / rate, "token": token})
    command = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration:g}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url + START_PATH,
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    line = next(x for x in result.stdout.splitlines() if x.startswith("WRK_JSON "))
    stats = json.loads(line[len("WRK_JSON ") :])
    errors = sum(stats[k] for k in ("connect", "read", "write", "status", "timeout"))
    return Row(
        mode="http (wrk)",
        target=rate,
        starts=stats["requests"] - stats["status"],
        errors=errors,
        seconds=stats["duration_us"] / 1e6,
        p50_ms=stats["p50_us"] / 1000,
        p99_ms=stats["p99_us"] / 1000,
    )


async def httpx_load(
    url: str, rate: float, duration: float, connections: int, token: str
) -> dict[str, Any]:
    """Open loop: request ``i`` is due at ``t0 + i / rate``; at most ``connections`` in flight."""
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=10) as client:
        slots = asyncio.Semaphore(connections)

        async def one(due: float) -> None:
            nonlocal errors
            async with slots:
                try:
                    response = await client.post(START_PATH, content=BODY, headers=headers)
                except httpx.HTTPError:
                    errors += 1
                    return
            if response.status_code == 201:
                latencies.append(time.perf_counter() - due)  # from the scheduled send time
            else:
                errors += 1

        loop_start = time.perf_counter()
        total = int(rate * duration)
        tasks = []
        for i in range(total):
            due = loop_start + i / rate
            pause = due - time.perf_counter()
            if pause > 0:
                await asyncio.sleep(pause)
            tasks.append(asyncio.create_task(one(due)))
        await asyncio.gather(*tasks)
        seconds = time.perf_counter() - loop_start
    return {
        "starts": len(latencies),
        "errors": errors,
        "seconds": seconds,
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
    }


def run_httpx(url: str, rate: float, duration: float, connections: int, token: str) -> Row:
    command = [sys.executable, str(Path(__file__).resolve()), "--loadgen-child", url]
    command += ["--rate", str(rate), "--duration", str(duration)]
    command += ["--connections", str(connections), "--token", token]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    return Row(mode="http (httpx)", target=rate, **stats)


# -- the engine, called directly --
async def direct(
    count: int, concurrency: int, steps: int, directory: Path, synchronous: str
) -> Row:
    url = f"sqlite:///{directory / 'direct.db'}?synchronous={synchronous}"
    latencies: list[float] = []
    started: list[str] = []
    errors = 0
    async with Orchestrator(url, handlers=[noop], max_concurrent_sagas=1000) as saga:
        await saga.register(definition(steps))
        numbers = iter(range(count))

        async def client() -> None:
            nonlocal errors
            for number in numbers:
                began = time.perf_counter()
                try:
                    started.append((await saga.start(SAGA, {"order": number})).instance_id)
                except Exception:  # counted, reported as errors
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - began)

        began = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        seconds = time.perf_counter() - began
        for instance_id in started:  # let the engine finish before closing it
            await saga.wait(instance_id, timeout=120)
    return Row(
        mode=f"direct ({concurrency} callers)",
        target=None,
        starts=len(latencies),
        errors=errors,
        seconds=seconds,
        p50_ms=percentile(latencies, 0.5) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
    )


def table(rows: list[Row]) -> str:
    lines = [
        f"{'mode':<22} {'target/s':>9} {'starts/s':>9} {'starts':>7} {'errors':>6} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'CPU ms/start':>12}"
    ]
    for row in rows:
        target = f"{row.target:g}" if row.target is not None else "max"
        lines.append(
            f"{row.mode:<22} {target:>9} {row.rate:>9.0f} {row.starts:>7} {row.errors:>6} "
            f"{row.p50_ms:>8.1f} {row.p99_ms:>8.1f} {row.cpu_ms:>12.2f}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="250,500,1000", help="target starts/s, comma-separated")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per rate")
    parser.add_argument("--connections", type=int, default=64, help="max requests in flight")
    parser.add_argument("--steps", type=int, default=3, help="no-op steps per saga")
    parser.add_argument("--direct", type=int, default=5000, help="direct starts (0: skip)")
    parser.add_argument("--loadgen", choices=["auto", "wrk", "httpx"], default="auto")
    parser.add_argument(
        "--synchronous",
        choices=["FULL", "NORMAL", "OFF"],
        default="FULL",
        help="SQLite synchronous mode (the store's default is FULL: durable on power loss)",
    )
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--loadgen-child", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--token", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.loadgen_child:  # the httpx load generator's own process
        stats = asyncio.run(
            httpx_load(args.loadgen_child, args.rate, args.duration, args.connections, args.token)
        )
        print(json.dumps(stats))
        return 0

    use_wrk = args.loadgen == "wrk" or (args.loadgen == "auto" and shutil.which("wrk"))
    rates = [float(rate) for rate in args.rates.split(",") if rate]
    print(f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(
        f"load generator: {'wrk' if use_wrk else 'httpx'}; {args.steps} no-op steps per saga; "
        f"SQLite synchronous={args.synchronous}"
    )
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="saga-http-bench-") as name:
        directory = Path(name)
        server = Server(directory, args.synchronous)
        try:
            server.wait_ready()
            response = httpx.post(
                f"{server.url}/api/v1/sagas/definitions",
                json=definition(args.steps),
                headers=server.headers,
            )
            response.raise_for_status()

            script = directory / "load.lua" if use_wrk else None
            # Warm-up: connections, caches, the first SQLite pages.
            server.load(100, 2, args.connections, script)
            for rate in rates:
                row = server.load(rate, args.duration, args.connections, script)
                rows.append(row)
                print(table([row]).splitlines()[1], flush=True)
        finally:
            code = server.stop()
        if code != 0:
            print(f"FAILED: saga serve exited {code}\n{server.log.read_text()}", file=sys.stderr)
            return 1
        if args.direct:
            rows.append(
                asyncio.run(
                    direct(args.direct, args.connections, args.steps, directory, args.synchronous)
                )
            )
    print()
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps([{**vars_of(row), "rate": row.rate} for row in rows]))
    return 1 if any(row.errors for row in rows) else 0


def vars_of(row: Row) -> dict[str, Any]:
    return {name: getattr(row, name) for name in row.__slots__}


if __name__ == "__main__":
    sys.exit(main())
