"""Arguments read as a tool's JSON Schema reads them, before anything is decided on them.

Tools coerce: a Pydantic-backed tool (FastMCP servers, the OpenAI Agents
SDK's and the Anthropic SDK's function tools) runs ``force: "yes"`` as
``force=True`` and ``customer_id: "7"`` as ``7``. Where a tool's input schema
is known, the integrations coerce the arguments with it first, decide on the
coerced values and hand the tool exactly those, so that the policy sees what
the tool will see. The rules are Pydantic's lax ones for the JSON types:

- ``boolean``: ``"true"``/``"false"``, ``"yes"``/``"no"``, ``"on"``/``"off"``,
  ``"t"``/``"f"``, ``"y"``/``"n"``, ``"1"``/``"0"`` (any case) and the
  numbers ``1``/``0``;
- ``integer``: a string of digits, an integral float;
- ``number``: a string spelling a number;
- arrays (their ``items``) and objects (their ``properties``) recursively.

A value that does not convert is left as it is: the policy then finds its
type wrong and blocks (see :mod:`aegis.core.conditions`). Pure, no I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["coerce_arguments"]

_TRUE: Final = frozenset({"true", "t", "yes", "y", "on", "1"})
_FALSE: Final = frozenset({"false", "f", "no", "n", "off", "0"})
_INTEGER: Final = re.compile(r"\s*[+-]?\d+\s*")
_NUMBER: Final = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")
_MISSING: Final[Any] = object()


def coerce_arguments(arguments: Mapping[str, Any], schema: object) -> dict[str, Any]:
    """``arguments`` coerced by the object ``schema``'s ``properties``; a new dict."""
    properties = schema.get("properties") if isinstance(schema, Mapping) else None
    if not isinstance(properties, Mapping) or not properties:
        return dict(arguments)
    out: dict[str, Any] = {}
    for name, value in arguments.items():
        spec = properties.get(name)
        out[name] = _coerce(value, spec) if isinstance(spec, Mapping) else value
    return out


def _types(spec: Mapping[str, Any]) -> list[str]:
    kind = spec.get("type")
    if isinstance(kind, str):
        return [kind]
    if isinstance(kind, list):
        return [k for k in kind if isinstance(k, str)]
    for key in ("anyOf", "oneOf"):
        options = spec.get(key)
        if isinstance(options, list):
            return [k for o in options if isinstance(o, Mapping) for k in _types(o)]
    return []


def _is(value: object, kind: str) -> bool:
    if kind == "boolean":
        return value is True or value is False
    if kind == "integer":
        return type(value) is int
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "string":
        return isinstance(value, str)
    if kind == "null":
        return value is None
    if kind == "array":
        return isinstance(value, list | tuple)
    if kind == "object":
        return isinstance(value, Mapping)
    return False


def _coerce(value: Any, spec: Mapping[str, Any]) -> Any:
    kinds = _types(spec)
    if not kinds:
        return value
    for kind in kinds:
        if _is(value, kind):
            return _inside(value, kind, spec)
    for kind in kinds:
        converted = _convert(value, kind)
        if converted is not _MISSING:
            return converted
    return value


def _inside(value: Any, kind: str, spec: Mapping[str, Any]) -> Any:
    if kind == "array":
        items = spec.get("items")
        if isinstance(items, Mapping):
            return [_coerce(v, items) for v in value]
    elif kind == "object" and isinstance(spec.get("properties"), Mapping):
        return coerce_arguments(value, spec)
    return value


def _convert(value: Any, kind: str) -> Any:
    if kind == "boolean":
        if isinstance(value, str):
            text = value.strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
        elif type(value) in (int, float) and value in (0, 1):
            return value == 1
    elif kind == "integer":
        if isinstance(value, str) and _INTEGER.fullmatch(value):
            return int(value)
        if type(value) is float and value.is_integer():
            return int(value)
    elif kind == "number" and isinstance(value, str) and _NUMBER.fullmatch(value):
        number = float(value)
        if not math.isfinite(number):
            return _MISSING
        if _INTEGER.fullmatch(value):
            return int(value)
        return number
    return _MISSING
