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
import json
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, suppress
from typing import Any

from aegis.mcp._jsonrpc import INVALID_REQUEST, Message, RequestId, error_reply, parse_frame
from aegis.mcp.proxy import ProxySession, SendToClient

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "serve_stdio"]

_log = logging.getLogger("aegis.mcp")

#: the largest frame a client may send (4 MiB); larger ones are refused
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024


async def _frames(reader: asyncio.StreamReader) -> AsyncIterator[bytes | None]:
    """Each line of input, or ``None`` for a line past the reader's limit."""
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                yield exc.partial  # a last line without its newline
            return
        except asyncio.LimitOverrunError:
            await _skip_line(reader)
            yield None
            continue
        if line.strip():
            yield line


async def _skip_line(reader: asyncio.StreamReader) -> None:
    while True:
        try:
            await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError as exc:
            await reader.readexactly(exc.consumed)
        except asyncio.IncompleteReadError:
            return
        else:
            return


async def _open_reader(fd: int, limit: int) -> asyncio.StreamReader:
    """A stream reader on ``fd``: a pipe transport, or a thread for other files."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit)
    try:
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
        line = json.dumps(message, ensure_ascii=False, separators=(",", ":")) + "\n"
        async with self._lock:
            if self._writer.is_closing():
                return
            self._writer.write(line.encode("utf-8", "surrogatepass"))
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
    """
    reader = await _open_reader(input_fd, max_message_bytes)
    writer, transport = await _open_writer(output_fd)
    wire = _Wire(writer)
    try:
        async with open_session(wire.send) as session:
            pump = asyncio.create_task(session.pump())
            try:
                async for frame in _frames(reader):
                    if frame is None:
                        _log.warning("refused a message over %d bytes", max_message_bytes)
                        await wire.send(
                            error_reply(
                                None,
                                INVALID_REQUEST,
                                f"Invalid Request: message larger than {max_message_bytes} bytes",
                            )
                        )
                        continue
                    parsed = parse_frame(frame)
                    if parsed.replies:
                        why = parsed.replies[0]["error"]["message"]
                        _log.warning("refused a message: %s", why)
                        for member in parsed.members:
                            await session.record_refused(member, parsed.why)
                        if parsed.batch:
                            await wire.send(list(parsed.replies))
                        else:
                            for reply in parsed.replies:
                                await wire.send(reply)
                    elif parsed.message is not None and parsed.kind is not None:
                        await session.from_client(parsed.kind, parsed.message)
                # The client closed its end: let quick answers still go out.
                await session.drain(_EOF_GRACE)
            finally:
                await session.close()
                pump.cancel()
                with suppress(asyncio.CancelledError):
                    await pump
    finally:
        if transport is not None:
            transport.close()
