"""Handlers that answer with an ApprovalOutcome: who decided, and bound to the action."""

from __future__ import annotations

import pytest
from engine_support import TablePolicy

from aegis.core.action import Action, action_digest
from aegis.core.decision import PolicyDecision
from aegis.core.outcome import ApprovalOutcome
from aegis.core.result import ResultStatus
from aegis.runtime.engine import Runtime
from aegis.testing import InMemoryAuditLog, RecordingExecutor


def _runtime(answer: object) -> tuple[Runtime, RecordingExecutor, InMemoryAuditLog]:
    executor = RecordingExecutor()
    audit = InMemoryAuditLog()

    def handler(decision: PolicyDecision) -> object:
        return answer(decision) if callable(answer) else answer

    rt = Runtime(
        executor=executor, policy=TablePolicy(), approval_handler=handler, audit_logger=audit
    )
    return rt, executor, audit


async def test_approved_outcome_runs_and_names_the_reviewers() -> None:
    """An approving outcome runs the action and the audit names who approved it."""
    rt, executor, audit = _runtime(
        lambda d: ApprovalOutcome(
            True, reviewers=("alice", "bob"), request_id="r1", digest=action_digest(d.action)
        )
    )
    async with rt:
        result = await rt.run_one(Action("refund", "billing", {"amount": 90}))
    assert result.status is ResultStatus.SUCCESS
    assert len(executor.actions) == 1
    assert audit.get_log()[-1]["human_decision"] == "approved by alice, bob [request r1]"


async def test_denied_outcome_does_not_run_and_says_why() -> None:
    """A denying outcome is DENIED with the reviewer and comment in the error."""
    rt, executor, audit = _runtime(ApprovalOutcome(False, reviewers=("carol",), comment="no"))
    async with rt:
        result = await rt.run_one(Action("refund", "billing", {"amount": 90}))
    assert result.status is ResultStatus.DENIED
    assert result.error == "denied by carol: no"
    assert executor.actions == []
    assert audit.get_log()[-1]["human_decision"] == "denied by carol: no"


async def test_outcome_for_another_action_is_refused() -> None:
    """An approval whose digest is not the action's own never runs the action."""
    other = action_digest(Action("refund", "billing", {"amount": 1}))
    rt, executor, _ = _runtime(ApprovalOutcome(True, reviewers=("alice",), digest=other))
    async with rt:
        result = await rt.run_one(Action("refund", "billing", {"amount": 1_000_000}))
    assert result.status is ResultStatus.DENIED
    assert "digest mismatch" in (result.error or "")
    assert executor.actions == []


@pytest.mark.parametrize("approved_huge", [False, True], ids=["look-alike", "huge int"])
async def test_an_approval_of_an_int_too_long_to_print_never_runs_its_look_alike(
    approved_huge: bool,
) -> None:
    """A param past the digit limit and a mapping shaped like its mark in canonical JSON are
    two actions: the approval of either, by digest, never runs the other."""
    huge = 10**5000
    as_int = Action("refund", "billing", {"amount": huge})
    look_alike = Action("refund", "billing", {"amount": {"__aegis_int__": hex(huge)}})
    approved, other = (as_int, look_alike) if approved_huge else (look_alike, as_int)
    rt, executor, _ = _runtime(ApprovalOutcome(True, digest=action_digest(approved)))
    async with rt:
        refused = await rt.run_one(other)
        ran = await rt.run_one(approved)
    assert refused.status is ResultStatus.DENIED
    assert "digest mismatch" in (refused.error or "")
    assert ran.status is ResultStatus.SUCCESS
    assert executor.actions == [approved]


def test_digest_changes_with_every_field() -> None:
    """Type, target, params and description each change the digest."""
    base = Action("refund", "billing", {"amount": 5}, "pay back")
    variants = [
        Action("refunds", "billing", {"amount": 5}, "pay back"),
        Action("refund", "billings", {"amount": 5}, "pay back"),
        Action("refund", "billing", {"amount": 6}, "pay back"),
        Action("refund", "billing", {"amount": 5}, "pay"),
        Action("refund", "billing", {"amount": "5"}, "pay back"),
    ]
    digests = {action_digest(a) for a in variants}
    assert action_digest(base) not in digests
    assert len(digests) == len(variants)
    again = Action("refund", "billing", {"amount": 5}, "pay back")
    assert action_digest(base) == action_digest(again)


async def test_a_settled_answer_without_a_digest_never_runs() -> None:
    """An approval carried across a suspension must name the action's digest, or it denies."""
    from aegis.runtime._binding import CallBinding, bound_call

    ran: list[Action] = []
    rt, executor, _ = _runtime(True)
    action = Action("refund", "billing", {"amount": 90})
    async with rt:
        with bound_call(CallBinding(action, ran.append, ApprovalOutcome(True, reviewers=("a",)))):
            result = await rt.run_one(action)
        assert result.status is ResultStatus.DENIED
        assert "names no action digest" in (result.error or "")
        bound = ApprovalOutcome(True, reviewers=("a",), digest=action_digest(action))
        with bound_call(CallBinding(action, ran.append, bound)):
            assert (await rt.run_one(action)).status is ResultStatus.SUCCESS
    assert ran == [action]
    assert executor.actions == []
