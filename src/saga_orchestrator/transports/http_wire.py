"""A lean HTTP/1.1 client transport for httpx, written directly on asyncio streams.

Why hand-written: the issue's bar is that three-step HTTP sagas against a local no-op
participant reach half the throughput of in-process handlers, and with httpx's default
transport they reached 4-8 %. Profiling put 91 % of the event loop in ``HttpTransport.call``:
httpcore 1.0.9's pool walks every pooled connection twice per request and polls each idle
socket through anyio (57 %), and without ``sniffio`` (anyio >= 4.11 no longer installs it)
every lock and shield retried a failing ``import sniffio`` (17 %). httpx over httpcore cost
0.8-1 ms of CPU per request where a raw asyncio client costs 40-60 us; a prototype with a raw
asyncio connection reached a ratio of 0.49-0.58 (``bench/README.md``). This transport keeps
httpx as the API (``httpx.Request`` in, ``httpx.Response`` out, httpx's exception types) and
does the wire work itself, with no anyio and no httpcore on the path.

What it does: one request at a time per connection, per-origin LIFO stacks of idle
keep-alive connections (checkout is O(1), expiry is checked on the popped connection only,
and a connection the server closed or wrote to while idle is discarded); request bodies are
read whole and sent with ``Content-Length``; response bodies are framed by
``Content-Length``, chunked transfer-coding or the end of the connection, and streamed (or
handed over at once when already received whole; content-codings are left to
``httpx.Response``); the ``timeout`` extension's ``connect``, ``read`` (per read) and
``write`` budgets, and TLS with the ``sni_hostname`` extension.

What it does not do: HTTP/2, proxies, pipelining, ``Upgrade``/``101`` (an error), waiting
for ``100 Continue`` before sending a body (interim 1xx answers are skipped), response lines
not ending in CRLF, obsolete header line folding (an error), a limit on connections or the
``pool`` timeout (the caller limits concurrency), trailers (read and dropped). A request
that meets a reused connection the server had already closed is sent again on a fresh one,
so use it only for requests that are safe to repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, cast

import httpx

MAX_HEADER_BYTES = 64 * 1024
"""The largest status line + header block (and chunk-size line) accepted from a server."""
KEEPALIVE_EXPIRY = 5.0
"""Seconds an idle connection is kept for reuse."""
CLOSE_TIMEOUT = 5.0
"""Seconds ``aclose`` waits for connections (TLS ones exchange close_notify) to finish."""

_CHUNK = 64 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_UNSAFE = re.compile(rb"[\x00\r\n]")
_FIELDS = re.compile(rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+: [^\x00\r\n]*\r\n)*")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
_REPLACED = frozenset({b"host", b"content-length", b"transfer-encoding", b"connection"})
_BODYLESS_STATUS = frozenset({204, 304})
_LENGTH_ALWAYS = frozenset({b"POST", b"PUT", b"PATCH"})
"""Methods sent with a ``Content-Length`` even when empty (as httpx does; some servers
answer 411 otherwise)."""

Origin = tuple[str, str, int, str | None]
"""(scheme, host, port, TLS server name): connections are reused within one origin only."""


class _Reader(asyncio.StreamReader):
    """A stream reader that counts the bytes it was ever fed, so the connection can tell
    whether anything arrived beyond what it consumed."""

    received = 0

    def feed_data(self, data: Any) -> None:
        self.received += len(cast(bytes, data))
        super().feed_data(data)


class _Unanswered(Exception):
    """The connection failed before any byte of a response arrived."""

    def __init__(self, error: httpx.TransportError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(slots=True, eq=False)
class _Connection:
    origin: Origin
    reader: _Reader
    writer: asyncio.StreamWriter
    consumed: int = 0
    idle_since: float = 0.0

    def clean(self) -> bool:
        """Open, and nothing arrived that was not read (an idle server stays silent)."""
        return (
            self.reader.received == self.consumed
            and not self.reader.at_eof()
            and self.reader.exception() is None
            and not self.writer.transport.is_closing()
        )

    async def send(self, payload: bytes, timeout: float | None, request: httpx.Request) -> None:
        try:
            self.writer.write(payload)
            if self.writer.transport.get_write_buffer_size():  # the socket did not take it all
                async with asyncio.timeout(timeout):
                    await self.writer.drain()
        except TimeoutError:
            raise httpx.WriteTimeout("timed out sending the request", request=request) from None
        except (OSError, RuntimeError) as error:  # uvloop: RuntimeError on a closed handle
            raise httpx.WriteError(_describe(error), request=request) from error

    async def read_until(
        self, separator: bytes, timeout: float | None, request: httpx.Request
    ) -> bytes:
        return await self._read(self.reader.readuntil(separator), timeout, request)

    def buffered(self) -> int:
        """Bytes received and not yet read: reading that many returns at once."""
        return self.reader.received - self.consumed if self.reader.exception() is None else 0

    async def read_some(self, size: int, timeout: float | None, request: httpx.Request) -> bytes:
        if buffered := self.buffered():  # no wait, so no timer
            return await self._take(self.reader.read(min(size, buffered)))
        return await self._read(self.reader.read(size), timeout, request)

    async def read_exactly(self, size: int, timeout: float | None, request: httpx.Request) -> bytes:
        if self.buffered() >= size:
            return await self._take(self.reader.readexactly(size))
        return await self._read(self.reader.readexactly(size), timeout, request)

    async def _take(self, pending: Coroutine[Any, Any, bytes]) -> bytes:
        data = await pending
        self.consumed += len(data)
        return data

    async def _read(
        self, pending: Coroutine[Any, Any, bytes], timeout: float | None, request: httpx.Request
    ) -> bytes:
        try:
            async with asyncio.timeout(timeout):
                data = await pending
        except TimeoutError:  # before OSError, of which it is a subclass
            raise httpx.ReadTimeout("timed out reading the response", request=request) from None
        except asyncio.IncompleteReadError as error:
            message = "the server closed the connection before the end of its response"
            raise httpx.RemoteProtocolError(message, request=request) from error
        except asyncio.LimitOverrunError as error:
            message = f"a response line or header block is longer than {MAX_HEADER_BYTES} bytes"
            raise httpx.RemoteProtocolError(message, request=request) from error
        except OSError as error:
            raise httpx.ReadError(_describe(error), request=request) from error
        self.consumed += len(data)
        return data


@dataclass(frozen=True, slots=True)
class _Head:
    status: int
    reason: bytes
    version: bytes
    headers: list[tuple[bytes, bytes]]
    length: int | None
    """The body's length, or None when chunked or ending with the connection."""
    chunked: bool
    reusable: bool
    """The framing lets the connection carry another request afterwards."""


class WireTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 over asyncio streams, with keep-alive connections reused per origin."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        keepalive_expiry: float = KEEPALIVE_EXPIRY,
        max_idle_per_origin: int = 1000,
    ) -> None:
        self._ssl_context = ssl_context
        self._expiry = keepalive_expiry
        self._max_idle = max_idle_per_origin
        self._idle: dict[Origin, deque[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        origin = _origin(request)
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        payload, close = await _encode(request)
        connection = self._checkout(origin)
        if connection is not None:
            try:
                return await self._exchange(connection, request, payload, close, timeouts)
            except _Unanswered:
                # The server closed this idle connection as we reused it: nothing came back,
                # but the request may have been read. Sending it once more, on a fresh
                # connection, is safe here: every request HttpTransport sends carries an
                # Idempotency-Key, so a participant that did see it answers the same.
                pass
        connection = await self._connect(origin, request, timeouts.get("connect"))
        try:
            return await self._exchange(connection, request, payload, close, timeouts)
        except _Unanswered as unanswered:
            raise unanswered.error from unanswered.error.__cause__

    async def aclose(self) -> None:
        self._closed = True
        connections = list(self._open)
        self._open.clear()
        self._idle.clear()
        for connection in connections:
            connection.writer.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await asyncio.gather(*(_closed(c.writer) for c in connections))

    def _checkout(self, origin: Origin) -> _Connection | None:
        stack = self._idle.get(origin)
        now = time.monotonic()
        while stack:
            connection = stack.pop()
            if now - connection.idle_since < self._expiry and connection.clean():
                return connection
            self._drop(connection)
        return None

    def _finish(self, connection: _Connection, reusable: bool) -> None:
        """Take a connection back once its response has been read (or abandoned)."""
        if not reusable or self._closed or not connection.clean():
            self._drop(connection)
            return
        stack = self._idle.setdefault(connection.origin, deque())
        now = connection.idle_since = time.monotonic()
        while stack and now - stack[0].idle_since >= self._expiry:
            self._drop(stack.popleft())  # the oldest first: each connection is dropped once
        if len(stack) >= self._max_idle:
            self._drop(connection)
        else:
            stack.append(connection)

    def _drop(self, connection: _Connection) -> None:
        self._open.discard(connection)
        connection.writer.close()

    async def _connect(
        self, origin: Origin, request: httpx.Request, timeout: float | None
    ) -> _Connection:
        scheme, host, port, server_name = origin
        loop = asyncio.get_running_loop()
        reader = _Reader(limit=MAX_HEADER_BYTES)
        protocol = asyncio.StreamReaderProtocol(reader)
        context = self._tls() if scheme == "https" else None
        try:
            async with asyncio.timeout(timeout):
                transport, _ = await loop.create_connection(
                    lambda: protocol,
                    host,
                    port,
                    ssl=context,
                    server_hostname=(server_name or host) if context else None,
                )
        except TimeoutError:  # before OSError, of which it is a subclass
            raise httpx.ConnectTimeout("timed out connecting", request=request) from None
        except OSError as error:  # refused, unreachable, TLS (ssl.SSLError is an OSError)
            raise httpx.ConnectError(_describe(error), request=request) from error
        connection = _Connection(
            origin, reader, asyncio.StreamWriter(transport, protocol, reader, loop)
        )
        self._open.add(connection)
        return connection

    def _tls(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    async def _exchange(
        self,
        connection: _Connection,
        request: httpx.Request,
        payload: bytes,
        close: bool,
        timeouts: dict[str, float | None],
    ) -> httpx.Response:
        read_timeout = timeouts.get("read")
        try:
            try:
                await connection.send(payload, timeouts.get("write"), request)
            except httpx.WriteError as error:
                raise _Unanswered(error) from error
            head = await _read_head(connection, request, read_timeout)
        except BaseException:
            self._drop(connection)
            raise
        reusable = head.reusable and not close
        length = head.length
        stream: httpx.AsyncByteStream
        if length is not None and length <= connection.buffered():
            # The whole body is here already (a small answer usually is): hand it over as is
            # and the connection back at once.
            body = await connection.read_exactly(length, read_timeout, request) if length else b""
            self._finish(connection, reusable)
            stream = httpx.ByteStream(body)
        else:
            stream = _Body(
                connection,
                head,
                request,
                timeout=read_timeout,
                finish=self._finish,
                reusable=reusable,
            )
        extensions = {"http_version": head.version, "reason_phrase": head.reason}
        return httpx.Response(
            head.status, headers=head.headers, stream=stream, extensions=extensions
        )


class _Body(httpx.AsyncByteStream):
    """A response body read from the connection as it is iterated; the connection goes back
    to the pool only if the body was read to its end."""

    def __init__(
        self,
        connection: _Connection,
        head: _Head,
        request: httpx.Request,
        *,
        timeout: float | None,
        finish: Callable[[_Connection, bool], None],
        reusable: bool,
    ) -> None:
        self._connection = connection
        self._head = head
        self._request = request
        self._timeout = timeout
        self._finish = finish
        self._reusable = reusable
        self._complete = False
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._head.chunked:
            pieces = self._chunked()
        elif self._head.length is not None:
            pieces = self._sized(self._head.length)
        else:
            pieces = self._until_close()
        try:
            async for piece in pieces:
                yield piece
        except BaseException:  # a read failed, or the reader walked away (GeneratorExit)
            self._settle(reusable=False)
            raise
        self._complete = True

    async def aclose(self) -> None:
        self._settle(reusable=self._complete and self._reusable)

    def _settle(self, *, reusable: bool) -> None:
        if not self._closed:
            self._closed = True
            self._finish(self._connection, reusable)

    async def _sized(self, remaining: int) -> AsyncIterator[bytes]:
        while remaining:
            piece = await self._connection.read_some(
                min(remaining, _CHUNK), self._timeout, self._request
            )
            if not piece:
                message = "the server closed the connection before the end of the body"
                raise httpx.RemoteProtocolError(message, request=self._request)
            remaining -= len(piece)
            yield piece

    async def _chunked(self) -> AsyncIterator[bytes]:
        read, request = self._connection, self._request
        while size := _chunk_size(await read.read_until(b"\r\n", self._timeout, request), request):
            async for piece in self._sized(size):
                yield piece
            if await read.read_exactly(2, self._timeout, self._request) != b"\r\n":
                raise httpx.RemoteProtocolError("a chunk overruns its size", request=self._request)
        trailers = 0
        while (line := await read.read_until(b"\r\n", self._timeout, self._request)) != b"\r\n":
            trailers += len(line)
            if trailers > MAX_HEADER_BYTES:
                raise httpx.RemoteProtocolError("the trailers are too long", request=self._request)

    async def _until_close(self) -> AsyncIterator[bytes]:
        while piece := await self._connection.read_some(_CHUNK, self._timeout, self._request):
            yield piece


def _origin(request: httpx.Request) -> Origin:
    url = request.url
    scheme = url.scheme
    if scheme not in _DEFAULT_PORTS:
        raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}", request=request)
    server_name = request.extensions.get("sni_hostname")
    if isinstance(server_name, bytes):
        server_name = server_name.decode("ascii")
    return (scheme, url.host, url.port or _DEFAULT_PORTS[scheme], server_name)


async def _encode(request: httpx.Request) -> tuple[bytes, bool]:
    """The request line, headers and body, ready for the wire, and whether the request asks
    for the connection to be closed; ``LocalProtocolError`` for anything that could split the
    message (whose text quotes no header value: it may be a secret)."""
    body = await _body(request)
    method = request.method.encode("ascii")
    target = request.url.raw_path
    if not _TOKEN.fullmatch(method) or _UNSAFE.search(target) or b" " in target:
        raise httpx.LocalProtocolError("the request line is not valid", request=request)
    host = request.url.netloc
    framed = bool(body) or method in _LENGTH_ALWAYS
    close = False
    fields = []
    for name, value in request.headers.raw:
        lower = name.lower()
        if lower not in _REPLACED:
            fields.append(b"%s: %s\r\n" % (name, value))
        elif lower == b"host":
            host = value
        elif lower == b"connection":
            close = b"close" in value.lower()
        else:
            framed = True
    block = b"".join(fields)
    # Each field matches "name: value CRLF" and there are as many LFs as fields: no name or
    # value carries a line break (or NUL) that could smuggle in a header or a request.
    if not _FIELDS.fullmatch(block) or block.count(b"\n") != len(fields) or _UNSAFE.search(host):
        raise httpx.LocalProtocolError("a header is not valid HTTP", request=request)
    length = b"Content-Length: %d\r\n" % len(body) if framed else b""
    persistence = b"close" if close else b"keep-alive"
    head = b"%s %s HTTP/1.1\r\nHost: %s\r\nConnection: %s\r\n%s%s\r\n" % (
        method, target, host, persistence, length, block
    )  # fmt: skip
    return head + body, close


async def _body(request: httpx.Request) -> bytes:
    if isinstance(request.stream, httpx.ByteStream):  # bytes in memory: no need to await
        return b"".join(request.stream)
    return await request.aread()  # the content, once read


async def _read_head(
    connection: _Connection, request: httpx.Request, timeout: float | None
) -> _Head:
    try:
        raw = await connection.read_until(b"\r\n\r\n", timeout, request)
    except (httpx.ReadError, httpx.RemoteProtocolError) as error:
        if connection.reader.received == connection.consumed:  # not one byte came back
            raise _Unanswered(error) from error
        raise
    while True:
        head = _parse_head(raw, request)
        if not 100 <= head.status < 200:
            return head
        if head.status == 101:
            raise httpx.RemoteProtocolError(
                "101 Switching Protocols is not supported", request=request
            )
        raw = await connection.read_until(b"\r\n\r\n", timeout, request)  # after 100, 103, ...


def _parse_head(raw: bytes, request: httpx.Request) -> _Head:
    status_line, *lines = raw[:-4].split(b"\r\n")
    version, _, rest = status_line.partition(b" ")
    code, _, reason = rest.partition(b" ")
    if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit():
        raise httpx.RemoteProtocolError(
            f"malformed status line {status_line[:100]!r}", request=request
        )
    headers = []
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise httpx.RemoteProtocolError(
                f"malformed header line {line[:100]!r}", request=request
            )
        headers.append((name, value.strip(b" \t")))
    status = int(code)
    length, chunked, reusable = _framing(status, version, headers, request)
    return _Head(status, reason, version, headers, length, chunked, reusable)


def _framing(
    status: int, version: bytes, headers: list[tuple[bytes, bytes]], request: httpx.Request
) -> tuple[int | None, bool, bool]:
    """RFC 9112 §6.3: the body's length (None: chunked or until the connection closes),
    whether it is chunked, and whether the connection outlives it."""
    lengths: set[bytes] = set()
    codings: list[bytes] = []
    tokens: list[bytes] = []
    for name, value in headers:
        lower = name.lower()
        if lower == b"content-length":
            lengths.update(part.strip() for part in value.split(b","))
        elif lower == b"transfer-encoding":
            codings += (part.strip().lower() for part in value.split(b","))
        elif lower == b"connection":
            tokens += (part.strip().lower() for part in value.split(b","))
    reusable = b"close" not in tokens and (version == b"HTTP/1.1" or b"keep-alive" in tokens)
    if request.method == "HEAD" or status < 200 or status in _BODYLESS_STATUS:
        return 0, False, reusable
    if codings:  # overrides Content-Length; a message with both is suspect: not reused
        chunked = codings[-1] == b"chunked"
        return None, chunked, reusable and chunked and not lengths
    if not lengths:
        return None, False, False  # the body ends with the connection
    length = lengths.pop()
    if lengths or not length.isdigit() or len(length) > 18:
        raise httpx.RemoteProtocolError("invalid Content-Length", request=request)
    return int(length), False, reusable


def _chunk_size(line: bytes, request: httpx.Request) -> int:
    text = line.partition(b";")[0].strip()
    if not _HEX.fullmatch(text):
        message = f"malformed chunk size line {line[:100]!r}"
        raise httpx.RemoteProtocolError(message, request=request)
    return int(text, 16)


def _describe(error: Exception) -> str:
    return str(error) or type(error).__name__


async def _closed(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        await writer.wait_closed()


__all__ = ["KEEPALIVE_EXPIRY", "MAX_HEADER_BYTES", "Origin", "WireTransport"]
