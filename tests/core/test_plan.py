"""Execution plans and results: summaries, flags and container behaviour."""

from __future__ import annotations

from aegis.core.action import Action
from aegis.core.decision import Approval, PolicyDecision
from aegis.core.plan import ExecutionPlan
from aegis.core.result import Result, ResultStatus
from aegis.core.risk import RiskLevel


def decision(kind: str, approval: Approval, reason: str = "") -> PolicyDecision:
    """A decision on an action of type ``kind`` against 'crm'."""
    return PolicyDecision(Action(kind, "crm"), RiskLevel.LOW, approval, f"{kind}_rule", reason)


def test_flags() -> None:
    """has_blocked, requires_approval and auto_only reflect the decisions."""
    plan = ExecutionPlan([decision("read", Approval.AUTO), decision("delete", Approval.BLOCK)])
    assert plan.has_blocked
    assert not plan.requires_approval
    assert not plan.auto_only
    approve = ExecutionPlan([decision("write", Approval.APPROVE)])
    assert approve.requires_approval
    assert not approve.has_blocked
    assert ExecutionPlan([decision("read", Approval.AUTO)]).auto_only


def test_empty_plan() -> None:
    """An empty plan has no length, nothing blocked and is trivially auto-only."""
    plan = ExecutionPlan()
    assert len(plan) == 0
    assert not plan.has_blocked
    assert plan.auto_only
    assert plan.summary() == ""


def test_len_iter_and_index() -> None:
    """A plan is a sequence of its decisions; slicing gives a plan."""
    decisions = [decision("a", Approval.AUTO), decision("b", Approval.APPROVE)]
    plan = ExecutionPlan(iter(decisions))
    assert len(plan) == 2
    assert list(plan) == decisions
    assert plan[1] is decisions[1]
    assert isinstance(plan[:1], ExecutionPlan)
    assert list(plan[:1]) == decisions[:1]


def test_summary_lines() -> None:
    """summary() has one numbered line per action with verdict, risk, rule and reason."""
    plan = ExecutionPlan(
        [decision("read", Approval.AUTO), decision("delete", Approval.BLOCK, "too risky")]
    )
    lines = plan.summary().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("1. [AUTO")
    assert "read -> crm" in lines[0]
    assert "risk=LOW" in lines[0]
    assert "rule=read_rule" in lines[0]
    assert lines[1].startswith("2. [BLOCK")
    assert lines[1].endswith("reason: too risky")


def test_result_ok_only_for_success() -> None:
    """Result.ok is true only for SUCCESS."""
    action = Action("a", "b")
    assert Result(action, ResultStatus.SUCCESS).ok
    for status in ResultStatus:
        if status is not ResultStatus.SUCCESS:
            assert not Result(action, status).ok


def test_result_str() -> None:
    """str(result) shows status, action and any error."""
    action = Action("delete", "crm")
    assert str(Result(action, ResultStatus.BLOCKED, error="policy")) == (
        "[BLOCKED] delete -> crm: policy"
    )
    assert str(Result(action, ResultStatus.SUCCESS)) == "[SUCCESS] delete -> crm"


def test_result_started_at_is_aware() -> None:
    """A result's start time defaults to an aware UTC timestamp."""
    assert Result(Action("a", "b"), ResultStatus.SUCCESS).started_at.tzinfo is not None
