"""JSON-RPC 2.0 framing for the proxy: classify what arrives, build what goes out.

Pure and dependency-free. The proxy judges every frame a client sends here,
before anything reaches the downstream server: one frame becomes either one
message the proxy will act on, or the error reply that ends it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "BATCH_REFUSED",
    "DOWNSTREAM_UNAVAILABLE",
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "POLICY_REFUSED",
    "Frame",
    "Message",
    "RequestId",
    "error_reply",
    "parse_frame",
    "result_reply",
]

#: a JSON-RPC id as MCP allows it: a string or an integer, never null
RequestId = str | int
#: a decoded JSON-RPC message
Message = dict[str, Any]

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# Implementation-defined codes (-32000..-32019 is the implementation band; the
# SDK uses -32000 and -32001 itself).
#: the policy refused a request that is not a tool call
POLICY_REFUSED = -32010
#: the downstream server is gone, hung, or answered garbage
DOWNSTREAM_UNAVAILABLE = -32011
#: JSON-RPC batches are refused as a whole
BATCH_REFUSED = INVALID_REQUEST


def error_reply(request_id: RequestId | None, code: int, message: str, data: Any = None) -> Message:
    """A JSON-RPC error response."""
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


def result_reply(request_id: RequestId, result: dict[str, Any]) -> Message:
    """A JSON-RPC success response."""
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


Kind = Literal["request", "notification", "response"]


@dataclass(frozen=True, slots=True)
class Frame:
    """What one frame from the client turned out to be.

    Exactly one of ``message`` (with its ``kind``) and ``replies`` is set:
    a message to act on, or the error replies that answer a frame the proxy
    refuses (empty for a refused notification, which gets no answer).
    """

    kind: Kind | None = None
    message: Message | None = None
    replies: tuple[Message, ...] = ()
    #: the frame was a batch: its replies go back as one JSON array
    batch: bool = False
    #: the refused batch's members that are JSON objects, for the audit trail
    members: tuple[Message, ...] = ()


def _valid_id(value: object) -> bool:
    # bool is an int to Python, never to JSON-RPC; floats are ambiguous ids.
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _refuse(value: object, why: str) -> Frame:
    """The error reply to an invalid message, with its id when it has a usable one."""
    request_id = value.get("id") if isinstance(value, dict) else None
    if not _valid_id(request_id):
        request_id = None
    return Frame(replies=(error_reply(request_id, INVALID_REQUEST, why),))


def classify(value: object) -> Frame:
    """Check one decoded JSON value as a single JSON-RPC 2.0 message."""
    if not isinstance(value, dict):
        return _refuse(value, f"Invalid Request: expected a JSON object, got {_kind(value)}")
    if value.get("jsonrpc") != "2.0":
        return _refuse(value, 'Invalid Request: "jsonrpc" must be "2.0"')
    has_id = "id" in value
    if "method" in value:
        method = value["method"]
        if not isinstance(method, str) or not method:
            return _refuse(value, 'Invalid Request: "method" must be a non-empty string')
        if "params" in value and not isinstance(value["params"], dict):
            return _refuse(value, 'Invalid Request: MCP "params" must be a JSON object')
        if not has_id:
            return Frame(kind="notification", message=value)
        if not _valid_id(value["id"]):
            return _refuse(value, 'Invalid Request: "id" must be a string or an integer')
        return Frame(kind="request", message=value)
    if not has_id or not _valid_id(value["id"]):
        return _refuse(value, 'Invalid Request: a message needs a "method", or an "id" to answer')
    has_result, has_error = "result" in value, "error" in value
    if has_result == has_error:
        return _refuse(
            value, 'Invalid Request: a response carries exactly one of "result" and "error"'
        )
    if has_error and not isinstance(value["error"], dict):
        return _refuse(value, 'Invalid Request: "error" must be a JSON object')
    if has_result and not isinstance(value["result"], dict):
        return _refuse(value, 'Invalid Request: MCP "result" must be a JSON object')
    return Frame(kind="response", message=value)


def parse_frame(raw: bytes | str) -> Frame:
    """Decode one frame (a stdio line or an HTTP body) into a :class:`Frame`.

    Invalid JSON is a parse error; a JSON array (a JSON-RPC batch) is
    refused as a whole, with one error per member that carries an id, so
    that nothing in it reaches the server undecided. MCP dropped batches in
    its 2025-06-18 revision; the SDK's clients never send them.
    """
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError and invalid UTF-8 in bytes.
        return Frame(replies=(error_reply(None, PARSE_ERROR, f"Parse error: {_short(exc)}"),))
    if isinstance(value, list):
        members = tuple(m for m in value if isinstance(m, dict))
        return Frame(replies=batch_refusal(value), batch=bool(value), members=members)
    return classify(value)


def batch_refusal(batch: list[Any]) -> tuple[Message, ...]:
    """The error replies that refuse a JSON-RPC batch as a whole."""
    why = (
        "Invalid Request: JSON-RPC batches are not accepted by the Aegis proxy; "
        "send each message on its own (MCP removed batching in 2025-06-18)"
    )
    if not batch:
        return (error_reply(None, INVALID_REQUEST, "Invalid Request: empty batch"),)
    replies = [
        error_reply(member["id"], BATCH_REFUSED, why)
        for member in batch
        if isinstance(member, dict) and "method" in member and _valid_id(member.get("id"))
    ]
    return tuple(replies) or (error_reply(None, BATCH_REFUSED, why),)


def _kind(value: object) -> str:
    return {list: "an array", str: "a string", type(None): "null", bool: "a boolean"}.get(
        type(value), "a number"
    )


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."
