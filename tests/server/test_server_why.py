"""Why a person is asked: from the runtime's policy to the stored request and back out."""

from __future__ import annotations

import asyncio
import io
import re
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from aegis import Action, Policy, Runtime
from aegis.core.action import action_digest
from aegis.core.approval_request import ApprovalRequest, Role, TokenInfo, request_digest
from aegis.core.explain import Why
from aegis.core.risk import RiskLevel
from aegis.runtime import asking
from aegis.runtime.approval import CLIApprovalHandler
from aegis.runtime.approval_remote import RemoteApprovalHandler
from aegis.runtime.audit import AuditLogger
from aegis.server import ApprovalService, create_app
from aegis.server.inbox import Inbox
from aegis.stores.approvals import hash_token, new_request_id, open_approval_store
from aegis.stores.sqlite.approvals import SqliteApprovalStore
from aegis.testing import InMemoryAuditLog

POLICY = {
    "defaults": {"approval": "block"},
    "rules": [
        {"name": "small", "match": {"type": "read"}, "approval": "auto", "risk_level": "low"},
        {
            "name": "big-refunds",
            "description": "Refunds above 500 need a person",
            "match": {"type": "refund"},
            "conditions": {"param_gt": {"amount": 500}},
            "approval": "approve",
            "risk_level": "high",
        },
    ],
}


class Served:
    """The app in-process, a reviewer client and the transport an agent uses."""

    def __init__(self, transport: httpx.ASGITransport, reviewer: httpx.AsyncClient) -> None:
        self.transport = transport
        self.reviewer = reviewer

    async def pending(self) -> list[dict[str, Any]]:
        """The pending requests as the API lists them."""
        answer = await self.reviewer.get("/api/v1/approvals")
        assert answer.status_code == 200, answer.text
        return list(answer.json()["approvals"])

    async def arrived(self) -> list[dict[str, Any]]:
        """The pending requests once there are any (at most 200 looks, 20 ms apart)."""
        for _ in range(200):
            pending = await self.pending()
            if pending:
                break
            await asyncio.sleep(0.02)
        return pending

    async def deny(self, request_id: str) -> None:
        """Deny ``request_id`` as the reviewer."""
        denied = await self.reviewer.post(
            f"/api/v1/approvals/{request_id}/decision", json={"verdict": "deny"}
        )
        assert denied.status_code == 200, denied.text


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    """The approval service and inbox over a fresh SQLite file, an agent and a reviewer token."""
    db = tmp_path / "aegis.db"
    audit = AuditLogger(db)
    audit.head()
    store = SqliteApprovalStore(db)
    now = datetime.now(UTC)
    store.create_token(TokenInfo("bot", Role.AGENT, (), now), hash_token("bot-secret"))
    store.create_token(TokenInfo("alice", Role.REVIEWER, (), now), hash_token("alice-secret"))
    service = ApprovalService(store, audit, approval_ttl=60, poll_interval=0.05)
    inbox = Inbox(service, session_key="k" * 32, poll_interval=0.1)
    transport = httpx.ASGITransport(app=create_app(service, routes=inbox.routes()))
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://127.0.0.1",
        headers={"Authorization": "Bearer alice-secret"},
    ) as reviewer:
        yield Served(transport, reviewer)
    inbox.close()
    service.close()


async def test_the_runtime_sends_why_and_the_api_shows_it(served: Served) -> None:
    """A remote request carries the rule's description and the condition's value; stored."""
    handler = RemoteApprovalHandler(
        "http://127.0.0.1", token="bot-secret", transport=served.transport, announce=None
    )
    runtime = Runtime(
        executor=lambda action: "done",
        policy=Policy.from_dict(POLICY),
        approval_handler=handler,
        audit_logger=InMemoryAuditLog(),
    )
    task = asyncio.create_task(runtime.run_one(Action("refund", "billing", {"amount": 1299})))
    try:
        pending = await served.arrived()
        assert len(pending) == 1
        why = pending[0]["why"]
        assert why == {
            "rule": "big-refunds",
            "description": "Refunds above 500 need a person",
            "conditions": ["amount 1,299 > 500"],
            "reason": "",
        }
        one = await served.reviewer.get(f"/api/v1/approvals/{pending[0]['id']}")
        assert one.json()["why"] == why
        decided = await served.reviewer.post(
            f"/api/v1/approvals/{pending[0]['id']}/decision", json={"verdict": "approve"}
        )
        assert decided.status_code == 200, decided.text
        result = await asyncio.wait_for(task, 30)
        assert result.status.value == "success"
    finally:
        task.cancel()
        await runtime.close()
        await handler.aclose()


@pytest.mark.parametrize(
    ("why", "field"),
    [
        ("because", "why must be an object"),
        ({"rule": "r", "conditions": "amount > 5"}, "why.conditions"),
        ({"rule": "r", "conditions": [1]}, "why.conditions"),
        ({"rule": "r", "description": "x" * 10_001}, "why.description"),
        ({"rule": "r", "mood": "sure"}, "unknown fields"),
    ],
)
async def test_a_malformed_why_is_refused_at_the_door(
    served: Served, why: object, field: str
) -> None:
    """A request whose why is not the runtime's shape is a 422 naming the field."""
    async with httpx.AsyncClient(
        transport=served.transport,
        base_url="http://127.0.0.1",
        headers={"Authorization": "Bearer bot-secret"},
    ) as agent:
        answer = await agent.post(
            "/api/v1/approvals",
            json={"session_id": "s", "action": {"type": "t", "target": "x"}, "why": why},
        )
    assert answer.status_code == 422, answer.text
    assert field in answer.json()["error"]["message"]
    assert await served.pending() == []


async def test_a_request_without_why_reads_null(served: Served) -> None:
    """An agent of an older version sends no why: the request shows ``why: null``."""
    async with httpx.AsyncClient(
        transport=served.transport,
        base_url="http://127.0.0.1",
        headers={"Authorization": "Bearer bot-secret"},
    ) as agent:
        answer = await agent.post(
            "/api/v1/approvals", json={"session_id": "s", "action": {"type": "t", "target": "x"}}
        )
    assert answer.status_code == 201, answer.text
    assert answer.json()["why"] is None


async def test_why_is_computed_only_when_a_person_is_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Auto actions never explain themselves; the one approval does, once."""
    calls: list[str] = []
    real = asking.safe_why

    def counting(policy: object, decision: Any) -> Why:
        calls.append(decision.matched_rule)
        return real(policy, decision)

    monkeypatch.setattr(asking, "safe_why", counting)
    seen: list[Any] = []

    def approve(decision: Any) -> bool:
        seen.append(decision)
        return True

    async with Runtime(
        executor=lambda action: "done",
        policy=Policy.from_dict(POLICY),
        approval_handler=approve,
        audit_logger=InMemoryAuditLog(),
    ) as runtime:
        for _ in range(20):
            await runtime.run_one(Action("read", "crm", {}))
        assert calls == []
        await runtime.run_one(Action("refund", "billing", {"amount": 501}))
    assert calls == ["big-refunds"]
    assert seen[0].why.conditions == ("amount 501 > 500",)


async def test_the_terminal_handler_shows_why() -> None:
    """CLIApprovalHandler prints the rule's description and the condition with its value.

    The agent's description is labelled as the agent's words, as `aegis
    approvals show` and the inbox mark it, never as a plain "Description".
    """
    out = io.StringIO()
    handler = CLIApprovalHandler(input_stream=io.StringIO("n\n"), output_stream=out)
    async with Runtime(
        executor=lambda action: "done",
        policy=Policy.from_dict(POLICY),
        approval_handler=handler,
        audit_logger=InMemoryAuditLog(),
    ) as runtime:
        action = Action("refund", "billing", {"amount": 1299}, "charged twice, refund one")
        result = await runtime.run_one(action)
    assert result.status.value == "denied"
    text = out.getvalue()
    assert "Why:          Refunds above 500 need a person" in text
    assert "Matched:      amount 1,299 > 500" in text
    assert "Agent wrote:  \u201ccharged twice, refund one\u201d" in text
    assert "Description" not in text


@pytest.fixture(params=["sqlite", "postgres"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh SQLite file or PostgreSQL schema for an approval store."""
    if request.param == "sqlite":
        return str(tmp_path / "aegis.db")
    return str(request.getfixturevalue("postgres_dsn"))


def _asked(why: Why | None) -> Any:
    action = Action("refund", "billing", {"amount": 1299})
    now = datetime.now(UTC)
    return ApprovalRequest(
        id=new_request_id(),
        session_id="s1",
        requester="bot",
        action=action,
        risk_level=RiskLevel.HIGH,
        matched_rule="big-refunds",
        reason="",
        approvers=1,
        reviewers=(),
        created_at=now,
        expires_at=now + timedelta(hours=1),
        digest=request_digest(action, "bot"),
        action_digest=action_digest(action),
        why=why,
    )


def test_both_stores_keep_why(location: str) -> None:
    """SQLite and PostgreSQL give back the why a request was stored with, or None."""

    store = open_approval_store(location)
    try:
        why = Why("big-refunds", "Refunds above 500", ("amount 1,299 > 500",), "2 of 2 in 1h")
        created, _ = store.create_request(_asked(why), datetime.now(UTC))
        assert created.why == why
        bare, _ = store.create_request(
            _asked(None).__class__(**{**_fields(_asked(None)), "session_id": "s2"}),
            datetime.now(UTC),
        )
        assert bare.why is None
        listed = {r.id: r.why for r in store.list_requests()}
        assert listed == {created.id: why, bare.id: None}
    finally:
        store.close()


def _fields(request: Any) -> dict[str, Any]:
    return {name: getattr(request, name) for name in request.__dataclass_fields__}


def test_a_file_of_the_previous_schema_gains_why(tmp_path: Path) -> None:
    """A SQLite file written before requests had a why opens; its requests read why None."""

    from aegis.stores.approvals import open_approval_store

    path = tmp_path / "aegis.db"
    store = open_approval_store(str(path))
    old, _ = store.create_request(_asked(None), datetime.now(UTC))
    store.close()
    with sqlite3.connect(path) as conn:  # back to version 4, before why
        conn.execute("ALTER TABLE aegis_approval_requests DROP COLUMN why_json")
        conn.execute("ALTER TABLE aegis_grants DROP COLUMN db_expires_at")  # version 7's
        conn.execute("ALTER TABLE aegis_approval_requests DROP COLUMN db_expires_at")  # 8's
        conn.execute("UPDATE aegis_schema_versions SET version = 4 WHERE component = 'approvals'")
    conn.close()
    reopened = open_approval_store(str(path))
    try:
        found = reopened.get_request(old.id)
        assert found is not None
        assert found.why is None
        why = Why("r", conditions=("amount 1,299 > 500",))
        fresh, _ = reopened.create_request(
            _asked(why).__class__(**{**_fields(_asked(why)), "session_id": "s3"}),
            datetime.now(UTC),
        )
        assert reopened.get_request(fresh.id) == fresh
        assert fresh.why == why
    finally:
        reopened.close()


BUDGET = {
    "rules": [
        {
            "name": "refund_budget",
            "description": "Refunds add up to 2,000 a day per customer",
            "match": {"type": "refund"},
            "budget": {"sum": "amount", "max": 2000, "per": "1d", "key": ["params.customer_id"]},
            "on_exceed": {"approval": "approve", "risk_level": "critical"},
            "approval": "auto",
        }
    ]
}


async def test_a_limits_count_and_window_reach_every_row(served: Served, tmp_path: Path) -> None:
    """Past a budget, the rows of the inbox and of `aegis approvals list` say the count.

    A limit's rule has a description but no conditions: its count and window
    (the decision's reason) are what tell this request from the last one,
    so the one-line why of a row carries them, not just the description.
    """
    from aegis.cli._approvals import why_line

    handler = RemoteApprovalHandler(
        "http://127.0.0.1", token="bot-secret", transport=served.transport, announce=None
    )
    runtime = Runtime(
        executor=lambda action: "done",
        policy=Policy.from_dict(BUDGET),
        approval_handler=handler,
        audit_logger=AuditLogger(tmp_path / "agent.db"),
    )
    first = await runtime.run_one(Action("refund", "billing", {"amount": 1500, "customer_id": 7}))
    assert first.status.value == "success"
    task = asyncio.create_task(
        runtime.run_one(Action("refund", "billing", {"amount": 900, "customer_id": 7}))
    )
    try:
        pending = await served.arrived()
        assert len(pending) == 1
        count = "1500 of 2000 amount already in the last 1d"
        assert count in pending[0]["why"]["reason"]
        assert count in why_line(pending[0])
        web = httpx.AsyncClient(transport=served.transport, base_url="http://127.0.0.1")
        async with web:
            form = (await web.get("/signin")).text
            nonce = re.search(r'name="csrf" value="([^"]+)"', form)
            assert nonce is not None
            done = await web.post("/signin", data={"token": "alice-secret", "csrf": nonce[1]})
            assert done.status_code == 303, done.text
            page = (await web.get("/")).text
        row = page.split(pending[0]["id"], 1)[1].split("</tr>", 1)[0]
        assert count in row
        await served.deny(pending[0]["id"])
        assert (await asyncio.wait_for(task, 30)).status.value == "denied"
    finally:
        task.cancel()
        await runtime.close()
        await handler.aclose()


FLOW = {
    "rules": [
        {
            "name": "exfiltration",
            "description": "After reading the CRM, sending outside needs a person",
            "match": {"type": "send*", "target": "external*"},
            "conditions": {"after": {"type": "read*", "target": "crm", "within": "1h"}},
            "approval": "approve",
        },
        {"name": "rest", "match": {"type": "*"}, "approval": "auto"},
    ]
}


async def test_a_flow_rule_names_the_earlier_action_it_found(
    served: Served, tmp_path: Path
) -> None:
    """The request says which earlier action of the session made the flow rule hold, and when."""
    handler = RemoteApprovalHandler(
        "http://127.0.0.1", token="bot-secret", transport=served.transport, announce=None
    )
    runtime = Runtime(
        executor=lambda action: "done",
        policy=Policy.from_dict(FLOW),
        approval_handler=handler,
        audit_logger=AuditLogger(tmp_path / "agent.db"),
    )
    for action in (Action("read_contacts", "crm"), Action("read_orders", "erp")):
        assert (await runtime.run_one(action)).status.value == "success"
    task = asyncio.create_task(runtime.run_one(Action("send_mail", "external_smtp")))
    try:
        pending = await served.arrived()
        assert len(pending) == 1
        conditions = pending[0]["why"]["conditions"]
        assert conditions[0].startswith("after {type: 'read*', target: 'crm'")
        assert re.fullmatch(
            r"earlier in this session: read_contacts on crm at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC",
            conditions[1],
        ), conditions
        assert len(conditions) == 2  # the read of erp is not what the rule looked for
        await served.deny(pending[0]["id"])
        assert (await asyncio.wait_for(task, 30)).status.value == "denied"
    finally:
        task.cancel()
        await runtime.close()
        await handler.aclose()
    # the terminal handler shows the same line
    out = io.StringIO()
    local = CLIApprovalHandler(input_stream=io.StringIO("n\n"), output_stream=out)
    async with Runtime(
        executor=lambda action: "done",
        policy=Policy.from_dict(FLOW),
        approval_handler=local,
        audit_logger=AuditLogger(tmp_path / "local.db"),
    ) as again:
        await again.run_one(Action("read_contacts", "crm"))
        assert (await again.run_one(Action("send_mail", "external_smtp"))).status.value == "denied"
    assert "earlier in this session: read_contacts on crm at " in out.getvalue()
