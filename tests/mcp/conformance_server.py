"""An MCP server offering what the conformance suite's server scenarios ask for.

The suite (``@modelcontextprotocol/conformance``) tests a server through
tools, resources and prompts of fixed names (``test_simple_text``,
``test://static-text``, ``test_simple_prompt`` ...), described in each
scenario. This server, written on the official Python SDK, offers them so
that a scenario's outcome says something about the transport in between
(here: the proxy), not about a missing tool.

Run as ``python conformance_server.py`` (stdio) or ``--http PORT``
(Streamable HTTP on 127.0.0.1:PORT at ``/mcp``, resumable, with DNS
rebinding protection).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import itertools
import json
import struct
import warnings
import wave
import zlib
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp.types import (
    AudioContent,
    CallToolResult,
    Completion,
    EmbeddedResource,
    EmptyResult,
    ImageContent,
    JSONRPCMessage,
    SamplingMessage,
    SetLevelRequestParams,
    SubscribeRequestParams,
    TextContent,
    TextResourceContents,
    UnsubscribeRequestParams,
)

# The suite still exercises sampling and logging, which newer revisions deprecate.
warnings.filterwarnings("ignore", category=DeprecationWarning)


def _png() -> bytes:
    """A 1x1 red PNG, built here: signature, IHDR, IDAT, IEND."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # 1x1, 8 bits, RGB
    pixels = zlib.compress(b"\x00\xff\x00\x00")  # filter byte, then one red pixel
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def _wav() -> bytes:
    """A tenth of a second of silence as a WAV file."""
    out = io.BytesIO()
    with wave.open(out, "wb") as audio:
        audio.setnchannels(1)
        audio.setsampwidth(2)
        audio.setframerate(8000)
        audio.writeframes(b"\x00\x00" * 800)
    return out.getvalue()


PNG = base64.b64encode(_png()).decode()
WAV = base64.b64encode(_wav()).decode()


class MemoryEvents(EventStore):
    """The events of every stream, in memory, so a client can resume with Last-Event-ID."""

    def __init__(self) -> None:
        self._events: list[tuple[EventId, StreamId, JSONRPCMessage | None]] = []
        self._ids = itertools.count(1)

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        """Keep ``message`` under a new id."""
        event_id = str(next(self._ids))
        self._events.append((event_id, stream_id, message))
        return event_id

    async def replay_events_after(
        self, last_event_id: EventId, send_callback: EventCallback
    ) -> StreamId | None:
        """Send the stream's events after ``last_event_id``; its stream id, or None."""
        found = [i for i, (event_id, _, _) in enumerate(self._events) if event_id == last_event_id]
        if not found:
            return None
        stream = self._events[found[0]][1]
        for event_id, stream_id, message in self._events[found[0] + 1 :]:
            if stream_id == stream and message is not None:
                await send_callback(EventMessage(message, event_id))
        return stream


def _text(text: str) -> TextContent:
    return TextContent(type="text", text=text)


def build() -> MCPServer:  # noqa: PLR0915 - one small function per scenario
    """The server: each tool, resource and prompt one scenario asks for."""
    server = MCPServer("aegis-conformance", version="1.0.0")
    subscribed: set[str] = set()
    levels = {"level": "info"}

    # ------------------------------------------------------------ tools

    @server.tool(description="Returns one text block.")
    def test_simple_text() -> CallToolResult:
        return CallToolResult(content=[_text("This is a simple text response for testing.")])

    @server.tool(description="Returns one PNG image.")
    def test_image_content() -> CallToolResult:
        return CallToolResult(content=[ImageContent(type="image", data=PNG, mime_type="image/png")])

    @server.tool(description="Returns one WAV clip.")
    def test_audio_content() -> CallToolResult:
        return CallToolResult(content=[AudioContent(type="audio", data=WAV, mime_type="audio/wav")])

    @server.tool(description="Returns one embedded text resource.")
    def test_embedded_resource() -> CallToolResult:
        resource = TextResourceContents(
            uri="test://embedded-resource",
            mime_type="text/plain",
            text="This is an embedded resource content.",
        )
        return CallToolResult(content=[EmbeddedResource(type="resource", resource=resource)])

    @server.tool(description="Returns text, an image and a resource.")
    def test_multiple_content_types() -> CallToolResult:
        resource = TextResourceContents(
            uri="test://mixed-content-resource",
            mime_type="application/json",
            text=json.dumps({"test": "data", "value": 123}),
        )
        return CallToolResult(
            content=[
                _text("Multiple content types test:"),
                ImageContent(type="image", data=PNG, mime_type="image/png"),
                EmbeddedResource(type="resource", resource=resource),
            ]
        )

    @server.tool(description="Logs three messages while it runs.")
    async def test_tool_with_logging(ctx: Context) -> str:
        for step, message in enumerate(
            ("Tool execution started", "Tool processing data", "Tool execution completed")
        ):
            if step:
                await asyncio.sleep(0.05)
            await ctx.session.send_log_message("info", message, related_request_id=ctx.request_id)
        return "Logged three messages."

    @server.tool(description="Always fails.")
    def test_error_handling() -> CallToolResult:
        text = "This tool intentionally returns an error for testing"
        return CallToolResult(content=[_text(text)], is_error=True)

    @server.tool(description="Reports progress 0, 50 and 100 of 100.")
    async def test_tool_with_progress(ctx: Context) -> str:
        for step, done in enumerate((0, 50, 100)):
            if step:
                await asyncio.sleep(0.05)
            await ctx.report_progress(done, 100)
        return "Progress reported."

    @server.tool(description="Asks the client's model to answer the prompt.")
    async def test_sampling(prompt: str, ctx: Context) -> str:
        reply = await ctx.session.create_message(
            [SamplingMessage(role="user", content=_text(prompt))],
            max_tokens=100,
            related_request_id=ctx.request_id,
        )
        answer = reply.content.text if isinstance(reply.content, TextContent) else str(reply)
        return f"LLM response: {answer}"

    async def elicit(ctx: Context, message: str, schema: dict[str, Any]) -> str:
        result = await ctx.session.elicit_form(message, schema, related_request_id=ctx.request_id)
        return f"action={result.action}, content={json.dumps(result.content)}"

    @server.tool(description="Asks the user for a name and an email address.")
    async def test_elicitation(message: str, ctx: Context) -> str:
        schema = {
            "type": "object",
            "properties": {
                "username": {"type": "string", "description": "User's response"},
                "email": {"type": "string", "description": "User's email address"},
            },
            "required": ["username", "email"],
        }
        return "User response: " + await elicit(ctx, message, schema)

    @server.tool(description="Asks the user with a default for every primitive type.")
    async def test_elicitation_sep1034_defaults(ctx: Context) -> str:
        schema = {
            "type": "object",
            "properties": {
                "name": {"type": "string", "default": "John Doe"},
                "age": {"type": "integer", "default": 30},
                "score": {"type": "number", "default": 95.5},
                "status": {
                    "type": "string",
                    "enum": ["active", "inactive", "pending"],
                    "default": "active",
                },
                "verified": {"type": "boolean", "default": True},
            },
        }
        return "Elicitation completed: " + await elicit(ctx, "Your details", schema)

    @server.tool(description="Asks the user through every kind of enum field.")
    async def test_elicitation_sep1330_enums(ctx: Context) -> str:
        def titled(prefix: str, titles: tuple[str, ...]) -> list[dict[str, str]]:
            return [{"const": f"{prefix}{n}", "title": t} for n, t in enumerate(titles, 1)]

        schema = {
            "type": "object",
            "properties": {
                "untitledSingle": {"type": "string", "enum": ["option1", "option2", "option3"]},
                "titledSingle": {
                    "type": "string",
                    "oneOf": titled("value", ("First Option", "Second Option", "Third Option")),
                },
                "legacyEnum": {
                    "type": "string",
                    "enum": ["opt1", "opt2", "opt3"],
                    "enumNames": ["Option One", "Option Two", "Option Three"],
                },
                "untitledMulti": {
                    "type": "array",
                    "items": {"type": "string", "enum": ["option1", "option2", "option3"]},
                },
                "titledMulti": {
                    "type": "array",
                    "items": {
                        "anyOf": titled("value", ("First Choice", "Second Choice", "Third Choice"))
                    },
                },
            },
        }
        return "Elicitation completed: " + await elicit(ctx, "Pick your options", schema)

    @server.tool(description="Closes its SSE stream mid-call; the result comes on resumption.")
    async def test_reconnection(ctx: Context) -> str:
        await asyncio.sleep(0.1)
        await ctx.close_sse_stream()
        await asyncio.sleep(0.3)
        return "Reconnection test completed."

    @server.tool(description="Tool with JSON Schema 2020-12 features")
    def json_schema_2020_12_tool(name: str = "", address: dict[str, str] | None = None) -> str:
        return f"{name} at {address}"

    # The schema as written, 2020-12 keywords and all, not the one derived from the signature.
    schema_tool = server._tool_manager.get_tool("json_schema_2020_12_tool")
    assert schema_tool is not None
    schema_tool.parameters = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "$defs": {
            "address": {
                "type": "object",
                "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
            }
        },
        "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
        "additionalProperties": False,
    }

    # ------------------------------------------------------------ resources

    @server.resource(
        "test://static-text", name="static-text", description="A static text resource.",
        mime_type="text/plain",
    )  # fmt: skip
    def static_text() -> str:
        return "This is the content of the static text resource."

    @server.resource(
        "test://static-binary", name="static-binary", description="A static PNG image.",
        mime_type="image/png",
    )  # fmt: skip
    def static_binary() -> bytes:
        return _png()

    @server.resource(
        "test://watched-resource", name="watched-resource",
        description="A resource clients may subscribe to.", mime_type="text/plain",
    )  # fmt: skip
    def watched() -> str:
        return "Watched resource content."

    @server.resource(
        "test://template/{id}/data", name="template-data",
        description="Data for an id.", mime_type="application/json",
    )  # fmt: skip
    def template_data(id: str) -> str:
        return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"})

    async def subscribe(_ctx: Any, params: SubscribeRequestParams) -> EmptyResult:
        subscribed.add(str(params.uri))
        return EmptyResult()

    async def unsubscribe(_ctx: Any, params: UnsubscribeRequestParams) -> EmptyResult:
        subscribed.discard(str(params.uri))
        return EmptyResult()

    async def set_level(_ctx: Any, params: SetLevelRequestParams) -> EmptyResult:
        levels["level"] = params.level
        return EmptyResult()

    lowlevel = server._lowlevel_server
    lowlevel.add_request_handler("resources/subscribe", SubscribeRequestParams, subscribe)
    lowlevel.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, unsubscribe)
    lowlevel.add_request_handler("logging/setLevel", SetLevelRequestParams, set_level)

    # ------------------------------------------------------------ prompts

    @server.prompt(description="A prompt without arguments.")
    def test_simple_prompt() -> str:
        return "This is a simple prompt for testing."

    @server.prompt(description="A prompt with two arguments.")
    def test_prompt_with_arguments(arg1: str, arg2: str) -> str:
        return f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'"

    @server.prompt(description="A prompt embedding a resource.")
    def test_prompt_with_embedded_resource(resourceUri: str) -> list[dict[str, Any]]:
        resource = {
            "uri": resourceUri,
            "mimeType": "text/plain",
            "text": "Embedded resource content for testing.",
        }
        return [
            {"role": "user", "content": {"type": "resource", "resource": resource}},
            {"role": "user", "content": _text("Please process the embedded resource above.")},
        ]

    @server.prompt(description="A prompt with an image.")
    def test_prompt_with_image() -> list[dict[str, Any]]:
        image = ImageContent(type="image", data=PNG, mime_type="image/png")
        return [
            {"role": "user", "content": image},
            {"role": "user", "content": _text("Please analyze the image above.")},
        ]

    @server.completion()
    async def complete(ref: Any, argument: Any, context: Any) -> Completion:
        values = [v for v in ("paris", "park", "party") if v.startswith(argument.value)]
        return Completion(values=values, total=len(values), has_more=False)

    return server


def main() -> None:
    """Parse the arguments and serve."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", type=int, default=None)
    args = parser.parse_args()
    server = build()
    if args.http is None:
        server.run("stdio")
    else:
        server.run(
            "streamable-http",
            host="127.0.0.1",
            port=args.http,
            event_store=MemoryEvents(),
            retry_interval=200,
        )


if __name__ == "__main__":
    main()
