"""Small pieces of the text Aegis shows people: counts that read right."""

from __future__ import annotations

__all__ = ["counted"]


def counted(count: int, singular: str, plural: str | None = None) -> str:
    """``count`` with the words that agree with it: ``"1 decision"``, ``"0 decisions"``.

    ``plural`` is ``singular`` with an ``s`` unless given; give it for any
    other plural, or for words after the noun that agree with it too::

        counted(n, "entry", "entries")
        counted(n, "record has", "records have")
    """
    if count == 1:
        return f"{count} {singular}"
    return f"{count} {singular + 's' if plural is None else plural}"
