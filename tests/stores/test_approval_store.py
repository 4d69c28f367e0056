"""One contract for the approval store, run against SQLite and a real PostgreSQL."""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from approval_versions import by_hand, create_version, version_of

from aegis.core.action import Action, action_digest
from aegis.core.approval_request import (
    REQUEST_SORTS,
    ApprovalRequest,
    InboxSession,
    ListCursor,
    RequestStatus,
    Role,
    TokenInfo,
    Verdict,
    iso,
    request_digest,
)
from aegis.core.risk import RiskLevel
from aegis.errors import ApprovalServiceError, StoreError
from aegis.stores._approvals_sql import SCHEMA_VERSION
from aegis.stores.approvals import (
    OPERATOR_EVENTS,
    ApprovalStore,
    new_request_id,
    open_approval_store,
)
from aegis.stores.sqlite.approvals import SqliteApprovalStore

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database: a SQLite file, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        return str(tmp_path / "aegis.db")
    dsn: str = request.getfixturevalue("postgres_dsn")
    return dsn


@pytest.fixture
def store(db: str) -> Iterator[ApprovalStore]:
    """The approval store of that database, closed afterwards."""
    opened = open_approval_store(db)
    yield opened
    opened.close()


def make(
    session: str = "s1",
    *,
    amount: int = 900,
    requester: str = "bot",
    approvers: int = 1,
    ttl: float = 3600,
    rule: str = "refunds",
) -> ApprovalRequest:
    """A pending request for a refund of ``amount``."""
    action = Action("refund", "billing", {"amount": amount})
    return ApprovalRequest(
        id=new_request_id(),
        session_id=session,
        requester=requester,
        action=action,
        risk_level=RiskLevel.HIGH,
        matched_rule=rule,
        reason="big refund",
        approvers=approvers,
        reviewers=(),
        created_at=NOW,
        expires_at=NOW + timedelta(seconds=ttl),
        digest=request_digest(action, requester),
        action_digest=action_digest(action),
    )


def decide(
    store: ApprovalStore,
    request_id: str,
    reviewer: str,
    verdict: Verdict = Verdict.APPROVE,
    *,
    minutes: int | None = None,
    at: datetime = NOW,
) -> ApprovalRequest:
    """One reviewer's verdict, at ``at``."""
    request, _ = store.decide(
        request_id, reviewer, verdict, comment="", grant_minutes=minutes, now=at
    )
    return request


def test_create_and_read_back(store: ApprovalStore) -> None:
    """A stored request reads back equal, action and digests included."""
    new = make()
    stored, created = store.create_request(new, NOW)
    assert created
    assert stored == new
    assert store.get_request(new.id) == new
    assert store.get_request("apr_unknown") is None


def test_same_session_and_digest_reattaches(store: ApprovalStore) -> None:
    """A second request for the same action in the same session returns the pending one."""
    first, _ = store.create_request(make(), NOW)
    again, created = store.create_request(make(), NOW)
    assert not created
    assert again.id == first.id
    other, created = store.create_request(make("s2"), NOW)
    assert created
    assert other.id != first.id


def test_single_approval_settles(store: ApprovalStore) -> None:
    """One approval of a one-approver request approves it and records the reviewer."""
    request, _ = store.create_request(make(), NOW)
    decided = decide(store, request.id, "alice")
    assert decided.status is RequestStatus.APPROVED
    assert [d.reviewer for d in decided.decisions] == ["alice"]


def test_two_person_rule_needs_two_distinct_reviewers(store: ApprovalStore) -> None:
    """With approvers 2, one approval leaves it pending, a repeat is refused, a second approves."""
    request, _ = store.create_request(make(approvers=2), NOW)
    assert decide(store, request.id, "alice").status is RequestStatus.PENDING
    with pytest.raises(ApprovalServiceError) as refused:
        decide(store, request.id, "alice")
    assert refused.value.status == 409
    assert refused.value.code == "already_decided"
    assert decide(store, request.id, "bob").status is RequestStatus.APPROVED


def test_a_single_deny_denies(store: ApprovalStore) -> None:
    """A deny after an approval of a two-person request denies it."""
    request, _ = store.create_request(make(approvers=2), NOW)
    decide(store, request.id, "alice")
    assert decide(store, request.id, "bob", Verdict.DENY).status is RequestStatus.DENIED


def test_decided_request_refuses_more_decisions(store: ApprovalStore) -> None:
    """Deciding a request that is no longer pending is a 409 and changes nothing."""
    request, _ = store.create_request(make(), NOW)
    decide(store, request.id, "alice", Verdict.DENY)
    with pytest.raises(ApprovalServiceError) as refused:
        decide(store, request.id, "bob")
    assert refused.value.status == 409
    after = store.get_request(request.id)
    assert after is not None
    assert after.status is RequestStatus.DENIED
    assert len(after.decisions) == 1


def test_unknown_request_is_not_found(store: ApprovalStore) -> None:
    """Deciding, collecting or cancelling an unknown id is a 404."""
    for call in (
        lambda: decide(store, "apr_nope", "alice"),
        lambda: store.collect("apr_nope", NOW),
        lambda: store.cancel("apr_nope", "x", NOW),
    ):
        with pytest.raises(ApprovalServiceError) as refused:
            call()
        assert refused.value.status == 404


def test_collect_once(store: ApprovalStore) -> None:
    """An approval is collected once; the second collect is refused."""
    request, _ = store.create_request(make(), NOW)
    with pytest.raises(ApprovalServiceError) as early:
        store.collect(request.id, NOW)
    assert early.value.code == "not_approved"
    decide(store, request.id, "alice")
    assert store.collect(request.id, NOW).collected_at == NOW
    with pytest.raises(ApprovalServiceError) as again:
        store.collect(request.id, NOW)
    assert again.value.code == "already_collected"


def test_expiry(store: ApprovalStore) -> None:
    """A request past its expiry is expired once, and can no longer be approved."""
    request, _ = store.create_request(make(ttl=60), NOW)
    assert store.expire_due(NOW + timedelta(seconds=59)) == []
    with pytest.raises(ApprovalServiceError) as late:
        decide(store, request.id, "alice", at=NOW + timedelta(seconds=61))
    assert late.value.code == "expired"
    expired = store.expire_due(NOW + timedelta(seconds=61))
    assert [r.id for r in expired] == [request.id]
    assert expired[0].status is RequestStatus.EXPIRED
    assert store.expire_due(NOW + timedelta(seconds=62)) == []


def test_cancel(store: ApprovalStore) -> None:
    """A pending request can be cancelled once; a cancelled one cannot be approved."""
    request, _ = store.create_request(make(), NOW)
    cancelled = store.cancel(request.id, "the agent gave up", NOW)
    assert cancelled.status is RequestStatus.CANCELLED
    assert cancelled.status_reason == "the agent gave up"
    with pytest.raises(ApprovalServiceError):
        store.cancel(request.id, "again", NOW)
    with pytest.raises(ApprovalServiceError):
        decide(store, request.id, "alice")


def test_grant_covers_the_same_kind_in_the_same_session(store: ApprovalStore) -> None:
    """An approval with grant minutes approves later matching requests, until revoked."""
    request, _ = store.create_request(make(amount=1), NOW)
    _, grant = store.decide(
        request.id, "alice", Verdict.APPROVE, comment="", grant_minutes=30, now=NOW
    )
    assert grant is not None
    assert grant.granted_by == ("alice",)
    later, _ = store.create_request(make(amount=2), NOW + timedelta(minutes=5))
    assert later.status is RequestStatus.APPROVED
    assert later.grant_id == grant.id
    assert later.grant_by == ("alice",)
    other_session, _ = store.create_request(make("s2", amount=2), NOW)
    assert other_session.status is RequestStatus.PENDING
    other_rule, _ = store.create_request(make(amount=3, rule="other"), NOW)
    assert other_rule.status is RequestStatus.PENDING
    store.revoke_grant(grant.id, NOW + timedelta(minutes=6))
    after, _ = store.create_request(make(amount=4), NOW + timedelta(minutes=7))
    assert after.status is RequestStatus.PENDING
    with pytest.raises(ApprovalServiceError) as again:
        store.revoke_grant(grant.id, NOW + timedelta(minutes=8))
    assert again.value.status == 409


def test_grant_expires(store: ApprovalStore) -> None:
    """A grant stops covering requests after its minutes."""
    request, _ = store.create_request(make(amount=1), NOW)
    store.decide(request.id, "alice", Verdict.APPROVE, comment="", grant_minutes=1, now=NOW)
    late, _ = store.create_request(make(amount=2), NOW + timedelta(minutes=2))
    assert late.status is RequestStatus.PENDING
    assert store.list_grants(NOW + timedelta(minutes=2)) == []
    assert len(store.list_grants(NOW, include_inactive=True)) == 1


def test_grants_page_on_after_the_last_of_a_page(store: ApprovalStore) -> None:
    """``before`` lists the grants after a page's last, newest first, ties broken by id."""
    given = []
    for n, at in enumerate((NOW, NOW, NOW + timedelta(seconds=1))):
        request, _ = store.create_request(make(f"s{n}"), at)
        _, grant = store.decide(
            request.id, "alice", Verdict.APPROVE, comment="", grant_minutes=30, now=at
        )
        assert grant is not None
        given.append(grant)
    every = store.list_grants(NOW)
    assert {g.id for g in every} == {g.id for g in given}
    pages = []
    before = None
    for _ in every:
        page = store.list_grants(NOW, before=before)
        pages.append(page[0].id)
        before = (page[0].created_at, page[0].id)
    assert pages == [g.id for g in every]
    assert store.list_grants(NOW, before=before) == []
    assert store.list_grants(NOW, include_inactive=True, before=before) == []


def test_two_person_grant_needs_every_approver(store: ApprovalStore) -> None:
    """A grant is made only when every approving reviewer asked for one, for the shortest time."""
    request, _ = store.create_request(make(approvers=2), NOW)
    decide(store, request.id, "alice", minutes=60)
    _, grant = store.decide(
        request.id, "bob", Verdict.APPROVE, comment="", grant_minutes=10, now=NOW
    )
    assert grant is not None
    assert grant.expires_at == NOW + timedelta(minutes=10)
    second, _ = store.create_request(make("s2", amount=5, approvers=2), NOW)
    decide(store, second.id, "alice", minutes=60)
    _, none = store.decide(
        second.id, "bob", Verdict.APPROVE, comment="", grant_minutes=None, now=NOW
    )
    assert none is None


def test_tokens(store: ApprovalStore) -> None:
    """Tokens are found by hash, listed by name, revoked once; a revoked name is retired."""
    info = TokenInfo("alice", Role.REVIEWER, ("finance",), NOW)
    store.create_token(info, "h1")
    assert store.token_by_hash("h1") == info
    with pytest.raises(ApprovalServiceError) as taken:
        store.create_token(info, "h2")
    assert taken.value.status == 409
    assert [t.name for t in store.list_tokens()] == ["alice"]
    assert store.revoke_token("alice", NOW)
    assert not store.revoke_token("alice", NOW)
    revoked = store.token_by_hash("h1")
    assert revoked is not None
    assert not revoked.usable_at(NOW)
    with pytest.raises(ApprovalServiceError) as retired:
        store.create_token(TokenInfo("alice", Role.REVIEWER, (), NOW), "h3")
    assert (retired.value.status, retired.value.code) == (409, "token_name_retired")
    assert store.token_by_hash("h3") is None
    assert store.token_by_hash("h1") == revoked


def _withdrawals(store: ApprovalStore) -> list[tuple[str, str, str, list[str]]]:
    """The queued ``approval.withdrawn`` events: request, reviewer, token, approvals left."""
    return [
        (e.request_id, e.context["reviewer"], e.context["token"], e.context["approved_by"])
        for e in store.pending_events(timedelta(0), limit=1000)
        if e.kind == "approval.withdrawn"
    ]


def test_revoking_a_token_withdraws_its_approvals_of_pending_requests(
    store: ApprovalStore,
) -> None:
    """A revoked token's approval no longer counts toward a two-person rule; decided stay.

    alice approves, her token is revoked (it leaked), bob approves: the
    request is still pending, and needs a second valid approver.
    """
    for name in ("alice", "bob", "carol"):
        store.create_token(TokenInfo(name, Role.REVIEWER, (), NOW), f"h-{name}")
    pending, _ = store.create_request(make(approvers=2), NOW)
    decided, _ = store.create_request(make("s2", amount=5, approvers=2), NOW)
    decide(store, pending.id, "alice")
    decide(store, decided.id, "alice")
    assert decide(store, decided.id, "carol").status is RequestStatus.APPROVED
    assert store.revoke_token("alice", NOW)
    after = store.get_request(pending.id)
    assert after is not None
    assert (after.status, after.decisions) == (RequestStatus.PENDING, ())
    assert decide(store, pending.id, "bob").status is RequestStatus.PENDING
    approved = decide(store, pending.id, "carol")
    assert approved.status is RequestStatus.APPROVED
    assert [d.reviewer for d in approved.approvals] == ["bob", "carol"]
    kept = store.get_request(decided.id)
    assert kept is not None
    assert kept.status is RequestStatus.APPROVED  # what ran, ran
    assert [d.reviewer for d in kept.approvals] == ["alice", "carol"]
    assert _withdrawals(store) == [(pending.id, "alice", "alice", [])]


def test_revoking_a_person_s_token_withdraws_that_person_s_approvals(
    store: ApprovalStore,
) -> None:
    """A token tied to an OpenID person withdraws that person's approvals at its issuer only."""
    kim = TokenInfo(
        "kim-cli",
        Role.REVIEWER,
        (),
        NOW,
        oidc_issuer="https://ID.example.com/",
        oidc_subject="248289",
    )
    store.create_token(kim, "h-kim")
    hers, _ = store.create_request(make(approvers=3), NOW)
    namesakes, _ = store.create_request(make("s2", amount=5, approvers=2), NOW)
    decide(store, hers.id, "https://id.example.com#248289")
    decide(store, hers.id, "bob")
    decide(store, namesakes.id, "https://other.example.com#248289")
    assert store.revoke_token("kim-cli", NOW)
    left = store.get_request(hers.id)
    assert left is not None
    assert [d.reviewer for d in left.decisions] == ["bob"]
    untouched = store.get_request(namesakes.id)
    assert untouched is not None
    assert [d.reviewer for d in untouched.decisions] == ["https://other.example.com#248289"]
    assert _withdrawals(store) == [(hers.id, "https://id.example.com#248289", "kim-cli", ["bob"])]
    assert decide(store, hers.id, "carol").status is RequestStatus.PENDING
    assert decide(store, hers.id, "dave").status is RequestStatus.APPROVED


def test_an_audited_withdrawal_waits_for_one_service_to_announce_it(
    store: ApprovalStore, db: str
) -> None:
    """The command line's withdrawal stays in the outbox once in the trail, until one service
    takes it to tell its webhooks; every other audited event is gone at once."""
    store.create_token(TokenInfo("alice", Role.REVIEWER, (), NOW), "h-alice")
    request, _ = store.create_request(make(approvers=2), NOW)
    decide(store, request.id, "alice")
    assert store.revoke_token("alice", NOW)
    for event in store.pending_events(timedelta(0)):
        assert store.claim_event(event.id, timedelta(minutes=1))
        store.finish_event(event.id, NOW, audited=True)
    assert store.pending_events(timedelta(0)) == []
    other = open_approval_store(db)
    try:
        (taken,) = store.take_announcements()
        assert other.take_announcements() == []
    finally:
        other.close()
    assert (taken.kind, taken.request_id, taken.context["token"]) == (
        "approval.withdrawn",
        request.id,
        "alice",
    )
    assert store.take_announcements() == []


def _oidc_session(id_hash: str, issuer: str, subject: str) -> InboxSession:
    identity = {"kind": "oidc", "issuer": issuer, "subject": subject, "name": "", "groups": []}
    return InboxSession(
        id_hash=id_hash,
        csrf="c",
        created_at=NOW,
        expires_at=NOW + timedelta(hours=8),
        identity=identity,
    )


def test_revoking_a_person_ends_their_sessions_tokens_and_pending_approvals(
    store: ApprovalStore,
) -> None:
    """kim at id.example.com is revoked: her sign-ins (however the issuer was spelt) end,
    her tied token is revoked, her approval of a pending request is withdrawn and a decision
    of hers still on its way is refused; kim at another issuer keeps all of hers."""
    issuer, other = "https://id.example.com", "https://other.example.com"
    kim = TokenInfo("kim-cli", Role.REVIEWER, (), NOW, oidc_issuer=issuer, oidc_subject="kim")
    namesake = TokenInfo("kim-other", Role.REVIEWER, (), NOW, oidc_issuer=other, oidc_subject="kim")
    store.create_token(kim, "h-kim")
    store.create_token(namesake, "h-namesake")
    store.create_session(_oidc_session("a" * 64, "https://ID.example.com:443/", "kim"))
    store.create_session(_oidc_session("b" * 64, other, "kim"))
    hers, _ = store.create_request(make(approvers=3), NOW)
    later, _ = store.create_request(make("s2", amount=5, approvers=2), NOW)
    decide(store, hers.id, f"{issuer}#kim")
    decide(store, hers.id, f"{other}#kim")
    assert store.revoke_person("https://ID.example.com/", "kim", NOW) == (["kim-cli"], 1)
    left = store.get_request(hers.id)
    assert left is not None
    assert [d.reviewer for d in left.decisions] == [f"{other}#kim"]
    assert _withdrawals_of_people(store) == [(hers.id, f"{issuer}#kim", f"{issuer}#kim")]
    assert store.get_session("a" * 64).ended_at is not None  # type: ignore[union-attr]
    assert store.get_session("b" * 64).ended_at is None  # type: ignore[union-attr]
    assert store.token_by_hash("h-kim").revoked_at is not None  # type: ignore[union-attr]
    assert store.token_by_hash("h-namesake").revoked_at is None  # type: ignore[union-attr]
    for token, session in (("kim-cli", None), (None, "a" * 64)):
        with pytest.raises(ApprovalServiceError) as refused:
            store.decide(
                later.id,
                f"{issuer}#kim",
                Verdict.APPROVE,
                comment="",
                grant_minutes=None,
                now=NOW,
                token=token,
                session=session,
            )
        assert refused.value.status == 401
    still = store.decide(
        later.id, f"{other}#kim", Verdict.APPROVE, comment="", grant_minutes=None, now=NOW,
        token="kim-other", session="b" * 64,
    )  # fmt: skip
    assert [d.reviewer for d in still[0].decisions] == [f"{other}#kim"]
    assert store.revoke_person(issuer, "kim", NOW) == ([], 0)  # nothing left to end


def _withdrawals_of_people(store: ApprovalStore) -> list[tuple[str, str, str]]:
    """The queued ``approval.withdrawn`` events of revoked people: request, reviewer, person."""
    return [
        (e.request_id, e.context["reviewer"], e.context["person"])
        for e in store.pending_events(timedelta(0), limit=1000)
        if e.kind == "approval.withdrawn"
    ]


def _operator_events(store: ApprovalStore) -> list[tuple[str, str, dict[str, Any]]]:
    """The queued events of what operators did to people and tokens: kind, request, context."""
    return [
        (e.kind, e.request_id, dict(e.context))
        for e in store.pending_events(timedelta(0), limit=1000)
        if e.kind in OPERATOR_EVENTS
    ]


def test_a_revocation_stands_until_an_explicit_reinstatement(store: ApprovalStore) -> None:
    """kim, revoked, may not sign in again nor be given a token tied to her until reinstated;
    a namesake at another issuer may. Each step queues its own event, naming who did it."""
    issuer, other = "https://id.example.com", "https://other.example.org"
    before = _oidc_session("a" * 64, issuer, "kim")
    store.create_session(before)
    assert store.revoke_person(issuer, "kim", NOW, by="operator:ops") == ([], 1)
    assert store.revoked_people() == [(f"{issuer}#kim", NOW, "operator:ops")]
    for spelt in (issuer, "https://ID.example.com:443/"):
        with pytest.raises(ApprovalServiceError) as refused:
            store.create_session(_oidc_session("b" * 64, spelt, "kim"))
        assert (refused.value.status, refused.value.code) == (403, "revoked")
    assert store.get_session("b" * 64) is None
    tied = TokenInfo("kim-cli", Role.REVIEWER, (), NOW, oidc_issuer=issuer, oidc_subject="kim")
    legacy = TokenInfo("kim-old", Role.REVIEWER, (), NOW, oidc_subject="kim")  # any issuer
    for token in (tied, legacy):
        with pytest.raises(ApprovalServiceError) as refused:
            store.create_token(token, f"h-{token.name}")
        assert refused.value.status == 403
        assert store.token_by_hash(f"h-{token.name}") is None
    store.create_session(_oidc_session("c" * 64, other, "kim"))  # another person
    assert store.reinstate_person(issuer, "kim", NOW, by="operator:lead")
    assert not store.reinstate_person(issuer, "kim", NOW, by="operator:lead")  # not revoked
    assert store.revoked_people() == []
    store.create_session(_oidc_session("b" * 64, issuer, "kim"))
    store.create_token(tied, "h-kim-cli")
    assert store.get_session("b" * 64) is not None
    assert [(kind, request, ctx.get("person"), ctx.get("by")) for kind, request, ctx in
            _operator_events(store)] == [
        ("reviewer.revoked", "", f"{issuer}#kim", "operator:ops"),
        ("reviewer.reinstated", "", f"{issuer}#kim", "operator:lead"),
    ]  # fmt: skip


def _grant_ends(store: ApprovalStore) -> list[tuple[str, str, str]]:
    """The queued ``grant.revoked`` events: grant, who ended it, and the person or token."""
    return [
        (e.context["grant"], e.context["by"], e.context.get("person") or e.context["token"])
        for e in store.pending_events(timedelta(0), limit=1000)
        if e.kind == "grant.revoked"
    ]


def test_a_revocation_ends_the_grants_its_reviewer_gave_in_its_own_transaction(
    store: ApprovalStore,
) -> None:
    """Revoking kim (the person) or bob's token ends the grants they gave, alone or with
    others, as it commits: no request asked after it is approved by them. A namesake's
    grant and a grant of others stay."""
    issuer, other = "https://id.example.com", "https://other.example.com"
    store.create_token(TokenInfo("bob", Role.REVIEWER, (), NOW), "h-bob")
    given = {}
    for session, givers in (
        ("s-kim", [f"{issuer}#kim"]),
        ("s-both", ["carol", "bob"]),
        ("s-namesake", [f"{other}#kim"]),
        ("s-carol", ["carol"]),
    ):
        asked, _ = store.create_request(make(session, approvers=len(givers)), NOW)
        for giver in givers:
            _, grant = store.decide(
                asked.id, giver, Verdict.APPROVE, comment="", grant_minutes=30, now=NOW
            )
        assert grant is not None
        given[session] = grant.id
    later = NOW + timedelta(minutes=1)
    store.revoke_person("https://ID.example.com:443/", "kim", later, by="operator:ops")
    assert store.revoke_token("bob", later, by="operator:ops")
    assert sorted(g.id for g in store.list_grants(later)) == sorted(
        [given["s-namesake"], given["s-carol"]]
    )
    for session, covered in (("s-kim", False), ("s-both", False), ("s-namesake", True)):
        asked, _ = store.create_request(make(session, amount=901), later)
        assert (asked.grant_id is not None) is covered, session
        assert asked.status is (RequestStatus.APPROVED if covered else RequestStatus.PENDING)
    assert _grant_ends(store) == [
        (given["s-kim"], f"operator:ops (reviewer {issuer}#kim revoked)", f"{issuer}#kim"),
        (given["s-both"], "operator:ops (token bob revoked)", "bob"),
    ]


def test_every_revocation_queues_its_event_even_with_nothing_to_withdraw(
    store: ApprovalStore,
) -> None:
    """A token or a person revoked with nothing pending still leaves an event for the trail."""
    store.create_token(TokenInfo("idle", Role.REVIEWER, (), NOW), "h-idle")
    assert store.revoke_token("idle", NOW, by="operator:ops")
    assert store.revoke_person("https://id.example.com", "nobody", NOW, by="operator:ops") == (
        [],
        0,
    )
    events = _operator_events(store)
    assert [(kind, request, ctx["by"], ctx["withdrawn"]) for kind, request, ctx in events] == [
        ("token.revoked", "", "operator:ops", []),
        ("reviewer.revoked", "", "operator:ops", []),
    ]
    assert events[0][2]["token"] == "idle"
    assert events[1][2]["person"] == "https://id.example.com#nobody"


def test_the_pending_digest_moves_with_every_change_however_they_fall_together(
    store: ApprovalStore,
) -> None:
    """The digest of the pending requests moves with an approval short of enough, when one
    is withdrawn as another is given, and when one request leaves as an older one arrives;
    it stays while nothing changes, and is empty with nothing pending."""
    assert store.pending_digest() == ""
    store.create_token(TokenInfo("bob", Role.REVIEWER, (), NOW), "h-bob")
    his, _ = store.create_request(make("s1", approvers=2), NOW)
    other, _ = store.create_request(make("s2", approvers=2), NOW)
    seen = {store.pending_digest()}
    decide(store, his.id, "bob")  # short of enough: still pending
    seen.add(store.pending_digest())
    assert store.pending_digest() in seen  # nothing changed
    assert store.revoke_token("bob", NOW)
    decide(store, other.id, "dan")
    seen.add(store.pending_digest())
    store.cancel(his.id, "not needed", NOW)
    older = make("s3", approvers=2)
    store.create_request(dataclasses.replace(older, created_at=NOW - timedelta(minutes=1)), NOW)
    seen.add(store.pending_digest())
    assert len(seen) == 4
    store.cancel(other.id, "not needed", NOW)
    decide(store, older.id, "erin", Verdict.DENY)
    assert store.pending_digest() == ""


def test_an_expired_token_is_renewed_only_by_its_holder(store: ApprovalStore) -> None:
    """Past its expiry a token's name takes a new secret of the same role and person, no other."""
    later = NOW + timedelta(days=31)
    store.create_token(TokenInfo("bot", Role.AGENT, (), NOW, NOW + timedelta(days=30)), "h1")
    with pytest.raises(ApprovalServiceError) as other_role:
        store.create_token(TokenInfo("bot", Role.REVIEWER, ("finance",), later), "h2")
    assert other_role.value.code == "token_name_retired"
    renewed = TokenInfo("bot", Role.AGENT, (), later, later + timedelta(days=30))
    store.create_token(renewed, "h3")
    assert store.token_by_hash("h3") == renewed
    assert store.token_by_hash("h1") is None


def test_list_by_status_newest_first(store: ApprovalStore) -> None:
    """Listing filters by status and returns the newest first."""
    first, _ = store.create_request(make(amount=1), NOW)
    later = make(amount=2)
    later = ApprovalRequest(
        **{
            **{f: getattr(later, f) for f in later.__dataclass_fields__},
            "created_at": NOW + timedelta(seconds=1),
        }
    )
    store.create_request(later, NOW)
    decide(store, first.id, "alice")
    assert [r.id for r in store.list_requests()] == [later.id, first.id]
    assert [r.id for r in store.list_requests(RequestStatus.PENDING)] == [later.id]
    assert [r.id for r in store.list_requests(RequestStatus.APPROVED)] == [first.id]


def test_count_by_status(store: ApprovalStore) -> None:
    """Counting gives every request of a status, past the list's page size."""
    assert store.count_requests() == 0
    first, _ = store.create_request(make(amount=1), NOW)
    for amount in range(2, 5):
        store.create_request(make(amount=amount), NOW)
    decide(store, first.id, "alice")
    assert store.count_requests() == 4
    assert store.count_requests(RequestStatus.PENDING) == 3
    assert store.count_requests(RequestStatus.APPROVED) == 1
    assert store.count_requests(RequestStatus.EXPIRED) == 0


def _varied(store: ApprovalStore) -> list[ApprovalRequest]:
    """Twelve pending requests of mixed risk, rule, agent, groups, age and expiry."""
    made = []
    for n in range(12):
        base = make(session=f"v{n}", amount=n, requester=("bot", "crawler")[n % 2])
        fields = {f: getattr(base, f) for f in base.__dataclass_fields__}
        fields.update(
            risk_level=list(RiskLevel)[n % 4],
            matched_rule=("refunds", "erasure", "notes")[n % 3],
            reviewers=(("ops",), (), ("finance", "ops2"))[n % 3],
            # ties on purpose: created in pairs, expiring in threes
            created_at=NOW + timedelta(seconds=n // 2),
            expires_at=NOW + timedelta(seconds=600 - 60 * (n // 3)),
        )
        request, _ = store.create_request(ApprovalRequest(**fields), NOW)
        made.append(request)
    return made


def _expected_order(requests: list[ApprovalRequest], sort: str) -> list[str]:
    if sort == "expiring":
        return [r.id for r in sorted(requests, key=lambda r: (r.expires_at, r.id))]
    if sort == "risk":
        key = lambda r: (r.risk_level, r.created_at, r.id)  # noqa: E731
        return [r.id for r in sorted(requests, key=key, reverse=True)]
    return [r.id for r in sorted(requests, key=lambda r: (r.created_at, r.id), reverse=True)]


@pytest.mark.parametrize("sort", REQUEST_SORTS)
def test_sorted_pages_list_each_request_once_in_order(store: ApprovalStore, sort: str) -> None:
    """Paged by cursor in each order, every request comes once, in that order, counts true."""
    made = _varied(store)
    seen: list[str] = []
    cursor: ListCursor | None = None
    while True:
        page = store.list_requests(RequestStatus.PENDING, sort=sort, limit=5, before=cursor)
        left = store.count_requests(RequestStatus.PENDING, before=cursor)
        assert left == len(made) - len(seen)
        seen += [r.id for r in page]
        if len(page) < 5:
            break
        cursor = ListCursor.parse(ListCursor.after(page[-1], sort).text(), sort)
    assert seen == _expected_order(made, sort)


def test_filters_by_risk_rule_agent_and_groups(store: ApprovalStore) -> None:
    """Risk levels, rule, agent and reviewer groups narrow the list, and its count alike."""
    made = _varied(store)
    decide(store, made[3].id, "alice", Verdict.DENY)  # not pending any more
    cases: list[tuple[dict[str, Any], Callable[[ApprovalRequest], bool]]] = [
        ({"risk": {RiskLevel.HIGH, RiskLevel.CRITICAL}}, lambda r: r.risk_level >= RiskLevel.HIGH),
        ({"risk": set()}, lambda r: False),
        ({"rule": "erasure"}, lambda r: r.matched_rule == "erasure"),
        ({"requester": "crawler"}, lambda r: r.requester == "crawler"),
        ({"groups": ["ops"]}, lambda r: r.reviewers in ((), ("ops",))),
        ({"groups": []}, lambda r: r.reviewers == ()),
        ({"groups": ["ops2"], "rule": "notes"}, lambda r: r.matched_rule == "notes"),
        ({"rule": "refunds", "risk": {RiskLevel.LOW}}, lambda r: r.id == made[0].id),
    ]
    for filters, wanted in cases:
        expected = [r.id for r in made if r.id != made[3].id and wanted(r)]
        listed = store.list_requests(RequestStatus.PENDING, sort="expiring", **filters)
        assert sorted(r.id for r in listed) == sorted(expected), filters
        assert store.count_requests(RequestStatus.PENDING, **filters) == len(expected), filters
    assert store.count_requests(risk={RiskLevel.LOW}) == 3


def test_groups_filter_matches_whole_names_only(store: ApprovalStore) -> None:
    """Quotes, backslashes and separators in group names never widen the list or its count."""
    owned = [
        ('x"a"ops',),  # its JSON text holds that of a"ops
        ('""',),  # ... and of "
        ('b"a\\',),  # ... and of a and a backslash
        ("finance", "ops2"),  # its JSON text holds that of ", "
        ('a"ops',),
        (),
    ]
    made = []
    for n, groups in enumerate(owned):
        base = make(session=f"q{n}", amount=n)
        fields = {f: getattr(base, f) for f in base.__dataclass_fields__}
        fields["reviewers"] = groups
        made.append(store.create_request(ApprovalRequest(**fields), NOW)[0])
    for mine in (['a"ops'], ['"'], ["a\\"], [", "], ['", "'], ["ops"], ["x", "finance"]):
        expected = sorted(r.id for r in made if not r.reviewers or set(r.reviewers) & set(mine))
        listed = store.list_requests(RequestStatus.PENDING, groups=mine)
        assert sorted(r.id for r in listed) == expected, mine
        assert store.count_requests(RequestStatus.PENDING, groups=mine) == len(expected), mine


def test_unknown_sort_and_a_cursor_of_another_sort_are_refused(store: ApprovalStore) -> None:
    """A sort the store does not know, or a cursor from another order, is a ValueError."""
    made = _varied(store)
    with pytest.raises(ValueError, match="sort"):
        store.list_requests(sort="oldest")
    with pytest.raises(ValueError, match="risk"):
        store.list_requests(sort="expiring", before=ListCursor.after(made[0], "risk"))
    with pytest.raises(ValueError, match="sorted by expiring"):
        ListCursor.parse(ListCursor.after(made[0], "expiring").text(), "newest")


def test_racing_reviewers_exactly_one_wins(db: str) -> None:
    """Eight reviewers deciding one request at once, each on its own connection: one wins."""
    stores = [open_approval_store(db) for _ in range(8)]
    try:
        request, _ = stores[0].create_request(make(), NOW)
        barrier = threading.Barrier(len(stores))
        outcomes: list[str] = []

        def review(index: int) -> None:
            barrier.wait()
            verdict = Verdict.APPROVE if index % 2 else Verdict.DENY
            try:
                decide(stores[index], request.id, f"reviewer{index}", verdict)
                outcomes.append("won")
            except ApprovalServiceError as exc:
                outcomes.append(str(exc.status))

        threads = [threading.Thread(target=review, args=(i,)) for i in range(len(stores))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(outcomes) == ["409"] * 7 + ["won"]
        final = stores[0].get_request(request.id)
        assert final is not None
        assert len(final.decisions) == 1
    finally:
        for opened in stores:
            opened.close()


def test_sqlite_locked_file_is_a_store_error(tmp_path: Path) -> None:
    """A SQLite file another process holds locked fails writes with a StoreError saying so."""
    path = tmp_path / "locked.db"
    store = SqliteApprovalStore(path, busy_timeout=0.2)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreError, match="locked"):
            store.create_request(make(), NOW)
        holder.execute("ROLLBACK")
        assert store.create_request(make(), NOW)[1]
    finally:
        holder.close()
        store.close()


def test_sqlite_hand_edited_row_is_a_store_error(tmp_path: Path) -> None:
    """A request row edited by hand into nonsense reads as a StoreError, not a crash."""
    path = tmp_path / "edited.db"
    store = open_approval_store(str(path))
    try:
        request, _ = store.create_request(make(), NOW)
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE aegis_approval_requests SET risk_level = 'HUGE'")
        with pytest.raises(StoreError, match="edited or damaged"):
            store.get_request(request.id)
    finally:
        store.close()


def test_hand_approved_row_cannot_be_collected(tmp_path: Path) -> None:
    """A request set to approved by hand, with no approvals recorded, is refused at collect."""
    path = tmp_path / "forged.db"
    store = open_approval_store(str(path))
    try:
        request, _ = store.create_request(make(), NOW)
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE aegis_approval_requests SET status = 'approved'")
        with pytest.raises(ApprovalServiceError) as refused:
            store.collect(request.id, NOW)
        assert refused.value.code == "inconsistent"
        assert store.get_request(request.id).collected_at is None  # type: ignore[union-attr]
    finally:
        store.close()


#: how long an audit claim holds before another process may take it over
LEASE = timedelta(minutes=1)


def age_claims(db: str, by: timedelta) -> None:
    """Move every audit claim ``by`` into the past by hand, as if its process died then."""
    by_hand(
        db,
        "UPDATE aegis_approval_events SET claimed_at = ? WHERE claimed_at IS NOT NULL",
        (iso(datetime.now(UTC) - by),),
    )


def test_every_change_queues_its_audit_event(store: ApprovalStore, db: str) -> None:
    """Changes queue events in order; claims are exclusive; finished leave, stale come back."""
    request, _ = store.create_request(make(), NOW)
    decide(store, request.id, "alice", minutes=5)
    store.collect(request.id, NOW)
    events = store.pending_events(LEASE)
    assert [e.kind for e in events] == [
        "approval.requested",
        "approval.decided",
        "grant.created",
        "approval.collected",
    ]
    first = events[0]
    assert store.claim_event(first.id, LEASE)
    assert not store.claim_event(first.id, LEASE)
    assert first.id not in {e.id for e in store.pending_events(LEASE)}
    # a claim older than the lease is taken over: its process died
    age_claims(db, LEASE * 2)
    assert first.id in {e.id for e in store.pending_events(LEASE)}
    assert store.claim_event(first.id, LEASE)
    store.finish_event(first.id, NOW, audited=True)
    assert first.id not in {e.id for e in store.pending_events(LEASE)}
    second = events[1]
    assert store.claim_event(second.id, LEASE)
    store.finish_event(second.id, NOW, audited=False)
    assert second.id in {e.id for e in store.pending_events(LEASE)}


def test_a_claim_holds_by_the_databases_clock_whatever_the_callers_clocks(db: str) -> None:
    """Two handles (two service processes, on hosts whose clocks disagree): a claim is stamped
    and judged by the database's clock, so the other handle cannot take it over while it is
    fresh, and takes it once that clock says the lease ran out, never earlier or later."""
    one, two = open_approval_store(db), open_approval_store(db)
    try:
        # the callers' clock says NOW, days before the database's: it counts for nothing here
        one.create_request(make(), NOW)
        (event,) = one.pending_events(LEASE)
        assert one.claim_event(event.id, LEASE)
        assert two.pending_events(LEASE) == []
        assert not two.claim_event(event.id, LEASE)
        age_claims(db, LEASE - timedelta(seconds=10))
        assert not two.claim_event(event.id, LEASE)
        age_claims(db, LEASE + timedelta(seconds=10))
        assert [e.id for e in two.pending_events(LEASE)] == [event.id]
        assert two.claim_event(event.id, LEASE)
        assert not one.claim_event(event.id, LEASE)
    finally:
        one.close()
        two.close()


def test_a_grant_ends_by_the_databases_clock_too(store: ApprovalStore, db: str) -> None:
    """A grant the database's clock says ended covers nothing, is not listed active and cannot
    be revoked, though the caller's clock says it runs on (a host whose clock runs behind)."""
    request, _ = store.create_request(make(), NOW)
    _, grant = store.decide(
        request.id, "alice", Verdict.APPROVE, comment="", grant_minutes=5, now=NOW
    )
    assert grant is not None
    later = NOW + timedelta(minutes=1)  # by the caller's clock, well within the five minutes
    assert [g.id for g in store.list_grants(later)] == [grant.id]
    # the database's clock: given six minutes ago, it ended a minute ago
    by_hand(db, "UPDATE aegis_grants SET db_expires_at = ?", (iso(datetime.now(UTC) - LEASE),))
    assert store.list_grants(later) == []
    again, _ = store.create_request(make(), later)
    assert (again.status, again.grant_id) == (RequestStatus.PENDING, None)
    with pytest.raises(ApprovalServiceError) as refused:
        store.revoke_grant(grant.id, later)
    assert refused.value.code == "not_active"


def test_a_request_expires_by_the_databases_clock_too(store: ApprovalStore, db: str) -> None:
    """A request the database's clock says expired cannot be decided, is swept and takes no
    new ask, though the caller's clock says it runs on (a host whose clock runs behind)."""
    first, _ = store.create_request(make("s1"), NOW)  # an hour, by either clock
    second, _ = store.create_request(make("s2"), NOW)
    # the database's clock: asked an hour and a minute ago
    by_hand(
        db,
        "UPDATE aegis_approval_requests SET db_expires_at = ?",
        (iso(datetime.now(UTC) - LEASE),),
    )
    for verdict in Verdict:
        with pytest.raises(ApprovalServiceError) as refused:
            decide(store, first.id, "alice", verdict)
        assert refused.value.code == "expired"
    again, created = store.create_request(make("s1"), NOW)
    assert created
    assert again.id != first.id
    assert [r.id for r in store.expire_due(NOW)] == [second.id]
    assert {store.get_request(r.id).status for r in (first, second)} == {  # type: ignore[union-attr]
        RequestStatus.EXPIRED
    }
    assert decide(store, again.id, "alice").status is RequestStatus.APPROVED


def test_rows_of_version_6_tables_keep_their_caller_clock_ends(db: str) -> None:
    """Tables of version 6 get the ends by the database's clock of grants and requests
    (versions 7 and 8); rows written before have none and end when the caller's clock says."""
    create_version(db, 6)
    by_hand(
        db,
        "INSERT INTO aegis_grants (id, session_id, requester, action_type, action_target, "
        "matched_rule, granted_by, request_id, created_at, expires_at, approvers) VALUES "
        "('grt_old', 's1', 'bot', 'refund', 'billing', 'refunds', '[\"alice\"]', 'apr_old', "
        "?, ?, 1)",
        (iso(NOW), iso(NOW + timedelta(hours=1))),
    )
    store = open_approval_store(db)
    try:
        assert version_of(db) == SCHEMA_VERSION == 9
        assert [g.id for g in store.list_grants(NOW)] == ["grt_old"]
        covered, _ = store.create_request(make(), NOW)
        assert covered.grant_id == "grt_old"
        assert store.list_grants(NOW + timedelta(hours=2)) == []
        asked, _ = store.create_request(make("s2"), NOW)
        by_hand(db, "UPDATE aegis_approval_requests SET db_expires_at = NULL")  # as if older
        assert decide(store, asked.id, "bob", Verdict.DENY).status is RequestStatus.DENIED
        late, _ = store.create_request(make("s3"), NOW)
        by_hand(db, "UPDATE aegis_approval_requests SET db_expires_at = NULL")
        assert store.expire_due(NOW + timedelta(minutes=59)) == []
        assert [r.id for r in store.expire_due(NOW + timedelta(hours=1))] == [late.id]
    finally:
        store.close()


def make_with(
    approvers: int = 1, reviewers: tuple[str, ...] = (), ttl: float = 3600, amount: int = 900
) -> ApprovalRequest:
    """A pending request for the same refund with these terms."""
    base = make(amount=amount, approvers=approvers, ttl=ttl)
    return ApprovalRequest(
        **{**{f: getattr(base, f) for f in base.__dataclass_fields__}, "reviewers": reviewers}
    )


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ({"approvers": 1}, {"approvers": 2}),
        ({"reviewers": ()}, {"reviewers": ("security",)}),
        ({"reviewers": ("security", "ops")}, {"reviewers": ("security",)}),
        ({"ttl": 7200}, {"ttl": 600}),
    ],
)
def test_a_weaker_pending_twin_is_superseded(
    store: ApprovalStore, old: dict[str, object], new: dict[str, object]
) -> None:
    """A second ask with stricter terms cancels the weaker pending twin and stands alone."""
    first, _ = store.create_request(make_with(**old), NOW)  # type: ignore[arg-type]
    second, created = store.create_request(make_with(**new), NOW)  # type: ignore[arg-type]
    assert created
    assert second.id != first.id
    superseded = store.get_request(first.id)
    assert superseded is not None
    assert superseded.status is RequestStatus.CANCELLED
    assert second.id in superseded.status_reason
    with pytest.raises(ApprovalServiceError):
        decide(store, first.id, "alice")


def test_an_equally_strict_twin_is_reused(store: ApprovalStore) -> None:
    """A twin asking at least as much carries the second ask (re-attach)."""
    first, _ = store.create_request(make_with(approvers=2, reviewers=("security",)), NOW)
    again, created = store.create_request(make_with(approvers=1), NOW + timedelta(seconds=5))
    assert not created
    assert again.id == first.id


def test_a_grant_covers_only_requests_whose_terms_its_givers_met(store: ApprovalStore) -> None:
    """A grant from one reviewer of any group does not approve one needing two from a group."""
    easy, _ = store.create_request(make_with(), NOW)
    _, grant = store.decide(
        easy.id, "outsider", Verdict.APPROVE, comment="", grant_minutes=30, now=NOW
    )
    assert grant is not None
    assert (grant.approvers, grant.reviewers) == (1, ())
    strict, created = store.create_request(
        make_with(approvers=2, reviewers=("security",), amount=901), NOW
    )
    assert created
    assert strict.status is RequestStatus.PENDING
    assert strict.grant_id is None
    same, _ = store.create_request(make_with(amount=902), NOW)
    assert same.grant_id == grant.id


def test_a_grant_of_a_stricter_request_covers_a_looser_one(store: ApprovalStore) -> None:
    """Two reviewers of security meeting a strict rule cover a later 1-of-security request."""
    strict, _ = store.create_request(make_with(approvers=2, reviewers=("security",)), NOW)
    decide(store, strict.id, "alice", minutes=30)
    _, grant = store.decide(
        strict.id, "bob", Verdict.APPROVE, comment="", grant_minutes=30, now=NOW
    )
    assert grant is not None
    assert (grant.approvers, grant.reviewers) == (2, ("security",))
    later, _ = store.create_request(make_with(reviewers=("security", "ops"), amount=901), NOW)
    assert later.grant_id == grant.id
    other, _ = store.create_request(make_with(reviewers=("ops",), amount=902), NOW)
    assert other.grant_id is None


def test_sessions_are_kept_and_ended_on_the_server(store: ApprovalStore) -> None:
    """A session reads back by its id hash until it is ended; ending twice says so."""
    from aegis.core.approval_request import InboxSession

    session = InboxSession(
        id_hash="a" * 64,
        csrf="c",
        created_at=NOW,
        expires_at=NOW + timedelta(hours=8),
        token_hash="b" * 64,
    )
    store.create_session(session)
    assert store.get_session("a" * 64) == session
    assert store.get_session("f" * 64) is None
    assert store.end_session("a" * 64, NOW + timedelta(minutes=1))
    assert not store.end_session("a" * 64, NOW + timedelta(minutes=2))
    ended = store.get_session("a" * 64)
    assert ended is not None
    assert not ended.active_at(NOW + timedelta(minutes=1))


def test_grants_of_an_older_file_get_the_terms_of_their_request(tmp_path: Path) -> None:
    """A version-2 file's grants are migrated with the approvers and groups of their request."""
    from aegis.stores._approvals_sql import EVENTS_SCHEMA, SCHEMA, statements
    from aegis.stores.sqlite.schema import migrate

    path = str(tmp_path / "old.db")
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(
        conn,
        path,
        "approvals",
        2,
        {0: tuple(statements("", SCHEMA)), 1: tuple(statements("", EVENTS_SCHEMA))},
    )
    strict = make(approvers=2)
    conn.execute(
        "INSERT INTO aegis_approval_requests (id, session_id, requester, digest, action_digest, "
        "action_json, risk_level, matched_rule, reason, approvers, reviewer_groups, created_at, "
        "expires_at, status, status_reason, approvals) VALUES (?, 's1', 'bot', ?, ?, "
        '\'{"type": "refund", "target": "billing", "params": {}, "description": ""}\', '
        "'HIGH', 'refunds', '', 2, '[\"security\"]', ?, ?, 'approved', '', 2)",
        (strict.id, strict.digest, strict.action_digest, NOW.isoformat(), NOW.isoformat()),
    )
    conn.execute(
        "INSERT INTO aegis_grants (id, session_id, requester, action_type, action_target, "
        "matched_rule, granted_by, request_id, created_at, expires_at) VALUES "
        "('grt_old', 's1', 'bot', 'refund', 'billing', 'refunds', '[\"a\", \"b\"]', ?, ?, ?)",
        (strict.id, NOW.isoformat(), (NOW + timedelta(hours=1)).isoformat()),
    )
    conn.close()
    store = open_approval_store(path)
    try:
        (grant,) = store.list_grants(NOW, include_inactive=True)
        assert (grant.approvers, grant.reviewers) == (2, ("security",))
    finally:
        store.close()
