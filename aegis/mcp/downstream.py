"""Reaching the governed MCP server through the official SDK's client transports.

The server is a child process spoken to over stdio (``stdio_client``) or a
URL spoken to over Streamable HTTP (``streamable_http_client``). Messages
cross as plain dictionaries: the SDK's envelope types keep ``params`` and
``result`` as free-form objects, so nothing the server says is dropped.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from aegis.errors import ConfigurationError
from aegis.mcp._jsonrpc import Message

__all__ = ["SdkDownstream", "check_server", "open_downstream"]

_log = logging.getLogger("aegis.mcp")

try:
    from mcp.client.stdio import StdioServerParameters, stdio_client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared.message import ClientMessageMetadata, SessionMessage
    from mcp.types import jsonrpc_message_adapter
except ImportError as exc:  # pragma: no cover - the [mcp] extra is installed in CI
    raise ImportError(
        'the Aegis MCP proxy needs the mcp SDK: pip install "aegis-runtime[mcp]"'
    ) from exc

_VERSION_HEADER = "MCP-Protocol-Version"


class SdkDownstream:
    """A downstream connection over the SDK's read and write streams."""

    def __init__(self, read_stream: Any, write_stream: Any, *, http: bool) -> None:
        self._read = read_stream
        self._write = write_stream
        self._http = http
        self._version: str | None = None

    async def send(self, message: Message) -> None:
        """Send one message; over HTTP it carries the negotiated protocol version."""
        envelope = jsonrpc_message_adapter.validate_python(message, by_name=False)
        metadata = None
        if self._http and self._version is not None and message.get("method") != "initialize":
            metadata = ClientMessageMetadata(headers={_VERSION_HEADER: self._version})
        await self._write.send(SessionMessage(envelope, metadata=metadata))

    async def messages(self) -> AsyncIterator[Message | Exception]:
        """The server's messages until it closes the connection."""
        async for item in self._read:
            if isinstance(item, Exception):
                yield item
                continue
            message: Message = item.message.model_dump(
                by_alias=True, mode="json", exclude_unset=True
            )
            result = message.get("result")
            if isinstance(result, dict) and isinstance(result.get("protocolVersion"), str):
                # The initialize reply: later HTTP requests must name this version.
                self._version = result["protocolVersion"]
            yield message


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


@asynccontextmanager
async def open_downstream(
    command: Sequence[str] = (), url: str | None = None
) -> AsyncIterator[SdkDownstream]:
    """Start ``command`` as a stdio MCP server, or connect to ``url``; close it afterwards.

    The child process gets the proxy's whole environment (the client that
    starts the proxy configures it as it would configure the server) and
    writes its stderr to the proxy's.

    Raises:
        ConfigurationError: neither or both of ``command`` and ``url``, or a
            command that cannot be started.
    """
    check_server(command, url)
    if url:
        async with streamable_http_client(url) as (read_stream, write_stream):
            yield SdkDownstream(read_stream, write_stream, http=True)
        return
    parameters = StdioServerParameters(
        command=command[0], args=list(command[1:]), env=dict(os.environ)
    )
    async with stdio_client(parameters, errlog=sys.stderr) as (read_stream, write_stream):
        yield SdkDownstream(read_stream, write_stream, http=False)
