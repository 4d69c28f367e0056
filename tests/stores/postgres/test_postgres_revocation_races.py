"""A person revoked on PostgreSQL while they sign in or decide, on real concurrent connections.

What must hold: once `aegis reviewer revoke` commits, the person has no
live inbox session, no approval of theirs counts toward a pending request
and no grant of theirs approves anything, whatever they did at the same
moment. Each test stops the revocation (or the sign-in) at a critical
point by holding a row it needs from a connection of its own, lets the
other side run into it, and releases it; PostgreSQL's ``pg_stat_activity``
says when the store's connections wait for a lock, so nothing sleeps.

Each runs under the database's default isolation level as deployments set
it (``default_transaction_isolation``, for a database or a role): the
store's transactions must not depend on it. Under ``repeatable read`` a
revocation that had waited for a decision did not see it, and left the
approval counting after it committed.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import psycopg
import pytest

from aegis.core.action import Action, action_digest
from aegis.core.approval_request import (
    ApprovalRequest,
    InboxSession,
    RequestStatus,
    Role,
    TokenInfo,
    Verdict,
    request_digest,
)
from aegis.core.risk import RiskLevel
from aegis.errors import ApprovalServiceError
from aegis.stores.approvals import ApprovalStore, new_request_id, open_approval_store

ISSUER = "https://id.example.com"
KIM = f"{ISSUER}#kim"
#: seconds to wait for a connection to reach a lock, or a thread to finish: only a failure waits
PATIENCE = 30.0


class Store:
    """A store whose connections name themselves, and a connection of the test's own."""

    def __init__(self, dsn: str, isolation: str) -> None:
        self.name = f"race-{uuid.uuid4().hex[:10]}"
        # the deployment's default isolation, as its database or role may set it
        spelt = isolation.replace(" ", "\\ ")  # a space inside one option is escaped
        default = quote(f" -cdefault_transaction_isolation={spelt}")
        self.store: ApprovalStore = open_approval_store(
            f"{dsn}{default}&application_name={self.name}"
        )
        self.holder = psycopg.connect(dsn)  # not autocommit: holds what it locks until told
        self._watch = psycopg.connect(dsn, autocommit=True)

    def waiting(self, count: int) -> None:
        """Return once ``count`` of the store's connections wait for a lock."""
        deadline = time.monotonic() + PATIENCE
        while True:
            ((now,),) = self._watch.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE application_name = %s AND wait_event_type = 'Lock'",
                (self.name,),
            ).fetchall()
            if now >= count:
                return
            if time.monotonic() > deadline:
                pytest.fail(f"{count} of the store's connections never waited for a lock")
            time.sleep(0.01)

    def close(self) -> None:
        self.holder.close()
        self._watch.close()
        self.store.close()


class Running:
    """A call on a thread of its own: what it returned, or what it raised."""

    def __init__(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self._outcome: list[Any] = []
        self._thread = threading.Thread(target=self._run, args=(call, args, kwargs), daemon=True)
        self._thread.start()

    def _run(self, call: Callable[..., Any], args: Any, kwargs: Any) -> None:
        try:
            self._outcome.append(call(*args, **kwargs))
        except BaseException as exc:  # handed to the test, which asserts on it
            self._outcome.append(exc)

    def outcome(self) -> Any:
        self._thread.join(PATIENCE)
        assert not self._thread.is_alive(), "the call never finished"
        return self._outcome[0]

    def result(self) -> Any:
        outcome = self.outcome()
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


@pytest.fixture(params=["read committed", "repeatable read", "serializable"])
def race(request: pytest.FixtureRequest, postgres_dsn: str) -> Iterator[Store]:
    """A fresh store under one default isolation level, with kim signed in and a tied token."""
    made = Store(postgres_dsn, request.param)
    store = made.store
    now = datetime.now(UTC)
    store.create_token(
        TokenInfo("kim-cli", Role.REVIEWER, (), now, oidc_issuer=ISSUER, oidc_subject="kim"),
        "h-kim",
    )
    store.create_session(_signed_in("a" * 64, now))
    try:
        yield made
    finally:
        made.close()


def _signed_in(id_hash: str, now: datetime) -> InboxSession:
    identity = {"kind": "oidc", "issuer": ISSUER, "subject": "kim", "name": "Kim", "groups": []}
    return InboxSession(
        id_hash=id_hash,
        csrf="c",
        created_at=now,
        expires_at=now + timedelta(hours=1),
        identity=identity,
    )


def _asked(store: ApprovalStore, session: str, approvers: int) -> ApprovalRequest:
    action = Action("refund", "billing", {"amount": 900})
    now = datetime.now(UTC)
    request, _ = store.create_request(
        ApprovalRequest(
            id=new_request_id(),
            session_id=session,
            requester="bot",
            action=action,
            risk_level=RiskLevel.HIGH,
            matched_rule="refunds",
            reason="",
            approvers=approvers,
            reviewers=(),
            created_at=now,
            expires_at=now + timedelta(hours=1),
            digest=request_digest(action, "bot"),
            action_digest=action_digest(action),
        ),
        now,
    )
    return request


def _kim_decides(store: ApprovalStore, request_id: str, minutes: int | None = None) -> Any:
    return store.decide(
        request_id,
        KIM,
        Verdict.APPROVE,
        comment="",
        grant_minutes=minutes,
        now=datetime.now(UTC),
        reviewer_name="Kim",
        session="a" * 64,
    )


def _revoke(store: ApprovalStore) -> Running:
    return Running(store.revoke_person, ISSUER, "kim", datetime.now(UTC), by="operator:ops")


def test_a_decision_made_while_the_revocation_runs_is_withdrawn_by_it(race: Store) -> None:
    """The revocation holds kim's row and waits at her token; meanwhile she approves a
    two-person request and completes a one-person one with a grant. Once it commits, her
    approval no longer counts, and her grant approves nothing."""
    store = race.store
    pair = _asked(store, "s-pair", approvers=2)
    single = _asked(store, "s-single", approvers=1)
    race.holder.execute("SELECT 1 FROM aegis_tokens WHERE name = 'kim-cli' FOR SHARE")
    revoking = _revoke(store)
    race.waiting(1)
    # Not held up: the revocation has not reached her session yet.
    _kim_decides(store, pair.id)
    _, grant = _kim_decides(store, single.id, minutes=30)
    assert grant is not None
    race.holder.commit()
    assert revoking.result() == (["kim-cli"], 1)
    left = store.get_request(pair.id)
    assert left is not None
    assert (left.status, left.decisions) == (RequestStatus.PENDING, ())
    done = store.get_request(single.id)
    assert done is not None
    assert done.status is RequestStatus.APPROVED  # decided before the revocation committed
    assert store.list_grants(datetime.now(UTC)) == []
    again = _asked(store, "s-single", approvers=1)
    assert (again.status, again.grant_id) == (RequestStatus.PENDING, None)


def test_a_decision_that_reaches_a_revocation_in_progress_is_refused(race: Store) -> None:
    """The revocation has ended kim's session and waits at a request she approved; her
    decision of another, waiting for her session, is refused once it commits."""
    store = race.store
    approved = _asked(store, "s-approved", approvers=2)
    _kim_decides(store, approved.id)
    later = _asked(store, "s-later", approvers=2)
    race.holder.execute(
        "SELECT 1 FROM aegis_approval_requests WHERE id = %s FOR UPDATE", (approved.id,)
    )
    revoking = _revoke(store)
    race.waiting(1)
    deciding = Running(_kim_decides, store, later.id)
    race.waiting(2)
    race.holder.commit()
    assert revoking.result() == (["kim-cli"], 1)
    refused = deciding.outcome()
    assert isinstance(refused, ApprovalServiceError), refused
    assert refused.status == 401
    for request in (approved, later):
        now = store.get_request(request.id)
        assert now is not None
        assert now.decisions == ()


def test_a_sign_in_that_reaches_a_revocation_in_progress_is_refused(race: Store) -> None:
    """The revocation holds kim's row and waits at her token; her new sign-in waits for her
    row and is refused (403) once the revocation commits: no session is kept."""
    store = race.store
    race.holder.execute("SELECT 1 FROM aegis_tokens WHERE name = 'kim-cli' FOR SHARE")
    revoking = _revoke(store)
    race.waiting(1)
    signing_in = Running(store.create_session, _signed_in("b" * 64, datetime.now(UTC)))
    race.waiting(2)
    race.holder.commit()
    assert revoking.result() == (["kim-cli"], 1)
    refused = signing_in.outcome()
    assert isinstance(refused, ApprovalServiceError), refused
    assert (refused.status, refused.code) == (403, "revoked")
    assert store.get_session("b" * 64) is None


def test_a_sign_in_committed_while_the_revocation_waits_is_ended_by_it(race: Store) -> None:
    """kim's sign-in holds her row (stopped at storing its session); the revocation waits
    for it, then ends the session that sign-in made along with the one before."""
    store = race.store
    # A session row of the same id, not yet committed: the sign-in's insert waits for it.
    race.holder.execute(
        "INSERT INTO aegis_inbox_sessions (id_hash, identity, csrf, created_at, expires_at) "
        "VALUES (%s, '{}', 'c', '2026-01-01', '2026-01-01')",
        ("b" * 64,),
    )
    signing_in = Running(store.create_session, _signed_in("b" * 64, datetime.now(UTC)))
    race.waiting(1)
    revoking = _revoke(store)
    race.waiting(2)
    race.holder.rollback()
    signing_in.result()
    assert revoking.result() == (["kim-cli"], 2)
    for id_hash in ("a" * 64, "b" * 64):
        session = store.get_session(id_hash)
        assert session is not None
        assert session.ended_at is not None
