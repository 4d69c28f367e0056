"""JSON-RPC 2.0 framing for the proxy: classify what arrives, build what goes out.

Pure and dependency-free. The proxy judges every frame a client sends here,
before anything reaches the downstream server: one frame becomes either one
message the proxy will act on, or the error reply that ends it.

Size: one reader for both directions (a client's frames and, since the
server's replies are held to the same checks, the server's lines), so the
strict decoder, the classifier, the error codes and the id scanner for
lines too long to decode share one vocabulary of refusals here. The
scanner (:class:`IdScanner`, about 160 lines, a byte-at-a-time state
machine) is the piece that could move to a module of its own if this one
grows again.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from aegis.mcp._names import Message, RequestId, fold_name
from aegis.mcp._sketch import HEAD_BYTES, sketch_request

__all__ = [
    "BATCH_REFUSED",
    "CLIENT_BUSY",
    "DOWNSTREAM_UNAVAILABLE",
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "POLICY_REFUSED",
    "Frame",
    "IdScanner",
    "Message",
    "RequestId",
    "Unreadable",
    "encode_line",
    "error_reply",
    "fold_name",
    "lookalike_members",
    "parse_frame",
    "read_message",
    "result_reply",
]


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
#: too many of the server's requests wait for the client's answer
CLIENT_BUSY = -32012
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
    #: the refused frame's messages (a batch's members that are JSON objects,
    #: an ambiguous message as decoded leniently), for the audit trail
    members: tuple[Message, ...] = ()
    #: why those messages were refused, for their audit records
    why: str = "it came in a JSON-RPC batch"


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


# -- member names: one reading for every decoder -------------------------------
#
# Python keeps the last of two equal member names; Go's encoding/json (and the
# MCP servers built on it) matches member names to fields ignoring case, with
# Unicode simple folding ("param" + U+017F is "params", U+212A is "k"), and keeps the
# last match. A message whose names two decoders can read differently is
# refused before anything is decided on it.

#: the members of a JSON-RPC message, as the proxy reads them
ENVELOPE_MEMBERS = frozenset({"jsonrpc", "id", "method", "params", "result", "error"})


def _folds(names: Iterable[str]) -> dict[str, str]:
    return {fold_name(name): name for name in names}


def lookalike_members(names: Iterable[str], known: Collection[str] = ()) -> str | None:
    """Why ``names`` (one object's member names) are ambiguous, or ``None``.

    Ambiguous: two names that fold alike (``"name"`` and ``"Name"``), or a
    name that is not in ``known`` but folds like one that is (``"Method"``,
    ``"param\\u017f"``).
    """
    seen: dict[str, str] = {}
    for name in names:
        folded = fold_name(name)
        other = seen.get(folded)
        if other is not None:
            return f"members {other!r} and {name!r} differ only by case or Unicode folding"
        seen[folded] = name
    if known:
        folds = _folds(known)
        for folded, name in seen.items():
            one = folds.get(folded)
            if one is not None and one != name:
                return f"member {name!r} differs from {one!r} only by case or Unicode folding"
    return None


_ENVELOPE_FOLDS: dict[str, str] = _folds(ENVELOPE_MEMBERS)


class _Ambiguous(ValueError):
    """A JSON object whose member names two decoders may read differently."""


def _strict_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        seen = [name for name, _ in pairs]
        twice = next(name for name in seen if seen.count(name) > 1)
        raise _Ambiguous(f"member {twice!r} appears twice in one object")
    if len(value) > 1:
        names = value.keys()
        # The common case in one pass of C: ASCII names, distinct in lower case.
        if not "".join(names).isascii() or len({n.lower() for n in names}) != len(value):
            why = lookalike_members(value)
            if why is not None:
                raise _Ambiguous(why)
    return value


class _NonFinite(ValueError):
    """A number literal no float holds (``1e400`` overflows to infinity)."""


class _Overflow(str):
    """The text of a number literal no float holds, kept to name where it stood."""

    __slots__ = ()


class _NotJson(ValueError):
    """``NaN`` or ``Infinity``: Python reads them, JSON has no such literal."""


def _no_constant(name: str) -> Any:
    raise _NotJson(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NonFinite(text)
    return value


def _kept_float(text: str) -> float | _Overflow:
    value = float(text)
    return value if math.isfinite(value) else _Overflow(text)


def _kept_int(text: str) -> int | _Overflow:
    try:
        return int(text)
    except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
        return _Overflow(text)


def decode_strict(raw: bytes | str) -> Any:
    """Decode JSON refusing duplicate or look-alike member names and non-finite numbers.

    JSON has no infinity, but Python reads ``1e400`` as one: such a number,
    like ``NaN`` and ``Infinity``, is refused rather than decided on as a
    value no server would read the same (or that the proxy could not send on
    as JSON).

    Raises:
        ValueError: not JSON, ambiguous (:class:`_Ambiguous`) or a number
            past a float's range (:class:`_NonFinite`), all ValueErrors.
        RecursionError: nested too deep.
    """
    return json.loads(
        raw,
        object_pairs_hook=_strict_object,
        parse_constant=_no_constant,
        parse_float=_finite_float,
    )


def parse_frame(raw: bytes | str) -> Frame:
    """Decode one frame (a stdio line or an HTTP body) into a :class:`Frame`.

    Invalid JSON is a parse error; a JSON array (a JSON-RPC batch) is
    refused as a whole, with one error per member that carries an id, so
    that nothing in it reaches the server undecided. MCP dropped batches in
    its 2025-06-18 revision; the SDK's clients never send them.

    A message with a member name twice in one object, or two names that
    differ only by case or Unicode folding (``"method"`` and ``"Method"``),
    or a top-level name that folds like a JSON-RPC member without being one
    (``"param\\u017f"``), is an Invalid Request: another decoder (Go's, which
    ignores case) could read a different message from it than the one the
    proxy decides on.
    """
    try:
        value = decode_strict(raw)
    except _Ambiguous as exc:
        return _ambiguous(raw, str(exc))
    except _NonFinite:
        return _non_finite(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, _NotJson) as exc:
        why = f"Parse error: {_short(exc)}"
        return _unread(raw, error_reply(None, PARSE_ERROR, why), f"it was not JSON ({why})")
    except ValueError:
        # Valid JSON with an integer of more digits than Python converts.
        return _non_finite(raw)
    except RecursionError:
        # Valid JSON nested deeper than the proxy reads: refused under its id.
        return _unread(raw, _too_deep(raw), "it was nested deeper than the proxy reads")
    if isinstance(value, list):
        members = tuple(m for m in value if isinstance(m, dict))
        return Frame(replies=batch_refusal(value), batch=bool(value), members=members)
    if isinstance(value, dict):
        for name in value:
            one = _ENVELOPE_FOLDS.get(name.lower() if name.isascii() else fold_name(name))
            if one is not None and one != name:
                why = f"member {name!r} differs from {one!r} only by case or Unicode folding"
                return _ambiguous(raw, why)
    return classify(value)


def _lenient(raw: bytes | str) -> tuple[Any, RequestId | None]:
    """A refused message read leniently for its answer and its audit record.

    Objects are read last-wins and numbers past a float's range are kept as
    their text (:class:`_Overflow`); the id is the message's only when no
    other member folds like ``id``.
    """
    top: list[list[tuple[str, Any]]] = []

    def keep(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        top[:] = [pairs]  # the outermost object is decoded last
        return dict(pairs)

    try:
        value = json.loads(
            raw, object_pairs_hook=keep, parse_float=_kept_float, parse_int=_kept_int
        )
    except (ValueError, RecursionError):
        value = None
    request_id = None
    if isinstance(value, dict) and top:
        ids = [(name, v) for name, v in top[0] if fold_name(name) == "id"]
        found = ids[0][1] if [name for name, _ in ids] == ["id"] else None
        if _valid_id(found) and not isinstance(found, _Overflow):
            request_id = found
    return value, request_id


def _ambiguous(raw: bytes | str, why: str) -> Frame:
    """The refusal of a message whose member names are ambiguous.

    It is answered under its id when the id alone is unambiguous, and kept
    (as the last-wins decoding reads it) for the audit trail.
    """
    value, request_id = _lenient(raw)
    reply = error_reply(request_id, INVALID_REQUEST, f"Invalid Request: ambiguous message: {why}")
    try:
        members = (_as_text(value, "", []),) if isinstance(value, dict) else ()
    except RecursionError:
        members = ()
    return Frame(
        replies=(reply,),
        members=members,
        why=f"its member names are ambiguous ({why})",
    )


def _non_finite(raw: bytes | str) -> Frame:
    """The refusal of a message holding a number no float holds, naming its member.

    Under ``params`` it is an Invalid params error, elsewhere an Invalid
    Request; answered under the message's id when that can be read, and kept
    (the number as its text) for the audit trail.
    """
    value, request_id = _lenient(raw)
    found: list[tuple[str, str]] = []
    try:
        kept = _as_text(value, "", found)
    except RecursionError:
        kept = None
    where, text = found[0] if found else ("", "")
    shown = text if len(text) <= 40 else f"{text[:20]}... ({len(text)} characters)"
    what = f"{where} is {shown}" if where else f"{shown or 'a number'} is"
    if text and not any(c in text for c in ".eE"):
        why = f"{what}, an integer of more digits than the proxy reads"
    else:
        why = f"{what}, a number beyond a float's range (it would be read as infinity)"
    if where.startswith("params"):
        reply = error_reply(request_id, INVALID_PARAMS, f"Invalid params: {why}")
    else:
        reply = error_reply(request_id, INVALID_REQUEST, f"Invalid Request: {why}")
    members = (kept,) if isinstance(kept, dict) else ()
    return Frame(replies=(reply,), members=members, why=f"its {why}")


def _unread(raw: bytes | str, reply: Message, why: str) -> Frame:
    """The refusal of a message that cannot be decoded, with its sketch for the audit trail."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    scanner = IdScanner()
    scanner.feed(data)
    sketch = sketch_request(data[:HEAD_BYTES], scanner.found)
    return Frame(replies=(reply,), members=(sketch,) if sketch else (), why=why)


def _too_deep(raw: bytes | str) -> Message:
    """The refusal of a message nested too deep to decode, under its top-level id if any."""
    scanner = IdScanner()
    scanner.feed(raw.encode() if isinstance(raw, str) else raw)
    return error_reply(
        scanner.found,
        INVALID_REQUEST,
        "Invalid Request: the message is nested deeper than the Aegis proxy reads",
    )


def _as_text(value: Any, where: str, found: list[tuple[str, str]]) -> Any:
    """``value`` with each :class:`_Overflow` as plain text; where each stood goes in ``found``."""
    if isinstance(value, _Overflow):
        found.append((where, str(value)))
        return str(value)
    if isinstance(value, dict):
        return {k: _as_text(v, f"{where}.{k}" if where else k, found) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_text(v, f"{where}[{i}]", found) for i, v in enumerate(value)]
    return value


#: inside a string: the bytes that end a run of plain characters
_STRING_STOP = re.compile(rb'["\\]')
#: outside strings: the bytes that change the scanner's state
_STRUCTURE = re.compile(rb'["{}\[\],:]')
#: plain bytes and whole strings, up to a bracket (or a string that goes on)
_PLAIN = re.compile(rb'(?:[^"\\\[\]{}]++|"[^"\\]*+(?:\\.[^"\\]*+)*+")*+', re.DOTALL)
#: the rest of a string after its opening quote, closing quote included
_STRING_REST = re.compile(rb'[^"\\]*+(?:\\.[^"\\]*+)*+"', re.DOTALL)


class IdScanner:
    """Finds the top-level ``"id"`` of a JSON object fed in pieces, without keeping it.

    An oversized request is refused under its own id when the id can be
    read: the client is waiting for exactly that id. Members nested in
    ``params`` are skipped; only the object's own ``id`` counts. A member
    name is read as a JSON parser reads it, escapes decoded
    (``"\\u0069d"`` is ``id``); when two top-level names fold like ``id``
    (``"id"`` and ``"ID"``, or ``"id"`` twice) the id is ambiguous and
    :attr:`found` is ``None``, as it is for anything that is not a JSON
    object. Runs of plain characters are skipped by regular expression,
    so a line of many megabytes is scanned at the speed of ``re``.
    """

    _MAX_VALUE = 1024
    _MAX_KEY = 256
    _BLOCK = 4096

    def __init__(self, keep: int = 0) -> None:
        #: the first ``keep`` bytes fed (for a sketch of a refused message)
        self.head = bytearray()
        self._keep_head = keep
        self._depth = 0
        self._in_string = False
        self._escaped = False
        self._key: bytearray | None = None  # a top-level key being read
        self._last_key: str | None = None
        self._value: bytearray | None = None  # the id's value being read
        self._ids = 0  # top-level names that fold like "id"
        self._done = False
        self._found: RequestId | None = None
        self._method = False

    @property
    def found(self) -> RequestId | None:
        """The object's id, when exactly one top-level member names it and its value is one."""
        return self._found if self._ids == 1 else None

    @property
    def has_method(self) -> bool:
        """Whether a top-level member name folds like ``method``: a request, not a reply."""
        return self._method

    def feed(self, data: bytes) -> None:
        """Read one more piece of the line."""
        if len(self.head) < self._keep_head:
            self.head += data[: self._keep_head - len(self.head)]
        i, n = 0, len(data)
        while i < n and not self._done:
            i = self._string(data, i, n) if self._in_string else self._outside(data, i, n)

    def _keep(self, span: bytes) -> None:
        if self._key is not None:
            if len(self._key) <= self._MAX_KEY:
                self._key += span[: self._MAX_KEY + 1]
        elif self._value is not None:
            self._value += span
            if len(self._value) > self._MAX_VALUE:
                self._value = None  # no id is that long: there is none to answer under
                self._ids += 1  # ...and none may be found later

    def _string(self, data: bytes, i: int, n: int) -> int:
        if self._escaped:  # the byte after a backslash
            self._escaped = False
            self._keep(data[i : i + 1])
            return i + 1
        stop = _STRING_STOP.search(data, i)
        if stop is None:
            self._keep(data[i:n])
            return n
        j = stop.start()
        if data[j] == 0x5C:  # a backslash: the next byte is escaped
            self._keep(data[i : j + 1])
            self._escaped = True
            return j + 1
        self._in_string = False  # the closing quote
        if self._key is not None:
            self._keep(data[i:j])
            self._close_key(bytes(self._key))
            self._key = None
        else:
            self._keep(data[i : j + 1])
        return j + 1

    def _close_key(self, raw: bytes) -> None:
        if len(raw) > self._MAX_KEY:
            name = None
        else:
            try:
                name = json.loads(b'"' + raw + b'"') if b"\\" in raw else raw.decode()
            except ValueError:
                name = None
        self._last_key = name if isinstance(name, str) else ""
        folded = fold_name(self._last_key) if self._last_key else ""
        if folded == "id":
            self._ids += 1
        elif folded == "method":
            self._method = True

    def _outside(self, data: bytes, i: int, n: int) -> int:
        if self._depth >= 2 and self._value is None:
            return self._nested(data, i, n)
        stop = _STRUCTURE.search(data, i)
        end = n if stop is None else stop.start()
        if self._depth == 0 and data[i:end].strip():
            self._done = True  # not a JSON object
            return n
        if stop is None:
            self._keep(data[i:n])
            return n
        j, byte = end, data[end]
        if self._value is not None and self._depth == 1 and byte in b",}":
            self._keep(data[i:j])
            self._finish_value()
        else:
            self._keep(data[i : j + 1])
        if byte == 0x22:  # '"'
            self._in_string = True
            if self._depth == 1 and self._value is None and self._last_key is None:
                self._key = bytearray()
        elif byte in b"{[":
            if self._depth == 0 and byte != 0x7B:
                self._done = True  # an array: not one message
            self._depth += 1
        elif byte in b"}]":
            self._depth -= 1
            if self._depth <= 0:
                self._done = True
        elif byte == 0x3A and self._depth == 1:  # ':'
            if self._last_key == "id" and self._ids == 1:
                self._value = bytearray()
        elif byte == 0x2C and self._depth == 1:  # ','
            self._last_key = None
        return j + 1

    def _nested(self, data: bytes, i: int, n: int) -> int:
        # Inside params and the like only brackets and strings count: whole
        # strings are skipped by one match, runs of brackets by counting.
        while i < n:
            i = _PLAIN.match(data, i).end()  # type: ignore[union-attr]  # matches "" at least
            quote = data.find(b'"', i)
            end = n if quote < 0 else quote
            for start in range(i, end, self._BLOCK):
                stop = min(start + self._BLOCK, end)
                block = data[start:stop]
                closes = block.count(b"]") + block.count(b"}")
                if self._depth - closes >= 2:  # the block cannot end the member's value
                    self._depth += block.count(b"[") + block.count(b"{") - closes
                    continue
                for k in range(start, stop):
                    byte = data[k]
                    if byte in (0x5B, 0x7B):  # [ {
                        self._depth += 1
                    elif byte in (0x5D, 0x7D):  # ] }
                        self._depth -= 1
                        if self._depth < 2:
                            return k + 1
            if quote < 0:
                return n
            string = _STRING_REST.match(data, quote + 1)
            if string is None:  # it goes on in the next piece
                self._in_string = True
                return quote + 1
            i = string.end()
        return n

    def _finish_value(self) -> None:
        raw, self._value = bytes(self._value or b""), None
        try:
            value = json.loads(raw)
        except ValueError:
            return
        if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
            self._found = value


class Unreadable(ValueError):
    """A peer's line the proxy will not act on: why, and the id it answers when that can be read.

    ``is_request`` says the line names a ``method``: its id is then the
    peer's own request's, to answer with an error, never the id of a
    request of the proxy's to fail.
    """

    def __init__(
        self, why: str, request_id: RequestId | None, line: bytes, *, is_request: bool = False
    ) -> None:
        super().__init__(why)
        self.why = why
        self.request_id = request_id
        self.is_request = is_request
        #: the start of the line, for a log or an error message
        self.line = line[:80].decode("utf-8", "replace").rstrip()


def read_message(raw: bytes | str) -> Message | Unreadable:
    """Read one line from the server with the checks :func:`parse_frame` makes of a client's.

    The same reader for both peers, so that what the proxy relays or
    decides on is what every JSON parser reads: duplicate and look-alike
    member names, ``NaN``, ``Infinity``, numbers past a float's range or
    of more digits than Python converts, nesting deeper than Python
    decodes, batches and shapes that are not JSON-RPC come back as an
    :class:`Unreadable`, with the id it answers when one can be read
    (from the message, else by :class:`IdScanner`), so that the request
    waiting for it fails at once. A message passes on as its JSON-RPC
    members only (forward what was read, nothing else).
    """
    frame = parse_frame(raw)
    if frame.message is not None:
        message = frame.message
        return {name: message[name] for name in _ENVELOPE_ORDER if name in message}
    reply = frame.replies[0] if frame.replies else None
    why = str(reply["error"]["message"]) if reply is not None else "not a JSON-RPC message"
    for prefix in ("Parse error: ", "Invalid Request: ", "Invalid params: "):
        why = why.removeprefix(prefix)
    request_id = reply["id"] if reply is not None else None
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if frame.batch:
        return Unreadable(why, request_id, data)
    # Whether it is a request (of the peer's own, under the peer's id space)
    # or a reply decides what its id means: read by the scanner either way.
    scanner = IdScanner()
    scanner.feed(data)
    if request_id is None:
        request_id = scanner.found
    return Unreadable(why, request_id, data, is_request=scanner.has_method)


_ENVELOPE_ORDER = ("jsonrpc", "id", "method", "params", "result", "error")


def encode_line(message: Message | list[Message]) -> bytes:
    """``message`` as one line of UTF-8 JSON.

    A lone surrogate (which JSON text may hold as an escape, but UTF-8
    cannot) is written as its escape, never as the bytes ``surrogatepass``
    makes, which are not UTF-8 and which a reader would refuse or replace.
    """
    text = json.dumps(message, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode() + b"\n"
    except UnicodeEncodeError:
        return json.dumps(message, separators=(",", ":")).encode() + b"\n"


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
