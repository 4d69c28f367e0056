"""The outcome of one action after it went through the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from aegis.core.action import Action

__all__ = ["Result", "ResultStatus"]


class ResultStatus(StrEnum):
    """Final status of an action."""

    SUCCESS = "success"
    FAILED = "failed"  # the executor raised or reported failure
    BLOCKED = "blocked"  # the policy forbids it
    DENIED = "denied"  # a human (or a failing approval handler) said no
    SKIPPED = "skipped"  # an earlier action in the plan failed or was denied


def _now() -> datetime:
    return datetime.now(UTC)


def _coerce_status(status: object) -> ResultStatus:
    valid = ", ".join(member.value for member in ResultStatus)
    if not isinstance(status, str):
        raise TypeError(
            f"Result status must be a ResultStatus or one of the strings {valid};"
            f" got {type(status).__name__} ({status!r})"
        )
    try:
        return ResultStatus(status.lower())
    except ValueError:
        raise ValueError(
            f"unknown Result status {status!r}; use a ResultStatus or one of {valid}"
        ) from None


@dataclass
class Result:
    """What happened to an action: its status, data or error, and timing.

    ``ok`` is true only for :attr:`ResultStatus.SUCCESS`. A status given as
    a string (``"success"``) becomes its :class:`ResultStatus`.

    Raises:
        ValueError: the status is a string that names no :class:`ResultStatus`.
        TypeError: the status is not a string, or a time is not a datetime.

    Example::

        Result(action, ResultStatus.SUCCESS, data={"id": 7})
    """

    action: Action
    status: ResultStatus
    data: Any = None
    error: str | None = None
    started_at: datetime = field(default_factory=_now)
    completed_at: datetime | None = None

    def __post_init__(self) -> None:
        # Executors build Results by hand; a wrong type here would only fail
        # later, in the audit trail, far from the executor that caused it.
        status = self.status
        if not isinstance(status, ResultStatus):
            self.status = _coerce_status(status)
        if not isinstance(self.started_at, datetime):
            raise TypeError(
                f"Result started_at must be a datetime, not {type(self.started_at).__name__}"
                f" ({self.started_at!r})"
            )
        if self.completed_at is not None and not isinstance(self.completed_at, datetime):
            raise TypeError(
                "Result completed_at must be a datetime or None, not"
                f" {type(self.completed_at).__name__} ({self.completed_at!r})"
            )
        error = self.error
        if error is not None and not isinstance(error, str):
            # Result(action, FAILED, error=exc) is an easy slip; keep its text.
            self.error = (
                f"{type(error).__name__}: {error}"
                if isinstance(error, BaseException)
                else str(error)
            )

    @property
    def ok(self) -> bool:
        """Whether the action ran and succeeded."""
        return self.status is ResultStatus.SUCCESS

    def __str__(self) -> str:
        detail = f": {self.error}" if self.error else ""
        return f"[{self.status.value.upper()}] {self.action.type} -> {self.action.target}{detail}"
