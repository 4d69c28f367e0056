"""One contract, every integration: the same policy means the same thing in each framework."""

from __future__ import annotations

import asyncio
import io
import sys
from pathlib import Path
from typing import Any

import pytest
from adapters_support import DESCRIPTIONS, HARNESSES, make_runtime

from aegis import Action, ApprovalOutcome, PolicyDecision
from aegis.core.action import action_digest
from aegis.runtime.audit import AuditLogger
from aegis.testing import InMemoryAuditLog, ScriptedApprovalHandler

REFUND = {"order_id": "o-17", "amount": 20.0}

#: refunds run without a reviewer: only Aegis' own refusal keeps a non-finite one from running
REFUNDS_RUN = {
    "version": "1",
    "defaults": {"approval": "block", "risk_level": "high"},
    "rules": [
        {"name": "refunds", "match": {"type": "refund"}, "approval": "auto", "risk_level": "low"}
    ],
}


@pytest.fixture(params=HARNESSES, ids=lambda h: h.name)
def harness(request: pytest.FixtureRequest) -> Any:
    """Each framework's scripted agent in turn."""
    return request.param


def _records(audit: InMemoryAuditLog) -> list[dict[str, Any]]:
    return audit.records


async def test_auto_runs_and_is_recorded(harness: Any) -> None:
    """A call the policy lets through runs once with its arguments, and its success is recorded."""
    audit = InMemoryAuditLog()
    run = await harness.run(make_runtime(audit=audit), [("lookup", {"customer_id": 7}, "call_1")])
    assert run.executed == [("lookup", {"customer_id": 7})]
    assert run.model_saw["call_1"] == "customer 7: gold"
    [record] = _records(audit)
    assert (record["action_type"], record["action_target"]) == ("lookup", "crm")
    assert record["result_status"] == "success"
    assert record["action_desc"] == DESCRIPTIONS["lookup"]


async def test_block_never_reaches_the_tool_and_the_model_reads_why(harness: Any) -> None:
    """A blocked call never runs; the model reads the rule and its reason; the block is recorded."""
    audit = InMemoryAuditLog()
    approver = ScriptedApprovalHandler([])
    run = await harness.run(
        make_runtime(approver, audit=audit), [("delete_customer", {"customer_id": 7}, "call_1")]
    )
    assert run.executed == []
    assert "blocked by rule no-deletes: deletes need a ticket" in run.model_saw["call_1"]
    assert approver.asked == []
    [record] = _records(audit)
    assert record["result_status"] == "blocked"


async def test_approve_yes_runs_exactly_the_approved_arguments(harness: Any) -> None:
    """A call that needs approval runs after a yes, with exactly the arguments the approver saw."""
    audit = InMemoryAuditLog()
    approver = ScriptedApprovalHandler([True])
    run = await harness.run(make_runtime(approver, audit=audit), [("refund", REFUND, "call_1")])
    [asked] = approver.asked
    assert dict(asked.action.params) == REFUND
    assert (asked.action.type, asked.action.target) == ("refund", "crm")
    assert run.executed == [("refund", REFUND)]
    assert run.model_saw["call_1"] == "refunded 20.0 on o-17"
    [record] = _records(audit)
    assert (record["result_status"], record["human_decision"]) == ("success", "approved")


async def test_approve_no_never_runs_the_tool(harness: Any) -> None:
    """A refused call never runs; the model is told it was denied; the denial is recorded."""
    audit = InMemoryAuditLog()
    run = await harness.run(
        make_runtime(ScriptedApprovalHandler([False]), audit=audit), [("refund", REFUND, "call_1")]
    )
    assert run.executed == []
    assert (
        "denied by the approver (approval required by rule refunds: refunds need a reviewer)"
        in (run.model_saw["call_1"])
    )
    [record] = _records(audit)
    assert record["result_status"] == "denied"


async def test_a_reviewers_comment_reaches_the_model_with_the_rule(harness: Any) -> None:
    """A reviewer's no with a comment: the model reads who, the comment and the asking rule."""
    audit = InMemoryAuditLog()

    def alice_says_no(decision: PolicyDecision) -> ApprovalOutcome:
        return ApprovalOutcome(False, reviewers=("alice",), comment="not this one")

    run = await harness.run(make_runtime(alice_says_no, audit=audit), [("refund", REFUND, "c1")])
    assert run.executed == []
    expected = "denied by alice: not this one (approval required by rule refunds: refunds need"
    assert expected in run.model_saw["c1"]
    [record] = _records(audit)
    assert record["result_status"] == "denied"


async def test_without_an_approver_the_model_reads_the_rule(
    harness: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No approver configured (and nobody at the terminal): denied, and the model reads the rule."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    audit = InMemoryAuditLog()
    run = await harness.run(
        make_runtime(no_approver=True, audit=audit), [("refund", REFUND, "call_1")]
    )
    assert run.executed == []
    assert "(approval required by rule refunds: refunds need a reviewer)" in run.model_saw["call_1"]
    [record] = _records(audit)
    assert record["result_status"] == "denied"


async def test_approval_timeout_never_runs_the_tool(harness: Any) -> None:
    """An approver that does not answer within approval_timeout denies: the tool never runs."""
    audit = InMemoryAuditLog()

    async def slow(decision: PolicyDecision) -> bool:
        await asyncio.sleep(30)
        return True

    runtime = make_runtime(slow, approval_timeout=0.2, audit=audit)
    run = await harness.run(runtime, [("refund", REFUND, "call_1")])
    assert run.executed == []
    assert "timed out" in run.model_saw["call_1"]
    [record] = _records(audit)
    assert record["result_status"] == "denied"
    assert "timeout" in record["human_decision"] or "timed out" in record["human_decision"]


async def test_a_failing_approval_handler_never_runs_the_tool(harness: Any) -> None:
    """An approval handler that raises denies: the tool never runs and the model reads why."""
    audit = InMemoryAuditLog()

    def broken(decision: PolicyDecision) -> bool:
        raise ConnectionError("approval service unreachable")

    run = await harness.run(make_runtime(broken, audit=audit), [("refund", REFUND, "call_1")])
    assert run.executed == []
    assert "approval service unreachable" in run.model_saw["call_1"]
    [record] = _records(audit)
    assert record["result_status"] == "denied"


async def test_an_approval_of_other_arguments_is_refused(harness: Any) -> None:
    """A yes bound to other arguments (the amount edited after approval) never runs the call."""
    audit = InMemoryAuditLog()
    approved = Action("refund", "crm", {"order_id": "o-17", "amount": 2.0}, DESCRIPTIONS["refund"])

    def approve_other(decision: PolicyDecision) -> ApprovalOutcome:
        return ApprovalOutcome(True, reviewers=("alice",), digest=action_digest(approved))

    run = await harness.run(
        make_runtime(approve_other, audit=audit), [("refund", REFUND, "call_1")]
    )
    assert run.executed == []
    assert "digest mismatch" in run.model_saw["call_1"]
    [record] = _records(audit)
    assert record["result_status"] == "denied"


async def test_one_audit_record_per_call_with_its_call_id(harness: Any) -> None:
    """Three calls of one turn leave three records, each naming its own call id and the agent."""
    audit = InMemoryAuditLog()
    calls = [
        ("lookup", {"customer_id": 1}, "call_a"),
        ("delete_customer", {"customer_id": 2}, "call_b"),
        ("refund", REFUND, "call_c"),
    ]
    run = await harness.run(make_runtime(ScriptedApprovalHandler([True]), audit=audit), calls)
    assert sorted(run.executed) == sorted([("lookup", {"customer_id": 1}), ("refund", REFUND)])
    records = {r["action_type"]: r for r in _records(audit)}
    assert len(_records(audit)) == 3
    expected = {"lookup": "call_a", "delete_customer": "call_b", "refund": "call_c"}
    for action_type, call_id in expected.items():
        context = records[action_type]["context"]
        assert context["tool_call_id"] == call_id
        assert context["agent"] == "support"
        assert context["framework"] == getattr(harness, "framework", harness.name)


async def test_a_rate_limit_counts_the_agents_tool_calls(harness: Any, tmp_path: Path) -> None:
    """A limit keyed by agent counts tool calls: the call past it is blocked, naming the limit."""
    audit = AuditLogger(str(tmp_path / "audit.db"))  # the counters live beside the trail
    limited = {
        "version": "1",
        "defaults": {"approval": "block", "risk_level": "high"},
        "rules": [
            {
                "name": "lookup_rate",
                "match": {"type": "lookup"},
                "limit": {"max": 1, "per": "1h", "key": ["agent"]},
                "on_exceed": {"approval": "block"},
                "approval": "auto",
                "risk_level": "low",
            }
        ],
    }
    calls = [("lookup", {"customer_id": 1}, "call_a"), ("lookup", {"customer_id": 2}, "call_b")]
    run = await harness.run(make_runtime(audit=audit, policy=limited), calls)
    assert len(run.executed) == 1
    refused = [text for text in run.model_saw.values() if "blocked by rule lookup_rate" in text]
    assert len(refused) == 1
    assert sorted(r["result_status"] for r in audit.get_log()) == ["blocked", "success"]
    audit.close()


@pytest.mark.parametrize(
    ("amount", "recorded"),
    [(float("nan"), "nan"), (float("inf"), "inf"), (float("-inf"), "-inf")],
    ids=["NaN", "1e400", "-1e400"],  # a model writes infinity as a number too large for a float
)
async def test_a_number_that_is_not_finite_is_refused_and_recorded(
    harness: Any, amount: float, recorded: str
) -> None:
    """NaN or infinity in a call's arguments: never run, recorded as blocked, read by the model."""
    audit = InMemoryAuditLog()
    calls = [
        ("refund", {"order_id": "o-17", "amount": amount}, "call_1"),
        ("refund", {"order_id": "o-18", "amount": 5.0}, "call_2"),
    ]
    run = await harness.run(make_runtime(audit=audit, policy=REFUNDS_RUN), calls)
    assert run.executed == [("refund", {"order_id": "o-18", "amount": 5.0})]
    assert "param 'amount' is not a finite number" in run.model_saw["call_1"]
    assert run.model_saw["call_2"] == "refunded 5.0 on o-18"
    records = {r["context"]["tool_call_id"]: r for r in _records(audit)}
    assert len(_records(audit)) == 2
    refused = records["call_1"]
    assert (refused["result_status"], refused["matched_rule"]) == ("blocked", "<aegis>")
    assert refused["action_params"] == {"order_id": "o-17", "amount": recorded}
    assert records["call_2"]["result_status"] == "success"
