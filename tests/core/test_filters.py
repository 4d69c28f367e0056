"""The audit filters: one definition of the keywords every reader takes."""

from __future__ import annotations

import pytest

from aegis.core.filters import SHORT_NAMES, FilterArgs, Filters
from aegis.errors import ConfigurationError
from aegis.testing import InMemoryAuditLog


def test_an_unknown_filter_keyword_is_refused_naming_the_filters() -> None:
    """A misspelt filter is a ConfigurationError listing the real ones, not a silent match-all."""
    with pytest.raises(ConfigurationError, match=r"unknown filter 'action'.*action_type"):
        Filters.of(action="read")  # type: ignore[call-arg]


def test_readers_take_exactly_the_filter_keywords() -> None:
    """get_log and count accept every keyword FilterArgs names, and only those."""
    audit = InMemoryAuditLog()
    every = dict.fromkeys(FilterArgs.__annotations__)
    every["view"] = "records"
    assert audit.get_log("s", **every) == []  # type: ignore[arg-type]
    assert audit.count("s", **every) == 0  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        audit.count(target="crm")  # type: ignore[call-arg]


def test_the_short_names_stand_for_every_filter_but_the_view() -> None:
    """SHORT_NAMES (the CLI's, the API's and the inbox's spelling) covers every filter."""
    assert set(SHORT_NAMES.values()) == {"session_id", *FilterArgs.__annotations__} - {"view"}
