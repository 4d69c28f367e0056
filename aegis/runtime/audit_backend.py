"""What every audit backend offers, and the pieces the backends share.

An audit backend keeps the records of governed actions. :class:`AuditBackend`
is the interface the runtime, the integrations and the command line use;
:class:`~aegis.runtime.audit.AuditLogger` (a hash chain in a store: SQLite,
PostgreSQL, memory) and :class:`~aegis.runtime.audit_logging.LoggingAuditLogger`
implement it.

A record, as the read methods return it, is a plain ``dict`` with the keys in
:data:`RECORD_FIELDS` (see :mod:`aegis.core.record`); ``action_params``,
``result_data`` and ``context`` are JSON values. Its chain hash is
:func:`record_hash` (see :mod:`aegis.core.chain`), which an exported JSONL
line verifies with::

    rec = json.loads(line)
    assert record_hash(rec) == rec["hash"]
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Unpack, runtime_checkable

from aegis.core.chain import GENESIS_HASH, HASHED_SCALARS, record_hash
from aegis.core.decision import PolicyDecision
from aegis.core.filters import FilterArgs, Filters
from aegis.core.outcome import ApprovalOutcome
from aegis.core.record import (
    RECORD_FIELDS,
    ContextValue,
    DecisionStamp,
    isoformat,
    safe_repr,
    storable_json,
)
from aegis.core.result import Result, ResultStatus
from aegis.errors import AuditError, ConfigurationError
from aegis.runtime.asking import describe

if TYPE_CHECKING:
    from aegis.stores.sqlite.connection import Guard

# The interface a backend implements, and what a reader of its records needs.
# The helpers (RecordReader, SubscriberList, write_jsonl) are shared by the
# backends in this package and may change without notice.
__all__ = [
    "GENESIS_HASH",
    "HASHED_FIELDS",
    "RECORD_FIELDS",
    "AuditBackend",
    "Subscriber",
    "dump_json",
    "isoformat",
    "record_hash",
]

logger = logging.getLogger("aegis.audit")

#: the fields of the first schema's hash, in order (the scalars, then the two JSON values)
HASHED_FIELDS: tuple[str, ...] = (*HASHED_SCALARS, "action_params", "result_data")

#: a callable that receives each new record after it is stored
Subscriber = Callable[[dict[str, Any]], object]

#: canonical JSON that never raises (see :func:`aegis.core.record.storable_json`)
dump_json = storable_json


@runtime_checkable
class AuditBackend(Protocol):
    """Where the runtime writes one record per action.

    ``record_start`` is called right before the executor runs and ``record``
    once the action has its final outcome (success, failure, blocked, denied
    or skipped). Both return only once the write is durable.
    """

    def log(
        self,
        session_id: str,
        decision: PolicyDecision,
        *,
        result: Result | None = None,
        human_decision: str | ApprovalOutcome | None = None,
        context: Mapping[str, ContextValue] | None = None,
        decided_at: str | None = None,
        policy_digest: str | None = None,
    ) -> int:
        """Write one finished record synchronously and return its id."""
        ...

    async def record_start(
        self,
        session_id: str,
        decision: PolicyDecision,
        *,
        human_decision: str | ApprovalOutcome | None = None,
        context: Mapping[str, ContextValue] | None = None,
        decided_at: str | None = None,
        policy_digest: str | None = None,
    ) -> int | None:
        """Note that an action is about to run; return a token for :meth:`record`."""
        ...

    async def record(
        self,
        session_id: str,
        decision: PolicyDecision,
        *,
        result: Result,
        human_decision: str | ApprovalOutcome | None = None,
        start_token: int | None = None,
        context: Mapping[str, ContextValue] | None = None,
        decided_at: str | None = None,
        policy_digest: str | None = None,
    ) -> int:
        """Write the final record of an action (naming its start record); return its id.

        ``context``, ``decided_at`` and ``policy_digest`` come from the
        decide step (see :class:`~aegis.core.record.DecisionStamp`).
        Reading ``result`` runs the executor's code (its data's
        ``__repr__``): when that raises a ``KeyboardInterrupt``, a
        ``SystemExit`` or another ``BaseException`` that is no failure of
        its own, the record says so (:func:`interrupted_result`) and is
        written, then the exception goes on.
        """
        ...

    def get_log(
        self,
        session_id: str | None = None,
        *,
        limit: int | None = None,
        after_id: int | None = None,
        **filters: Unpack[FilterArgs],
    ) -> list[dict[str, Any]]:
        """Return the records that match every given filter, oldest first."""
        ...

    def count(
        self,
        session_id: str | None = None,
        **filters: Unpack[FilterArgs],
    ) -> int:
        """Return how many records match every given filter."""
        ...

    def export_jsonl(self, path: str | Path, session_id: str | None = None) -> int:
        """Write one UTF-8 JSON line per action to ``path``; return how many."""
        ...

    def subscribe(self, callback: Subscriber) -> None:
        """Call ``callback`` with each new record once it is stored."""
        ...

    def unsubscribe(self, callback: Subscriber) -> None:
        """Stop calling ``callback``."""
        ...

    def close(self) -> None:
        """Release resources; calling it again does nothing."""
        ...


@runtime_checkable
class GuardedStarts(Protocol):
    """An optional capability of an audit backend: a start record in one commit with other writes.

    Not part of the public interface (its guard is the usage store's own);
    the runtime asks for it explicitly instead of probing for methods.

    :class:`~aegis.runtime.audit.AuditLogger` over SQLite has it: the usage
    counters sharing its database reserve an action's charges and note its
    flow event in the transaction that appends the action's start record
    (see :class:`~aegis.runtime.metering.Deferred`). Over PostgreSQL too,
    for the flow event alone, when the usage store is in the trail's
    database and schema. The metering step uses it only when :meth:`guards`
    says yes for the usage store's database.
    """

    def guards(self, database: object) -> bool:
        """Whether :meth:`record_start_guarded` can share a transaction on ``database``."""
        ...

    def record_start_guarded(
        self,
        session_id: str,
        decision: PolicyDecision,
        guard: Guard,
        human_decision: str | ApprovalOutcome | None = None,
        stamp: DecisionStamp | None = None,
    ) -> int | None:
        """Append the start record with ``guard``'s writes; its id, or ``None`` if it said no."""
        ...


class RecordReader:
    """The filtered reads of an audit backend, built on two methods of a subclass.

    A subclass implements :meth:`_select` (and may override :meth:`_count`
    and :meth:`export_jsonl` with faster versions); the public signatures
    are spelled out here once.
    """

    def _select(
        self, filters: Filters, after_id: int | None, limit: int | None
    ) -> Iterator[dict[str, Any]]:
        """Yield the records matching ``filters`` with an id above ``after_id``, oldest first."""
        raise NotImplementedError

    def _count(self, filters: Filters) -> int:
        """Return how many records match ``filters``."""
        return sum(1 for _ in self._select(filters, None, None))

    def iter_log(
        self,
        session_id: str | None = None,
        *,
        limit: int | None = None,
        after_id: int | None = None,
        **filters: Unpack[FilterArgs],
    ) -> Iterator[dict[str, Any]]:
        """Yield the records that match every given filter, oldest first.

        Filters are exact matches; ``since``/``until`` bound the record's
        ``timestamp`` (inclusive; a naive datetime means UTC). ``limit`` caps
        how many are yielded and ``after_id`` skips the records up to that id.
        ``view="actions"`` (the default) gives one record per action: its
        final record, or its start record while it has none (an action
        interrupted or still running); ``view="records"`` gives every record
        of the chain.

        Raises:
            ConfigurationError: a filter that is unknown or holds a value no
                record could (when the first record is asked for).
        """
        yield from self._select(Filters.of(session_id, **filters), after_id, limit)

    def get_log(
        self,
        session_id: str | None = None,
        *,
        limit: int | None = None,
        after_id: int | None = None,
        **filters: Unpack[FilterArgs],
    ) -> list[dict[str, Any]]:
        """Return the records that match every given filter, oldest first (see :meth:`iter_log`)."""
        return list(self.iter_log(session_id, limit=limit, after_id=after_id, **filters))

    def count(
        self,
        session_id: str | None = None,
        **filters: Unpack[FilterArgs],
    ) -> int:
        """Return how many records match every given filter (see :meth:`iter_log`)."""
        return self._count(Filters.of(session_id, **filters))

    def export_jsonl(
        self, path: str | Path, session_id: str | None = None, *, records: bool = False
    ) -> int:
        """Write one UTF-8 JSON line per action (of one session, if given); return how many.

        Each action's line is its final record, or its start record, marked
        ``"unfinished": true``, while it has none. ``records=True`` writes
        every record of the trail instead, start records included.
        """
        if records:
            return write_jsonl(path, self.iter_log(session_id, view="records"))
        return write_jsonl(path, map(mark_unfinished, self.iter_log(session_id)))


class SubscriberList:
    """Callbacks to notify of new records; a failing callback is logged, not raised."""

    __slots__ = ("_callbacks",)

    def __init__(self) -> None:
        self._callbacks: tuple[Subscriber, ...] = ()

    def __bool__(self) -> bool:
        return bool(self._callbacks)

    def add(self, callback: Subscriber) -> None:
        """Add ``callback``; it must accept one record dict."""
        if not callable(callback):
            raise ConfigurationError(
                f"an audit subscriber must be callable, not {type(callback).__name__}"
            )
        # Replacing the tuple keeps notify() safe if a callback unsubscribes itself.
        self._callbacks = (*self._callbacks, callback)

    def remove(self, callback: Subscriber) -> None:
        """Remove ``callback``; removing one that is not subscribed does nothing."""
        callbacks = list(self._callbacks)
        if callback in callbacks:
            callbacks.remove(callback)
            self._callbacks = tuple(callbacks)

    def notify(self, record: dict[str, Any]) -> None:
        """Call every subscriber with ``record``; log and swallow their exceptions."""
        for callback in self._callbacks:
            try:
                callback(record)
            except Exception:
                # The record is already stored; a broken listener must not
                # turn a governed action into a failure.
                logger.exception(
                    "audit subscriber %r failed on record %s", callback, record.get("id")
                )


def interrupted_result(result: Result, exc: BaseException) -> Result:
    """What to record of ``result`` when reading it raised ``exc`` (Ctrl-C, ``sys.exit()``).

    The runtime's own words for an interrupted action (``FAILED``, or the
    status it had if it never ran), with none of what could not be read.
    """
    status = result.status
    started = result.started_at
    return Result(
        result.action,
        status
        if type(status) is ResultStatus and status is not ResultStatus.SUCCESS
        else ResultStatus.FAILED,
        error=f"interrupted: {describe(exc)}",
        started_at=started if type(started) is datetime else datetime.now(UTC),
        completed_at=datetime.now(UTC),
    )


def mark_unfinished(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` as an action's exported line: a start record says the action is unfinished."""
    if record.get("kind") == "start":
        return {**record, "unfinished": True}
    return record


def write_jsonl(path: str | Path, records: Iterable[Mapping[str, Any] | str]) -> int:
    """Write ``records`` (dicts, or lines of JSON already) to ``path``; return how many."""
    written = 0
    try:
        with open(path, "w", encoding="utf-8", newline="\n") as out:
            for record in records:
                line = (
                    record
                    if isinstance(record, str)
                    else json.dumps(record, ensure_ascii=False, default=safe_repr)
                )
                out.write(line)
                out.write("\n")
                written += 1
    except OSError as exc:
        raise AuditError(
            f"cannot export the audit log to {str(path)!r}: {exc.strerror or exc}; "
            "check that the folder exists and is writable"
        ) from exc
    return written
