"""Crash safety and multi-process writes of the SQLite audit trail, with real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO

import pytest

from aegis.runtime.audit import AuditLogger

WRITER = Path(__file__).with_name("audit_writer.py")

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="uses SIGKILL")


def start_writer(db: Path, mode: str, count: int) -> subprocess.Popen[str]:
    """Start a writer child; it waits for a line on stdin before writing."""
    return subprocess.Popen(
        [sys.executable, str(WRITER), str(db), mode, str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def go(child: subprocess.Popen[str]) -> None:
    """Let a waiting writer start."""
    assert child.stdin is not None
    child.stdin.write("go\n")
    child.stdin.flush()


def read_ids(stream: IO[str], n: int) -> list[int]:
    """Read ``n`` complete id lines from a child's stdout."""
    ids = []
    for _ in range(n):
        line = stream.readline()
        assert line.endswith("\n"), "the writer stopped early"
        ids.append(int(line))
    return ids


def kill_and_collect(child: subprocess.Popen[str], ids: list[int]) -> list[int]:
    """SIGKILL the child, then add every complete id line it printed before dying."""
    child.send_signal(signal.SIGKILL)
    out, _ = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL
    lines = out.split("\n")
    # The last element is either "" or a line cut off by the kill: not a promise.
    return ids + [int(line) for line in lines[:-1]]


@pytest.mark.parametrize("mode", ["record", "log"])
def test_every_id_a_killed_writer_printed_is_in_the_log(tmp_path: Path, mode: str) -> None:
    """Records whose id a writer reported survive SIGKILL, and the chain still verifies."""
    db = tmp_path / "audit.db"
    child = start_writer(db, mode, 0)
    go(child)
    assert child.stdout is not None
    ids = kill_and_collect(child, read_ids(child.stdout, 200))
    with AuditLogger(db) as audit:
        stored = {record["id"] for record in audit.iter_log(view="records")}
        report = audit.verify()
    assert len(ids) >= 200
    assert set(ids) <= stored
    assert report.ok, report.reason
    assert report.checked == len(stored)


def test_a_writer_killed_mid_action_leaves_a_pending_entry(tmp_path: Path) -> None:
    """A process killed between record_start and record leaves its start record, listed."""
    db = tmp_path / "audit.db"
    child = start_writer(db, "start", 1)
    go(child)
    assert child.stdout is not None
    token = int(child.stdout.readline())
    kill_and_collect(child, [])
    with AuditLogger(db) as audit:
        pending = audit.pending()
        listed = audit.get_log()
        report = audit.verify()
    assert [entry["id"] for entry in pending] == [token]
    assert listed == pending
    assert report.ok
    assert report.unfinished == (token,)
    assert pending[0]["kind"] == "start"
    assert pending[0]["result_status"] is None
    assert pending[0]["session_id"] == "start-writer"
    assert pending[0]["action_params"] == {"n": 0, "note": "ünïcode"}


def test_finished_actions_leave_no_pending_entry(tmp_path: Path) -> None:
    """A writer that finishes each action clears every start marker it wrote."""
    db = tmp_path / "audit.db"
    child = start_writer(db, "record", 50)
    go(child)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    with AuditLogger(db) as audit:
        assert audit.pending() == []
        assert audit.count() == 50


def test_two_processes_appending_at_once_keep_one_valid_chain(tmp_path: Path) -> None:
    """Two writer processes on one file lose nothing and leave a chain that verifies."""
    db = tmp_path / "audit.db"
    with AuditLogger(db) as audit:
        audit.head()  # create the file first, so both children only append
    children = [start_writer(db, "record", 500), start_writer(db, "log", 500)]
    for child in children:
        go(child)
    outputs = [child.communicate(timeout=300) for child in children]
    for child, (_, err) in zip(children, outputs, strict=True):
        assert child.returncode == 0, err
    ids = [int(line) for out, _ in outputs for line in out.split()]
    with AuditLogger(db) as audit:
        assert audit.count() == 1000
        assert audit.count("record-writer") == 500
        assert audit.count("log-writer") == 500
        assert audit.count(view="records") == 1500
        stored = [r["id"] for r in audit.iter_log()]
        report = audit.verify()
        pending = audit.pending()
    assert sorted(ids) == stored
    assert report.ok, report.reason
    assert report.checked == 1500
    assert pending == []


def test_a_fresh_file_created_by_two_processes_at_once_is_valid(tmp_path: Path) -> None:
    """Two writers racing to create the schema of a new file both succeed."""
    db = tmp_path / "new.db"
    children = [start_writer(db, "log", 20), start_writer(db, "record", 20)]
    for child in children:
        go(child)
    for child in children:
        _, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
    with AuditLogger(db) as audit:
        assert audit.count() == 40
        assert audit.verify().ok
    assert os.path.getsize(db) > 0
