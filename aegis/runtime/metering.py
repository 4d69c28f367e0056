"""The metering step: rate limits, budgets and flow conditions, checked against a store.

The runtime runs it between *decide* and *approve* for policies that have
``limit``, ``budget`` or ``after`` / ``not_after`` rules (others skip it):

1. flow conditions: each asks the usage store for the session's newest
   earlier action it accepts (newest first, stopping at the first: a long
   session costs no more), and the policy decides again knowing them (an
   earlier action whose params cannot be judged leaves a condition unsure:
   the rule blocks). An action that waited for approval is decided again
   so when let through (:meth:`MeteringStep.recheck`);
2. meters: the deciding rule's counters are checked **and reserved in one
   atomic step** in the store. Under the limit the rule's own approval
   stands; the action that would pass it gets the rule's ``on_exceed``, with
   a reason naming the limit, the count and the window. A budget param that
   is missing or not a number blocks the action;
3. what counts is an action let through to run: a reservation is released
   when the action is then blocked or denied, and kept once the executor
   starts, whatever its outcome. An action that waited for approval is
   counted again when it is let through (:meth:`MeteringStep.restamp`):
   its decision-time reservation only held its place while a person
   decided. A reservation whose action never finishes
   (the process was killed) stays counted until its window passes: a limit
   errs on the side of fewer actions. An ``auto`` action of an agent running
   actions one by one, with its counters in the audit's SQLite file, is
   checked and reserved in the transaction that appends its start record
   (:class:`Deferred`): one commit, and no reservation without its start;
4. every action let through is remembered as a flow event, whatever the
   policy (and for policies without limits too, :meth:`MeteringStep.note`):
   another process sharing the store, or this one after a reload, may run
   a flow condition that looks for it. While no policy that told the store
   looks back at all, a gap in the store stands in for a session's events
   instead, written once for many actions (:meth:`Metering.cover`). Once a
   minute (and on a new policy) the step tells the store how far back the
   policy looks (0 without flow conditions) and lets it delete older events
   (:meth:`~aegis.stores.base.UsageStore.forget_events`), a bounded number
   per call, in a transaction of their own. A condition that finds nothing
   while its window reaches back past what the store deleted of the session
   (:meth:`~aegis.stores.base.UsageStore.forgotten`) cannot be evaluated:
   its rule blocks.

Two classes: :class:`Metering` counts against a usage store (``aegis test``
replays histories with it too); :class:`MeteringStep` is the step as one
runtime runs it. The step knows the runtime only through what it is given:
the agent, the usage store (or the audit trail to find one beside, see
:func:`~aegis.runtime._usage_store.usage_store_for`), and, for each call,
the session and the policy deciding it. The one-commit start is an explicit
capability: an audit that is a :class:`~aegis.runtime.audit_backend.GuardedStarts`
over the very database of a usage store that is a :class:`StartGuarding`.

Who "agent" is, for ``key: [agent]``: ``Runtime(agent=...)``; when that is
``None``, the ``"agent"`` entry of the ``context`` given to ``run_one`` or
``execute``; else ``None`` (all such actions share one count).

Speed: a governed action costs about 100 µs and this step is on its path,
measured by ``python benchmarks/limits.py`` (see BENCHMARKS.md, "Limits,
budgets and flow rules"). The places that trade plainness for it say so:
``tuple.__new__`` for named tuples, the batch asked inline whether it is
alone, and :class:`_Lane`, which lets a sequential agent's next action of
the same rule skip the lookups its last one made.

Size: the store-facing counting (Metering) and the runtime's step
(MeteringStep, _Lane) share the fast path's state: the last subject, the batch
and the lane of a sequential agent; kept together so that the speed tricks stay
fenced in one module.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from asyncio import current_task
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from numbers import Real
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

from aegis.core.action import Action, FrozenDict, freeze
from aegis.core.conditions import Unevaluable
from aegis.core.decision import Approval, PolicyDecision
from aegis.core.limits import (
    Charge,
    FlowEvent,
    FlowSpec,
    KnownFacts,
    Meter,
    PolicyLimits,
    RuleLimits,
    Subject,
    flow_event,
)
from aegis.core.record import DecisionStamp
from aegis.core.result import Result, ResultStatus
from aegis.core.risk import RiskLevel
from aegis.errors import AegisError, AuditOutcomeUnknown, ConfigurationError, StoreError
from aegis.runtime._group_commit import GroupCommit
from aegis.runtime._usage_store import usage_store_for
from aegis.runtime.audit_backend import GuardedStarts
from aegis.stores.base import CoversEvents
from aegis.stores.sqlite.connection import Guard
from aegis.stores.usage import Acquired, Request, UsageStore, check_storable, params_json

if TYPE_CHECKING:
    from aegis.core.outcome import ApprovalOutcome

__all__ = ["Deferred", "Lease", "Metering", "MeteringStep", "Pending", "StartGuarding"]

_log = logging.getLogger("aegis.runtime")

#: a blocked budget or key is at least this risky: the action was not what the author expected
_UNEVALUABLE_MIN_RISK = RiskLevel.HIGH
#: flow events older than the policy looks back are deleted this often (seconds)...
_FORGET_EVERY = 60.0
#: ...and this soon again while a call left some to delete
_FORGET_SOON = 1.0
_UNTOLD = object()
#: a session whose actions need no flow event is covered by one gap this far ahead (seconds)
_COVER_FOR = 30.0
#: ...and covered again this long before that gap ends: an action never falls past it
_COVER_RENEW = 5.0
#: covers kept in memory before the ended ones are dropped
_MOST_COVERS = 10_000

#: the reservation an action holds until it runs or is refused (the store's tokens)
Lease = tuple[object, ...]
#: a rule and the request to reserve for it, with the concurrent actions' requests
Pending = tuple[RuleLimits, Request]
_Pending = Pending


class Deferred(NamedTuple):  # a tuple: built for every sequential metered action
    """What an action let through by its rule would reserve and remember, not yet written.

    An ``auto`` action of an agent running actions one by one, on a usage
    store that shares the audit trail's SQLite connection: its charges are
    checked and reserved, and its flow event kept, in the transaction that
    appends its start record (one commit instead of two, still one atomic
    step). If a charge does not fit then, nothing is written and the
    metering step runs again the ordinary way.
    """

    request: Request | None
    event: FlowEvent | None


def _settle(
    decision: PolicyDecision, rule: RuleLimits, request: Request, acquired: Acquired
) -> PolicyDecision:
    """The decision once the counters are known: ``on_exceed`` past a limit."""
    if acquired.exceeded is None:
        return decision
    index = acquired.exceeded
    exceed = rule.on_exceed
    return replace(
        decision,
        approval=exceed.approval,
        risk_level=exceed.risk_level or decision.risk_level,
        reason=rule.meters[index].describe(acquired.used[index], request.charges[index]),
    )


def _unmetered(decision: PolicyDecision, exc: AegisError) -> PolicyDecision:
    """``decision`` blocked because the usage store failed."""
    return replace(
        decision,
        approval=Approval.BLOCK,
        risk_level=max(decision.risk_level, _UNEVALUABLE_MIN_RISK),
        reason=f"blocked: the usage counters could not be checked: {exc}",
    )


def _frozen(event: FlowEvent) -> FlowEvent:
    """``event`` with its params frozen as an Action's, which a rule's conditions compare.

    Raises:
        Unevaluable: they are no action's params (not plain JSON-like data).
    """
    try:
        params = freeze(dict(event.params))
    except (TypeError, ValueError) as exc:
        raise Unevaluable(f"an earlier event's params are not plain data ({exc})") from None
    return FlowEvent(event.session_id, event.type, event.target, params, event.at)


#: builds a named tuple from C: its generated ``__new__`` is a Python call, for every action
_new = tuple.__new__


def _takes_passing(store: object) -> bool:
    """Whether ``store.latest_event`` passes over an event by its id (``passing=``)."""
    try:
        return "passing" in inspect.signature(store.latest_event).parameters  # type: ignore[attr-defined]
    except (AttributeError, TypeError, ValueError):  # no signature to read: not that it does
        return False


def _alike(event: FlowEvent, own: FlowEvent) -> bool:
    """Whether ``event`` holds what ``own`` does, field by field (params as stored)."""
    if event.at != own.at or event.type != own.type or event.target != own.target:
        return False
    try:
        return params_json(event.params) == params_json(own.params)
    except (TypeError, ValueError, RecursionError):  # cannot tell: not the action's own
        return False


def _horizon(limits: PolicyLimits | None) -> float | None:
    """How far back (seconds) a policy's flow conditions look; 0 for a policy without any."""
    if limits is None or not limits.flow_specs:
        return 0.0
    return limits.flow_horizon


def _charges(meters: tuple[Meter, ...], action: Action, subject: Subject) -> tuple[Charge, ...]:
    """What ``action`` (folded as its policy folds names) adds to each meter's counter.

    Raises:
        Unevaluable: a key or amount the action does not have (see Meter.charge).
    """
    if len(meters) == 1:  # the usual rule: no list to build
        return (meters[0].charge(action, subject),)
    return tuple([meter.charge(action, subject) for meter in meters])


class Metering:
    """Counting against a usage store for one agent: what the limits say, and reserving it.

    ``check(..., reserve=False)`` reserves nothing (``runtime.plan()``);
    :meth:`count` replays a history (``aegis test``).
    """

    def __init__(self, store: UsageStore, *, agent: str | None = None) -> None:
        self.store = store
        self.agent = agent
        #: the reservations of one event loop iteration, made in one transaction
        self.batch: GroupCommit[Request, Acquired] = GroupCommit(
            store.acquire_many, drop_cancelled=True, give_back=self._give_back
        )
        #: the flow events of one event loop iteration, noted in one transaction; an
        #: action cancelled before its event is written does not run: left out; one
        #: cancelled once it is written does not run either: its event is taken back
        self.notes: GroupCommit[FlowEvent, object] = GroupCommit(
            self._remember_many, drop_cancelled=True, give_back=self.withdraw
        )
        #: whether a Deferred may carry charges to reserve with the start record (a
        #: store whose guard writes flow events only says not: see StartGuarding)
        self.defers_charges: bool = getattr(store, "guards_charges", True) is not False
        #: the subject of the last check, reused while it is the same one
        self.last_subject = Subject("", agent)
        #: when the store last forgot old flow events, when to let it next, and the horizon
        #: it was told (compared by value: a policy object may build its limits anew); a
        #: clock set back before the last time lets it at once (waiting for the clock to
        #: pass the old time again stopped the deleting for as long as it had gone back)
        self._forgot, self._forget_at = 0.0, 0.0
        self._told: object = _UNTOLD
        #: the policy whose horizon was told last (see noted)
        self._policy: object = None
        #: whether latest_event passes over one event by its id (the engines' stores do)
        self._passes: bool = _takes_passing(store)
        #: the sessions covered by a gap in the store, each with the time its cover
        #: must be renewed by (see cover); the store's cover_events, if it has one
        self.covers: dict[str, float] = {}
        self._cover_events: Callable[[str, float], bool] | None = (
            store.cover_events if isinstance(store, CoversEvents) else None
        )
        #: the store said events are needed (a policy looks back): ask again after this
        self._uncovered_until = 0.0

    def cover(self, session_id: str, policy: Any, at: float) -> bool:
        """Whether the action of ``session_id`` at ``at`` may go without its flow event.

        Only for a ``policy`` without flow conditions (the caller's to know).
        While no policy that told the store looks back at all (its horizon
        is 0), an event would be deleted unread: the session is covered
        instead, by a gap in the store reaching :data:`_COVER_FOR` seconds
        ahead, written once for the many actions that fall in it. A flow
        condition that later looks back over the gap (another process's, or
        this one's after a reload) cannot say "never": its rule blocks.
        The store is asked again once a cover nears its end, so a horizon
        declared meanwhile has events noted from then on; a store that
        fails or says no has the event noted, as ever.
        """
        renew = self.covers.get(session_id)
        if renew is not None and at < renew:
            return True  # (the usual case: one look-up per action)
        cover = self._cover_events
        if cover is None:
            return False
        self.noted(policy, at)  # the store knows this policy's horizon (0) before it answers
        if at < self._uncovered_until:
            return False
        until = at + _COVER_FOR
        try:
            covered = cover(session_id, until)
        except AegisError:
            _log.warning("could not cover a session's flow history; noting events", exc_info=True)
            covered = False
        if covered is not True:
            self._uncovered_until = at + _FORGET_EVERY
            return False
        covers = self.covers
        if len(covers) >= _MOST_COVERS:
            # a copy: another thread's runtime may cover a session meanwhile
            for name, ends in list(covers.items()):
                if ends <= at:
                    covers.pop(name, None)
        covers[session_id] = until - _COVER_RENEW
        return True

    def _forget(self, horizon: float | None, at: float) -> None:
        """Tell the store how far back the policy looks, and let it delete older events.

        Housekeeping: a store that fails is logged and asked again later,
        never a reason to refuse the action (the recall or the note of the
        event says so when the store is broken).
        """
        self._told = horizon
        try:
            more = self.store.forget_events(horizon, at)
        except AegisError:
            _log.warning("could not delete old flow events; trying again later", exc_info=True)
            more = False
        self._forgot, self._forget_at = at, at + (_FORGET_SOON if more else _FORGET_EVERY)

    def _remember_many(self, events: list[FlowEvent]) -> list[object]:
        """Note ``events`` together, where the store can (else one by one); their ids.

        An id is ``None`` when the store gives none (see :meth:`withdraw`).
        """
        many = getattr(self.store, "remember_many", None)
        if many is not None:
            ids = many(events)
            if isinstance(ids, list) and len(ids) == len(events):
                return ids
        else:
            for event in events:
                self.store.remember(event)
        return [None] * len(events)

    def withdraw(self, event_id: object) -> None:
        """Delete the flow event noted as ``event_id``: its action does not run after all.

        Its action was cancelled once its event was written, or a flow rule
        blocked it then (see :meth:`MeteringStep.ran`). A store that cannot
        delete it (no id, no ``drop_events``, or it fails) keeps it, and that
        is logged: flow conditions then count an action that did not run. A
        rule that blocks what comes after it blocks more (the safe side); one
        that needs it to have run (``not_after`` it, block) lets through
        what it would have blocked.
        """
        drop = getattr(self.store, "drop_events", None)
        if event_id is None or not callable(drop):
            _log.error(
                "the flow event of an action that did not run stays (the usage store %r cannot"
                " delete one): flow conditions will count it as run",
                self.store,
            )
            return
        try:
            drop([event_id])
        except Exception:  # a give-back: the cancellation or the refusal goes on
            _log.exception(
                "could not delete the flow event of an action that did not run; it stays, and"
                " flow conditions will count it as run"
            )

    def _give_back(self, acquired: Acquired) -> None:
        """Release what a check reserved for an action that was cancelled meanwhile."""
        if acquired.reservation:
            try:
                self.store.release(acquired.reservation)
            except AegisError:
                _log.exception("could not release a reservation; it stays counted")

    def subject(self, session_id: str, context: Mapping[str, Any] | None) -> Subject:
        """Who acts: ``agent`` from the runtime, else from the call's context."""
        agent = self.agent
        if agent is None and context:
            named = context.get("agent")
            agent = named if isinstance(named, str) else None
        last = self.last_subject
        if last.session_id == session_id and last.agent == agent:
            return last
        self.last_subject = subject = Subject(session_id, agent)
        return subject

    def check(
        self,
        policy: Any,
        action: Action,
        subject: Subject,
        *,
        reserve: bool = True,
        now: float | None = None,
    ) -> tuple[PolicyDecision, Lease | None]:
        """Decide ``action`` with its session's history and its rule's counters.

        Returns the decision and, when the action's charges were reserved,
        the lease to :meth:`release` if it does not run after all.
        """
        at = time.time() if now is None else now
        decision, pending = self.begin(policy, action, subject, None, False, at=at)
        if pending is None or isinstance(pending, Deferred):
            return decision, None
        rule, request = pending
        if reserve:
            acquired = self.store.acquire_many([request])[0]
        else:
            acquired = self.store.acquire(request.charges, at, reserve=False, over=request.over)
        return _settle(decision, rule, request, acquired), acquired.reservation

    async def check_async(
        self,
        policy: Any,
        action: Action,
        subject: Subject,
        *,
        decided: PolicyDecision | None = None,
        defer: bool = False,
    ) -> tuple[PolicyDecision, Lease | Deferred | None]:
        """:meth:`check` with reservation, sharing one transaction with concurrent checks.

        The checks of one event loop iteration are reserved together (group
        commit), each seeing the ones before it, all in one atomic step.
        ``decided`` is ``policy``'s decision of ``action`` taken just now,
        reused when no flow condition asks for the session's history. With
        ``defer``, an ``auto`` action with nothing to group with gets a
        :class:`Deferred` instead: nothing is reserved yet.
        """
        decision, found = self.begin(policy, action, subject, decided, defer)
        if found is None or isinstance(found, Deferred):
            return decision, found
        return await self.reserve(decision, found)

    def begin(
        self,
        policy: Any,
        action: Action,
        subject: Subject,
        decided: PolicyDecision | None,
        defer: bool,
        *,
        at: float | None = None,
    ) -> tuple[PolicyDecision, Deferred | _Pending | None]:
        """The first, synchronous part of :meth:`check_async`: decide, and say what to reserve.

        The decision with the session's history, and: nothing to reserve
        (``None``), a :class:`Deferred`, or the rule and request to give
        :meth:`reserve`. ``decided`` is the policy's decision taken just
        now, reused when no flow condition asks for history; ``at`` the
        time of the check (now when not given).
        """
        limits: PolicyLimits = policy.limits
        if at is None:  # the runtime's own check, now (plan() and `aegis test` give a time)
            at = time.time()
            if limits.flow_specs and (
                not self._forgot <= at < self._forget_at or limits.flow_horizon != self._told
            ):
                # before the recall: a longer window is kept from now
                self._forget(limits.flow_horizon, at)
        specs = limits.flow_specs_for(action) if limits.flow_specs else ()
        if specs:
            facts = self._facts(limits, specs, subject.session_id, at)
            moment = datetime.fromtimestamp(at, UTC)
            decision = policy.evaluate(action, now=moment, history=facts)
        elif decided is not None:
            decision = decided
        else:
            decision = policy.evaluate(action, now=datetime.fromtimestamp(at, UTC))
        approval = decision.approval
        if approval is Approval.BLOCK:
            return decision, None
        rule = limits.by_rule.get(decision.matched_rule)
        pending: _Pending | None = None
        if rule is not None:
            try:
                metered = limits.folded(action) if limits.folds else action
                charges = _charges(rule.meters, metered, subject)
            except Unevaluable as exc:
                risk = max(decision.risk_level, _UNEVALUABLE_MIN_RISK)
                blocked = replace(
                    decision,
                    approval=Approval.BLOCK,
                    risk_level=risk,
                    reason=f"blocked: {exc.reason}",
                )
                return blocked, None
            over = rule.on_exceed.approval is not Approval.BLOCK
            pending = (rule, _new(Request, (charges, at, over)))
        if defer and approval is Approval.AUTO:
            # every action let through is noted, whatever this policy looks for (see ran()),
            # unless no policy looks back at all (see cover)
            session_id = subject.session_id
            if not limits.flow_specs and self.cover(session_id, policy, at):
                event = None
                if pending is None:
                    return decision, None
            else:
                event = flow_event(session_id, action.type, action.target, action.params, at)
            if pending is None:
                return decision, _new(Deferred, (None, event))
            batch = self.batch
            # batch.alone(), inline: a call less on every sequential action (benchmarks/limits.py)
            if self.defers_charges and not batch.waiting and current_task() is batch.last_task:
                return decision, _new(Deferred, (pending[1], event))
        return decision, pending

    async def reserve(
        self, decision: PolicyDecision, pending: _Pending
    ) -> tuple[PolicyDecision, Lease | None]:
        """The second part: reserve (with concurrent checks) and settle the decision."""
        rule, request = pending
        acquired = await self.batch.submit(request)
        return _settle(decision, rule, request, acquired), acquired.reservation

    def refused(
        self, policy: Any, decision: PolicyDecision, request: Request, acquired: Acquired
    ) -> PolicyDecision | None:
        """The decision when a deferred charge did not fit, if no reservation is needed for it.

        ``None`` when the rule's ``on_exceed`` still lets the action run (it
        must then reserve ``over`` its limit, the ordinary way).
        """
        rule = policy.limits.by_rule.get(decision.matched_rule)
        if rule is None or rule.on_exceed.approval is not Approval.BLOCK:
            return None
        return _settle(decision, rule, request, acquired)

    def count(self, policy: Any, action: Action, subject: Subject, *, now: float) -> None:
        """Note that ``action`` ran at ``now``, whatever the limits say: a history to replay.

        ``aegis test`` uses it for a case's history; its counters and flow
        events then look as if the runtime had let these actions through.
        """
        limits: PolicyLimits = policy.limits
        moment = datetime.fromtimestamp(now, UTC)
        specs = limits.flow_specs_for(action)
        history = self._facts(limits, specs, subject.session_id, now) if specs else None
        decision = policy.evaluate(action, now=moment, history=history)
        rule = limits.by_rule.get(decision.matched_rule)
        if rule is not None:
            try:
                charges = [meter.charge(limits.folded(action), subject) for meter in rule.meters]
            except Unevaluable:
                charges = []
            if charges:
                self.store.acquire(charges, now, reserve=True, over=True)
        self.ran(policy, action, subject.session_id, now)

    def release(self, lease: Lease | None) -> None:
        """Give back what ``lease`` reserved: the action will not run."""
        if lease:
            self.store.release(lease)

    def ran(self, policy: Any, action: Action, session_id: str, now: float | None = None) -> None:
        """Note that ``action`` was let through, whatever the policy's flow conditions look for.

        Every action is noted, not only those this policy's conditions could
        look for: another process sharing the store (or this one, after a
        reload) may run a policy whose ``not_after`` looks for it.
        """
        at = time.time() if now is None else now
        self.store.remember(flow_event(session_id, action.type, action.target, action.params, at))
        if now is None:
            self.noted(policy, at)

    def noted(self, policy: Any, at: float) -> None:
        """Let the store delete events older than ``policy`` looks back, now and then.

        Called once an action's event is noted; a policy without flow
        conditions needs none of them (its horizon is 0: the store keeps
        the longest horizon another process declared).
        """
        if self._forgot <= at < self._forget_at and policy is self._policy:
            return  # (the usual case: one comparison per action)
        self._policy = policy
        horizon = _horizon(getattr(policy, "limits", None))
        if not self._forgot <= at < self._forget_at or horizon != self._told:
            self._forget(horizon, at)

    def earlier(
        self, limits: PolicyLimits, rule: str, session_id: str, now: float
    ) -> tuple[str, ...]:
        """For each ``after`` condition of ``rule``: the latest earlier action it found.

        One line per condition that found one, for a reviewer: ``earlier in
        this session: read_contacts on crm at 2026-12-07 01:40:12 UTC``.
        Read only when a person is about to be asked.
        """
        lines = []
        for spec, negated in limits.flows_of(rule):
            if negated:
                continue
            event = self._latest(limits, spec, session_id, now, until=now)
            if event is not None:
                when = datetime.fromtimestamp(event.at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
                lines.append(
                    f"earlier in this session: {_cut(event.type)} on {_cut(event.target)} at {when}"
                )
        return tuple(lines)

    def _facts(
        self,
        limits: PolicyLimits,
        specs: tuple[FlowSpec, ...],
        session_id: str,
        at: float,
        *,
        own: FlowEvent | None = None,
        own_id: object = None,
    ) -> KnownFacts:
        """What the session's history says of each of ``specs``: holds, does not, or unsure.

        ``own``: the action's own event, noted already as ``own_id`` (what
        the store gave, ``None`` if nothing), which is not its history.
        """
        true: list[FlowSpec] = []
        unsure: dict[FlowSpec, str] = {}
        asked = False  # the gap is read once, and only when a condition finds nothing
        gap: float | None = None
        for spec in specs:
            problem: list[str] = []
            found = self._latest(
                limits, spec, session_id, at, problem=problem, own=own, own_id=own_id
            )
            if found is not None:
                true.append(spec)
            elif problem:
                unsure[spec] = problem[0]
            else:
                if not asked:
                    gap = _deleted_up_to(self.store.forgotten(session_id), self.store)
                    asked = True
                if gap is not None and (spec.within is None or at - spec.within < gap):
                    unsure[spec] = _gone(spec, gap)
        return KnownFacts(true, unsure)

    def _latest(
        self,
        limits: PolicyLimits,
        spec: FlowSpec,
        session_id: str,
        at: float,
        until: float | None = None,
        *,
        problem: list[str] | None = None,
        own: FlowEvent | None = None,
        own_id: object = None,
    ) -> FlowEvent | None:
        """The session's newest event that ``spec`` looks for at ``at`` (none after ``until``).

        One question to the store, which stops at the first match, newest
        first: a check costs the same however long the session's history
        (see :meth:`~aegis.stores.base.UsageStore.latest_event`). An event
        whose params cannot be judged is passed over, its reason added to
        ``problem``: with no match, the condition is unsure, not false.
        ``own`` (the action's own event, noted as ``own_id``) is passed over,
        and no other: by its id where the store takes one, else the first
        event read that is ``own`` in every field (a twin of it, noted by
        another action at the same moment, is a twin to every condition too).
        """
        kind, target, ask = limits.narrowing(spec)
        matches = limits.spec_matches
        passing = own_id if own_id is not None and self._passes else None
        # a store that cannot pass over the event by its id: by what it holds, once
        skip = [own if own is not None and passing is None else None]

        def accepts(event: FlowEvent) -> bool:
            if until is not None and event.at > until:
                return False
            if skip[0] is not None and _alike(event, skip[0]):
                skip[0] = None
                return False
            try:
                if type(event.params) is not FrozenDict:  # a store of one's own: see latest_event
                    event = _frozen(event)
                return matches(spec, event, at)
            except Unevaluable as exc:
                if problem is not None and not problem:
                    problem.append(exc.reason)
                return False

        where = accepts if ask or until is not None or skip[0] is not None else None
        if passing is not None:
            return self.store.latest_event(
                session_id,
                spec.since(at),
                where,
                action_type=kind,
                action_target=target,
                passing=passing,
            )
        return self.store.latest_event(
            session_id, spec.since(at), where, action_type=kind, action_target=target
        )

    def close(self) -> None:
        """Close the usage store."""
        self.store.close()


@runtime_checkable
class StartGuarding(Protocol):
    """A usage store whose writes can join an audit append's transaction.

    ``db`` is the database it writes to; an audit that
    :meth:`~aegis.runtime.audit_backend.GuardedStarts.guards` that database
    appends a start record with :meth:`guard`'s writes in one commit.
    SQLite's guard reserves charges and notes the flow event; PostgreSQL's
    notes the flow event only (its ``guards_charges`` is ``False``: an
    action with charges reserves them the ordinary way first).
    """

    db: object

    def guard(self, request: Request | None, event: FlowEvent | None) -> ReservingGuard:
        """The writes of an action about to run, to make with its start record."""
        ...


class ReservingGuard(Guard, Protocol):
    """A guard that says, when a charge did not fit, what the counters held."""

    #: ``None`` until the guard found a charge that does not fit
    acquired: Acquired | None


def _not_a_usage_store(store: object) -> str:
    """Why ``store`` is refused as a usage store: the methods it lacks, and what to do."""
    kind = type(store).__name__
    members = vars(UsageStore)
    missing = [
        name
        for name in sorted(members)
        if not name.startswith("_")
        and callable(members[name])
        and not callable(getattr(store, name, None))
    ]
    message = f"usage_store must implement aegis.stores.usage.UsageStore; {kind} has no "
    message += ", ".join(missing) if missing else "such methods"
    if missing and len(missing) < len([n for n in members if not n.startswith("_")]):
        # a store of its own, written to an earlier protocol: say what to add
        message += (
            " (see the docstrings of aegis.stores.base.UsageStore; latest_event, which flow"
            " conditions ask, can be written over the store's recall: the session's newest"
            " event newer than since that where accepts)"
            if "latest_event" in missing
            else " (see the docstrings of aegis.stores.base.UsageStore)"
        )
        if "forgotten" in missing:
            message += (
                "; forgotten(session_id) says up to when forget_events deleted the session's"
                " events (None: never), so that a flow rule never reads a gap as 'did not happen'"
            )
    else:
        message += "; e.g. SQLiteUsageStore('aegis_audit.db')"
    return message


class MeteringStep:
    """The metering step of one runtime: its usage store (opened at first need) and its agent.

    Args:
        agent: who acts, for limits keyed by ``agent`` (see the module docstring).
        usage_store: where to count; ``None`` finds the store beside the
            audit trail (and closes it in :meth:`close`).

    The runtime then gives it its audit trail (:meth:`beside`): where to
    find the counters when no store is given, and where a start record may
    carry its reservation. Nothing is opened before the first action that
    needs the counters.

    Raises:
        ConfigurationError: an ``agent`` that is not a string, or a
            ``usage_store`` that is not a :class:`~aegis.stores.usage.UsageStore`.
    """

    def __init__(self, agent: str | None, usage_store: UsageStore | None) -> None:
        if agent is not None and not isinstance(agent, str):
            raise ConfigurationError(f"agent must be a string or None, got {type(agent).__name__}")
        if usage_store is not None and not isinstance(usage_store, UsageStore):
            raise ConfigurationError(_not_a_usage_store(usage_store))
        self.agent = agent
        self._given = usage_store
        self._audit: object = None
        self._metering: Metering | None = None
        self._owned = False
        # the audit whose start records carry the reservations (see Deferred), if one
        # can, and the store whose guard it takes: found once, when the store opens
        self._guarded: GuardedStarts | None = None
        self._guarding: StartGuarding | None = None
        # the last check that deferred, to repeat while nothing it rests on changes
        self._lane: _Lane | None = None

    def beside(self, audit: object) -> None:
        """Count beside ``audit`` (unless given a store); let its starts carry reservations."""
        if self._metering is not None:
            raise ConfigurationError("the usage counters are open already; give the audit first")
        self._audit = audit

    @property
    def store(self) -> UsageStore:
        """The usage store, opened the first time it is asked for."""
        return self.metering().store

    def metering(self) -> Metering:
        """The counting itself, opening the usage store the first time."""
        if self._metering is None:
            store = self._given
            if store is None:
                store, self._owned = usage_store_for(self._audit)
            self._metering = Metering(store, agent=self.agent)
            audit = self._audit
            if (
                isinstance(audit, GuardedStarts)
                and isinstance(store, StartGuarding)
                and audit.guards(store.db)
            ):
                self._guarded, self._guarding = audit, store
        return self._metering

    def earlier(self, policy: Any, decision: PolicyDecision, session_id: str) -> tuple[str, ...]:
        """The earlier actions that made ``decision``'s flow rule hold.

        See :meth:`Metering.earlier`.

        Empty when its rule has no ``after`` condition, and when the history
        cannot be read: explaining never stands between a person and the question.
        """
        limits: PolicyLimits | None = getattr(policy, "limits", None)
        if limits is None or not limits.flows_of(decision.matched_rule):
            return ()
        try:
            return self.metering().earlier(limits, decision.matched_rule, session_id, time.time())
        except Exception:  # the question is asked either way
            _log.warning(
                "could not read the session's history to explain a flow rule", exc_info=True
            )
            return ()

    def preview(self, policy: Any, decision: PolicyDecision, session_id: str) -> PolicyDecision:
        """What the limits say now about the action of ``decision``, reserving nothing."""
        metering = self.metering()
        subject = metering.subject(session_id, None)
        checked, _ = metering.check(policy, decision.action, subject, reserve=False)
        return checked

    def check(  # noqa: PLR0917  # the per-action path: positional, no keyword dict to build
        self,
        session_id: str,
        policy: Any,
        decision: PolicyDecision,
        stamp: DecisionStamp,
        plain: bool,
        defer: bool,
    ) -> tuple[PolicyDecision, Deferred | None, DecisionStamp, _Pending | None]:
        """The metering step of one action, as far as it goes without waiting.

        Returns the decision, a :class:`Deferred` for :meth:`start` (or
        ``None``), a fresh stamp and, when the charges must be reserved with
        the concurrent actions' first, what to give :meth:`reserve`.
        ``plain``: ``decision`` is the policy's own, just taken (no limit
        applied yet), and need not be taken again. ``defer`` allows a
        :class:`Deferred`, when the audit can carry it. A usage store that
        fails blocks the action, with the error as reason.
        """
        if stamp.policy_digest != getattr(policy, "digest", None):
            # decided by a policy swapped out since: this step decides anew
            stamp = DecisionStamp.now(policy, stamp.context)
            plain = False
        lane = self._lane
        if (
            lane is not None
            and plain
            and defer
            and lane.policy is policy
            and lane.rule == decision.matched_rule
            and decision.approval is Approval.AUTO
        ):
            # The agent's last rule again: see _Lane. Only the time (and the
            # charges, when they depend on the action) is new.
            metering = self._metering  # (its agent is set: see _Lane.of)
            subject = lane.subject
            if (
                metering is not None
                and metering.last_subject is subject
                and subject.session_id == session_id
                and metering.batch.alone()
            ):
                charges = lane.charges
                if charges is None:
                    charges = lane.charge(decision.action)
                if charges is not None:
                    at = time.time()
                    request = _new(Request, (charges, at, lane.over))
                    action = decision.action
                    # a lane's policy has no flow condition (see _Lane.of)
                    event = (
                        None
                        if metering.cover(session_id, policy, at)
                        else flow_event(session_id, action.type, action.target, action.params, at)
                    )
                    return decision, _new(Deferred, (request, event)), stamp, None
        try:
            metering = self._metering or self.metering()
            subject = metering.last_subject  # subject()'s answer when it is the last one's
            if metering.agent is None or subject.session_id != session_id:
                subject = metering.subject(session_id, stamp.context)
            checked, found = metering.begin(
                policy,
                decision.action,
                subject,
                decision if plain else None,
                defer and self._guarded is not None,
            )
        except AegisError as exc:
            return _unmetered(decision, exc), None, stamp, None
        if found is None or isinstance(found, Deferred):
            if found is not None and plain and defer:
                self._lane = _Lane.of(policy, decision, metering, found)
            return checked, found, stamp, None
        return checked, None, stamp, found

    async def reserve(
        self, decision: PolicyDecision, checked: PolicyDecision, pending: _Pending
    ) -> tuple[PolicyDecision, Lease | None]:
        """The rest of :meth:`check`: reserve with the concurrent actions, then settle.

        ``decision`` is the one :meth:`check` was given, ``checked`` its answer.
        """
        try:
            return await (self._metering or self.metering()).reserve(checked, pending)
        except AegisError as exc:
            return _unmetered(decision, exc), None

    def recheck(
        self,
        session_id: str,
        policy: Any,
        decision: PolicyDecision,
        own: FlowEvent | None = None,
        own_id: object = None,
    ) -> PolicyDecision | None:
        """The policy's decision now, when the session's history turned it into a block.

        An approved action is let through later than it was decided: what
        ran in the session meanwhile (a read a ``not_after`` forbids, in
        another task or process) is asked about again, as :meth:`restamp`
        counts the limits again. ``None`` when no flow condition looks at
        the action, or the policy still lets it through (the person's
        approval stands); a store that fails blocks. ``own``: the action's
        event, once noted (see :meth:`ran`) as ``own_id``, which its
        conditions pass over (that one event: see :meth:`Metering._latest`).
        """
        limits: PolicyLimits | None = getattr(policy, "limits", None)
        action = decision.action
        if limits is None or not limits.flow_specs:
            return None
        specs = limits.flow_specs_for(action)
        if not specs:
            return None
        at = time.time()
        try:
            metering = self._metering or self.metering()
            facts = metering._facts(limits, specs, session_id, at, own=own, own_id=own_id)
        except AegisError as exc:
            return _unmetered(decision, exc)
        fresh: PolicyDecision = policy.evaluate(
            action, now=datetime.fromtimestamp(at, UTC), history=facts
        )
        if fresh.approval is not Approval.BLOCK:
            return None
        return replace(
            fresh, reason=f"{fresh.reason} (the session's history changed while approval was asked)"
        )

    async def restamp(
        self, decision: PolicyDecision, pending: _Pending, lease: Lease | None
    ) -> tuple[PolicyDecision | None, Lease | None]:
        """Count an approved action from when it is let through, not from when it was decided.

        While a person decides, the reservation made at decision time holds
        the action's place; once approved it is given back and the charges
        are reserved again now, in one atomic step that counts whatever ran
        meanwhile (between the two, another action may take the place: the
        approved one is then refused, never run past the limit). Without
        this, an approval slower than the window let a "1 per 3 s" limit run
        two sends 0.9 s apart. Returns the decision
        under the rule's ``on_exceed`` when that blocks (the action does not
        run; nothing stays reserved), else ``None``, and the new lease.
        """
        rule, request = pending
        self.release(lease)
        fresh: Request = _new(Request, (request.charges, time.time(), request.over))
        try:
            acquired = await (self._metering or self.metering()).batch.submit(fresh)
        except AegisError as exc:
            return _unmetered(decision, exc), None
        if acquired.exceeded is not None and rule.on_exceed.approval is Approval.BLOCK:
            return _settle(decision, rule, fresh, acquired), None
        # Within the limit; or over it, and on_exceed lets it run (it counts).
        return None, acquired.reservation

    def start(  # noqa: PLR0917  # the per-action path: positional, no keyword dict to build
        self,
        session_id: str,
        policy: Any,
        decision: PolicyDecision,
        deferred: Deferred,
        human: str | ApprovalOutcome | None,
        stamp: DecisionStamp | None,
    ) -> int | PolicyDecision | None:
        """Append the start record of ``decision`` with what ``deferred`` reserves: one commit.

        Only after :meth:`check` gave ``deferred`` (so the audit guards the
        store). ``stamp`` is what the start record stores of the decision
        (``None``: nothing). Returns the start record's id; else, when a
        charge no longer fits, the decision under the rule's ``on_exceed``
        if that blocks, and ``None`` when the metering step must run again
        the ordinary way (``on_exceed`` lets the action run over the limit,
        or the store failed: the ordinary way reports that).
        """
        metering = self._metering or self.metering()
        audit, store = self._guarded, self._guarding
        if audit is None or store is None:  # check() defers only when both are there
            return None
        guard = store.guard(deferred.request, deferred.event)
        try:
            token = audit.record_start_guarded(session_id, decision, guard, human, stamp)
        except AuditOutcomeUnknown:
            # it may be written yet: written the ordinary way too, it could be twice
            raise
        except AegisError:
            _log.debug("the start with its reservation failed; metering again", exc_info=True)
            return None
        if token is not None:
            event = deferred.event
            # metering.noted's usual answer (nothing due), without its call
            if event is not None and not (
                metering._forgot <= event.at < metering._forget_at and policy is metering._policy
            ):
                metering.noted(policy, event.at)
            return token
        acquired = guard.acquired
        if acquired is None or deferred.request is None:
            return None
        return metering.refused(policy, decision, deferred.request, acquired)

    def note(self, session_id: str, policy: Any, action: Action) -> Deferred | None:
        """The flow event of an action of a ``policy`` without limits, to write with its start.

        Every action let through is noted (see :meth:`Metering.ran`): a
        ``not_after`` of another process, or of this one after a reload,
        may look for it; while no policy looks back at all, a gap stands in
        for it (:meth:`Metering.cover`). ``None`` when the audit cannot
        carry it in its start record's transaction, or it is covered;
        :meth:`ran` notes it then (or nothing, the same cover standing).
        """
        try:
            self._metering or self.metering()
        except AegisError:
            return None  # ran() says why the action does not run
        if self._guarded is None:
            return None
        metering: Metering = self._metering  # type: ignore[assignment]  # opened just above
        notes = metering.notes
        # notes.alone(), inline: a call less on every action (benchmarks/calls.py)
        if notes.waiting or current_task() is not notes.last_task:
            return None  # others to note with: ran() notes it with them, in one transaction
        at = time.time()
        if metering.cover(session_id, policy, at):
            return None  # no policy looks back: ran() notes nothing either
        event = flow_event(session_id, action.type, action.target, action.params, at)
        return _new(Deferred, (None, event))

    def release(self, lease: Lease | Deferred | None) -> None:
        """Release ``lease``; a failure only leaves it counted (the safe side), and is logged."""
        if not lease or self._metering is None or isinstance(lease, Deferred):
            return
        try:
            self._metering.release(lease)
        except AegisError:
            _log.exception("could not release a reservation; it stays counted until it expires")

    async def ran(
        self, session_id: str, policy: Any, action: Action, approved: PolicyDecision | None = None
    ) -> Result | PolicyDecision | None:
        """Note that ``action`` is let through; a ``FAILED`` Result if that cannot be noted.

        The events of concurrent actions are noted in one transaction. The
        caller then gives back what the action reserved: it does not run.
        ``approved``: the decision of an action that waited for approval,
        decided again here (:meth:`recheck`), once its event is noted: up to
        its executor nothing more is awaited, so what ran in the session
        before it is all seen. When that blocks it, its event is taken back
        and the blocking decision returned.
        """
        try:
            metering = self._metering or self.metering()
            at = time.time()
            limits = getattr(policy, "limits", None)
            if (limits is None or not limits.flow_specs) and metering.cover(session_id, policy, at):
                return None  # no policy looks back: a gap stands in for the event (see cover)
            event = flow_event(session_id, action.type, action.target, action.params, at)
            notes = metering.notes
            # notes.alone(), inline: alone, the event is written at once, and fails alone
            if notes.waiting or current_task() is not notes.last_task:
                # one that cannot be written must not fail its batch
                check_storable(event, holds_nul=getattr(metering.store, "holds_nul", True))
            noted = await notes.submit(event)
            metering.noted(policy, at)
        except AegisError as exc:
            now = datetime.now(UTC)
            return Result(
                action,
                ResultStatus.FAILED,
                error=f"not run: the usage store could not note the action: {exc}",
                started_at=now,
                completed_at=now,
            )
        if approved is not None:
            tripped = self.recheck(session_id, policy, approved, event, noted)
            if tripped is not None:
                metering.withdraw(noted)
                return tripped
        return None

    def close(self) -> None:
        """Close the usage store, if this step opened it."""
        metering, self._metering = self._metering, None
        if metering is not None and self._owned:
            metering.close()


class _Lane:
    """A sequential agent's last deferred check of a rule, and what a next one may reuse.

    While the same policy object decides the same rule for the same subject
    (and nothing waits to be grouped), the rule's lookup, its meters and
    ``on_exceed`` are as they were; so are the charges themselves when every
    meter is a limit keyed by session, agent or nothing (``per_subject``).
    Only for an :class:`~aegis.core.policy.Policy` (which never changes; a
    policy object of another kind might), without flow conditions (nothing
    asks for history), and an agent given to the runtime (not named by each
    call's context). The action's flow event is noted all the same.
    """

    __slots__ = ("charges", "folds", "meters", "over", "policy", "rule", "subject")

    def __init__(
        self,
        policy: Any,
        rule: RuleLimits,
        subject: Subject,
        charges: tuple[Charge, ...] | None,
        over: bool,
    ) -> None:
        self.policy = policy
        self.rule = rule.rule
        self.subject = subject
        self.meters = rule.meters
        self.folds: PolicyLimits | None = policy.limits if policy.limits.folds else None
        #: the charges to reuse; None when they depend on the action
        self.charges = charges
        self.over = over

    @classmethod
    def of(
        cls, policy: Any, decision: PolicyDecision, metering: Metering, deferred: Deferred
    ) -> _Lane | None:
        """The lane of a check that deferred ``deferred``, if a next check may use one."""
        request = deferred.request
        if request is None or not _immutable(policy):  # another policy may change its rules
            return None
        limits: PolicyLimits = policy.limits
        rule = limits.by_rule.get(decision.matched_rule)
        if limits.flow_specs or rule is None or metering.agent is None:
            return None
        fixed = all(meter.per_subject for meter in rule.meters)
        return cls(
            policy, rule, metering.last_subject, request.charges if fixed else None, request.over
        )

    def charge(self, action: Action) -> tuple[Charge, ...] | None:
        """``action``'s charges; ``None`` when it cannot be charged (the general path says why)."""
        if self.folds is not None:
            action = self.folds.folded(action)
        try:
            return _charges(self.meters, action, self.subject)
        except Unevaluable:
            return None


def _immutable(policy: object) -> bool:
    """Whether ``policy`` is an :class:`~aegis.core.policy.Policy`, whose rules never change."""
    from aegis.core.policy import Policy  # noqa: PLC0415  # the engine imports it lazily too

    return type(policy) is Policy


def _deleted_up_to(gap: object, store: object) -> float | None:
    """What ``store.forgotten`` answered, as a time; ``None``: nothing was deleted.

    Any real number is a time (a store of one's own may give an int);
    anything else (text, NaN) cannot say what was deleted: read as "never",
    it would turn the deleted-history check off, so it fails closed.

    Raises:
        StoreError: not a time.
    """
    if gap is None:
        return None
    if isinstance(gap, Real) and not isinstance(gap, bool) and not math.isnan(gap):
        return float(gap)
    raise StoreError(
        f"the usage store {store!r} says its deleted flow history reaches up to {gap!r}, which"
        " is not a time: forgotten() must give seconds since the epoch, or None"
    )


def _gone(spec: FlowSpec, gap: float) -> str:
    """Why ``spec`` cannot be evaluated: what it looks for may not be kept, up to ``gap``."""
    when = datetime.fromtimestamp(gap, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (
        f"{spec.name}: the session's flow history up to {when} is not kept (a store keeps"
        f" events only as long as the longest window any policy declared to it), so whether an"
        f" earlier"
        f" {_cut(spec.type)!r} on {_cut(spec.target)!r} ran then cannot be told"
    )


def _cut(name: str, width: int = 60) -> str:
    return name if len(name) <= width else name[: width - 1] + "\u2026"
