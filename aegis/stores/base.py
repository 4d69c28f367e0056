"""The interfaces of the stores, side by side: the audit trail, usage counters, approvals.

Each location (:func:`aegis.stores.open_stores`) has all three, on one
connection of its engine: :class:`AuditStore` (what the runtime writes and
the command line reads), :class:`UsageStore` (what limits, budgets and flow
rules count) and :class:`ApprovalStore` (what the approval service keeps).

Size: the three store protocols sit side by side, as issue 25 asked, with the
contract each engine keeps written beside them; split apart they would be
read together anyway.

A store keeps one hash chain of :class:`~aegis.core.record.AuditRecord`\\ s.
Engines (memory, SQLite, PostgreSQL) implement :class:`AuditStore`; the
facade :class:`aegis.runtime.audit.AuditLogger` turns decisions and results
into drafts, batches concurrent writes (group commit) and calls the store.

The contract every engine keeps (``tests/stores/`` checks it on each):

* :meth:`AuditWriter.append` seals the drafts into the chain in one
  transaction (:func:`aegis.core.chain.seal`, ids consecutive from the
  current head) and returns the sealed records only once they are as
  durable as the store's :data:`Durability` asks (at every level a killed
  process loses none of them; see :func:`must_flush` for when an append
  waits for the disk too). Appends from any number of threads
  and processes never fork the chain: the head is read and extended under
  the engine's write lock. A failed append writes nothing and raises
  :class:`~aegis.errors.StoreError`.
* :meth:`AuditWriter.check` opens (and when writing, creates or migrates)
  the store and proves it usable, so a wrong path, a file that is not ours,
  garbage or a read-only database fails before any action runs.
* Reads stream in id order in constant memory. ``Filters.view`` selects
  ``"actions"`` (final records, and start records without one) or
  ``"records"`` (the whole chain). A store opened read-only (``readonly``)
  never writes, so a backup or a mounted evidence file can be read.
* :meth:`AuditReader.verify` is :func:`aegis.core.chain.verify_chain` over
  the whole chain; engines add nothing to its rules.
* Every error of the database driver is translated once, in the engine's
  connection module, into :class:`~aegis.errors.StoreError` naming the store
  (passwords masked) and what to do.

:class:`ReadMixin` implements the reads that follow from :meth:`records`,
for engines without faster ways.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Final, Literal, NamedTuple, Protocol, runtime_checkable

from aegis.core.approval_request import (
    ApprovalRequest,
    Grant,
    InboxSession,
    ListCursor,
    RequestStatus,
    TokenInfo,
    Verdict,
)
from aegis.core.chain import EMPTY_HEAD, Head, VerifyReport, verify_chain
from aegis.core.checkpoint import Checkpoint
from aegis.core.filters import NO_FILTERS, Filters
from aegis.core.limits import Charge, FlowEvent
from aegis.core.record import AuditRecord, RecordDraft, RecordKind, export_line
from aegis.core.risk import RiskLevel
from aegis.errors import ConfigurationError

__all__ = [
    "DEFAULT_DURABILITY",
    "DURABILITIES",
    "STATS_FIELDS",
    "Acquired",
    "ApprovalStore",
    "AuditEvent",
    "AuditReader",
    "AuditStore",
    "AuditWriter",
    "CheckpointStore",
    "CoversEvents",
    "Durability",
    "ReadMixin",
    "Request",
    "SignatureCheck",
    "UsageStore",
    "must_flush",
    "resolve_durability",
]

#: What a returned append promises to survive; one meaning on every engine.
#:
#: ``"process"``
#:     Nothing waits for the disk. A record is safe from the death of the
#:     process (even ``kill -9``) once its append returns, not from a power
#:     cut or an operating-system crash, which may lose the last records.
#: ``"result"`` (the default)
#:     A Result is returned only after its final record is on disk: appends
#:     holding a final record wait for the disk (one flush, which carries
#:     every record committed before it). Start records wait for nothing, so
#:     a power cut may lose the start of an action that was still running,
#:     never the record of an outcome someone was told. Blocked and denied
#:     actions ran nothing, but their records are final records all the same
#:     and wait too: a refused attempt is evidence worth a flush, and the
#:     promise stays one sentence.
#: ``"full"``
#:     Every append waits for the disk, start records too: even a power cut
#:     cannot hide an action that began.
Durability = Literal["process", "result", "full"]

#: the levels, weakest first
DURABILITIES: Final[tuple[Durability, ...]] = ("process", "result", "full")

#: what a store promises unless told otherwise (agent-aegis's and PostgreSQL's default)
DEFAULT_DURABILITY: Final[Durability] = "result"


def resolve_durability(
    durability: str | None, synchronous: str | None = None, *, normal: Durability = "process"
) -> Durability:
    """The store's :data:`Durability` from its ``durability=`` and ``synchronous=`` options.

    ``synchronous=`` is the older spelling and keeps what it meant:
    ``"full"`` is ``"full"``; ``"normal"`` is ``normal``, the engine's old
    default (``"process"`` on SQLite, ``"result"`` on PostgreSQL). Neither
    given: :data:`DEFAULT_DURABILITY`.

    Raises:
        ConfigurationError: an unknown level, or the two options disagree.
    """
    if durability is not None and durability not in DURABILITIES:
        raise ConfigurationError(
            f"durability={durability!r}; use one of {', '.join(map(repr, DURABILITIES))}"
        )
    if synchronous is None:
        return durability or DEFAULT_DURABILITY
    mode = str(synchronous).lower()
    if mode not in ("normal", "full"):
        raise ConfigurationError(
            f"synchronous={synchronous!r}; use 'normal' or 'full' "
            "(or durability='process', 'result' or 'full')"
        )
    implied: Durability = "full" if mode == "full" else normal
    if durability is not None and durability != implied:
        raise ConfigurationError(
            f"durability={durability!r} and synchronous={synchronous!r} disagree; "
            "give durability= alone"
        )
    return implied


def must_flush(durability: Durability, records: Sequence[RecordDraft | AuditRecord]) -> bool:
    """Whether an append of ``records`` must wait for the disk before it returns.

    At ``"result"`` only an append holding a record that is not a start
    does; the flush makes every record committed before it durable too.
    """
    if durability == "result":
        return any(record.kind != RecordKind.START for record in records)
    return durability == "full"


#: checks a checkpoint's signature (see :class:`aegis.runtime.signing.Verifier`)
SignatureCheck = Callable[[Checkpoint], bool]

#: the fields :meth:`AuditReader.stats` counts by, in order
STATS_FIELDS: tuple[str, ...] = ("result_status", "risk_level", "matched_rule", "action_type")

#: the ``result_status`` key under which stats count unfinished actions
STARTED: str = "started"


@runtime_checkable
class AuditWriter(Protocol):
    """What the runtime needs of a store."""

    #: where the store is, for messages (a path, or a DSN with the password masked)
    url: str
    #: True when appends wait on a network round trip: the facade then calls
    #: :meth:`append` from a writer thread instead of the event loop
    remote: bool

    def check(self) -> None:
        """Open the store and prove it usable (writable unless read-only); raise StoreError."""
        ...

    def append(self, drafts: Sequence[RecordDraft]) -> list[AuditRecord]:
        """Seal ``drafts`` into the chain in one durable transaction; return them sealed."""
        ...

    def head(self) -> Head:
        """The head of the chain (:data:`~aegis.core.chain.EMPTY_HEAD` when empty)."""
        ...

    def close(self) -> None:
        """Release connections; calling it again does nothing."""
        ...


@runtime_checkable
class AuditReader(Protocol):
    """What the command line and the readers of the trail need of a store."""

    url: str

    def records(
        self,
        filters: Filters = NO_FILTERS,
        *,
        after_id: int | None = None,
        limit: int | None = None,
    ) -> Iterator[AuditRecord]:
        """Yield the records matching ``filters`` with an id above ``after_id``, in id order."""
        ...

    def count(self, filters: Filters = NO_FILTERS) -> int:
        """How many records match ``filters``."""
        ...

    def stats(self, filters: Filters = NO_FILTERS) -> dict[str, dict[str, int]]:
        """Counts by :data:`STATS_FIELDS`; unfinished actions count as status ``"started"``."""
        ...

    def unfinished(self, filters: Filters = NO_FILTERS) -> list[AuditRecord]:
        """The start records that have no final record, oldest first."""
        ...

    def export_lines(self, filters: Filters = NO_FILTERS) -> Iterator[str]:
        """Each matching record as an exported line (:func:`~aegis.core.record.export_line`).

        In the ``"actions"`` view a start record stands for an action with no
        outcome, and its line says ``"unfinished": true``.
        """
        ...

    def verify(
        self,
        expected_head: Head | str | None = None,
        *,
        check_signature: SignatureCheck | None = None,
    ) -> VerifyReport:
        """Check the whole chain with :func:`~aegis.core.chain.verify_chain`.

        With ``check_signature``, the store's signed checkpoints are checked too.
        """
        ...

    def head(self) -> Head:
        """The head of the chain."""
        ...

    def close(self) -> None:
        """Release connections; calling it again does nothing."""
        ...


@runtime_checkable
class AuditStore(AuditWriter, AuditReader, Protocol):
    """A store the runtime writes and the command line reads."""


@runtime_checkable
class CheckpointStore(Protocol):
    """A store that keeps signed checkpoints beside the chain.

    SQLite keeps them in ``audit_checkpoints(count INTEGER PRIMARY KEY, hash,
    created_at, key_id, signature)``, all text but ``count``; PostgreSQL
    mirrors it. Adding a checkpoint whose count is already kept does nothing
    (two processes may sign the same head).
    """

    def add_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Keep ``checkpoint``."""
        ...

    def checkpoints(self) -> list[Checkpoint]:
        """Every kept checkpoint, by count."""
        ...


# -- usage counters ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Acquired:
    """What :meth:`UsageStore.acquire` found and did.

    ``used`` holds, per charge, the units already counted in its window
    before this action; ``exceeded`` is the index of the first charge this
    action would take past its maximum (``None`` when all fit);
    ``reservation`` identifies the rows reserved, to release them, and is
    ``None`` when nothing was reserved: one token per charge, which only the
    store that made it understands (an id, or a row's key).
    """

    used: tuple[int, ...]
    exceeded: int | None
    reservation: tuple[object, ...] | None

    @property
    def reserved(self) -> bool:
        """Whether the action's charges were counted."""
        return self.reservation is not None


class Request(NamedTuple):  # a tuple: built for every metered action, at half a dataclass's cost
    """One action's charges to reserve at ``now``; ``over`` as for :meth:`UsageStore.acquire`."""

    charges: tuple[Charge, ...]
    now: float
    over: bool


@runtime_checkable
class UsageStore(Protocol):
    """Where counters and flow events are kept; every method is one transaction.

    Times are seconds since the epoch, given by the caller (the runtime's
    wall clock), so that every process on every machine counts alike.
    """

    def acquire(
        self, charges: Sequence[Charge], now: float, *, reserve: bool, over: bool
    ) -> Acquired:
        """Count ``charges`` in their windows and, in the same atomic step, reserve them.

        With ``reserve`` false nothing is written (a preview). Otherwise the
        charges are reserved when they all fit, and also when one does not
        but ``over`` is true (the rule's ``on_exceed`` still lets the action
        run, so it counts); they are never partly reserved.
        """
        ...

    def acquire_many(self, requests: Sequence[Request]) -> list[Acquired]:
        """Reserve for several actions in one atomic step, each seeing the ones before it.

        Exactly as one :meth:`acquire` (with ``reserve``) per request in turn,
        but in one transaction: concurrent actions of one process share a
        commit (group commit).
        """
        ...

    def release(self, reservation: Sequence[object]) -> None:
        """Forget a reservation (``Acquired.reservation``): its action was refused and never ran."""
        ...

    def remember(self, event: FlowEvent) -> None:
        """Keep ``event``: an action of its session was let through to run.

        Every action let through is noted, whatever the policy looks for.
        A store may add ``remember_many(events)`` (one transaction for the
        concurrent actions of a process); without it, each is remembered.
        Its answer, one id per event (in order), lets the runtime take back
        the event of an action cancelled once its event was noted, which
        never ran, with ``drop_events(ids)`` (one transaction; an id already
        gone is passed over). A store without them keeps such an event, and
        flow conditions count an action that did not run (the runtime logs
        it): a rule that needs it to have run lets through what it would block.
        """
        ...

    def recall(
        self, session_id: str, since: float | None, action_type: str | None
    ) -> list[FlowEvent]:
        """The session's events newer than ``since`` (all without it), oldest first.

        ``action_type``, when given, keeps only events of that exact type (a hint the
        caller may use when a condition names a literal type).
        """
        ...

    def latest_event(
        self,
        session_id: str,
        since: float | None,
        where: Callable[[FlowEvent], bool] | None = None,
        *,
        action_type: str | None = None,
        action_target: str | None = None,
        passing: object = None,
    ) -> FlowEvent | None:
        """The session's newest event newer than ``since`` that ``where`` accepts; ``None``: none.

        What a flow condition asks. ``action_type`` and ``action_target``,
        when given, keep only events with exactly that type and target; the
        store filters by them itself (both together with an index), before
        ``where`` (every event, when ``None``) is asked. Events are read
        newest first (the latest ``at``; among equal times the last noted)
        and the reading stops at the first that ``where`` accepts, so that a
        check costs the events newer than its match, not the session's
        whole history; with type and target given and no ``where``, one
        index look-up however long the session. An event's params come
        back as an :class:`~aegis.core.action.Action` holds them (a
        ``FrozenDict``, lists as tuples): a store that gives plain JSON
        has them frozen by the caller, at a cost per event read.

        ``passing``: an id ``remember_many`` gave (see :meth:`remember`): that
        one event is passed over (an approved action decided again once its
        own event is noted), and no other, however alike; an id of the wrong
        kind raises ``StoreError``. The runtime gives it only to a store
        whose ``latest_event`` takes it.
        """
        ...

    def forgotten(self, session_id: str) -> float | None:
        """The time up to which :meth:`forget_events` deleted the session's events; ``None``: never.

        A flow condition that finds nothing, and looks back past that time,
        cannot tell whether what it looks for ran then: its rule blocks.
        """
        ...

    def forget_events(self, horizon: float | None, now: float) -> bool:
        """Note how far back a policy's flow conditions look, and delete events none needs.

        ``horizon`` is the policy's longest ``within`` in seconds (``None``:
        a condition looks over a whole session). The store keeps the longest
        horizon any policy ever gave it, shared by every process, and deletes
        only events older than that (with a margin for clocks that disagree):
        a process still running a policy with a longer window never loses
        its history to one with a shorter window. ``None`` once given stops
        the deleting for good. Deletes a bounded number of events per call,
        noting for each session up to when (:meth:`forgotten`); returns
        whether more may be left to delete (call again soon).
        """
        ...

    def close(self) -> None:
        """Release the connection; later calls raise."""
        ...


@runtime_checkable
class CoversEvents(Protocol):
    """A usage store that can stand a gap in for flow events no policy looks for.

    Optional (the three engines have it; a store of one's own without it
    has every action noted as an event). While every policy that told the
    store its horizon (:meth:`UsageStore.forget_events`) has no flow
    condition, an event would be deleted unread; the runtime covers the
    session instead, once for many actions, and notes no event for them.
    """

    def cover_events(self, session_id: str, until: float) -> bool:
        """Stand a gap in for the session's events up to ``until``, if no policy needs them.

        In one transaction: when the horizon the store keeps is exactly 0
        (every policy that told it has no flow condition), note that the
        session's history up to ``until`` is not kept, as :meth:`forgotten`
        then says (a later flow condition looking back over it cannot say
        "never": its rule blocks), and return ``True``; otherwise (a
        horizon above 0, a whole session, or none told yet) write nothing
        and return ``False``: events must be noted. A horizon declared
        while this runs is ordered with it: either this sees it, or the
        gap is written before it is declared.
        """
        ...


# -- approvals -----------------------------------------------------------------


#: events of what an operator did to a person or a token, not to one request (queued
#: with request id ``""``): every revocation and reinstatement leaves its record
OPERATOR_EVENTS: Final = ("reviewer.revoked", "reviewer.reinstated", "token.revoked")


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
        risk: Collection[RiskLevel] | None = None,
        rule: str | None = None,
        groups: Collection[str] | None = None,
        sort: str = "newest",
        limit: int = 100,
        before: ListCursor | tuple[datetime, str] | None = None,
    ) -> list[ApprovalRequest]:
        """Requests in the order ``sort``, optionally narrowed by the filters.

        Filters: one ``status``, ``requester`` or ``session_id``; ``risk``
        one of these levels; ``rule`` the matched rule; ``groups`` open to
        any reviewer or naming one of these reviewer groups, each a whole
        name (quotes, backslashes or commas in it never widen the match).
        ``sort`` is one of :data:`~aegis.core.approval_request.REQUEST_SORTS`
        (ValueError otherwise): ``newest`` (``created_at`` then ``id``,
        descending), ``expiring`` (``expires_at`` then ``id``, ascending),
        ``risk`` (highest first, then newest first).

        ``before`` (a :class:`~aegis.core.approval_request.ListCursor` of
        the same sort, or for ``newest`` a request's ``created_at`` and
        ``id``) starts the page after that request, in the same order: the
        next page of a list.
        """
        ...

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
        """How many requests :meth:`list_requests` with these filters would list in all.

        ``before``: only those after the cursor, as a page with it would list them.
        """
        ...

    def pending_digest(self) -> str:
        """A digest of the pending requests and of who approved each; ``""`` when none are.

        It changes whenever the pending requests do, in any process: one
        arriving or leaving, an approval given short of enough or withdrawn
        by a revocation, however these fall together (one leaving as
        another arrives, one approval withdrawn as another is given). Live
        lists compare it before reading their pages again.
        """
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
        token: str | None = None,
        session: str | None = None,
    ) -> tuple[ApprovalRequest, Grant | None]:
        """Record one reviewer's verdict; return the request and the grant it created.

        ``token`` (a token's name) and ``session`` (an inbox session's id
        hash) are the credentials the reviewer came with: the same
        transaction refuses the decision (401) unless each given is still
        valid, so that a revocation committing at once either is seen here
        or finds the decision to withdraw (:meth:`revoke_token`).

        ``reviewer`` is the reviewer's identity key (see
        :class:`~aegis.core.identity.Identity`): one identity decides once,
        however many sessions or tokens it has; ``reviewer_name`` is kept
        beside it for display.

        A deny denies at once; approvals count until the request's
        ``approvers`` distinct reviewers have approved. A grant is created
        when the request becomes approved and every approving reviewer
        asked for one (for the shortest time asked).

        A request past its expiry is a 409 ``expired``: past ``expires_at`` by
        ``now``, or past the time it had left when it was asked by the
        store's own clock, so that a caller whose clock runs behind the
        asker's (another host) cannot decide it late.

        A grant is active until it is revoked or ``now`` reaches its
        ``expires_at``, and no longer than the shortest time asked by the
        store's own clock: a caller whose clock runs behind the giver's
        (another host) cannot stretch it.
        """
        ...

    def collect(self, request_id: str, now: datetime) -> ApprovalRequest:
        """Mark an approved request as used; a second collect is a 409."""
        ...

    def cancel(self, request_id: str, reason: str, now: datetime) -> ApprovalRequest:
        """Cancel a pending request; 409 when it is no longer pending."""
        ...

    def expire_due(self, now: datetime) -> list[ApprovalRequest]:
        """Expire every pending request past its expiry (by either clock, see :meth:`decide`);
        return those this call expired."""
        ...

    def create_token(self, info: TokenInfo, token_hash: str) -> None:
        """Store a token's hash and facts.

        409 if the name is taken: by an active token, by a revoked one (a
        revoked name is retired), or by an expired one of another role or
        OpenID person (an expired token is renewed only by its holder). 403
        if it is tied to a person who stands revoked (:meth:`revoke_person`).
        """
        ...

    def token_by_hash(self, token_hash: str) -> TokenInfo | None:
        """The token with this hash, revoked or not, or ``None``."""
        ...

    def list_tokens(self) -> list[TokenInfo]:
        """Every token, by name."""
        ...

    def revoke_token(self, name: str, now: datetime, *, by: str = "") -> bool:
        """Revoke the token called ``name``; ``False`` if there is no active one.

        In the same transaction, its approvals of requests still pending are
        withdrawn (see :meth:`TokenInfo.speaks_for
        <aegis.core.approval_request.TokenInfo.speaks_for>` for whose they
        are): each stops counting toward its request's approvers, and an
        ``approval.withdrawn`` event is queued for the audit trail. Requests
        already decided stay as they are. The grants a reviewer token (or
        one of a role this version does not know) gave, alone or with
        others, end in the same transaction, each a ``grant.revoked`` event
        naming the ``token``: a grant approves in its givers' names, and
        ended later it would approve actions asked in between. A
        ``token.revoked`` event naming the token and ``by`` (who revoked it)
        is queued too, whatever was withdrawn.
        """
        ...

    def revoke_person(
        self, issuer: str, subject: str, now: datetime, *, by: str = ""
    ) -> tuple[list[str], int]:
        """Revoke the person ``subject`` at ``issuer``; the tokens revoked and the sessions ended.

        In one transaction: the person stands revoked until
        :meth:`reinstate_person` (no inbox session nor token tied to them
        may start: :meth:`create_session` and :meth:`create_token` refuse
        with a 403), the active tokens tied to them are revoked, the inbox
        sessions they signed in with OpenID end, and their approvals of
        requests still pending are withdrawn and the grants they gave end as
        :meth:`revoke_token` does (each event naming the ``person``). A
        ``reviewer.revoked`` event names the person, ``by`` and what was
        ended, whatever that was. A namesake at another issuer is untouched.
        """
        ...

    def reinstate_person(self, issuer: str, subject: str, now: datetime, *, by: str = "") -> bool:
        """Let a revoked person sign in again; ``False`` if they do not stand revoked.

        Queues a ``reviewer.reinstated`` event naming the person and ``by``.
        Nothing revoked comes back: they sign in anew, tokens are made anew.
        """
        ...

    def revoked_people(self) -> list[tuple[str, datetime, str]]:
        """The people standing revoked: their key, when, and by whom; by key."""
        ...

    def create_session(self, session: InboxSession) -> None:
        """Keep a new inbox session (its id is a hash of the browser's secret).

        Raises:
            ApprovalServiceError: 403 for an OpenID sign-in of a revoked person.
        """
        ...

    def get_session(self, id_hash: str) -> InboxSession | None:
        """The inbox session with this id hash, ended or not, or ``None``."""
        ...

    def end_session(self, id_hash: str, now: datetime) -> bool:
        """End an inbox session now; ``False`` if it was unknown or ended already."""
        ...

    def list_grants(
        self,
        now: datetime,
        *,
        include_inactive: bool = False,
        before: tuple[datetime, str] | None = None,
        groups: Collection[str] | None = None,
        giver: str | None = None,
    ) -> list[Grant]:
        """Grants, newest first; only the active ones (see :meth:`decide`) unless asked.

        At most 1000: ``before`` (the ``created_at`` and ``id`` of the last
        grant of a page) lists those that follow it. With ``groups``, only
        the grants open to anyone, given for one of those groups, or given
        by ``giver`` (an identity key) among others: a reviewer's view.
        """
        ...

    def get_grant(self, grant_id: str) -> Grant | None:
        """The grant with this id, active or not, or ``None``."""
        ...

    def revoke_grant(self, grant_id: str, now: datetime, *, by: str = "") -> Grant:
        """Revoke a grant (``by`` names who did); 404 if unknown, 409 if inactive already."""
        ...

    def pending_events(self, stale_after: timedelta, limit: int = 100) -> list[AuditEvent]:
        """Audit events not yet in the audit trail, oldest first.

        An event claimed more than ``stale_after`` ago counts as not claimed:
        the process that claimed it died before it finished. The store's own
        clock (the database server's) says how long ago, never the caller's.
        """
        ...

    def take_announcements(self, limit: int = 100) -> list[AuditEvent]:
        """Take, oldest first, audited events of changes no service made, to announce them.

        The command line's withdrawals (``approval.withdrawn``) stay in the
        outbox once audited, so that a service tells its subscribers
        (webhooks, open inbox pages) of them. Each is taken by one caller
        only, and gone once taken: an announcement is a courtesy, the
        trail holds the record.
        """
        ...

    def claim_event(self, event_id: str, stale_after: timedelta) -> bool:
        """Claim an event for writing to the audit trail; ``False`` if another has it.

        A claim is stamped by the store's own clock and taken over only once
        that clock says it is older than ``stale_after``: service processes
        on hosts whose clocks disagree never take each other's fresh claims.
        """
        ...

    def finish_event(self, event_id: str, now: datetime, *, audited: bool) -> None:
        """Drop a claimed event once its record is written (``audited``), or give it back.

        One of a change no service made is kept, marked audited, for
        :meth:`take_announcements`.
        """
        ...

    def close(self) -> None:
        """Release connections; calling it again does nothing."""
        ...


# -- reads shared by the audit engines ----------------------------------------


class ReadMixin:
    """Reads derived from :meth:`records`, for engines that have nothing faster."""

    def records(
        self,
        filters: Filters = NO_FILTERS,
        *,
        after_id: int | None = None,
        limit: int | None = None,
    ) -> Iterator[AuditRecord]:
        """Yield the matching records in id order (the engine implements this)."""
        raise NotImplementedError

    def count(self, filters: Filters = NO_FILTERS) -> int:
        """How many records match ``filters``."""
        return sum(1 for _ in self.records(filters))

    def stats(self, filters: Filters = NO_FILTERS) -> dict[str, dict[str, int]]:
        """Counts by :data:`STATS_FIELDS`; unfinished actions count as status ``"started"``."""
        counters: dict[str, Counter[str]] = {name: Counter() for name in STATS_FIELDS}
        for record in self.records(filters):
            for name in STATS_FIELDS:
                value = getattr(record, name)
                if name == "result_status" and record.kind == RecordKind.START:
                    value = STARTED
                counters[name]["none" if value is None else str(value)] += 1
        return {name: dict(sorted(counter.items())) for name, counter in counters.items()}

    def unfinished(self, filters: Filters = NO_FILTERS) -> list[AuditRecord]:
        """The start records that have no final record, oldest first."""
        actions = replace(filters, view="actions")
        return [r for r in self.records(actions) if r.kind == RecordKind.START]

    def export_lines(self, filters: Filters = NO_FILTERS) -> Iterator[str]:
        """The exported JSON line of each matching record (unfinished actions marked)."""
        if filters.view != "actions":
            return map(export_line, self.records(filters))
        return (
            export_line(record, unfinished=record.kind == RecordKind.START)
            for record in self.records(filters)
        )

    def verify(
        self,
        expected_head: Head | str | None = None,
        *,
        check_signature: SignatureCheck | None = None,
    ) -> VerifyReport:
        """Check the whole chain with :func:`~aegis.core.chain.verify_chain`."""
        checkpoints = getattr(self, "checkpoints", None)
        return verify_chain(
            self.records(Filters(view="records")),
            expected_head,
            checkpoints=checkpoints() if check_signature and checkpoints else (),
            check_signature=check_signature,
        )

    def head(self) -> Head:
        """The head of the chain, read from its last record."""
        last = None
        for last in self.records(Filters(view="records")):  # noqa: B007  # the last one
            pass
        return EMPTY_HEAD if last is None else Head(last.id, last.hash)
