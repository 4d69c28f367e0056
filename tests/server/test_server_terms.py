"""The service may raise the terms a request carries, never lower them (a real `aegis serve`)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import datetime

import httpx
import pytest
import yaml
from service_support import Reviewer, Service, add_tokens

from aegis import Action, AuditLogger, Policy, Runtime
from aegis.runtime.approval_remote import RemoteApprovalHandler

#: the agent's own policy: after reading the CRM, sending outside needs two of security
AGENT_POLICY = {
    "defaults": {"approval": "auto"},
    "rules": [
        {
            "name": "exfiltration",
            "match": {"type": "send*", "target": "external*"},
            "conditions": {"after": {"type": "read*", "target": "crm", "within": "session"}},
            "approval": "approve",
            "approvers": 2,
            "reviewers": ["security"],
            "risk_level": "critical",
        },
        {"name": "sends", "match": {"type": "send*"}, "approval": "auto"},
    ],
}

#: the service's policy sees one action without history: one approver of any group
SERVICE_POLICY = {
    "defaults": {"approval": "auto"},
    "rules": [
        {"name": "outside", "match": {"type": "send*"}, "approval": "approve", "approvers": 1},
        {
            "name": "wires",
            "match": {"type": "wire"},
            "approval": "approve",
            "approvers": 2,
            "reviewers": ["finance"],
            "approval_ttl": 60,
        },
        {"name": "payroll", "match": {"type": "payroll"}, "reviewers": ["finance"]},
    ],
}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """`aegis serve --policy` with a one-approver rule for every send."""
    root = tmp_path_factory.mktemp("terms")
    db = str(root / "aegis.db")
    add_tokens(db)
    policy = root / "service.yaml"
    policy.write_text(yaml.safe_dump(SERVICE_POLICY))
    service = Service(db, root, args=("--policy", str(policy))).start()
    yield service
    service.stop()


async def test_one_outsider_cannot_approve_what_the_runtime_made_strict(served: Service) -> None:
    """A flow rule's 2-of-security survives a service policy of 1-of-any: one yes runs nothing."""
    session = uuid.uuid4().hex
    ran: list[Action] = []
    handler = RemoteApprovalHandler(served.url, token="bot-secret", timeout=20, poll=2)
    carol = Reviewer(served.url, "carol")  # ops, not security
    sam = Reviewer(served.url, "sam")  # security
    runtime = Runtime(
        executor=lambda action: ran.append(action) or "sent",
        policy=Policy.from_dict(AGENT_POLICY),
        approval_handler=handler,
        audit_logger=AuditLogger(served.db),
        session_id=session,
    )
    try:
        await runtime.run_one(Action("read", "crm", {"id": 7}))
        task = asyncio.create_task(
            runtime.run_one(Action("send_email", "external-smtp", {"to": "x@evil.test"}))
        )
        pending = await sam.pending(session)  # security sees it; ops does not
        assert pending["approvers"] == 2
        assert pending["reviewers"] == ["security"]
        assert pending["risk_level"] == "critical"
        refused = await carol.decide(pending["id"], "approve")
        assert refused.status_code == 403
        assert (await sam.get(pending["id"]))["status"] == "pending"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert [a.type for a in ran] == ["read"]
    finally:
        await runtime.close()
        await handler.aclose()
        await carol.aclose()
        await sam.aclose()


@pytest.mark.parametrize(
    ("asked", "kept"),
    [
        # the agent asks less than the service: the service's terms
        ({"approvers": 1}, {"approvers": 2, "reviewers": ["finance"]}),
        # the agent asks more: the agent's terms stay
        ({"approvers": 3, "reviewers": ["finance"]}, {"approvers": 3, "reviewers": ["finance"]}),
        # both name groups: only the groups both allow
        (
            {"approvers": 2, "reviewers": ["finance", "ops"]},
            {"approvers": 2, "reviewers": ["finance"]},
        ),
    ],
)
async def test_terms_are_the_stricter_of_both(
    served: Service, asked: dict[str, object], kept: dict[str, object]
) -> None:
    """Approvers, groups and TTL of a stored request are the stricter of agent and service."""
    body = {
        "session_id": uuid.uuid4().hex,
        "action": {"type": "wire", "target": "bank", "params": {"amount": 5}},
        "approval_ttl": 3600,
        **asked,
    }
    async with httpx.AsyncClient(base_url=served.url, timeout=10) as client:
        made = await client.post(
            "/api/v1/approvals", json=body, headers={"Authorization": "Bearer bot-secret"}
        )
    assert made.status_code == 201, made.text
    stored = made.json()
    assert {k: stored[k] for k in kept} == kept
    lasts = datetime.fromisoformat(stored["expires_at"]) - datetime.fromisoformat(
        stored["created_at"]
    )
    assert lasts.total_seconds() == pytest.approx(60)  # the service's shorter TTL


async def test_groups_no_reviewer_can_satisfy_are_refused(served: Service) -> None:
    """Groups disjoint from the service's are a 4xx naming both, not an undecidable request."""
    body = {
        "session_id": uuid.uuid4().hex,
        "action": {"type": "payroll", "target": "hr"},
        "reviewers": ["security"],
        "matched_rule": "mine",
    }
    async with httpx.AsyncClient(base_url=served.url, timeout=10) as client:
        made = await client.post(
            "/api/v1/approvals", json=body, headers={"Authorization": "Bearer bot-secret"}
        )
    assert made.status_code == 403
    assert made.json()["error"]["code"] == "terms_conflict"
    assert "security" in made.json()["error"]["message"]
    assert "finance" in made.json()["error"]["message"]
