"""A real HTTP participant for tests: a Starlette-based ASGI app served by uvicorn in the
test's own event loop, on 127.0.0.1 and a port the OS picks.

    async with StubParticipant() as stub:
        stub.script("/orders", Reply(status=503), Reply(json={"id": 7}))   # a queue, then...
        stub.set_default(Reply(json={"ok": True}))                          # ...the default
        ...  # register a participant service with base_url=stub.base_url
        await stub.wait_for_calls(2)
        assert [call.reply.status for call in stub.calls] == [503, 200]

Every request is recorded (``stub.calls``: method, path, query, headers, raw and JSON body,
arrival time on the loop clock, the status answered). Each path answers from its queue of
``Reply``s first, then its own default, then the stub's default (200 with ``{}``). A reply
can be delayed (``delay`` seconds, or until an ``asyncio.Event`` is set: ``gate``), carry
any status, JSON or raw body and headers, or drop the connection after reading the request
(``drop=True``: the client sees the connection close with no answer). ``tls=StubTls(...)``
serves HTTPS instead (optionally demanding client certificates).

Nothing here sleeps to synchronize: ``wait_for_calls`` and ``wait_in_flight`` wake on the
stub's own condition, and leaving the ``async with`` releases every held reply, so the server
shuts down promptly. ``Canary`` is a raw TCP listener that only counts connections, for
asserting that nothing was ever sent somewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Generator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import orjson
import uvicorn
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """One scripted answer."""

    status: int = 200
    json: Any = field(default_factory=dict)
    """Sent as ``application/json`` unless ``body`` is given."""
    body: bytes | None = None
    """A raw body, sent as is (set ``Content-Type`` in ``headers`` if it matters)."""
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    """Seconds to wait before answering (cut short when the stub stops)."""
    gate: asyncio.Event | None = None
    """Answer only once this event is set (or the stub stops)."""
    drop: bool = False
    """Close the connection after reading the request, without answering."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordedCall:
    method: str
    path: str
    query: str
    headers: Headers
    """Case-insensitive."""
    body: bytes
    at: float
    """Arrival on the event loop's clock."""
    reply: Reply

    @property
    def json(self) -> Any:
        """The body parsed as JSON (None when empty)."""
        return orjson.loads(self.body) if self.body else None


@dataclass(frozen=True, slots=True, kw_only=True)
class StubTls:
    """Serve HTTPS with this certificate; require client certificates signed by
    ``client_ca`` when it is given (mutual TLS)."""

    certfile: str
    keyfile: str
    client_ca: str | None = None


class StubParticipant:
    def __init__(self, default: Reply | None = None, *, tls: StubTls | None = None) -> None:
        self.calls: list[RecordedCall] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._default = default or Reply()
        self._scripts: dict[str, list[Reply]] = {}
        self._defaults: dict[str, Reply] = {}
        self._changed = asyncio.Condition()
        self._stopping = asyncio.Event()
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]
        self._server = _QuietServer(
            uvicorn.Config(
                self._app,
                interface="asgi3",
                lifespan="off",
                http="h11",
                ws="none",
                log_config=None,
                log_level="warning",
                access_log=False,
                timeout_graceful_shutdown=5,
                **_tls_settings(tls),
            )
        )
        self._scheme = "http" if tls is None else "https"
        self._task: asyncio.Task[None] | None = None

    @property
    def base_url(self) -> str:
        return f"{self._scheme}://127.0.0.1:{self.port}"

    def script(self, path: str, *replies: Reply) -> None:
        """Queue answers for ``path``, used once each, in order."""
        self._scripts.setdefault(path, []).extend(replies)

    def set_default(self, reply: Reply, *, path: str | None = None) -> None:
        """The answer once a path's queue is empty: for ``path``, or for every path."""
        if path is None:
            self._default = reply
        else:
            self._defaults[path] = reply

    def calls_to(self, path: str) -> list[RecordedCall]:
        return [call for call in self.calls if call.path == path]

    async def wait_for_calls(self, count: int) -> None:
        """Until at least ``count`` requests have arrived."""
        async with self._changed:
            await self._changed.wait_for(lambda: len(self.calls) >= count)

    async def wait_in_flight(self, count: int) -> None:
        """Until at least ``count`` requests are being answered at once."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.in_flight >= count)

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stopping.set()
        self._server.should_exit = True
        if self._task is not None:
            await self._task
        self._socket.close()

    def _next_reply(self, path: str) -> Reply:
        queue = self._scripts.get(path)
        if queue:
            return queue.pop(0)
        return self._defaults.get(path, self._default)

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        body = await request.body()
        reply = self._next_reply(request.url.path)
        await self._record(
            RecordedCall(
                method=request.method,
                path=request.url.path,
                query=request.url.query,
                headers=request.headers,
                body=body,
                at=asyncio.get_running_loop().time(),
                reply=reply,
            )
        )
        async with self._answering():
            await self._hold(reply)
            if reply.drop:
                await _drop_connection(receive, send)
                return
            await _response(reply)(scope, receive, send)

    async def _record(self, call: RecordedCall) -> None:
        async with self._changed:
            self.calls.append(call)
            self._changed.notify_all()

    @contextlib.asynccontextmanager
    async def _answering(self) -> AsyncIterator[None]:
        async with self._changed:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self._changed.notify_all()
        try:
            yield
        finally:
            self.in_flight -= 1

    async def _hold(self, reply: Reply) -> None:
        if not reply.delay and reply.gate is None:
            return
        events = [self._stopping] if reply.gate is None else [self._stopping, reply.gate]
        waits = [asyncio.ensure_future(event.wait()) for event in events]
        try:
            await asyncio.wait(
                waits, timeout=reply.delay or None, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for wait in waits:
                wait.cancel()
            await asyncio.gather(*waits, return_exceptions=True)


def _tls_settings(tls: StubTls | None) -> dict[str, Any]:
    if tls is None:
        return {}
    settings: dict[str, Any] = {"ssl_certfile": tls.certfile, "ssl_keyfile": tls.keyfile}
    if tls.client_ca is not None:
        settings |= {"ssl_ca_certs": tls.client_ca, "ssl_cert_reqs": ssl.CERT_REQUIRED}
    return settings


def _response(reply: Reply) -> Response:
    headers = dict(reply.headers)
    if reply.body is not None:
        return Response(reply.body, status_code=reply.status, headers=headers)
    headers.setdefault("Content-Type", "application/json")
    return Response(orjson.dumps(reply.json), status_code=reply.status, headers=headers)


async def _drop_connection(receive: Receive, send: Send) -> None:
    # ASGI has no "close without answering"; uvicorn's send is a bound method of the
    # request cycle, which holds the connection's transport.
    transport: asyncio.Transport = send.__self__.transport  # type: ignore[attr-defined]
    transport.close()
    while (await receive())["type"] != "http.disconnect":
        pass


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves the process's signal handlers to pytest."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class Canary:
    """A TCP listener on 127.0.0.1 that counts connections and closes them at once."""

    def __init__(self) -> None:
        self.connections = 0
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._on_connect, "127.0.0.1", 0)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _on_connect(
        self, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.connections += 1
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


__all__ = ["Canary", "RecordedCall", "Reply", "StubParticipant", "StubTls"]
