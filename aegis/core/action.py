"""The action an agent asks to take: plain JSON-like data that cannot change.

What a human approves must be exactly what runs, and what the policy
judged must be what the human saw, so an :class:`Action` holds only plain
values, normalised once, when it is created:

============================  ===============================================
value                         becomes
============================  ===============================================
``str``, ``int``, ``float``,  itself (these exact types only); a float
``bool``, ``None``              that is not finite (``inf``, ``-inf``,
                              ``nan``) is refused with ``ValueError``
a ``str``/``int``/``float``   its plain value (``str``, ``int``, ``float``),
subclass, ``IntEnum``,        read with the base type's own method, so an
``StrEnum`` member            overridden ``__eq__``/``__gt__``/``__str__``
                              cannot lie to a rule later
a path (``PurePath``)         its text, ``str``
a mapping (``dict`` or not)   :class:`FrozenDict` with ``str`` keys
a list or tuple               a tuple
a set or frozenset            a frozenset
anything else                 refused with ``TypeError`` naming the param:
                              bytes, ``Decimal``, ``datetime``, ``UUID``,
                              other enums, objects. Each has several plain
                              forms (text or number, ISO text or epoch) and
                              choosing one is the caller's decision.
============================  ===============================================

Mapping keys must be strings; ``int``, ``float``, ``bool`` and ``None``
keys are turned into text as Python's ``str()`` writes them. ``type``,
``target`` and ``description`` are exact ``str`` (a subclass is converted;
a ``None`` description becomes ``""``).

:class:`FrozenDict` is a read-only mapping, not a ``dict`` subclass, so no
``dict`` method can change it; the runtime also takes
:func:`action_digest` when it decides and checks it again before the
executor runs and before the audit record is written, so tampering below
the API (``object.__setattr__``, ``gc``, ``ctypes``) is caught too.

:func:`canonical_json` writes an int too long for Python to print as the
mark ``{"__aegis_int__": "<hex>"}``, and a mapping inside the params whose
keys are a mark's as ``{"__aegis_map__": <the mapping>}``, so that no two
actions share a text or a digest; the readers of that text (a remote
approval, a flow event) turn both back into what they stand for.

Size: the action, its frozen params and their canonical JSON (with its
marks) are one contract: what a rule judged, a human approved and the
executor ran is the same value because one module makes and writes it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import PurePath
from typing import Any, Final, NoReturn

__all__ = ["Action", "FrozenDict", "action_digest", "canonical_json", "freeze", "thaw"]

_new = object.__new__
_setattr = object.__setattr__


class FrozenDict(Mapping[str, Any]):
    """A read-only mapping of ``str`` keys to plain, deeply frozen values.

    It is a :class:`collections.abc.Mapping` and deliberately not a
    ``dict``: ``dict.__setitem__(params, ...)`` and every other ``dict``
    method refuse it. ``dict(params)`` gives a mutable plain copy and
    :func:`thaw` a JSON-ready one. It compares equal to a ``dict`` with the
    same items and is hashable. Values are normalised like an
    :class:`Action`'s params (see the module's table).

    Example::

        FrozenDict({"ids": [1, 2]})  # FrozenDict({'ids': (1, 2)})
    """

    __slots__ = ("_data", "_hash")
    _data: dict[str, Any]
    _hash: int

    def __new__(cls, *args: Any, **kwargs: Any) -> FrozenDict:
        items = dict(*args, **kwargs)
        try:
            return _wrap(_plain_items(items, None))
        except NonFiniteNumber as exc:
            _refuse_nonfinite(exc, items)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # A subclass could override the read methods and show a rule one
        # value and the executor another; Action trusts FrozenDict by type.
        raise TypeError("FrozenDict cannot be subclassed; wrap it instead")

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise TypeError("Action params are read-only; build a new Action instead")

    __delattr__ = __setattr__  # type: ignore[assignment]  # same refusal

    # -- reading: delegated to the private dict, at C speed where possible --

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key``, or ``default`` when it is absent."""
        return self._data.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def keys(self) -> Any:  # a live view of a dict that never changes
        """The keys, as a read-only view."""
        return self._data.keys()

    def values(self) -> Any:
        """The values, as a read-only view."""
        return self._data.values()

    def items(self) -> Any:
        """The ``(key, value)`` pairs, as a read-only view."""
        return self._data.items()

    def __eq__(self, other: object) -> bool:
        if type(other) is FrozenDict:
            return self._data == other._data
        if isinstance(other, Mapping):
            return self._data == dict(other.items())
        return NotImplemented

    def __hash__(self) -> int:
        try:
            return self._hash
        except AttributeError:
            value = hash(frozenset(self._data.items()))
            _setattr(self, "_hash", value)
            return value

    def __or__(self, other: Mapping[str, Any]) -> FrozenDict:
        if not isinstance(other, Mapping):
            return NotImplemented
        return FrozenDict({**self._data, **other})

    def __repr__(self) -> str:
        try:
            return f"FrozenDict({self._data!r})"
        except ValueError:  # an int past sys.get_int_max_str_digits()
            return f"FrozenDict({_repr_safe(self._data)!r})"

    def __copy__(self) -> FrozenDict:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> FrozenDict:
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenDict, (dict(self._data),))

    @classmethod
    def fromkeys(cls, iterable: Iterable[Any], value: Any = None) -> FrozenDict:
        """A FrozenDict mapping every key of ``iterable`` to ``value``."""
        return cls(dict.fromkeys(iterable, value))


class _LongInt:
    """Stands in for an int too long for ``repr``: its hex ends and its size."""

    __slots__ = ("value",)

    def __init__(self, value: int) -> None:
        self.value = value

    def __repr__(self) -> str:
        digits = hex(abs(self.value))[2:]  # hex has no digit limit
        sign = "-" if self.value < 0 else ""
        return f"<int {sign}0x{digits[:8]}...{digits[-8:]}, {self.value.bit_length()} bits>"


def _repr_safe(value: Any) -> Any:
    """``value`` for ``repr`` only, with each int too long for it abbreviated.

    A nested FrozenDict is left alone: its own ``repr`` does the same.
    """
    if type(value) is int:
        try:
            repr(value)
        except ValueError:
            return _LongInt(value)
        return value
    if type(value) is dict:
        return {k: _repr_safe(v) for k, v in value.items()}
    if type(value) is tuple:
        return tuple(_repr_safe(v) for v in value)
    if type(value) is frozenset:
        return frozenset(_repr_safe(v) for v in value)
    return value


def _wrap(items: dict[str, Any]) -> FrozenDict:
    """A FrozenDict holding ``items``, which are plain already (no copy, no checks)."""
    frozen: FrozenDict = _new(FrozenDict)
    _setattr(frozen, "_data", items)
    return frozen


_EMPTY = _wrap({})
_PLAIN_SCALARS = (str, int, float, bool, type(None))
#: the scalars kept as they are without a look at their value
_KEPT_SCALARS = (str, int, bool, type(None))
#: how deeply params may nest (mappings and lists); far beyond any tool call
MAX_DEPTH: Final = 100
#: what to do instead, for kinds people often pass
_HINTS: dict[str, str] = {
    "bytes": "decode it to text, or base64-encode it",
    "bytearray": "decode it to text, or base64-encode it",
    "memoryview": "decode it to text, or base64-encode it",
    "datetime": "pass value.isoformat()",
    "date": "pass value.isoformat()",
    "time": "pass value.isoformat()",
    "timedelta": "pass value.total_seconds()",
    "Decimal": "pass str(value) to keep every digit, or float(value)",
    "Fraction": "pass str(value), or float(value)",
    "complex": "pass its real and imaginary parts as two numbers",
    "UUID": "pass str(value)",
}


def _where(key: object) -> str:
    return "a value" if key is None else f"param {str(key)!r}"


def _refuse(value: object, key: object) -> NoReturn:
    kind = type(value).__name__
    if isinstance(value, Enum):
        hint = f"pass its value ({type(value).__name__}.{value.name}.value) instead"
    else:
        hint = _HINTS.get(
            kind,
            "convert it first, e.g. with dataclasses.asdict() or model.model_dump(mode='json')",
        )
    raise TypeError(
        f"{_where(key)} is a {kind}, not plain JSON-like data (str, int, float, bool,"
        f" None, lists and mappings of them), which is all an Action holds; {hint}"
    )


def _plain_key(key: object, where: object) -> str:
    if type(key) is str:
        return key
    if isinstance(key, str):
        return str.__str__(key)
    if type(key) in (int, float, bool, type(None)):
        return str(key)
    raise TypeError(
        f"{_where(where)} has a key of type {type(key).__name__} ({key!r}); param names"
        " must be strings"
    )


def _plain_items(mapping: Mapping[Any, Any], where: object, depth: int = 0) -> dict[str, Any]:
    pairs = dict.items(mapping) if isinstance(mapping, dict) else mapping.items()
    items: dict[str, Any] = {}
    for k, v in pairs:
        key = k if type(k) is str else _plain_key(k, where)
        if key in items:
            _raise_key_collision(mapping)
        items[key] = v if type(v) in _KEPT_SCALARS else _plain(v, key, depth + 1)
    return items


class NonFiniteNumber(ValueError):
    """A float in an action's params that is not finite (``inf``, ``-inf``, ``nan``).

    JSON has no such number, but ``json.loads`` reads ``1e400`` as infinity
    and ``NaN`` as nan: a model's arguments can hold one. A rule cannot
    judge it as the tool would (nan equals nothing, and infinity passes
    every upper bound), nor can the audit trail write it as JSON.
    """


def _finite(value: float, key: object) -> float:
    if value - value == 0.0:  # false for inf, -inf and nan alike
        return value
    raise NonFiniteNumber(_where(key))  # the whole path is named by _refuse_nonfinite


def _nonfinite_path(value: Any, where: str) -> str | None:
    """The member path of the first non-finite float in ``value``, if any."""
    if isinstance(value, float):
        return None if value - value == 0.0 else where
    if isinstance(value, str | bytes):
        return None
    if isinstance(value, Mapping):
        for key, item in value.items():
            found = _nonfinite_path(item, f"{where}.{key}" if where else str(key))
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = _nonfinite_path(item, f"{where}[{index}]")
            if found is not None:
                return found
    elif isinstance(value, set | frozenset):
        for item in value:
            found = _nonfinite_path(item, f"{where}{{}}")
            if found is not None:
                return found
    return None


def _refuse_nonfinite(exc: NonFiniteNumber, value: Any) -> NoReturn:
    """Raise ``exc`` again, naming the whole member path where it stood."""
    try:
        path = _nonfinite_path(value, "")
    except Exception:  # a mapping that cannot be read twice: the key alone
        path = None
    where = f"param {path!r}" if path else str(exc)
    raise NonFiniteNumber(
        f"{where} is not a finite number (infinity or NaN, as a number like 1e400 "
        "decodes); JSON has none, and no rule can judge one: pass a finite number, "
        "or the value as text"
    ) from None


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
    raise TypeError("params keys must be unique strings")  # pragma: no cover  # a lying key


def _plain(value: Any, key: object, depth: int = 0) -> Any:
    """``value`` as plain, immutable data, or ``TypeError`` naming ``key``."""
    kind = type(value)
    if kind in _KEPT_SCALARS:
        return value
    if kind is float:
        return _finite(value, key)
    if depth > MAX_DEPTH:
        # Deeper data is no tool call's arguments, and would exhaust the
        # stack of every encoder after us (audit, digest, display).
        raise TypeError(f"{_where(key)} is nested more than {MAX_DEPTH} levels deep; flatten it")
    if kind is FrozenDict:
        return value
    if kind is dict:
        return _wrap(_plain_items(value, key, depth))
    if kind is list or kind is tuple:
        return tuple([_plain(v, key, depth + 1) for v in value])
    # Subclasses: read them with the base type's own methods, which a
    # subclass cannot override, so that the plain value is the real one.
    if isinstance(value, Enum) and not isinstance(value, int | str):
        _refuse(value, key)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):  # bool is exact, so this is a true subclass
        return int.__int__(value)
    if isinstance(value, float):
        return _finite(float.__float__(value), key)
    if isinstance(value, PurePath):
        text = PurePath.__str__(value)
        return text if type(text) is str else _refuse(value, key)
    if isinstance(value, dict):
        return _wrap(_plain_items(value, key, depth))
    if isinstance(value, Mapping):
        return _wrap(_plain_items(value, key, depth))
    if isinstance(value, list):
        return tuple([_plain(v, key, depth + 1) for v in list.__iter__(value)])
    if isinstance(value, tuple):
        return tuple([_plain(v, key, depth + 1) for v in tuple.__iter__(value)])
    if isinstance(value, set | frozenset):
        return frozenset([_plain(v, key, depth + 1) for v in value])
    _refuse(value, key)


def freeze(value: Any) -> Any:
    """Return ``value`` as plain, deeply immutable data (see the module's table).

    Raises:
        TypeError: two keys of a mapping are the same string (``1`` and
            ``"1"``), or a value is not plain JSON-like data.
        NonFiniteNumber: a float is infinite or NaN (a ValueError).
    """
    try:
        return _plain(value, None)
    except NonFiniteNumber as exc:
        _refuse_nonfinite(exc, value)


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


def _text(value: object, what: str) -> str:
    if isinstance(value, str):
        return str.__str__(value)
    raise TypeError(f"Action {what} must be a string, not {type(value).__name__} ({value!r})")


@dataclass(frozen=True, slots=True)
class Action:
    """One operation an agent wants to perform.

    Args:
        type: the kind of operation, e.g. ``"read"``, ``"delete"``, ``"refund"``.
        target: the system acted upon, e.g. ``"salesforce"``.
        params: the operation's arguments, a mapping of plain JSON-like
            data; normalised and frozen on creation (see the module's table).
        description: a human-readable sentence shown to approvers; ``None``
            becomes ``""``.

    Raises:
        TypeError: type, target or description is not a string, params is
            not a mapping, or a param is not plain data (the message names it).
        NonFiniteNumber: a param holds an infinite or NaN float, such as
            ``json.loads`` makes of ``1e400`` (a ValueError naming its path).

    Example::

        Action("update", "crm", {"id": 7, "fields": {"tier": "gold"}})
    """

    type: str
    target: str
    params: Mapping[str, Any] = field(default=_EMPTY)
    description: str = ""

    def __post_init__(self) -> None:
        if type(self.type) is not str:
            _setattr(self, "type", _text(self.type, "type"))
        if type(self.target) is not str:
            _setattr(self, "target", _text(self.target, "target"))
        description = self.description
        if type(description) is not str:
            _setattr(
                self,
                "description",
                "" if description is None else _text(description, "description"),
            )
        params = self.params
        if type(params) is FrozenDict:
            return
        if not isinstance(params, Mapping):
            raise TypeError(f"Action params must be a mapping, not {type(params).__name__}")
        try:
            _setattr(self, "params", _wrap(_plain_items(params, None)) if params else _EMPTY)
        except NonFiniteNumber as exc:
            _refuse_nonfinite(exc, params)

    def __str__(self) -> str:
        suffix = f" - {self.description}" if self.description else ""
        return f"{self.type} -> {self.target}{suffix}"


def canonical_default(value: object) -> object:
    if type(value) is FrozenDict:
        return value._data
    if type(value) is frozenset:
        # A set has no order; sort by each element's own canonical text so
        # that the same set gives the same text in every process.
        return sorted(value, key=_canonical_value)
    # Nothing else is in an Action; other callers (a policy's digest) get a
    # tagged text, so that two different values never share one.
    return {"__aegis_type__": type(value).__name__, "repr": repr(value)}


#: what canonical JSON writes in place of an int too long for ``repr``:
#: ``{"__aegis_int__": "<hex>"}`` (hex has no digit limit)
INT_MARK: Final = "__aegis_int__"
#: the key of the escape around a mapping of params shaped like a mark
ESCAPE_MARK: Final = "__aegis_map__"
#: the key sets of the mappings canonical JSON writes as marks: a huge int,
#: an escape, and (in a policy's digest) a value of another type
_MARK_SHAPES: Final = frozenset(
    {frozenset({INT_MARK}), frozenset({ESCAPE_MARK}), frozenset({"__aegis_type__", "repr"})}
)
#: every mark's keys hold this text; JSON without it needs neither marks nor escapes
MARK_TEXT: Final = "__aegis_"
#: an int below this prints under any digit limit Python allows (640 at
#: least), so no process ever wrote one as a mark
_ALWAYS_PRINTED: Final = 10**640


def _marked(value: Any, nested: bool = False) -> Any:
    """``value`` as canonical JSON writes it: every mark in place, every look-alike escaped.

    An int too long for ``repr`` becomes ``{"__aegis_int__": "<hex>"}``. A
    mapping inside ``value`` whose keys are a mark's keys (a param of
    ``{"__aegis_int__": "0x5"}``) is written inside ``{"__aegis_map__": ...}``,
    so that no params write the text of other params: two actions that
    differ never share a digest, nor a policy its digest with another. The
    outermost mapping (params, a policy) is never a mark, and never escaped.
    :func:`_unmarked` reads the text back.
    """
    if type(value) is int:
        try:
            repr(value)
        except ValueError:
            return {INT_MARK: hex(value)}
        return value
    if isinstance(value, dict) or type(value) is FrozenDict:
        items = {k: _marked(v, True) for k, v in value.items()}
        if nested and len(items) <= 2 and frozenset(items) in _MARK_SHAPES:
            return {ESCAPE_MARK: items}
        return items
    if isinstance(value, tuple | list):  # (lists: a policy's to_dict, for its digest)
        return [_marked(v, True) for v in value]
    if isinstance(value, frozenset):
        return sorted((_marked(v, True) for v in value), key=_canonical_value)
    return value


def _unmarked(value: Any, nested: bool = False, depth: int = 0) -> Any:
    """JSON data ``value`` (as ``json.loads`` gives it) with canonical JSON's marks read back.

    The inverse of :func:`_marked`: a marked int is the int again and an
    escaped mapping the mapping it holds, so that an action read back from
    its JSON (a remote approval, a flow event) is the action written. A
    mark no process writes (hex not as ``hex()`` writes it, or an int any
    process prints) is a mapping a version before escapes wrote as it was:
    it stays that mapping.

    Raises:
        TypeError: ``value`` nests deeper than any action's params (an
            escape adds a level to each mapping it holds).
    """
    if depth > 2 * MAX_DEPTH + 2:
        raise TypeError(f"a value is nested more than {MAX_DEPTH} levels deep")
    if type(value) is dict:
        if nested and len(value) == 1:
            ((key, item),) = value.items()
            if key == ESCAPE_MARK and type(item) is dict:
                value = item
                depth += 1
            elif key == INT_MARK and type(item) is str:
                number = _marked_int(item)
                if number is not None:
                    return number
        return {k: _unmarked(v, True, depth + 1) for k, v in value.items()}
    if type(value) is list:
        return [_unmarked(v, True, depth + 1) for v in value]
    return value


def _marked_int(text: str) -> int | None:
    """The int of a mark's hex ``text``, or ``None`` when no process would write that mark."""
    try:
        number = int(text, 16)  # a power-of-two base: no digit limit
    except ValueError:
        return None
    if -_ALWAYS_PRINTED < number < _ALWAYS_PRINTED or hex(number) != text:
        return None
    return number


_encode_text = json.encoder.encode_basestring  # ensure_ascii=False: text stays as written
# The C encoder, built once (JSONEncoder.encode builds one per call): sorted
# keys, compact separators, no circular check (an Action holds no cycle).
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
if _c_make_encoder is not None:
    _encode_chunks = _c_make_encoder(
        None, canonical_default, _encode_text, None, ":", ",", True, False, True
    )

    def _canonical_value(value: Any) -> str:
        return "".join(_encode_chunks(value, 0))

else:  # pragma: no cover  # a Python built without the _json accelerator
    _slow_encode = json.JSONEncoder(
        sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=canonical_default
    ).encode

    def _canonical_value(value: Any) -> str:
        return _slow_encode(value)


#: The params (a FrozenDict) canonical_json encoded last, and their text, kept
#: only when every other writer of these params would write that very text:
#: no array inside (a set is written as one, and each encoder orders it its
#: own way), ASCII without DEL (which only json.dumps's ASCII encoder
#: escapes), and no mark (an int past the digit limit, or a mapping shaped
#: like a mark: each takes a detour, see _marked). Then the start record's
#: params (aegis.core.record.storable_json), the flow event's
#: (aegis.stores.usage.params_json) and the SQLite start guard's take this text
#: instead of encoding the params again: each checks identity alone. Speed
#: (benchmarks/calls.py --instructions): a float's repr alone costs thousands
#: of instructions, and an action's params are encoded for its digest anyway.
#: A FrozenDict never changes, and the pair holds it, so its identity cannot
#: be reused; the pair is replaced whole, so other threads see one or the other.
PARAMS_TEXT: tuple[FrozenDict | None, str] = (None, "")


def canonical_json(action: Action) -> str:
    """``action`` as canonical JSON text: sorted keys, compact, UTF-8.

    The same action always gives the same text, whichever process builds
    it; it is what :func:`action_digest` hashes. An int too long for
    Python to print is written as ``{"__aegis_int__": "<hex>"}``, and a
    mapping inside the params shaped like that (or like another mark) as
    ``{"__aegis_map__": <the mapping>}``, so that no two actions share a
    text (see :func:`_marked`).
    """
    global PARAMS_TEXT  # noqa: PLW0603  # one (params, text) pair, replaced whole: thread-safe
    params = action.params
    data = params._data if type(params) is FrozenDict else params
    try:
        params_text = _canonical_value(data)  # for a FrozenDict, the default hook's answer, sooner
    except ValueError:  # an int past the 4,300-digit limit of int -> str
        params_text = _canonical_value(_marked(params))
    else:
        if MARK_TEXT in params_text:  # a mapping shaped like a mark, maybe: escaped
            params_text = _canonical_value(_marked(params))
        # No array anywhere (outermost, one is a key's value, so its text
        # has ":[; text holding that is passed over too), no DEL, ASCII.
        elif (
            type(params) is FrozenDict
            and params_text.isascii()
            and '":[' not in params_text
            and "\x7f" not in params_text
        ):
            PARAMS_TEXT = (params, params_text)
    # The keys in sorted order, written out: the same text json.dumps gives.
    return (
        f'{{"description":{_encode_text(action.description)},"params":{params_text},'
        f'"target":{_encode_text(action.target)},"type":{_encode_text(action.type)}}}'
    )


def action_digest(action: Action) -> str:
    """The SHA-256 hex digest of :func:`canonical_json` of ``action``.

    An approval is bound to this digest: an action whose type, target,
    params or description differ in any way has another digest.
    """
    return hashlib.sha256(canonical_json(action).encode("utf-8", "surrogatepass")).hexdigest()
