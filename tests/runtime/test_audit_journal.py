"""Start markers: the per-process journal beside the SQLite audit database."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from aegis.core.action import Action
from aegis.core.decision import Approval, PolicyDecision
from aegis.core.result import Result, ResultStatus
from aegis.core.risk import RiskLevel
from aegis.errors import AuditError
from aegis.runtime import _journal
from aegis.runtime.audit import AuditLogger


def decide(n: int = 0) -> PolicyDecision:
    """A decision to run a small action."""
    return PolicyDecision(Action("update", "crm", {"n": n}), RiskLevel.MEDIUM, Approval.AUTO, "r")


def journals(db: Path) -> list[Path]:
    """The start journals beside ``db``."""
    return sorted(db.parent.glob(db.name + ".pending-*"))


async def test_a_start_is_written_beside_the_database(tmp_path: Path) -> None:
    """record_start appends to a journal file that another logger reads as pending."""
    db = tmp_path / "a.db"
    with AuditLogger(db) as writer:
        token = await writer.record_start("s", decide(1))
        assert len(journals(db)) == 1
        with AuditLogger(db) as reader:
            [entry] = reader.pending()
        assert entry["id"] == token
        assert entry["action_params"] == {"n": 1}
        decision = decide(1)
        await writer.record(
            "s", decision, result=Result(decision.action, ResultStatus.SUCCESS), start_token=token
        )
        with AuditLogger(db) as reader:
            assert reader.pending() == []


async def test_close_removes_a_journal_whose_actions_all_finished(tmp_path: Path) -> None:
    """A clean close leaves no journal behind."""
    db = tmp_path / "a.db"
    with AuditLogger(db) as audit:
        decision = decide()
        token = await audit.record_start("s", decision)
        result = Result(decision.action, ResultStatus.SUCCESS)
        await audit.record("s", decision, result=result, start_token=token)
    assert journals(db) == []


async def test_close_keeps_a_journal_with_an_unfinished_action(tmp_path: Path) -> None:
    """An action that never got its final record stays visible after close."""
    db = tmp_path / "a.db"
    with AuditLogger(db) as audit:
        await audit.record_start("s", decide(7))
    assert len(journals(db)) == 1
    with AuditLogger(db) as audit:
        assert [e["action_params"] for e in audit.pending()] == [{"n": 7}]


async def test_a_journal_is_emptied_once_every_action_finished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long-running process does not grow its journal without bound."""
    monkeypatch.setattr(_journal, "_COMPACT_AT", 1000)
    db = tmp_path / "a.db"
    with AuditLogger(db) as audit:
        for n in range(50):
            decision = decide(n)
            token = await audit.record_start("s", decision)
            result = Result(decision.action, ResultStatus.SUCCESS)
            await audit.record("s", decision, result=result, start_token=token)
        [path] = journals(db)
        assert path.stat().st_size < 1000
        assert audit.count() == 50
        assert audit.pending() == []


async def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    """A line cut short by a crash mid-write is not reported (its action never ran)."""
    db = tmp_path / "a.db"
    with AuditLogger(db) as audit:
        await audit.record_start("s", decide(1))
        [path] = journals(db)
        with path.open("a", encoding="utf-8") as file:
            file.write('{"id": 2, "session_id": "s", "action_ty')
        assert [e["id"] for e in audit.pending()] == [1]


async def test_an_in_memory_database_keeps_its_starts_in_memory(tmp_path: Path) -> None:
    """With ':memory:' no file is written and pending() still works."""
    with AuditLogger(":memory:") as audit:
        decision = decide()
        token = await audit.record_start("s", decision)
        assert [e["id"] for e in audit.pending()] == [token]
        result = Result(decision.action, ResultStatus.SUCCESS)
        await audit.record("s", decision, result=result, start_token=token)
        assert audit.pending() == []
    assert list(tmp_path.iterdir()) == []


async def test_a_closed_logger_refuses_a_start(tmp_path: Path) -> None:
    """Starting an action on a closed logger raises AuditError instead of losing it."""
    audit = AuditLogger(tmp_path / "a.db")
    audit.close()
    with pytest.raises(AuditError, match="closed"):
        await audit.record_start("s", decide())


async def test_an_unwritable_journal_is_an_audit_error(tmp_path: Path) -> None:
    """If the start cannot be written, record_start raises, so the action does not run."""
    db = tmp_path / "missing-dir" / "a.db"
    audit = AuditLogger(db)
    with pytest.raises(AuditError, match="start of an action"):
        await audit.record_start("s", decide())
    audit.close()


async def test_full_synchronous_mode_records_and_verifies(tmp_path: Path) -> None:
    """synchronous='full' writes the same records, flushed to disk."""
    db = tmp_path / "a.db"
    with AuditLogger(db, synchronous="full") as audit:
        decision = decide()
        token = await audit.record_start("s", decision)
        result = Result(decision.action, ResultStatus.SUCCESS)
        await audit.record("s", decision, result=result, start_token=token)
        assert audit.verify().ok
        assert audit.count() == 1


def test_an_unknown_synchronous_mode_is_refused(tmp_path: Path) -> None:
    """A typo in synchronous= fails at construction with the valid choices."""
    with pytest.raises(ValueError, match="'normal' or 'full'"):
        AuditLogger(tmp_path / "a.db", synchronous="fast")


async def test_a_lone_surrogate_is_stored_instead_of_losing_the_record(tmp_path: Path) -> None:
    """Text SQLite cannot hold as UTF-8 is stored with U+FFFD; the chain still verifies."""
    db = tmp_path / "a.db"
    decision = PolicyDecision(
        Action("read\udc80", "crm", {"s": "\ud800"}), RiskLevel.LOW, Approval.AUTO, "r"
    )
    with AuditLogger(db) as audit:
        token = await audit.record_start("s", decision)
        result = Result(decision.action, ResultStatus.SUCCESS)
        await audit.record("s", decision, result=result, start_token=token)
        audit.log("s", decision)
        [first, second] = audit.get_log()
        assert audit.verify().ok
        assert audit.pending() == []
    assert first["action_type"] == "read\ufffd"
    assert first["action_params"] == {"s": "\ufffd"}
    assert second["id"] == 2


async def test_the_final_record_stores_its_own_params(tmp_path: Path) -> None:
    """A final record with a start token but other params stores the params it was given."""
    with AuditLogger(tmp_path / "a.db") as audit:
        token = await audit.record_start("s", decide(1))
        other = decide(2)
        result = Result(other.action, ResultStatus.SUCCESS)
        await audit.record("s", other, result=result, start_token=token)
        [record] = audit.get_log()
        assert record["action_params"] == {"n": 2}
        assert audit.verify().ok


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
async def test_a_forked_child_keeps_a_journal_of_its_own(tmp_path: Path) -> None:
    """A forked child writes a journal of its own, which the parent's close leaves alone."""
    db = tmp_path / "a.db"
    audit = AuditLogger(db)
    audit.log("s", decide(0))  # the parent has used its connection and journal
    await audit.record_start("s", decide(1))
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: start an action, say so, then wait to be killed
        try:
            asyncio.run(audit.record_start("s", decide(2)))
            os.write(write_end, b"started")
            time.sleep(60)
        finally:
            os._exit(1)
    os.close(write_end)
    assert os.read(read_end, 7) == b"started"
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    os.close(read_end)
    decision = decide(1)
    token = 1
    await audit.record(
        "s", decision, result=Result(decision.action, ResultStatus.SUCCESS), start_token=token
    )
    audit.close()
    with AuditLogger(db) as reader:
        pending = reader.pending()
        assert [e["action_params"] for e in pending] == [{"n": 2}]
        assert pending[0]["pid"] == pid
        assert reader.verify().ok


async def test_a_failed_marker_write_does_not_spoil_the_next_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails half-way is cut off, so the next marker is still readable."""
    db = tmp_path / "a.db"
    real_write = os.write
    calls = 0

    def flaky_write(fd: int, data: Any) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            real_write(fd, bytes(data[:10]))
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    with AuditLogger(db) as audit:
        await audit.record_start("s", decide(1))
        monkeypatch.setattr(_journal.os, "write", flaky_write)
        with pytest.raises(AuditError, match="No space left"):
            await audit.record_start("s", decide(2))
        await audit.record_start("s", decide(3))
        monkeypatch.undo()
        assert [e["action_params"] for e in audit.pending()] == [{"n": 1}, {"n": 3}]


_NEVER_CLOSES = """
import asyncio, sys
from aegis.core.action import Action
from aegis.core.decision import Approval, PolicyDecision
from aegis.core.result import Result, ResultStatus
from aegis.core.risk import RiskLevel
from aegis.runtime.audit import AuditLogger

async def main(db, finish):
    audit = AuditLogger(db)  # never closed, like the seed's examples
    decision = PolicyDecision(Action("read", "crm"), RiskLevel.LOW, Approval.AUTO, "r")
    token = await audit.record_start("s", decision)
    if finish:
        result = Result(decision.action, ResultStatus.SUCCESS)
        await audit.record("s", decision, result=result, start_token=token)

asyncio.run(main(sys.argv[1], sys.argv[2] == "finish"))
"""


@pytest.mark.parametrize(("how", "left"), [("finish", 0), ("leave", 1)])
def test_a_process_that_never_closes_its_logger_leaves_no_stray_journal(
    tmp_path: Path, how: str, left: int
) -> None:
    """At exit a journal of finished actions is removed; one with an unfinished action stays."""
    db = tmp_path / "a.db"
    subprocess.run([sys.executable, "-c", _NEVER_CLOSES, str(db), how], check=True, timeout=60)
    assert len(journals(db)) == left
    with AuditLogger(db) as audit:
        assert len(audit.pending()) == left
