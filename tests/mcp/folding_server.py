"""A raw stdio MCP server that reads JSON the way Go's encoding/json does, and logs every line.

Run as ``python folding_server.py --log FILE``. Go's decoder (behind the Go
MCP SDK before CVE-2026-27896, mark3labs/mcp-go and hand-written Go servers)
matches member names to fields ignoring case and Unicode simple folding,
and the last matching member wins. This server does the same, so a test can
show what such a server would run: each raw line it receives is logged as
``{"raw": ...}`` and each tool it runs as ``{"ran": name, "arguments": ...}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

TOOLS = [
    {
        "name": name,
        "description": f"{name} a file",
        "inputSchema": {
            "type": "object",
            "properties": {
                "path": {"type": "string"},
                "paths": {"type": "array"},
                "force": {"type": "boolean"},
                "count": {"type": "integer"},
                "options": {"$ref": "#/$defs/Options"},
                "remote": {"$ref": "https://schemas.example/options.json"},
                "named": {"type": "object", "additionalProperties": {"$ref": "#/$defs/Options"}},
            },
            "$defs": {"Options": {"type": "object", "properties": {"force": {"type": "boolean"}}}},
        },
    }
    for name in ("read", "delete")
] + [
    # A schema that names less than the server binds (mcp-go's BindArguments
    # fills every field of its struct, whatever the schema declares).
    {
        "name": "read_narrow",
        "description": "read_narrow a file",
        "inputSchema": {"type": "object", "properties": {"path": {"type": "string"}}},
    }
]


def fold(name: str) -> str:
    """Go's fold of a member name: each rune to upper case of its lower case."""
    out = []
    for char in name:
        lower = char.lower()
        lower = lower[0] if len(lower) != 1 else lower
        upper = lower.upper()
        out.append(upper if len(upper) == 1 else lower)
    return "".join(out)


def member(obj: Any, field: str) -> Any:
    """The value Go would decode into ``field``: the last member whose name folds alike."""
    if not isinstance(obj, list):
        return obj.get(field) if isinstance(obj, dict) else None
    found = None
    for name, value in obj:
        if fold(name) == fold(field):
            found = value
    return found


def main() -> None:
    """Serve stdin until it closes."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--log", required=True)
    args = parser.parse_args()

    def log(entry: dict[str, Any]) -> None:
        with open(args.log, "a", encoding="utf-8") as out:
            out.write(json.dumps(entry) + "\n")

    def plain(value: Any) -> Any:
        if isinstance(value, list) and all(isinstance(p, tuple) for p in value) and value:
            return {k: plain(v) for k, v in value}
        return value

    for line in sys.stdin:
        if not line.strip():
            continue
        log({"raw": line.rstrip("\n")})
        message = json.loads(line, object_pairs_hook=list)
        method, request_id = member(message, "method"), member(message, "id")
        if request_id is None:
            continue
        result: dict[str, Any] = {}
        if method == "initialize":
            result = {
                "protocolVersion": "2025-11-25",
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "folding", "version": "1"},
            }
        elif method == "tools/list":
            result = {"tools": TOOLS}
        elif method == "tools/call":
            params = member(message, "params")
            name, arguments = member(params, "name"), plain(member(params, "arguments"))
            log({"ran": name, "arguments": arguments})
            result = {"content": [{"type": "text", "text": f"ran {name}"}]}
        reply = {"jsonrpc": "2.0", "id": plain(request_id), "result": result}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
