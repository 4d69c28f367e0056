"""Where approval requests, reviewer decisions, tokens and grants are kept.

:class:`ApprovalStore` is what the approval service needs from a database;
SQLite (:mod:`aegis.stores.sqlite.approvals`) and PostgreSQL
(:mod:`aegis.stores.postgres.approvals`) implement it with the same SQL
(:mod:`aegis.stores._approvals_sql`) and pass the same contract tests. The
tables live beside the audit trail, in the same file or database.

Every change of a request's status is one conditional ``UPDATE ... WHERE
status = 'pending'`` in the database, so two reviewers deciding at the same
instant, or several service processes on one PostgreSQL database, can never
both win: the second sees zero rows changed and gets a conflict.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from aegis.core.approval_request import (
    ApprovalRequest,
    Grant,
    InboxSession,
    RequestStatus,
    TokenInfo,
    Verdict,
)
from aegis.errors import ConfigurationError

__all__ = [
    "ApprovalStore",
    "AuditEvent",
    "hash_token",
    "new_grant_id",
    "new_request_id",
    "new_token",
    "open_approval_store",
]

#: prefix of every token Aegis issues, so that leaked ones are easy to find
TOKEN_PREFIX = "aegis_"


def new_token() -> str:
    """A fresh random bearer token (256 bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The SHA-256 hex of ``token``: what the store keeps instead of the token.

    A fast hash is enough here: the token is 256 random bits, not a password.
    """
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def new_request_id() -> str:
    """A fresh approval request id, ``apr_`` and 24 hex digits."""
    return "apr_" + secrets.token_hex(12)


def new_grant_id() -> str:
    """A fresh grant id, ``grt_`` and 24 hex digits."""
    return "grt_" + secrets.token_hex(12)


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """A change of the approval tables waiting to be written to the audit trail.

    Every change writes its event in its own transaction (an outbox), so
    no change is ever without its audit record, even when the audit trail
    is down or the process dies right after the change: the service writes
    the events it finds, oldest first, each claimed by one process.
    """

    id: str
    request_id: str
    at: datetime
    kind: str
    context: dict[str, Any]


@runtime_checkable
class ApprovalStore(Protocol):
    """The approval service's storage; every method is one transaction.

    Methods that change a request raise
    :class:`~aegis.errors.ApprovalServiceError` with status 404 for an
    unknown id and 409 when the request is no longer in a state that
    allows the change; database failures raise
    :class:`~aegis.errors.StoreError`.
    """

    def create_request(
        self, request: ApprovalRequest, now: datetime
    ) -> tuple[ApprovalRequest, bool]:
        """Store ``request`` and return ``(stored, True)``.

        When a request with the same session and digest is still pending
        and asks at least as much (as many approvers, groups within the new
        request's, an expiry no later), return ``(that request, False)``
        instead; a weaker pending twin is cancelled as superseded and the new
        request stored. When an active grant covers the request (same
        session, requester, type, target and rule, and its givers met the
        request's terms), the request is stored already approved, naming
        the grant.
        """
        ...

    def get_request(self, request_id: str) -> ApprovalRequest | None:
        """The request with this id, with its decisions, or ``None``."""
        ...

    def list_requests(
        self,
        status: RequestStatus | None = None,
        *,
        requester: str | None = None,
        session_id: str | None = None,
        limit: int = 100,
    ) -> list[ApprovalRequest]:
        """Requests, newest first, optionally of one status, requester or session."""
        ...

    def count_requests(self, status: RequestStatus | None = None) -> int:
        """How many requests there are, optionally of one status."""
        ...

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
    ) -> tuple[ApprovalRequest, Grant | None]:
        """Record one reviewer's verdict; return the request and the grant it created.

        ``reviewer`` is the reviewer's identity key (see
        :class:`~aegis.core.identity.Identity`): one identity decides once,
        however many sessions or tokens it has; ``reviewer_name`` is kept
        beside it for display.

        A deny denies at once; approvals count until the request's
        ``approvers`` distinct reviewers have approved. A grant is created
        when the request becomes approved and every approving reviewer
        asked for one (for the shortest time asked).
        """
        ...

    def collect(self, request_id: str, now: datetime) -> ApprovalRequest:
        """Mark an approved request as used; a second collect is a 409."""
        ...

    def cancel(self, request_id: str, reason: str, now: datetime) -> ApprovalRequest:
        """Cancel a pending request; 409 when it is no longer pending."""
        ...

    def expire_due(self, now: datetime) -> list[ApprovalRequest]:
        """Expire every pending request past its expiry; return those this call expired."""
        ...

    def create_token(self, info: TokenInfo, token_hash: str) -> None:
        """Store a token's hash and facts; 409 if an active token has this name."""
        ...

    def token_by_hash(self, token_hash: str) -> TokenInfo | None:
        """The token with this hash, revoked or not, or ``None``."""
        ...

    def list_tokens(self) -> list[TokenInfo]:
        """Every token, by name."""
        ...

    def revoke_token(self, name: str, now: datetime) -> bool:
        """Revoke the token called ``name``; ``False`` if there is no active one."""
        ...

    def create_session(self, session: InboxSession) -> None:
        """Keep a new inbox session (its id is a hash of the browser's secret)."""
        ...

    def get_session(self, id_hash: str) -> InboxSession | None:
        """The inbox session with this id hash, ended or not, or ``None``."""
        ...

    def end_session(self, id_hash: str, now: datetime) -> bool:
        """End an inbox session now; ``False`` if it was unknown or ended already."""
        ...

    def list_grants(self, now: datetime, *, include_inactive: bool = False) -> list[Grant]:
        """Grants, newest first; only the active ones unless asked."""
        ...

    def revoke_grant(self, grant_id: str, now: datetime, *, by: str = "") -> Grant:
        """Revoke a grant (``by`` names who did); 404 if unknown, 409 if inactive already."""
        ...

    def pending_events(self, stale_before: datetime, limit: int = 100) -> list[AuditEvent]:
        """Audit events not yet in the audit trail, oldest first.

        An event claimed before ``stale_before`` counts as not claimed: the
        process that claimed it died before it finished.
        """
        ...

    def claim_event(self, event_id: str, now: datetime, stale_before: datetime) -> bool:
        """Claim an event for writing to the audit trail; ``False`` if another has it."""
        ...

    def finish_event(self, event_id: str, now: datetime, *, audited: bool) -> None:
        """Drop a claimed event once its record is written (``audited``), or give it back."""
        ...

    def close(self) -> None:
        """Release connections; calling it again does nothing."""
        ...


def open_approval_store(db: str, *, schema: str | None = None) -> ApprovalStore:
    """Open only the approval tables at ``db``: a SQLite path, ``sqlite:///path`` or a DSN.

    The store keeps a connection of its own; beside an audit trail in the
    same process, prefer ``open_stores(db, schema=...).approvals``, which
    shares the trail's. ``schema`` (PostgreSQL only) names the schema of the
    tables; the connection's ``current_schema()`` by default.

    Raises:
        ConfigurationError: ``db`` names no store with approval tables.
    """
    # Imported here: the engines load lazily, and psycopg is an extra.
    from aegis.stores._url import parse_store_url  # noqa: PLC0415

    location = parse_store_url(db)
    if location.engine == "postgres":
        from aegis.stores.postgres.approvals import PostgresApprovalStore  # noqa: PLC0415

        return PostgresApprovalStore(location, schema=schema)
    if location.engine == "sqlite" and schema is None:
        from aegis.stores.sqlite.approvals import SqliteApprovalStore  # noqa: PLC0415

        return SqliteApprovalStore(location.target)
    raise ConfigurationError(
        f"{location.where!r} keeps no approval tables"
        + (" in schemas (that is PostgreSQL's)" if schema is not None else "")
        + "; give a SQLite file or a postgresql:// DSN"
    )
