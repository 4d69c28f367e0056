"""Decisions an attacker would try to forge or double, against the real stores.

The other attacks on the approval path have their tests beside the feature
they attack (see each module); these are the ones that had none: a
decision that names its own reviewer or outcome, and one reviewer racing
themself to be both approvers of a two-person rule, on SQLite and on
PostgreSQL, where the racing transactions really run at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result

from aegis.cli.main import cli
from aegis.core.action import Action
from aegis.core.approval_request import (
    NewRequest,
    RequestStatus,
    Role,
    TokenInfo,
    Verdict,
    iso,
)
from aegis.core.risk import RiskLevel
from aegis.errors import ApprovalServiceError
from aegis.server import ApprovalService, create_app, open_service
from aegis.server.service import Principal
from aegis.stores.approvals import hash_token

AGENT = Principal("bot", Role.AGENT)
ALICE = Principal("alice", Role.REVIEWER, ("finance",))


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh SQLite file, then a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return str(tmp_path / "aegis.db")
    return str(request.getfixturevalue("postgres_dsn"))


@pytest.fixture
def service(db: str) -> Iterator[ApprovalService]:
    """The service over ``db``, with the tokens of alice (finance) and bot (agent)."""
    opened = open_service(db, approval_ttl=600)
    now = datetime.now(UTC)
    for name, role, groups in (("alice", Role.REVIEWER, ("finance",)), ("bot", Role.AGENT, ())):
        opened.store.create_token(TokenInfo(name, role, groups, now), hash_token(f"{name}-secret"))
    yield opened
    opened.close()


def _wire(approvers: int = 2) -> NewRequest:
    return NewRequest(
        "s1", Action("wire", "bank", {"amount": 10_000}), RiskLevel.HIGH, "wires", "", approvers
    )


async def test_one_reviewer_racing_themself_counts_once(service: ApprovalService) -> None:
    """Eight approvals by one reviewer at once on a two-person request: one counts, none settles."""
    request, _ = await service.create(AGENT, _wire())

    async def approve() -> str:
        try:
            await service.decide(ALICE, request.id, Verdict.APPROVE)
        except ApprovalServiceError as exc:
            return exc.code
        return "ok"

    answers = await asyncio.gather(*(approve() for _ in range(8)))
    assert sorted(answers) == ["already_decided"] * 7 + ["ok"]
    stored = service.store.get_request(request.id)
    assert stored is not None
    assert stored.status is RequestStatus.PENDING
    assert [d.reviewer for d in stored.decisions] == ["alice"]


async def test_a_metrics_principal_never_acts_as_the_agent_that_asked(
    service: ApprovalService,
) -> None:
    """A non-agent principal under the requester's name reads, waits, collects, cancels nothing.

    Token names are unique, but the service is a library too: what only the
    agent that asked may do needs an agent, not just its name.
    """
    request, _ = await service.create(AGENT, _wire(1))
    impostor = Principal("bot", Role.METRICS)
    assert not service.may_see(impostor, request)
    attempts = (
        service.get(impostor, request.id),
        service.wait(impostor, request.id, 0),
        service.collect(impostor, request.id),
        service.cancel(impostor, request.id),
    )
    for attempt in attempts:
        with pytest.raises(ApprovalServiceError) as refused:
            await attempt
        assert refused.value.status == 403
    stored = service.store.get_request(request.id)
    assert stored is not None
    assert stored.status is RequestStatus.PENDING  # nothing cancelled


@pytest.mark.parametrize(
    "forged",
    [
        {"reviewer": "carol"},
        {"reviewer_issuer": "https://id.example.com", "reviewer_subject": "ceo"},
        {"status": "approved"},
        {"approvals": 2},
        {"decisions": [{"reviewer": "carol", "verdict": "approve"}]},
    ],
)
async def test_a_decision_cannot_name_its_reviewer_or_outcome(
    service: ApprovalService, forged: dict[str, object]
) -> None:
    """Fields beyond verdict, comment and grant are refused (422); nothing is recorded."""
    request, _ = await service.create(AGENT, _wire())
    transport = httpx.ASGITransport(app=create_app(service, close_service=False))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        answer = await client.post(
            f"/api/v1/approvals/{request.id}/decision",
            json={"verdict": "approve", **forged},
            headers={"Authorization": "Bearer alice-secret"},
        )
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["code"] == "invalid"
    stored = service.store.get_request(request.id)
    assert stored is not None
    assert stored.status is RequestStatus.PENDING
    assert stored.decisions == ()


async def test_a_token_revoked_while_its_decision_is_on_the_way_decides_nothing(
    service: ApprovalService, db: str
) -> None:
    """A reviewer token revoked after its headers came, before its body, records nothing.

    The body of a decision may take the client up to the read timeout to
    send; a token revoked meanwhile (`aegis token revoke`, which ends the
    grants it gave) must not approve, nor give a grant that outlives it.
    """
    request, _ = await service.create(AGENT, _wire(approvers=1))
    revoked: list[Result] = []

    async def body() -> AsyncIterator[bytes]:
        # The app asks for the body only once it has read the headers' token.
        revoke = ["token", "revoke", "alice", "--db", db]
        revoked.append(await asyncio.to_thread(CliRunner().invoke, cli, revoke))
        yield json.dumps({"verdict": "approve", "grant_minutes": 60}).encode()

    transport = httpx.ASGITransport(app=create_app(service, close_service=False))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        answer = await client.post(
            f"/api/v1/approvals/{request.id}/decision",
            content=body(),
            headers={"Authorization": "Bearer alice-secret", "Content-Type": "application/json"},
        )
    assert revoked[0].exit_code == 0, revoked[0].output
    assert answer.status_code == 401, answer.text
    stored = service.store.get_request(request.id)
    assert stored is not None
    assert stored.status is RequestStatus.PENDING
    assert stored.decisions == ()
    assert service.store.list_grants(datetime.now(UTC), include_inactive=True) == []


async def test_a_token_revoked_after_its_last_check_still_decides_nothing(
    service: ApprovalService, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A revocation that commits between the service's last look at the token and the
    decision's own commit still stops the decision.

    The API checks the token once the body is in, then reads the request;
    `aegis token revoke` slipping in there finds no approval to withdraw yet.
    The decision's transaction checks the token itself, so it is refused.
    """
    request, _ = await service.create(AGENT, _wire(approvers=1))
    read = service.store.get_request
    revoked: list[Result] = []

    def read_then_revoke(request_id: str) -> object:
        found = read(request_id)
        if not revoked:  # the decision's read of the request, after every token check
            revoke = ["token", "revoke", "alice", "--db", db]
            revoked.append(CliRunner().invoke(cli, revoke))
        return found

    monkeypatch.setattr(service.store, "get_request", read_then_revoke)
    transport = httpx.ASGITransport(app=create_app(service, close_service=False))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        answer = await client.post(
            f"/api/v1/approvals/{request.id}/decision",
            json={"verdict": "approve", "grant_minutes": 60},
            headers={"Authorization": "Bearer alice-secret"},
        )
    monkeypatch.undo()
    assert revoked[0].exit_code == 0, revoked[0].output
    assert answer.status_code == 401, answer.text
    stored = service.store.get_request(request.id)
    assert stored is not None
    assert stored.status is RequestStatus.PENDING
    assert stored.decisions == ()
    assert service.store.list_grants(datetime.now(UTC), include_inactive=True) == []


async def test_a_revoked_token_s_approval_no_longer_counts_toward_two_people(
    service: ApprovalService, db: str
) -> None:
    """alice approves a two-person request, `aegis token revoke alice` (it leaked), bob approves:
    still pending, until a second valid approver; the trail says alice's approval was withdrawn.
    """
    now = datetime.now(UTC)
    for name in ("bob", "carol"):
        service.store.create_token(
            TokenInfo(name, Role.REVIEWER, ("finance",), now), hash_token(f"{name}-secret")
        )
    request, _ = await service.create(AGENT, _wire(approvers=2))
    transport = httpx.ASGITransport(app=create_app(service, close_service=False))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:

        async def approve(name: str) -> str:
            answer = await client.post(
                f"/api/v1/approvals/{request.id}/decision",
                json={"verdict": "approve"},
                headers={"Authorization": f"Bearer {name}-secret"},
            )
            assert answer.status_code == 200, answer.text
            return str(answer.json()["status"])

        assert await approve("alice") == "pending"
        revoke = ["token", "revoke", "alice", "--db", db]
        revoked = await asyncio.to_thread(CliRunner().invoke, cli, revoke)
        assert revoked.exit_code == 0, revoked.output
        assert request.id in revoked.stderr
        assert await approve("bob") == "pending"
        assert await approve("carol") == "approved"
    stored = service.store.get_request(request.id)
    assert stored is not None
    assert [d.reviewer for d in stored.approvals] == ["bob", "carol"]
    await service.flush_audit()
    assert service.audit is not None
    withdrawn = [
        r
        for r in service.audit.get_log("s1")
        if r["context"].get("approval_event") == "approval.withdrawn"
    ]
    assert len(withdrawn) == 1
    assert "approval by alice withdrawn: token alice revoked" in withdrawn[0]["human_decision"]
    assert withdrawn[0]["context"]["reviewer"] == "alice"


async def test_an_agent_token_revoked_while_its_request_is_on_the_way_asks_nothing(
    service: ApprovalService, db: str
) -> None:
    """An agent token revoked after its headers came, before its body, opens no request."""
    revoked: list[Result] = []

    async def body() -> AsyncIterator[bytes]:
        revoke = ["token", "revoke", "bot", "--db", db]
        revoked.append(await asyncio.to_thread(CliRunner().invoke, cli, revoke))
        yield json.dumps(
            {
                "session_id": "s1",
                "action": {"type": "wire", "target": "bank", "params": {"amount": 1}},
                "risk_level": "high",
                "matched_rule": "wires",
            }
        ).encode()

    transport = httpx.ASGITransport(app=create_app(service, close_service=False))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        answer = await client.post(
            "/api/v1/approvals",
            content=body(),
            headers={"Authorization": "Bearer bot-secret", "Content-Type": "application/json"},
        )
    assert revoked[0].exit_code == 0, revoked[0].output
    assert answer.status_code == 401, answer.text
    assert service.store.list_requests(None) == []


async def test_a_grant_never_outlasts_the_reviewer_token_that_gave_it(
    service: ApprovalService,
) -> None:
    """A token expiring in ten minutes grants ten minutes at most, not the hour it asked.

    The grant approves later actions in its giver's name, and the token's
    word on its groups ends when the token does (as a sign-in's ends at
    --oidc-max-age).
    """
    now = datetime.now(UTC)
    expires = now + timedelta(minutes=10, seconds=30)
    service.store.create_token(
        TokenInfo("brief", Role.REVIEWER, ("finance",), now, expires), hash_token("brief-secret")
    )
    request, _ = await service.create(AGENT, _wire(approvers=1))
    transport = httpx.ASGITransport(app=create_app(service, close_service=False))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        answer = await client.post(
            f"/api/v1/approvals/{request.id}/decision",
            json={"verdict": "approve", "grant_minutes": 60},
            headers={"Authorization": "Bearer brief-secret"},
        )
    assert answer.status_code == 200, answer.text
    (grant,) = service.store.list_grants(datetime.now(UTC))
    assert grant.expires_at <= expires
    assert answer.json()["decisions"][0]["grant_minutes"] == 10


def _by_hand(db: str, sql: str) -> None:
    """Run one statement at ``db`` behind the store's back."""
    if db.startswith("postgresql://"):
        import psycopg  # the postgres extra, installed for these tests

        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute(sql)
    else:
        with contextlib.closing(sqlite3.connect(db)) as conn, conn:
            conn.execute(sql)


async def test_a_group_s_grant_behind_a_thousand_newer_ones_is_listed_to_it(
    service: ApprovalService, db: str
) -> None:
    """GET /api/v1/grants shows alice (finance) finance's grant, however many grants of
    another group were given after it: the list is filtered by group before its limit."""
    request, _ = await service.create(AGENT, _wire(approvers=1))
    await service.decide(ALICE, request.id, Verdict.APPROVE, grant_minutes=60)
    (theirs,) = service.store.list_grants(datetime.now(UTC))
    columns = (
        "session_id, requester, action_type, action_target, matched_rule, "
        "request_id, expires_at, revoked_at, approvers, db_expires_at"
    )
    _by_hand(
        db,
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000) "
        f"INSERT INTO aegis_grants (id, created_at, reviewer_groups, granted_by, {columns}) "
        "SELECT 'grt_ops' || CAST(n.i AS TEXT), "
        f"'{iso(datetime.now(UTC) + timedelta(seconds=1))}', '[\"ops\"]', '[\"carol\"]', "
        f"{columns} "
        f"FROM aegis_grants, n WHERE aegis_grants.id = '{theirs.id}'",
    )
    assert len(service.store.list_grants(datetime.now(UTC))) == 1000  # ops's, newest first
    transport = httpx.ASGITransport(app=create_app(service, close_service=False))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        answer = await client.get(
            "/api/v1/grants", headers={"Authorization": "Bearer alice-secret"}
        )
    assert answer.status_code == 200, answer.text
    assert [g["id"] for g in answer.json()["grants"]] == [theirs.id]
