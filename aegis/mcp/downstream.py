"""Reaching the governed MCP server: a child process over stdio, or a URL.

A URL is spoken to over Streamable HTTP by
:class:`~aegis.mcp.http_downstream.HttpDownstream`, which reads every
message of the server with the reader of a stdio server's lines.

A child process is spoken to by :class:`PipeDownstream`: newline-delimited
JSON on its stdin and stdout, the same wire and the same shutdown sequence
as the SDK's ``stdio_client`` (close stdin, wait, terminate the process
group, kill it), without its per-message task hops and validation. It was
measured: the SDK transport alone cost about 1 ms per call, more than the
whole budget of the proxy (see ``benchmarks/mcp_proxy.py``). The proxy
checks every message's JSON-RPC shape itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from aegis.errors import ConfigurationError
from aegis.mcp._jsonrpc import (
    IdScanner,
    Message,
    Unreadable,
    encode_line,
    read_message,
)

if TYPE_CHECKING:
    from aegis.mcp.http_downstream import HttpDownstream

__all__ = [
    "AEGIS_SECRETS",
    "PipeDownstream",
    "check_server",
    "http_pool",
    "open_downstream",
    "server_environment",
    "skip_line",
]

#: Aegis's own secrets in the environment: the database URL (it may carry a
#: password), the approval tokens, the audit's signing key, the service's
#: session, webhook and OpenID client secrets. The governed server never needs
#: them, and a tool of its that prints its environment would hand them to the
#: agent it governs: with the database's password or the signing key the agent
#: could rewrite the trail or approve its own requests.
AEGIS_SECRETS = frozenset(
    {
        "AEGIS_DB",
        "AEGIS_TOKEN",
        "AEGIS_METRICS_TOKEN",
        "AEGIS_AUDIT_KEY",
        "AEGIS_SESSION_KEY",
        "AEGIS_WEBHOOK_SECRET",
        "AEGIS_OIDC_CLIENT_SECRET",
    }
)


def server_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The governed server's environment: ``environ`` without :data:`AEGIS_SECRETS`."""
    return {name: value for name, value in environ.items() if name not in AEGIS_SECRETS}


#: the longest message a server may send, a line or an HTTP body or event (64 MiB);
#: a longer one is read past and refused, and the request it answers fails
MAX_SERVER_LINE = 64 * 1024 * 1024
#: seconds a server gets to exit after its stdin closes, then after SIGTERM
EXIT_GRACE = 2.0

_log = logging.getLogger("aegis.mcp")


def check_server(command: Sequence[str] = (), url: str | None = None) -> None:
    """Refuse a server given twice, not at all, or as a command that does not exist.

    Raises:
        ConfigurationError: with what to fix.
    """
    if bool(command) == bool(url):
        raise ConfigurationError(
            "give the MCP server either as a command after `--` or with --upstream-url, not both"
        )
    if command and shutil.which(command[0]) is None:
        raise ConfigurationError(
            f"cannot start the MCP server: {command[0]!r} is not an executable on PATH; "
            "check the command after `--`"
        )
    if url and not url.startswith(("http://", "https://")):
        raise ConfigurationError(f"--upstream-url must be an http:// or https:// URL, got {url!r}")


class PipeDownstream:
    """A stdio MCP server in a child process of its own process group."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        limit: int = MAX_SERVER_LINE,
        exit_grace: float = EXIT_GRACE,
    ) -> None:
        self._process = process
        self._limit = limit
        self._grace = exit_grace
        self._stdin = process.stdin
        self._stdout = process.stdout
        self._lock = asyncio.Lock()

    @property
    def returncode(self) -> int | None:
        """The server's exit status, once it has exited."""
        return self._process.returncode

    async def send(self, message: Message) -> None:
        """Write one message as a line; a dead server raises ``ConnectionError``."""
        if self._stdin is None:
            raise ConnectionError("the server's stdin is closed")
        line = encode_line(message)
        async with self._lock:
            self._stdin.write(line)
            await self._stdin.drain()

    async def messages(self) -> AsyncIterator[Message | Exception]:
        """The server's lines as messages; a line the proxy will not use as an :class:`Unreadable`.

        Each line is read by :func:`~aegis.mcp._jsonrpc.read_message`, the
        reader of the client's lines. A line longer than the limit is read
        past (its id kept, nothing else) rather than held in memory.
        """
        if self._stdout is None:
            return
        while True:
            try:
                line = await self._stdout.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:
                if exc.partial.strip():
                    yield Unreadable("a last line without its newline", None, exc.partial)
                return
            except asyncio.LimitOverrunError:
                scanner = await skip_line(self._stdout)
                yield Unreadable(
                    f"a line longer than {self._limit} bytes",
                    scanner.found,
                    b"",
                    is_request=scanner.has_method,
                )
                continue
            if line.strip():
                yield read_message(line)

    async def close(self) -> None:
        """Close stdin, give the server time to exit, then end its process group.

        Stopped while it waits (the proxy's own client sends SIGTERM after
        the same grace, which cancels this), it kills the group at once: a
        server that hangs must not outlive the proxy that started it. Once
        the server has exited, what it left running in its group is killed.
        """
        process = self._process
        if self._stdin is not None:
            with contextlib.suppress(OSError, RuntimeError):
                self._stdin.close()
        try:
            if await _exited(process, self._grace):
                return
            for sig in (signal.SIGTERM, signal.SIGKILL):
                _signal_group(process, sig)
                if await _exited(process, self._grace):
                    return
        except asyncio.CancelledError:
            if process.returncode is None:
                _log.warning("stopped while the MCP server (pid %d) exits: killing it", process.pid)
                _signal_group(process, signal.SIGKILL)
            raise
        finally:
            if process.returncode is not None:
                # Its children (npx's node, a shell's command) stay in its group;
                # the group's id stays reserved while any of them lives.
                _signal_group(process, signal.SIGKILL)
        _log.warning("the MCP server (pid %d) is still alive after SIGKILL", process.pid)


async def skip_line(reader: asyncio.StreamReader, keep: int = 0) -> IdScanner:
    """Read past a line longer than ``reader``'s limit, keeping only its top-level id.

    The scanner that read it says the id (:attr:`~IdScanner.found`),
    whether the line names a method (:attr:`~IdScanner.has_method`), and
    holds the line's first ``keep`` bytes (:attr:`~IdScanner.head`).
    """
    scanner = IdScanner(keep)
    while True:
        try:
            scanner.feed(await reader.readuntil(b"\n"))
        except asyncio.LimitOverrunError as exc:
            scanner.feed(await reader.readexactly(exc.consumed))
        except asyncio.IncompleteReadError as exc:
            scanner.feed(exc.partial)
            return scanner
        else:
            return scanner


def _signal_group(process: asyncio.subprocess.Process, sig: int) -> None:
    """Send ``sig`` to the server's process group (its own: see open_downstream)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


async def _exited(process: asyncio.subprocess.Process, timeout: float) -> bool:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(process.wait(), timeout)
    return process.returncode is not None


@asynccontextmanager
async def http_pool(url: str | None) -> AsyncIterator[Any]:
    """The HTTP connections every session of a proxy reaches ``url`` by; ``None`` without a URL.

    One pool of connections kept alive: a call does not open a connection
    of its own; each session has a client (and cookies) of its own over
    it (see :mod:`aegis.mcp.http_downstream`).

    Raises:
        ConfigurationError: the ``mcp`` extra (httpx2) is not installed.
    """
    if not url:
        yield None
        return
    try:
        from aegis.mcp.http_downstream import http_transport  # noqa: PLC0415  # only for a URL
    except ImportError as exc:
        raise ConfigurationError(
            f'--upstream-url needs the mcp SDK ({exc}): pip install "aegis-runtime[mcp]"'
        ) from exc
    async with http_transport() as transport:
        yield transport


@asynccontextmanager
async def open_downstream(
    command: Sequence[str] = (),
    url: str | None = None,
    *,
    max_line: int = MAX_SERVER_LINE,
    exit_grace: float = EXIT_GRACE,
    pool: Any = None,
) -> AsyncIterator[HttpDownstream | PipeDownstream]:
    """Start ``command`` as a stdio MCP server, or connect to ``url``; close it afterwards.

    ``max_line`` bounds the messages the server may send (lines, bodies, events); ``exit_grace`` is
    the seconds it gets to exit once its stdin closes, then again after
    SIGTERM, before its process group is killed. ``pool`` is the HTTP
    connections (of :func:`http_pool`) to reach ``url`` by, shared with
    the proxy's other sessions; without it the connection has a pool of
    its own.

    The child process gets the proxy's environment (the client that starts
    the proxy configures it as it would configure the server) but for
    Aegis's own secrets (:data:`AEGIS_SECRETS`), and writes its stderr to
    the proxy's.

    Raises:
        ConfigurationError: neither or both of ``command`` and ``url``, or a
            command that cannot be started.
    """
    check_server(command, url)
    if url:
        async with contextlib.AsyncExitStack() as stack:
            if pool is None:
                pool = await stack.enter_async_context(http_pool(url))
            from aegis.mcp.http_downstream import HttpDownstream  # noqa: PLC0415  # with the pool

            remote = HttpDownstream(pool, url, max_line)
            try:
                yield remote
            finally:
                await remote.close()
        return
    try:
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=None,  # the server's log lines go where the proxy's go
            start_new_session=True,  # its own group, so that its children end with it
            limit=max_line,
            env=server_environment(os.environ),
        )
    except OSError as exc:
        raise ConfigurationError(
            f"cannot start the MCP server {command[0]!r}: {exc.strerror or exc}"
        ) from exc
    downstream = PipeDownstream(process, max_line, exit_grace)
    try:
        yield downstream
    finally:
        await downstream.close()
