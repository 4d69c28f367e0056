"""The approval store against a simple model: any sequence of operations, the same answers."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from aegis.core.action import Action, action_digest
from aegis.core.approval_request import ApprovalRequest, RequestStatus, Verdict, request_digest
from aegis.core.risk import RiskLevel
from aegis.errors import ApprovalServiceError
from aegis.stores.approvals import new_request_id
from aegis.stores.sqlite.approvals import SqliteApprovalStore

START = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
REVIEWERS = st.sampled_from(["alice", "bob", "carol"])


@dataclass
class Model:
    """What a request should be: its status, approvers and who decided."""

    approvers: int
    expires_at: datetime
    status: RequestStatus = RequestStatus.PENDING
    decided: list[str] = field(default_factory=list)
    approvals: int = 0
    collected: bool = False


class StoreMachine(RuleBasedStateMachine):
    """Random creates, decisions, collects, cancels and clock steps on one SQLite store."""

    requests = Bundle("requests")

    def __init__(self) -> None:
        super().__init__()
        self.folder = tempfile.TemporaryDirectory()
        self.store = SqliteApprovalStore(Path(self.folder.name) / "model.db")
        self.now = START
        self.model: dict[str, Model] = {}
        self.serial = 0

    def teardown(self) -> None:
        self.store.close()
        self.folder.cleanup()

    @rule(target=requests, approvers=st.integers(1, 3), ttl=st.integers(1, 50))
    def create(self, approvers: int, ttl: int) -> str:
        self.serial += 1
        action = Action("refund", "billing", {"n": self.serial})
        request = ApprovalRequest(
            id=new_request_id(),
            session_id="s",
            requester="bot",
            action=action,
            risk_level=RiskLevel.HIGH,
            matched_rule="r",
            reason="",
            approvers=approvers,
            reviewers=(),
            created_at=self.now,
            expires_at=self.now + timedelta(seconds=ttl),
            digest=request_digest(action, "bot"),
            action_digest=action_digest(action),
        )
        self.store.create_request(request, self.now)
        self.model[request.id] = Model(approvers, request.expires_at)
        return request.id

    @rule(request_id=requests, reviewer=REVIEWERS, approve=st.booleans())
    def decide(self, request_id: str, reviewer: str, approve: bool) -> None:
        expected = self.model[request_id]
        allowed = (
            expected.status is RequestStatus.PENDING
            and self.now < expected.expires_at
            and reviewer not in expected.decided
        )
        verdict = Verdict.APPROVE if approve else Verdict.DENY
        refused: ApprovalServiceError | None = None
        try:
            self.store.decide(
                request_id, reviewer, verdict, comment="", grant_minutes=None, now=self.now
            )
        except ApprovalServiceError as exc:
            refused = exc
        if refused is not None:
            assert not allowed, refused
            assert refused.status == 409
            return
        assert allowed
        expected.decided.append(reviewer)
        if not approve:
            expected.status = RequestStatus.DENIED
        else:
            expected.approvals += 1
            if expected.approvals >= expected.approvers:
                expected.status = RequestStatus.APPROVED

    @rule(request_id=requests)
    def collect(self, request_id: str) -> None:
        expected = self.model[request_id]
        allowed = expected.status is RequestStatus.APPROVED and not expected.collected
        try:
            self.store.collect(request_id, self.now)
        except ApprovalServiceError:
            assert not allowed
            return
        assert allowed
        expected.collected = True

    @rule(request_id=requests)
    def cancel(self, request_id: str) -> None:
        expected = self.model[request_id]
        try:
            self.store.cancel(request_id, "gave up", self.now)
        except ApprovalServiceError:
            assert expected.status is not RequestStatus.PENDING
            return
        assert expected.status is RequestStatus.PENDING
        expected.status = RequestStatus.CANCELLED

    @rule(seconds=st.integers(1, 30))
    def tick_and_sweep(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)
        expired = {r.id for r in self.store.expire_due(self.now)}
        due = {
            request_id
            for request_id, m in self.model.items()
            if m.status is RequestStatus.PENDING and self.now >= m.expires_at
        }
        assert expired == due
        for request_id in due:
            self.model[request_id].status = RequestStatus.EXPIRED

    @invariant()
    def agrees_with_the_model(self) -> None:
        for request_id, expected in self.model.items():
            stored = self.store.get_request(request_id)
            assert stored is not None
            assert stored.status is expected.status
            assert [d.reviewer for d in stored.decisions] == expected.decided
            assert (stored.collected_at is not None) == expected.collected


StoreMachine.TestCase.settings = settings(max_examples=25, stateful_step_count=20, deadline=None)
TestApprovalStoreModel = StoreMachine.TestCase
TestApprovalStoreModel.__doc__ = "Random operation sequences on the SQLite store match the model."
