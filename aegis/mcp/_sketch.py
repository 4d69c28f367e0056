"""What a message refused unread says of itself: its method and tool, from its first bytes.

A client's frame that is too large or not JSON is refused without being
decoded, yet a refused attempt to call a tool is evidence an auditor
wants. :func:`sketch_request` reads the start of such a frame member by
member, as far as it holds whole JSON values, for the top-level
``method`` and the ``name`` in ``params``: enough to record the attempt
(:meth:`~aegis.mcp.proxy.ProxySession.record_refused`), never to act on
it. Members after the part it can read (a ``name`` written after huge
``arguments``) stay unknown; a frame whose method cannot be read is only
logged.
"""

from __future__ import annotations

import contextlib
import json
from json.decoder import scanstring  # type: ignore[attr-defined]  # public, untyped
from typing import Any

from aegis.mcp._names import Message, RequestId, fold_name

__all__ = ["HEAD_BYTES", "sketch_request"]

#: the first bytes of a refused frame kept for its sketch
HEAD_BYTES = 64 * 1024

_DECODER = json.JSONDecoder()
_SPACE = " \t\n\r"


class _Cut(Exception):
    """The head ends, or stops being JSON, here."""


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i] in _SPACE:
        i += 1
    if i >= len(text):
        raise _Cut
    return i


def _members(text: str, i: int, found: dict[str, Any], depth: int) -> int:
    """Read the object at ``i`` into ``found`` (``params`` one level down); return its end."""
    i = _skip_space(text, i)
    if text[i] != "{":
        raise _Cut
    i = _skip_space(text, i + 1)
    if text[i] == "}":
        return i + 1
    while True:
        if text[i] != '"':
            raise _Cut
        try:
            name, i = scanstring(text, i + 1)
        except ValueError:
            raise _Cut from None
        i = _skip_space(text, i)
        if text[i] != ":":
            raise _Cut
        i = _skip_space(text, i + 1)
        folded = fold_name(name)
        if depth == 0 and folded == "params" and text[i] == "{":
            inner: dict[str, Any] = {}
            found[name] = inner
            i = _members(text, i, inner, depth + 1)
        else:
            try:
                value, i = _DECODER.raw_decode(text, i)
            except (ValueError, RecursionError):
                raise _Cut from None
            if folded in (("id", "method") if depth == 0 else ("name",)):
                found[name] = value
        i = _skip_space(text, i)
        if text[i] == "}":
            return i + 1
        if text[i] != ",":
            raise _Cut
        i = _skip_space(text, i + 1)


def sketch_request(head: bytes, request_id: RequestId | None = None) -> Message | None:
    """The refused frame starting with ``head`` as a request to record, or ``None``.

    The sketch has the ``method`` when the head holds it (a string), the
    ``params`` ``name`` when it holds that, and the id read by the caller
    (``request_id``, from :class:`~aegis.mcp._jsonrpc.IdScanner`) unless the
    head holds one. ``None`` when no method can be read.
    """
    text = head[:HEAD_BYTES].decode("utf-8", "replace")
    found: dict[str, Any] = {}
    with contextlib.suppress(_Cut, IndexError):  # what was read before the cut stands
        _members(text, 0, found, 0)
    methods = [v for k, v in found.items() if fold_name(k) == "method" and isinstance(v, str)]
    if not methods:
        return None
    sketch: Message = {"jsonrpc": "2.0", "method": methods[0]}
    ids = [v for k, v in found.items() if fold_name(k) == "id"]
    if len(ids) == 1 and (isinstance(ids[0], str) or type(ids[0]) is int):
        sketch["id"] = ids[0]
    elif request_id is not None:
        sketch["id"] = request_id
    params = next((v for k, v in found.items() if fold_name(k) == "params"), None)
    if isinstance(params, dict):
        sketch["params"] = dict(params)
    return sketch
