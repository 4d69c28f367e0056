"""Threads appending at once to one SQLite audit trail share commits and flushes.

Several threads of one process (the synchronous API, one event loop per
thread) write through one store: while one holds the connection the others
queue, and the next holder writes every queued record in one transaction,
flushed once when any of them must be. Each thread gets its own records, or
its own error. Whether a commit waited for the disk is read from SQLite's
trace (:meth:`SQLiteEngine.watch_flushes`).
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from store_engines import SQLiteEngine

from aegis.core.action import Action
from aegis.core.decision import Approval, PolicyDecision
from aegis.core.filters import Filters
from aegis.core.record import start_draft
from aegis.core.result import Result, ResultStatus
from aegis.core.risk import RiskLevel
from aegis.errors import StoreError
from aegis.runtime.audit import AuditLogger

THREADS = 8


def decision(n: int) -> PolicyDecision:
    """An auto-approved decision about action number ``n``."""
    return PolicyDecision(Action("write", "crm", {"n": n}), RiskLevel.LOW, Approval.AUTO, "writes")


def success(d: PolicyDecision) -> Result:
    """A successful Result of ``d``'s action."""
    return Result(d.action, ResultStatus.SUCCESS, {"done": True})


def queued(audit: AuditLogger) -> int:
    """How many appends wait for the store's connection (none before group commit)."""
    return len(getattr(audit.store, "_queue", ()))


def wait_until(ready: Callable[[], bool], seconds: float = 10.0) -> None:
    """Poll ``ready`` until it holds or ``seconds`` passed."""
    deadline = time.monotonic() + seconds
    while not ready() and time.monotonic() < deadline:
        time.sleep(0.01)


def _log_at_once(
    engine: SQLiteEngine, audit: AuditLogger, log: Callable[[int], None]
) -> list[bool]:
    """Run ``log(n)`` on eight threads while another connection holds the write lock.

    The first thread's append waits for SQLite's lock while holding the
    store's connection; the other seven queue behind it. Returns, per commit
    meanwhile, whether it flushed.
    """
    holder = sqlite3.connect(engine.path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # SQLite's write lock: the first append waits for it
    with engine.watch_flushes(audit.store) as commits:
        threads = [threading.Thread(target=log, args=(n,)) for n in range(THREADS)]
        for thread in threads:
            thread.start()
        wait_until(lambda: queued(audit) >= THREADS - 1)
        time.sleep(0.2)
        holder.execute("ROLLBACK")
        holder.close()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in threads)
    return commits


@pytest.mark.parametrize("level", ["result", "full"])
def test_threads_appending_at_once_share_commits_and_flushes(tmp_path: Path, level: str) -> None:
    """Eight threads logging at once: two commits and two flushes carry them all, in order."""
    engine = SQLiteEngine(tmp_path)
    with AuditLogger(str(engine.path), durability=level) as audit:
        first = decision(0)
        audit.log("first", first, result=success(first))  # the file is open, the head known
        ids: dict[int, int] = {}

        def log(n: int) -> None:
            d = decision(100 + n)
            ids[n] = audit.log(f"thread-{n}", d, result=success(d))

        commits = _log_at_once(engine, audit, log)
        report = audit.verify()
        stored = {r.id: r for r in audit.store.records(Filters(view="records"))}
    assert report.ok, report.reason
    assert sorted(ids.values()) == list(range(2, 2 + THREADS))  # no gap, no duplicate
    for n, record_id in ids.items():
        assert stored[record_id].session_id == f"thread-{n}"
    # the first thread's own append, then one for the seven that queued meanwhile
    assert commits == [True, True], commits


def test_queued_starts_alone_do_not_flush_at_result(tmp_path: Path) -> None:
    """At 'result' a batch of start records only needs to survive the process: no flush."""
    engine = SQLiteEngine(tmp_path)
    with AuditLogger(str(engine.path), durability="result") as audit:
        first = decision(0)
        audit.log("first", first, result=success(first))

        def start(n: int) -> None:
            audit.store.append([start_draft(f"thread-{n}", decision(100 + n))])

        commits = _log_at_once(engine, audit, start)
        report = audit.verify()
    assert report.ok, report.reason
    assert report.checked == 1 + THREADS
    assert commits == [False, False], commits


def test_each_queued_thread_gets_its_own_error(tmp_path: Path) -> None:
    """An append that fails fails every thread it carried, each with an error of its own."""
    engine = SQLiteEngine(tmp_path)
    with AuditLogger(str(engine.path), durability="result") as audit:
        first = decision(0)
        audit.log("first", first, result=success(first))
        errors: dict[int, BaseException] = {}
        ids: dict[int, int] = {}
        # a trigger refuses every record but the first: the first thread's
        # own append goes through, the batch of the other seven fails
        with sqlite3.connect(engine.path) as conn:
            conn.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON audit_log WHEN NEW.id > 2 "
                "BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
        conn.close()

        def log(n: int) -> None:
            d = decision(100 + n)
            try:
                ids[n] = audit.log(f"thread-{n}", d, result=success(d))
            except StoreError as exc:
                errors[n] = exc

        _log_at_once(engine, audit, log)
        with sqlite3.connect(engine.path) as conn:
            conn.execute("DROP TRIGGER refuse")
        conn.close()
        report = audit.verify()
        again = decision(200)
        after = audit.log("after", again, result=success(again))
    assert report.ok, report.reason
    assert list(ids.values()) == [2]
    assert len(errors) == THREADS - 1
    assert len({id(error) for error in errors.values()}) == THREADS - 1  # each its own
    assert after == 3  # the trail goes on where it stood


_WRITER = """
import sys, threading
from aegis.core.action import Action
from aegis.core.decision import Approval, PolicyDecision
from aegis.core.record import final_draft, start_draft
from aegis.core.result import Result, ResultStatus
from aegis.core.risk import RiskLevel
from aegis.stores.sqlite.audit import SQLiteAuditStore

store = SQLiteAuditStore(sys.argv[1], durability="result")
name = sys.argv[2]

def write(t):
    for n in range(40):
        d = PolicyDecision(Action("write", "crm", {"n": n}), RiskLevel.LOW, Approval.AUTO, "w")
        store.append([start_draft(f"{name}-{t}", d)])
        store.append([final_draft(f"{name}-{t}", d, Result(d.action, ResultStatus.SUCCESS))])

threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
store.close()
"""


def test_threads_of_several_processes_sharing_one_store_each_keep_one_chain(
    tmp_path: Path,
) -> None:
    """Three processes, four threads each on one shared store object: one chain, every record."""
    path = tmp_path / "store.db"
    with AuditLogger(str(path)) as audit:  # the file exists before the writers race
        audit.verify()
        children = [
            subprocess.Popen([sys.executable, "-c", _WRITER, str(path), f"p{p}"]) for p in range(3)
        ]
        for child in children:
            assert child.wait(timeout=120) == 0
        report = audit.verify()
        per_thread = {
            f"p{p}-{t}": audit.store.count(Filters.of(f"p{p}-{t}", view="records"))
            for p in range(3)
            for t in range(4)
        }
    assert report.ok, report.reason
    assert report.checked == 3 * 4 * 80
    assert per_thread == {f"p{p}-{t}": 80 for p in range(3) for t in range(4)}
