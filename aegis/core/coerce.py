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
- arrays (their ``items``) and objects (their ``properties``, and
  ``additionalProperties`` for the members it does not name) recursively;
- local references (``{"$ref": "#/$defs/Options"}``, as Pydantic writes a
  nested model) are followed, and so are ``allOf`` parts; of ``anyOf`` and
  ``oneOf`` options, the ones whose type the value has already are tried
  first, then the others in order, as Pydantic's unions do.

A value that does not convert is left as it is: the policy then finds its
type wrong and blocks (see :mod:`aegis.core.conditions`); so is a value that
two union options would read differently. A value the schema cannot be
read for (it sits under a ``$ref`` that is remote, missing or loops, or
deeper than :data:`MAX_DEPTH` levels) raises :class:`UnreadableSchema`:
what the tool would make of it is unknown, and the integrations refuse the
call rather than decide on a reading the tool may not share. Pure, no I/O.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import unquote

from aegis.errors import AegisError

__all__ = ["MAX_DEPTH", "UnreadableSchema", "coerce_arguments"]

#: levels of nested arrays and objects read by the schema; deeper is refused
MAX_DEPTH: Final = 64
#: ``$ref`` and ``allOf`` steps taken for one value before it is called a loop
_MAX_STEPS: Final = 32
_TRUE: Final = frozenset({"true", "t", "yes", "y", "on", "1"})
_FALSE: Final = frozenset({"false", "f", "no", "n", "off", "0"})
_INTEGER: Final = re.compile(r"\s*[+-]?\d+\s*")
_NUMBER: Final = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")
_MISSING: Final[Any] = object()


class UnreadableSchema(AegisError, ValueError):
    """An argument sits where the tool's input schema cannot be read.

    A ``$ref`` that is not local (``https://…``), names nothing in the
    schema, or leads back to itself; or a value nested deeper than
    :data:`MAX_DEPTH`. The message names the argument's path.
    """


def coerce_arguments(arguments: Mapping[str, Any], schema: object) -> dict[str, Any]:
    """``arguments`` coerced by the object ``schema``; a new dict.

    Raises:
        UnreadableSchema: an argument lies under a part of the schema that
            cannot be read (see the module's docstring).
    """
    if not isinstance(schema, Mapping):
        return dict(arguments)
    reader = _Reader(schema)
    spec = reader.resolve(schema, "the arguments")
    if not isinstance(spec.get("properties"), Mapping) and not isinstance(
        spec.get("additionalProperties"), Mapping
    ):
        return dict(arguments)
    return reader.members(arguments, spec, "", 0)


class _Reader:
    """One schema's reading of one call's arguments; ``root`` is what local refs point into."""

    def __init__(self, root: Mapping[str, Any]) -> None:
        self.root = root

    # ------------------------------------------------------------ the schema

    def resolve(self, spec: Mapping[str, Any], where: str, steps: int = 0) -> Mapping[str, Any]:
        """``spec`` with its ``$ref`` followed and its ``allOf`` parts merged in."""
        seen: set[str] = set()
        while "$ref" in spec:
            ref = spec["$ref"]
            if not isinstance(ref, str):
                raise UnreadableSchema(f"{where}: its schema has a $ref that is not a string")
            if ref in seen or steps >= _MAX_STEPS:
                raise UnreadableSchema(f"{where}: its schema's $ref {ref!r} leads back to itself")
            seen.add(ref)
            steps += 1
            target = self._target(ref, where)
            # Keywords beside a $ref apply too (JSON Schema 2019-09 and later).
            spec = {**target, **{k: v for k, v in spec.items() if k != "$ref"}}
        parts = spec.get("allOf")
        if not isinstance(parts, list) or not parts:
            return spec
        merged: dict[str, Any] = {k: v for k, v in spec.items() if k != "allOf"}
        properties = dict(merged.get("properties") or {})
        for part in parts:
            if not isinstance(part, Mapping):
                continue
            if steps >= _MAX_STEPS:
                raise UnreadableSchema(f"{where}: its schema's allOf parts nest without end")
            part = self.resolve(part, where, steps + 1)  # noqa: PLW2901
            for key, value in part.items():
                if key == "properties" and isinstance(value, Mapping):
                    properties = {**value, **properties}
                else:
                    merged.setdefault(key, value)
        if properties:
            merged["properties"] = properties
        return merged

    def _target(self, ref: str, where: str) -> Mapping[str, Any]:
        if not ref.startswith("#"):
            raise UnreadableSchema(
                f"{where}: its schema refers to {ref!r}, outside the tool's schema"
            )
        target: Any = self.root
        pointer = unquote(ref[1:])
        for part in pointer.split("/")[1:] if pointer else ():
            part = part.replace("~1", "/").replace("~0", "~")  # noqa: PLW2901
            if isinstance(target, Mapping):
                target = target.get(part, _MISSING)
            elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
                target = target[int(part)]
            else:
                target = _MISSING
        if not isinstance(target, Mapping):
            raise UnreadableSchema(f"{where}: its schema refers to {ref!r}, which it does not hold")
        return target

    # ------------------------------------------------------------ the values

    def value(self, value: Any, spec: Mapping[str, Any], where: str, depth: int) -> Any:
        if "$ref" in spec or "allOf" in spec:
            spec = self.resolve(spec, where)
        kind = spec.get("type")
        if isinstance(kind, str):  # the common case, one type: read directly
            if _is(value, kind):
                return self._inside(value, kind, spec, where, depth)
            converted = _convert(value, kind)
            return value if converted is _MISSING else converted
        candidates = self._candidates(spec, where)
        if not candidates:
            return value
        exact = [(kind, s) for kind, s in candidates if _is(value, kind)]
        if exact:
            readings = [self._inside(value, kind, s, where, depth) for kind, s in exact]
            if len(readings) == 1:
                return readings[0]
            first = _canonical(readings[0])
            if all(_canonical(r) == first for r in readings[1:]):
                return readings[0]
            return value  # two options read it differently: left for the policy to refuse
        for kind, _ in candidates:
            converted = _convert(value, kind)
            if converted is not _MISSING:
                return converted
        return value

    def _candidates(
        self, spec: Mapping[str, Any], where: str, steps: int = 0
    ) -> list[tuple[str, Mapping[str, Any]]]:
        """The (JSON type, schema) pairs a value may be read as, in the schema's order."""
        kind = spec.get("type")
        if isinstance(kind, str):
            return [(kind, spec)]
        if isinstance(kind, list):
            return [(k, spec) for k in kind if isinstance(k, str)]
        for key in ("anyOf", "oneOf"):
            options = spec.get(key)
            if isinstance(options, list):
                if steps >= _MAX_STEPS:
                    raise UnreadableSchema(f"{where}: its schema's {key} options nest without end")
                return [
                    pair
                    for option in options
                    if isinstance(option, Mapping)
                    for pair in self._candidates(self.resolve(option, where), where, steps + 1)
                ]
        if isinstance(spec.get("properties"), Mapping):
            return [("object", spec)]
        if isinstance(spec.get("items"), Mapping):
            return [("array", spec)]
        return []

    def _inside(
        self, value: Any, kind: str, spec: Mapping[str, Any], where: str, depth: int
    ) -> Any:
        if kind not in ("array", "object"):
            return value
        if depth >= MAX_DEPTH:
            raise UnreadableSchema(f"{where}: nested deeper than {MAX_DEPTH} levels")
        if kind == "array":
            items = spec.get("items")
            if isinstance(items, Mapping):
                return [
                    self.value(v, items, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)
                ]
            return value
        if isinstance(spec.get("properties"), Mapping) or isinstance(
            spec.get("additionalProperties"), Mapping
        ):
            return self.members(value, spec, where, depth + 1)
        return value

    def members(
        self, value: Mapping[str, Any], spec: Mapping[str, Any], where: str, depth: int
    ) -> dict[str, Any]:
        properties = spec.get("properties")
        properties = properties if isinstance(properties, Mapping) else {}
        others = spec.get("additionalProperties")
        out: dict[str, Any] = {}
        for name, inner in value.items():
            inner_spec = properties.get(name, others)
            if isinstance(inner_spec, Mapping):
                out[name] = self.value(
                    inner, inner_spec, f"{where}.{name}" if where else name, depth
                )
            else:
                out[name] = inner
        return out


def _canonical(value: Any) -> str:
    # Type-exact: True and 1 are different readings, although Python says they are equal.
    return json.dumps(value, sort_keys=True, default=repr)


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
            try:
                return int(value)
            except ValueError:  # more digits than Python converts: left as it is
                return _MISSING
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
