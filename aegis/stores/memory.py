"""An audit store in memory: the whole contract, no persistence. For tests.

Records live in a list for as long as the store does; nothing survives the
process. Appends are serialized by a lock, so threads share one chain.
:meth:`MemoryStore.tamper` lets a test edit a stored record in place (the
way someone with access to a database file would) to check verification.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

from aegis.core.chain import EMPTY_HEAD, Head, seal
from aegis.core.checkpoint import Checkpoint
from aegis.core.filters import NO_FILTERS, Filters
from aegis.core.record import AuditRecord, RecordDraft, RecordKind
from aegis.errors import StoreError
from aegis.stores.base import Durability, ReadMixin, resolve_durability

__all__ = ["MemoryStore"]


class MemoryStore(ReadMixin):
    """An in-memory :class:`~aegis.stores.base.AuditStore`.

    ``durability`` and ``synchronous`` are taken for the contract's sake:
    whatever the level, nothing outlives the process.

    Example::

        store = MemoryStore()
        logger = AuditLogger(store=store)
    """

    url = "memory://"
    remote = False

    def __init__(self, *, durability: str | None = None, synchronous: str | None = None) -> None:
        #: the level asked for (:data:`~aegis.stores.base.Durability`); memory keeps nothing
        self.durability: Durability = resolve_durability(durability, synchronous)
        self._records: list[AuditRecord] = []
        self._finished: set[int] = set()  # ids of start records that have a final record
        self._checkpoints: dict[int, Checkpoint] = {}
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"<MemoryStore {len(self._records)} records>"

    def check(self) -> None:
        """Nothing can go wrong with memory, except using a closed store."""
        if self._closed:
            raise StoreError("this MemoryStore is closed; create a new one")

    def append(self, drafts: Sequence[RecordDraft]) -> list[AuditRecord]:
        """Seal ``drafts`` after the current head, all or nothing."""
        self.check()
        with self._lock:
            records = self._records
            last = records[-1] if records else None
            record_id, prev = (last.id, last.hash) if last is not None else (0, EMPTY_HEAD.hash)
            out = []
            for draft in drafts:
                record_id += 1
                sealed = seal(draft, record_id, prev)
                prev = sealed.hash
                out.append(sealed)
            records.extend(out)
            for record in out:
                if record.start_id is not None:
                    self._finished.add(record.start_id)
        return out

    def head(self) -> Head:
        """The head of the chain."""
        with self._lock:
            last = self._records[-1] if self._records else None
        return EMPTY_HEAD if last is None else Head(last.id, last.hash)

    def records(
        self,
        filters: Filters = NO_FILTERS,
        *,
        after_id: int | None = None,
        limit: int | None = None,
    ) -> Iterator[AuditRecord]:
        """Yield the matching records in id order, from a snapshot taken now."""
        if limit is not None and limit <= 0:
            return
        with self._lock:
            snapshot = list(self._records)
            finished = set(self._finished)
        found = 0
        actions = filters.view == "actions"
        for record in snapshot:
            if after_id is not None and record.id <= after_id:
                continue
            if actions and record.kind == RecordKind.START and record.id in finished:
                continue
            if filters.matches(record):
                yield record
                found += 1
                if found == limit:
                    return

    def add_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Keep ``checkpoint`` (once per count)."""
        with self._lock:
            self._checkpoints.setdefault(checkpoint.count, checkpoint)

    def checkpoints(self) -> list[Checkpoint]:
        """Every kept checkpoint, by count."""
        with self._lock:
            return [self._checkpoints[n] for n in sorted(self._checkpoints)]

    def tamper(self, record_id: int, **changes: Any) -> None:
        """Edit record ``record_id`` in place, hash untouched (tests of verification only)."""
        with self._lock:
            for i, record in enumerate(self._records):
                if record.id == record_id:
                    self._records[i] = record._replace(**changes)
                    return
        raise KeyError(record_id)

    def delete(self, record_id: int) -> None:
        """Remove record ``record_id`` (tests of verification only)."""
        with self._lock:
            self._records = [r for r in self._records if r.id != record_id]

    def close(self) -> None:
        """Refuse further appends; the records stay readable."""
        self._closed = True
