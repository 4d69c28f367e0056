"""Reaching a Streamable HTTP MCP server, every message read by the proxy's own reader.

The SDK's ``streamable_http_client`` parses the server's messages with
Pydantic, which keeps the last of two equal member names and reads
``NaN`` (written on as ``null``): a reply the stdio path refuses passed
over HTTP, and the client could read another answer than the one the
proxy recorded. :class:`HttpDownstream` speaks the transport itself and
hands each message, a JSON body or one event of a stream, to
:func:`~aegis.mcp._jsonrpc.read_message`, the reader of a stdio server's
lines: both transports are judged alike, and the proxy passes on only
what it read.

The wire (MCP 2025-03-26 and later): each message is POSTed; a request is
answered by a JSON body or by an SSE stream that ends with the reply (the
server's own requests and notifications may come first on it); the
``Mcp-Session-Id`` the server gives with its ``initialize`` reply, and the
negotiated ``MCP-Protocol-Version``, go with every later request; once
initialized, a GET stream carries the server's messages that belong to no
request; a stream that ends early is resumed with ``Last-Event-ID``; the
session is DELETEd on close. Redirects are not followed.

A failed exchange (a connection refused, reset or cut mid-answer, a broken
chunk) fails its request only, and a notification that cannot be sent is
dropped with a warning: each message has an exchange of its own, and the
next may well go through. The session ends when the server says it has
ended it (HTTP 404 to the session's id, when every later request would get
the same): :meth:`HttpDownstream.messages` then raises, and the proxy ends
its session with its client, which starts a new one.

Connections are kept alive and reused (:func:`http_transport`, one pool
per proxy, shared by its sessions; each session has a client of its own,
so that a cookie the server sets for one session is never sent with
another's requests): a request's stream is read to its end after the reply, within
:data:`_DRAIN_BYTES` and :data:`_DRAIN_WAIT`, so that its connection goes
back to the pool. A connection is reused only when its last response was
read to its end as HTTP frames it: one closed early (a body past the
limit, a stream that goes on, a refused answer left unread, a broken
chunk) is closed, never handed to the next request.

Size: the event reader and the client are one module, because the client's
every read of a stream (a request's, a resumed one, the GET stream) goes
through the reader's bounds; the rest is the one wire, told end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx2

from aegis.mcp._jsonrpc import (
    DOWNSTREAM_UNAVAILABLE,
    Message,
    RequestId,
    Unreadable,
    encode_line,
    error_reply,
    read_message,
)

__all__ = ["HttpDownstream", "SseReader", "http_transport"]

_log = logging.getLogger("aegis.mcp")

_SESSION_HEADER = "mcp-session-id"
_VERSION_HEADER = "mcp-protocol-version"
#: seconds to connect or write; reading, and waiting for a connection of the pool,
#: waits for ever (a stream stays open while the tool runs; the proxy's --call-timeout
#: ends it, and it ends a call that waits for a connection the same way)
_TIMEOUT = httpx2.Timeout(30.0, read=None, pool=None)
#: connections open at once at most (the GET stream of each session holds one), idle
#: ones kept for reuse at most, and seconds one is kept idle: under the 5 s after
#: which common servers (uvicorn, Node) close an idle connection themselves, so that
#: a request is not sent on a connection the server is closing
_LIMITS = httpx2.Limits(max_connections=256, max_keepalive_connections=16, keepalive_expiry=4.0)
#: after a request's reply, the bytes and seconds its stream may take to end; past
#: either it is closed, and its connection with it
_DRAIN_BYTES = 65536
_DRAIN_WAIT = 1.0
#: seconds the DELETE that ends the session may take in all
_CLOSE_WAIT = 5.0
#: seconds the server may take to answer the POST of a notification or a response: the
#: client's messages go out one after another, so a wait there holds up all that follow
NOTICE_WAIT = 10.0
#: times a stream that ended before its reply is resumed, and the wait between
_RESUMES = 2
_RESUME_DELAY = 1.0
#: the shortest wait before a stream is opened again, whatever its server asks
#: (``retry: 0`` on a stream that ends at once would be a loop of GETs)
_MIN_RETRY = 0.5
#: a session id the proxy sends back: visible ASCII, as the specification asks, and not
#: so long that it weighs on every request
_SESSION_ID = re.compile(r"[\x21-\x7e]{1,1024}")
#: the server's messages read but not yet taken by the proxy, at most
_INBOX = 64


class SseReader:
    """Server-sent events from pieces of a stream, each event's data bounded by ``limit`` bytes.

    :meth:`feed` returns the events completed by one piece as ``(id, data)``,
    ``data`` ``None`` for an event past the limit: reported as soon as it
    passes it (an event that never ends must not hold its request for
    ever), then read past, not kept. Only ``message`` events carry MCP
    messages; others are skipped.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._line = bytearray()
        self._skipping = False  # the rest of a line too long to keep
        self._data: list[bytes] = []
        self._size = 0
        self._too_long = False
        self._event = b"message"
        self._after_cr = False
        #: the last event id the stream gave (to resume it from)
        self.last_id: str | None = None
        #: the reconnection delay the stream asked for, in seconds
        self.retry: float | None = None

    def feed(self, piece: bytes) -> list[tuple[str | None, bytes | None]]:
        """The events that ``piece`` completes."""
        events: list[tuple[str | None, bytes | None]] = []
        start, n = 0, len(piece)
        if self._after_cr and piece.startswith(b"\n"):
            start = 1  # the \n of a \r\n split between two pieces
        self._after_cr = False
        while start < n:
            cr, lf = piece.find(b"\r", start), piece.find(b"\n", start)
            end = min(i for i in (cr, lf, n) if i >= 0)
            if self._add(piece[start:end]):
                events.append((self.last_id, None))
            if end == n:
                break
            event = self._end_line()
            if event is not None:
                events.append(event)
            start = end + 1
            if piece[end] == 0x0D:  # a \r, maybe of a \r\n
                if start == n:
                    self._after_cr = True
                elif piece[start] == 0x0A:
                    start += 1
        return events

    def _add(self, part: bytes) -> bool:
        """Add to the line; ``True`` when this makes its event too long."""
        if self._skipping or not part:
            return False
        self._line += part
        if len(self._line) > self._limit + 16:  # room for "data: "
            self._skipping = True
            self._line.clear()
            return self._overflow()
        return False

    def _overflow(self) -> bool:
        """Drop the event's data; ``True`` the first time (the event is reported then)."""
        self._data.clear()
        reported, self._too_long = self._too_long, True
        return not reported

    def _end_line(self) -> tuple[str | None, bytes | None] | None:
        if self._skipping:
            self._skipping = False
            return None
        line, self._line = bytes(self._line), bytearray()
        if not line:
            return self._dispatch()
        if line.startswith(b":"):
            return None  # a comment (a keep-alive)
        name, _, value = line.partition(b":")
        value = value.removeprefix(b" ")
        if name == b"data" and not self._too_long:
            self._data.append(value)
            self._size += len(value) + 1
            if self._size > self._limit + 1 and self._overflow():
                return self.last_id, None
        elif name == b"event":
            self._event = value
        elif name == b"id" and b"\0" not in value:
            self.last_id = value.decode("utf-8", "replace")
        elif name == b"retry" and value.isdigit():
            self.retry = int(value) / 1000
        return None

    def _dispatch(self) -> tuple[str | None, bytes | None] | None:
        data, kind, too_long = self._data, self._event, self._too_long
        self._data, self._size, self._too_long, self._event = [], 0, False, b"message"
        if too_long:
            return None  # reported when it passed the limit
        text = b"\n".join(data)
        if kind != b"message" or not text:
            return None  # another kind of event, or one without data (a stream's priming)
        return self.last_id, text


class _Ended(Exception):
    """The server ended the session: it cannot go on."""


class HttpDownstream:
    """A connection to a Streamable HTTP MCP server at ``url``."""

    def __init__(
        self,
        transport: httpx2.AsyncBaseTransport,
        url: str,
        limit: int,
        *,
        notice_wait: float = NOTICE_WAIT,
    ) -> None:
        # A client (and so a cookie jar) of the session's own, over the proxy's shared
        # pool: never closed here, since closing a client closes its transport
        self._client = httpx2.AsyncClient(
            transport=transport, timeout=_TIMEOUT, follow_redirects=False
        )
        self._url = url
        self._limit = limit
        self._notice_wait = notice_wait
        self._session: str | None = None
        self._version: str | None = None
        # bounded: a server that floods waits for the proxy, as a pipe makes it wait
        self._inbox: asyncio.Queue[Message | Exception] = asyncio.Queue(_INBOX)
        # the POST of each request waiting for its reply, by the request's id
        self._exchanges: dict[RequestId, asyncio.Task[None]] = {}
        self._listener: asyncio.Task[None] | None = None
        # the id of the initialize request, whose reply names the protocol version
        self._initialize: RequestId | None = None
        # the requests in self._exchanges whose reply (or failure) is in the inbox
        self._replied: set[RequestId] = set()

    # -------------------------------------------------------------- toward the server

    def _headers(self, *, post: bool) -> dict[str, str]:
        headers = {"accept": "application/json, text/event-stream" if post else "text/event-stream"}
        if post:
            headers["content-type"] = "application/json"
        if self._session is not None:
            headers[_SESSION_HEADER] = self._session
        if self._version is not None:
            headers[_VERSION_HEADER] = self._version
        return headers

    async def send(self, message: Message) -> None:
        """POST one message; a request's reply comes later from :meth:`messages`.

        Raises:
            ConnectionError: the server cannot be reached.
        """
        if "method" in message and "id" in message:
            request_id: RequestId = message["id"]
            task = asyncio.create_task(self._exchange(message, request_id))
            self._exchanges[request_id] = task
            task.add_done_callback(lambda done: self._forget(request_id, done))
            return
        try:
            async with self._client.stream(
                "POST",
                self._url,
                content=encode_line(message),
                headers=self._headers(post=True),
                timeout=httpx2.Timeout(30.0, read=self._notice_wait, pool=self._notice_wait),
            ) as response:
                await _drain(response)
        except (httpx2.ReadTimeout, httpx2.PoolTimeout):
            _log.warning(
                "the MCP server did not answer the POST of a %s within %gs; went on without it",
                _what(message),
                self._notice_wait,
            )
            return
        except httpx2.HTTPError as exc:
            # One message lost, as one request failed: the session goes on.
            _log.warning(
                "the MCP server at %s could not be sent a %s: %s: %s",
                self._url,
                _what(message),
                type(exc).__name__,
                exc,
            )
            return
        if response.status_code >= 400:
            _log.warning(
                "the MCP server answered HTTP %d to a %s", response.status_code, _what(message)
            )
            await self._check_session(response)
        if message.get("method") == "notifications/initialized" and self._listener is None:
            self._listener = asyncio.create_task(self._listen())
        elif message.get("method") == "notifications/cancelled":
            # The reply of a cancelled request is not awaited: its stream can close.
            params = message.get("params")
            cancelled = params.get("requestId") if isinstance(params, dict) else None
            exchange = self._exchanges.get(cancelled) if isinstance(cancelled, str | int) else None
            if exchange is not None:
                exchange.cancel()

    def _forget(self, request_id: RequestId, task: asyncio.Task[None]) -> None:
        if self._exchanges.get(request_id) is task:
            del self._exchanges[request_id]
            self._replied.discard(request_id)

    async def _exchange(self, message: Message, request_id: RequestId) -> None:
        """POST a request and read what answers it, until its reply."""
        try:
            async with self._client.stream(
                "POST", self._url, content=encode_line(message), headers=self._headers(post=True)
            ) as response:
                opening = message["method"] == "initialize"
                if not opening or await self._opened(response, request_id):
                    await self._answer(response, request_id)
        except Exception as exc:
            # One exchange failed (a connection refused, reset or cut mid-answer, a
            # broken chunk): this request fails, unless answered already; the session
            # goes on, since each request has an exchange of its own.
            why = f"the MCP server at {self._url} cannot be reached: {type(exc).__name__}: {exc}"
            if request_id not in self._replied:
                _log.warning("request %r failed: %s", request_id, why)
                await self._put(error_reply(request_id, DOWNSTREAM_UNAVAILABLE, why))

    async def _opened(self, response: httpx2.Response, request_id: RequestId) -> bool:
        """Take the ``initialize`` reply's session id; ``False`` when it cannot be sent back.

        The request has then failed, saying why.
        """
        session = response.headers.get(_SESSION_HEADER)
        if session is not None and _SESSION_ID.fullmatch(session) is None:
            why = (
                "the MCP server gave a session id (Mcp-Session-Id) that is not 1 to 1024 "
                f"visible ASCII characters, which the proxy cannot send back: {session[:40]!r}"
            )
            await self._put(error_reply(request_id, DOWNSTREAM_UNAVAILABLE, why))
            return False
        self._session = session or self._session
        self._initialize = request_id
        return True

    async def _answer(self, response: httpx2.Response, request_id: RequestId) -> None:
        status = response.status_code
        kind = response.headers.get("content-type", "").partition(";")[0].strip().lower()
        if not 200 <= status < 300 or status == 202:
            why = await self._refusal(response, kind)
            await self._put(error_reply(request_id, DOWNSTREAM_UNAVAILABLE, why))
            await self._check_session(response)
        elif kind == "application/json":
            body = await _read_body(response, self._limit)
            item = self._read(body, request_id)
            await self._put(item)
            if not _is_reply(item):
                # A request or notification alone: the request has no reply.
                why = "the MCP server answered the request with a message that is not a reply"
                await self._put(error_reply(request_id, DOWNSTREAM_UNAVAILABLE, why))
            else:
                await self._check_answered(item, request_id)
        elif kind == "text/event-stream":
            events = SseReader(self._limit)
            if not await self._stream(response, events, request_id):
                await self._resume(events, request_id)
        else:
            why = f"the MCP server answered with content type {kind or 'none'!r}, not JSON or SSE"
            await self._put(error_reply(request_id, DOWNSTREAM_UNAVAILABLE, why))

    async def _check_session(self, response: httpx2.Response) -> None:
        """End the session when the server says it has ended it (404 to its session id).

        Every later request would get the same 404: the proxy's session with
        its client ends, saying why, and the client starts a new one (the
        specification has a client start a new session on this 404).
        """
        if response.status_code == 404 and self._session is not None:
            await self._inbox.put(
                _Ended(
                    f"the MCP server at {self._url} ended the session (HTTP 404 to its "
                    "Mcp-Session-Id); the client has to start a new session"
                )
            )

    async def _resume(self, events: SseReader, request_id: RequestId) -> None:
        """Resume a request's stream that ended before its reply, from its last event id."""
        for _ in range(_RESUMES):
            if events.last_id is None:
                break
            await asyncio.sleep(_delay(events))
            headers = {**self._headers(post=False), "last-event-id": events.last_id}
            with contextlib.suppress(httpx2.HTTPError):
                async with self._client.stream("GET", self._url, headers=headers) as resumed:
                    if resumed.status_code != 200:
                        break
                    if await self._stream(resumed, events, request_id):
                        return
        await self._put(
            error_reply(
                request_id,
                DOWNSTREAM_UNAVAILABLE,
                "the MCP server ended the request's event stream without answering it",
            )
        )

    async def _refusal(self, response: httpx2.Response, kind: str) -> str:
        """Why the request failed: the server's JSON-RPC error if it sent a readable one."""
        status = response.status_code
        if status == 202:
            return "the MCP server accepted the request (HTTP 202) without answering it"
        if kind == "application/json":
            found = self._read(await _read_body(response, self._limit), None)
            error = found.get("error") if isinstance(found, dict) else None
            if isinstance(error, dict) and isinstance(error.get("message"), str):
                return f"the MCP server answered HTTP {status}: {error['message']}"
            if isinstance(found, Unreadable):
                return f"the MCP server's reply was refused by the Aegis proxy: {found.why}"
        if status == 404 and self._session is not None:
            return "the MCP server ended the session (HTTP 404)"
        if 300 <= status < 400:
            where = response.headers.get("location", "")[:200]
            return f"the MCP server redirected the request (HTTP {status}) to {where!r}"
        return f"the MCP server answered HTTP {status}"

    async def _stream(
        self, response: httpx2.Response, events: SseReader, request_id: RequestId | None
    ) -> bool:
        """Read an event stream's messages; ``True`` once the reply to ``request_id`` came."""
        pieces = response.aiter_bytes()
        async for piece in pieces:
            for _, data in events.feed(piece):
                item = self._read(data, request_id)
                await self._put(item)
                if request_id is not None and _is_reply(item):
                    await self._check_answered(item, request_id)
                    await _drain(response, pieces)
                    return True
        return False

    async def _check_answered(self, item: Message | Unreadable, request_id: RequestId) -> None:
        """Fail the request when the reply on its own body or stream is another request's."""
        answered = item.request_id if isinstance(item, Unreadable) else item["id"]
        if answered != request_id or type(answered) is not type(request_id):
            why = f"the MCP server answered the request as request {answered!r}"
            await self._put(error_reply(request_id, DOWNSTREAM_UNAVAILABLE, why))

    def _read(self, data: bytes | None, request_id: RequestId | None) -> Message | Unreadable:
        """One message as a stdio server's line is read; ``None`` is one past the limit."""
        if data is None:
            return Unreadable(f"a message longer than {self._limit} bytes", request_id, b"")
        item = read_message(data)
        if isinstance(item, Unreadable) and not item.is_request and item.request_id is None:
            # A reply on a request's own stream or body answers that request.
            item.request_id = request_id
        return item

    async def _put(self, item: Message | Exception) -> None:
        answered = _reply_id(item)
        if answered is not None and answered in self._exchanges:
            self._replied.add(answered)
        if (
            isinstance(item, dict)
            and self._initialize is not None
            and item.get("id") == self._initialize
        ):
            result = item.get("result")
            if isinstance(result, dict) and isinstance(result.get("protocolVersion"), str):
                # The initialize reply: later requests name this version.
                self._version = result["protocolVersion"]
        await self._inbox.put(item)

    async def _listen(self) -> None:
        """The GET stream: the server's messages that belong to no request."""
        events = SseReader(self._limit)
        failures = 0
        while failures < _RESUMES:
            headers = self._headers(post=False)
            if events.last_id is not None:
                headers["last-event-id"] = events.last_id
            try:
                async with self._client.stream("GET", self._url, headers=headers) as response:
                    if response.status_code != 200:
                        await _drain(response)  # the connection is reused
                        await self._check_session(response)
                        return  # 405: the server offers no such stream
                    await self._stream(response, events, None)
                failures = 0
            except Exception as exc:  # retried, then given up: calls go on
                _log.debug("the MCP server's GET stream failed: %s", exc)
                failures += 1
            await asyncio.sleep(_delay(events))

    # -------------------------------------------------------------- from the server

    async def messages(self) -> AsyncIterator[Message | Exception]:
        """The server's messages, each read as a stdio server's line is; ends when it is lost.

        Raises:
            ConnectionError: the server could no longer be reached.
        """
        while True:
            item = await self._inbox.get()
            if isinstance(item, _Ended):
                raise ConnectionError(str(item))
            yield item

    async def close(self) -> None:
        """Stop reading, and end the session on the server (DELETE)."""
        tasks = [*self._exchanges.values(), *([self._listener] if self._listener else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        if self._session is not None:
            # Its answer is read as far as _drain reads (not into memory whole), within
            # _CLOSE_WAIT seconds in all: a server answering without end ends nothing.
            with contextlib.suppress(httpx2.HTTPError, TimeoutError):
                async with (
                    asyncio.timeout(_CLOSE_WAIT),
                    self._client.stream(
                        "DELETE", self._url, headers=self._headers(post=False)
                    ) as response,
                ):
                    await _drain(response)


async def _read_body(response: httpx2.Response, limit: int) -> bytes | None:
    """The body, or ``None`` when it is longer than ``limit`` bytes (read no further)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    await _ended(response)
    return b"".join(chunks)


async def _drain(response: httpx2.Response, pieces: AsyncIterator[bytes] | None = None) -> None:
    """Read a response answered already to its end, so that its connection can be reused.

    ``pieces`` is the iterator of its body already begun, if any. Whatever
    comes after a stream's reply is not read as messages (a server ends
    the stream with the reply). A stream that goes on past the bounds is
    left: closed unread, its connection is closed too.
    """
    size = 0
    try:
        async with asyncio.timeout(_DRAIN_WAIT):
            async for piece in pieces or response.aiter_raw():
                size += len(piece)
                if size > _DRAIN_BYTES:
                    return
    except TimeoutError:
        return
    await _ended(response)


async def _ended(response: httpx2.Response) -> None:
    """A response read to its end: its connection is closed if more came after it.

    Bytes past the end of a response (in the same read) would be taken as
    the answer to the next request sent on the connection, an answer
    written before the request. httpx2 does not look, and hands the
    connection back to its pool as the body ends: the h11 state of that
    connection is reached through the response's stream, and the
    connection closed while it is idle (the pool drops a closed one).
    """
    connection = _connection_of(response)
    state = getattr(connection, "_h11_state", None)
    if connection is None or state is None:
        return  # not HTTP/1.1 over httpcore2's pool
    data, closed = state.trailing_data
    if (data or closed) and connection.is_idle():
        await connection.aclose()


def _connection_of(response: httpx2.Response) -> Any:
    """The httpcore2 connection a response came on, through the streams that wrap its body.

    (httpx2's bound stream, its response stream, the pool's stream, the
    connection's stream); ``None`` if they are not found so: the test of
    a reply followed by another checks that they are.
    """
    stream: Any = response.stream
    for _ in range(5):
        connection = getattr(stream, "_connection", None)
        if connection is not None:
            return connection
        stream = getattr(stream, "_stream", None) or getattr(stream, "_httpcore_stream", None)
    return None


def _delay(events: SseReader) -> float:
    """Seconds to wait before a stream is opened again."""
    return max(events.retry if events.retry is not None else _RESUME_DELAY, _MIN_RETRY)


def _reply_id(item: Message | Exception) -> RequestId | None:
    """The id of the request ``item`` answers, if it is a reply."""
    if isinstance(item, Unreadable):
        return item.request_id if _is_reply(item) else None
    found = item.get("id") if isinstance(item, dict) and _is_reply(item) else None
    return found if isinstance(found, str | int) else None


def _is_reply(item: Message | Exception) -> bool:
    if isinstance(item, Unreadable):
        return not item.is_request and item.request_id is not None
    return isinstance(item, dict) and "method" not in item


def _what(message: Message) -> str:
    return str(message.get("method") or "response")


def http_transport() -> httpx2.AsyncHTTPTransport:
    """The pool of connections to a server, kept alive for the requests that follow.

    One serves every session of a proxy; each :class:`HttpDownstream`
    makes its own client over it (no redirects followed, reads that wait
    for the server, cookies of its own).
    """
    return httpx2.AsyncHTTPTransport(limits=_LIMITS)
