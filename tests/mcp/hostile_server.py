"""An MCP server over stdio that misbehaves on purpose, for the proxy's hostile-server tests.

Run as ``python hostile_server.py MODE [ARG]``. It answers ``initialize``
and ``tools/list`` (one tool, ``read``) like a server should, except in
the modes that hang; what it does with a ``tools/call`` is the mode:

- ``hang-initialize``: never answers anything, nor exits when its stdin closes.
- ``stall-list``: answers ``initialize``, never ``tools/list``, nor exits when its stdin closes.
- ``raw TEMPLATE``: writes ``TEMPLATE`` with ``{id}`` replaced by the call's id (JSON).
- ``half-line``: writes the start of its reply, then stops without a newline.
- ``long-line BYTES``: writes a reply of ``BYTES`` bytes (its id last), then a good one to ping.
- ``stray-ids``: first answers ids never asked, then the call itself.
- ``flood COUNT``: sends COUNT notifications, then the reply.
- ``garbage COUNT``: writes COUNT lines that are not JSON, then the reply.
- ``bad-request``: sends a request of its own (``roots/list``) holding ``NaN``, under
  the call's own id; answers the call once it has its answer.
- ``cancel-own``: sends two requests of its own (ids 2 and 1), cancels its request 1,
  then answers the call.
- ``requests COUNT``: sends COUNT requests of its own (``roots/list``) without waiting,
  then answers the call.

Every answer it gets to a request of its own is appended to ``$HOSTILE_LOG`` as
``{"answer": MESSAGE}``.

Every ``tools/call`` it receives is appended to the file ``$HOSTILE_LOG`` when set.
With ``$HOSTILE_PIDS`` set, it writes its pid to that file.
"""

from __future__ import annotations

import json
import os
import sys
import time

MODE = sys.argv[1]
ARG = sys.argv[2] if len(sys.argv) > 2 else ""
OUT = sys.stdout.buffer
SCHEMA = {"type": "object", "properties": {"path": {"type": "string"}}}
TOOL = {"name": "read", "inputSchema": SCHEMA}


def write(data: bytes) -> None:
    OUT.write(data)
    OUT.flush()


def reply(request_id: object, result: dict[str, object]) -> None:
    write(json.dumps({"jsonrpc": "2.0", "id": request_id, "result": result}).encode() + b"\n")


def text(value: str) -> dict[str, object]:
    return {"content": [{"type": "text", "text": value}], "isError": False}


#: calls answered once the server's own request is answered (``bad-request``)
WAITING: list[object] = []


def ask(own_id: object) -> None:
    request = {"jsonrpc": "2.0", "id": own_id, "method": "roots/list"}
    write(json.dumps(request).encode() + b"\n")


def log(entry: object) -> None:
    path = os.environ.get("HOSTILE_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(entry) + "\n")


def on_call(request_id: object) -> None:
    rid = json.dumps(request_id)
    if MODE == "raw":
        write(ARG.replace("{id}", rid).encode() + b"\n")
    elif MODE == "half-line":
        write(b'{"jsonrpc": "2.0", "id": ' + rid.encode() + b', "result": {"content": [')
        time.sleep(3600)
    elif MODE == "long-line":
        pad = "a" * int(ARG)
        body = {"jsonrpc": "2.0", "result": text(pad), "id": request_id}
        write(json.dumps(body).encode() + b"\n")
    elif MODE == "stray-ids":
        for stray in (10_000, "stray", -1):
            reply(stray, text("not yours"))
        reply(request_id, text("yours"))
    elif MODE == "garbage":
        for i in range(int(ARG)):
            write(b"this is not json %d\n" % i)
        reply(request_id, text("after the garbage"))
    elif MODE == "bad-request":
        WAITING.append(request_id)
        write(b'{"jsonrpc": "2.0", "id": ' + rid.encode() + b', "method": "roots/list", '
              b'"params": {"n": NaN}}\n')  # fmt: skip
    elif MODE == "cancel-own":
        for own in (2, 1):
            ask(own)
        cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled",
                  "params": {"requestId": 1, "reason": "changed my mind"}}  # fmt: skip
        write(json.dumps(cancel).encode() + b"\n")
        reply(request_id, text("ok"))
    elif MODE == "requests":
        for i in range(int(ARG)):
            ask(f"r{i}")
        reply(request_id, text("ok"))
    elif MODE == "flood":
        note = {"jsonrpc": "2.0", "method": "notifications/message",
                "params": {"level": "info", "data": "flood"}}  # fmt: skip
        line = json.dumps(note).encode() + b"\n"
        for _ in range(int(ARG)):
            write(line)
        reply(request_id, text("after the flood"))
    else:
        reply(request_id, text("ok"))


def main() -> None:
    pids = os.environ.get("HOSTILE_PIDS")
    if pids:
        with open(pids, "w", encoding="utf-8") as out:
            out.write(f"{os.getpid()}\n")
    for raw in sys.stdin.buffer:
        if MODE == "hang-initialize":
            continue
        message = json.loads(raw)
        method, request_id = message.get("method"), message.get("id")
        if method is None and request_id is not None:  # an answer to a request of its own
            log({"answer": message})
            if WAITING:
                reply(WAITING.pop(0), text("ok"))
            continue
        if request_id is None or method is None:
            continue
        if method == "initialize":
            reply(request_id, {
                "protocolVersion": message["params"]["protocolVersion"],
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "hostile", "version": "1"},
            })  # fmt: skip
        elif method == "tools/list":
            if MODE == "stall-list":
                continue
            reply(request_id, {"tools": [TOOL]})
        elif method == "tools/call":
            log(message["params"])
            on_call(request_id)
        else:
            reply(request_id, {})
    if MODE in ("hang-initialize", "stall-list"):
        time.sleep(3600)


if __name__ == "__main__":
    main()
