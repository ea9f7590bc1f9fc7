"""A local no-op HTTP/1.1 participant for ``participants_bench.py``: as fast as a Python server
reasonably gets, so what the benchmark measures is the orchestrator's HTTP path.

    python bench/noop_participant.py [--port 0] [--host 127.0.0.1] [--no-uvloop]

It runs as its own process (a real participant does not share the orchestrator's core): a raw
asyncio ``Protocol`` on uvloop when that is importable, keep-alive and pipelining, requests
framed by ``Content-Length`` (chunked bodies are refused with 501 and the connection closed).

- ``GET /stats`` answers ``{"requests": n, "routes": {"POST /reserve": n, ...}}``, counting
  every request but the ``/stats`` ones;
- a path under ``/fail`` answers ``400`` with a problem JSON (a definite failure, for the
  compensation scenario);
- anything else answers ``200`` with ``{}``.

Once listening it prints its port on a line of its own; on SIGTERM or SIGINT it prints the
final ``/stats`` object as one JSON line and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from collections import Counter
from typing import cast

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
FAIL_BODY = b'{"title":"refused","detail":"the participant refuses /fail"}'
FAIL = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/problem+json\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(FAIL_BODY), FAIL_BODY)
)
NOT_IMPLEMENTED = b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
STATS_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
MAX_HEAD = 64 * 1024


class Stats:
    def __init__(self) -> None:
        self.routes: Counter[str] = Counter()

    def as_json(self) -> bytes:
        payload = {"requests": self.routes.total(), "routes": dict(self.routes)}
        return json.dumps(payload, separators=(",", ":")).encode()


class Participant(asyncio.Protocol):
    """One connection: parses as many whole requests as the buffer holds, answers each."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        out = bytearray()
        close = False
        while not close:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                close = len(self.buffer) > MAX_HEAD
                if close:
                    out += BAD_REQUEST
                break
            head = bytes(self.buffer[:end]).lower()
            length, framing_ok = _content_length(head)
            if not framing_ok:
                out += NOT_IMPLEMENTED
                close = True
                break
            total = end + 4 + length
            if len(self.buffer) < total:
                break
            line = bytes(self.buffer[: self.buffer.find(b"\r\n")])
            del self.buffer[:total]
            out += self._answer(line)
            close = b"\r\nconnection: close" in head
        if self.transport is not None:
            if out:
                self.transport.write(bytes(out))
            if close:
                self.transport.close()

    def _answer(self, request_line: bytes) -> bytes:
        method, _, rest = request_line.partition(b" ")
        target = rest.partition(b" ")[0]
        path = target.partition(b"?")[0].decode("latin-1")
        if path == "/stats":
            body = self.stats.as_json()
            return STATS_HEAD % len(body) + body
        self.stats.routes[f"{method.decode('latin-1')} {path}"] += 1
        if path == "/fail" or path.startswith("/fail/"):
            return FAIL
        return OK

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


def _content_length(head: bytes) -> tuple[int, bool]:
    """(body length, whether the framing is one this server reads); ``head`` is lower-case."""
    if b"\r\ntransfer-encoding:" in head:
        return 0, False
    start = head.find(b"\r\ncontent-length:")
    if start < 0:
        return 0, True
    start += len(b"\r\ncontent-length:")
    stop = head.find(b"\r\n", start)
    try:
        return int(head[start : stop if stop >= 0 else None]), True
    except ValueError:
        return 0, False


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stats = Stats()
    server = await loop.create_server(lambda: Participant(stats), host, port, backlog=4096)
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    bound = server.sockets[0].getsockname()[1]
    print(bound, flush=True)
    async with server:
        await stopping.wait()
    print(stats.as_json().decode(), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--no-uvloop", action="store_true", help="use the stock asyncio loop")
    args = parser.parse_args()
    if not args.no_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(serve(args.host, args.port))
            return
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
