"""The action an agent asks to take, with parameters that cannot change.

What a human approves must be exactly what runs, so an :class:`Action`'s
``params`` are frozen all the way down when the action is created: nested
mappings become :class:`FrozenDict`, lists become tuples, sets frozensets,
a ``bytearray`` becomes ``bytes``, and any other value that is not a known
immutable scalar is refused with ``TypeError``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import Enum
from fractions import Fraction
from pathlib import PurePath
from typing import Any, NoReturn

__all__ = ["Action", "FrozenDict", "action_digest", "canonical_json", "freeze", "thaw"]

#: values of these exact types cannot change, so freezing keeps them as they are
_SCALARS: frozenset[type] = frozenset(
    {
        str,
        int,
        float,
        bool,
        type(None),
        bytes,
        complex,
        Decimal,
        Fraction,
        _dt.datetime,
        _dt.date,
        _dt.time,
        _dt.timedelta,
        uuid.UUID,
    }
)
#: immutable kinds whose subclasses hold an immutable value too
_IMMUTABLE_BASES = (Enum, PurePath, str, int, float, bytes, complex, Decimal, Fraction)


class FrozenDict(dict[str, Any]):
    """A ``dict`` that refuses every change.

    It stays a real ``dict`` so that ``json.dumps`` and ``dict(params)``
    work on it unchanged; its content is set once, when it is created, and
    frozen deeply like :func:`freeze` does. Every mutating method, including
    a second call of ``__init__``, raises ``TypeError`` or does nothing.

    Example::

        FrozenDict({"ids": [1, 2]})  # FrozenDict({'ids': (1, 2)})
    """

    __slots__ = ("_hash",)

    def __new__(cls, *args: Any, **kwargs: Any) -> FrozenDict:
        self = dict.__new__(cls)
        dict.update(self, _freeze_items(dict(*args, **kwargs)))
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # The content was set by __new__; dict.__init__ would update it again,
        # which on an existing instance (the shared empty one) would be a mutation.
        pass

    def _readonly(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError("Action params are read-only; build a new Action instead")

    __setitem__ = _readonly
    __delitem__ = _readonly
    __ior__ = _readonly
    clear = _readonly
    pop = _readonly
    popitem = _readonly
    setdefault = _readonly
    update = _readonly

    @classmethod
    def fromkeys(cls, iterable: Iterable[Any], value: Any = None) -> FrozenDict:  # type: ignore[override]  # dict's overloads
        """A FrozenDict mapping every key of ``iterable`` to ``value``."""
        return cls(dict.fromkeys(iterable, value))

    def __hash__(self) -> int:  # type: ignore[override]  # dict is unhashable, we are not
        try:
            return self._hash
        except AttributeError:
            self._hash: int = hash(frozenset(self.items()))
            return self._hash

    def __repr__(self) -> str:
        return f"FrozenDict({dict.__repr__(self)})"

    def __copy__(self) -> FrozenDict:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> FrozenDict:
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenDict, (dict(self),))


def _wrap(items: dict[str, Any]) -> FrozenDict:
    """A FrozenDict holding ``items``, which are frozen already (no copy, no checks)."""
    frozen = dict.__new__(FrozenDict)
    dict.update(frozen, items)
    return frozen


_EMPTY = _wrap({})


def _freeze_items(mapping: Mapping[Any, Any]) -> dict[str, Any]:
    items = {
        (k if type(k) is str else str(k)): (v if type(v) in _SCALARS else _freeze_value(v, k))
        for k, v in mapping.items()
    }
    if len(items) != len(mapping):
        _raise_key_collision(mapping)
    return items


def _raise_key_collision(mapping: Mapping[Any, Any]) -> NoReturn:
    seen: dict[str, Any] = {}
    for key in mapping:
        name = str(key)
        if name in seen:
            raise TypeError(
                f"params keys {seen[name]!r} and {key!r} are both {name!r} as strings;"
                " param names must be unique strings"
            )
        seen[name] = key
    raise TypeError("params keys must be unique strings")  # pragma: no cover  # a lying __len__


def _freeze_value(value: Any, key: object) -> Any:
    if type(value) in _SCALARS or isinstance(value, FrozenDict):
        return value
    if isinstance(value, Mapping):
        return _wrap(_freeze_items(value))
    if isinstance(value, list | tuple):
        return tuple([_freeze_value(v, key) for v in value])
    if isinstance(value, set | frozenset):
        return frozenset([_freeze_value(v, key) for v in value])
    if isinstance(value, bytearray):
        return bytes(value)
    if isinstance(value, _IMMUTABLE_BASES):
        return value
    # Anything else could change after a human approved it (even a copy of
    # it: the agent holds the Action and could change the copy). Refuse it.
    where = "a value" if key is None else f"param {str(key)!r}"
    raise TypeError(
        f"{where} is a {type(value).__name__}, which could change after approval; params "
        "must be JSON-like values (str, numbers, bool, None, lists, mappings) or immutable "
        "scalars (bytes, Decimal, datetime, UUID, Enum, ...): convert it first, e.g. with "
        "dataclasses.asdict() or model.model_dump()"
    )


def freeze(value: Any) -> Any:
    """Return a deeply immutable copy of ``value``.

    Mappings become :class:`FrozenDict` (keys as strings), lists and tuples
    tuples, sets frozensets, a ``bytearray`` ``bytes``; immutable scalars
    (numbers, strings, dates, UUIDs, enum members, paths) stay as they are.

    Raises:
        TypeError: two keys of a mapping are the same string (``1`` and
            ``"1"``), or a value is of a kind that could change later (any
            other object).
    """
    return _freeze_value(value, None)


def thaw(value: Any) -> Any:
    """Return a plain, JSON-friendly copy of a frozen value.

    Mappings become dicts, tuples lists, and frozensets lists too (sorted
    when their elements can be sorted), so that the result never holds an
    unhashable value in a set.
    """
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    if isinstance(value, frozenset):
        items = [thaw(v) for v in value]
        try:
            return sorted(items)
        except TypeError:  # mixed or unorderable elements: keep iteration order
            return items
    return value


@dataclass(frozen=True, slots=True)
class Action:
    """One operation an agent wants to perform.

    Args:
        type: the kind of operation, e.g. ``"read"``, ``"delete"``, ``"refund"``.
        target: the system acted upon, e.g. ``"salesforce"``.
        params: the operation's arguments, a mapping; frozen on creation
            (see :func:`freeze`).
        description: a human-readable sentence shown to approvers.

    Raises:
        TypeError: type or target is not a string, params is not a mapping,
            or a param cannot be frozen.

    Example::

        Action("update", "crm", {"id": 7, "fields": {"tier": "gold"}})
    """

    type: str
    target: str
    params: Mapping[str, Any] = field(default=_EMPTY)
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.type, str) or not isinstance(self.target, str):
            raise TypeError("Action type and target must be strings")
        params = self.params
        if isinstance(params, FrozenDict):
            return
        if not isinstance(params, dict) and not isinstance(params, Mapping):
            raise TypeError(f"Action params must be a mapping, not {type(params).__name__}")
        object.__setattr__(self, "params", _wrap(_freeze_items(params)) if params else _EMPTY)

    def __str__(self) -> str:
        suffix = f" - {self.description}" if self.description else ""
        return f"{self.type} -> {self.target}{suffix}"


def canonical_json(action: Action) -> str:
    """``action`` as canonical JSON text: sorted keys, compact, UTF-8.

    The same action always gives the same text, whichever process builds
    it; it is what :func:`action_digest` hashes.
    """
    return json.dumps(
        {
            "type": action.type,
            "target": action.target,
            "params": thaw(action.params),
            "description": action.description,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=_canonical_default,
    )


def action_digest(action: Action) -> str:
    """The SHA-256 hex digest of :func:`canonical_json` of ``action``.

    An approval is bound to this digest: an action whose type, target,
    params or description differ in any way has another digest.
    """
    return hashlib.sha256(canonical_json(action).encode("utf-8", "surrogatepass")).hexdigest()


def _canonical_default(value: object) -> object:
    # Immutable scalars an Action may hold today but JSON cannot: name the
    # kind so that two different values never share a text.
    return {"__aegis_type__": type(value).__name__, "repr": repr(value)}
