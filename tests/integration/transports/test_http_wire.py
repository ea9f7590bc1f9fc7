"""The lean HTTP/1.1 transport against real loopback servers: the stub participant (uvicorn)
for ordinary exchanges and TLS, and a scripted raw asyncio server for what a well-behaved
server never does (closing, resetting, malformed or oversized answers, hanging)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

import httpx
import pytest

from saga_orchestrator.transports.http import classify_transport_error
from saga_orchestrator.transports.http_wire import WireTransport
from tests.integration.transports import test_http
from tests.support.stub_participant import Canary, Reply, StubParticipant, StubTls

pki = test_http.pki  # the module-scoped fixture of openssl-made certificates

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
ONE_SECOND = httpx.Timeout(1.0)


@dataclass(frozen=True, slots=True)
class Answer:
    """What the raw server does with one request: write ``data``, then keep the connection,
    close it, reset it (RST), or hang until the server stops."""

    data: bytes = OK
    then: Literal["keep", "close", "reset", "hang"] = "keep"


@dataclass(frozen=True, slots=True)
class Seen:
    connection: int
    """1 for the server's first connection, 2 for its second, ..."""
    head: bytes
    body: bytes


@dataclass(slots=True, eq=False)
class RawServer:
    """An HTTP/1.1 server on 127.0.0.1 that answers requests from a script, in order (``OK``
    once the script is done), and records every request with its connection."""

    script: list[Answer] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0
    ended: int = 0
    """Connections whose handling is over (the client hung up, or the script closed it)."""
    _server: asyncio.Server | None = None
    _handlers: list[asyncio.Task[object]] = field(default_factory=list)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    def per_connection(self) -> list[int]:
        """How many requests each connection carried."""
        return [sum(s.connection == n for s in self.seen) for n in range(1, self.connections + 1)]

    async def wait_ended(self, count: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.ended >= count)

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._stopping.set()
        self._server.close()
        await self._server.wait_closed()
        await asyncio.gather(*self._handlers)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        task = asyncio.current_task()
        assert task is not None
        self._handlers.append(task)
        try:
            while await self._answer(number, reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            async with self._changed:
                self.ended += 1
                self._changed.notify_all()

    async def _answer(
        self, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Read and answer one request; False once the connection is done."""
        head = await reader.readuntil(b"\r\n\r\n")
        body = await reader.readexactly(_content_length(head))
        self.seen.append(Seen(number, head, body))
        answer = self.script.pop(0) if self.script else Answer()
        writer.write(answer.data)
        await writer.drain()
        if answer.then == "hang":  # answer no more, and read nothing more
            await self._stopping.wait()
        elif answer.then == "reset":
            linger = struct.pack("ii", 1, 0)  # close with RST, not FIN
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            writer.transport.abort()
        return answer.then == "keep"


def _content_length(head: bytes) -> int:
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return int(line.partition(b":")[2])
    return 0


@pytest.fixture
async def server() -> AsyncIterator[RawServer]:
    async with RawServer() as running:
        yield running


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=WireTransport(), timeout=ONE_SECOND) as http:
        yield http


async def loop_turns() -> None:
    """A round trip over loopback, during which the event loop polls its sockets: the
    client's side has then read a FIN the server sent before."""
    async with Canary() as canary:
        reader, writer = await asyncio.open_connection("127.0.0.1", canary.port)
        await reader.read()  # until the canary hangs up
        writer.close()
        await writer.wait_closed()


def classified(error: httpx.HTTPError) -> tuple[str, bool, bool]:
    info = classify_transport_error(error)
    return info.type, info.retryable, info.unknown


# --- ordinary exchanges, with the stub participant ---


async def test_a_json_exchange_with_a_real_participant(client: httpx.AsyncClient) -> None:
    async with StubParticipant() as stub:
        stub.script("/orders", Reply(status=201, json={"id": 7}, headers={"X-Answer": "yes"}))

        response = await client.post(
            f"{stub.base_url}/orders?x=1", json={"sku": "A1"}, headers={"X-Custom": "kept"}
        )

    assert (response.status_code, response.json()) == (201, {"id": 7})
    assert response.headers["x-answer"] == "yes"
    [call] = stub.calls
    assert (call.method, call.path, call.query, call.json) == (
        "POST",
        "/orders",
        "x=1",
        {"sku": "A1"},
    )
    assert call.headers["x-custom"] == "kept"
    assert call.headers["host"] == f"127.0.0.1:{stub.port}"
    assert call.headers["content-length"] == str(len(call.body))


async def test_concurrent_requests_each_get_their_own_answer(client: httpx.AsyncClient) -> None:
    async with StubParticipant() as stub:
        gate = asyncio.Event()
        for n in range(10):
            stub.script(f"/n/{n}", Reply(json={"n": n}, gate=gate))
        pending = [asyncio.create_task(client.get(f"{stub.base_url}/n/{n}")) for n in range(10)]
        await stub.wait_in_flight(10)
        gate.set()
        responses = await asyncio.gather(*pending)

    assert [response.json() for response in responses] == [{"n": n} for n in range(10)]
    assert len(stub.calls) == 10


# --- framing and keep-alive, with the raw server ---


async def test_keep_alive_carries_every_request_on_one_connection(
    server: RawServer, client: httpx.AsyncClient
) -> None:
    for n in range(5):
        response = await client.post(f"{server.url}/n", content=b"x" * n)
        assert response.content == b"{}"

    assert server.per_connection() == [5]
    assert [s.body for s in server.seen] == [b"", b"x", b"xx", b"xxx", b"xxxx"]
    assert b"\r\ncontent-length: 0\r\n" in server.seen[0].head.lower()  # an empty POST too


async def test_a_long_body_read_to_its_end_leaves_the_connection_reusable(
    server: RawServer, client: httpx.AsyncClient
) -> None:
    body = bytes(range(256)) * 12_000  # 3 MB: streamed in pieces, not buffered whole
    server.script += [
        Answer(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    ]

    async with client.stream("GET", f"{server.url}/long") as response:
        pieces = [piece async for piece in response.aiter_raw()]
    after = await client.get(f"{server.url}/next")

    assert b"".join(pieces) == body
    assert len(pieces) > 1
    assert after.content == b"{}"
    assert server.per_connection() == [2]


async def test_a_chunked_body_is_reassembled_and_the_connection_reused(
    server: RawServer, client: httpx.AsyncClient
) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n1;ext=1\r\n \r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    server.script += [Answer(chunked)]

    first = await client.get(f"{server.url}/chunked")
    second = await client.get(f"{server.url}/next")

    assert first.content == b"hello 0123456789"
    assert second.content == b"{}"
    assert server.per_connection() == [2]


async def test_a_body_without_length_ends_with_the_connection(
    server: RawServer, client: httpx.AsyncClient
) -> None:
    server.script += [Answer(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", then="close")]

    first = await client.get(f"{server.url}/a")
    second = await client.get(f"{server.url}/b")

    assert (first.content, second.content) == (b"until the end", b"{}")
    assert server.per_connection() == [1, 1]


@pytest.mark.parametrize(
    ("method", "answer"),
    [
        ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n"),
        ("GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
        ("GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n"),
        ("POST", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ],
)
async def test_answers_without_a_body_leave_the_connection_reusable(
    server: RawServer, client: httpx.AsyncClient, method: str, answer: bytes
) -> None:
    server.script += [Answer(answer)]

    first = await client.request(method, f"{server.url}/a")
    second = await client.get(f"{server.url}/b")

    assert (first.content, second.content) == (b"", b"{}")
    assert server.per_connection() == [2]


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}",
    ],
)
async def test_a_connection_the_server_will_close_is_not_reused(
    server: RawServer, client: httpx.AsyncClient, answer: bytes
) -> None:
    server.script += [Answer(answer, then="close")]

    await client.get(f"{server.url}/a")
    await client.get(f"{server.url}/b")

    assert server.per_connection() == [1, 1]


async def test_an_abandoned_body_closes_its_connection(
    server: RawServer, client: httpx.AsyncClient
) -> None:
    # Far more than a stream reader buffers before it stops reading (2 x 64 KiB + one read).
    big = b"HTTP/1.1 200 OK\r\nContent-Length: 3000000\r\n\r\n" + b"z" * 3_000_000
    server.script += [Answer(big)]

    async with client.stream("GET", f"{server.url}/big") as response:
        async for _chunk in response.aiter_raw():
            break  # like HttpTransport's capped read, giving up past its cap
    after = await client.get(f"{server.url}/next")

    assert after.content == b"{}"
    assert server.per_connection() == [1, 1]


# --- connections that go away ---


async def test_a_connection_the_server_closed_while_idle_is_replaced(
    server: RawServer, client: httpx.AsyncClient
) -> None:
    server.script += [Answer(OK, then="close"), Answer(OK, then="close")]

    responses = []
    for ended in (1, 2, 2):
        responses.append(await client.get(f"{server.url}/n"))
        await server.wait_ended(ended)
        await loop_turns()

    assert [r.status_code for r in responses] == [200, 200, 200]
    assert server.per_connection() == [1, 1, 1]  # exactly one request seen per call


async def test_a_request_racing_the_servers_close_is_sent_again_on_a_fresh_connection(
    server: RawServer, client: httpx.AsyncClient
) -> None:
    """The request goes out before the client has noticed the FIN: nothing comes back."""
    server.script += [Answer(OK, then="close")]

    responses = [await client.get(f"{server.url}/n") for _ in range(2)]

    assert [r.status_code for r in responses] == [200, 200]
    assert server.per_connection() == [1, 1]


async def test_a_reused_connection_reset_before_answering_is_retried_once(
    server: RawServer, client: httpx.AsyncClient
) -> None:
    server.script += [Answer(), Answer(b"", then="reset")]

    await client.get(f"{server.url}/first")
    retried = await client.post(f"{server.url}/second", content=b"again")

    assert retried.content == b"{}"
    assert server.per_connection() == [2, 1]
    assert [s.body for s in server.seen] == [b"", b"again", b"again"]


async def test_a_reused_connection_is_retried_only_once(
    server: RawServer, client: httpx.AsyncClient
) -> None:
    server.script += [Answer(), Answer(b"", then="reset"), Answer(b"", then="reset")]
    await client.get(f"{server.url}/first")

    with pytest.raises(httpx.TransportError) as caught:
        await client.get(f"{server.url}/second")

    assert classified(caught.value) == ("ConnectionLost", True, True)
    assert server.per_connection() == [2, 1]


@pytest.mark.parametrize("then", ["reset", "close"])
async def test_a_fresh_connection_lost_before_answering_is_an_unknown_outcome(
    server: RawServer, client: httpx.AsyncClient, then: Literal["reset", "close"]
) -> None:
    server.script += [Answer(b"", then=then)]

    with pytest.raises(httpx.TransportError) as caught:
        await client.post(f"{server.url}/once", content=b"payload")

    assert isinstance(caught.value, httpx.ReadError | httpx.RemoteProtocolError)
    assert classified(caught.value) == ("ConnectionLost", True, True)
    assert len(server.seen) == 1  # not sent again


async def test_a_body_cut_short_is_a_protocol_error(
    server: RawServer, client: httpx.AsyncClient
) -> None:
    server.script += [Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "close")]

    with pytest.raises(httpx.RemoteProtocolError):
        await client.get(f"{server.url}/short")


# --- malformed answers ---


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 OK\r\n\r\n",
        b"garbage\r\n\r\n",
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    ],
)
async def test_a_malformed_answer_is_a_remote_protocol_error(
    server: RawServer, client: httpx.AsyncClient, answer: bytes
) -> None:
    server.script += [Answer(answer, then="close")]

    with pytest.raises(httpx.RemoteProtocolError) as caught:
        await client.get(f"{server.url}/bad")

    assert classified(caught.value) == ("ConnectionLost", True, True)
    assert len(server.seen) == 1


async def test_a_header_block_over_64_kib_is_refused(
    server: RawServer, client: httpx.AsyncClient
) -> None:
    server.script += [Answer(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", "hang")]

    with pytest.raises(httpx.RemoteProtocolError, match="longer than 65536 bytes"):
        await client.get(f"{server.url}/big-head")


async def test_a_header_that_would_split_the_request_is_refused_before_connecting(
    server: RawServer, client: httpx.AsyncClient
) -> None:
    with pytest.raises(httpx.LocalProtocolError) as caught:
        await client.get(f"{server.url}/x", headers={"X-Evil": "a\r\nX-Injected: b"})

    assert classified(caught.value) == ("InvalidRequest", False, False)
    assert server.connections == 0


# --- timeouts and refusals ---


async def test_no_answer_in_time_is_a_read_timeout(
    server: RawServer, client: httpx.AsyncClient
) -> None:
    server.script += [Answer(b"", then="hang")]

    with pytest.raises(httpx.ReadTimeout) as caught:
        await client.get(f"{server.url}/slow", timeout=httpx.Timeout(5.0, read=0.1))

    assert classified(caught.value) == ("Timeout", True, True)


async def test_a_body_the_server_does_not_read_is_a_write_timeout(
    server: RawServer, client: httpx.AsyncClient
) -> None:
    server.script += [Answer(OK, then="hang")]
    await client.get(f"{server.url}/occupy")  # the server stops reading this connection...

    with pytest.raises(httpx.WriteTimeout) as caught:  # ...which the next request reuses
        await client.post(
            f"{server.url}/big", content=b"b" * 32_000_000, timeout=httpx.Timeout(5.0, write=0.1)
        )

    assert classified(caught.value) == ("Timeout", True, True)


async def test_a_refused_connection_is_a_connect_error(client: httpx.AsyncClient) -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]

    with pytest.raises(httpx.ConnectError) as caught:
        await client.get(f"http://127.0.0.1:{port}/")

    assert classified(caught.value) == ("ConnectError", True, False)


async def test_only_http_and_https_are_spoken(client: httpx.AsyncClient) -> None:
    with pytest.raises(httpx.UnsupportedProtocol):
        await client.get("ftp://127.0.0.1/file")


# --- TLS ---


async def test_tls_checks_the_server_name_given_while_connecting_to_an_address(
    pki: Path,
) -> None:
    files = pki / test_http.TENANT  # the fixture is a SECRETS_DIR: the files are the tenant's
    tls = StubTls(certfile=str(files / "orders.pem"), keyfile=str(files / "orders.key"))
    context = ssl.create_default_context(cafile=str(files / "orders.pem"))
    async with (
        StubParticipant(tls=tls) as stub,
        httpx.AsyncClient(transport=WireTransport(ssl_context=context)) as http,
    ):
        host = {"Host": f"orders.internal:{stub.port}"}
        named = {"sni_hostname": "orders.internal"}
        answers = [
            await http.get(f"{stub.base_url}/orders", headers=host, extensions=named)
            for _ in range(2)
        ]
        with pytest.raises(httpx.ConnectError) as unnamed:  # the certificate is not for the IP
            await http.get(f"{stub.base_url}/orders", headers=host)

    assert [answer.status_code for answer in answers] == [200, 200]
    assert [call.headers["host"] for call in stub.calls] == [f"orders.internal:{stub.port}"] * 2
    assert "CERTIFICATE_VERIFY_FAILED" in str(unnamed.value)
    assert classified(unnamed.value) == ("ConnectError", True, False)


async def test_closing_the_transport_closes_its_connections(server: RawServer) -> None:
    async with httpx.AsyncClient(transport=WireTransport()) as http:
        await http.get(f"{server.url}/a")
        await http.get(f"{server.url}/b")
        idle = server.ended

    await server.wait_ended(1)  # the server saw the client hang up

    assert (idle, server.per_connection()) == (0, [2])
