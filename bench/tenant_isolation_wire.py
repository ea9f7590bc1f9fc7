"""The flood's HTTP/1.1 client: one keep-alive connection, one request at a time, as little
CPU per request as Python allows.

The flooding tenant of ``tenant_isolation_bench.py`` would send from machines of its own; here
its client shares the node's two cores, so every microsecond it spends is one the node may
wait for. Through ``http_wire.WireTransport`` (httpx's request and response objects, a URL
parsed per request) it took about 0.7 ms of CPU per request on a slow machine, 0.3 cores at
500 requests/s, and the machine's CPU stall doubled during a flood (docs/performance.md,
"Session 14"). This client writes bytes prepared once per connection (only the body's number
changes), reads the status line, the headers and a ``Content-Length`` body, and nothing else:
the node answers every start with a length, and an answer it cannot read (chunked, no length,
a bad status line) is a transport error of the request, never a guess.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson

_HEAD_END = b"\r\n\r\n"


class AnswerError(Exception):
    """The connection closed, or sent what this client does not read."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: dict[str, str]
    """Lower-case names; a repeated header keeps its last value."""
    body: bytes


def read_answer(buffer: bytearray) -> tuple[Answer, int] | None:
    """The first whole answer in ``buffer`` and the bytes it took, ``None`` if incomplete."""
    end = buffer.find(_HEAD_END)
    if end < 0:
        return None
    lines = bytes(buffer[:end]).decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise AnswerError(f"not an HTTP/1.x status line: {lines[0]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            raise AnswerError(f"a malformed header line: {line!r}")
        headers[name.strip().lower()] = value.strip()
    if "transfer-encoding" in headers or "content-length" not in headers:
        raise AnswerError("an answer without a Content-Length")
    length = headers["content-length"]
    if not length.isdigit():
        raise AnswerError(f"a malformed Content-Length: {length!r}")
    whole = end + len(_HEAD_END) + int(length)
    if len(buffer) < whole:
        return None
    body = bytes(buffer[end + len(_HEAD_END) : whole])
    return Answer(status=int(code), headers=headers, body=body), whole


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[Answer] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        try:
            read = read_answer(self.buffer)
        except AnswerError as error:
            waiter.set_exception(error)
            return
        if read is not None:
            answer, used = read
            del self.buffer[:used]
            waiter.set_result(answer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(AnswerError(f"the connection closed ({exc or 'by the server'})"))


class StartConnection:
    """Starts of one saga for one token, one at a time over one connection (opened again
    when the server closed it, or after an error)."""

    def __init__(self, base_url: str, token: str, saga: str, path: str) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"an http:// URL is needed, not {base_url!r}")
        self._host, self._port = parts.hostname, parts.port or 80
        self._head = (
            f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        ).encode()
        self._saga = saga
        self._protocol: _Protocol | None = None

    async def start(self, number: int) -> Answer:
        """Send start ``number`` and read its answer; AnswerError or OSError otherwise."""
        protocol = self._protocol
        if protocol is None or protocol.closed:
            protocol = await self._connect()
        body = orjson.dumps({"saga_name": self._saga, "context": {"n": number}})
        waiter: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        protocol.waiter = waiter
        assert protocol.transport is not None
        protocol.transport.write(b"%sContent-Length: %d\r\n\r\n%s" % (self._head, len(body), body))
        try:
            answer = await waiter
        except BaseException:
            self.close()  # whatever arrives later belongs to no request
            raise
        finally:
            protocol.waiter = None
        if answer.headers.get("connection", "").lower() == "close":
            self.close()
        return answer

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(_Protocol, self._host, self._port)
        self._protocol = protocol
        return protocol

    def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None
