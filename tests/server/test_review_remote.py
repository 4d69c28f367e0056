"""Review: the remote approval handler leaves nothing approvable behind when it fails."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from aegis import Action, Policy, ResultStatus, Runtime
from aegis.adapters._remote import RemoteSuspension
from aegis.core.approval_request import Role, TokenInfo
from aegis.runtime.approval_remote import RemoteApprovalHandler
from aegis.runtime.audit import AuditLogger
from aegis.server import ApprovalService, create_app
from aegis.stores.approvals import hash_token
from aegis.stores.sqlite.approvals import SqliteApprovalStore
from aegis.testing import RecordingExecutor

POLICY = {"rules": [{"name": "refunds", "match": {"type": "refund"}, "approval": "approve"}]}


class FailingWait(httpx.AsyncBaseTransport):
    """The real app, except that its first long poll answers HTTP 500 (an internal fault)."""

    def __init__(self, app: object) -> None:
        self.inner = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        self.failed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/wait") and not self.failed:
            self.failed = True
            return httpx.Response(
                500, json={"error": {"code": "internal", "message": "the service broke"}}
            )
        return await self.inner.handle_async_request(request)


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[ApprovalService]:
    """A real approval service over a SQLite store, with an agent and a reviewer token."""
    db = tmp_path / "aegis.db"
    audit = AuditLogger(db)
    store = SqliteApprovalStore(db)
    now = datetime.now(UTC)
    store.create_token(TokenInfo("bot", Role.AGENT, (), now), hash_token("bot-secret"))
    store.create_token(TokenInfo("alice", Role.REVIEWER, (), now), hash_token("alice-secret"))
    yield ApprovalService(store, audit, approval_ttl=60, poll_interval=0.05)
    store.close()
    audit.close()


async def test_a_service_error_while_waiting_cancels_the_request(
    service: ApprovalService,
) -> None:
    """A 500 during the wait denies, and cancels the request: a late yes approves nothing."""
    app = create_app(service)
    handler = RemoteApprovalHandler(
        "http://t", token="bot-secret", timeout=10, poll=1, transport=FailingWait(app)
    )
    executor = RecordingExecutor()
    async with (
        handler,
        Runtime(
            executor=executor, policy=Policy.from_dict(POLICY), approval_handler=handler
        ) as runtime,
    ):
        result = await runtime.run_one(Action("refund", "billing", {"amount": 900}))
    assert result.status is ResultStatus.DENIED
    assert executor.actions == []
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://t",
        headers={"Authorization": "Bearer alice-secret"},
    ) as alice:
        [request] = (await alice.get("/api/v1/approvals", params={"status": "all"})).json()[
            "approvals"
        ]
        assert request["status"] == "cancelled"
        late = await alice.post(
            f"/api/v1/approvals/{request['id']}/decision", json={"verdict": "approve"}
        )
    assert late.status_code == 409


async def test_a_service_error_while_a_suspended_run_collects_cancels_the_request(
    service: ApprovalService,
) -> None:
    """A resumed run that meets a 500 while collecting is denied, its request cancelled."""
    app = create_app(service)
    handler = RemoteApprovalHandler(
        "http://t", token="bot-secret", timeout=10, poll=1, transport=FailingWait(app)
    )
    runtime = Runtime(
        executor=RecordingExecutor(), policy=Policy.from_dict(POLICY), approval_handler=handler
    )
    decision = runtime.decide(Action("refund", "billing", {"amount": 900}))
    suspension = RemoteSuspension(handler)
    async with handler:
        request_id = await suspension.submit_approval(decision)
        outcome = await suspension.collect_approval(request_id, decision)
    assert outcome.approved is False
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://t",
        headers={"Authorization": "Bearer alice-secret"},
    ) as alice:
        late = await alice.post(
            f"/api/v1/approvals/{request_id}/decision", json={"verdict": "approve"}
        )
    assert late.status_code == 409
