"""The default audit trail: a hash chain of records in a store (SQLite by default).

Each record carries the hash of the one before it, so editing, deleting,
inserting or reordering records breaks the chain, and :meth:`AuditLogger.verify`
names the first record that does not fit. Keep :meth:`AuditLogger.head`
somewhere else to detect records cut off the end as well::

    audit = AuditLogger("audit.db")
    head = audit.head()            # str(head) is e.g. "1042:9f86d0..."; keep it elsewhere
    ...
    report = audit.verify(expected_head=head)
    assert report.ok, report.reason

The start of every action that reaches the executor is a record of the
chain too, committed before the executor runs; its final record names it
(``start_id``). An action killed mid-run therefore stays in every view of
the trail as started, with no outcome (see :meth:`AuditLogger.pending`).

:class:`AuditLogger` is the one facade over every store: a path or
``sqlite:///...`` gives the SQLite trail, ``postgresql://...`` the
PostgreSQL one (the ``postgres`` extra), and ``store=`` any
:class:`~aegis.stores.base.AuditStore`.

Size: AuditLogger is the one facade of the seed's import path over every store
(append, start records, reading, export, verify, checkpoints), and most of its
length is docstrings of that public API.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from asyncio import current_task
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from aegis.core.chain import Head, VerifyReport
from aegis.core.checkpoint import Checkpoint
from aegis.core.decision import PolicyDecision
from aegis.core.filters import Filters, View
from aegis.core.outcome import ApprovalOutcome, human_text
from aegis.core.record import (
    AuditRecord,
    ContextValue,
    DecisionStamp,
    RecordDraft,
    RecordKind,
    decision_stamp,
    final_draft,
    finish_draft,
    isoformat,
    start_draft,
    storable_json,
    to_dict,
)
from aegis.core.result import Result, ResultStatus
from aegis.errors import AuditError, ConfigurationError
from aegis.runtime._group_commit import GroupCommit
from aegis.runtime.audit_backend import (
    RecordReader,
    Subscriber,
    SubscriberList,
    interrupted_result,
    write_jsonl,
)
from aegis.stores import Stores, open_stores, parse_store_url, stores_for
from aegis.stores.base import AuditStore, CheckpointStore

if TYPE_CHECKING:
    from aegis.runtime.signing import Signer, Verifier
    from aegis.stores.sqlite.connection import Guard

__all__ = ["AuditLogger", "Head", "VerifyReport"]


_MEMORY: Final = ":memory:"
_log = logging.getLogger("aegis.audit")

#: what the logger keeps of a start until its final record: the action, its
#: context, the start's draft, the human decision as given, the decision
_Started = tuple[object, object, RecordDraft, object, PolicyDecision]


def _stamp_changed(start: RecordDraft, stamp: DecisionStamp | None) -> bool:
    """Whether ``stamp`` differs from what the start record stored."""
    if stamp is None:
        return start.decided_at is not None or start.context is not None
    return (
        stamp.decided_at != start.decided_at
        or stamp.policy_digest != start.policy_digest
        or ((storable_json(stamp.context) if stamp.context else None) != start.context)
    )


def _start(
    session_id: str,
    decision: PolicyDecision,
    human_decision: str | ApprovalOutcome | None,
    stamp: DecisionStamp | None,
) -> RecordDraft:
    """The start record of ``decision``'s action."""
    # No params encode as "{}" too; a None or text human decision is the text.
    return start_draft(
        session_id,
        decision,
        human_decision=human_decision
        if human_decision is None or type(human_decision) is str
        else human_text(human_decision),
        stamp=stamp,
        params_json=storable_json(decision.action.params),
    )


class AuditLogger(RecordReader):
    """A tamper-evident audit trail: SQLite by default, or any store.

    The store opens on first use (or on :meth:`check`, which the runtime
    calls before its first action). Several processes may append to the
    same trail; the chain stays one.

    What a returned record survives is the ``durability`` (the same on every
    store): at the default ``"result"`` a Result is returned only after its
    final record is on disk, as agent-aegis and PostgreSQL do by default; a
    start record, committed before the executor runs, need only survive the
    death of the process, and the final record's flush carries it to disk
    too, so an action waits for one flush. ``"process"`` waits for no disk
    (a record survives ``kill -9``, not a power cut); ``"full"`` flushes
    start records too, so even a power cut cannot hide an action that
    began. Blocked and denied actions' records are final records and are
    flushed like the others at ``"result"``.

    Concurrent writes from one event loop (the start and final records of
    many actions) are committed together, once per loop iteration: one
    commit and at most one flush for the lot; each caller gets its id only
    after the commit. SQLite writes run on the calling thread (no thread
    hop); a remote store's batches run on a worker thread, and an action
    alone (one task acting one action at a time) writes on the calling
    thread, as on SQLite.

    Args:
        db_path: a SQLite file (or ``":memory:"``), ``sqlite:///...``,
            ``postgresql://...`` or ``memory://``.
        busy_timeout: SQLite: seconds to wait for another writer before failing.
        create: create the store if missing; ``False`` raises
            :class:`~aegis.errors.AuditError` instead (for tools that read).
        durability: ``"process"``, ``"result"`` (the default) or ``"full"``;
            see :data:`~aegis.stores.base.Durability`.
        synchronous: the older spelling of ``durability``: ``"full"`` is
            ``"full"``; ``"normal"`` keeps what it meant on each engine
            (``"process"`` on SQLite, ``"result"`` on PostgreSQL).
        readonly: never write (to read a backup or an evidence copy).
        store: an :class:`~aegis.stores.base.AuditStore` to use instead of
            opening ``db_path``.
        signing_key: the path of an Ed25519 private key (``aegis audit
            keygen``), or a :class:`~aegis.runtime.signing.Signer`; defaults
            to ``$AEGIS_AUDIT_KEY`` when set. The head is then signed every
            ``checkpoint_every`` records or ``checkpoint_interval`` seconds,
            whichever comes first, and at :meth:`close` (the ``signing`` extra).
            A checkpoint that cannot be written is logged (``aegis.audit``)
            and tried again with the next record; the records stand.
        checkpoint_every: records between two signed checkpoints.
        checkpoint_interval: seconds between two signed checkpoints.
        options: more options for the store's engine (e.g. ``schema=`` for
            PostgreSQL).

    Example::

        audit = AuditLogger("audit.db")
        for record in audit.get_log(result_status="denied"):
            print(record["id"], record["action_type"], record["human_decision"])
    """

    def __init__(  # each is a documented option
        self,
        db_path: str | Path = "aegis_audit.db",
        *,
        busy_timeout: float = 30.0,
        create: bool = True,
        synchronous: str | None = None,
        readonly: bool = False,
        durability: str | None = None,
        store: AuditStore | None = None,
        signing_key: str | Path | Signer | None = None,
        checkpoint_every: int = 1000,
        checkpoint_interval: float = 60.0,
        **options: Any,
    ) -> None:
        if store is None:
            location = parse_store_url(db_path)
            if location.engine == "sqlite":
                options.update(busy_timeout=busy_timeout)
            options.update(durability=durability, synchronous=synchronous)
            stores = open_stores(location, create=create, readonly=readonly, **options)
            # the path as given (a SQLite file), or the DSN with its password masked
            self._path = location.where if location.engine == "postgres" else str(db_path)
        else:
            stores = stores_for(store)
            self._path = store.url
        self._stores = stores
        self._store: AuditStore = stores.audit
        self._closed = False
        self._subscribers = SubscriberList()
        self._notify = False  # whether there are subscribers (read on every write)
        # the records of concurrent actions, committed (and flushed) together
        self._batch: GroupCommit[RecordDraft, AuditRecord] = GroupCommit(
            self._write, remote=self._store.remote, give_back=self._orphaned
        )
        self._lock = threading.Lock()
        # start id -> (the action, its context, its start draft, the human decision
        # as given, the decision): the final record of the action reuses the
        # encoded fields instead of encoding them again
        self._starts: dict[int, _Started] = {}
        # start id -> the starts kept before under that id, still unfinished: a
        # store may give an id again (PostgreSQL, after a crash took the start
        # that had it and the start was recorded again), and both actions then
        # hold it (see _own)
        self._earlier: dict[int, list[_Started]] = {}
        self._signer = None if readonly else _signer(signing_key, self._store)
        if checkpoint_every < 1 or not checkpoint_interval > 0:
            raise ConfigurationError(
                "checkpoint_every must be 1 or more and checkpoint_interval a positive "
                f"number of seconds, got {checkpoint_every!r} and {checkpoint_interval!r}"
            )
        self._checkpoint_every = checkpoint_every
        self._checkpoint_interval = checkpoint_interval
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        self._signed: Head | None = None
        # id -> hash of each record this logger wrote since its last checkpoint
        # (kept only with a key): what a checkpoint checks before it signs
        self._written: dict[int, str] = {}
        # since when notifying or signing after a write fails, and when that was logged last
        self._failing_since: float | None = None
        self._failing_logged = 0.0

    @property
    def db_path(self) -> str:
        """The path or URL of the trail (a DSN with its password masked)."""
        return self._path

    @property
    def store(self) -> AuditStore:
        """The store that keeps the records."""
        return self._store

    @property
    def stores(self) -> Stores:
        """The trail's store with the usage and approval stores beside it, on its connection.

        A :class:`~aegis.runtime.engine.Runtime` counts its limits in
        ``stores.usage``; ``aegis serve`` keeps approvals in ``stores.approvals``.
        """
        return self._stores

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<AuditLogger {self.db_path!r}{state}>"

    # -- lifetime ---------------------------------------------------------------

    def _closed_error(self) -> AuditError:
        return AuditError(
            f"the audit logger for {self.db_path!r} is closed; create a new AuditLogger"
        )

    def _check_open(self) -> None:
        if self._closed:
            raise self._closed_error()

    def check(self) -> None:
        """Open the store and prove it usable now, writing nothing.

        The runtime calls this before its first action, so a path that is
        not an Aegis database, a damaged or read-only file, or an
        unreachable server is an error before anything runs.
        """
        self._check_open()
        self._store.check()

    def close(self) -> None:
        """Commit queued records, sign the head if a key is set, close; idempotent."""
        if self._closed:
            return
        try:
            self._flush()
            if self._signer is not None:
                self._sign_written()
        finally:
            self._closed = True
            self._stores.close()

    def __enter__(self) -> AuditLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- writing ----------------------------------------------------------------

    def _write(self, drafts: Sequence[RecordDraft]) -> list[AuditRecord]:
        records = self._store.append(drafts)
        # Speed (benchmarks/calls.py, every kind): with no subscriber and no
        # key, and nothing failing, there is nothing to do after a write.
        if self._notify or self._signer is not None or self._failing_since is not None:
            self._wrote(records)
        return records

    def _orphaned(self, record: AuditRecord) -> None:
        """End the action of a start record whose writer was cancelled before it heard the id.

        The batch wrote the start all the same (a record once asked for is
        kept), but the runtime never learnt its id, so no final record would
        ever name it: the trail would show an action that began and never
        ended, as a killed process leaves. It did not run: the executor
        comes after the start. A final record (nothing else) needs no end.
        """
        if record.kind != RecordKind.START.value:
            return
        now = isoformat(datetime.now(UTC))
        start = RecordDraft._make(record[1 : 1 + len(RecordDraft._fields)])
        final = start._replace(
            kind=RecordKind.FINAL.value,
            timestamp=now,
            result_status=ResultStatus.SKIPPED.value,
            result_data="null",
            result_error="interrupted: CancelledError (while its start record was written; "
            "it did not run)",
            started_at=None,
            completed_at=now,
            start_id=record.id,
        )
        try:
            self._write((final,))
        except AuditError:
            _log.exception(
                "could not record that the action of start record %s was cancelled before it ran",
                record.id,
            )

    def _wrote(self, records: Sequence[AuditRecord]) -> None:
        """Tell the subscribers, and sign the head when a checkpoint is due.

        The records are committed already: a checkpoint that cannot be
        written is logged (and tried again with the next record), never
        reported as the records' failure. While it keeps failing, it is
        logged again once a minute, not on every write.
        """
        try:
            self._after_write(records)
        except Exception:
            now = time.monotonic()
            if self._failing_since is None or now - self._failing_logged >= 60.0:
                again = "" if self._failing_since is None else " (still failing)"
                _log.exception(
                    "records %s-%s are committed, but notifying or signing failed%s",
                    records[0].id,
                    records[-1].id,
                    again,
                )
                self._failing_logged = now
            if self._failing_since is None:
                self._failing_since = now
        else:
            if self._failing_since is not None:
                _log.warning("notifying and signing after writes work again")
                self._failing_since = None

    def _after_write(self, records: Sequence[AuditRecord]) -> None:
        if self._subscribers:
            for record in records:
                self._subscribers.notify(to_dict(record))
        if self._signer is not None:
            written = self._written
            for record in records:
                written[record.id] = record.hash
            self._since_checkpoint += len(records)
            if (
                self._since_checkpoint >= self._checkpoint_every
                or time.monotonic() - self._last_checkpoint >= self._checkpoint_interval
            ):
                self._sign_written()

    def _sign(self, head: Head) -> Checkpoint | None:
        signer = self._signer
        if signer is None or head.count == 0 or head == self._signed:
            return None
        checkpoint = signer.sign(head.count, head.hash)
        self._store.add_checkpoint(checkpoint)  # type: ignore[attr-defined]  # checked at init
        self._signed = head
        self._written.clear()
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        return checkpoint

    def _changed(self) -> Head | None:
        """The first record written here since the last checkpoint that the store no longer holds.

        As this logger wrote it (its id and the hash it computed); ``None``
        when every one is still there as written. Someone who can write the
        store could otherwise rewrite those records, not yet covered by a
        signature, and have the next checkpoint sign the rewrite.
        """
        written = self._written
        if not written:
            return None
        first, last = min(written), max(written)
        found = 0
        for record in self._store.records(
            Filters(view="records"), after_id=first - 1, limit=last - first + 1
        ):
            expected = written.get(record.id)
            if expected is None:
                continue
            if record.hash != expected:
                return Head(record.id, expected)
            found += 1
        if found == len(written):
            return None
        stored = {r.id for r in self._store.records(Filters(view="records"), after_id=first - 1)}
        gone = min(i for i in written if i not in stored)
        return Head(gone, written[gone])

    def _sign_written(self) -> Checkpoint | None:
        """Sign the last record this logger wrote, once those since the last checkpoint are checked.

        A record changed or removed in the store since this logger wrote it
        is not signed over: the head this logger wrote for it is, so that a
        verify with the public key names the rewrite, and the error is logged.
        """
        changed = self._changed()
        if changed is not None:
            _log.error(
                "record %s of %s is no longer the record this logger wrote: the trail was "
                "changed; its checkpoint signs the record as written, so verify reports it",
                changed.count,
                self.db_path,
            )
            return self._sign(changed)
        written = self._written
        if not written:
            return None
        last = max(written)
        return self._sign(Head(last, written[last]))

    def checkpoint(self) -> Checkpoint | None:
        """Sign the current head now and keep the checkpoint; ``None`` without a key.

        Also ``None`` when the chain is empty or the head is signed already.
        The signature vouches for the trail as the store holds it now, so
        the records this logger wrote since its last checkpoint are checked
        first: if one was changed or removed meanwhile, the record as this
        logger wrote it is signed instead (a verify with the public key
        then reports the rewrite) and the error is logged.
        """
        self._check_open()
        if self._written:
            changed = self._changed()
            if changed is not None:
                return self._sign_written()
        return self._sign(self._store.head())

    def _flush(self) -> None:
        self._batch.flush()

    def log(  # one argument per field of the record
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
        """Write one final record now and return its id; safe from any thread.

        Without a ``result`` the record has no status: nothing is known to
        have run. ``human_decision`` may be the text to store or the
        :class:`~aegis.core.outcome.ApprovalOutcome` a handler gave.
        """
        self._check_open()
        human, stamp = (
            human_text(human_decision),
            decision_stamp(context, decided_at, policy_digest),
        )
        try:
            draft = final_draft(session_id, decision, result, human_decision=human, stamp=stamp)
        except BaseException as exc:  # reading the result said "stop" (see AuditBackend.record)
            if result is not None:
                ended = interrupted_result(result, exc)
                draft = final_draft(session_id, decision, ended, human_decision=human, stamp=stamp)
                try:
                    self._write([draft])
                except Exception:  # best effort, as in record
                    _log.exception("could not record the interruption of %s", decision.action)
            raise
        return self._write([draft])[0].id

    async def record_start(
        self,
        session_id: str,
        decision: PolicyDecision,
        *,
        human_decision: str | ApprovalOutcome | None = None,
        context: Mapping[str, ContextValue] | None = None,
        decided_at: str | None = None,
        policy_digest: str | None = None,
    ) -> int:
        """Commit the start record of an action about to run; return its id.

        Pass the id as ``start_token`` to :meth:`record`. Once this returns
        the start is in the chain and survives the death of the process;
        until the final record is written the action shows as started
        (:meth:`pending`, and in every listing and export).
        """
        draft = _start(
            session_id, decision, human_decision, decision_stamp(context, decided_at, policy_digest)
        )
        if self._closed:
            raise self._closed_error()
        batch = self._batch
        if not batch.waiting and current_task() is batch.last_task:
            # Speed (benchmarks/calls.py, every kind): what batch.submit does for
            # an agent acting one action at a time (nothing to group with),
            # without a coroutine of its own; on a remote store too, which
            # submit writes at once on this thread as well.
            record = self._write((draft,))[0]
        else:
            record = await batch.submit(draft)
        starts, start_id = self._starts, record.id
        if start_id in starts:  # given again: the earlier action holds it too (see _own)
            self._earlier.setdefault(start_id, []).append(starts[start_id])
        starts[start_id] = (decision.action, context, draft, human_decision, decision)
        return record.id

    def guards(self, database: object) -> bool:
        """Whether :meth:`record_start_guarded` can share a transaction on ``database``.

        True when this trail is a SQLite store on that very
        :class:`~aegis.stores.sqlite.connection.SQLiteDatabase` (the usage
        counters beside it, on the audit's connection), or a store that says
        so itself (PostgreSQL: the same database and schema, see
        :meth:`~aegis.stores.postgres.audit.PostgresAuditStore.guards`).
        """
        store = self._store
        if self._closed or not callable(getattr(store, "append_guarded", None)):
            return False
        says = getattr(store, "guards", None)
        if callable(says):
            return bool(says(database))
        return getattr(store, "db", None) is database

    def record_start_guarded(
        self,
        session_id: str,
        decision: PolicyDecision,
        guard: Guard,
        human_decision: str | ApprovalOutcome | None = None,
        stamp: DecisionStamp | None = None,
        *,
        context: Mapping[str, ContextValue] | None = None,
        decided_at: str | None = None,
        policy_digest: str | None = None,
    ) -> int | None:
        """:meth:`record_start` in one transaction with ``guard``'s writes; ``None`` if it said no.

        Only for a store that :meth:`guards` the guard's database. It
        writes at once, on the calling thread (an agent running actions one
        by one: there is no batch to join). ``stamp`` holds what
        :meth:`record_start` takes as ``context``, ``decided_at`` and
        ``policy_digest`` (the runtime has it at hand); those keywords are
        taken too, when no ``stamp`` is given.
        """
        if self._closed:
            raise self._closed_error()
        if stamp is None:
            stamp = decision_stamp(context, decided_at, policy_digest)
        draft = _start(session_id, decision, human_decision, stamp)
        record = self._store.append_guarded(draft, guard)  # type: ignore[attr-defined]  # guards()
        if record is None:
            return None
        context = None if stamp is None else stamp.context
        starts, start_id = self._starts, record.id
        if start_id in starts:  # given again: the earlier action holds it too (see _own)
            self._earlier.setdefault(start_id, []).append(starts[start_id])
        starts[start_id] = (decision.action, context, draft, human_decision, decision)
        # never raises: metering again would count the action twice; and, as in
        # _write, with no subscriber, no key and nothing failing there is nothing to do
        if self._notify or self._signer is not None or self._failing_since is not None:
            self._wrote((record,))
        return int(record.id)

    async def record(  # one argument per field of the record
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
        """Append the final record of an action and return its id once committed.

        ``start_token`` is the id :meth:`record_start` returned, if the
        action reached the executor; the final record names it.
        """
        kept = None if start_token is None else self._starts.pop(start_token, None)
        if self._earlier and kept is not None and start_token is not None:
            kept = self._own(start_token, kept, decision)
        draft = None
        try:
            if start_token is not None and kept is not None and kept[0] is decision.action:
                _, started_context, start, started_human, _ = kept
                if (
                    start.session_id == session_id
                    and start.decided_at == decided_at
                    and start.policy_digest == policy_digest
                    and (
                        started_context is context
                        or not _stamp_changed(
                            start, decision_stamp(context, decided_at, policy_digest)
                        )
                    )
                ):
                    # The approval's text is the start's when it is the same answer.
                    human = (
                        start.human_decision
                        if human_decision is started_human
                        else human_text(human_decision)
                    )
                    draft = finish_draft(start, start_token, result, human_decision=human)
            if draft is None:
                draft = final_draft(
                    session_id,
                    decision,
                    result,
                    human_decision=human_text(human_decision),
                    stamp=decision_stamp(context, decided_at, policy_digest),
                    start_id=start_token,
                )
        except BaseException as exc:  # reading the result said "stop" (see AuditBackend.record)
            draft = final_draft(
                session_id,
                decision,
                interrupted_result(result, exc),
                human_decision=human_text(human_decision),
                stamp=decision_stamp(context, decided_at, policy_digest),
                start_id=start_token,
            )
            await self._record_interrupted(draft)
            raise
        if self._closed:
            raise self._closed_error()
        batch = self._batch
        if not batch.waiting and current_task() is batch.last_task:
            return self._write((draft,))[0].id  # see record_start
        return (await batch.submit(draft)).id

    def _own(self, start_id: int, latest: _Started, decision: PolicyDecision) -> _Started:
        """Of the starts kept under ``start_id``, the one of ``decision``'s action; keep the rest.

        ``latest`` was just taken from :attr:`_starts`. The start of the very
        decision the final is recorded for is its own; else (a decision made
        again, the action's own object) the latest. The others stay kept.
        """
        earlier = self._earlier.pop(start_id, None)
        if not earlier:
            return latest
        kept = [*earlier, latest]
        index = next(
            (n for n in range(len(kept) - 1, -1, -1) if kept[n][4] is decision), len(kept) - 1
        )
        own = kept.pop(index)
        self._starts[start_id] = kept.pop()
        if kept:
            self._earlier[start_id] = kept
        return own

    async def _record_interrupted(self, draft: RecordDraft) -> None:
        """Write ``draft``, an interrupted action's record, as far as it goes.

        Best effort, as the runtime's own record of an interruption: a
        trail that cannot take it now must not hide the interruption.
        """
        try:
            if self._closed:
                raise self._closed_error()
            await self._batch.submit(draft)
        except Exception:
            _log.exception("could not record the interruption of %s", draft.action_type)

    # -- reading ----------------------------------------------------------------

    def _select(
        self, filters: Filters, after_id: int | None, limit: int | None
    ) -> Iterator[dict[str, Any]]:
        self._check_open()
        return map(to_dict, self._store.records(filters, after_id=after_id, limit=limit))

    def _count(self, filters: Filters) -> int:
        self._check_open()
        return self._store.count(filters)

    def stats(self, session_id: str | None = None) -> dict[str, dict[str, int]]:
        """Count actions by ``result_status``, ``risk_level``, ``matched_rule`` and ``action_type``.

        An action that started and has no final record counts under the
        status ``"started"``; a record logged without a result under ``"none"``.
        """
        self._check_open()
        return self._store.stats(Filters(session_id=session_id))

    def pending(self) -> list[dict[str, Any]]:
        """The actions that started but have no final record, oldest first.

        Each is its start record: the process died (or is still running)
        between :meth:`record_start` and :meth:`record`. ``id`` is the id
        :meth:`record_start` returned. Text that is not UTF-8 (a hand edit,
        which :meth:`verify` names) comes back with its bytes escaped.
        """
        self._check_open()
        return [to_dict(record) for record in self._store.unfinished()]

    def export_jsonl(
        self, path: str | Path, session_id: str | None = None, *, records: bool = False
    ) -> int:
        """Write one UTF-8 JSON line per action, oldest first; return how many.

        As agent-aegis does: each action's line is its final record, or its
        start record while it has no outcome (interrupted, or still running),
        marked ``"unfinished": true``. ``records=True`` writes every record of
        the chain instead, start records included, so that the export
        verifies on its own. Either way each line rehashes with
        :func:`~aegis.core.chain.record_hash`; ``action_params``,
        ``result_data`` and ``context`` are nested JSON.
        """
        self._check_open()
        view: View = "records" if records else "actions"
        return write_jsonl(
            path, self._store.export_lines(Filters(session_id=session_id, view=view))
        )

    # -- tamper evidence --------------------------------------------------------

    def head(self) -> Head:
        """The head of the chain; keep ``str(head)`` (``"<count>:<hash>"``) to detect truncation."""
        self._check_open()
        return self._store.head()

    def verify(
        self,
        expected_head: Head | str | None = None,
        *,
        public_key: str | Path | Verifier | None = None,
    ) -> VerifyReport:
        """Check the whole chain, streaming; report the first record that does not fit.

        Catches edited, deleted, inserted and reordered records. With
        ``expected_head`` (an earlier :meth:`head`) it also catches records
        removed from the end, and a log rewritten since that head. With
        ``public_key`` (a ``.pub`` file from ``aegis audit keygen``), every
        signed checkpoint is checked, which catches the same without a kept
        head, up to the last checkpoint.

        Raises:
            ConfigurationError: ``expected_head`` is not a head.
            ConfigurationError: ``public_key`` cannot be read.
        """
        self._check_open()
        if expected_head is not None:
            Head.parse(expected_head)  # a malformed head is the caller's error, before any I/O
        check = None
        if public_key is not None:
            from aegis.runtime.signing import Verifier, load_public_key  # noqa: PLC0415  # the extra

            check = public_key if isinstance(public_key, Verifier) else load_public_key(public_key)
        return self._store.verify(expected_head, check_signature=check)

    def checkpoints(self) -> list[Checkpoint]:
        """The signed checkpoints the store keeps, by count (none if it keeps none)."""
        self._check_open()
        return self._store.checkpoints() if isinstance(self._store, CheckpointStore) else []

    # -- subscribers ------------------------------------------------------------

    def subscribe(self, callback: Subscriber) -> None:
        """Call ``callback(record)`` after each new record is committed.

        A callback that raises is logged on ``aegis.audit`` and otherwise ignored.
        """
        self._subscribers.add(callback)
        self._notify = bool(self._subscribers)

    def unsubscribe(self, callback: Subscriber) -> None:
        """Stop calling ``callback``; unknown callbacks are ignored."""
        self._subscribers.remove(callback)
        self._notify = bool(self._subscribers)


def _signer(key: str | Path | Signer | None, store: AuditStore) -> Signer | None:
    """The signer of checkpoints for ``key`` (or ``$AEGIS_AUDIT_KEY``), if any."""
    if key is None:
        key = os.environ.get("AEGIS_AUDIT_KEY") or None
        if key is None:
            return None
    from aegis.runtime.signing import Signer  # noqa: PLC0415  # the signing extra

    signer = key if isinstance(key, Signer) else Signer(key)
    if not isinstance(store, CheckpointStore):
        raise ConfigurationError(
            f"the audit store {store.url!r} cannot keep signed checkpoints; "
            "use SQLite or the memory store, or leave signing_key and $AEGIS_AUDIT_KEY unset"
        )
    return signer
