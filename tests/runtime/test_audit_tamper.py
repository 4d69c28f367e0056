"""Tamper evidence: real edits of the SQLite file are caught by verify()."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from aegis.cli import cli
from aegis.core.action import Action
from aegis.core.decision import Approval, PolicyDecision
from aegis.core.result import Result, ResultStatus
from aegis.core.risk import RiskLevel
from aegis.errors import AuditError
from aegis.runtime.audit import AuditLogger
from aegis.runtime.audit_backend import GENESIS_HASH, RECORD_FIELDS, dump_json, record_hash

RECORDS = 10


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A closed audit database holding RECORDS records with varied fields."""
    path = tmp_path / "audit.db"
    with AuditLogger(path) as audit:
        for n in range(1, RECORDS + 1):
            action = Action("refund", "billing", {"order": n, "amount": n * 10}, f"refund {n}")
            decision = PolicyDecision(action, RiskLevel.HIGH, Approval.APPROVE, "refunds")
            result = Result(action, ResultStatus.SUCCESS, {"refunded": n * 10})
            audit.log("s1", decision, result=result, human_decision="approved")
    return path


@pytest.fixture
def raw(db: Path) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection to the database, as an attacker would open it."""
    conn = sqlite3.connect(db, isolation_level=None)
    yield conn
    conn.close()


def verify(db: Path, expected_head: str | None = None) -> tuple[bool, int | None, str]:
    """Open the file afresh and verify it; return (ok, first_bad_id, reason)."""
    with AuditLogger(db) as audit:
        report = audit.verify(expected_head)
    return report.ok, report.first_bad_id, report.reason


def head(db: Path) -> str:
    """The head of the log in ``db``."""
    with AuditLogger(db) as audit:
        return audit.head()


def rechain(conn: sqlite3.Connection, start: int) -> None:
    """Recompute prev_hash and hash from record ``start`` on, as a clever attacker would."""
    cur = conn.execute(f"SELECT {', '.join(RECORD_FIELDS)} FROM audit_log ORDER BY id")
    names = [d[0] for d in cur.description]
    rows = [dict(zip(names, row, strict=True)) for row in cur]
    prev = GENESIS_HASH
    for row in rows:
        if row["id"] >= start:
            row["prev_hash"] = prev
            row["action_params"] = json.loads(row["action_params"])
            row["result_data"] = json.loads(row["result_data"])
            row["hash"] = record_hash(row)
            conn.execute(
                "UPDATE audit_log SET prev_hash = ?, hash = ? WHERE id = ?",
                (row["prev_hash"], row["hash"], row["id"]),
            )
        prev = row["hash"]


def test_an_untouched_log_verifies(db: Path) -> None:
    """verify() passes on the log as written, with and without its head."""
    assert verify(db) == (True, None, "")
    assert verify(db, head(db)) == (True, None, "")


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("result_status", "failed"),
        ("result_data", '{"refunded":0}'),
        ("result_error", "nothing happened"),
        ("action_type", "read"),
        ("action_target", "other"),
        ("action_params", '{"amount":1,"order":4}'),
        ("action_desc", "harmless"),
        ("risk_level", "LOW"),
        ("approval", "auto"),
        ("matched_rule", "reads"),
        ("reason", "allowed"),
        ("human_decision", "denied"),
        ("session_id", "s2"),
        ("timestamp", "2000-01-01T00:00:00.000000+00:00"),
        ("started_at", None),
        ("completed_at", "2000-01-01T00:00:00.000000+00:00"),
        ("hash", "f" * 64),
    ],
)
def test_an_edited_field_is_caught_at_its_record(
    db: Path, raw: sqlite3.Connection, column: str, value: str | None
) -> None:
    """Changing any stored field of record 4 makes verify() fail at record 4."""
    raw.execute(f"UPDATE audit_log SET {column} = ? WHERE id = 4", (value,))
    ok, bad, reason = verify(db)
    assert (ok, bad) == (False, 4)
    assert "record 4" in reason


def test_an_edited_prev_hash_breaks_the_link(db: Path, raw: sqlite3.Connection) -> None:
    """A forged prev_hash is reported as a broken link at that record."""
    raw.execute("UPDATE audit_log SET prev_hash = ? WHERE id = 6", ("a" * 64,))
    ok, bad, reason = verify(db)
    assert (ok, bad) == (False, 6)
    assert "does not link" in reason


def test_an_edit_with_a_recomputed_chain_is_caught_by_the_kept_head(
    db: Path, raw: sqlite3.Connection
) -> None:
    """A rewrite that rehashes the chain passes verify() but not verify(expected_head)."""
    kept = head(db)
    raw.execute("UPDATE audit_log SET result_status = 'denied' WHERE id = 7")
    rechain(raw, 7)
    assert verify(db) == (True, None, "")
    ok, bad, reason = verify(db, kept)
    assert (ok, bad) == (False, RECORDS)
    assert "rewritten" in reason


@pytest.mark.parametrize("victim", [1, 5, RECORDS - 1])
def test_a_deleted_record_is_caught(db: Path, raw: sqlite3.Connection, victim: int) -> None:
    """Deleting a record other than the last is reported at the missing id."""
    raw.execute("DELETE FROM audit_log WHERE id = ?", (victim,))
    ok, bad, reason = verify(db)
    assert (ok, bad) == (False, victim)
    assert "missing" in reason


def test_a_deleted_and_renumbered_record_is_caught(db: Path, raw: sqlite3.Connection) -> None:
    """Deleting a record and closing the id gap still breaks the chain there."""
    raw.execute("DELETE FROM audit_log WHERE id = 5")
    for n in range(6, RECORDS + 1):
        raw.execute("UPDATE audit_log SET id = ? WHERE id = ?", (n - 1, n))
    ok, bad, _ = verify(db)
    assert (ok, bad) == (False, 5)


def test_a_forged_record_appended_is_caught(db: Path, raw: sqlite3.Connection) -> None:
    """A copied row appended with a new id fails its own hash check."""
    raw.execute(
        "INSERT INTO audit_log (id, session_id, timestamp, action_type, action_target,"
        " action_params, action_desc, risk_level, approval, matched_rule, reason,"
        " human_decision, result_status, result_data, result_error, started_at,"
        " completed_at, prev_hash, hash, context, decided_at, policy_digest, kind, start_id)"
        " SELECT ?, session_id, timestamp, action_type, action_target,"
        " action_params, action_desc, risk_level, approval, matched_rule, reason,"
        " human_decision, result_status, result_data, result_error, started_at,"
        " completed_at, (SELECT hash FROM audit_log WHERE id = ?), hash,"
        " context, decided_at, policy_digest, kind, start_id"
        " FROM audit_log WHERE id = 3",
        (RECORDS + 1, RECORDS),
    )
    ok, bad, reason = verify(db)
    assert (ok, bad) == (False, RECORDS + 1)
    assert "modified" in reason


def test_a_forged_record_inserted_in_the_middle_is_caught(
    db: Path, raw: sqlite3.Connection
) -> None:
    """Making room for a well-hashed forged record breaks the link after it."""
    for n in range(RECORDS, 5, -1):
        raw.execute("UPDATE audit_log SET id = ? WHERE id = ?", (n + 1, n))
    with AuditLogger(db) as audit:
        forged = audit.get_log(limit=1, after_id=4)[0]  # record 5
    forged.update(id=6, prev_hash=forged["hash"], result_status="success", action_desc="forged")
    forged["hash"] = record_hash(forged)
    raw.execute(
        f"INSERT INTO audit_log ({', '.join(forged)}) VALUES ({', '.join('?' * len(forged))})",
        [dump_json(v) if isinstance(v, dict) else v for v in forged.values()],
    )
    ok, bad, reason = verify(db)
    assert (ok, bad) == (False, 7)
    assert "does not link" in reason or "modified" in reason


def test_two_records_swapped_are_caught(db: Path, raw: sqlite3.Connection) -> None:
    """Swapping the ids of records 3 and 4 (reordering them) fails at record 3."""
    raw.execute("UPDATE audit_log SET id = -1 WHERE id = 3")
    raw.execute("UPDATE audit_log SET id = 3 WHERE id = 4")
    raw.execute("UPDATE audit_log SET id = 4 WHERE id = -1")
    ok, bad, _ = verify(db)
    assert (ok, bad) == (False, 3)


def test_two_records_contents_swapped_are_caught(db: Path, raw: sqlite3.Connection) -> None:
    """Swapping everything but the ids of records 2 and 8 fails at record 2."""
    columns = "session_id, timestamp, action_params, action_desc, result_data, prev_hash, hash"
    rows = {
        n: raw.execute(f"SELECT {columns} FROM audit_log WHERE id = ?", (n,)).fetchone()
        for n in (2, 8)
    }
    sets = ", ".join(f"{c.strip()} = ?" for c in columns.split(","))
    raw.execute(f"UPDATE audit_log SET {sets} WHERE id = 2", rows[8])
    raw.execute(f"UPDATE audit_log SET {sets} WHERE id = 8", rows[2])
    ok, bad, _ = verify(db)
    assert (ok, bad) == (False, 2)


@pytest.mark.parametrize("removed", [1, 3, RECORDS])
def test_a_truncated_tail_is_caught_only_with_the_kept_head(
    db: Path, raw: sqlite3.Connection, removed: int
) -> None:
    """Deleting the last records passes verify() but fails verify(expected_head)."""
    kept = head(db)
    raw.execute("DELETE FROM audit_log WHERE id > ?", (RECORDS - removed,))
    assert verify(db) == (True, None, "")
    ok, bad, reason = verify(db, kept)
    assert (ok, bad) == (False, RECORDS - removed + 1)
    assert "removed from the end" in reason


def test_an_older_head_still_verifies_after_more_records(db: Path) -> None:
    """A kept head stays valid while records are appended after it."""
    kept = head(db)
    with AuditLogger(db) as audit:
        decision = PolicyDecision(Action("read", "crm"), RiskLevel.LOW, Approval.AUTO)
        audit.log("s2", decision)
        report = audit.verify(kept)
    assert report.ok
    assert report.checked == RECORDS + 1
    assert str(report.head).startswith(f"{RECORDS + 1}:")
    assert report.head.count == RECORDS + 1


def test_the_report_head_equals_head(db: Path) -> None:
    """The head a verify report carries is the head() of the log it read."""
    with AuditLogger(db) as audit:
        assert audit.verify().head == audit.head()
        assert str(audit.head()).startswith(f"{RECORDS}:")


@pytest.mark.parametrize("bad_head", ["", "10", "x:abc", f"ten:{'0' * 64}", "10:short"])
def test_a_malformed_head_is_refused(db: Path, bad_head: str) -> None:
    """verify() rejects an expected_head that head() could not have returned."""
    with AuditLogger(db) as audit, pytest.raises(ValueError, match="expected_head"):
        audit.verify(bad_head)


@pytest.mark.parametrize("column", ["action_type", "result_error"])
def test_a_blob_written_into_a_text_column_is_reported_not_a_crash(
    db: Path, raw: sqlite3.Connection, tmp_path: Path, column: str
) -> None:
    """A hand-edited BLOB fails verify() at its record and still exports."""
    raw.execute(f"UPDATE audit_log SET {column} = ? WHERE id = 5", (b"\x00\xff",))
    ok, bad, _ = verify(db)
    assert (ok, bad) == (False, 5)
    out = tmp_path / "export.jsonl"
    with AuditLogger(db) as audit:
        assert audit.export_jsonl(out) == RECORDS
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert lines[4][column] == repr(b"\x00\xff")


@pytest.mark.parametrize(
    ("column", "blob"),
    [("action_target", b"prod"), ("result_data", b"ok"), ("policy_digest", b"p1")],
)
def test_a_blob_with_the_repr_of_the_text_it_replaces_is_caught(
    tmp_path: Path, column: str, blob: bytes
) -> None:
    """Text that reads like a BLOB's repr, swapped for that BLOB, fails verify().

    The hash wrote a foreign value as the JSON string of its repr, so the
    BLOB b"prod" hashed as the text "b'prod'" did, while a filter on the
    target no longer found the record.
    """
    db = tmp_path / "audit.db"
    text = repr(blob)
    action = Action("delete", text if column == "action_target" else "db", {}, "drop it")
    decision = PolicyDecision(action, RiskLevel.HIGH, Approval.APPROVE, "ops")
    result = Result(action, ResultStatus.SUCCESS, text if column == "result_data" else None)
    with AuditLogger(db) as audit:
        audit.log("s", decision, result=result, policy_digest=text)
        audit.log("s", decision, result=result)
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute(f"UPDATE audit_log SET {column} = ? WHERE id = 1", (blob,))
    finally:
        conn.close()
    ok, bad, reason = verify(db)
    assert (ok, bad) == (False, 1)
    assert column in reason


def test_text_that_is_not_utf8_fails_verify_at_its_record(
    db: Path, raw: sqlite3.Connection
) -> None:
    """Bytes that are no UTF-8, cast to text by hand, fail verify() at their record.

    The read of the page failed instead, and `aegis audit verify` said the
    file could not be read and to run `aegis audit verify` on it.
    """
    raw.execute("UPDATE audit_log SET action_target = CAST(x'ff70726f64' AS TEXT) WHERE id = 5")
    ok, bad, reason = verify(db)
    assert (ok, bad) == (False, 5)
    assert "modified" in reason
    result = CliRunner().invoke(cli, ["audit", "verify", "--db", str(db)])
    assert result.exit_code == 1
    assert "broken at record 5" in result.output + result.stderr


def test_broken_json_in_a_stored_column_still_exports_valid_lines(
    db: Path, raw: sqlite3.Connection, tmp_path: Path
) -> None:
    """A hand-edited params column that is not JSON exports as a string, never a broken line."""
    raw.execute("UPDATE audit_log SET action_params = '{broken' WHERE id = 2")
    out = tmp_path / "export.jsonl"
    with AuditLogger(db) as audit:
        assert audit.export_jsonl(out) == RECORDS
        assert not audit.verify().ok
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert lines[1]["action_params"] == "{broken"


@pytest.mark.parametrize("stored", ["not json", b"\x00blob"])
def test_a_column_that_is_not_json_reads_back_as_it_is(
    db: Path, raw: sqlite3.Connection, stored: object
) -> None:
    """get_log() returns a hand-edited JSON column as text instead of failing to read."""
    raw.execute("UPDATE audit_log SET result_data = ? WHERE id = 3", (stored,))
    with AuditLogger(db) as audit:
        record = audit.get_log()[2]
    assert record["result_data"] == (stored if isinstance(stored, str) else repr(stored))


def test_an_empty_file_is_not_turned_into_a_database_by_a_reader(tmp_path: Path) -> None:
    """A reader (create=False) refuses an empty file and leaves it empty."""
    empty = tmp_path / "empty.db"
    empty.touch()
    with pytest.raises(AuditError, match="empty file"), AuditLogger(empty, create=False) as audit:
        audit.verify()
    assert empty.stat().st_size == 0


def test_a_reader_refuses_another_sqlite_database(tmp_path: Path) -> None:
    """A reader (create=False) does not add the audit schema to someone else's database."""
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(AuditError, match="not an Aegis audit database"):
        AuditLogger(other, create=False).count()


def test_a_hand_written_nan_exports_as_a_string(
    db: Path, raw: sqlite3.Connection, tmp_path: Path
) -> None:
    """A column edited to hold NaN, which JSON lacks, exports as text so lines stay JSON."""
    raw.execute("UPDATE audit_log SET result_data = 'NaN' WHERE id = 4")
    out = tmp_path / "export.jsonl"
    with AuditLogger(db) as audit:
        assert audit.export_jsonl(out) == RECORDS
    text = out.read_text(encoding="utf-8")
    lines = [json.loads(line, parse_constant=pytest.fail) for line in text.splitlines()]
    assert lines[3]["result_data"] == "NaN"


def test_text_that_is_not_utf8_in_a_start_record_fails_verify_at_its_record(
    db: Path, raw: sqlite3.Connection
) -> None:
    """Such bytes in a start record (no outcome yet) are named by `aegis audit verify`.

    Verify named the record, but the read of the actions started without
    an outcome, which the command reports too, failed on the same bytes,
    and the command said only that the file could not be read.
    """

    async def start() -> int:
        with AuditLogger(db) as audit:
            action = Action("wipe", "disk", {"all": True})
            decision = PolicyDecision(action, RiskLevel.HIGH, Approval.APPROVE, "wipes")
            return await audit.record_start("s1", decision)

    start_id = asyncio.run(start())
    raw.execute(
        "UPDATE audit_log SET action_target = CAST(x'ff6469736b' AS TEXT) WHERE id = ?",
        (start_id,),
    )
    assert verify(db)[:2] == (False, start_id)
    result = CliRunner().invoke(cli, ["audit", "verify", "--db", str(db)])
    assert result.exit_code == 1
    assert f"broken at record {start_id}" in result.output + result.stderr
    assert "could not" not in (result.output + result.stderr).lower()
    json_result = CliRunner().invoke(cli, ["audit", "verify", "--db", str(db), "--format", "json"])
    assert json_result.exit_code == 1
    report = json.loads(json_result.stdout)
    assert (report["ok"], report["first_bad_id"]) == (False, start_id)
    assert [entry["id"] for entry in report["pending"]] == [start_id]


def _started_and_finished(path: Path, context: dict[str, str] | None) -> str:
    """A trail of one action (a start and its final record) with ``context``; its head."""
    from aegis import Policy, Runtime

    policy = Policy.from_dict(
        {"rules": [{"name": "all", "match": {"type": "*"}, "approval": "auto"}]}
    )

    async def run() -> None:
        async with Runtime(
            executor=lambda action: {"paid": 1},
            policy=policy,
            audit_logger=AuditLogger(path),
            session_id="s",
        ) as rt:
            await rt.run_one(Action("refund", "stripe", {"amount": 5}), context=context)

    asyncio.run(run())
    return head(path)


def _moved_into_result(row: sqlite3.Row) -> tuple[str, dict[str, object]]:
    # the final's extension (context, time, kind, digest, start id) appended to its result
    fields = [] if row["context"] is None else [f'"context":{row["context"]}']
    fields += [f'"decided_at":"{row["decided_at"]}"']
    fields += [f'"kind":"{row["kind"]}"', f'"policy_digest":"{row["policy_digest"]}"']
    fields += [f'"start_id":{row["start_id"]}']
    nulls = dict.fromkeys(("context", "decided_at", "kind", "policy_digest", "start_id"))
    return "final", {"result_data": f"{row['result_data']},{{{','.join(fields)}}}", **nulls}


def _moved_into_context(row: sqlite3.Row) -> tuple[str, dict[str, object]]:
    # the start's time, kind and digest appended to its context
    moved = f'"decided_at":"{row["decided_at"]}","kind":"{row["kind"]}"'
    moved += f',"policy_digest":"{row["policy_digest"]}"'
    nulls = dict.fromkeys(("decided_at", "kind", "policy_digest"))
    return "start", {"context": f"{row['context']},{moved}", **nulls}


@pytest.mark.parametrize(
    ("move", "context"),
    [
        (_moved_into_result, {"ticket": "T-1"}),
        (_moved_into_result, None),
        (_moved_into_context, {"ticket": "T-1"}),
    ],
    ids=["into the result", "into a result without context", "into the context"],
)
def test_text_moved_across_a_hashed_join_is_caught(
    tmp_path: Path, move: Any, context: dict[str, str] | None
) -> None:
    """The hashed text joins the result, the context and the other extension fields as
    stored: text moved from one field into its neighbour keeps every byte and so the hash
    (a final no longer naming its start; a start's policy digest gone). Each JSON field
    must hold one whole JSON value, so verify catches it, with and without a kept head."""
    path = tmp_path / "audit.db"
    kept = _started_and_finished(path, context)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.row_factory = sqlite3.Row
    try:
        rows = {r["kind"]: r for r in conn.execute("SELECT * FROM audit_log ORDER BY id")}
        kind, edit = move(rows["final"] if move is _moved_into_result else rows["start"])
        victim = rows[kind]["id"]
        assignments = ", ".join(f"{name} = ?" for name in edit)
        conn.execute(f"UPDATE audit_log SET {assignments} WHERE id = ?", (*edit.values(), victim))
    finally:
        conn.close()
    ok, bad, reason = verify(path)
    assert (ok, bad) == (False, victim)
    assert "modified" in reason
    assert verify(path, kept)[:2] == (False, victim)
    cli_run = CliRunner().invoke(cli, ["audit", "verify", "--db", str(path), "--expect-head", kept])
    assert cli_run.exit_code != 0
