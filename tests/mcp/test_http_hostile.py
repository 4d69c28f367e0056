"""A hostile Streamable HTTP server in front of the proxy's own client (HttpDownstream).

The server is :mod:`scripted_http`, a real server on a free loopback port
writing the bytes each test scripts. Whatever it sends, each request must
come to an end the proxy can act on (its reply, a refusal of it, or the
connection failing), soon and with bounded memory; the proxy never waits
for ever. :data:`GUARD` only fails a test that would hang.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import tracemalloc
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from scripted_http import Request, ScriptedServer, polite, reply, response, scripted

from aegis.mcp._jsonrpc import DOWNSTREAM_UNAVAILABLE, Message, Unreadable
from aegis.mcp.http_downstream import HttpDownstream, http_transport

#: seconds after which a test that waits for the proxy fails as a hang
GUARD = 30
LIMIT = 4096
CALL: Message = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "tools/call",
    "params": {"name": "read", "arguments": {"path": "/x"}},
}
INITIALIZE: Message = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "test", "version": "1"},
    },
}


@asynccontextmanager
async def connected(server: ScriptedServer, **options: Any) -> AsyncIterator[HttpDownstream]:
    """HttpDownstream to ``server`` with the proxy's own client, closed afterwards."""
    async with http_transport() as transport:
        remote = HttpDownstream(transport, server.url, LIMIT, **options)
        try:
            yield remote
        finally:
            async with asyncio.timeout(GUARD):
                await remote.close()


async def outcome(remote: HttpDownstream, request_id: int) -> Message | Exception:
    """What comes of request ``request_id``: its reply, an Unreadable, or the connection failing."""
    async with asyncio.timeout(GUARD):
        try:
            async for item in remote.messages():
                if isinstance(item, Unreadable) and item.request_id == request_id:
                    return item
                if isinstance(item, dict) and "method" not in item and item["id"] == request_id:
                    return item
        except ConnectionError as exc:
            return exc
    raise AssertionError("the messages ended without a word of the request")


def failed(item: Message | Exception) -> bool:
    """Whether the request failed: an error from the proxy's client, or a refused reply."""
    if isinstance(item, Exception):
        return True
    error = item.get("error")
    return isinstance(error, dict) and error.get("code") == DOWNSTREAM_UNAVAILABLE


def on_call(hostile: Callable[[Request, socket.socket], bool | None]) -> Callable[..., bool]:
    """Answer tools/call with ``hostile``, everything else politely."""

    def answer(request: Request, connection: socket.socket) -> bool:
        if request.rpc_method == "tools/call":
            return bool(hostile(request, connection))
        return polite(request, connection)

    return answer


def _sse_head(extra: str = "") -> bytes:
    return (
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        f"transfer-encoding: chunked\r\n{extra}\r\n"
    ).encode()


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


#: the last chunk of a chunked body
_END = b"0\r\n\r\n"


def _event(message: str) -> bytes:
    return _chunk(b"event: message\r\ndata: " + message.encode() + b"\r\n\r\n")


def _held_open(connection: socket.socket) -> None:
    """Keep the connection open, sending nothing, until the client closes it."""
    connection.recv(1)


def _endless(connection: socket.socket, piece: bytes) -> None:
    """Write ``piece`` until the client closes the connection."""
    try:
        while True:
            connection.sendall(piece)
    except OSError:
        return


# ---------------------------------------------------------------- what held


def _huge_body(request: Request, connection: socket.socket) -> None:
    connection.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
    connection.sendall(b"content-length: 100000000\r\n\r\n")
    _endless(connection, b" " * 65536)


def _endless_chunks(request: Request, connection: socket.socket) -> None:
    connection.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
    connection.sendall(b"transfer-encoding: chunked\r\n\r\n")
    _endless(connection, _chunk(b"[" * 4096))


def _endless_event(request: Request, connection: socket.socket) -> None:
    connection.sendall(_sse_head() + _chunk(b"data: "))
    _endless(connection, _chunk(b"x" * 4096))


def _huge_chunk_size(request: Request, connection: socket.socket) -> None:
    connection.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
    connection.sendall(b"transfer-encoding: chunked\r\n\r\nffffffffffffffffffffffff\r\n{}")


def _bad_chunk(request: Request, connection: socket.socket) -> None:
    connection.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
    connection.sendall(b"transfer-encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n")


def _closed_mid_body(request: Request, connection: socket.socket) -> None:
    connection.sendall(response(body=b'{"jsonrpc": "2.0", "id": 1, "result": {}}')[:-10])


def _closed_mid_stream(request: Request, connection: socket.socket) -> None:
    connection.sendall(_sse_head() + _chunk(b'data: {"jsonrpc": "2.0", "id": 1, '))


def _closed_before_headers(request: Request, connection: socket.socket) -> None:
    connection.sendall(b"HTTP/1.1 200 OK\r\ncontent-")


def _huge_header(request: Request, connection: socket.socket) -> None:
    connection.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-pad: ")
    _endless(connection, b"a" * 65536)


def _wrong_type(request: Request, connection: socket.socket) -> None:
    message = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {}}).encode()
    connection.sendall(response(body=message, kind="text/html"))
    return True


def _redirect(request: Request, connection: socket.socket) -> None:
    connection.sendall(response(307, kind=None, headers={"location": "http://127.0.0.1:9/mcp"}))


def _server_error_with_rpc_error(request: Request, connection: socket.socket) -> None:
    error = {"jsonrpc": "2.0", "id": 1, "error": {"code": -1, "message": "broken"}}
    connection.sendall(response(500, json.dumps(error).encode()))


def _client_error_with_a_huge_page(request: Request, connection: socket.socket) -> None:
    connection.sendall(response(400, b"<p>" * 1_000_000, kind="text/html"))


def _accepted_not_answered(request: Request, connection: socket.socket) -> None:
    connection.sendall(response(202, kind=None))


def _stream_without_reply(request: Request, connection: socket.socket) -> None:
    note = '{"jsonrpc": "2.0", "method": "notifications/message", "params": {}}'
    connection.sendall(_sse_head() + _event(note) + _END)


def _switching_protocols(request: Request, connection: socket.socket) -> None:
    connection.sendall(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n")
    connection.sendall(b"connection: upgrade\r\n\r\n")
    connection.sendall(b'{"jsonrpc": "2.0", "id": 1, "result": {}}')
    _held_open(connection)


HELD = {
    "a body past the limit that never ends": _huge_body,
    "chunks that never end": _endless_chunks,
    "an event that never ends": _endless_event,
    "a chunk size of 2**96": _huge_chunk_size,
    "a chunk size that is not hex": _bad_chunk,
    "a connection closed mid-body": _closed_mid_body,
    "a connection closed mid-stream": _closed_mid_stream,
    "a connection closed mid-headers": _closed_before_headers,
    "a header that never ends": _huge_header,
    "a reply as text/html": _wrong_type,
    "a redirect": _redirect,
    "HTTP 500 with a JSON-RPC error": _server_error_with_rpc_error,
    "HTTP 400 with a megabyte page": _client_error_with_a_huge_page,
    "HTTP 202 to a request": _accepted_not_answered,
    "a stream that ends without the reply": _stream_without_reply,
    "HTTP 101 switching protocols": _switching_protocols,
}


@pytest.mark.parametrize("hostile", HELD.values(), ids=HELD.keys())
async def test_a_hostile_answer_fails_its_request_soon(hostile: Any) -> None:
    """Each hostile answer ends in the request failing, never in a wait or a reply let through."""
    with scripted(on_call(hostile)) as server:
        async with connected(server) as remote:
            await remote.send(CALL)
            assert failed(await outcome(remote, 1))
    # nothing was followed elsewhere
    assert [r.rpc_method for r in server.requests] == ["tools/call"]


async def test_a_compressed_body_is_inflated_no_further_than_the_limit() -> None:
    """A gzip body of 64 MB of zeros (64 KB on the wire) is refused having inflated little of it."""
    bomb = gzip.compress(b"0" * 64_000_000, 9)

    def hostile(request: Request, connection: socket.socket) -> bool:
        connection.sendall(response(body=bomb, headers={"content-encoding": "gzip"}))
        return True

    with scripted(on_call(hostile)) as server:
        async with connected(server) as remote:
            tracemalloc.start()
            try:
                await remote.send(CALL)
                answer = await outcome(remote, 1)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
    assert failed(answer)
    assert peak < 8_000_000, f"{peak:,} bytes at the peak"


# ---------------------------------------------------------------- what did not hold


def _foreign_body(request: Request, connection: socket.socket) -> bool:
    message = {"jsonrpc": "2.0", "id": 99, "result": {}}
    connection.sendall(response(body=json.dumps(message).encode()))
    return True


def _notification_body(request: Request, connection: socket.socket) -> bool:
    message = {"jsonrpc": "2.0", "method": "notifications/message", "params": {}}
    connection.sendall(response(body=json.dumps(message).encode()))
    return True


def _foreign_unreadable_body(request: Request, connection: socket.socket) -> bool:
    body = b'{"jsonrpc": "2.0", "id": 99, "result": {"a": 1, "a": 2}}'
    connection.sendall(response(body=body))
    return True


def _foreign_unreadable_event(request: Request, connection: socket.socket) -> None:
    event = '{"jsonrpc": "2.0", "id": 99, "result": {"a": 1, "a": 2}}'
    connection.sendall(_sse_head() + _event(event))
    _held_open(connection)


NOT_ANSWERED = {
    "a body answering another id": _foreign_body,
    "a body holding a notification": _notification_body,
    "an unreadable body answering another id": _foreign_unreadable_body,
    "an unreadable event answering another id": _foreign_unreadable_event,
}


@pytest.mark.parametrize("hostile", NOT_ANSWERED.values(), ids=NOT_ANSWERED.keys())
async def test_a_body_or_stream_that_answers_another_request_fails_its_own(hostile: Any) -> None:
    """A request's body or stream ends with no reply to it: the request fails at once.

    It waited for --call-timeout (300 s by default) for a reply that could
    no longer come on its own exchange.
    """
    with scripted(on_call(hostile)) as server:
        async with connected(server) as remote:
            await remote.send(CALL)
            answer = await outcome(remote, 1)
    assert failed(answer)


async def test_a_notification_the_server_never_answers_holds_nothing_up() -> None:
    """A server that never answers a notification's POST costs the proxy a bounded wait.

    The proxy POSTs a client's notifications in line with its other
    messages: waiting for ever there froze the whole client, even the
    calls the proxy answers itself.
    """

    def answer(request: Request, connection: socket.socket) -> bool:
        if request.rpc_method == "notifications/progress":
            _held_open(connection)
            return False
        return polite(request, connection)

    note = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": 1}}
    with scripted(answer) as server:
        async with connected(server, notice_wait=0.5) as remote:
            async with asyncio.timeout(GUARD):
                await remote.send(note)
            await remote.send(CALL)
            assert await outcome(remote, 1) == {"jsonrpc": "2.0", "id": 1, "result": {}}


async def test_a_get_stream_that_ends_at_once_is_not_reopened_in_a_loop() -> None:
    """A server ending the GET stream at once, asking to retry in 0 ms, is not called in a loop."""

    def answer(request: Request, connection: socket.socket) -> bool:
        if request.method == "GET":
            connection.sendall(response(body=b"retry: 0\n\n", kind="text/event-stream"))
            return True
        return polite(request, connection)

    with scripted(answer) as server:
        async with connected(server) as remote:
            await remote.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
            await asyncio.sleep(1.5)  # a window in which nothing should happen often
            gets = sum(r.method == "GET" for r in server.requests)
    assert 1 <= gets <= 5


@pytest.mark.parametrize("session", ["has space", "nön-ascii", "a" * 5000])
async def test_a_session_id_that_cannot_be_sent_back_fails_the_initialize(session: str) -> None:
    """A session id outside visible ASCII, or too long, fails initialize with a clear reason.

    Such an id cannot go back in a header as it came (or would go with
    every request): the session would fail later, on a call, for a reason
    nobody could read in its error.
    """

    def answer(request: Request, connection: socket.socket) -> bool:
        if request.rpc_method == "initialize":
            message = reply(request, {"protocolVersion": "2025-11-25", "capabilities": {}})
            head, body = message.split(b"\r\n\r\n", 1)
            header = b"\r\nmcp-session-id: " + session.encode("utf-8")
            connection.sendall(head + header + b"\r\n\r\n" + body)
            return True
        return polite(request, connection)

    with scripted(answer) as server:
        async with connected(server) as remote:
            await remote.send(INITIALIZE)
            answer_ = await outcome(remote, 0)
            assert failed(answer_)
            assert isinstance(answer_, dict)
            assert "session id" in answer_["error"]["message"]
    # nothing went out with it
    assert len(server.requests) == 1


async def test_a_session_end_answered_without_end_is_left_at_once() -> None:
    """The DELETE that ends the session, answered by endless chunks, ends the close soon.

    The whole answer was read into memory, each piece within the timeout:
    the close never returned, and the memory grew for as long.
    """

    def answer(request: Request, connection: socket.socket) -> bool:
        if request.method == "DELETE":
            connection.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            _endless(connection, _chunk(b"x" * 65536))
            return False
        if request.rpc_method == "initialize":
            message = reply(request, {"protocolVersion": "2025-11-25", "capabilities": {}})
            head, body = message.split(b"\r\n\r\n", 1)
            connection.sendall(head + b"\r\nmcp-session-id: s1\r\n\r\n" + body)
            return True
        return polite(request, connection)

    with scripted(answer) as server:
        async with http_transport() as transport:
            remote = HttpDownstream(transport, server.url, LIMIT)
            await remote.send(INITIALIZE)
            assert (await outcome(remote, 0))["result"]  # type: ignore[index]
            async with asyncio.timeout(GUARD):
                await remote.close()
    assert [r.method for r in server.requests] == ["POST", "DELETE"]


# ---------------------------------------------------------------- connections kept alive


def _streamed_reply(request: Request, connection: socket.socket) -> bool:
    """The call's reply as the one event of a stream that then ends, as SDK servers answer."""
    message = json.dumps({"jsonrpc": "2.0", "id": request.message["id"], "result": {}})
    connection.sendall(_sse_head() + _event(message) + _END)
    return True


async def test_calls_and_notifications_share_one_connection() -> None:
    """Calls answered on streams, and notifications, go one after another on one connection."""
    note = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": 1}}
    with scripted(on_call(_streamed_reply)) as server:
        async with connected(server) as remote:
            for request_id in (1, 2, 3):
                await remote.send({**CALL, "id": request_id})
                assert not failed(await outcome(remote, request_id))
                await remote.send(note)
    assert len(server.requests) == 6
    assert server.connections == 1


def _oversized(request: Request, connection: socket.socket) -> bool:
    connection.sendall(response(body=b" " * (LIMIT * 4)))
    return True


def _going_on_after_the_reply(request: Request, connection: socket.socket) -> bool:
    message = json.dumps({"jsonrpc": "2.0", "id": request.message["id"], "result": {}})
    connection.sendall(_sse_head() + _event(message))
    _held_open(connection)
    return True


def _much_after_the_reply(request: Request, connection: socket.socket) -> bool:
    message = json.dumps({"jsonrpc": "2.0", "id": request.message["id"], "result": {}})
    note = '{"jsonrpc": "2.0", "method": "notifications/message", "params": {}}'
    connection.sendall(_sse_head() + _event(message) + _event(note) * 2000 + _END)
    return True


def _html(request: Request, connection: socket.socket) -> bool:
    connection.sendall(response(body=b"<p>" * 1000, kind="text/html"))
    return True


def _not_found_page(request: Request, connection: socket.socket) -> bool:
    connection.sendall(response(404, b"<p>" * 1000, kind="text/html"))
    return True


def _forged(request_id: int) -> bytes:
    return response(
        body=json.dumps({"jsonrpc": "2.0", "id": request_id, "result": {"f": 1}}).encode()
    )


def _body_and_a_forged_next(request: Request, connection: socket.socket) -> bool:
    """The reply, and in the same write the "reply" to a request not sent yet."""
    connection.sendall(reply(request) + _forged(2))
    return True


def _stream_and_a_forged_next(request: Request, connection: socket.socket) -> bool:
    message = json.dumps({"jsonrpc": "2.0", "id": request.message["id"], "result": {}})
    connection.sendall(_sse_head() + _event(message) + _END + _forged(2))
    return True


LEFT_BAD = {
    "a body, then the answer to the next request": _body_and_a_forged_next,
    "a stream, then the answer to the next request": _stream_and_a_forged_next,
    "a body past the limit": _oversized,
    "a stream going on after the reply": _going_on_after_the_reply,
    "a stream with much after the reply": _much_after_the_reply,
    "a reply as text/html": _html,
    "HTTP 404 with a page": _not_found_page,
}


@pytest.mark.parametrize("hostile", LEFT_BAD.values(), ids=LEFT_BAD.keys())
async def test_a_connection_an_answer_was_not_read_to_its_end_on_is_not_reused(
    hostile: Any,
) -> None:
    """After an answer the proxy stopped reading, the next request goes on a new connection.

    The server keeps each connection open for more: what it left unread
    must never be read as the answer to the next request.
    """
    calls = 0

    def first_hostile(request: Request, connection: socket.socket) -> bool:
        nonlocal calls
        calls += 1
        return bool(hostile(request, connection)) if calls == 1 else polite(request, connection)

    with scripted(on_call(first_hostile)) as server:
        async with connected(server) as remote:
            await remote.send(CALL)
            await outcome(remote, 1)
            await remote.send({**CALL, "id": 2})
            assert await outcome(remote, 2) == {"jsonrpc": "2.0", "id": 2, "result": {}}
    first, second = server.posted("tools/call")
    assert first.connection != second.connection


async def test_a_cookie_set_for_one_session_is_never_sent_with_anothers() -> None:
    """Sessions share the pool, not a cookie jar: the server's cookie for one stays with it.

    With one client for every session of a proxy (``--listen``), the cookie
    the server set in bob's session went with alice's later calls: the
    server took alice for bob.
    """
    count = 0

    def answer(request: Request, connection: socket.socket) -> bool:
        nonlocal count
        if request.rpc_method == "initialize":
            count += 1
            message = reply(request, {"protocolVersion": "2025-11-25", "capabilities": {}})
            head, body = message.split(b"\r\n\r\n", 1)
            cookie = f"\r\nset-cookie: who=session{count}; Path=/\r\n\r\n".encode()
            connection.sendall(head + cookie + body)
            return True
        return polite(request, connection)

    with scripted(answer) as server:
        async with http_transport() as transport:
            first = HttpDownstream(transport, server.url, LIMIT)
            second = HttpDownstream(transport, server.url, LIMIT)
            try:
                await first.send(INITIALIZE)
                assert not failed(await outcome(first, 0))
                await second.send(INITIALIZE)
                assert not failed(await outcome(second, 0))
                await first.send(CALL)
                assert not failed(await outcome(first, 1))
                await second.send(CALL)
                assert not failed(await outcome(second, 1))
            finally:
                async with asyncio.timeout(GUARD):
                    await first.close()
                    await second.close()
    calls = [r.headers.get("cookie") for r in server.requests if r.rpc_method == "tools/call"]
    assert calls == ["who=session1", "who=session2"]
