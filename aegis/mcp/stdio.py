"""The proxy's stdio face: newline-delimited JSON-RPC on a pair of pipes.

The SDK's ``stdio_server`` parses each line into its envelope types and
hands a bare exception to the session for anything else, losing the id a
client needs to match the error. This loop reads lines itself so that each
frame gets a deliberate answer: a parse error, a refused batch, an
oversized line, a duplicated id, each one a JSON-RPC error, and only a
well-formed message goes on to the :class:`~aegis.mcp.proxy.ProxySession`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import selectors
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, suppress
from typing import Any

from aegis.mcp._jsonrpc import (
    INVALID_REQUEST,
    Message,
    RequestId,
    encode_line,
    error_reply,
    parse_frame,
)
from aegis.mcp._sketch import HEAD_BYTES, sketch_request
from aegis.mcp.downstream import skip_line
from aegis.mcp.proxy import ProxySession, SendToClient

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "ServerGone", "serve_stdio"]

_log = logging.getLogger("aegis.mcp")

#: the largest frame a client may send (4 MiB); larger ones are refused
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024


class ServerGone(Exception):
    """The downstream server went away; the stdio proxy stopped so its host can restart it."""


class _Oversized:
    """A line past the size limit, read only for its top-level ``id`` and kept start."""

    __slots__ = ("head", "request_id")

    def __init__(self, request_id: RequestId | None, head: bytes) -> None:
        self.request_id = request_id
        self.head = head


async def _frames(reader: asyncio.StreamReader) -> AsyncIterator[bytes | _Oversized]:
    """Each line of input, or an :class:`_Oversized` for a line past the reader's limit."""
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                yield exc.partial  # a last line without its newline
            return
        except asyncio.LimitOverrunError:
            scanner = await skip_line(reader, HEAD_BYTES)
            yield _Oversized(scanner.found, bytes(scanner.head))
            continue
        if line.strip():
            yield line


def _pollable(fd: int) -> bool:
    """Whether the event loop can watch ``fd`` (``/dev/null`` and files it cannot)."""
    try:
        with selectors.DefaultSelector() as probe:
            probe.register(fd, selectors.EVENT_READ)
    except (ValueError, OSError):
        return False
    return True


async def _open_reader(fd: int, limit: int) -> asyncio.StreamReader:
    """A stream reader on ``fd``: a pipe transport, or a thread for other files."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit)
    try:
        if not _pollable(fd):
            raise OSError("not pollable")
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", closefd=False)
        )
    except (ValueError, OSError):
        # A regular file (or one the selector refuses): read it on a thread.
        def pump() -> None:
            while True:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    loop.call_soon_threadsafe(reader.feed_eof)
                    return
                loop.call_soon_threadsafe(reader.feed_data, chunk)

        threading.Thread(target=pump, name="aegis-mcp-stdin", daemon=True).start()
    return reader


#: seconds the requests in flight get to finish once the client closes stdin
_EOF_GRACE = 1.0


class _FileWriter:
    """Blocking writes to a file that is not a pipe, off the event loop."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    async def drain(self) -> None:
        return None


async def _open_writer(fd: int) -> tuple[Any, asyncio.BaseTransport | None]:
    loop = asyncio.get_running_loop()
    try:
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(fd, "wb", closefd=False)
        )
    except (ValueError, OSError):
        return _FileWriter(fd), None
    return asyncio.StreamWriter(transport, protocol, None, loop), transport


class _Wire:
    """Writes messages as lines, one whole line at a time."""

    def __init__(self, writer: Any) -> None:
        self._writer = writer
        self._lock = asyncio.Lock()

    async def send(
        self, message: Message | list[Message], related: RequestId | None = None
    ) -> None:
        line = encode_line(message)
        async with self._lock:
            if self._writer.is_closing():
                return
            self._writer.write(line)
            with suppress(ConnectionError):
                await self._writer.drain()


async def serve_stdio(
    open_session: Callable[[SendToClient], AbstractAsyncContextManager[ProxySession]],
    *,
    input_fd: int = 0,
    output_fd: int = 1,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> None:
    """Serve one client on ``input_fd``/``output_fd`` until it closes its end.

    ``open_session(send)`` connects the downstream server and returns the
    session; it is closed when the client goes away.

    Raises:
        ServerGone: the server exited or its connection failed; the requests
            in flight were answered with errors first. A host restarts an
            MCP server whose process ends, never one that keeps answering
            errors, so the proxy ends with its server.
    """
    reader = await _open_reader(input_fd, max_message_bytes)
    writer, transport = await _open_writer(output_fd)
    wire = _Wire(writer)
    try:
        async with open_session(wire.send) as session:
            pump = asyncio.create_task(session.pump())
            relay = asyncio.create_task(_relay(reader, wire, session, max_message_bytes))
            #: why the proxy stopped, when it was stopped (the message it was cancelled with)
            why: str | None = None
            try:
                await asyncio.wait({pump, relay}, return_when=asyncio.FIRST_COMPLETED)
                if relay.done():
                    relay.result()
                    # The client closed its end: let quick answers still go out.
                    await session.drain(_EOF_GRACE)
                else:
                    # The server is gone: the calls in flight fail at once;
                    # let their answers go out, then end.
                    await session.drain(_EOF_GRACE)
                    raise ServerGone(session.gone or "the MCP server went away")
            except asyncio.CancelledError as exc:
                why = str(exc.args[0]) if exc.args else None
                raise
            finally:
                relay.cancel()
                with suppress(asyncio.CancelledError):
                    await relay
                await session.close(why)
                pump.cancel()
                with suppress(asyncio.CancelledError):
                    await pump
    finally:
        if transport is not None:
            transport.close()


async def _relay(
    reader: asyncio.StreamReader, wire: _Wire, session: ProxySession, max_message_bytes: int
) -> None:
    """Pass the client's frames to the session until the client closes its end."""
    async for frame in _frames(reader):
        if isinstance(frame, _Oversized):
            session.refusals.warning(
                "client",
                "refused a message over %d bytes (request %r)",
                max_message_bytes,
                frame.request_id,
            )
            sketch = sketch_request(frame.head, frame.request_id)
            if sketch is not None:
                await session.record_refused(
                    sketch, f"it was larger than {max_message_bytes} bytes (--max-message-bytes)"
                )
            await wire.send(
                error_reply(
                    frame.request_id,
                    INVALID_REQUEST,
                    f"Invalid Request: message larger than {max_message_bytes} bytes "
                    "(the proxy's --max-message-bytes)",
                )
            )
            continue
        parsed = parse_frame(frame)
        if parsed.replies:
            why = parsed.replies[0]["error"]["message"]
            session.refusals.warning("client", "refused a message: %s", why)
            for member in parsed.members:
                await session.record_refused(member, parsed.why)
            if parsed.batch:
                await wire.send(list(parsed.replies))
            else:
                for reply in parsed.replies:
                    await wire.send(reply)
        elif parsed.message is not None and parsed.kind is not None:
            await session.from_client(parsed.kind, parsed.message)
