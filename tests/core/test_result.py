"""Results: status and times are checked when a Result is built."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from aegis.core.action import Action
from aegis.core.result import Result, ResultStatus

ACTION = Action("read", "crm")


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("success", ResultStatus.SUCCESS),
        ("failed", ResultStatus.FAILED),
        ("DENIED", ResultStatus.DENIED),
        (ResultStatus.BLOCKED, ResultStatus.BLOCKED),
    ],
)
def test_status_strings_become_members(status: str, expected: ResultStatus) -> None:
    """A status given as its string value (any case) becomes the ResultStatus member."""
    result = Result(ACTION, status)  # type: ignore[arg-type]
    assert result.status is expected
    assert result.ok is (expected is ResultStatus.SUCCESS)


def test_string_status_result_prints() -> None:
    """A Result built with a string status prints like one built with a member."""
    assert str(Result(ACTION, "denied", error="no")) == "[DENIED] read -> crm: no"  # type: ignore[arg-type]


def test_unknown_status_string_lists_the_valid_ones() -> None:
    """An unknown status string raises ValueError naming every valid status."""
    with pytest.raises(ValueError, match=r"'done'.*success, failed, blocked, denied, skipped"):
        Result(ACTION, "done")  # type: ignore[arg-type]


@pytest.mark.parametrize("status", [None, 1, True])
def test_non_string_status_raises_type_error(status: object) -> None:
    """A status that is neither a ResultStatus nor a string raises TypeError."""
    with pytest.raises(TypeError, match="status must be a ResultStatus"):
        Result(ACTION, status)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("times", "message"),
    [
        ({"completed_at": "now"}, "completed_at must be a datetime or None, not str"),
        ({"started_at": None}, "started_at must be a datetime, not NoneType"),
        ({"started_at": 1700000000.0}, "started_at must be a datetime, not float"),
    ],
)
def test_times_must_be_datetimes(times: dict[str, object], message: str) -> None:
    """started_at and completed_at that are not datetimes raise TypeError."""
    with pytest.raises(TypeError, match=message):
        Result(ACTION, ResultStatus.SUCCESS, **times)  # type: ignore[arg-type]


def test_valid_times_are_kept() -> None:
    """Datetimes are kept as given; completed_at defaults to None."""
    start = datetime(2024, 5, 1, tzinfo=UTC)
    result = Result(ACTION, ResultStatus.SUCCESS, started_at=start)
    assert result.started_at is start
    assert result.completed_at is None
    result.completed_at = start  # Result stays a mutable dataclass
    assert result.completed_at is start


def test_an_exception_as_error_is_kept_as_its_text() -> None:
    """Result(error=exc) stores "Type: message", so the audit can always write it."""
    result = Result(Action("a", "b"), ResultStatus.FAILED, error=ValueError("bad id"))  # type: ignore[arg-type]
    assert result.error == "ValueError: bad id"
