"""Reviewer identities in the approval store, on SQLite and a real PostgreSQL."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aegis.core.action import Action, action_digest
from aegis.core.approval_request import (
    ApprovalRequest,
    RequestStatus,
    Role,
    TokenInfo,
    Verdict,
    request_digest,
)
from aegis.core.identity import Identity
from aegis.core.risk import RiskLevel
from aegis.errors import ApprovalServiceError
from aegis.stores.approvals import ApprovalStore, new_request_id, open_approval_store

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
ISSUER = "https://id.example.com"


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ApprovalStore]:
    """A fresh approval store: a SQLite file, or a PostgreSQL schema of its own."""
    db = (
        str(tmp_path / "aegis.db")
        if request.param == "sqlite"
        else str(request.getfixturevalue("postgres_dsn"))
    )
    opened = open_approval_store(db)
    yield opened
    opened.close()


def _request(approvers: int = 2) -> ApprovalRequest:
    action = Action("wire", "bank", {"amount": 5000})
    return ApprovalRequest(
        id=new_request_id(),
        session_id="s1",
        requester="bot",
        action=action,
        risk_level=RiskLevel.HIGH,
        matched_rule="wires",
        reason="money leaves",
        approvers=approvers,
        reviewers=(),
        created_at=NOW,
        expires_at=NOW + timedelta(hours=1),
        digest=request_digest(action, "bot"),
        action_digest=action_digest(action),
    )


def test_decision_keeps_identity_and_display_name(store: ApprovalStore) -> None:
    """A decision reads back with its issuer, subject and name."""
    created, _ = store.create_request(_request(approvers=1), NOW)
    alice = Identity(ISSUER, "248289761001", "Alice Example")
    decided, _ = store.decide(
        created.id,
        alice.key,
        Verdict.APPROVE,
        comment="",
        grant_minutes=None,
        now=NOW,
        reviewer_name=alice.display,
    )
    assert decided.status is RequestStatus.APPROVED
    (decision,) = decided.decisions
    assert decision.identity == alice
    assert decision.identity.name == "Alice Example"
    assert decision.to_json()["reviewer_issuer"] == ISSUER


def test_one_identity_decides_once_whatever_its_name(store: ApprovalStore) -> None:
    """The same issuer and subject under another display name is still one reviewer."""
    created, _ = store.create_request(_request(approvers=2), NOW)
    first = Identity(ISSUER, "248289761001", "Alice Example")
    store.decide(
        created.id, first.key, Verdict.APPROVE, comment="", grant_minutes=None, now=NOW,
        reviewer_name=first.display,
    )  # fmt: skip
    renamed = Identity(ISSUER, "248289761001", "alice-cli")
    with pytest.raises(ApprovalServiceError) as refused:
        store.decide(
            created.id, renamed.key, Verdict.APPROVE, comment="", grant_minutes=None, now=NOW,
            reviewer_name=renamed.display,
        )  # fmt: skip
    assert refused.value.status == 409
    again = store.get_request(created.id)
    assert again is not None
    assert again.status is RequestStatus.PENDING
    assert len(again.approvals) == 1


def test_tokens_keep_their_tie_to_a_person(store: ApprovalStore) -> None:
    """A token's OpenID issuer and subject read back; its expired name is no one else's."""
    expires = NOW + timedelta(days=1)
    tied = TokenInfo("alice-cli", Role.REVIEWER, ("security",), NOW, expires, None, ISSUER, "sub-1")
    store.create_token(tied, "h1")
    assert store.token_by_hash("h1") == tied
    later = expires + timedelta(seconds=1)
    with pytest.raises(ApprovalServiceError) as refused:
        store.create_token(TokenInfo("alice-cli", Role.REVIEWER, (), later), "h2")
    assert refused.value.code == "token_name_retired"
    renewed = TokenInfo(
        "alice-cli", Role.REVIEWER, ("security",), later, None, None, ISSUER, "sub-1"
    )
    store.create_token(renewed, "h3")
    assert store.token_by_hash("h3") == renewed


def test_sqlite_file_of_the_previous_schema_is_migrated(tmp_path: Path) -> None:
    """A file written before identities opens; its old decisions show the token name."""
    path = tmp_path / "aegis.db"
    store = open_approval_store(str(path))
    created, _ = store.create_request(_request(approvers=2), NOW)
    store.decide(created.id, "alice", Verdict.APPROVE, comment="", grant_minutes=None, now=NOW)
    store.close()
    with sqlite3.connect(path) as conn:  # back to the schema before identities
        conn.execute("ALTER TABLE aegis_approval_decisions DROP COLUMN reviewer_name")
        conn.execute("ALTER TABLE aegis_tokens DROP COLUMN oidc_issuer")
        conn.execute("ALTER TABLE aegis_tokens DROP COLUMN oidc_subject")
        conn.execute("ALTER TABLE aegis_approval_requests DROP COLUMN why_json")  # version 5's
        conn.execute("ALTER TABLE aegis_grants DROP COLUMN db_expires_at")  # version 7's
        conn.execute("ALTER TABLE aegis_approval_requests DROP COLUMN db_expires_at")  # 8's
        conn.execute("UPDATE aegis_schema_versions SET version = 3 WHERE component = 'approvals'")
    conn.close()
    reopened = open_approval_store(str(path))
    try:
        found = reopened.get_request(created.id)
        assert found is not None
        (decision,) = found.decisions
        assert decision.identity == Identity("", "alice")
        assert decision.identity.display == "alice"
        reopened.create_token(
            TokenInfo("bob", Role.REVIEWER, (), NOW, oidc_issuer=ISSUER, oidc_subject="b"), "hb"
        )
        assert (reopened.token_by_hash("hb") or TokenInfo("x", Role.AGENT)).oidc_subject == "b"
    finally:
        reopened.close()
