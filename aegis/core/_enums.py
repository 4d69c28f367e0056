"""An enum member from the way a policy spells it, read one way for every enum a policy names.

A policy names an approval (``block``), a risk level (``high``) or another
enum member as text, in any case, or gives the member itself from Python.
The rule, the policy's defaults and a limit's ``on_exceed`` all read it
here; each caller says which error a wrong name raises, so that a limit's
error still points at its own key. Pure, no I/O; it sits below
:mod:`aegis.core.limits` and :mod:`aegis.core.rule` so that both use it
without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import TypeVar

from aegis.errors import PolicyError

__all__ = ["coerce_enum"]

_E = TypeVar("_E", bound=Enum)


def coerce_enum(
    enum: type[_E],
    value: object,
    what: str,
    error: Callable[[str], Exception] = PolicyError,
) -> _E:
    """A member of ``enum`` given as itself or by its name in any case.

    ``what`` names the setting in the message; ``error`` builds the
    exception raised for anything else (a :class:`~aegis.errors.PolicyError`
    unless given), whose message lists the valid names.
    """
    if isinstance(value, enum):
        return value
    if isinstance(value, str):
        for member in enum:
            if member.name.lower() == value.lower():
                return member
    valid = ", ".join(member.name.lower() for member in enum)
    raise error(f"{what} must be one of {valid}; got {value!r}")
