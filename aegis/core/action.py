"""The action an agent asks to take, with parameters that cannot change.

What a human approves must be exactly what runs, so an :class:`Action`'s
``params`` are frozen all the way down when the action is created: nested
mappings become :class:`FrozenDict`, lists become tuples, sets frozensets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

__all__ = ["Action", "FrozenDict", "freeze", "thaw"]


class FrozenDict(dict[str, Any]):
    """A ``dict`` that refuses every change.

    It stays a real ``dict`` so that ``json.dumps`` and ``dict(params)``
    work on it unchanged; every mutating method raises ``TypeError``.
    """

    __slots__ = ("_hash",)

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


_EMPTY = FrozenDict()


def freeze(value: Any) -> Any:
    """Return a deeply immutable copy of ``value`` (mappings, lists, sets)."""
    if isinstance(value, FrozenDict):
        return value
    if isinstance(value, Mapping):
        return FrozenDict({str(k): freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    if isinstance(value, set | frozenset):
        return frozenset(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """Return a plain, mutable copy of a frozen value (dicts and lists)."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    if isinstance(value, frozenset):
        return {thaw(v) for v in value}
    return value


@dataclass(frozen=True, slots=True)
class Action:
    """One operation an agent wants to perform.

    Args:
        type: the kind of operation, e.g. ``"read"``, ``"delete"``, ``"refund"``.
        target: the system acted upon, e.g. ``"salesforce"``.
        params: the operation's arguments; frozen on creation.
        description: a human-readable sentence shown to approvers.

    Example::

        Action("update", "crm", {"id": 7, "fields": {"tier": "gold"}})
    """

    type: str
    target: str
    params: Mapping[str, Any] = field(default_factory=FrozenDict)
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.type, str) or not isinstance(self.target, str):
            raise TypeError("Action type and target must be strings")
        params = self.params
        if not params:
            object.__setattr__(self, "params", _EMPTY)
        elif not isinstance(params, FrozenDict):
            if not isinstance(params, Mapping):
                raise TypeError(f"Action params must be a mapping, not {type(params).__name__}")
            object.__setattr__(self, "params", freeze(params))

    def __str__(self) -> str:
        suffix = f" - {self.description}" if self.description else ""
        return f"{self.type} -> {self.target}{suffix}"
