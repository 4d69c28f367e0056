"""The approval store in SQL, shared by the SQLite and PostgreSQL engines.

An engine gives :class:`SqlApprovalStore` two things: a transaction (a
context manager yielding a :class:`Tx`) and its table prefix. Statements are
written once, with ``?`` placeholders and ``{p}`` before each table name;
the engine rewrites them for its driver.

Times are stored as fixed-width ISO 8601 UTC text (see
:func:`~aegis.core.approval_request.iso`), so comparing texts compares times
on both engines alike. The caller's clock gives them, except for audit claims,
which the database's own clock stamps and judges (``_CLOCK``): the hosts of
several service processes need not agree on the time for a claim to hold.

Size: the approval store's SQL, written once for both engines; each method is
one transaction and most of the length is the statements themselves.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import Any, ClassVar, Final, Protocol

from aegis.core.approval_request import (
    REQUEST_SORTS,
    ApprovalRequest,
    Grant,
    InboxSession,
    ListCursor,
    RequestStatus,
    ReviewerDecision,
    Role,
    TokenInfo,
    Verdict,
    action_from_json,
    action_to_json,
    iso,
    parse_time,
)
from aegis.core.explain import Why
from aegis.core.identity import Identity
from aegis.core.risk import RiskLevel
from aegis.errors import ApprovalServiceError, StoreError
from aegis.stores._ids import new_grant_id
from aegis.stores.base import AuditEvent

__all__ = [
    "ANNOUNCED_BY_SERVICE",
    "EVENTS_SCHEMA",
    "GRANT_CLOCK_SCHEMA",
    "IDENTITY_SCHEMA",
    "PEOPLE_SCHEMA",
    "REQUEST_CLOCK_SCHEMA",
    "SCHEMA",
    "SCHEMA_VERSION",
    "SORT_SCHEMA",
    "TERMS_SCHEMA",
    "WHY_SCHEMA",
    "Conflict",
    "SqlApprovalStore",
    "Tx",
]

#: the version of the approval tables, kept in aegis_schema_versions
SCHEMA_VERSION: Final = 9
COMPONENT: Final = "approvals"

#: the tables of version 1, for both engines (``{p}`` is the table prefix)
SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS {p}aegis_approval_requests (
        id TEXT PRIMARY KEY,
        session_id TEXT NOT NULL,
        requester TEXT NOT NULL,
        digest TEXT NOT NULL,
        action_digest TEXT NOT NULL,
        action_json TEXT NOT NULL,
        risk_level TEXT NOT NULL,
        matched_rule TEXT NOT NULL,
        reason TEXT NOT NULL,
        approvers INTEGER NOT NULL,
        reviewer_groups TEXT NOT NULL,
        created_at TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        status TEXT NOT NULL,
        status_reason TEXT NOT NULL,
        approvals INTEGER NOT NULL,
        decided_at TEXT,
        collected_at TEXT,
        grant_id TEXT,
        grant_by TEXT,
        granted TEXT
    )""",
    # One pending request per session and digest: a second post re-attaches.
    """CREATE UNIQUE INDEX IF NOT EXISTS aegis_approval_requests_pending
        ON {p}aegis_approval_requests (session_id, digest) WHERE status = 'pending'""",
    """CREATE INDEX IF NOT EXISTS aegis_approval_requests_due
        ON {p}aegis_approval_requests (status, expires_at)""",
    """CREATE INDEX IF NOT EXISTS aegis_approval_requests_created
        ON {p}aegis_approval_requests (created_at)""",
    """CREATE TABLE IF NOT EXISTS {p}aegis_approval_decisions (
        request_id TEXT NOT NULL,
        reviewer TEXT NOT NULL,
        verdict TEXT NOT NULL,
        comment TEXT NOT NULL,
        at TEXT NOT NULL,
        grant_minutes INTEGER,
        seq INTEGER NOT NULL,
        PRIMARY KEY (request_id, reviewer)
    )""",
    """CREATE TABLE IF NOT EXISTS {p}aegis_tokens (
        name TEXT PRIMARY KEY,
        token_hash TEXT NOT NULL UNIQUE,
        role TEXT NOT NULL,
        groups_json TEXT NOT NULL,
        created_at TEXT NOT NULL,
        expires_at TEXT,
        revoked_at TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS {p}aegis_grants (
        id TEXT PRIMARY KEY,
        session_id TEXT NOT NULL,
        requester TEXT NOT NULL,
        action_type TEXT NOT NULL,
        action_target TEXT NOT NULL,
        matched_rule TEXT NOT NULL,
        granted_by TEXT NOT NULL,
        request_id TEXT NOT NULL,
        created_at TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        revoked_at TEXT
    )""",
    """CREATE INDEX IF NOT EXISTS aegis_grants_scope
        ON {p}aegis_grants (session_id, action_type, action_target)""",
)

#: version 2: the outbox of audit events, written in the transaction of each change
EVENTS_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS {p}aegis_approval_events (
        id TEXT PRIMARY KEY,
        request_id TEXT NOT NULL,
        at TEXT NOT NULL,
        kind TEXT NOT NULL,
        context TEXT NOT NULL,
        claimed_at TEXT,
        audited_at TEXT,
        seq INTEGER NOT NULL
    )""",
    """CREATE INDEX IF NOT EXISTS aegis_approval_events_seq ON {p}aegis_approval_events (seq)""",
    """CREATE INDEX IF NOT EXISTS aegis_approval_events_open
        ON {p}aegis_approval_events (audited_at, seq)""",
)

#: version 3: a grant keeps the terms its givers met, and inbox sessions live on the
#: server (a cookie names one; signing out ends it everywhere). ``{ifnx}`` is
#: ``IF NOT EXISTS`` where the engine knows it for columns (PostgreSQL).
TERMS_SCHEMA: Final = (
    "ALTER TABLE {p}aegis_grants ADD COLUMN {ifnx}approvers INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE {p}aegis_grants ADD COLUMN {ifnx}reviewer_groups TEXT NOT NULL DEFAULT '[]'",
    # Grants given before: the terms of the request they were given on.
    """UPDATE {p}aegis_grants SET
        approvers = COALESCE((SELECT r.approvers FROM {p}aegis_approval_requests r
                              WHERE r.id = {p}aegis_grants.request_id), 0),
        reviewer_groups = COALESCE((SELECT r.reviewer_groups FROM {p}aegis_approval_requests r
                                    WHERE r.id = {p}aegis_grants.request_id), '[]')
        WHERE approvers = 0""",
    """CREATE TABLE IF NOT EXISTS {p}aegis_inbox_sessions (
        id_hash TEXT PRIMARY KEY,
        token_hash TEXT,
        identity TEXT NOT NULL,
        csrf TEXT NOT NULL,
        created_at TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        ended_at TEXT
    )""",
    """CREATE INDEX IF NOT EXISTS aegis_inbox_sessions_expiry
        ON {p}aegis_inbox_sessions (expires_at)""",
)

#: version 4: who decided by identity (the key in ``reviewer``, the display name
#: beside it), and reviewer tokens tied to a person of an OpenID provider.
#: ``{ifnx}`` is ``IF NOT EXISTS`` where the engine knows it for columns (PostgreSQL).
IDENTITY_SCHEMA: Final = (
    "ALTER TABLE {p}aegis_approval_decisions ADD COLUMN {ifnx}reviewer_name TEXT",
    "ALTER TABLE {p}aegis_tokens ADD COLUMN {ifnx}oidc_issuer TEXT",
    "ALTER TABLE {p}aegis_tokens ADD COLUMN {ifnx}oidc_subject TEXT",
)

#: version 5: why a person is asked (the rule's description, the conditions that
#: held, the reason), as the runtime explained it; JSON, NULL for older requests
WHY_SCHEMA: Final = ("ALTER TABLE {p}aegis_approval_requests ADD COLUMN {ifnx}why_json TEXT",)

_REQUEST_COLUMNS: Final = (
    "id, session_id, requester, digest, action_digest, action_json, risk_level, "
    "matched_rule, reason, approvers, reviewer_groups, created_at, expires_at, status, "
    "status_reason, collected_at, grant_id, grant_by, granted, why_json"
)
_GRANT_COLUMNS: Final = (
    "id, session_id, requester, action_type, action_target, matched_rule, granted_by, "
    "request_id, created_at, expires_at, revoked_at, approvers, reviewer_groups"
)
_SESSION_COLUMNS: Final = "id_hash, token_hash, identity, csrf, created_at, expires_at, ended_at"
_TOKEN_COLUMNS: Final = (
    "name, role, groups_json, created_at, expires_at, revoked_at, oidc_issuer, oidc_subject"
)


#: a request's risk as a number, for the order "highest risk first"
_RISK_RANK: Final = (
    "(CASE risk_level "
    + " ".join(f"WHEN '{level.name}' THEN {int(level)}" for level in RiskLevel)
    + " ELSE 0 END)"
)
#: ORDER BY of each sort; the last key is the id, so the order is total
_ORDERS: Final = {
    "newest": "created_at DESC, id DESC",
    "expiring": "expires_at ASC, id ASC",
    "risk": f"{_RISK_RANK} DESC, created_at DESC, id DESC",
}

#: version 6: the pending list sorted "highest risk first" reads an index in its
#: order instead of sorting every pending request; the indexed expression is
#: the sort's own, word for word, as both engines need to match it
SORT_SCHEMA: Final = (
    "CREATE INDEX IF NOT EXISTS aegis_approval_requests_risk ON {p}aegis_approval_requests "
    f"(status, ({_RISK_RANK}), created_at, id)",
)


#: version 7: a grant's end by the database's clock as well, stamped as it is given: the
#: host an agent asks through may keep a clock behind the giver's, and must not let a
#: grant cover requests after it ended (NULL for grants given before: their end is
#: judged by the caller's clock alone)
GRANT_CLOCK_SCHEMA: Final = ("ALTER TABLE {p}aegis_grants ADD COLUMN {ifnx}db_expires_at TEXT",)

#: version 8: a request's expiry by the database's clock as well, stamped as it is
#: asked: a reviewer deciding through a host whose clock runs behind the asking
#: host's must not decide it after it expired (NULL for requests asked before)
REQUEST_CLOCK_SCHEMA: Final = (
    "ALTER TABLE {p}aegis_approval_requests ADD COLUMN {ifnx}db_expires_at TEXT",
)


#: version 9: the people of an OpenID provider an operator revoked (``aegis reviewer
#: revoke``), who may not sign in again nor be given a token until reinstated. A row
#: per person ever signed in or revoked: each sign-in and each revocation takes its
#: row's lock first, so a sign-in racing a revocation either comes first (and its
#: session is ended by it) or sees it (and is refused).
PEOPLE_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS {p}aegis_people (
        person TEXT PRIMARY KEY,
        revoked_at TEXT,
        revoked_by TEXT,
        touched_at TEXT NOT NULL
    )""",
)

#: events of changes that no service makes (the command line's revocations): kept in
#: the outbox once audited, until a service takes them to tell its subscribers
ANNOUNCED_BY_SERVICE: Final = ("approval.withdrawn",)


class Conflict(Exception):
    """A unique constraint refused a row (raised by an engine's :class:`Tx`)."""


class Tx(Protocol):
    """One open transaction of an engine."""

    def all(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a statement and return its rows."""
        ...

    def run(self, sql: str, args: Sequence[Any] = ()) -> int:
        """Run a statement and return how many rows it changed.

        Raises:
            Conflict: a unique constraint refused the change.
        """
        ...


def _not_found(request_id: str) -> ApprovalServiceError:
    return ApprovalServiceError(
        f"no approval request {request_id!r}; check the id (GET /api/v1/approvals lists them)",
        status=404,
        code="not_found",
    )


def _expired_error(request: ApprovalRequest) -> ApprovalServiceError:
    return ApprovalServiceError(
        f"approval request {request.id} expired at {iso(request.expires_at)}; "
        "it can no longer be decided",
        status=409,
        code="expired",
    )


def not_pending(request: ApprovalRequest) -> ApprovalServiceError:
    """The 409 for a change to a request that is no longer pending."""
    return ApprovalServiceError(
        f"approval request {request.id} is {request.status.value}, no longer pending; "
        "nothing was changed",
        status=409,
        code="not_pending",
    )


def _time(text: str | None) -> datetime | None:
    return None if text is None else parse_time(text)


class SqlApprovalStore:
    """:class:`~aegis.stores.approvals.ApprovalStore` over an engine's transactions."""

    @staticmethod
    def _event(tx: Tx, request_id: str, kind: str, now: datetime, **context: Any) -> None:
        """Queue an audit event in the same transaction as the change it describes."""
        # Numbered in commit order (SQLite serialises writers; in PostgreSQL two
        # unrelated changes committing at once may share a number).
        tx.run(
            "INSERT INTO {p}aegis_approval_events (id, request_id, at, kind, context, seq) "
            "SELECT ?, ?, ?, ?, ?, COALESCE(MAX(seq), 0) + 1 FROM {p}aegis_approval_events",
            (secrets.token_hex(12), request_id, iso(now), kind, json.dumps(context)),
        )

    #: the engine's transaction factory; ``write`` transactions lock early
    def _transaction(self, *, write: bool) -> AbstractContextManager[Tx]:
        raise NotImplementedError

    # -- rows -------------------------------------------------------------------

    def _request(self, tx: Tx, row: tuple[Any, ...]) -> ApprovalRequest:
        decisions = tx.all(
            "SELECT reviewer, verdict, comment, at, grant_minutes, reviewer_name "
            "FROM {p}aegis_approval_decisions WHERE request_id = ? ORDER BY seq",
            (row[0],),
        )
        return _request_of(row, decisions)

    def _fetch(self, tx: Tx, request_id: str) -> ApprovalRequest | None:
        rows = tx.all(
            f"SELECT {_REQUEST_COLUMNS} FROM {{p}}aegis_approval_requests WHERE id = ?",
            (request_id,),
        )
        return self._request(tx, rows[0]) if rows else None

    def _must(self, tx: Tx, request_id: str) -> ApprovalRequest:
        request = self._fetch(tx, request_id)
        if request is None:
            raise _not_found(request_id)
        return request

    # -- requests ---------------------------------------------------------------

    def create_request(
        self, request: ApprovalRequest, now: datetime
    ) -> tuple[ApprovalRequest, bool]:
        """See :meth:`aegis.stores.approvals.ApprovalStore.create_request`."""
        for attempt in range(3):
            try:
                with self._transaction(write=True) as tx:
                    return self._create(tx, request, now)
            except Conflict:
                # Another process inserted the same pending request between
                # our look and our insert: look again, now it is there.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _create(
        self, tx: Tx, request: ApprovalRequest, now: datetime
    ) -> tuple[ApprovalRequest, bool]:
        rows = tx.all(
            f"SELECT {_REQUEST_COLUMNS} FROM {{p}}aegis_approval_requests "
            f"WHERE session_id = ? AND digest = ? AND status = 'pending' AND {self._unexpired()}",
            (request.session_id, request.digest, iso(now), 0.0),
        )
        if rows:
            twin = self._request(tx, rows[0])
            if twin.terms_at_least(request.approvers, request.reviewers, request.expires_at):
                return twin, False
            # A weaker twin (filed before the policy was tightened, or by a
            # dead process under other terms) must not carry this ask: it
            # ends here, and the new request with the stricter terms replaces it.
            why = f"superseded by {request.id}, which asks for stricter terms"
            tx.run(
                "UPDATE {p}aegis_approval_requests SET status = 'cancelled', "
                "status_reason = ?, decided_at = ? WHERE id = ? AND status = 'pending'",
                (why, iso(now), twin.id),
            )
            self._event(tx, twin.id, "approval.cancelled", now, reason=why)
        # A pending twin past its expiry still holds the unique index; the
        # sweeper expires and audits it, a new request must not wait for it.
        twins = tx.all(
            "SELECT id FROM {p}aegis_approval_requests "
            f"WHERE session_id = ? AND digest = ? AND status = 'pending' AND {self._expired()}",
            (request.session_id, request.digest, iso(now), 0.0),
        )
        for (twin,) in twins:
            tx.run(
                "UPDATE {p}aegis_approval_requests SET status = 'expired', "
                "status_reason = 'no decision before it expired', decided_at = ? "
                "WHERE id = ? AND status = 'pending'",
                (iso(now), twin),
            )
            self._event(tx, twin, "approval.expired", now)
        grant = self._covering_grant(tx, request, now)
        if grant is not None:
            request = ApprovalRequest(
                **{
                    **_fields(request),
                    "status": RequestStatus.APPROVED,
                    "grant_id": grant.id,
                    "grant_by": grant.granted_by,
                    "status_reason": f"approved by grant {grant.id} "
                    f"(from {', '.join(grant.granted_by)})",
                }
            )
        tx.run(
            f"INSERT INTO {{p}}aegis_approval_requests ({_REQUEST_COLUMNS}, approvals, "
            f"decided_at, db_expires_at) VALUES ({', '.join('?' * 22)}, {self._CLOCK})",
            (
                request.id,
                request.session_id,
                request.requester,
                request.digest,
                request.action_digest,
                json.dumps(action_to_json(request.action), sort_keys=True, ensure_ascii=False),
                request.risk_level.name,
                request.matched_rule,
                request.reason,
                request.approvers,
                json.dumps(list(request.reviewers)),
                iso(request.created_at),
                iso(request.expires_at),
                request.status.value,
                request.status_reason,
                None,
                request.grant_id,
                json.dumps(list(request.grant_by)) if request.grant_id else None,
                None,
                None if request.why is None else json.dumps(request.why.to_json()),
                0,
                iso(now) if grant is not None else None,
                -(request.expires_at - now).total_seconds(),
            ),
        )
        self._event(tx, request.id, "approval.requested", now)
        return self._must(tx, request.id), True

    def _covering_grant(self, tx: Tx, request: ApprovalRequest, now: datetime) -> Grant | None:
        rows = tx.all(
            f"SELECT {_GRANT_COLUMNS} FROM {{p}}aegis_grants WHERE session_id = ? "
            "AND action_type = ? AND action_target = ? AND matched_rule = ? AND requester = ? "
            f"AND {self._live_grant()} ORDER BY created_at",
            (
                request.session_id,
                request.action.type,
                request.action.target,
                request.matched_rule,
                request.requester,
                iso(now),
                0.0,
            ),
        )
        # Only a grant whose givers met this request's terms covers it.
        for row in rows:
            grant = _grant_of(row)
            if grant.covers(request.approvers, request.reviewers):
                return grant
        return None

    @classmethod
    def _unexpired(cls) -> str:
        """The test that a request or grant has not expired, given the caller's time and ``0.0``.

        Expired by either clock is expired: the caller's, and the database's
        for rows written since it is kept (versions 7 and 8), so a host whose
        clock runs behind the one that set the expiry cannot stretch it.
        """
        return f"expires_at > ? AND (db_expires_at IS NULL OR db_expires_at > {cls._CLOCK})"

    @classmethod
    def _expired(cls) -> str:
        """The negation of :meth:`_unexpired`, given the same arguments."""
        return f"(expires_at <= ? OR db_expires_at <= {cls._CLOCK})"

    @classmethod
    def _live_grant(cls) -> str:
        """The test that a grant is active, given the caller's time and ``0.0``."""
        return f"revoked_at IS NULL AND {cls._unexpired()}"

    def get_request(self, request_id: str) -> ApprovalRequest | None:
        """See :meth:`aegis.stores.approvals.ApprovalStore.get_request`."""
        with self._transaction(write=False) as tx:
            return self._fetch(tx, request_id)

    #: the engine's test that the column's JSON array holds the argument as an element
    _HOLDS: ClassVar[str] = "EXISTS (SELECT 1 FROM json_each({column}) WHERE value = ?)"
    #: the database's clock less the argument's seconds, as :func:`iso` text
    #: (milliseconds are SQLite's finest); audit claims are stamped and judged by it
    _CLOCK: ClassVar[str] = "strftime('%Y-%m-%dT%H:%M:%f000+00:00', julianday('now') - ? / 86400.0)"

    @classmethod
    def _where_clause(
        cls,
        status: RequestStatus | None,
        requester: str | None,
        session_id: str | None,
        before: ListCursor | tuple[datetime, str] | None,
        *,
        risk: Collection[RiskLevel] | None = None,
        rule: str | None = None,
        groups: Collection[str] | None = None,
    ) -> tuple[str, list[Any]]:
        """The WHERE of a listing (and of its count) with these filters, and its arguments."""
        clauses: list[str] = []
        args: list[Any] = []
        if isinstance(before, tuple):
            before = ListCursor("newest", before[0], before[1])
        if before is not None:
            # Keyset paging in the list's own order: stable while new ones arrive.
            if before.sort == "expiring":
                clauses.append("(expires_at > ? OR (expires_at = ? AND id > ?))")
                args.extend((iso(before.at), iso(before.at), before.id))
            elif before.sort == "risk":
                clauses.append(
                    f"({_RISK_RANK} < ? OR ({_RISK_RANK} = ? AND "
                    "(created_at < ? OR (created_at = ? AND id < ?))))"
                )
                rank = int(before.risk)
                args.extend((rank, rank, iso(before.at), iso(before.at), before.id))
            else:
                clauses.append("(created_at < ? OR (created_at = ? AND id < ?))")
                args.extend((iso(before.at), iso(before.at), before.id))
        if status is not None:
            clauses.append("status = ?")
            args.append(status.value)
        if requester is not None:
            clauses.append("requester = ?")
            args.append(requester)
        if session_id is not None:
            clauses.append("session_id = ?")
            args.append(session_id)
        if risk is not None:
            levels = sorted({RiskLevel(level).name for level in risk})
            if not levels:
                clauses.append("1 = 0")
            else:
                clauses.append(f"risk_level IN ({', '.join('?' * len(levels))})")
                args.extend(levels)
        if rule is not None:
            clauses.append("matched_rule = ?")
            args.append(rule)
        if groups is not None:
            # Open to anyone, or naming one of the groups as a whole element of
            # the JSON array: never a match inside its text, which a name holding
            # a quote, a backslash or ", " could make ("a\"ops" within "x\"a\"ops").
            either = ["reviewer_groups = '[]'"]
            for group in sorted(set(groups)):
                either.append(cls._HOLDS.format(column="reviewer_groups"))
                args.append(group)
            clauses.append(f"({' OR '.join(either)})")
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args

    def list_requests(
        self,
        status: RequestStatus | None = None,
        *,
        requester: str | None = None,
        session_id: str | None = None,
        risk: Collection[RiskLevel] | None = None,
        rule: str | None = None,
        groups: Collection[str] | None = None,
        sort: str = "newest",
        limit: int = 100,
        before: ListCursor | tuple[datetime, str] | None = None,
    ) -> list[ApprovalRequest]:
        """See :meth:`aegis.stores.approvals.ApprovalStore.list_requests`."""
        order = _ORDERS.get(sort)
        if order is None:
            raise ValueError(f"sort {sort!r} is not one of {', '.join(REQUEST_SORTS)}")
        if isinstance(before, ListCursor) and before.sort != sort:
            raise ValueError(f"a cursor of a list sorted by {before.sort} cannot page by {sort}")
        where, args = self._where_clause(
            status, requester, session_id, before, risk=risk, rule=rule, groups=groups
        )
        with self._transaction(write=False) as tx:
            rows = tx.all(
                f"SELECT {_REQUEST_COLUMNS} FROM {{p}}aegis_approval_requests{where} "
                f"ORDER BY {order} LIMIT ?",
                (*args, max(1, min(limit, 1000))),
            )
            return [self._request(tx, row) for row in rows]

    def count_requests(
        self,
        status: RequestStatus | None = None,
        *,
        requester: str | None = None,
        session_id: str | None = None,
        risk: Collection[RiskLevel] | None = None,
        rule: str | None = None,
        groups: Collection[str] | None = None,
        before: ListCursor | tuple[datetime, str] | None = None,
    ) -> int:
        """See :meth:`aegis.stores.approvals.ApprovalStore.count_requests`."""
        where, args = self._where_clause(
            status, requester, session_id, before, risk=risk, rule=rule, groups=groups
        )
        with self._transaction(write=False) as tx:
            rows = tx.all(f"SELECT COUNT(*) FROM {{p}}aegis_approval_requests{where}", args)
            return int(rows[0][0])

    #: the statement answering one row: the pending requests and who approved each, as
    #: one text (SQLite) or its digest (PostgreSQL, so that one short row crosses the
    #: network); in the subquery's order where the engine's aggregate takes none
    _PENDING_DIGEST: ClassVar[str] = (
        "SELECT group_concat(line, char(10)) FROM (SELECT r.id || ' ' || "
        "COALESCE(d.reviewer, '') AS line FROM {p}aegis_approval_requests r "
        "LEFT JOIN {p}aegis_approval_decisions d ON d.request_id = r.id "
        "WHERE r.status = 'pending' ORDER BY r.id, d.reviewer) AS pending"
    )

    def pending_digest(self) -> str:
        """See :meth:`aegis.stores.approvals.ApprovalStore.pending_digest`."""
        with self._transaction(write=False) as tx:
            ((text,),) = tx.all(self._PENDING_DIGEST)
        if not text:
            return ""
        return hashlib.blake2b(str(text).encode(), digest_size=16).hexdigest()

    def decide(
        self,
        request_id: str,
        reviewer: str,
        verdict: Verdict,
        *,
        comment: str,
        grant_minutes: int | None,
        now: datetime,
        reviewer_name: str = "",
        token: str | None = None,
        session: str | None = None,
    ) -> tuple[ApprovalRequest, Grant | None]:
        """See :meth:`aegis.stores.approvals.ApprovalStore.decide`."""
        stamp = iso(now)
        with self._transaction(write=True) as tx:
            self._check_standing(tx, token, session, now)
            request = self._must(tx, request_id)
            if request.status is not RequestStatus.PENDING:
                raise not_pending(request)
            if request.is_expired_at(now):
                raise _expired_error(request)
            if verdict is Verdict.DENY:
                changed = tx.run(
                    "UPDATE {p}aegis_approval_requests SET status = 'denied', decided_at = ?, "
                    "status_reason = ? WHERE id = ? AND status = 'pending' "
                    f"AND {self._unexpired()}",
                    (stamp, f"denied by {reviewer}", request_id, stamp, 0.0),
                )
            else:
                # The decisive step: only a pending, unexpired row changes, so
                # of two reviewers racing one request exactly one wins. It
                # also locks the row, so the decisions below get their order.
                changed = tx.run(
                    "UPDATE {p}aegis_approval_requests SET approvals = approvals + 1, "
                    "status = CASE WHEN approvals + 1 >= approvers THEN 'approved' "
                    "ELSE 'pending' END, "
                    "decided_at = CASE WHEN approvals + 1 >= approvers THEN ? ELSE NULL END "
                    f"WHERE id = ? AND status = 'pending' AND {self._unexpired()}",
                    (stamp, request_id, stamp, 0.0),
                )
            if changed != 1:
                request = self._must(tx, request_id)
                if request.status is RequestStatus.PENDING:
                    # Pending, yet past its expiry by the database's clock.
                    raise _expired_error(request)
                raise not_pending(request)
            try:
                tx.run(
                    "INSERT INTO {p}aegis_approval_decisions "
                    "(request_id, reviewer, verdict, comment, at, grant_minutes, reviewer_name, "
                    "seq) SELECT ?, ?, ?, ?, ?, ?, ?, COALESCE(MAX(seq), 0) + 1 "
                    "FROM {p}aegis_approval_decisions WHERE request_id = ?",
                    (
                        request_id,
                        reviewer,
                        verdict.value,
                        comment,
                        stamp,
                        grant_minutes,
                        reviewer_name or None,
                        request_id,
                    ),
                )
            except Conflict:
                # The whole transaction rolls back: the update above never happened.
                raise ApprovalServiceError(
                    f"{reviewer} has already decided approval request {request_id}",
                    status=409,
                    code="already_decided",
                ) from None
            request = self._must(tx, request_id)
            self._event(
                tx,
                request_id,
                "approval.decided",
                now,
                reviewer=reviewer,
                reviewer_name=reviewer_name or reviewer,
                verdict=verdict.value,
                comment=comment,
                status=request.status.value,
                approved_by=[d.reviewer for d in request.approvals],
                approved_by_names=[d.identity.display for d in request.approvals],
            )
            grant = None
            if request.status is RequestStatus.APPROVED:
                grant = self._grant_from(tx, request, now)
            if grant is not None:
                self._event(
                    tx,
                    request_id,
                    "grant.created",
                    now,
                    grant=grant.id,
                    granted_by=list(grant.granted_by),
                    expires_at=iso(grant.expires_at),
                )
            return (self._must(tx, request_id) if grant else request), grant

    #: the engine's clause that locks the rows a SELECT reads against changes until
    #: commit ("" where a write transaction locks the whole database: SQLite)
    _LOCK_SHARED: ClassVar[str] = ""

    def _check_standing(
        self, tx: Tx, token: str | None, session: str | None, now: datetime
    ) -> None:
        """Refuse (401) unless the decision's token and inbox session still hold.

        Read in the decision's transaction, with the rows locked against a
        revocation until it commits: a revocation either commits first, and
        the decision is refused here, or waits for the decision to commit,
        and then finds its approval and withdraws it. Checked by the caller
        before this, a revocation committing in between would find nothing
        to withdraw, and the approval would count.
        """
        if token is not None:
            rows = tx.all(
                f"SELECT revoked_at, expires_at FROM {{p}}aegis_tokens WHERE name = ?"
                f"{self._LOCK_SHARED}",
                (token,),
            )
            if not rows or rows[0][0] is not None or (rows[0][1] and rows[0][1] <= iso(now)):
                state = "unknown" if not rows else "revoked" if rows[0][0] else "expired"
                raise ApprovalServiceError(
                    f"the token {token!r} is {state}; nothing was decided",
                    status=401,
                    code="unauthorized",
                )
        if session is not None:
            rows = tx.all(
                "SELECT ended_at, expires_at FROM {p}aegis_inbox_sessions WHERE id_hash = ?"
                f"{self._LOCK_SHARED}",
                (session,),
            )
            if not rows or rows[0][0] is not None or rows[0][1] <= iso(now):
                raise ApprovalServiceError(
                    "the inbox session has ended (signed out or revoked); nothing was decided",
                    status=401,
                    code="unauthorized",
                )

    def _grant_from(self, tx: Tx, request: ApprovalRequest, now: datetime) -> Grant | None:
        minutes = [d.grant_minutes for d in request.approvals]
        if not minutes or any(m is None for m in minutes):
            return None  # every approver must agree to let later ones pass unasked
        shortest = min(m for m in minutes if m is not None)
        grant = Grant(
            id=new_grant_id(),
            session_id=request.session_id,
            requester=request.requester,
            action_type=request.action.type,
            action_target=request.action.target,
            matched_rule=request.matched_rule,
            granted_by=tuple(d.reviewer for d in request.approvals),
            request_id=request.id,
            created_at=now,
            expires_at=now + timedelta(minutes=shortest),
            approvers=len(request.approvals),
            reviewers=request.reviewers,
        )
        tx.run(
            f"INSERT INTO {{p}}aegis_grants ({_GRANT_COLUMNS}, db_expires_at) "
            f"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, {self._CLOCK})",
            (
                grant.id,
                grant.session_id,
                grant.requester,
                grant.action_type,
                grant.action_target,
                grant.matched_rule,
                json.dumps(list(grant.granted_by)),
                grant.request_id,
                iso(grant.created_at),
                iso(grant.expires_at),
                None,
                grant.approvers,
                json.dumps(list(grant.reviewers)),
                -60.0 * shortest,
            ),
        )
        tx.run(
            "UPDATE {p}aegis_approval_requests SET granted = ? WHERE id = ?",
            (grant.id, request.id),
        )
        return grant

    def collect(self, request_id: str, now: datetime) -> ApprovalRequest:
        """See :meth:`aegis.stores.approvals.ApprovalStore.collect`."""
        with self._transaction(write=True) as tx:
            changed = tx.run(
                "UPDATE {p}aegis_approval_requests SET collected_at = ? "
                "WHERE id = ? AND status = 'approved' AND collected_at IS NULL",
                (iso(now), request_id),
            )
            request = self._must(tx, request_id)
            if changed == 1:
                if len(request.approvals) < request.approvers and request.grant_id is None:
                    # Approved without enough recorded approvals: the row was edited.
                    raise ApprovalServiceError(
                        f"approval request {request_id} is marked approved but holds "
                        f"{len(request.approvals)} of {request.approvers} approvals and no "
                        "grant; it was edited outside Aegis and is not used",
                        status=409,
                        code="inconsistent",
                    )
                self._event(tx, request_id, "approval.collected", now)
                return request
            if request.status is RequestStatus.APPROVED:
                raise ApprovalServiceError(
                    f"approval request {request_id} was collected already at "
                    f"{iso(request.collected_at or now)}; an approval is used once",
                    status=409,
                    code="already_collected",
                )
            raise ApprovalServiceError(
                f"approval request {request_id} is {request.status.value}, not approved; "
                "there is nothing to collect",
                status=409,
                code="not_approved",
            )

    def cancel(self, request_id: str, reason: str, now: datetime) -> ApprovalRequest:
        """See :meth:`aegis.stores.approvals.ApprovalStore.cancel`."""
        with self._transaction(write=True) as tx:
            changed = tx.run(
                "UPDATE {p}aegis_approval_requests SET status = 'cancelled', "
                "status_reason = ?, decided_at = ? WHERE id = ? AND status = 'pending'",
                (reason, iso(now), request_id),
            )
            request = self._must(tx, request_id)
            if changed != 1:
                raise not_pending(request)
            self._event(tx, request_id, "approval.cancelled", now, reason=reason)
            return request

    def expire_due(self, now: datetime) -> list[ApprovalRequest]:
        """See :meth:`aegis.stores.approvals.ApprovalStore.expire_due`."""
        stamp = iso(now)
        with self._transaction(write=False) as tx:
            due = [
                row[0]
                for row in tx.all(
                    "SELECT id FROM {p}aegis_approval_requests "
                    f"WHERE status = 'pending' AND {self._expired()} "
                    "ORDER BY expires_at LIMIT 500",
                    (stamp, 0.0),
                )
            ]
        expired = []
        for request_id in due:
            with self._transaction(write=True) as tx:
                # Conditional: of several service processes, one expires each request.
                changed = tx.run(
                    "UPDATE {p}aegis_approval_requests SET status = 'expired', "
                    "status_reason = 'no decision before it expired', decided_at = ? "
                    f"WHERE id = ? AND status = 'pending' AND {self._expired()}",
                    (stamp, request_id, stamp, 0.0),
                )
                if changed == 1:
                    self._event(tx, request_id, "approval.expired", now)
                    expired.append(self._must(tx, request_id))
        return expired

    # -- the audit outbox ---------------------------------------------------------

    def pending_events(self, stale_after: timedelta, limit: int = 100) -> list[AuditEvent]:
        """See :meth:`aegis.stores.approvals.ApprovalStore.pending_events`."""
        with self._transaction(write=False) as tx:
            rows = tx.all(
                "SELECT id, request_id, at, kind, context FROM {p}aegis_approval_events "
                "WHERE audited_at IS NULL "
                f"AND (claimed_at IS NULL OR claimed_at < {self._CLOCK}) "
                "ORDER BY seq, at LIMIT ?",
                (stale_after.total_seconds(), limit),
            )
        return [
            AuditEvent(row[0], row[1], parse_time(row[2]), row[3], json.loads(row[4]))
            for row in rows
        ]

    def claim_event(self, event_id: str, stale_after: timedelta) -> bool:
        """See :meth:`aegis.stores.approvals.ApprovalStore.claim_event`."""
        # Stamped and judged by the database's clock alone: service processes
        # on hosts whose clocks disagree by more than ``stale_after`` would
        # otherwise take each other's fresh claims and write records twice.
        with self._transaction(write=True) as tx:
            return (
                tx.run(
                    f"UPDATE {{p}}aegis_approval_events SET claimed_at = {self._CLOCK} "
                    "WHERE id = ? AND audited_at IS NULL "
                    f"AND (claimed_at IS NULL OR claimed_at < {self._CLOCK})",
                    (0.0, event_id, stale_after.total_seconds()),
                )
                == 1
            )

    def finish_event(self, event_id: str, now: datetime, *, audited: bool) -> None:
        """See :meth:`aegis.stores.approvals.ApprovalStore.finish_event`."""
        with self._transaction(write=True) as tx:
            if audited:
                # Its record is in the trail now: the outbox keeps only what is owed,
                # and the changes no service made, until a service announces them.
                tx.run(
                    "UPDATE {p}aegis_approval_events SET audited_at = ?, claimed_at = NULL "
                    f"WHERE id = ? AND kind IN ({', '.join('?' * len(ANNOUNCED_BY_SERVICE))})",
                    (iso(now), event_id, *ANNOUNCED_BY_SERVICE),
                )
                tx.run(
                    "DELETE FROM {p}aegis_approval_events WHERE id = ? AND audited_at IS NULL",
                    (event_id,),
                )
            else:
                tx.run(
                    "UPDATE {p}aegis_approval_events SET claimed_at = NULL WHERE id = ?",
                    (event_id,),
                )

    def take_announcements(self, limit: int = 100) -> list[AuditEvent]:
        """See :meth:`aegis.stores.approvals.ApprovalStore.take_announcements`."""
        with self._transaction(write=True) as tx:
            # DELETE ... RETURNING: of several services taking at once, one gets each.
            rows = tx.all(
                "DELETE FROM {p}aegis_approval_events WHERE id IN (SELECT id FROM "
                "{p}aegis_approval_events WHERE audited_at IS NOT NULL ORDER BY seq LIMIT ?) "
                "RETURNING id, request_id, at, kind, context, seq",
                (limit,),
            )
        return [
            AuditEvent(row[0], row[1], parse_time(row[2]), row[3], json.loads(row[4]))
            for row in sorted(rows, key=lambda row: (row[5], row[2]))
        ]

    # -- tokens -----------------------------------------------------------------

    def create_token(self, info: TokenInfo, token_hash: str) -> None:
        """See :meth:`aegis.stores.approvals.ApprovalStore.create_token`."""
        created = info.created_at
        if created is None:
            raise ValueError("a token needs its creation time")
        values = (
            token_hash,
            str(info.role),
            json.dumps(list(info.groups)),
            iso(created),
            None if info.expires_at is None else iso(info.expires_at),
            info.oidc_issuer,
            info.oidc_subject,
        )
        with self._transaction(write=True) as tx:
            if info.oidc_subject is not None:
                self._refuse_tied_to_revoked(tx, info, created)
            rows = tx.all(
                f"SELECT {_TOKEN_COLUMNS} FROM {{p}}aegis_tokens WHERE name = ?", (info.name,)
            )
            if rows:
                _check_renewal(_token_of(rows[0]), info, created)
                # An expired token renewed by its holder: same name, role and person.
                tx.run(
                    "UPDATE {p}aegis_tokens SET token_hash = ?, role = ?, groups_json = ?, "
                    "created_at = ?, expires_at = ?, oidc_issuer = ?, oidc_subject = ?, "
                    "revoked_at = NULL WHERE name = ?",
                    (*values, info.name),
                )
            else:
                tx.run(
                    "INSERT INTO {p}aegis_tokens (token_hash, role, groups_json, created_at, "
                    "expires_at, oidc_issuer, oidc_subject, name) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (*values, info.name),
                )

    def _refuse_tied_to_revoked(self, tx: Tx, info: TokenInfo, now: datetime) -> None:
        """Refuse a token tied to a person who stands revoked: it would speak for them."""
        doing = "no token may speak for them"
        if info.oidc_issuer:
            person = Identity(info.oidc_issuer, info.oidc_subject or "")
            self._refuse_revoked(tx, person, now, doing)
            return
        # Tied to a subject at any issuer (made before the issuer was required).
        for (key,) in tx.all("SELECT person FROM {p}aegis_people WHERE revoked_at IS NOT NULL"):
            if info.speaks_for(str(key)):
                self._refuse_revoked(tx, Identity.from_key(str(key)), now, doing)

    def token_by_hash(self, token_hash: str) -> TokenInfo | None:
        """See :meth:`aegis.stores.approvals.ApprovalStore.token_by_hash`."""
        with self._transaction(write=False) as tx:
            rows = tx.all(
                f"SELECT {_TOKEN_COLUMNS} FROM {{p}}aegis_tokens WHERE token_hash = ?",
                (token_hash,),
            )
        return _token_of(rows[0]) if rows else None

    def list_tokens(self) -> list[TokenInfo]:
        """See :meth:`aegis.stores.approvals.ApprovalStore.list_tokens`."""
        with self._transaction(write=False) as tx:
            rows = tx.all(f"SELECT {_TOKEN_COLUMNS} FROM {{p}}aegis_tokens ORDER BY name")
        return [_token_of(row) for row in rows]

    def revoke_token(self, name: str, now: datetime, *, by: str = "") -> bool:
        """See :meth:`aegis.stores.approvals.ApprovalStore.revoke_token`."""
        with self._transaction(write=True) as tx:
            if (
                tx.run(
                    "UPDATE {p}aegis_tokens SET revoked_at = ? "
                    "WHERE name = ? AND revoked_at IS NULL",
                    (iso(now), name),
                )
                != 1
            ):
                return False
            rows = tx.all(f"SELECT {_TOKEN_COLUMNS} FROM {{p}}aegis_tokens WHERE name = ?", (name,))
            token = _token_of(rows[0])
            # A token tied to no person decided as its name; one tied to a person
            # as that person, whose key speaks_for matches.
            named = None if token.oidc_subject else token.name
            withdrawn = self._withdraw_approvals(tx, token.speaks_for, named, now, token=token.name)
            # A role this version does not know may have given grants: ended too.
            if token.known_role in {Role.REVIEWER, None}:
                ending = f"{by or 'an operator'} (token {name} revoked)"
                self._end_grants(tx, token.speaks_for, now, ending, token=token.name)
            person = (
                Identity(token.oidc_issuer or "", token.oidc_subject).key
                if token.oidc_subject
                else None
            )
            self._event(
                tx,
                "",
                "token.revoked",
                now,
                token=token.name,
                role=str(token.role),
                person=person,
                by=by,
                withdrawn=withdrawn,
            )
            return True

    def revoke_person(
        self, issuer: str, subject: str, now: datetime, *, by: str = ""
    ) -> tuple[list[str], int]:
        """See :meth:`aegis.stores.approvals.ApprovalStore.revoke_person`."""
        person = Identity(issuer, subject)
        with self._transaction(write=True) as tx:
            # The person's row first, as a sign-in and a token tied to them take it:
            # from here on neither may start, and those before are ended below.
            self._hold_person(tx, person, now)
            tx.run(
                "UPDATE {p}aegis_people SET revoked_at = ?, revoked_by = ? WHERE person = ?",
                (iso(now), by, person.key),
            )
            # Tokens, then sessions, then requests: the order a decision locks them in.
            tokens = [
                _token_of(row)
                for row in tx.all(
                    f"SELECT {_TOKEN_COLUMNS} FROM {{p}}aegis_tokens "
                    "WHERE oidc_subject = ? AND revoked_at IS NULL ORDER BY name",
                    (subject,),
                )
            ]
            revoked = [t.name for t in tokens if t.speaks_for(person.key)]
            for name in revoked:
                tx.run(
                    "UPDATE {p}aegis_tokens SET revoked_at = ? "
                    "WHERE name = ? AND revoked_at IS NULL",
                    (iso(now), name),
                )
            ended = 0
            for id_hash, identity in tx.all(
                "SELECT id_hash, identity FROM {p}aegis_inbox_sessions "
                "WHERE ended_at IS NULL AND token_hash IS NULL"
            ):
                if _signed_in_as(identity, person):
                    ended += tx.run(
                        "UPDATE {p}aegis_inbox_sessions SET ended_at = ? "
                        "WHERE id_hash = ? AND ended_at IS NULL",
                        (iso(now), id_hash),
                    )
            withdrawn = self._withdraw_approvals(
                tx, lambda key: Identity.from_key(key) == person, None, now, person=person.key
            )
            self._end_grants(
                tx,
                lambda key: Identity.from_key(key) == person,
                now,
                f"{by or 'an operator'} (reviewer {person.key} revoked)",
                person=person.key,
            )
            self._event(
                tx,
                "",
                "reviewer.revoked",
                now,
                person=person.key,
                by=by,
                tokens=revoked,
                sessions=ended,
                withdrawn=withdrawn,
            )
            return revoked, ended

    def reinstate_person(self, issuer: str, subject: str, now: datetime, *, by: str = "") -> bool:
        """See :meth:`aegis.stores.approvals.ApprovalStore.reinstate_person`."""
        person = Identity(issuer, subject)
        with self._transaction(write=True) as tx:
            was = self._hold_person(tx, person, now)
            if was is None:
                return False
            tx.run(
                "UPDATE {p}aegis_people SET revoked_at = NULL, revoked_by = NULL WHERE person = ?",
                (person.key,),
            )
            self._event(
                tx,
                "",
                "reviewer.reinstated",
                now,
                person=person.key,
                by=by,
                revoked_at=was[0],
                revoked_by=was[1],
            )
            return True

    def revoked_people(self) -> list[tuple[str, datetime, str]]:
        """See :meth:`aegis.stores.approvals.ApprovalStore.revoked_people`."""
        with self._transaction(write=False) as tx:
            rows = tx.all(
                "SELECT person, revoked_at, revoked_by FROM {p}aegis_people "
                "WHERE revoked_at IS NOT NULL ORDER BY person"
            )
        return [(str(p), parse_time(at), str(by or "")) for p, at, by in rows]

    def _hold_person(self, tx: Tx, person: Identity, now: datetime) -> tuple[str, str] | None:
        """Lock ``person``'s row (made if missing); when they stand revoked, since when and by whom.

        Every sign-in, token tied to them, revocation and reinstatement takes
        this lock first, so each sees the others whole.
        """
        tx.run(
            "INSERT INTO {p}aegis_people (person, touched_at) VALUES (?, ?) "
            "ON CONFLICT (person) DO UPDATE SET touched_at = excluded.touched_at",
            (person.key, iso(now)),
        )
        rows = tx.all(
            "SELECT revoked_at, revoked_by FROM {p}aegis_people WHERE person = ?", (person.key,)
        )
        if not rows or rows[0][0] is None:
            return None
        return str(rows[0][0]), str(rows[0][1] or "")

    def _refuse_revoked(self, tx: Tx, person: Identity, now: datetime, doing: str) -> None:
        """Raise a 403 if ``person`` stands revoked (holding their row either way)."""
        was = self._hold_person(tx, person, now)
        if was is not None:
            raise ApprovalServiceError(
                f"{person.key} was revoked on {was[0]}"
                + (f" by {was[1]}" if was[1] else "")
                + f"; {doing} until an operator reinstates them "
                f"(aegis reviewer reinstate '{person.key}')",
                status=403,
                code="revoked",
            )

    def _withdraw_approvals(
        self,
        tx: Tx,
        speaks_for: Callable[[str], bool],
        named: str | None,
        now: datetime,
        **because: str,
    ) -> list[str]:
        """Withdraw the approvals of requests still pending whose reviewer ``speaks_for`` names.

        A leaked token's approval, or a revoked person's, must not count
        toward a two-person rule; requests already decided stay as they are.
        ``named`` narrows the look to one reviewer key; ``because`` goes into
        each ``approval.withdrawn`` event (the token, or the person, revoked).
        Returns the ids of the requests whose approvals it withdrew.
        """
        withdrawn: list[str] = []
        mine, args = ("", ()) if named is None else (" AND d.reviewer = ?", (named,))
        rows = tx.all(
            "SELECT d.request_id, d.reviewer, d.reviewer_name FROM {p}aegis_approval_decisions d "
            "JOIN {p}aegis_approval_requests r ON r.id = d.request_id "
            f"WHERE r.status = 'pending' AND d.verdict = ?{mine} ORDER BY d.request_id",
            (Verdict.APPROVE.value, *args),
        )
        for request_id, reviewer, reviewer_name in rows:
            if not speaks_for(reviewer):
                continue
            # Only a row still pending changes, and the update locks it: a
            # reviewer approving at once either completed it first (it stays
            # approved) or counts after the withdrawal.
            if (
                tx.run(
                    "UPDATE {p}aegis_approval_requests SET approvals = approvals - 1 "
                    "WHERE id = ? AND status = 'pending' AND approvals > 0",
                    (request_id,),
                )
                != 1
            ):
                continue
            tx.run(
                "DELETE FROM {p}aegis_approval_decisions WHERE request_id = ? AND reviewer = ?",
                (request_id, reviewer),
            )
            request = self._must(tx, request_id)
            self._event(
                tx,
                request_id,
                "approval.withdrawn",
                now,
                reviewer=reviewer,
                reviewer_name=reviewer_name or reviewer,
                approved_by=[d.reviewer for d in request.approvals],
                **because,
            )
            withdrawn.append(request_id)
        return withdrawn

    def _end_grants(
        self,
        tx: Tx,
        speaks_for: Callable[[str], bool],
        now: datetime,
        by: str,
        **because: str,
    ) -> list[str]:
        """End the grants one of whose givers ``speaks_for`` names, in the revocation's transaction.

        A grant approves later actions in its givers' names: ended in a
        transaction of its own after the revocation, it would still approve
        actions asked in between. Read after the approvals are withdrawn (the
        requests' rows locked), so that a grant given by a decision that
        committed while this transaction waited is seen and ended too. Every
        grant some host may still find active is ended: active by the
        database's clock, or by ``now`` for grants kept without it. Each end
        queues a ``grant.revoked`` event naming ``by`` and ``because``.
        Returns the ids of the grants it ended.
        """
        ended: list[str] = []
        rows = tx.all(
            f"SELECT {_GRANT_COLUMNS} FROM {{p}}aegis_grants WHERE revoked_at IS NULL "
            f"AND (db_expires_at > {self._CLOCK} OR (db_expires_at IS NULL AND expires_at > ?)) "
            "ORDER BY created_at, id",
            (0.0, iso(now)),
        )
        for row in rows:
            grant = _grant_of(row)
            if not any(speaks_for(key) for key in grant.granted_by):
                continue
            if (
                tx.run(
                    "UPDATE {p}aegis_grants SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                    (iso(now), grant.id),
                )
                == 1
            ):
                self._event(
                    tx, grant.request_id, "grant.revoked", now, grant=grant.id, by=by, **because
                )
                ended.append(grant.id)
        return ended

    # -- inbox sessions -----------------------------------------------------------

    def create_session(self, session: InboxSession) -> None:
        """See :meth:`aegis.stores.approvals.ApprovalStore.create_session`."""
        with self._transaction(write=True) as tx:
            # Sessions long over are of no use to anyone: forget them as we go.
            tx.run(
                "DELETE FROM {p}aegis_inbox_sessions WHERE expires_at < ?",
                (iso(session.created_at - timedelta(days=1)),),
            )
            person = _oidc_person(session.identity)
            if person is not None:
                self._refuse_revoked(tx, person, session.created_at, "they may not sign in")
            tx.run(
                f"INSERT INTO {{p}}aegis_inbox_sessions ({_SESSION_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    session.id_hash,
                    session.token_hash,
                    json.dumps(dict(session.identity or {}), sort_keys=True),
                    session.csrf,
                    iso(session.created_at),
                    iso(session.expires_at),
                    None if session.ended_at is None else iso(session.ended_at),
                ),
            )

    def get_session(self, id_hash: str) -> InboxSession | None:
        """See :meth:`aegis.stores.approvals.ApprovalStore.get_session`."""
        with self._transaction(write=False) as tx:
            rows = tx.all(
                f"SELECT {_SESSION_COLUMNS} FROM {{p}}aegis_inbox_sessions WHERE id_hash = ?",
                (id_hash,),
            )
        if not rows:
            return None
        row = rows[0]
        identity = json.loads(row[2]) if row[2] else {}
        return InboxSession(
            id_hash=row[0],
            token_hash=row[1],
            identity=identity if isinstance(identity, dict) and identity else None,
            csrf=row[3],
            created_at=parse_time(row[4]),
            expires_at=parse_time(row[5]),
            ended_at=_time(row[6]),
        )

    def end_session(self, id_hash: str, now: datetime) -> bool:
        """See :meth:`aegis.stores.approvals.ApprovalStore.end_session`."""
        with self._transaction(write=True) as tx:
            return (
                tx.run(
                    "UPDATE {p}aegis_inbox_sessions SET ended_at = ? "
                    "WHERE id_hash = ? AND ended_at IS NULL",
                    (iso(now), id_hash),
                )
                == 1
            )

    # -- grants -----------------------------------------------------------------

    def list_grants(
        self,
        now: datetime,
        *,
        include_inactive: bool = False,
        before: tuple[datetime, str] | None = None,
        groups: Collection[str] | None = None,
        giver: str | None = None,
    ) -> list[Grant]:
        """See :meth:`aegis.stores.approvals.ApprovalStore.list_grants`."""
        clauses: list[str] = []
        args: list[Any] = []
        if not include_inactive:
            clauses.append(self._live_grant())
            args += [iso(now), 0.0]
        if groups is not None:
            # Filtered here, not after the page's limit: a group's grants behind a
            # thousand newer ones of other groups must still be listed to it.
            either = ["reviewer_groups = '[]'"]
            for group in sorted(set(groups)):
                either.append(self._HOLDS.format(column="reviewer_groups"))
                args.append(group)
            if giver is not None:
                either.append(self._HOLDS.format(column="granted_by"))
                args.append(giver)
            clauses.append(f"({' OR '.join(either)})")
        if before is not None:
            clauses.append("(created_at < ? OR (created_at = ? AND id < ?))")
            args += [iso(before[0]), iso(before[0]), before[1]]
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._transaction(write=False) as tx:
            rows = tx.all(
                f"SELECT {_GRANT_COLUMNS} FROM {{p}}aegis_grants{where} "
                "ORDER BY created_at DESC, id DESC LIMIT 1000",
                args,
            )
        return [_grant_of(row) for row in rows]

    def get_grant(self, grant_id: str) -> Grant | None:
        """See :meth:`aegis.stores.approvals.ApprovalStore.get_grant`."""
        with self._transaction(write=False) as tx:
            rows = tx.all(
                f"SELECT {_GRANT_COLUMNS} FROM {{p}}aegis_grants WHERE id = ?", (grant_id,)
            )
        return _grant_of(rows[0]) if rows else None

    def revoke_grant(self, grant_id: str, now: datetime, *, by: str = "") -> Grant:
        """See :meth:`aegis.stores.approvals.ApprovalStore.revoke_grant`."""
        with self._transaction(write=True) as tx:
            changed = tx.run(
                "UPDATE {p}aegis_grants SET revoked_at = ? "
                f"WHERE id = ? AND {self._live_grant()}",
                (iso(now), grant_id, iso(now), 0.0),
            )
            rows = tx.all(
                f"SELECT {_GRANT_COLUMNS} FROM {{p}}aegis_grants WHERE id = ?", (grant_id,)
            )
            if not rows:
                raise ApprovalServiceError(
                    f"no grant {grant_id!r}; `aegis grants list` shows them",
                    status=404,
                    code="not_found",
                )
            grant = _grant_of(rows[0])
            if changed != 1:
                raise ApprovalServiceError(
                    f"grant {grant_id} is no longer active (revoked or expired)",
                    status=409,
                    code="not_active",
                )
            self._event(tx, grant.request_id, "grant.revoked", now, grant=grant.id, by=by)
            return grant


def _fields(request: ApprovalRequest) -> dict[str, Any]:
    return {name: getattr(request, name) for name in request.__dataclass_fields__}


def _float_or_text(text: str) -> float | str:
    value = float(text)
    return value if value - value == 0.0 else text


def _request_of(row: tuple[Any, ...], decisions: list[tuple[Any, ...]]) -> ApprovalRequest:
    try:
        # A row edited to hold Infinity or NaN (which no Action holds) keeps
        # them as text: the list still shows it, and its digest no longer matches.
        action = action_from_json(
            json.loads(row[5], parse_constant=str, parse_float=_float_or_text)
        )
        return ApprovalRequest(
            id=row[0],
            session_id=row[1],
            requester=row[2],
            digest=row[3],
            action_digest=row[4],
            action=action,
            risk_level=RiskLevel[row[6]],
            matched_rule=row[7],
            reason=row[8],
            approvers=int(row[9]),
            reviewers=tuple(json.loads(row[10])),
            created_at=parse_time(row[11]),
            expires_at=parse_time(row[12]),
            status=RequestStatus(row[13]),
            status_reason=row[14],
            collected_at=_time(row[15]),
            grant_id=row[16],
            grant_by=tuple(json.loads(row[17])) if row[17] else (),
            granted=row[18],
            why=None if row[19] is None else Why.from_json(json.loads(row[19])),
            decisions=tuple(
                ReviewerDecision(
                    reviewer=d[0],
                    verdict=Verdict(d[1]),
                    comment=d[2],
                    at=parse_time(d[3]),
                    grant_minutes=d[4],
                    reviewer_name=d[5] or "",
                )
                for d in decisions
            ),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(
            f"approval request {row[0]!r} in the store cannot be read ({exc}); "
            "the row was edited or damaged"
        ) from exc


def _grant_of(row: tuple[Any, ...]) -> Grant:
    return Grant(
        id=row[0],
        session_id=row[1],
        requester=row[2],
        action_type=row[3],
        action_target=row[4],
        matched_rule=row[5],
        granted_by=tuple(json.loads(row[6])),
        request_id=row[7],
        created_at=parse_time(row[8]),
        expires_at=parse_time(row[9]),
        revoked_at=_time(row[10]),
        approvers=int(row[11]),
        reviewers=tuple(json.loads(row[12])),
    )


def _check_renewal(old: TokenInfo, new: TokenInfo, now: datetime) -> None:
    """Refuse a token whose name another holder had or still has.

    A token's name is who decided in decisions and in the audit trail: a
    name given to someone else would make the trail say one holder did what
    two did, and the two count as one reviewer. So an active name is taken,
    a revoked name is retired for good, and an expired token may be renewed
    under its name only with the same role and the same OpenID person.
    """
    name = old.name
    if old.usable_at(now):
        raise ApprovalServiceError(
            f"a token named {name!r} exists and is active; to replace it, create the new "
            f"token under another name, then revoke this one (aegis token revoke {name})",
            status=409,
            code="token_exists",
        )
    if old.revoked_at is not None:
        raise ApprovalServiceError(
            f"the token name {name!r} was revoked on {iso(old.revoked_at)} and is not given "
            "out again: decisions and the audit trail name its holder by it; pick another "
            f"name (for instance {name}-2)",
            status=409,
            code="token_name_retired",
        )
    if (old.role, old.oidc_issuer, old.oidc_subject) != (
        new.role,
        new.oidc_issuer,
        new.oidc_subject,
    ):
        raise ApprovalServiceError(
            f"the token {name!r} expired; it may be renewed under its name only with the "
            "same role and the same --oidc-subject/--oidc-issuer, since decisions and the "
            "audit trail name its holder by it; pick another name for another holder",
            status=409,
            code="token_name_retired",
        )


def _oidc_person(identity: Any) -> Identity | None:
    """The person of a new inbox session's identity, if it is an OpenID sign-in."""
    if not isinstance(identity, Mapping) or identity.get("kind") != "oidc":
        return None
    issuer, subject = identity.get("issuer"), identity.get("subject")
    if not isinstance(issuer, str) or not isinstance(subject, str) or not issuer:
        return None
    return Identity(issuer, subject)


def _signed_in_as(identity: str, person: Identity) -> bool:
    """Whether an inbox session's stored identity (JSON) is ``person`` signed in with OpenID."""
    try:
        data = json.loads(identity)
    except ValueError:
        return False
    if not isinstance(data, dict) or data.get("kind") != "oidc":
        return False
    issuer, subject = data.get("issuer"), data.get("subject")
    if not isinstance(issuer, str) or not isinstance(subject, str) or not issuer:
        return False
    return Identity(issuer, subject) == person


def _role_of(stored: str) -> Role | str:
    """The stored role, kept as text when this version knows no such role (refused at use)."""
    try:
        return Role(stored)
    except ValueError:
        return str(stored)


def _token_of(row: tuple[Any, ...]) -> TokenInfo:
    return TokenInfo(
        name=row[0],
        role=_role_of(row[1]),
        groups=tuple(json.loads(row[2])),
        created_at=parse_time(row[3]),
        expires_at=_time(row[4]),
        revoked_at=_time(row[5]),
        oidc_issuer=row[6],
        oidc_subject=row[7],
    )


def statements(prefix: str, sql: Sequence[str] = SCHEMA, *, ifnx: str = "") -> Iterator[str]:
    """``sql`` with ``{p}`` replaced by ``prefix`` (and ``{ifnx}`` by ``ifnx``)."""
    for statement in sql:
        yield statement.replace("{p}", prefix).replace("{ifnx}", ifnx)
