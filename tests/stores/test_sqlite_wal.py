"""The SQLite store's write-ahead log stays at a bounded, steady size.

Once the log has reached its size, a checkpoint lets the next commit write
it again from its start, so a flush rewrites blocks the file already has
instead of making it longer (which, on ext4, adds the inode and the block
bitmap to every flush). The size is reached within a couple of hundred
actions at ``"result"`` and then does not move; a log that a long read made
larger is cut back once the read ends. Sizes are read from the real files.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from aegis.core.action import Action
from aegis.core.decision import Approval, PolicyDecision
from aegis.core.record import final_draft, start_draft
from aegis.core.result import Result, ResultStatus
from aegis.core.risk import RiskLevel
from aegis.stores.sqlite.audit import SQLiteAuditStore
from aegis.stores.sqlite.connection import APPLICATION_ID, WAL_BYTES

#: what one action may add to the log past the checkpoint threshold (its two commits)
ONE_ACTION = 64 << 10


def run_action(store: SQLiteAuditStore, n: int, payload: str = "") -> None:
    """Append the start and the final record of action number ``n``, as run_one does."""
    decision = PolicyDecision(
        Action("write", "crm", {"n": n, "note": payload}), RiskLevel.LOW, Approval.AUTO, "writes"
    )
    [start] = store.append([start_draft("s", decision)])
    done = Result(decision.action, ResultStatus.SUCCESS, {"row": n})
    store.append([final_draft("s", decision, done, start_id=start.id)])


def wal_size(db: Path) -> int:
    """The size of the write-ahead log beside ``db`` (0 when there is none)."""
    try:
        return os.path.getsize(f"{db}-wal")
    except FileNotFoundError:
        return 0


def old_file(db: Path, page_size: int) -> None:
    """An empty Aegis file with ``page_size`` pages, as a store made before page_size=1024."""
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA page_size={page_size}")
    conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
    conn.execute("VACUUM")  # writes the header: the page size is the file's from now on
    conn.close()


@pytest.mark.parametrize("page_size", [None, 4096])
def test_the_log_settles_at_its_size_at_result(tmp_path: Path, page_size: int | None) -> None:
    """Sequential actions at 'result' grow the log to about WAL_BYTES, then (nearly) never again."""
    db = tmp_path / "audit.db"
    if page_size is not None:
        old_file(db, page_size)
    store = SQLiteAuditStore(str(db), durability="result")
    # ~2 KiB of params per record: the first cycle ends within ~90 actions
    note = "x" * 2048
    sizes = []
    for n in range(250):
        run_action(store, n, note)
        sizes.append(wal_size(db))
    used = store.db._conn.execute("PRAGMA page_size").fetchone()[0]  # type: ignore[union-attr]
    store.close()
    assert used == (page_size or 1024)
    assert WAL_BYTES["result"] // 2 <= max(sizes) <= WAL_BYTES["result"] + ONE_ACTION, max(sizes)
    # after the first cycle the log is rewritten in place: a later cycle that
    # ends a frame further may lengthen it once more, never action after action
    grew = [n for n in range(100, len(sizes)) if sizes[n] > sizes[n - 1]]
    assert len(grew) <= 2, grew


def test_process_keeps_a_larger_log(tmp_path: Path) -> None:
    """At 'process' no action waits for a flush: checkpoints are rarer, the log larger."""
    db = tmp_path / "audit.db"
    store = SQLiteAuditStore(str(db), durability="process")
    note = "x" * 2048
    sizes = []
    for n in range(250):
        run_action(store, n, note)
        sizes.append(wal_size(db))
    store.close()
    assert max(sizes) > WAL_BYTES["result"] + ONE_ACTION  # past where 'result' checkpoints
    assert max(sizes) <= WAL_BYTES["process"] + ONE_ACTION


def test_a_log_a_long_read_grew_is_cut_back(tmp_path: Path) -> None:
    """While a reader holds an old snapshot the log grows; after it, it shrinks to its limit."""
    db = tmp_path / "audit.db"
    store = SQLiteAuditStore(str(db), durability="result")
    run_action(store, 0)
    reader = sqlite3.connect(db, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM audit_log").fetchone()  # holds its snapshot
    note = "x" * 8192
    for n in range(1, 250):  # over 4 MiB of log: no checkpoint can finish meanwhile
        run_action(store, n, note)
    grown = wal_size(db)
    reader.execute("COMMIT")
    reader.close()
    for n in range(250, 260):  # a checkpoint finishes; the next commit starts the log again
        run_action(store, n, note)
    after = wal_size(db)
    count = store.count()
    report = store.verify()
    store.close()
    assert grown > 4 * WAL_BYTES["result"] + ONE_ACTION, grown
    assert after <= 4 * WAL_BYTES["result"], after
    assert count == 260  # actions, each a start and its final record
    assert report.ok, report.reason
