"""The count helper behind every "N things" message."""

from __future__ import annotations

import pytest

from aegis.core._text import counted


@pytest.mark.parametrize(
    ("count", "words", "shown"),
    [
        (0, ("decision",), "0 decisions"),
        (1, ("decision",), "1 decision"),
        (2, ("decision",), "2 decisions"),
        (1, ("entry", "entries"), "1 entry"),
        (5, ("entry", "entries"), "5 entries"),
        (1, ("record has", "records have"), "1 record has"),
        (3, ("record has", "records have"), "3 records have"),
        (-1, ("degree",), "-1 degrees"),
    ],
)
def test_counted_agrees_with_its_count(count: int, words: tuple[str, ...], shown: str) -> None:
    """Only exactly one takes the singular; any other plural is given whole."""
    assert counted(count, *words) == shown
