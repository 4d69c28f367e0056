"""A Streamable HTTP MCP server that answers calls with scripted bytes, for the proxy's tests.

Run as ``python hostile_http_server.py PORT REPLIES [LISTS]``: REPLIES is a
JSON file holding a list of reply templates. It answers ``initialize``
(giving a session id), ``tools/list`` (one tool, ``read``) and ``ping``
like a server should, except that with LISTS (a JSON file of templates
too) its Nth ``tools/list`` is answered with template N while there is
one; a ``tools/call`` of ``read`` with ``path`` ``"json/N"`` is
answered with template N as a JSON body, ``"sse/N"`` with it as the one
event of an SSE stream, ``{id}`` replaced by the call's id (JSON). GET is
refused with 405; notifications get 202.
"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(sys.argv[1])
with open(sys.argv[2], encoding="utf-8") as source:
    REPLIES: list[str] = json.load(source)
LISTS: list[str] = []
if len(sys.argv) > 3:
    with open(sys.argv[3], encoding="utf-8") as source:
        LISTS = json.load(source)
TOOL = {
    "name": "read",
    "inputSchema": {"type": "object", "properties": {"path": {"type": "string"}}},
}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # the base's name
        pass

    def _send(self, status: int, body: bytes = b"", kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(body)))
        self.send_header("mcp-session-id", "hostile-session")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._send(405)

    def do_DELETE(self) -> None:
        self._send(200)

    def do_POST(self) -> None:
        message = json.loads(self.rfile.read(int(self.headers["content-length"])))
        method, request_id = message.get("method"), message.get("id")
        if method is None or request_id is None:
            self._send(202)
            return
        if method == "initialize":
            result = {
                "protocolVersion": message["params"]["protocolVersion"],
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "hostile-http", "version": "1"},
            }
        elif method == "tools/list" and LISTS:
            raw = LISTS.pop(0).replace("{id}", json.dumps(request_id)).encode()
            self._send(200, raw)
            return
        elif method == "tools/list":
            result = {"tools": [TOOL]}
        elif method == "tools/call":
            how, _, index = message["params"]["arguments"]["path"].partition("/")
            raw = REPLIES[int(index)].replace("{id}", json.dumps(request_id)).encode()
            if how == "sse":
                self._send(
                    200, b"event: message\r\ndata: " + raw + b"\r\n\r\n", "text/event-stream"
                )
            else:
                self._send(200, raw)
            return
        else:
            result = {}
        self._send(200, json.dumps({"jsonrpc": "2.0", "id": request_id, "result": result}).encode())


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
