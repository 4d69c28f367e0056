"""The JSON API in-process (httpx's ASGI transport): status codes, roles and bad input."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from aegis.core.approval_request import Role, TokenInfo, Verdict, iso, parse_new_request
from aegis.core.filters import SHORT_NAMES
from aegis.core.result import ResultStatus
from aegis.core.risk import RiskLevel
from aegis.errors import ApprovalServiceError, AuditError, StoreError
from aegis.runtime.audit import AuditLogger
from aegis.server import ApprovalService, create_app
from aegis.server.api import MAX_BODY
from aegis.stores.approvals import hash_token
from aegis.stores.sqlite.approvals import SqliteApprovalStore
from aegis.testing import InMemoryAuditLog

TOKENS = {
    "bot": (Role.AGENT, ()),
    "other-bot": (Role.AGENT, ()),
    "alice": (Role.REVIEWER, ("finance",)),
    "bob": (Role.REVIEWER, ()),
    "carol": (Role.REVIEWER, ("ops",)),
    "dave": (Role.AGENT, ()),
    "ida": (Role.REVIEWER, ("audit",)),  # an auditor
}

#: the start of a body with a valid session and action, left open for more fields
XY = b'{"session_id": "s1", "action": {"type": "x", "target": "y"'

ACTION = {"type": "refund", "target": "billing", "params": {"amount": 900}, "description": "x"}


class Api:
    """A client of the in-process app that picks a token per call."""

    def __init__(self, client: httpx.AsyncClient, service: ApprovalService, db: Path) -> None:
        self.client = client
        self.service = service
        self.db = db

    async def call(
        self, method: str, path: str, who: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        """Send one request as ``who`` (no token when ``None``)."""
        headers = kwargs.pop("headers", {})
        if who is not None:
            headers["Authorization"] = f"Bearer {who}-secret"
        return await self.client.request(method, path, headers=headers, **kwargs)

    async def ask(self, who: str = "bot", **fields: Any) -> dict[str, Any]:
        """Create a request as ``who`` and return its JSON."""
        body = {"session_id": "s1", "action": ACTION, "risk_level": "high", **fields}
        response = await self.call("POST", "/api/v1/approvals", who, json=body)
        assert response.status_code in (200, 201), response.text
        return dict(response.json())

    async def decide(self, request_id: str, who: str, **body: Any) -> httpx.Response:
        """Post a decision as ``who``."""
        body.setdefault("verdict", "approve")
        return await self.call("POST", f"/api/v1/approvals/{request_id}/decision", who, json=body)


def add_tokens(store: SqliteApprovalStore, now: datetime) -> None:
    """The tokens of :data:`TOKENS`, each with the secret ``<name>-secret``."""
    for name, (role, groups) in TOKENS.items():
        store.create_token(TokenInfo(name, role, groups, now), hash_token(f"{name}-secret"))
    store.create_token(
        TokenInfo("old", Role.REVIEWER, (), now - timedelta(days=2), now - timedelta(days=1)),
        hash_token("old-secret"),
    )
    store.create_token(TokenInfo("gone", Role.REVIEWER, (), now), hash_token("gone-secret"))
    store.revoke_token("gone", now)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    """The app over a fresh SQLite store with the test tokens."""
    db = tmp_path / "aegis.db"
    audit = AuditLogger(db, busy_timeout=0.3)
    audit.head()
    store = SqliteApprovalStore(db, busy_timeout=0.3)
    add_tokens(store, datetime.now(UTC))
    service = ApprovalService(
        store, audit, approval_ttl=60, poll_interval=0.05, auditor_groups=("audit",)
    )
    app = create_app(service)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield Api(client, service, db)
    service.close()


def error_code(response: httpx.Response) -> str:
    """The ``code`` of a JSON error answer."""
    body = response.json()
    return str(body["error"]["code"])


async def test_healthz_needs_no_token(api: Api) -> None:
    """/healthz answers 200 without a token while the store answers."""
    response = await api.call("GET", "/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_openapi_document(api: Api) -> None:
    """The OpenAPI document names every endpoint of the API."""
    document = (await api.call("GET", "/api/v1/openapi.json")).json()
    assert document["openapi"].startswith("3.")
    for path in (
        "/api/v1/approvals",
        "/api/v1/approvals/{id}/wait",
        "/api/v1/approvals/{id}/decision",
        "/api/v1/audit/verify",
    ):
        assert path in document["paths"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Basic Ym90OnNlY3JldA=="},
        {"Authorization": "Bearer nonsense"},
        {"Authorization": "Bearer gone-secret"},
        {"Authorization": "Bearer old-secret"},
    ],
    ids=["none", "basic", "unknown", "revoked", "expired"],
)
async def test_bad_tokens_are_401(api: Api, headers: dict[str, str]) -> None:
    """A missing, malformed, unknown, revoked or expired token is a JSON 401."""
    response = await api.call("GET", "/api/v1/approvals", headers=headers)
    assert response.status_code == 401
    assert error_code(response) == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"


async def test_a_token_of_a_role_this_version_does_not_know_is_refused(api: Api) -> None:
    """A token whose stored role Aegis does not know (a newer version's) is a 401 naming it."""
    with closing(sqlite3.connect(api.db)) as conn, conn:
        conn.execute("UPDATE aegis_tokens SET role = 'auditor' WHERE name = 'alice'")
    response = await api.call("GET", "/api/v1/approvals", "alice")
    assert response.status_code == 401
    assert error_code(response) == "unauthorized"
    assert "'auditor'" in response.json()["error"]["message"]
    assert (await api.call("GET", "/api/v1/approvals", "bob")).status_code == 200


async def test_create_then_reattach(api: Api) -> None:
    """The first post is 201 pending with a digest; the same again while pending is 200, same id."""
    body = {"session_id": "s1", "action": ACTION, "risk_level": "high", "matched_rule": "r"}
    first = await api.call("POST", "/api/v1/approvals", "bot", json=body)
    assert first.status_code == 201
    created = first.json()
    assert created["status"] == "pending"
    assert len(created["digest"]) == 64
    assert created["requester"] == "bot"
    assert created["expires_at"] > created["created_at"]
    again = await api.call("POST", "/api/v1/approvals", "bot", json=body)
    assert again.status_code == 200
    assert again.json()["id"] == created["id"]
    other_agent = await api.call("POST", "/api/v1/approvals", "other-bot", json=body)
    assert other_agent.status_code == 201
    assert other_agent.json()["digest"] != created["digest"]


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b"{not json", "invalid"),
        (b"[1, 2]", "invalid"),
        (b'{"session_id": "s1"}', "invalid"),
        (b'{"session_id": "s1", "action": {"type": "x", "target": "y"}, "extra": 1}', "invalid"),
        (b'{"session_id": "s1", "action": {"type": "", "target": "y"}}', "invalid"),
        (
            b'{"session_id": "s1", "action": {"type": "x", "target": "y"}, "risk_level": "odd"}',
            "invalid",
        ),
        (b'{"session_id": "s1", "action": {"type": "x", "target": "y", "params": [1]}}', "invalid"),
        (
            b'{"session_id": "s1", "action": {"type": "x", "target": "y"}, "approvers": 0}',
            "invalid",
        ),
        (
            b'{"session_id": "s1", "action": {"type": "x", "target": "y", "params": {"a": NaN}}}',
            "invalid",
        ),
    ],
    ids=[
        "malformed",
        "not-object",
        "no-action",
        "unknown-field",
        "empty-type",
        "bad-risk",
        "params-list",
        "zero-approvers",
        "nan",
    ],
)
async def test_malformed_requests_are_422(api: Api, content: bytes, code: str) -> None:
    """Malformed JSON and invalid fields are a JSON 422 naming the problem."""
    response = await api.call("POST", "/api/v1/approvals", "bot", content=content)
    assert response.status_code == 422, response.text
    assert error_code(response) == code
    assert response.json()["error"]["message"]


async def test_oversized_body_is_413(api: Api) -> None:
    """A body over the limit is refused before it is parsed."""
    big = b'{"session_id": "' + b"x" * MAX_BODY + b'"}'
    response = await api.call("POST", "/api/v1/approvals", "bot", content=big)
    assert response.status_code == 413
    assert error_code(response) == "too_large"


async def test_roles(api: Api) -> None:
    """Reviewers cannot ask, agents cannot list or decide: 403 with the reason."""
    body = {"session_id": "s1", "action": ACTION}
    assert (await api.call("POST", "/api/v1/approvals", "alice", json=body)).status_code == 403
    listed = await api.call("GET", "/api/v1/approvals", "bot")
    assert listed.status_code == 403
    assert error_code(listed) == "wrong_role"
    assert "has an agent token" in listed.json()["error"]["message"]
    request = await api.ask()
    decided = await api.decide(request["id"], "bot")
    assert decided.status_code == 403
    assert (await api.call("GET", "/api/v1/audit", "bot")).status_code == 403


async def test_who_may_see_a_request(api: Api) -> None:
    """A request is visible to reviewers and its own agent only; an unknown id is 404."""
    request = await api.ask()
    path = f"/api/v1/approvals/{request['id']}"
    assert (await api.call("GET", path, "bot")).status_code == 200
    assert (await api.call("GET", path, "bob")).status_code == 200
    assert (await api.call("GET", path, "other-bot")).status_code == 403
    missing = await api.call("GET", "/api/v1/approvals/apr_nope", "bob")
    assert missing.status_code == 404
    assert error_code(missing) == "not_found"


async def test_list_by_status(api: Api) -> None:
    """The list shows pending requests by default, and each status on request."""
    first = await api.ask()
    second = await api.ask(session_id="s2")
    await api.decide(first["id"], "bob", verdict="deny")
    pending = (await api.call("GET", "/api/v1/approvals", "bob")).json()["approvals"]
    assert [r["id"] for r in pending] == [second["id"]]
    denied = await api.call("GET", "/api/v1/approvals", "bob", params={"status": "denied"})
    assert [r["id"] for r in denied.json()["approvals"]] == [first["id"]]
    everything = await api.call("GET", "/api/v1/approvals", "bob", params={"status": "all"})
    assert len(everything.json()["approvals"]) == 2
    by_session = await api.call(
        "GET", "/api/v1/approvals", "bob", params={"status": "all", "session": "s2"}
    )
    assert [r["id"] for r in by_session.json()["approvals"]] == [second["id"]]
    by_agent = await api.call(
        "GET", "/api/v1/approvals", "bob", params={"status": "all", "requester": "nobody"}
    )
    assert by_agent.json()["approvals"] == []
    odd = await api.call("GET", "/api/v1/approvals", "bob", params={"status": "maybe"})
    assert odd.status_code == 422


async def test_decision_answers(api: Api) -> None:
    """200 with the updated request, then 409 for a second decision; 422 for a bad verdict."""
    request = await api.ask()
    bad = await api.decide(request["id"], "bob", verdict="APPROVE!")
    assert bad.status_code == 422
    grant_on_deny = await api.decide(request["id"], "bob", verdict="deny", grant_minutes=5)
    assert grant_on_deny.status_code == 422
    ok = await api.decide(request["id"], "bob", comment="fine")
    assert ok.status_code == 200
    body = ok.json()
    assert body["status"] == "approved"
    assert body["decisions"][0]["reviewer"] == "bob"
    assert body["decisions"][0]["comment"] == "fine"
    late = await api.decide(request["id"], "alice")
    assert late.status_code == 409
    assert error_code(late) == "not_pending"
    missing = await api.decide("apr_nope", "bob")
    assert missing.status_code == 404


async def test_same_reviewer_twice_is_409(api: Api) -> None:
    """On a two-person request, the same reviewer's second approval is a 409."""
    request = await api.ask(approvers=2)
    assert (await api.decide(request["id"], "bob")).json()["status"] == "pending"
    again = await api.decide(request["id"], "bob")
    assert again.status_code == 409
    assert error_code(again) == "already_decided"
    assert (await api.decide(request["id"], "alice")).json()["status"] == "approved"


async def test_reviewer_groups(api: Api) -> None:
    """A rule's reviewer groups admit only reviewers in them (403 for the others)."""
    request = await api.ask(reviewers=["finance"])
    outside = await api.decide(request["id"], "carol")
    assert outside.status_code == 403
    assert error_code(outside) == "wrong_group"
    assert (await api.decide(request["id"], "alice")).status_code == 200


async def test_no_self_approval_whatever_the_role(api: Api) -> None:
    """A name that asked may never decide its request, even with a reviewer token later.

    Names are retired on revocation now; a store from before may still hold such a reviewer.
    """
    request = await api.ask("dave")
    api.service.store.revoke_token("dave", datetime.now(UTC))
    with pytest.raises(ApprovalServiceError) as retired:
        api.service.store.create_token(
            TokenInfo("dave", Role.REVIEWER, (), datetime.now(UTC)), hash_token("dave-2")
        )
    assert retired.value.code == "token_name_retired"
    with sqlite3.connect(api.db) as conn:  # as a store from before retired names allowed
        conn.execute(
            "UPDATE aegis_tokens SET token_hash = ?, role = 'reviewer', revoked_at = NULL "
            "WHERE name = 'dave'",
            (hash_token("dave-secret"),),
        )
    conn.close()
    refused = await api.decide(request["id"], "dave")
    assert refused.status_code == 403
    assert error_code(refused) == "self_approval"


async def test_expired_request_cannot_be_approved(api: Api) -> None:
    """A request past its approval_ttl is expired: deciding it is a 409, its status says so."""
    request = await api.ask(approval_ttl=0.2)
    await asyncio.sleep(0.3)
    late = await api.decide(request["id"], "bob")
    assert late.status_code == 409
    assert error_code(late) == "expired"
    now = await api.call("GET", f"/api/v1/approvals/{request['id']}", "bob")
    assert now.json()["status"] == "expired"


async def test_wait_long_polls(api: Api) -> None:
    """Wait answers as soon as a decision lands, or with the pending request after S seconds."""
    request = await api.ask()
    path = f"/api/v1/approvals/{request['id']}/wait"
    quiet = await api.call("GET", path, "bot", params={"timeout": "0.1"})
    assert quiet.json()["status"] == "pending"
    waiting = asyncio.create_task(api.call("GET", path, "bot", params={"timeout": "10"}))
    await asyncio.sleep(0.1)
    await api.decide(request["id"], "bob")
    answered = await asyncio.wait_for(waiting, 2)
    assert answered.json()["status"] == "approved"
    assert (await api.call("GET", path, "bob", params={"timeout": "0"})).status_code == 403
    too_long = await api.call("GET", path, "bot", params={"timeout": "61"})
    assert too_long.status_code == 422


async def test_collect_once_and_cancel(api: Api) -> None:
    """Collect works once (then 409); a cancelled request cannot be approved (409)."""
    request = await api.ask()
    await api.decide(request["id"], "bob")
    path = f"/api/v1/approvals/{request['id']}/collect"
    assert (await api.call("POST", path, "other-bot")).status_code == 403
    assert (await api.call("POST", path, "bot")).status_code == 200
    second = await api.call("POST", path, "bot")
    assert second.status_code == 409
    assert error_code(second) == "already_collected"
    other = await api.ask(session_id="s9")
    cancel = f"/api/v1/approvals/{other['id']}/cancel"
    cancelled = await api.call("POST", cancel, "bot", json={"reason": "gave up"})
    assert cancelled.json()["status"] == "cancelled"
    assert (await api.decide(other["id"], "bob")).status_code == 409


async def test_concurrent_decisions_one_wins(api: Api) -> None:
    """Reviewers deciding one request at the same instant: exactly one 200, the rest 409."""
    request = await api.ask()
    answers = await asyncio.gather(
        *(api.decide(request["id"], name) for name in ("alice", "bob", "carol"))
    )
    assert sorted(r.status_code for r in answers) == [200, 409, 409]
    final = await api.call("GET", f"/api/v1/approvals/{request['id']}", "bob")
    assert len(final.json()["decisions"]) == 1


async def test_audit_endpoints(api: Api) -> None:
    """Every step is in the audit trail, readable through the API and verifiable by an auditor."""
    request = await api.ask()
    await api.decide(request["id"], "bob", verdict="deny", comment="no")
    records = (await api.call("GET", "/api/v1/audit", "bob", params={"session": "s1"})).json()
    texts = [r["human_decision"] for r in records["records"]]
    assert texts[0].startswith("approval: requested by bot")
    assert texts[1] == f"approval: denied by bob: no [request {request['id']}]"
    assert records["next_after_id"] is None
    refused = await api.call("GET", "/api/v1/audit/verify", "bob")
    assert refused.status_code == 403
    assert error_code(refused) == "not_auditor"
    report = (await api.call("GET", "/api/v1/audit/verify", "ida")).json()
    assert report["ok"] is True
    assert report["checked"] == 3  # with the fixture's revocation of the token "gone"
    bad = await api.call("GET", "/api/v1/audit", "bob", params={"since": "yesterday"})
    assert bad.status_code == 422


async def test_audit_query_takes_every_short_filter_name(api: Api) -> None:
    """Each short name of SHORT_NAMES filters the API's audit query; a bad value is 422."""
    request = await api.ask()
    await api.decide(request["id"], "bob", verdict="deny")
    every = (await api.call("GET", "/api/v1/audit", "bob")).json()["records"]
    assert every
    risks = {r["risk_level"] for r in every}
    statuses = {r["result_status"] for r in every}
    missing = {
        "session": "no-such-session",
        "type": "no-such-type",
        "target": "no-such-target",
        "risk": next(level.name for level in RiskLevel if level.name not in risks),
        "status": next(s.value for s in ResultStatus if s.value not in statuses),
        "since": "2999-01-01",
        "until": "2000-01-01",
    }
    assert set(missing) == set(SHORT_NAMES)
    for name, value in missing.items():
        found = await api.call("GET", "/api/v1/audit", "bob", params={name: value})
        assert found.status_code == 200, (name, found.text)
        assert found.json()["records"] == [], name
    for name, value in (("risk", "severe"), ("status", "done"), ("until", "later")):
        bad = await api.call("GET", "/api/v1/audit", "bob", params={name: value})
        assert bad.status_code == 422, name
        assert error_code(bad) == "invalid"


async def test_unknown_route_is_json_404(api: Api) -> None:
    """Even an unknown path or method answers JSON."""
    response = await api.call("GET", "/api/v1/nothing", "bob")
    assert response.status_code == 404
    assert response.json()["error"]["status"] == 404
    wrong_method = await api.call("DELETE", "/api/v1/approvals", "bob")
    assert wrong_method.status_code == 405


async def test_locked_database_is_503(api: Api) -> None:
    """A database held locked by another process gives a JSON 503, and nothing is decided."""
    request = await api.ask()
    holder = sqlite3.connect(api.db, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        locked = await api.decide(request["id"], "bob")
        assert locked.status_code == 503
        assert error_code(locked) == "store_unavailable"
        assert "locked" in locked.json()["error"]["message"]
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    after = await api.call("GET", f"/api/v1/approvals/{request['id']}", "bob")
    assert after.json()["status"] == "pending"
    assert (await api.call("GET", "/healthz")).status_code == 200


async def test_service_policy_raises_the_agents_terms(tmp_path: Path) -> None:
    """A service policy raises weaker approvers and groups to its own, and refuses blocks."""
    from aegis import Policy

    store = SqliteApprovalStore(tmp_path / "policy.db")
    add_tokens(store, datetime.now(UTC))
    policy = Policy.from_dict(
        {
            "rules": [
                {
                    "name": "wires",
                    "match": {"type": "wire"},
                    "approvers": 2,
                    "reviewers": ["finance"],
                },
                {"name": "deletes", "match": {"type": "delete"}, "approval": "block"},
            ]
        }
    )
    service = ApprovalService(store, None, policy=policy)
    transport = httpx.ASGITransport(app=create_app(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        headers = {"Authorization": "Bearer bot-secret"}
        weak = {
            "session_id": "s",
            "action": {"type": "wire", "target": "bank"},
            "approvers": 1,
            "matched_rule": "made-up",
        }
        created = (await client.post("/api/v1/approvals", json=weak, headers=headers)).json()
        assert (created["approvers"], created["reviewers"], created["matched_rule"]) == (
            2,
            ["finance"],
            "wires",
        )
        blocked = {"session_id": "s", "action": {"type": "delete", "target": "crm"}}
        refused = await client.post("/api/v1/approvals", json=blocked, headers=headers)
        assert refused.status_code == 403
        assert error_code(refused) == "blocked_by_policy"
    service.close()


class HeldAudit(AuditLogger):
    """A real SQLite trail whose writes, once ``hold`` is set, wait for ``release`` inside."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.hold = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def log(self, *args: Any, **kwargs: Any) -> int:
        """Wait while held (as a write on a slow disk would), then write."""
        if self.hold:
            self.entered.set()
            self.release.wait(10)
        return super().log(*args, **kwargs)


async def test_a_flush_cut_off_mid_write_records_the_decision_once(tmp_path: Path) -> None:
    """A decision's request cut off while its record is being written (a client gone, the
    service stopping): the record is written and marked once, never written again by the
    next flush. Before, the cut-off flush gave its claim back while the write went on."""
    store = SqliteApprovalStore(tmp_path / "held.db")
    add_tokens(store, datetime.now(UTC))
    audit = HeldAudit(str(tmp_path / "held.db"))
    service = ApprovalService(store, audit)
    bot = await service.authenticate("bot-secret")
    bob = await service.authenticate("bob-secret")
    created, _ = await service.create(bot, parse_new_request({"session_id": "s", "action": ACTION}))
    audit.hold = True
    deciding = asyncio.create_task(service.decide(bob, created.id, Verdict.DENY, "no"))
    assert await asyncio.to_thread(audit.entered.wait, 10)
    deciding.cancel()
    with pytest.raises(asyncio.CancelledError):
        await deciding
    # a write that hangs does not hold the service's stop for longer than asked
    assert await service.settle(timeout=0.1) is False
    audit.hold = False
    audit.release.set()
    assert await service.settle()
    await service.flush_audit()
    decided = [
        r
        for r in audit.get_log("s")
        if (r["context"] or {}).get("approval_event") == "approval.decided"
    ]
    assert len(decided) == 1
    assert store.pending_events(timedelta(0)) == []
    service.close()


class BlinkingStore(SqliteApprovalStore):
    """A real SQLite store whose next ``failures`` marks of a written event fail (a blip)."""

    failures = 0

    def finish_event(self, event_id: str, now: datetime, *, audited: bool) -> None:
        """Fail while failures are left, as a dropped connection would, then mark."""
        if audited and self.failures:
            self.failures -= 1
            raise StoreError("the connection dropped")
        super().finish_event(event_id, now, audited=audited)


async def test_a_record_written_is_marked_through_a_blip_and_never_written_twice(
    tmp_path: Path,
) -> None:
    """The store fails once as a written record is marked: it is marked on a second try, so
    no flush a minute later (the claim gone stale) writes the decision's record again."""
    store = BlinkingStore(tmp_path / "blink.db")
    add_tokens(store, datetime.now(UTC))
    audit = AuditLogger(str(tmp_path / "blink.db"))
    service = ApprovalService(store, audit)
    bot = await service.authenticate("bot-secret")
    bob = await service.authenticate("bob-secret")
    created, _ = await service.create(bot, parse_new_request({"session_id": "s", "action": ACTION}))
    store.failures = 1
    await service.decide(bob, created.id, Verdict.DENY, "no")
    # past any claim's staleness: one left unmarked would be taken over and written again
    with closing(sqlite3.connect(tmp_path / "blink.db")) as conn, conn:
        conn.execute(
            "UPDATE aegis_approval_events SET claimed_at = ?", (iso(datetime(2000, 1, 1)),)
        )
    await service.flush_audit()
    decided = [
        r
        for r in audit.get_log("s")
        if (r["context"] or {}).get("approval_event") == "approval.decided"
    ]
    assert len(decided) == 1
    assert store.pending_events(timedelta(0)) == []
    service.close()


class FlakyAudit(InMemoryAuditLog):
    """An in-memory trail whose next ``failures`` writes fail as a locked database would."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 0

    def log(self, *args: Any, **kwargs: Any) -> int:
        """Fail while failures are left, then write."""
        if self.failures:
            self.failures -= 1
            raise AuditError("database is locked")
        return super().log(*args, **kwargs)


async def test_audit_records_wait_in_the_outbox_while_the_trail_is_down(tmp_path: Path) -> None:
    """Changes made while the trail fails are kept and written later, each exactly once."""
    store = SqliteApprovalStore(tmp_path / "flaky.db")
    add_tokens(store, datetime.now(UTC))
    audit = FlakyAudit()
    service = ApprovalService(store, audit)
    transport = httpx.ASGITransport(app=create_app(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        audit.failures = 10
        created = await client.post(
            "/api/v1/approvals",
            json={"session_id": "s", "action": ACTION},
            headers={"Authorization": "Bearer bot-secret"},
        )
        assert created.status_code == 201
        decided = await client.post(
            f"/api/v1/approvals/{created.json()['id']}/decision",
            json={"verdict": "deny", "comment": "no"},
            headers={"Authorization": "Bearer bob-secret"},
        )
        assert decided.status_code == 200
        assert decided.json()["status"] == "denied"
        assert audit.records == []
        audit.failures = 0
        # the fixture's revocation of the token "gone", the request, the denial
        assert await service.flush_audit() == 3
        assert await service.flush_audit() == 0
    texts = [r["human_decision"] for r in audit.records]
    assert texts[0].startswith("operator: token gone (reviewer) revoked")
    assert texts[1].startswith("approval: requested by bot")
    assert texts[2] == f"approval: denied by bob: no [request {created.json()['id']}]"
    service.close()
