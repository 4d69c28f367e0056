"""The runtime with the default SQLite audit trail: nothing lost, chain intact."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from engine_support import TablePolicy
from flow_horizon import looked_back

from aegis.core.action import Action
from aegis.core.result import ResultStatus
from aegis.runtime.audit import AuditLogger
from aegis.runtime.engine import Runtime
from aegis.stores.sqlite.audit import SQLiteAuditStore
from aegis.testing import RecordingExecutor


async def test_many_concurrent_run_one_with_sqlite(tmp_path: Path) -> None:
    """300 concurrent run_one calls give 300 results and 300 verified SQLite records."""
    audit = AuditLogger(tmp_path / "audit.db")
    runtime = Runtime(
        executor=RecordingExecutor(failures={"boom": "x"}),
        policy=TablePolicy(),
        approval_handler=lambda d: d.action.params["i"] % 2 == 0,
        audit_logger=audit,
    )
    types = ["read", "update", "delete", "boom"]
    actions = [Action(types[i % 4], "crm", {"i": i}) for i in range(300)]
    expected = {
        "read": ResultStatus.SUCCESS,
        "delete": ResultStatus.BLOCKED,
        "boom": ResultStatus.FAILED,
    }
    async with runtime:
        results = await asyncio.gather(*(runtime.run_one(a) for a in actions))
        assert audit.count(runtime.session_id) == 300
        records = audit.get_log(runtime.session_id)
        assert audit.verify().ok
        assert audit.pending() == []

    def status(a: Action) -> ResultStatus:
        if a.type == "update":
            return ResultStatus.SUCCESS if a.params["i"] % 2 == 0 else ResultStatus.DENIED
        return expected[a.type]

    assert [r.action for r in results] == actions
    assert [r.status for r in results] == [status(a) for a in actions]
    by_i = {r["action_params"]["i"]: r["result_status"] for r in records}
    assert by_i == {a.params["i"]: status(a).value for a in actions}


async def test_default_audit_is_sqlite_in_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without audit_logger, the runtime writes aegis_audit.db where it runs."""
    monkeypatch.chdir(tmp_path)
    async with Runtime(executor=RecordingExecutor(), policy=TablePolicy()) as runtime:
        await runtime.execute([Action("read", "crm"), Action("delete", "crm")])
        session = runtime.session_id
    with AuditLogger(tmp_path / "aegis_audit.db") as audit:
        assert [r["result_status"] for r in audit.get_log(session)] == ["success", "blocked"]


async def test_plan_with_sqlite_records_every_outcome(tmp_path: Path) -> None:
    """A plan with every outcome leaves one SQLite record per action, in order."""
    audit = AuditLogger(tmp_path / "audit.db")
    runtime = Runtime(
        executor=RecordingExecutor(failures={"boom": "down"}),
        policy=TablePolicy(),
        approval_handler=lambda d: True,
        audit_logger=audit,
    )
    async with runtime:
        await runtime.execute(
            [Action("read", "a"), Action("delete", "a"), Action("update", "a"),
             Action("boom", "a"), Action("read", "b")]
        )  # fmt: skip
        rows = audit.get_log(runtime.session_id)
    assert [r["result_status"] for r in rows] == [
        "success", "blocked", "success", "failed", "skipped"
    ]  # fmt: skip
    assert rows[3]["result_error"] == "RuntimeError: down"
    assert rows[2]["human_decision"] == "approved"


async def test_cancelled_action_is_recorded_in_sqlite(tmp_path: Path) -> None:
    """A cancelled action leaves a FAILED record and no start marker behind."""
    started = asyncio.Event()

    async def executor(action: Action) -> None:
        started.set()
        await asyncio.Event().wait()

    audit = AuditLogger(tmp_path / "audit.db")
    runtime = Runtime(
        executor=executor, policy=TablePolicy(), approval_handler=lambda d: True, audit_logger=audit
    )
    async with runtime:
        task = asyncio.ensure_future(runtime.run_one(Action("update", "crm")))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        [record] = audit.get_log()
        assert audit.pending() == []
    assert record["result_status"] == "failed"
    assert record["human_decision"] == "approved"
    assert record["result_error"] == "interrupted: CancelledError"


def _trace(audit: AuditLogger) -> list[str]:
    """Every SQL statement the trail's connection runs from now on."""
    store = audit.store
    assert isinstance(store, SQLiteAuditStore)
    seen: list[str] = []
    with store.db.connection("trace") as conn:
        conn.set_trace_callback(seen.append)
    return seen


@pytest.mark.parametrize("durability", ["process", "result", "full"])
@pytest.mark.parametrize("looking_back", [True, False], ids=["events noted", "gap"])
async def test_a_sequential_action_is_two_commits_its_final_a_single_statement(
    tmp_path: Path, durability: str, looking_back: bool
) -> None:
    """Run one by one, an action writes its start record with its flow event (which any
    process's flow rule may look for) in one transaction, and its final record as one INSERT.
    While no policy sharing the file looks back, its start is one INSERT too (a gap stands in
    for the events).

    At "result" the final record's INSERT alone runs with synchronous=FULL.
    """
    if looking_back:
        looked_back(tmp_path / "audit.db")
    audit = AuditLogger(tmp_path / "audit.db", durability=durability)
    runtime = Runtime(
        executor=RecordingExecutor(),
        policy=TablePolicy(),
        approval_handler=lambda d: True,
        audit_logger=audit,
    )
    async with runtime:
        await runtime.run_one(Action("read", "crm", {"i": -1}))  # opens the file, learns the head
        seen = _trace(audit)
        for i in range(5):
            assert (await runtime.run_one(Action("read", "crm", {"i": i}))).ok
        words = [
            sql.split()[0] + (" " + sql.split()[2] if sql.startswith("INSERT") else "")
            for sql in seen
            if not sql.startswith("PRAGMA synchronous")
        ]
        start = ["BEGIN", "INSERT aegis_flow_events", "INSERT audit_log", "COMMIT"]
        if not looking_back:
            start = ["INSERT audit_log"]
        assert words == [*start, "INSERT audit_log"] * 5
        each = len(start) + 1
        if durability == "result":
            # start; FULL, final, NORMAL
            final = len(start)
            assert seen[final : final + 3] == [
                "PRAGMA synchronous=FULL",
                seen[final + 1],
                "PRAGMA synchronous=NORMAL",
            ]
            assert seen[final + 1].startswith("INSERT INTO audit_log")
            each += 2
        assert len(seen) == 5 * each
        assert audit.verify().ok


async def test_gathered_actions_share_a_few_transactions(tmp_path: Path) -> None:
    """200 gathered actions commit their 400 records in a few transactions, not 400."""
    audit = AuditLogger(tmp_path / "audit.db")
    runtime = Runtime(
        executor=RecordingExecutor(),
        policy=TablePolicy(),
        approval_handler=lambda d: True,
        audit_logger=audit,
    )
    async with runtime:
        await runtime.run_one(Action("read", "crm", {"i": -1}))
        seen = _trace(audit)
        actions = [Action("read", "crm", {"i": i}) for i in range(200)]
        results = await asyncio.gather(*(runtime.run_one(a) for a in actions))
        commits = [sql for sql in seen if sql == "COMMIT"]
        assert all(result.ok for result in results)
        assert 2 <= len(commits) <= 4
        assert audit.count(runtime.session_id) == 201
        assert audit.verify().ok
