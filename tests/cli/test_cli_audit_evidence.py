"""A read-only evidence copy of an audit file: listed, exported and verified by the command line.

The copy sits in a read-only folder owned by another user, the way an
investigator receives it: SQLite can create no WAL index beside it. Run as
root, the command runs in a child process that has become ``nobody``
(root would write anywhere); otherwise the folder's write bits are taken away.
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import run_as_reader

import aegis.cli._audit  # noqa: F401  # loaded before a child drops its rights
from aegis.core.action import Action
from aegis.core.policy import Policy
from aegis.core.result import Result, ResultStatus
from aegis.runtime.audit import AuditLogger

POLICY = Policy.from_dict({"version": "1", "defaults": {"approval": "auto"}, "rules": []})
READ_ONLY_DIR = 0o555  # r-x for everyone: no one may create a file in it


def _record(audit: AuditLogger, count: int) -> None:
    for n in range(count):
        action = Action("read", "crm", {"n": n})
        audit.log("evidence", POLICY.evaluate(action), result=Result(action, ResultStatus.SUCCESS))


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder any user may enter (pytest's own are its owner's alone)."""
    folder = Path(tempfile.mkdtemp(prefix="aegis-evidence-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        for path in folder.rglob("*"):
            if path.is_dir():
                path.chmod(0o755)
        shutil.rmtree(folder)


def _seal(evidence: Path) -> None:
    """Make ``evidence`` (a folder) and its files read-only, owned by another user when root."""
    if os.geteuid() == 0:
        daemon = pwd.getpwnam("daemon")
        for path in [evidence, *evidence.iterdir()]:
            os.chown(path, daemon.pw_uid, daemon.pw_gid)
    for path in evidence.iterdir():
        path.chmod(0o444)
    evidence.chmod(READ_ONLY_DIR)


def _evidence(shared_dir: Path, *, with_log: bool) -> tuple[Path, int]:
    """An audit file copied into a sealed folder; with its write-ahead log if ``with_log``."""
    source = shared_dir / "live"
    source.mkdir()
    evidence = shared_dir / "evidence"
    evidence.mkdir()
    audit = AuditLogger(source / "audit.db", durability="process")
    _record(audit, 5)
    if with_log:
        # copied while the writer still has it open: the last records are in the log only
        log = source / "audit.db-wal"
        assert log.stat().st_size > 0
        for name in ("audit.db", "audit.db-wal"):
            shutil.copyfile(source / name, evidence / name)
        audit.close()
    else:
        audit.close()  # a clean close folds the log into the file and removes it
        assert not (source / "audit.db-wal").exists()
        shutil.copyfile(source / "audit.db", evidence / "audit.db")
    _seal(evidence)
    return evidence / "audit.db", 5


@pytest.mark.parametrize("with_log", [False, True], ids=["file-alone", "file-and-log"])
def test_an_evidence_copy_is_listed_exported_and_verified(shared_dir: Path, with_log: bool) -> None:
    """Every record of a copy in another user's read-only folder is listed, exported, verified."""
    db, count = _evidence(shared_dir, with_log=with_log)
    out = shared_dir / "out"
    out.mkdir()
    out.chmod(0o777)
    before = sorted(p.name for p in db.parent.iterdir())

    code, output = run_as_reader(["audit", "list", "--db", str(db), "--format", "jsonl"])
    assert code == 0, output
    assert len([line for line in output.splitlines() if line.startswith("{")]) == count

    code, output = run_as_reader(["audit", "verify", "--db", str(db)])
    assert code == 0, output
    assert f"{count} records verified" in output

    exported = out / "audit.jsonl"
    code, output = run_as_reader(["audit", "export", "--db", str(db), "-o", str(exported)])
    assert code == 0, output
    assert len(exported.read_text().splitlines()) == count

    assert sorted(p.name for p in db.parent.iterdir()) == before  # nothing written beside it
    assert not list(Path(tempfile.gettempdir()).glob("aegis-readonly-*/audit.db"))
