"""A small real MCP server for the proxy's tests: read, write and delete on a dict.

Run as ``python files_server.py [--http PORT] [--crash-on TOOL] [--hang-on TOOL]
[--release FILE] [--garbage-on TOOL] [--log FILE] [--spawn PIDFILE]``. It serves
over stdio by default, or over
Streamable HTTP on 127.0.0.1:PORT at ``/mcp``. Every tool call it receives is
appended to ``--log`` (one JSON line), so tests can prove what reached it.
With ``--release`` a hung call ends once FILE exists, except a read of ``/forever``.
With ``--spawn`` it starts a child (``sleep``, in the server's process group)
and writes the child's pid to PIDFILE.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import TypedDict

from mcp.server.mcpserver import Context, MCPServer
from mcp.types import ToolAnnotations
from pydantic import BaseModel


class Confirm(BaseModel):
    """What the read tool asks the client for /ask."""

    ok: bool


class ReadOutput(TypedDict):
    """What the read tool returns as structured content."""

    path: str
    content: str


def build(args: argparse.Namespace) -> MCPServer:
    """The server with its three tools, misbehaving where the arguments say."""
    files: dict[str, str] = {"/srv/readme.txt": "hello"}
    server = MCPServer("files", instructions="A tiny file store for tests.")

    def note(tool: str, arguments: dict[str, object]) -> None:
        if args.log:
            with open(args.log, "a", encoding="utf-8") as out:
                out.write(json.dumps({"tool": tool, "arguments": arguments}) + "\n")
        if tool == args.crash_on:
            os._exit(3)
        if tool == args.hang_on:
            deadline = time.monotonic() + 3600
            while time.monotonic() < deadline:
                released = args.release and os.path.exists(args.release)
                if released and arguments.get("path") != "/forever":
                    return
                time.sleep(0.01)
        if tool == args.garbage_on:
            # The SDK points fd 1 at stderr while it serves and keeps the
            # wire on a private descriptor: write the garbage there.
            from mcp.server.stdio import _claims

            claim = _claims.get(1)
            wire = claim.private_fd if claim is not None and claim.private_fd is not None else 1
            os.write(wire, b"this is not JSON-RPC\n")

    @server.tool(
        title="Read a file",
        annotations=ToolAnnotations(readOnlyHint=True, openWorldHint=False),
        meta={"example.com/category": "files"},
    )
    async def read(path: str, ctx: Context) -> ReadOutput:
        """Read the content of a file."""
        note("read", {"path": path})
        if path == "/ask":
            # The server's own requests and notifications to the client, mid-call.
            await ctx.report_progress(1, 2, "asking")
            answer = await ctx.elicit("May I read /ask?", Confirm)
            ok = answer.action == "accept" and answer.data is not None and answer.data.ok
            return {"path": path, "content": f"ok={ok}"}
        return {"path": path, "content": files.get(path, "")}

    @server.tool(annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=False))
    def write(path: str, content: str) -> str:
        """Write a file, replacing any content."""
        note("write", {"path": path, "content": content})
        files[path] = content
        return f"wrote {len(content)} characters to {path}"

    @server.tool(annotations=ToolAnnotations(destructiveHint=True, idempotentHint=True))
    def delete(path: str) -> str:
        """Delete a file."""
        note("delete", {"path": path})
        files.pop(path, None)
        return f"deleted {path}"

    @server.resource("file:///srv/readme.txt")
    def readme() -> str:
        """The readme, as a resource."""
        return files.get("/srv/readme.txt", "")

    @server.prompt()
    def summarize(path: str) -> str:
        """Ask for a summary of a file."""
        return f"Summarize {path}"

    return server


def main() -> None:
    """Parse the arguments and serve."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", type=int, default=None)
    parser.add_argument("--crash-on", default=None)
    parser.add_argument("--hang-on", default=None)
    parser.add_argument("--release", default=None)
    parser.add_argument("--garbage-on", default=None)
    parser.add_argument("--log", default=None)
    parser.add_argument("--spawn", default=None)
    args = parser.parse_args()
    if args.spawn:
        import subprocess

        child = subprocess.Popen(["sleep", "3600"])
        with open(args.spawn, "w", encoding="utf-8") as out:
            out.write(str(child.pid))
    server = build(args)
    if args.http is None:
        server.run("stdio")
    else:
        server.run("streamable-http", host="127.0.0.1", port=args.http)


if __name__ == "__main__":
    main()
