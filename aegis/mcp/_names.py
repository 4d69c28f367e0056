"""The proxy's JSON-RPC vocabulary that both its reader and its sketcher use.

Apart from :mod:`aegis.mcp._jsonrpc` so that :mod:`aegis.mcp._sketch`, which
the reader calls on a frame it cannot decode, needs nothing of the reader.
"""

from __future__ import annotations

import unicodedata
from typing import Any

__all__ = ["Message", "RequestId", "fold_name"]

#: a JSON-RPC id as MCP allows it: a string or an integer, never null
RequestId = str | int
#: a decoded JSON-RPC message
Message = dict[str, Any]


def fold_name(name: str) -> str:
    """The form under which two member names count as the same name.

    ASCII names fold to lower case. Other names are NFKC-normalised and
    case-folded, and each character is also mapped as Go maps it (to upper
    case of its lower case), so that names any of those decoders would match
    fold alike. Lone surrogates fold to U+FFFD, as Go decodes them.
    """
    if name.isascii():
        return name.lower()
    text = "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in name)
    go = "".join(_go_fold(c) for c in text)
    return unicodedata.normalize("NFKC", go).casefold()


def _go_fold(char: str) -> str:
    # unicode.ToUpper(unicode.ToLower(r)) of Go, from Python's full mappings:
    # a mapping that is not one character is not Go's simple one.
    lower = char.lower()
    if len(lower) != 1:
        lower = lower[0] if lower[0].isalpha() else char
    upper = lower.upper()
    return upper if len(upper) == 1 else lower
