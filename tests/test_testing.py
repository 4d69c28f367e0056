"""aegis.testing: the recording executor, the in-memory audit log and the scripted approver."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from aegis.core.action import Action
from aegis.core.decision import Approval, PolicyDecision
from aegis.core.result import Result, ResultStatus
from aegis.core.risk import RiskLevel
from aegis.runtime.audit_backend import AuditBackend, record_hash
from aegis.testing import InMemoryAuditLog, RecordingExecutor, ScriptedApprovalHandler


def decision(action_type: str = "update", approval: Approval = Approval.APPROVE) -> PolicyDecision:
    return PolicyDecision(Action(action_type, "crm", {"id": 1}), RiskLevel.MEDIUM, approval, "r")


# ---------------------------------------------------------------- RecordingExecutor


async def test_recording_executor_records_actions_in_order() -> None:
    """Every received action is kept, in order, and answered with SUCCESS."""
    executor = RecordingExecutor(default="ok")
    a, b = Action("read", "crm"), Action("update", "crm")
    results = [await executor.execute(a), await executor.execute(b)]
    assert executor.actions == [a, b]
    assert executor.types == ["read", "update"]
    assert [(r.status, r.data) for r in results] == [(ResultStatus.SUCCESS, "ok")] * 2


@pytest.mark.parametrize(
    ("response", "expected_status", "expected_data"),
    [
        ([{"id": 1}], ResultStatus.SUCCESS, [{"id": 1}]),
        (lambda a: a.params["n"] * 2, ResultStatus.SUCCESS, 42),
        (lambda a: Result(a, ResultStatus.FAILED, error="nope"), ResultStatus.FAILED, None),
        (Result(Action("read", "crm"), ResultStatus.SUCCESS, data="canned"), ResultStatus.SUCCESS,
         "canned"),
    ],
)  # fmt: skip
async def test_recording_executor_responses(
    response: Any, expected_status: ResultStatus, expected_data: Any
) -> None:
    """Responses per type may be data, a function of the action, or a Result."""
    executor = RecordingExecutor(responses={"read": response})
    result = await executor.execute(Action("read", "crm", {"n": 21}))
    assert (result.status, result.data) == (expected_status, expected_data)


@pytest.mark.parametrize(
    ("failure", "error", "message"),
    [
        ("quota exceeded", RuntimeError, "quota exceeded"),
        (PermissionError("read-only"), PermissionError, "read-only"),
        (TimeoutError, TimeoutError, None),
    ],
)
async def test_recording_executor_failures(
    failure: Any, error: type[BaseException], message: str | None
) -> None:
    """Failures per type raise the given exception, or a RuntimeError for a message."""
    executor = RecordingExecutor(failures={"delete": failure})
    with pytest.raises(error, match=message):
        await executor.execute(Action("delete", "crm"))
    assert executor.types == ["delete"]
    assert (await executor.execute(Action("read", "crm"))).ok


async def test_recording_executor_counts_setup_and_teardown() -> None:
    """setup() and teardown() calls are counted."""
    executor = RecordingExecutor()
    await executor.setup()
    await executor.teardown()
    await executor.teardown()
    assert (executor.setup_calls, executor.teardown_calls) == (1, 2)


# ---------------------------------------------------------------- ScriptedApprovalHandler


async def test_scripted_answers_in_order_and_records_questions() -> None:
    """A list of answers is used in order; every decision asked about is recorded."""
    handler = ScriptedApprovalHandler([True, False, True])
    asked = [decision("a"), decision("b"), decision("c")]
    answers = [await handler.request_approval(d) for d in asked]
    assert answers == [True, False, True]
    assert handler.asked == asked


async def test_scripted_answers_per_action_type() -> None:
    """A mapping answers per action type: a fixed bool or a list used in order."""
    handler = ScriptedApprovalHandler({"refund": [True, False], "update": True})
    answers = [
        await handler.request_approval(decision(t))
        for t in ("refund", "update", "refund", "update")
    ]
    assert answers == [True, True, False, True]


@pytest.mark.parametrize("default", [True, False])
async def test_scripted_default_when_script_runs_out(default: bool) -> None:
    """Once the script runs out, the default answers."""
    handler = ScriptedApprovalHandler([not default], default=default)
    assert await handler.request_approval(decision()) is (not default)
    assert await handler.request_approval(decision()) is default


async def test_scripted_without_default_raises_when_out() -> None:
    """Without a default, running out raises LookupError naming the action."""
    handler = ScriptedApprovalHandler({"refund": [True]})
    with pytest.raises(LookupError, match="update -> crm"):
        await handler.request_approval(decision("update"))


@pytest.mark.parametrize("answers", [[1], ["yes"], {"refund": [None]}])
def test_scripted_rejects_non_bool_answers(answers: Any) -> None:
    """Scripted answers must be booleans."""
    with pytest.raises(TypeError, match="True or False"):
        ScriptedApprovalHandler(answers)


# ---------------------------------------------------------------- InMemoryAuditLog


def test_in_memory_log_is_an_audit_backend() -> None:
    """InMemoryAuditLog satisfies the AuditBackend protocol."""
    assert isinstance(InMemoryAuditLog(), AuditBackend)


async def test_in_memory_log_records_the_full_record() -> None:
    """A record has every documented field, JSON values decoded, and a valid hash."""
    audit = InMemoryAuditLog()
    d = decision()
    token = await audit.record_start("s1", d, human_decision="approved")
    assert [p["action_type"] for p in audit.pending()] == ["update"]
    result = Result(d.action, ResultStatus.SUCCESS, data={"rows": [1, 2]})
    record_id = await audit.record(
        "s1", d, result=result, human_decision="approved", start_token=token
    )
    [record] = audit.get_log()
    assert record_id == record["id"] == 2
    assert record["start_id"] == token == 1
    assert record["action_params"] == {"id": 1}
    assert record["result_data"] == {"rows": [1, 2]}
    assert record["human_decision"] == "approved"
    assert record["risk_level"] == "MEDIUM"
    assert record_hash(record) == record["hash"]
    assert audit.pending() == []


def test_in_memory_log_filters_and_counts() -> None:
    """get_log and count apply session, type and status filters, limit and after_id."""
    audit = InMemoryAuditLog()
    for session, action_type in [("a", "read"), ("b", "update"), ("a", "update"), ("a", "read")]:
        audit.log(session, decision(action_type, Approval.AUTO))
    blocked = decision("delete", Approval.BLOCK)
    audit.log("a", blocked, result=Result(blocked.action, ResultStatus.BLOCKED))
    assert audit.count() == 5
    assert audit.count("a") == 4
    assert audit.count(action_type="update") == 2
    assert audit.count(result_status="blocked") == 1
    assert [r["id"] for r in audit.get_log("a", limit=2)] == [1, 3]
    assert [r["id"] for r in audit.get_log(after_id=3)] == [4, 5]


def test_in_memory_log_chain_detects_tampering() -> None:
    """verify() passes on an untouched log and fails once a record is edited."""
    audit = InMemoryAuditLog()
    for _ in range(3):
        audit.log("s", decision())
    assert audit.verify().ok
    audit.memory.tamper(2, human_decision="approved")
    report = audit.verify()
    assert not report.ok
    assert report.first_bad_id == 2


def test_in_memory_log_exports_jsonl(tmp_path: Path) -> None:
    """export_jsonl writes one verifiable JSON line per record of the session."""
    audit = InMemoryAuditLog()
    audit.log("a", decision())
    audit.log("b", decision())
    path = tmp_path / "audit.jsonl"
    assert audit.export_jsonl(path, session_id="b") == 1
    [line] = path.read_text("utf-8").splitlines()
    record = json.loads(line)
    assert record["session_id"] == "b"
    assert record_hash(record) == record["hash"]


def test_in_memory_log_notifies_subscribers() -> None:
    """Subscribers receive each new record until they unsubscribe."""
    audit = InMemoryAuditLog()
    seen: list[int] = []

    def listener(record: dict[str, Any]) -> None:
        seen.append(record["id"])

    audit.subscribe(listener)
    audit.log("s", decision())
    audit.unsubscribe(listener)
    audit.log("s", decision())
    assert seen == [1]


def test_in_memory_log_close_is_idempotent() -> None:
    """close() marks the log closed, twice is fine, and records stay readable."""
    audit = InMemoryAuditLog()
    audit.log("s", decision())
    audit.close()
    audit.close()
    assert audit.closed
    assert audit.count() == 1
