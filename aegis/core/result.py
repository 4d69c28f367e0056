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


@dataclass
class Result:
    """What happened to an action: its status, data or error, and timing.

    ``ok`` is true only for :attr:`ResultStatus.SUCCESS`.
    """

    action: Action
    status: ResultStatus
    data: Any = None
    error: str | None = None
    started_at: datetime = field(default_factory=_now)
    completed_at: datetime | None = None

    @property
    def ok(self) -> bool:
        """Whether the action ran and succeeded."""
        return self.status is ResultStatus.SUCCESS

    def __str__(self) -> str:
        detail = f": {self.error}" if self.error else ""
        return f"[{self.status.value.upper()}] {self.action.type} -> {self.action.target}{detail}"
