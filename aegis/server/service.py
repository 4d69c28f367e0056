"""The approval service: who may do what to an approval request, and what gets recorded.

:class:`ApprovalService` is the one place the rules of remote approval live;
the JSON API (:mod:`aegis.server.api`), the inbox pages and the command line
call it, never the store directly::

    service = ApprovalService(store, audit, approval_ttl=3600)
    agent = await service.authenticate(token)
    request, created = await service.create(agent, new_request)
    ...
    request = await service.decide(reviewer, request.id, Verdict.APPROVE, "ok")

Every request, decision, expiry, cancellation and collection is written to
the audit trail through an outbox: the store queues each change's event in
the change's own transaction, and :meth:`ApprovalService.flush_audit` writes
queued events to the trail (after each change, and every second), so a
trail that is down or a process killed mid-way delays a record but never
loses it. Changes are announced to subscribers (:meth:`subscribe`)
as :class:`ApprovalEvent` values: the inbox's live updates and the
notifiers listen there. Store calls run on worker threads, so a slow or
locked database never blocks the event loop.

Size: ApprovalService holds every rule of who may do what to a request, beside
the outbox that records each change; splitting the rules from their records
would let one change without the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, TypeVar

from aegis._version import __version__
from aegis.core._text import counted
from aegis.core.action import Action, action_digest
from aegis.core.approval_request import (
    ApprovalRequest,
    Grant,
    ListCursor,
    NewRequest,
    RequestStatus,
    Role,
    TokenInfo,
    Verdict,
    request_digest,
    stricter_groups,
)
from aegis.core.decision import Approval, PolicyDecision
from aegis.core.explain import safe_why
from aegis.core.filters import Filters
from aegis.core.identity import Identity
from aegis.core.risk import RiskLevel
from aegis.errors import ApprovalServiceError, AuditError, ConfigurationError
from aegis.server.bounds import PollSlots
from aegis.stores.approvals import (
    OPERATOR_EVENTS,
    ApprovalStore,
    AuditEvent,
    hash_token,
    new_request_id,
)

if TYPE_CHECKING:
    from aegis.core.policy import Policy
    from aegis.runtime.audit_backend import AuditBackend

__all__ = [
    "AUDIT_SCAN",
    "EVENT_KINDS",
    "MAX_GRANT_MINUTES",
    "OPERATOR_SESSION",
    "ApprovalEvent",
    "ApprovalService",
    "AuditPage",
    "Principal",
    "Subscriber",
    "grant_refusal",
    "record_request_id",
]

_log = logging.getLogger("aegis.server")

#: the session of the audit records of what operators did to people and tokens
#: (``aegis reviewer revoke``, ``aegis reviewer reinstate``, ``aegis token revoke``)
OPERATOR_SESSION: Final = "aegis-operator"

#: the kinds of :class:`ApprovalEvent`, in the order a request lives them
EVENT_KINDS: Final = (
    "approval.requested",
    "approval.decided",
    "approval.expired",
    "approval.cancelled",
    "approval.collected",
    "approval.withdrawn",
    "grant.revoked",
)

#: how old a change made elsewhere may be and still be announced: a service started
#: long after `aegis token revoke` does not send its news as if it were new
ANNOUNCE_WINDOW: Final = timedelta(hours=1)

T = TypeVar("T")

#: the longest grant a reviewer may give, in minutes (one day)
MAX_GRANT_MINUTES: Final = 24 * 60


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a name, a role and groups, and for a reviewer an identity.

    ``identity`` is who decides, as decisions and the audit trail record
    it (issuer and subject for a person of an OpenID provider, or a
    token tied to one); ``None`` for a token tied to no provider, whose
    name is its identity (:attr:`who`). ``until`` is when the token
    expires, if it does: a grant it gives ends by then. ``token`` and
    ``session`` are the credentials it came with: a decision is recorded
    only if they still hold in the transaction that records it.
    """

    name: str
    role: Role
    groups: tuple[str, ...] = ()
    identity: Identity | None = None
    until: datetime | None = None
    #: the name of the token the caller came with, if a token
    token: str | None = None
    #: the id hash of the inbox session the caller came with, if signed in to the inbox
    session: str | None = None

    @property
    def who(self) -> Identity:
        """The identity decisions are recorded and compared under."""
        return self.identity if self.identity is not None else Identity.of_token(self.name)


@dataclass(frozen=True, slots=True)
class ApprovalEvent:
    """Something happened to a request.

    ``kind`` is one of :data:`EVENT_KINDS`; ``decided`` events come for
    every reviewer's verdict (``request.status`` says whether it settled
    the request); ``grant`` is the grant the event created or revoked.
    """

    kind: str
    request: ApprovalRequest | None
    grant: Grant | None = None
    reviewer: str | None = None


#: a function called with each event, in the event loop; it must not block
Subscriber = Callable[[ApprovalEvent], Any]

#: audit records one read looks through for a reviewer who is no auditor,
#: filtered or not; a page that ends short of the trail says where the next
#: read goes on
AUDIT_SCAN: Final = 5000
#: records read from the trail at a time while looking through it
_AUDIT_BATCH: Final = 500


@dataclass(frozen=True, slots=True)
class AuditPage:
    """Audit records a principal may read, oldest first, and where the next page starts.

    ``next_after_id`` is the ``after_id`` that goes on from here, or
    ``None`` when the trail has no more records to look at (for an
    auditor: none that match the filters).
    A page may hold fewer records than asked and still name a next one:
    for a reviewer the service looks through the next :data:`AUDIT_SCAN`
    records per read, most of which may be other groups'.
    """

    records: list[dict[str, Any]]
    next_after_id: int | None


def _forbidden(message: str, code: str = "forbidden") -> ApprovalServiceError:
    return ApprovalServiceError(message, status=403, code=code)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _positive_seconds(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def grant_refusal(verdict: Verdict, grant_minutes: object) -> str | None:
    """Why ``grant_minutes`` cannot go with ``verdict``, or ``None`` when it can.

    A grant is a whole number of minutes from 1 to :data:`MAX_GRANT_MINUTES`
    and comes only with an approval. :meth:`ApprovalService.decide` enforces
    it; a form may call this first to show the reason beside its field.
    """
    if grant_minutes is None:
        return None
    if (
        isinstance(grant_minutes, bool)
        or not isinstance(grant_minutes, int)
        or not 1 <= grant_minutes <= MAX_GRANT_MINUTES
    ):
        return f"grant_minutes must be a whole number from 1 to {MAX_GRANT_MINUTES}"
    if verdict is not Verdict.APPROVE:
        return "grant_minutes goes with an approval, not a deny"
    return None


class ApprovalService:
    """The rules of remote approval over an :class:`~aegis.stores.approvals.ApprovalStore`.

    Args:
        store: where requests, decisions, tokens and grants are kept.
        audit: the audit trail that every change is written to; ``None``
            records nothing (for tests of the rules alone).
        approval_ttl: seconds a request stays open unless its rule says
            otherwise (default one hour).
        max_wait: the longest long poll, in seconds.
        poll_interval: how often a waiting call re-reads the store, to see
            decisions made by other service processes.
        clock: returns the current aware time; ``datetime.now(UTC)`` by default.
            Audit claims go by the store's clock instead (the database
            server's), which every service process on it shares.
        max_polls: how many long polls one token may hold open at once.
        policy: the service's own policy. When given, each new request is
            decided again here, and its terms become the stricter of both:
            the most ``approvers``, the narrowest ``reviewers``, the shortest
            ``approval_ttl``, the highest risk. An agent cannot ask for a
            weaker approval than the policy demands, and the service never
            lowers what the agent's runtime asked for; an action the
            policy blocks is refused (403).
        oidc_issuer: the OpenID provider the service trusts for sign-ins.
            A reviewer token tied to a subject is that subject at the
            issuer it names; one naming none is refused (401).
        auditor_groups: reviewers in one of these groups are auditors:
            they read the whole audit trail and verify its chain. Other
            reviewers read only the records of requests they may see
            (:meth:`may_read_record`), and verify nothing.
    """

    def __init__(
        self,
        store: ApprovalStore,
        audit: AuditBackend | None = None,
        *,
        approval_ttl: float = 3600.0,
        max_wait: float = 60.0,
        poll_interval: float = 0.5,
        clock: Callable[[], datetime] = _utcnow,
        policy: Policy | None = None,
        oidc_issuer: str | None = None,
        max_polls: int = 16,
        auditor_groups: Collection[str] = (),
    ) -> None:
        for name, seconds in (
            ("approval_ttl", approval_ttl),
            ("max_wait", max_wait),
            ("poll_interval", poll_interval),
        ):
            if not _positive_seconds(seconds):
                raise ConfigurationError(
                    f"{name} must be a positive number of seconds, got {seconds!r}"
                )
        if isinstance(max_polls, bool) or not isinstance(max_polls, int) or max_polls < 1:
            raise ConfigurationError(f"max_polls must be a whole number from 1, got {max_polls!r}")
        self.store = store
        self.audit = audit
        self.approval_ttl = float(approval_ttl)
        self.max_wait = float(max_wait)
        self.poll_interval = float(poll_interval)
        self.clock = clock
        self.policy = policy
        self.oidc_issuer = oidc_issuer
        if isinstance(auditor_groups, str):
            raise ConfigurationError("auditor_groups is a collection of group names, not one")
        names = [g.strip() for g in auditor_groups]
        if not all(names):
            raise ConfigurationError("an auditor group needs a name")
        self.auditor_groups = frozenset(names)
        self._subscribers: list[Subscriber] = []
        self._lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._polls = PollSlots(max_polls)
        #: the last :meth:`pending_stamp`: its loop, when it was taken, and the stamp
        self._stamp: tuple[asyncio.AbstractEventLoop, float, str] | None = None
        self._stamp_guard: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        #: store and audit calls that failed (a metric: ``aegis_store_errors_total``)
        self.store_errors = 0
        #: audit writes under way on worker threads (:meth:`settle` waits for them)
        self._writing: set[asyncio.Future[bool]] = set()

    # -- plumbing ---------------------------------------------------------------

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking store or audit call on a worker thread; count it if the store fails."""
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except AuditError:  # StoreError too
            self.store_errors += 1
            raise

    _call = call

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(event)`` for every :class:`ApprovalEvent`; return how to stop.

        Callbacks run in the event loop and must return quickly (put the
        event on a queue); one that raises is logged and kept.

        Example::

            queue: asyncio.Queue[ApprovalEvent] = asyncio.Queue()
            unsubscribe = service.subscribe(queue.put_nowait)
        """
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(callback)

        return unsubscribe

    def _emit(self, event: ApprovalEvent) -> None:
        if event.request is not None:
            for future in self._waiters.pop(event.request.id, ()):
                if not future.done():
                    future.set_result(None)
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:
                _log.exception("an approval event subscriber failed on %s", event.kind)

    def _flush_lock(self) -> asyncio.Lock:
        # A lock belongs to one event loop; a service may outlive several (tests).
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock[0] is not loop:
            self._lock = (loop, asyncio.Lock())
        return self._lock[1]

    async def flush_audit(self) -> int:
        """Write the store's queued audit events to the audit trail, oldest first.

        Each change of a request queues its event in the change's own
        transaction; this writes them, each claimed by one process, so no
        change ever lacks its record and none is recorded twice (unless a
        process dies between writing a record and marking it written). The
        service calls it after every change and every second; it returns
        how many records it wrote.
        """
        if self.audit is None:
            return 0
        written = 0
        async with self._flush_lock():
            events = await self._call(self.store.pending_events, _STALE_CLAIM)
            for event in events:
                # Claimed, written and marked on one worker thread, and shielded:
                # a flush cancelled mid-way (a request cut off, the service
                # stopping) leaves the thread to finish the record and mark it.
                # Cancelled between the two, the claim was given back with the
                # record already written, and the next flush wrote it again.
                job = asyncio.ensure_future(self._call(self._audit_one, event))
                self._writing.add(job)
                job.add_done_callback(self._writing.discard)
                if await asyncio.shield(job):
                    written += 1
        return written

    async def settle(self, timeout: float = 10.0) -> bool:
        """Wait up to ``timeout`` seconds for the audit writes under way; whether they finished.

        Called before :meth:`close`. A trail that hangs must not keep the
        service from stopping: its record stays claimed, and another flush
        takes it over once the claim is stale.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._writing:
            left = deadline - loop.time()
            if left <= 0:
                _log.warning("stopping with %d audit writes unfinished", len(self._writing))
                return False
            await asyncio.wait(set(self._writing), timeout=left)
        return True

    def _audit_one(self, event: AuditEvent) -> bool:
        """Claim one queued event, write its record and mark it written (blocking).

        ``False`` when another service process has it. A record that cannot be
        written gives the claim back, to be tried again.
        """
        if not self.store.claim_event(event.id, _STALE_CLAIM):
            return False
        try:
            if event.kind in OPERATOR_EVENTS:
                self._write_operator_event(event)
            elif (request := self.store.get_request(event.request_id)) is not None:
                self._write_event(event, request)
        except BaseException:
            with contextlib.suppress(Exception):
                self.store.finish_event(event.id, self.clock(), audited=False)
            raise
        # The record is written: marking it must not give up at the first
        # failure, or a later flush takes the claim over and writes it again.
        for pause in _FINISH_PAUSES:
            try:
                self.store.finish_event(event.id, self.clock(), audited=True)
                return True
            except AuditError:  # StoreError too: locked, or the connection dropped
                time.sleep(pause)
        self.store.finish_event(event.id, self.clock(), audited=True)  # the last try raises
        return True

    async def _flush_soon(self) -> None:
        """Flush now; a failure is logged, and the sweeper tries again every second."""
        try:
            await self.flush_audit()
        except Exception as exc:
            _log.warning("audit records are queued, not yet written: %s", exc)

    def _write_event(self, event: AuditEvent, request: ApprovalRequest) -> None:
        """Write one queued event as an audit record, tagged with the request id (blocking)."""
        audit = self.audit
        if audit is None:
            return
        text, extra = _event_text(event, request)
        decision = PolicyDecision(
            request.action,
            request.risk_level,
            Approval.APPROVE,
            request.matched_rule,
            request.reason,
            approvers=request.approvers,
            reviewers=request.reviewers,
        )
        audit.log(
            request.session_id,
            decision,
            human_decision=f"approval: {text} [request {request.id}]",
            context={
                "approval_event": event.kind,
                "approval_request": request.id,
                "requester": request.requester,
                **extra,
            },
        )

    def _write_operator_event(self, event: AuditEvent) -> None:
        """Write what an operator did to a person or a token as an audit record (blocking).

        Its own record in the session :data:`OPERATOR_SESSION`, whatever it
        withdrew or ended (each of those has its record too): who did it,
        to whom, and what it ended.
        """
        audit = self.audit
        if audit is None:
            return
        ctx = event.context
        text, subject, extra = _operator_text(event.kind, ctx)
        by = str(ctx.get("by") or "an operator")
        action = Action(
            event.kind.replace(".", "_"),
            "aegis",
            {"subject": subject, "by": by, **extra},
            f"{text} by {by}",
        )
        decision = PolicyDecision(action, RiskLevel.HIGH, Approval.AUTO, "operator")
        audit.log(
            OPERATOR_SESSION,
            decision,
            human_decision=f"operator: {text} by {by}",
            context={"operator_event": event.kind, "subject": subject, "by": by},
        )

    # -- who is calling ---------------------------------------------------------

    async def authenticate(self, token: str | None) -> Principal:
        """The principal of a bearer token.

        Raises:
            ApprovalServiceError: 401 for a missing, unknown, revoked or expired token.
        """
        if not token:
            raise ApprovalServiceError(
                "no token; send 'Authorization: Bearer <token>' (create one with "
                "`aegis token create NAME --role agent|reviewer|metrics`)",
                status=401,
                code="unauthorized",
            )
        info = await self._call(self.store.token_by_hash, hash_token(token))
        now = self.clock()
        if info is None or not info.usable_at(now):
            state = "unknown" if info is None else info.state_at(now)
            raise ApprovalServiceError(
                f"the token is {state}; ask an operator for a valid one",
                status=401,
                code="unauthorized",
            )
        return self.principal_of(info)

    def principal_of(self, info: TokenInfo) -> Principal:
        """The principal of a valid token: tied to a provider's subject, it is that person.

        Raises:
            ApprovalServiceError: 401 for a token tied to a subject that
                names no issuer: which person it is would hang on the
                issuer this service trusts now, and a switch of issuer
                would hand its word to whoever holds the subject there.
                401 too for a token of a role this version does not know:
                what it may do is not this version's to guess.
        """
        role = info.known_role
        if role is None:
            raise ApprovalServiceError(
                f"token {info.name!r} has the role {str(info.role)!r}, which this version of "
                f"Aegis ({__version__}) does not know (a newer version's, or edited by hand), "
                "so it is refused; upgrade Aegis, or revoke the token and create another "
                "(aegis token create NAME --role agent|reviewer|metrics)",
                status=401,
                code="unauthorized",
            )
        if info.oidc_subject is None:
            return Principal(info.name, role, info.groups, until=info.expires_at, token=info.name)
        if not info.oidc_issuer:
            raise ApprovalServiceError(
                f"token {info.name!r} is tied to OpenID subject {info.oidc_subject!r} at no "
                "issuer, so whose it is depends on the service's issuer; revoke it and create "
                "it again with --oidc-subject and --oidc-issuer",
                status=401,
                code="unauthorized",
            )
        identity = Identity(info.oidc_issuer, info.oidc_subject, info.name)
        return Principal(info.name, role, info.groups, identity, info.expires_at, info.name)

    @staticmethod
    def require_role(
        principal: Principal, roles: tuple[Role, ...], doing: str, hint: str = ""
    ) -> None:
        """Refuse (403 ``wrong_role``) unless ``principal``'s token has one of ``roles``.

        The message says which token was given, what ``doing`` needs and,
        when given, ``hint``: how to get the right one.
        """
        if principal.role in roles:
            return
        held = principal.role
        needed = " or ".join(role.value for role in roles)
        raise _forbidden(
            f"{principal.name} has {held.article} {held.value} token; {doing} needs "
            f"{roles[0].article} {needed} token" + (f" ({hint})" if hint else ""),
            code="wrong_role",
        )

    @classmethod
    def _require(cls, principal: Principal, role: Role, doing: str) -> None:
        cls.require_role(principal, (role,), doing)

    @staticmethod
    def _asked(principal: Principal, request: ApprovalRequest) -> bool:
        """Whether ``principal`` is the agent that asked for ``request``.

        The role is checked too, not only the name: what the agent that
        asked may do is an agent's, whoever else might carry its name.
        """
        return principal.role is Role.AGENT and principal.name == request.requester

    @staticmethod
    def refusal(principal: Principal, request: ApprovalRequest) -> str | None:
        """Why ``principal`` may not decide ``request`` now, or ``None`` if they may.

        For views that disable buttons with the reason; :meth:`decide`
        enforces the same rules.
        """
        if principal.role is not Role.REVIEWER:
            return f"{principal.name} is not a reviewer"
        who = principal.who
        if who.key == request.requester:
            return "nobody may decide their own request"
        if request.reviewers and not set(principal.groups) & set(request.reviewers):
            return f"only reviewers in {', '.join(request.reviewers)} may decide this request"
        if any(d.reviewer == who.key for d in request.decisions):
            return f"{who.display} has already decided this request"
        if request.status is not RequestStatus.PENDING:
            return f"the request is {request.status.value}"
        return None

    async def health(self) -> None:
        """Raise :class:`~aegis.errors.StoreError` unless the store answers."""
        await self._call(self.store.token_by_hash, "0" * 64)

    # -- requests ---------------------------------------------------------------

    async def create(self, principal: Principal, new: NewRequest) -> tuple[ApprovalRequest, bool]:
        """Open a request for ``new`` (agent role); ``(twin, False)`` re-attaches to a pending one.

        When an active grant covers the request, it is created approved,
        naming the grant.
        """
        self._require(principal, Role.AGENT, "asking for approval")
        if self.policy is not None:
            new = self._redecide(new, self.policy)
        await self.expire_due()
        now = self.clock()
        ttl = new.approval_ttl if new.approval_ttl is not None else self.approval_ttl
        request = ApprovalRequest(
            id=new_request_id(),
            session_id=new.session_id,
            requester=principal.name,
            action=new.action,
            risk_level=new.risk_level,
            matched_rule=new.matched_rule,
            reason=new.reason,
            approvers=new.approvers,
            reviewers=new.reviewers,
            created_at=now,
            expires_at=now + timedelta(seconds=ttl),
            digest=request_digest(new.action, principal.name),
            action_digest=action_digest(new.action),
            why=new.why,
        )
        stored, created = await self._call(self.store.create_request, request, now)
        if created:
            self._emit(ApprovalEvent("approval.requested", stored))
            await self._flush_soon()
        return stored, created

    def _redecide(self, new: NewRequest, policy: Policy) -> NewRequest:
        """``new`` with terms at least as strict as both its own and the service's policy.

        The service may only raise the terms a request carries, never lower
        them: the agent's runtime may know more (the session's history, a
        flow rule) than this policy sees in one action. So the request keeps
        the most approvers, the narrowest reviewer groups, the shortest TTL
        and the highest risk of the two; its rule and reason are the
        service's. Groups no reviewer can satisfy on both sides are refused
        (403), as is an action the service's policy blocks.
        """
        decision = policy.evaluate(new.action)
        if decision.approval is Approval.BLOCK:
            raise _forbidden(
                f"the service's policy blocks {new.action.type} -> {new.action.target} "
                f"(rule {decision.matched_rule!r}); no approval can be asked for it",
                code="blocked_by_policy",
            )
        groups = stricter_groups(tuple(new.reviewers), tuple(decision.reviewers))
        if groups is None:
            raise _forbidden(
                f"the agent's rule {new.matched_rule!r} asks reviewers in "
                f"{', '.join(new.reviewers)} and the service's rule "
                f"{decision.matched_rule!r} in {', '.join(decision.reviewers)}; no group "
                "satisfies both, so nobody could approve it",
                code="terms_conflict",
            )
        ttls = [
            ttl if ttl is not None else self.approval_ttl
            for ttl in (new.approval_ttl, decision.approval_ttl)
        ]
        reason = decision.reason
        if new.matched_rule and new.matched_rule != decision.matched_rule:
            reason = f"{reason} (the agent's rule {new.matched_rule!r}: {new.reason})".strip()
        return replace(
            new,
            risk_level=max(new.risk_level, decision.risk_level),
            matched_rule=decision.matched_rule,
            reason=reason[:10_000],
            approvers=max(new.approvers, decision.approvers),
            reviewers=groups,
            approval_ttl=min(ttls),
            # the service's own account: its rule decided the terms
            why=replace(safe_why(policy, decision), reason=reason[:10_000]),
        )

    async def _current(self, request_id: str) -> ApprovalRequest:
        request = await self._call(self.store.get_request, request_id)
        if request is None:
            raise ApprovalServiceError(
                f"no approval request {request_id!r}; check the id",
                status=404,
                code="not_found",
            )
        if request.is_expired_at(self.clock()):
            await self.expire_due()
            request = await self._call(self.store.get_request, request_id) or request
        return request

    @staticmethod
    def may_see(principal: Principal, request: ApprovalRequest) -> bool:
        """Whether ``principal`` may read ``request``.

        The agent that asked reads its own requests. A reviewer reads what
        their groups may decide (a request naming no group is anyone's),
        and what they decided themselves; another group's request is
        someone else's work, and its params may be theirs alone to read.
        """
        if principal.role is not Role.REVIEWER:
            return ApprovalService._asked(principal, request)
        if not request.reviewers or set(principal.groups) & set(request.reviewers):
            return True
        who = principal.who.key
        return any(d.reviewer == who for d in request.decisions)

    def _may_see(self, principal: Principal, request: ApprovalRequest) -> None:
        if self.may_see(principal, request):
            return
        if principal.role is Role.REVIEWER:
            raise _forbidden(
                f"approval request {request.id} is for reviewers in "
                f"{', '.join(request.reviewers)}; {principal.name} is in "
                f"{', '.join(principal.groups) or 'no group'}",
                code="wrong_group",
            )
        raise _forbidden(
            f"{principal.name} may not see approval request {request.id}: only reviewers "
            "and the agent that asked may"
        )

    @staticmethod
    def _visible_groups(principal: Principal, groups: Collection[str] | None) -> tuple[str, ...]:
        """The groups filter a reviewer lists under: theirs, narrowed by ``groups`` if given."""
        own = tuple(principal.groups)
        if groups is None:
            return own
        wanted = set(groups)
        return tuple(g for g in own if g in wanted)

    async def get(self, principal: Principal, request_id: str) -> ApprovalRequest:
        """The request, for those who :meth:`may_see` it (403 ``wrong_group`` for others)."""
        request = await self._current(request_id)
        self._may_see(principal, request)
        return request

    async def list_requests(
        self,
        principal: Principal,
        status: RequestStatus | None = RequestStatus.PENDING,
        *,
        limit: int = 100,
        before: ListCursor | tuple[datetime, str] | None = None,
        **filters: Any,
    ) -> list[ApprovalRequest]:
        """Requests newest first (reviewer role); ``status=None`` lists all.

        ``filters`` are :meth:`page_requests`'s (``requester``, ``session_id``,
        ``risk``, ``rule``, ``groups``, ``sort``); ``before`` pages on.
        """
        page, _ = await self.page_requests(principal, status, limit=limit, before=before, **filters)
        return page

    async def page_requests(
        self,
        principal: Principal,
        status: RequestStatus | None = RequestStatus.PENDING,
        *,
        requester: str | None = None,
        session_id: str | None = None,
        risk: Collection[RiskLevel] | None = None,
        rule: str | None = None,
        groups: Collection[str] | None = None,
        sort: str = "newest",
        limit: int = 100,
        before: ListCursor | tuple[datetime, str] | None = None,
    ) -> tuple[list[ApprovalRequest], int]:
        """A page of requests in the order ``sort``, and how many more follow it.

        The store filters and orders (``risk`` levels, ``rule``, the agent
        ``requester``, ``session_id``, and ``groups``: open to anyone or
        naming one of them), so counts and pages are true however many
        match. The groups are always within the reviewer's own: nobody
        lists another group's requests (:meth:`may_see`). A flood of
        requests must not push older ones out of sight without a word:
        the count says how many the page leaves out, and the last request
        of the page is where the next page starts
        (:meth:`ListCursor.after <aegis.core.approval_request.ListCursor.after>`).
        """
        self._require(principal, Role.REVIEWER, "listing approval requests")
        await self.expire_due()
        # Only what the reviewer's groups may decide, whatever the caller asked.
        groups = self._visible_groups(principal, groups)
        filters: dict[str, Any] = {
            "requester": requester,
            "session_id": session_id,
            "risk": risk,
            "rule": rule,
            "groups": groups,
        }
        page = await self._call(
            self.store.list_requests, status, sort=sort, limit=limit, before=before, **filters
        )
        more = 0
        if len(page) >= limit:
            more = await self._call(
                self.store.count_requests,
                status,
                before=ListCursor.after(page[-1], sort),
                **filters,
            )
        # again here, whatever the store: a page never shows another group's request
        wanted = set(groups)
        page = [r for r in page if not r.reviewers or wanted & set(r.reviewers)]
        return page, more

    async def count_requests(
        self,
        principal: Principal,
        status: RequestStatus | None = RequestStatus.PENDING,
        **filters: Any,
    ) -> int:
        """How many requests :meth:`page_requests` with these filters lists in all."""
        self._require(principal, Role.REVIEWER, "counting approval requests")
        filters["groups"] = self._visible_groups(principal, filters.get("groups"))
        return await self._call(self.store.count_requests, status, **filters)

    async def pending_stamp(self, max_age: float) -> str:
        """A cheap sign of whether the pending requests changed, in any service process.

        The store's digest of the pending requests and of who approved each
        (:meth:`~aegis.stores.approvals.ApprovalStore.pending_digest`): it
        moves with any request arriving or leaving and any approval given or
        withdrawn, however they fall together within one poll (an approval
        withdrawn as another is given, one request leaving as an older one
        arrives). Live lists compare it before reading their pages again.
        One reading at most every ``max_age`` seconds is shared by every
        caller in this process, so open lists cost the store one small query
        per interval, however many are open.
        """
        loop = asyncio.get_running_loop()
        cached = self._stamp
        if cached is not None and cached[0] is loop and loop.time() - cached[1] < max_age:
            return cached[2]
        async with self._stamp_lock():
            cached = self._stamp
            if cached is not None and cached[0] is loop and loop.time() - cached[1] < max_age:
                return cached[2]
            taken = loop.time()
            stamp = await self._call(self.store.pending_digest)
            self._stamp = (loop, taken, stamp)
            return stamp

    def _stamp_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._stamp_guard is None or self._stamp_guard[0] is not loop:
            self._stamp_guard = (loop, asyncio.Lock())
        return self._stamp_guard[1]

    async def wait(self, principal: Principal, request_id: str, timeout: float) -> ApprovalRequest:
        """Answer as soon as the request is no longer pending, or after ``timeout`` seconds.

        Only the agent that asked may wait; ``timeout`` is capped at
        :attr:`max_wait`. One token holds at most ``max_polls`` waits at once;
        more are refused (429) rather than left to slow everyone's decisions.
        """
        async with self._polls.hold(principal.name):
            return await self._wait(principal, request_id, timeout)

    async def _wait(self, principal: Principal, request_id: str, timeout: float) -> ApprovalRequest:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, min(timeout, self.max_wait))
        while True:
            request = await self._current(request_id)
            if not self._asked(principal, request):
                raise _forbidden(
                    f"only the agent that asked ({request.requester}) may wait on "
                    f"approval request {request_id}"
                )
            remaining = deadline - loop.time()
            if request.status is not RequestStatus.PENDING or remaining <= 0:
                return request
            until_expiry = (request.expires_at - self.clock()).total_seconds()
            future: asyncio.Future[None] = loop.create_future()
            self._waiters.setdefault(request_id, set()).add(future)
            try:
                # Woken by a change made here; the poll sees other processes' changes.
                pause = max(0.01, min(remaining, self.poll_interval, until_expiry + 0.01))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(future, pause)
            finally:
                waiting = self._waiters.get(request_id)
                if waiting is not None:
                    waiting.discard(future)
                    if not waiting:
                        del self._waiters[request_id]

    async def decide(
        self,
        principal: Principal,
        request_id: str,
        verdict: Verdict,
        comment: str = "",
        grant_minutes: int | None = None,
        *,
        grant_until: datetime | None = None,
    ) -> ApprovalRequest:
        """Record ``principal``'s verdict (reviewer role).

        ``grant_minutes`` (an approval only, 1 to :data:`MAX_GRANT_MINUTES`)
        also lets the same action type, target and rule pass in the
        session for that long, once the request is approved.

        ``grant_until`` bounds the grant this reviewer gives: the end of
        the provider's word on their groups, for a reviewer signed in with
        OpenID (``--oidc-max-age``); the principal's ``until`` (its token's
        expiry) bounds it too. The minutes recorded are shortened to
        end by then, counted from the latest the grant can start: now when
        this approval is the last one needed, else the request's expiry
        (a grant starts with the approval that completes the request). The
        decision records the shortened minutes.

        Raises:
            ApprovalServiceError: 403 for a non-reviewer, the requester
                themself, or a reviewer outside the rule's groups; 404 for an
                unknown id; 409 when the request is no longer pending (or
                expired) or this reviewer decided it already; 422
                (``invalid``) for a grant of the wrong length or with a deny,
                and for a grant that ``grant_until`` leaves less than a
                minute (``grant_too_late``): nothing is recorded then.
        """
        self._require(principal, Role.REVIEWER, "deciding an approval request")
        refusal = grant_refusal(verdict, grant_minutes)
        if refusal is not None:
            raise ApprovalServiceError(refusal, status=422, code="invalid")
        request = await self._current(request_id)
        now = self.clock()
        who = principal.who
        if who.key == request.requester:
            raise _forbidden(
                f"{principal.name} asked for approval request {request_id} and may not "
                "decide it; another reviewer must",
                code="self_approval",
            )
        if request.reviewers and not set(principal.groups) & set(request.reviewers):
            raise _forbidden(
                f"approval request {request_id} may only be decided by reviewers in "
                f"{', '.join(request.reviewers)}; {principal.name} is in "
                f"{', '.join(principal.groups) or 'no group'}",
                code="wrong_group",
            )
        if request.status is RequestStatus.EXPIRED:
            raise ApprovalServiceError(
                f"approval request {request_id} expired; it can no longer be decided",
                status=409,
                code="expired",
            )
        # Bounded only once the reviewer may decide: the refusal's words say
        # whether this approval would be the last one needed, which is the
        # request's business, not that of a reviewer outside its groups.
        # A grant approves later actions in its giver's name: it ends by the
        # end of their word, a sign-in's max age or their token's expiry.
        ended = "the identity provider's word on your groups (--oidc-max-age)"
        if principal.until is not None and (grant_until is None or principal.until < grant_until):
            grant_until, ended = principal.until, "the token you decide with"
        if grant_minutes is not None and grant_until is not None:
            grant_minutes = self._bounded_grant(request, grant_minutes, grant_until, now, ended)
        stored, grant = await self._call(
            self.store.decide,
            request_id,
            who.key,
            verdict,
            comment=comment,
            grant_minutes=grant_minutes,
            now=now,
            reviewer_name=who.display,
            token=principal.token,
            session=principal.session,
        )
        self._emit(ApprovalEvent("approval.decided", stored, grant, str(who)))
        await self._flush_soon()
        return stored

    @staticmethod
    def _bounded_grant(
        request: ApprovalRequest, minutes: int, until: datetime, now: datetime, ended: str
    ) -> int:
        """``minutes`` shortened so that a grant on ``request`` ends by ``until``.

        The store starts a grant when the last approval needed comes in; when
        this one is not the last, that is at the latest the request's expiry.
        """
        last = len(request.approvals) + 1 >= request.approvers
        start = now if last else max(now, request.expires_at)
        left = math.floor((until - start).total_seconds() / 60)
        if left < 1:
            when = "" if last else " from the request's expiry, when the grant could start"
            raise ApprovalServiceError(
                f"a grant may not outlast {ended}, and less than a minute of it is "
                f"left{when}; approve without a grant, or sign in again (or with a "
                "new token) and then give one",
                status=422,
                code="grant_too_late",
            )
        return min(minutes, left)

    async def collect(self, principal: Principal, request_id: str) -> ApprovalRequest:
        """Use an approved request once (the agent that asked); a second collect is a 409."""
        request = await self._current(request_id)
        if not self._asked(principal, request):
            raise _forbidden(
                f"only the agent that asked ({request.requester}) may collect approval "
                f"request {request_id}"
            )
        stored = await self._call(self.store.collect, request_id, self.clock())
        self._emit(ApprovalEvent("approval.collected", stored))
        await self._flush_soon()
        return stored

    async def cancel(
        self, principal: Principal, request_id: str, reason: str = ""
    ) -> ApprovalRequest:
        """Cancel a pending request (the agent that asked): nobody waits for it any more."""
        request = await self._current(request_id)
        if not self._asked(principal, request):
            raise _forbidden(
                f"only the agent that asked ({request.requester}) may cancel approval "
                f"request {request_id}"
            )
        why = reason or "cancelled by the agent"
        stored = await self._call(self.store.cancel, request_id, why, self.clock())
        self._emit(ApprovalEvent("approval.cancelled", stored))
        await self._flush_soon()
        return stored

    async def expire_due(self) -> list[ApprovalRequest]:
        """Expire every request past its expiry, record and announce each; return them."""
        expired = await self._call(self.store.expire_due, self.clock())
        for request in expired:
            self._emit(ApprovalEvent("approval.expired", request))
        if expired:
            await self._flush_soon()
        return expired

    async def sweep(self, interval: float = 1.0) -> None:
        """Expire due requests and write queued audit records every ``interval`` seconds.

        A failing sweep (a locked database) is logged and tried again.
        """
        while True:
            try:
                await self.expire_due()
                await self.flush_audit()
                await self.announce_others()
            except Exception:
                _log.exception("could not expire requests or write audit records; retrying")
            await asyncio.sleep(interval)

    async def announce_others(self) -> int:
        """Tell subscribers of the changes no service made (``aegis token revoke``'s
        withdrawals), once audited; return how many were announced.

        The command line has no subscribers: its changes reach webhooks and
        open inbox pages when a service takes them from the store (one
        service each, in a deployment of several), every sweep.
        """
        events = await self._call(self.store.take_announcements)
        told = 0
        for event in events:
            if self.clock() - event.at > ANNOUNCE_WINDOW:
                continue  # old news by now: the trail has it
            request = await self._call(self.store.get_request, event.request_id)
            if request is None:
                continue
            reviewer = Identity.from_key(
                str(event.context.get("reviewer")), str(event.context.get("reviewer_name") or "")
            )
            self._emit(ApprovalEvent(event.kind, request, reviewer=str(reviewer)))
            told += 1
        return told

    # -- grants -----------------------------------------------------------------

    async def list_grants(
        self, principal: Principal, *, include_inactive: bool = False
    ) -> list[Grant]:
        """Grants of requests the reviewer's groups may decide, newest first (reviewer role)."""
        self._require(principal, Role.REVIEWER, "listing grants")
        grants = await self._call(
            self.store.list_grants,
            self.clock(),
            include_inactive=include_inactive,
            groups=principal.groups,
            giver=principal.who.key,
        )
        # The store filtered them by the same rule; checked again here all the same.
        return [g for g in grants if _may_see_grant(principal, g)]

    async def revoke_grant(self, principal: Principal, grant_id: str) -> Grant:
        """Revoke a grant (reviewer role, of the groups it was given for).

        Later actions it covered ask again.
        """
        self._require(principal, Role.REVIEWER, "revoking a grant")
        found = await self._call(self.store.get_grant, grant_id)
        if found is not None and not _may_see_grant(principal, found):
            raise _forbidden(
                f"grant {grant_id} was given for reviewers in {', '.join(found.reviewers)}; "
                f"{principal.name} is in {', '.join(principal.groups) or 'no group'}",
                code="wrong_group",
            )
        return await self._revoke_grant(grant_id, str(principal.who))

    async def operator_revoke_grant(self, grant_id: str, by: str) -> Grant:
        """Revoke a grant as the operator (``aegis grants revoke``), whatever its groups.

        Whoever holds the database is no reviewer of a group: the operator's
        way to stop a grant must not depend on being in one. ``by`` names
        them in the audit record (``operator:<user>``).
        """
        return await self._revoke_grant(grant_id, by)

    async def _revoke_grant(self, grant_id: str, by: str) -> Grant:
        grant = await self._call(self.store.revoke_grant, grant_id, self.clock(), by=by)
        request = await self._call(self.store.get_request, grant.request_id)
        self._emit(ApprovalEvent("grant.revoked", request, grant, by))
        await self._flush_soon()
        return grant

    # -- the audit trail --------------------------------------------------------

    def _require_auditor(self, principal: Principal, doing: str) -> None:
        if not self.is_auditor(principal):
            # Which groups audit is the operator's to know (--auditor-group):
            # naming them would tell any reviewer whom to aim at.
            raise _forbidden(
                f"{doing} is for an auditor, and {principal.name} is not one",
                code="not_auditor",
            )

    def _audit_or_fail(self) -> AuditBackend:
        if self.audit is None:
            raise ApprovalServiceError(
                "this service keeps no audit trail", status=404, code="no_audit"
            )
        return self.audit

    def is_auditor(self, principal: Principal) -> bool:
        """Whether ``principal`` reads the whole audit trail: a reviewer in an auditor group."""
        return principal.role is Role.REVIEWER and bool(self.auditor_groups & set(principal.groups))

    def may_read_record(
        self, principal: Principal, record: Mapping[str, Any], request: ApprovalRequest | None
    ) -> bool:
        """Whether ``principal`` may read an audit record whose request is ``request``.

        An auditor reads every record. Another reviewer reads the records
        of the requests they :meth:`may_see` (the same rule as the requests
        themselves): a record names its request in its context
        (``approval_request``), and ``request`` is that request as the store
        holds it now. A record that names no request (an agent's own
        action), or one the store no longer holds, belongs to no group we
        can tell: only auditors read it.
        """
        if self.is_auditor(principal):
            return True
        if principal.role is not Role.REVIEWER or request is None:
            return False
        return record_request_id(record) == request.id and self.may_see(principal, request)

    def _readable(
        self,
        principal: Principal,
        records: list[dict[str, Any]],
        known: dict[str, ApprovalRequest | None],
    ) -> list[dict[str, Any]]:
        """The records of ``records`` ``principal`` may read (blocking: store look-ups).

        ``known`` caches the requests looked up, across the batches of one read.
        """
        readable = []
        for record in records:
            request_id = record_request_id(record)
            request = None
            if request_id is not None:
                if request_id not in known:
                    known[request_id] = self.store.get_request(request_id)
                request = known[request_id]
            if self.may_read_record(principal, record, request):
                readable.append(record)
        return readable

    async def audit_page(
        self, principal: Principal, filters: dict[str, Any], limit: int = 100
    ) -> AuditPage:
        """The audit records matching ``filters`` that ``principal`` may read (reviewer role).

        ``filters`` are those of ``aegis audit list`` (``after_id`` pages
        on). An auditor reads the trail as it is; another reviewer reads
        only records :meth:`may_read_record` lets through, looked for
        among the next :data:`AUDIT_SCAN` records per call, so that a
        reviewer of a rare group cannot make one call read the whole
        trail. Either way the page says where the next one starts.

        Raises:
            ApprovalServiceError: 403 for a non-reviewer; 422 (``invalid``)
                for a filter that is unknown or holds a value no record could.
        """
        self._require(principal, Role.REVIEWER, "reading the audit trail")
        audit = self._audit_or_fail()
        query = dict(filters)
        after = int(query.pop("after_id", 0) or 0)
        try:
            if self.is_auditor(principal):
                return await self._auditor_page(audit, query, after, limit)
            return await self._reviewer_page(audit, principal, query, after, limit)
        except ConfigurationError as exc:
            raise ApprovalServiceError(str(exc), status=422, code="invalid") from None

    async def _auditor_page(
        self, audit: AuditBackend, query: dict[str, Any], after: int, limit: int
    ) -> AuditPage:
        """An auditor's page: one read, and one record more says whether more follow."""
        batch = await self._call(audit.get_log, limit=limit + 1, after_id=after, **query)
        if len(batch) <= limit:
            return AuditPage(batch, None)
        return AuditPage(batch[:limit], int(batch[limit - 1]["id"]))

    async def _reviewer_page(
        self,
        audit: AuditBackend,
        principal: Principal,
        query: dict[str, Any],
        after: int,
        limit: int,
    ) -> AuditPage:
        """A reviewer's page: what they may read among the next AUDIT_SCAN records of the trail.

        The trail is read unfiltered, in id order, and the filters applied
        here. So the stretch looked through, and where the next page starts,
        depend only on the trail's ids and on the records the reviewer may
        read, never on which others' records match the filters (with the
        filters in the query, ``?type=pay_salary`` told ops where finance's
        payments lie, and a filter matching nothing read the whole trail).
        """
        wanted = Filters.of(**query)
        found: list[dict[str, Any]] = []
        known: dict[str, ApprovalRequest | None] = {}
        scanned = 0
        while scanned < AUDIT_SCAN:
            size = min(_AUDIT_BATCH, AUDIT_SCAN - scanned)
            batch = await self._call(audit.get_log, limit=size, after_id=after)
            # Whether each record is readable is asked of every one looked at,
            # filtered or not, so the time a read takes tells nothing of how
            # many others' records match the filters either.
            readable = {id(r) for r in await self._call(self._readable, principal, batch, known)}
            for record in batch:
                if id(record) in readable and wanted.matches(record):
                    if len(found) == limit:  # a readable record beyond the page
                        return AuditPage(found, int(found[-1]["id"]))
                    found.append(record)
                after = int(record["id"])
            scanned += len(batch)
            if len(batch) < size:
                return AuditPage(found, None)  # the end of the trail
        return AuditPage(found, after)  # looked far enough for one call

    async def audit_newest(self, principal: Principal, limit: int = 100) -> AuditPage:
        """The newest records ``principal`` may read, oldest of them first (reviewer role).

        An auditor gets the last ``limit`` records of the trail; another
        reviewer the last ``limit`` they may read among its last
        :data:`AUDIT_SCAN` records. ``next_after_id`` is always ``None``.
        """
        self._require(principal, Role.REVIEWER, "reading the audit trail")
        audit = self._audit_or_fail()
        head = getattr(audit, "head", None)
        last = 0 if head is None else int((await self._call(head)).count)
        window = limit if self.is_auditor(principal) else AUDIT_SCAN
        after = max(0, last - window)
        page = await self.audit_page(principal, {"after_id": after}, limit=AUDIT_SCAN)
        return AuditPage(page.records[-limit:], None)

    async def verify_audit(self, principal: Principal) -> dict[str, Any]:
        """Verify the audit chain (auditors): ok, checked, first_bad_id, reason, head.

        Only an auditor (:meth:`is_auditor`) verifies: the chain spans every
        group's records, and its report counts and names them all.

        Raises:
            ApprovalServiceError: 403 ``not_auditor`` for anyone else.
        """
        self._require(principal, Role.REVIEWER, "verifying the audit trail")
        self._require_auditor(principal, "verifying the audit trail")
        audit = self._audit_or_fail()
        verify = getattr(audit, "verify", None)
        if verify is None:
            raise ApprovalServiceError(
                "this audit trail cannot be verified", status=404, code="no_audit"
            )
        report = await self._call(verify)
        return {
            "ok": report.ok,
            "checked": report.checked,
            "first_bad_id": report.first_bad_id,
            "reason": report.reason,
            "head": str(report.head),  # "<count>:<hash>", the form to keep elsewhere
            "unfinished": list(getattr(report, "unfinished", ())),
        }

    def close(self) -> None:
        """Close the store and the audit trail."""
        try:
            self.store.close()
        finally:
            if self.audit is not None:
                self.audit.close()


def record_request_id(record: Mapping[str, Any]) -> str | None:
    """The approval request an audit record names in its context, or ``None``."""
    context = record.get("context")
    if not isinstance(context, Mapping):
        return None
    found = context.get("approval_request")
    return found if isinstance(found, str) and found else None


def _may_see_grant(principal: Principal, grant: Grant) -> bool:
    """A grant is seen by the groups of the request it was given on, and by its givers."""
    if not grant.reviewers or set(principal.groups) & set(grant.reviewers):
        return True
    return principal.who.key in grant.granted_by


def statuses(text: str | None) -> RequestStatus | None:
    """The status filter of a list query: a status name, or ``all`` (``None``)."""
    if text is None or text == "":
        return RequestStatus.PENDING
    if text == "all":
        return None
    try:
        return RequestStatus(text)
    except ValueError:
        names = ", ".join([*(s.value for s in RequestStatus), "all"])
        raise ApprovalServiceError(
            f"status={text!r} is not a request status; use one of {names}",
            status=422,
            code="invalid",
        ) from None


#: how long after its claim an unfinished audit event is taken over, by the
#: store's clock (the database server's): the hosts' own clocks may disagree
_STALE_CLAIM: Final = timedelta(seconds=60)
#: pauses between the tries to mark a written audit event (its record is in the trail)
_FINISH_PAUSES: Final = (0.1, 0.5, 2.0)


def _operator_text(kind: str, ctx: Mapping[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """What an operator's event says, whom it concerns, and the facts its record keeps."""
    withdrawn = [str(r) for r in ctx.get("withdrawn") or ()]
    gone = f"; approvals withdrawn from {', '.join(withdrawn)}" if withdrawn else ""
    if kind == "reviewer.revoked":
        person = str(ctx.get("person"))
        tokens = [str(t) for t in ctx.get("tokens") or ()]
        sessions = int(ctx.get("sessions") or 0)
        text = (
            f"reviewer {person} revoked ({counted(sessions, 'inbox session')} ended, "
            f"tokens revoked: {', '.join(tokens) or 'none'}{gone})"
        )
        return text, person, {"tokens": tokens, "sessions": sessions, "withdrawn": withdrawn}
    if kind == "reviewer.reinstated":
        person = str(ctx.get("person"))
        since = f" (revoked {ctx.get('revoked_at')} by {ctx.get('revoked_by') or 'an operator'})"
        return f"reviewer {person} reinstated{since}", person, {}
    token = str(ctx.get("token"))
    tied = f", tied to {ctx['person']}" if ctx.get("person") else ""
    text = f"token {token} ({ctx.get('role')}{tied}) revoked{gone or '; nothing withdrawn'}"
    return text, token, {"withdrawn": withdrawn}


def _event_text(event: AuditEvent, request: ApprovalRequest) -> tuple[str, dict[str, str]]:
    """The audit text of a queued event, and the context it adds."""
    ctx = event.context
    kind = event.kind
    if kind == "approval.requested":
        if request.grant_id is not None:
            return f"requested by {request.requester}; {request.status_reason}", {
                "grant": request.grant_id
            }
        expires = f"{request.expires_at:%Y-%m-%dT%H:%M:%SZ}"
        return f"requested by {request.requester}, expires {expires}", {}
    if kind == "approval.decided":
        # Who decided, by identity (issuer#subject, or a token's name) with
        # the display name beside it: what an auditor reads and matches.
        who = Identity.from_key(str(ctx.get("reviewer")), str(ctx.get("reviewer_name") or ""))
        reviewer = str(who)
        said = f": {ctx['comment']}" if ctx.get("comment") else ""
        extra = {"reviewer": who.key, "verdict": str(ctx.get("verdict"))}
        if who.issuer:
            extra |= {
                "reviewer_issuer": who.issuer,
                "reviewer_subject": who.subject,
                "reviewer_name": who.display,
            }
        if ctx.get("verdict") == Verdict.DENY.value:
            return f"denied by {reviewer}{said}", extra
        keys = [str(n) for n in ctx.get("approved_by") or [who.key]]
        shown = [str(n) for n in ctx.get("approved_by_names") or ()]
        names = [
            str(Identity.from_key(key, shown[i] if i < len(shown) else ""))
            for i, key in enumerate(keys)
        ]
        if ctx.get("status") == RequestStatus.APPROVED.value:
            return f"approved by {', '.join(names)}{said}", extra
        return f"{reviewer} approved ({len(names)} of {request.approvers}){said}", extra
    if kind == "approval.withdrawn":
        # The approval stays in the trail as it was given; this says it no
        # longer counts, and why.
        who = Identity.from_key(str(ctx.get("reviewer")), str(ctx.get("reviewer_name") or ""))
        left = len(ctx.get("approved_by") or ())
        if ctx.get("person"):
            # `aegis reviewer revoke`: the person, whatever they decided with
            cause, extra = f"reviewer {ctx['person']} revoked", {"person": str(ctx["person"])}
        else:
            cause, extra = f"token {ctx.get('token')} revoked", {"token": str(ctx.get("token"))}
        return (
            f"approval by {who} withdrawn: {cause} ({left} of {request.approvers} approvals left)",
            {"reviewer": who.key, **extra},
        )
    if kind == "grant.created":
        known = {d.reviewer: d.identity for d in request.decisions}
        by = ", ".join(
            str(known.get(str(n)) or Identity.from_key(str(n))) for n in ctx.get("granted_by") or ()
        )
        return (
            f"grant {ctx.get('grant')} given by {by} until {ctx.get('expires_at')} for "
            f"{request.action.type} -> {request.action.target} (rule {request.matched_rule}) "
            f"in session {request.session_id}",
            {"grant": str(ctx.get("grant"))},
        )
    if kind == "approval.collected":
        return f"collected by {request.requester}", {}
    if kind == "approval.cancelled":
        return f"request cancelled by {request.requester}: {ctx.get('reason')}", {}
    if kind == "approval.expired":
        return "request expired without a decision", {}
    if kind == "grant.revoked":
        return f"grant {ctx.get('grant')} revoked by {ctx.get('by') or 'an operator'}", {
            "grant": str(ctx.get("grant")),
            "reviewer": str(ctx.get("by") or ""),
        }
    return kind, {}
