"""Every audit record carries the caller's context, the decision time and the policy digest."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from engine_support import TablePolicy

from aegis.cli import cli
from aegis.core.action import Action
from aegis.core.decision import PolicyDecision
from aegis.core.result import Result, ResultStatus
from aegis.errors import ConfigurationError
from aegis.runtime.audit import AuditLogger
from aegis.runtime.audit_backend import GENESIS_HASH, dump_json, record_hash
from aegis.runtime.engine import Runtime
from aegis.testing import RecordingExecutor

DIGEST = hashlib.sha256(b"policy v7").hexdigest()


class DigestPolicy(TablePolicy):
    """A table policy with a ``digest``, as Policy has once limits land."""

    digest = DIGEST


def runtime(audit: AuditLogger, executor: RecordingExecutor | None = None) -> Runtime:
    """A runtime that approves everything, over ``audit``."""
    return Runtime(
        executor=executor or RecordingExecutor(failures={"boom": "x"}),
        policy=DigestPolicy(),
        approval_handler=lambda d: True,
        audit_logger=audit,
    )


async def test_run_one_stores_context_decision_time_and_policy_digest(tmp_path: Path) -> None:
    """run_one(context=...) writes the context, decided_at and the policy digest."""
    before = datetime.now(UTC)
    async with runtime(AuditLogger(tmp_path / "a.db")) as rt:
        await rt.run_one(
            Action("read", "crm"), context={"tool_call_id": "call_1", "agent": "support"}
        )
    with AuditLogger(tmp_path / "a.db") as audit:
        [record] = audit.get_log()
        assert audit.verify().ok
    assert record["context"] == {"agent": "support", "tool_call_id": "call_1"}
    assert record["policy_digest"] == DIGEST
    decided = datetime.fromisoformat(record["decided_at"])
    assert before <= decided <= datetime.fromisoformat(record["started_at"])


async def test_execute_stores_the_context_on_every_record_of_the_plan(tmp_path: Path) -> None:
    """execute(plan, context=...) stamps each action's record, skipped ones included."""
    async with runtime(AuditLogger(tmp_path / "a.db")) as rt:
        results = await rt.execute(
            [Action("read", "crm"), Action("boom", "crm"), Action("read", "x")],
            context={"mcp_request_id": 7},
        )
    with AuditLogger(tmp_path / "a.db") as audit:
        records = audit.get_log()
    assert [r.status for r in results] == [
        ResultStatus.SUCCESS,
        ResultStatus.FAILED,
        ResultStatus.SKIPPED,
    ]
    assert [r["context"] for r in records] == [{"mcp_request_id": 7}] * 3
    assert all(r["decided_at"] and r["policy_digest"] == DIGEST for r in records)


async def test_without_context_the_field_is_null(tmp_path: Path) -> None:
    """An action run without context has context null but still a decision time."""
    async with runtime(AuditLogger(tmp_path / "a.db")) as rt:
        await rt.run_one(Action("read", "crm"))
    with AuditLogger(tmp_path / "a.db") as audit:
        [record] = audit.get_log()
    assert record["context"] is None
    assert record["decided_at"] is not None


@pytest.mark.parametrize(
    "context",
    [
        ["tool_call_id"],
        {1: "x"},
        {"x": {"nested": 1}},
        {"x": [1]},
        {"x": float("nan")},
        {"x": b"bytes"},
        {"x": 10**5000},
    ],
    ids=["list", "int-key", "dict", "list-value", "nan", "bytes", "huge-int"],
)
async def test_a_bad_context_is_refused_before_anything_runs(tmp_path: Path, context: Any) -> None:
    """A context that is not str -> JSON scalar raises ConfigurationError; nothing runs."""
    executor = RecordingExecutor()
    async with runtime(AuditLogger(tmp_path / "a.db"), executor) as rt:
        with pytest.raises(ConfigurationError, match="context"):
            await rt.run_one(Action("read", "crm"), context=context)
        with pytest.raises(ConfigurationError, match="context"):
            await rt.execute([Action("read", "crm")], context=context)
    with AuditLogger(tmp_path / "a.db") as audit:
        assert audit.count() == 0
    assert executor.actions == []


async def test_editing_the_context_breaks_the_chain(tmp_path: Path) -> None:
    """The context is hashed: changing it by hand makes verify fail at that record."""
    db = tmp_path / "a.db"
    async with runtime(AuditLogger(db)) as rt:
        for i in range(3):
            await rt.run_one(Action("read", "crm"), context={"agent": f"a{i}"})
    for column, value in [
        ("context", '{"agent":"evil"}'),
        ("decided_at", "2020-01-01T00:00:00.000000+00:00"),
        ("policy_digest", None),
    ]:
        with closing(sqlite3.connect(db)) as conn, conn:
            saved = conn.execute(f"SELECT {column} FROM audit_log WHERE id = 2").fetchone()[0]
            conn.execute(f"UPDATE audit_log SET {column} = ? WHERE id = 2", (value,))
        with AuditLogger(db) as audit:
            report = audit.verify()
        assert (report.ok, report.first_bad_id) == (False, 2), column
        with closing(sqlite3.connect(db)) as conn, conn:
            conn.execute(f"UPDATE audit_log SET {column} = ? WHERE id = 2", (saved,))
    with AuditLogger(db) as audit:
        assert audit.verify().ok


async def test_exported_lines_carry_the_fields_and_verify(tmp_path: Path) -> None:
    """export_jsonl writes context, decided_at and policy_digest, and each line rehashes."""
    async with runtime(AuditLogger(tmp_path / "a.db")) as rt:
        await rt.run_one(Action("read", "crm"), context={"tool_call_id": "c1", "n": 1.5})
        await rt.run_one(Action("read", "crm"))
    with AuditLogger(tmp_path / "a.db") as audit:
        audit.export_jsonl(tmp_path / "out.jsonl", records=True)
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [line["kind"] for line in lines] == ["start", "final", "start", "final"]
    assert lines[0]["context"] == lines[1]["context"]
    lines = lines[1::2]
    assert lines[0]["context"] == {"n": 1.5, "tool_call_id": "c1"}
    assert lines[1]["context"] is None
    assert all(line["policy_digest"] == DIGEST and line["decided_at"] for line in lines)
    assert [record_hash(line) for line in lines] == [line["hash"] for line in lines]


async def test_audit_show_prints_the_fields(tmp_path: Path) -> None:
    """`aegis audit show` prints the context, the decision time and the policy digest."""
    db = tmp_path / "a.db"
    async with runtime(AuditLogger(db)) as rt:
        await rt.run_one(Action("read", "crm"), context={"tool_call_id": "call_9"})
    result = CliRunner().invoke(cli, ["audit", "show", "1", "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "call_9" in result.stdout
    assert DIGEST in result.stdout
    assert "decided_at" in result.stdout


async def test_a_backend_without_the_new_arguments_still_works() -> None:
    """A custom audit backend written before context existed is called without it."""

    class OldBackend:
        def __init__(self) -> None:
            self.records: list[ResultStatus] = []

        async def record(
            self,
            session_id: str,
            decision: PolicyDecision,
            *,
            result: Result,
            human_decision: str | None = None,
            start_token: int | None = None,
        ) -> int:
            self.records.append(result.status)
            return len(self.records)

        def close(self) -> None:
            pass

    backend = OldBackend()
    rt = Runtime(executor=RecordingExecutor(), policy=DigestPolicy(), audit_logger=backend)  # type: ignore[arg-type]  # duck-typed on purpose
    async with rt:
        await rt.run_one(Action("read", "crm"), context={"agent": "x"})
    assert backend.records == [ResultStatus.SUCCESS]


def test_a_database_of_the_first_schema_migrates_and_still_verifies(tmp_path: Path) -> None:
    """Records written before these fields existed keep verifying, and new ones chain on."""
    db = tmp_path / "v1.db"
    columns = (
        "id, session_id, timestamp, action_type, action_target, action_params, action_desc,"
        " risk_level, approval, matched_rule, reason, human_decision, result_status,"
        " result_data, result_error, started_at, completed_at, prev_hash, hash"
    )
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute(
            "CREATE TABLE audit_log (id INTEGER PRIMARY KEY, session_id TEXT NOT NULL,"
            " timestamp TEXT NOT NULL, action_type TEXT NOT NULL, action_target TEXT NOT NULL,"
            " action_params TEXT NOT NULL, action_desc TEXT NOT NULL, risk_level TEXT NOT NULL,"
            " approval TEXT NOT NULL, matched_rule TEXT NOT NULL, reason TEXT NOT NULL,"
            " human_decision TEXT, result_status TEXT, result_data TEXT NOT NULL,"
            " result_error TEXT, started_at TEXT, completed_at TEXT, prev_hash TEXT NOT NULL,"
            " hash TEXT NOT NULL, start_ref TEXT)"
        )
        prev = GENESIS_HASH
        for i in (1, 2):
            record: dict[str, Any] = {
                "id": i,
                "session_id": "old",
                "timestamp": f"2024-01-0{i}T00:00:00.000000+00:00",
                "action_type": "read",
                "action_target": "crm",
                "action_params": {"i": i},
                "action_desc": "",
                "risk_level": "LOW",
                "approval": "auto",
                "matched_rule": "r",
                "reason": "",
                "human_decision": None,
                "result_status": "success",
                "result_data": None,
                "result_error": None,
                "started_at": None,
                "completed_at": None,
                "prev_hash": prev,
            }
            record["hash"] = prev = record_hash(record)
            values = [
                dump_json(v) if k in ("action_params", "result_data") else v
                for k, v in record.items()
            ]
            conn.execute(f"INSERT INTO audit_log ({columns}) VALUES ({','.join('?' * 19)})", values)
        conn.execute("PRAGMA application_id=1095059283")
        conn.execute("PRAGMA user_version=1")
    with AuditLogger(db) as audit:
        assert audit.verify().ok
        audit.log("new", TablePolicy().evaluate(Action("read", "crm")), context={"a": 1})
        report = audit.verify()
        old, _, new = audit.get_log()
    assert (report.ok, report.checked) == (True, 3)
    assert old["context"] is None
    assert old["decided_at"] is None
    assert new["context"] == {"a": 1}
