"""The isolation bench's flood client (``bench/tenant_isolation_wire.py``) against a real
socket server of the test's own: what it sends, what it reads, and when it opens a new
connection; and the flood's outcome of each answer (``tenant_isolation_load.flood_start``)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
import pytest_asyncio

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from saga_orchestrator.security.limits import Decision, combined_headers
from tenant_isolation_load import Caller, flood_start
from tenant_isolation_wire import AnswerError, StartConnection, read_answer

PATH = "/api/v1/sagas/instances"
CREATED = b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\ncontent-type: application/json\r\n\r\n{}"

Answering = Callable[[int, bytes], list[bytes]]
"""The n-th request received (from 0) and its bytes -> the chunks to write back; no chunks:
close the connection instead."""


@dataclass
class Server:
    url: str
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    answering: Answering = lambda _n, _request: [CREATED]


@pytest_asyncio.fixture
async def server() -> AsyncIterator[Server]:
    state = Server(url="")

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                request = head + await reader.readexactly(length)
                number = len(state.requests)
                state.requests.append(request)
                chunks = state.answering(number, request)
                if not chunks:
                    break
                for chunk in chunks:
                    writer.write(chunk)
                    await writer.drain()
                    await asyncio.sleep(0.01)  # each chunk a read of its own
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    listening = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = listening.sockets[0].getsockname()[1]
    state.url = f"http://127.0.0.1:{port}"
    try:
        yield state
    finally:
        listening.close()


def connection_to(server: Server) -> StartConnection:
    return StartConnection(server.url, "the-token", "order", PATH)


async def test_starts_go_one_after_another_over_one_connection(server: Server) -> None:
    connection = connection_to(server)
    for number in range(3):
        answer = await connection.start(number)
        assert (answer.status, answer.body) == (201, b"{}")
        assert answer.headers["content-type"] == "application/json"
    connection.close()
    assert server.connections == 1
    head, body = server.requests[2].split(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == f"POST {PATH} HTTP/1.1".encode()
    assert set(lines[1:]) == {
        f"Host: {server.url.removeprefix('http://')}".encode(),
        b"Authorization: Bearer the-token",
        b"Content-Type: application/json",
        f"Content-Length: {len(body)}".encode(),
    }
    assert orjson.loads(body) == {"saga_name": "order", "context": {"n": 2}}


async def test_an_answer_in_pieces_is_read_whole(server: Server) -> None:
    server.answering = lambda _n, _request: [CREATED[:5], CREATED[5:40], CREATED[40:-1], b"}"]
    answer = await connection_to(server).start(0)
    assert (answer.status, answer.body) == (201, b"{}")


async def test_connection_close_and_a_dropped_connection_open_a_new_one(server: Server) -> None:
    closing = CREATED.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n")
    server.answering = lambda n, _request: {0: [closing], 1: []}.get(n, [CREATED])
    connection = connection_to(server)
    assert (await connection.start(0)).status == 201
    with pytest.raises(AnswerError, match="closed"):
        await connection.start(1)  # the server dropped the connection without an answer
    assert (await connection.start(2)).status == 201
    assert server.connections == 3


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n",
        b"SMTP 200 OK\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: two\r\n\r\n",
    ],
)
async def test_an_answer_it_cannot_read_is_an_error_not_a_guess(
    server: Server, answer: bytes
) -> None:
    server.answering = lambda _n, _request: [answer]
    with pytest.raises(AnswerError):
        await connection_to(server).start(0)


def test_an_incomplete_answer_is_not_read_yet() -> None:
    assert read_answer(bytearray(CREATED[:30])) is None
    assert read_answer(bytearray(CREATED[:-1])) is None
    read = read_answer(bytearray(CREATED + b"HTTP/1.1"))
    assert read is not None
    assert read[1] == len(CREATED)


def refusal(retry_after: str | None = None) -> bytes:
    decision = Decision(
        allowed=False, limit=100, remaining=0, reset_after=2.0, retry_after=0.4, policy="starts"
    )
    headers = combined_headers([decision])
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return f"HTTP/1.1 429 Too Many Requests\r\n{lines}content-length: 2\r\n\r\n{{}}".encode()


async def test_the_flood_s_outcomes_check_each_refusal_s_headers(server: Server) -> None:
    server.answering = lambda n, _request: [
        [refusal(), refusal("0"), CREATED, b"HTTP/1.1 500 Oops\r\ncontent-length: 4\r\n\r\nboom"][n]
    ]
    caller = Caller(base_url=server.url, token="t", saga="order")
    connection = connection_to(server)
    assert await flood_start(connection, caller, 0) == (429, None)
    status, note = await flood_start(connection, caller, 1)
    assert status == 429
    assert note is not None
    assert "Retry-After" in note
    assert await flood_start(connection, caller, 2) == (201, None)
    assert await flood_start(connection, caller, 3) == (500, "boom")
    server.answering = lambda _n, _request: []
    status, note = await flood_start(connection, caller, 4)
    assert status == 0
    assert note is not None
    assert note.startswith("AnswerError")
