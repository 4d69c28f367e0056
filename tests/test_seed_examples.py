"""The examples of the Runtime API page (shared/seed/runtime-api.md), run as written.

Only the page's ``...`` placeholders are filled in: an executor and a policy.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from aegis import Action, BaseExecutor, Policy, Result, ResultStatus, Runtime

POLICY = {
    "version": "1",
    "defaults": {"risk_level": "medium", "approval": "approve"},
    "rules": [
        {"name": "reads", "match": {"type": "read*"}, "risk_level": "low", "approval": "auto"},
        {"name": "refunds", "match": {"type": "refund"}, "risk_level": "high"},
        {
            "name": "no_deletes",
            "match": {"type": "delete"},
            "risk_level": "critical",
            "approval": "block",
        },
    ],
}


class Echo(BaseExecutor):
    """Answers every action with its own params."""

    def __init__(self) -> None:
        self.calls: list[Action] = []
        self.setups = 0
        self.teardowns = 0

    async def setup(self) -> None:
        self.setups += 1

    async def teardown(self) -> None:
        self.teardowns += 1

    async def execute(self, action: Action) -> Result:
        self.calls.append(action)
        return Result(action=action, status=ResultStatus.SUCCESS, data=dict(action.params))


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The default AuditLogger writes aegis_audit.db to the working directory.
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def policy() -> Policy:
    return Policy.from_dict(POLICY)


async def test_context_manager_example(policy: Policy) -> None:
    """`async with Runtime(...)` runs a plan, then tears the executor down once."""
    executor = Echo()
    async with Runtime(executor=executor, policy=policy) as runtime:
        plan = runtime.plan([Action("read", "salesforce")])
        results = await runtime.execute(plan)
    assert [r.status for r in results] == [ResultStatus.SUCCESS]
    assert (executor.setups, executor.teardowns) == (1, 1)


async def test_plan_example(policy: Policy, capsys: pytest.CaptureFixture[str]) -> None:
    """`plan()` decides without executing, and `summary()` prints one line per action."""
    executor = Echo()
    runtime = Runtime(executor=executor, policy=policy)
    plan = runtime.plan(
        [
            Action("read", "salesforce"),
            Action("delete", "salesforce"),
        ]
    )
    print(plan.summary())
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2
    assert "AUTO" in out[0]
    assert "reads" in out[0]
    assert "BLOCK" in out[1]
    assert "no_deletes" in out[1]
    assert executor.calls == []


async def test_execute_example(policy: Policy, capsys: pytest.CaptureFixture[str]) -> None:
    """`execute()` returns one Result per action, a block does not reach the executor."""
    executor = Echo()
    runtime = Runtime(executor=executor, policy=policy)
    plan = runtime.plan([Action("read", "salesforce"), Action("delete", "salesforce")])
    results = await runtime.execute(plan)
    for r in results:
        print(r.status, r.action.type)
    assert capsys.readouterr().out.splitlines() == ["success read", "blocked delete"]
    assert [a.type for a in executor.calls] == ["read"]


async def test_run_one_example(policy: Policy) -> None:
    """`run_one()` evaluates and executes a single action."""
    runtime = Runtime(executor=Echo(), policy=policy)
    result = await runtime.run_one(Action("read", "salesforce"))
    assert result.ok


async def test_callback_handler_example(policy: Policy) -> None:
    """The page's callback approves medium risk and denies what is riskier."""
    from aegis import ApprovalHandler
    from aegis.runtime.approval import AutoApprovalHandler, CLIApprovalHandler
    from aegis.runtime.approval_callback import CallbackApprovalHandler

    # Auto-approve low/medium risk
    handler = CallbackApprovalHandler(callback=lambda d: d.risk_level.value <= 2)
    runtime = Runtime(executor=Echo(), policy=policy, approval_handler=handler)

    medium = await runtime.run_one(Action("update", "salesforce"))
    assert medium.status is ResultStatus.SUCCESS
    high = await runtime.run_one(Action("refund", "stripe", {"amount": 900}))
    assert high.status is ResultStatus.DENIED
    assert issubclass(AutoApprovalHandler, ApprovalHandler)
    assert issubclass(CLIApprovalHandler, ApprovalHandler)


async def test_logging_audit_backend_example(
    policy: Policy, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """LoggingAuditLogger logs to `aegis.audit` and exports the same records as JSONL."""
    from aegis.runtime.audit_logging import LoggingAuditLogger

    runtime = Runtime(
        executor=Echo(),
        policy=policy,
        audit_logger=LoggingAuditLogger(),  # Logs to aegis.audit logger
    )
    with caplog.at_level(logging.DEBUG, logger="aegis.audit"):
        await runtime.run_one(Action("read", "salesforce", {"id": 1}))
    assert any(rec.name == "aegis.audit" for rec in caplog.records)
    out = tmp_path / "audit.jsonl"
    assert runtime.audit.export_jsonl(out) == 1
    record = json.loads(out.read_text(encoding="utf-8"))
    assert record["action_params"] == {"id": 1}


async def test_default_audit_is_sqlite_in_cwd(policy: Policy, tmp_path: Path) -> None:
    """Without an audit_logger, records land in aegis_audit.db in the working directory."""
    from aegis.runtime.audit import AuditLogger

    runtime = Runtime(executor=Echo(), policy=policy)
    await runtime.run_one(Action("read", "salesforce"))
    runtime.audit.close()
    audit = AuditLogger(tmp_path / "aegis_audit.db")
    try:
        assert [r["action_type"] for r in audit.get_log()] == ["read"]
        assert audit.get_log()[0]["session_id"] == runtime.session_id
    finally:
        audit.close()
