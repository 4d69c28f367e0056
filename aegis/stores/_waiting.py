"""One thread's append, queued for whichever thread writes next.

Both engines group the appends of threads that arrive while another thread
is writing (group commit across threads): an append that finds the writer
busy queues a :class:`Waiting`, and the next writer writes every queued
append in one transaction, then hands each waiter its own records, or its
own copy of the error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aegis.core.record import AuditRecord, RecordDraft


class Waiting:
    """The drafts of one thread's append, and what became of them."""

    __slots__ = ("done", "drafts", "error", "extra", "records")

    def __init__(self, drafts: Sequence[RecordDraft], extra: Sequence[Any] = ()) -> None:
        self.drafts = drafts
        #: what an engine prepared beside each draft (PostgreSQL: its encoded pieces)
        self.extra = extra
        self.records: list[AuditRecord] = []
        self.error: BaseException | None = None
        self.done = False

    def wrote(self, records: list[AuditRecord]) -> None:
        self.records, self.done = records, True

    def failed(self, exc: BaseException) -> None:
        # a copy per thread: each raises its own, with a traceback of its own
        try:
            copy = type(exc).__new__(type(exc))
            copy.__dict__.update(exc.__dict__)
            copy.args = exc.args
            copy.__cause__ = exc
        except (TypeError, AttributeError):  # an error that cannot be copied: share it
            copy = exc
        self.error, self.done = copy, True

    def outcome(self) -> list[AuditRecord]:
        """This thread's records, or its error raised."""
        if self.error is not None:
            raise self.error
        return self.records
