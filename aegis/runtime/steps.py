"""One action through the gate: meter -> approve -> start -> execute -> finish.

A :class:`Gate` is what every action of one runtime passes through: its
executor, its approval handler, its audit trail, its metering step and the
policy deciding now. A :class:`Passage` is one action on its way through,
one method per step:

1. **meter** (policies with limits, budgets or flow rules): the counters are
   checked and reserved (:mod:`aegis.runtime.metering`); the decision may
   change, e.g. to the rule's ``on_exceed``;
2. **approve** (``approve`` decisions): the approval handler is asked; a
   refusal, an exception or a timeout denies;
3. **start**: the action is noted as let through (a flow event, whatever
   the policy: another process's flow rules may look for it) and its start
   record is written, durably, before anything runs;
4. **execute**: the executor runs the action; an exception becomes ``FAILED``;
5. **finish**: the outcome is recorded, and only then is the
   :class:`~aegis.core.result.Result` returned.

An action that ends before it runs (blocked, denied, changed after it was
decided, not noted) leaves by one door, :meth:`Passage.abort`: what it
reserved is given back and the reason is recorded. One interrupted
(cancelled, ``KeyboardInterrupt``) leaves by :meth:`Passage.interrupted`,
which does the same on a best-effort basis before the interruption goes on.

Speed: this is the path of every governed action (about 100 µs on SQLite;
``python benchmarks/run.py`` and ``python benchmarks/limits.py``, see
BENCHMARKS.md). A passage is one small object with slots, the steps that do
not apply to an action are not called, and the audit is called directly.

Size: the Gate, the Passage and the Results its steps build (blocked, skipped,
unrecorded, the executor's answer normalised) read as one sequence; the per-
action path stays in one module so that its cost is seen in one place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import logging
import time
from asyncio import CancelledError
from collections.abc import Callable
from datetime import UTC, datetime
from types import CoroutineType
from typing import TYPE_CHECKING, Any, Final

from aegis.core.action import Action, _unmarked, canonical_json
from aegis.core.decision import Approval, PolicyDecision
from aegis.core.outcome import ApprovalOutcome
from aegis.core.record import DecisionStamp
from aegis.core.result import Result, ResultStatus
from aegis.errors import AuditError, AuditOutcomeUnknown
from aegis.runtime._binding import binding_for
from aegis.runtime._calls import (
    Deadline,
    call_with_deadline,
    cancel_requested,
    is_async_callable,
)
from aegis.runtime.asking import ask, denial_text, describe, explained, refused
from aegis.runtime.metering import Deferred, Lease, MeteringStep, Pending

if TYPE_CHECKING:
    from aegis.runtime.audit_backend import AuditBackend
    from aegis.runtime.tracing import ActionTracer

__all__ = ["Gate", "Passage", "blocked", "describe", "skipped"]

_log = logging.getLogger("aegis.runtime")

_new = object.__new__
_SUCCESS: Final = ResultStatus.SUCCESS
# Speed (benchmarks/calls.py --instructions; BENCHMARKS.md, "A fourth pass"):
# on Python 3.11 a member read off an enum class goes through the enum
# metaclass's __getattr__ hook (about 300 instructions); read once here.
_BLOCK: Final = Approval.BLOCK
_APPROVE: Final = Approval.APPROVE
_AUTO: Final = Approval.AUTO

# Statuses only the runtime may give; an executor reporting one is confused.
_RUNTIME_ONLY = frozenset({ResultStatus.BLOCKED, ResultStatus.DENIED, ResultStatus.SKIPPED})


def _now() -> datetime:
    return datetime.now(UTC)


#: the end of a record's error when a sync executor was abandoned (its deadline, or the
#: caller cancelled): its thread goes on, and whatever it then does or answers is not recorded
_LEFT_RUNNING: Final = (
    "; the executor was left running on its thread, and what it went on to do is not recorded"
)


def blocked(decision: PolicyDecision) -> Result:
    """The ``BLOCKED`` Result of a decision the policy forbids."""
    error = f"blocked by policy rule {decision.matched_rule!r}"
    if decision.reason:
        error += f": {decision.reason}"
    now = _now()
    return Result(
        decision.action, ResultStatus.BLOCKED, error=error, started_at=now, completed_at=now
    )


def skipped(decision: PolicyDecision, cause: Result) -> Result:
    """The ``SKIPPED`` Result of an action after ``cause`` stopped the plan."""
    verb = "failed" if cause.status is ResultStatus.FAILED else "was denied"
    now = _now()
    return Result(
        decision.action,
        ResultStatus.SKIPPED,
        error=f"skipped: an earlier action {verb} ({cause.action.type} -> {cause.action.target})",
        started_at=now,
        completed_at=now,
    )


class Gate:
    """What every action of one runtime passes through.

    Args:
        execute: the executor's action function (sync or async).
        ask: the approval handler as one function of the decision.
        audit: where outcomes are recorded.
        metering: the metering step, for policies with limits.
        policy: the policy deciding now (see :attr:`policy`).
        session_id: the session the records belong to.
        approval_timeout: seconds an approval may take, or ``None``.
        execute_timeout: seconds the executor may take, or ``None``.

    The runtime keeps its public attributes (``policy``, ``session_id`` and
    the timeouts) here, so that the steps read them without the runtime.
    """

    def __init__(
        self,
        *,
        execute: Callable[[Action], Any],
        ask: Callable[[PolicyDecision], Any],
        audit: AuditBackend,
        metering: MeteringStep,
        policy: Any,
        session_id: str,
        approval_timeout: float | None,
        execute_timeout: float | None,
    ) -> None:
        self.policy = policy
        self.session_id = session_id
        self.approval_timeout = approval_timeout
        self.execute_timeout = execute_timeout
        self.metering = metering
        self.ask = ask
        self.ask_is_async = is_async_callable(ask)
        self.execute = execute
        self.execute_is_async = is_async_callable(execute)
        self.record_final = audit.record
        self.record_start = getattr(audit, "record_start", None)
        # A backend written before records had a context, a decision time
        # and a policy digest still works; it just does not store them.
        self.stamped = _accepts_stamp(audit.record)
        self.start_stamped = self.record_start is not None and _accepts_stamp(self.record_start)
        #: spans of each action, when the application traces (set when the runtime starts)
        self.tracer: ActionTracer | None = None
        #: the runtime's agent, for the spans
        self.agent: str | None = None

    def human_decision(self, human: str | ApprovalOutcome | None) -> str | ApprovalOutcome | None:
        """``human`` as the audit backend takes it: an outcome, or its text for an older one."""
        if self.stamped or not isinstance(human, ApprovalOutcome):
            return human
        return human.human_decision()

    def stamp_fields(self, stamp: DecisionStamp | None) -> dict[str, Any]:
        """The audit backend's keyword arguments for ``stamp``."""
        if not self.stamped:
            return {}
        if stamp is None:
            stamp = DecisionStamp.now(self.policy, None)
        return {
            "context": stamp.context,
            "decided_at": stamp.decided_at,
            "policy_digest": stamp.policy_digest,
        }

    async def record(
        self,
        decision: PolicyDecision,
        result: Result,
        human: str | ApprovalOutcome | None,
        token: int | None,
        stamp: DecisionStamp | None,
    ) -> Result:
        """Write ``result`` to the audit trail, then return it."""
        await self.record_final(
            self.session_id,
            decision,
            result=result,
            human_decision=self.human_decision(human),
            start_token=token,
            **self.stamp_fields(stamp),
        )
        return result

    def explained(self, decision: PolicyDecision) -> PolicyDecision:
        """The copy of ``decision`` a person is asked about.

        It carries why (the rule's description, the conditions that held) and
        the earlier actions a flow rule found in this session.
        """
        earlier = self.metering.earlier(self.policy, decision, self.session_id)
        return explained(self.policy, decision, earlier)

    async def approve(
        self, decision: PolicyDecision, decided: str
    ) -> tuple[Result | None, ApprovalOutcome]:
        """Ask the approval handler about ``decision``; see :meth:`Runtime.approve`."""
        started = time.time()  # a datetime only if it is denied
        digest = _digest(decided)
        # A framework integration may bring an answer given while its run was
        # suspended; it passes the same checks as a fresh one (see _binding).
        binding = binding_for(decision.action)
        if binding is not None and binding.answer is not None:
            outcome = binding.answer
            if outcome.approved is True and outcome.digest is None:
                # Carried across a suspension, a yes must name the action it is for.
                outcome = refused(
                    "the settled approval names no action digest", request_id=outcome.request_id
                )
        else:
            # The handler's copy says why a person is asked (computed only here).
            outcome = await ask(
                self.ask,
                self.explained(decision),
                timeout=self.approval_timeout,
                digest=digest,
                copied=True,
                is_async=self.ask_is_async,
            )
        if outcome.approved is not True:
            return _denied(decision, started, outcome), outcome
        if outcome.digest is not None and outcome.digest != digest:
            # An approval is bound to the exact action a reviewer saw.
            outcome = refused(
                "error: the approval was given for a different action (digest mismatch)",
                request_id=outcome.request_id,
            )
            return _denied(decision, started, outcome), outcome
        return None, outcome

    def runs_on_a_thread(self, action: Action) -> bool:
        """Whether ``action``'s executor is a sync one: on a worker thread, which nothing stops."""
        binding = binding_for(action)
        if binding is None:
            return not self.execute_is_async
        return not is_async_callable(binding.execute)

    async def run_executor(self, action: Action) -> Result:
        """Run ``action`` on the executor; see :meth:`Runtime.run_executor`."""
        started = datetime.now(UTC)
        binding = binding_for(action)  # a framework's tool runs its own call
        if binding is None:
            execute, is_async = self.execute, self.execute_is_async
        else:
            execute, is_async = binding.execute, is_async_callable(binding.execute)
        limit = self.execute_timeout
        try:
            if is_async and limit is None:
                out = execute(action)
                # Speed (benchmarks/calls.py): a coroutine is known without isawaitable
                if type(out) is CoroutineType or inspect.isawaitable(out):
                    out = await out
            else:
                # A sync executor runs on a worker thread, and a limit holds
                # even for one that ignores cancellation.
                out = await call_with_deadline(execute, (action,), limit, "the executor")
        except Deadline:
            error = f"TimeoutError: the executor took longer than {limit:g}s"
            return Result(
                action,
                ResultStatus.FAILED,
                error=error if is_async else error + _LEFT_RUNNING,
                started_at=started,
                completed_at=_now(),
            )
        except (Exception, CancelledError) as exc:
            if isinstance(exc, CancelledError) and cancel_requested():
                raise  # the caller's cancellation: recorded on its way out
            # An executor's failure, a CancelledError of its own (nothing
            # cancelled the caller) too, is a result, not a crash.
            return Result(
                action,
                ResultStatus.FAILED,
                error=describe(exc),
                started_at=started,
                completed_at=_now(),
            )
        if not isinstance(out, Result):
            # Speed (benchmarks/calls.py): the fields are valid by construction,
            # so the Result is filled without its checking __init__.
            result: Result = _new(Result)
            result.__dict__.update(
                action=action,
                status=_SUCCESS,
                data=out,
                error=None,
                started_at=started,
                completed_at=datetime.now(UTC),
            )
            return result
        return _checked_result(action, out, started)


class Passage:
    """One action on its way through a :class:`Gate`, one method per step.

    ``decision`` comes from the runtime's decide step and stays the
    runtime's own: the approval handler sees a copy, and what runs and what
    is recorded is checked against the action's canonical form taken when
    it was decided.
    """

    __slots__ = (
        "decided",
        "decision",
        "gate",
        "human",
        "lease",
        "pending",
        "record_id",
        "stamp",
        "token",
    )

    def __init__(self, gate: Gate, decision: PolicyDecision, stamp: DecisionStamp) -> None:
        self.gate = gate
        self.decision = decision
        self.stamp = stamp
        #: the action's canonical JSON when it was decided (after metering)
        self.decided = ""
        #: what the metering step reserved, until the action starts or is refused
        self.lease: Lease | Deferred | None = None
        #: the rule and request the lease was reserved for, to reserve again once approved
        self.pending: Pending | None = None
        #: what the approval step answered, for the audit
        self.human: ApprovalOutcome | None = None
        #: the start record's id, once written
        self.token: int | None = None
        #: the final record's id, once written
        self.record_id: int | None = None

    async def run(self, *, plain: bool = False, defer: bool = True) -> Result:
        """Take the action through every step that applies to it; its recorded Result.

        ``plain``: the decision is exactly the policy's, just taken (the
        metering step need not decide again). ``defer``: the metering step
        may leave its reservation to the start record (see
        :class:`~aegis.runtime.metering.Deferred`).
        """
        policy = self.gate.policy
        metered = getattr(policy, "limits", None) is not None
        if metered:
            await self.meter(policy, plain, defer)
        decision = self.decision
        approval = decision.approval
        if approval is _BLOCK:
            return await self.abort(blocked(decision))
        self.decided = canonical_json(decision.action)
        if approval is _APPROVE:
            denied = await self.approve()
            if denied is not None:
                return await self.abort(denied)
            if metered:  # what ran meanwhile may trip a flow condition now (again in start)
                tripped = self.gate.metering.recheck(self.gate.session_id, policy, decision)
                if tripped is not None:
                    self.decision = tripped
                    return await self.abort(blocked(tripped))
            if self.pending is not None and self.lease:
                over = await self.restamp(self.pending)
                if over is not None:
                    return await self.abort(over)
            # Others ran while a person was asked: the action must be as decided.
            # (An auto action is checked once it ran; up to its start nothing
            # else runs, since nothing is awaited between here and the decision.)
            if canonical_json(decision.action) != self.decided:
                return await self.abort(self.changed(ran=False))
        elif approval is not _AUTO:  # decide() allows nothing else; fail closed anyway
            return await self.abort(blocked(decision))
        ended = await self.start(policy, metered, defer)
        if ended is not None:
            return ended
        return await self.finish(await self.execute())

    async def meter(self, policy: Any, plain: bool, defer: bool) -> None:
        """Step 1: check and reserve the counters; the decision may change."""
        gate = self.gate
        try:  # without a trip through a coroutine when there is nothing to wait for
            checked, deferred, fresh, pending = gate.metering.check(
                gate.session_id, policy, self.decision, self.stamp, plain, defer
            )
            lease: Lease | Deferred | None = deferred
            if pending is not None:  # reserved with the concurrent actions' charges
                checked, lease = await gate.metering.reserve(self.decision, checked, pending)
        except BaseException as exc:  # cancelled while counting: it never ran
            await self.interrupted(exc, ResultStatus.SKIPPED)
            raise
        self.decision, self.lease, self.stamp, self.pending = checked, lease, fresh, pending

    async def restamp(self, pending: Pending) -> Result | None:
        """Step 2b: an approved action counts from now, when it is let through.

        The ``BLOCKED`` Result when the limit, counted again now, no longer
        lets it run (see :meth:`~aegis.runtime.metering.MeteringStep.restamp`).
        """
        lease = self.lease if not isinstance(self.lease, Deferred) else None
        self.lease = None
        try:
            over, self.lease = await self.gate.metering.restamp(self.decision, pending, lease)
        except BaseException as exc:  # cancelled while counting: it never ran
            await self.interrupted(exc, ResultStatus.SKIPPED)
            raise
        if over is None:
            return None
        self.decision = over
        return blocked(over)

    async def approve(self) -> Result | None:
        """Step 2: ask the approval handler; the ``DENIED`` Result if it does not approve."""
        try:
            denied, self.human = await self.gate.approve(self.decision, self.decided)
        except BaseException as exc:  # cancelled or interrupted while waiting
            self.human = refused("interrupted")
            await self.interrupted(exc, ResultStatus.DENIED)
            raise
        return denied

    async def start(self, policy: Any, metered: bool, defer: bool = True) -> Result | None:
        """Step 3: note the action as let through and write its start record.

        ``metered``: ``policy`` has limits (read once, in :meth:`run`).
        Every action is noted as a flow event, whatever the policy: another
        process's flow rules (or this one's after a reload) may look for it.
        ``defer``: the event may be written in the start record's transaction.

        Returns ``None`` when the action may run, else its final Result (it
        did not run). A deferred reservation is made in the start record's
        own transaction; if it no longer fits, the action is metered again
        the ordinary way, or refused when its rule blocks past the limit.
        """
        gate = self.gate
        decision = self.decision
        lease = self.lease
        if lease is None and not metered and defer:
            lease = gate.metering.note(gate.session_id, policy, decision.action)
        if type(lease) is Deferred:
            kept = self.stamp if gate.start_stamped and gate.stamped else None
            try:
                started = gate.metering.start(
                    gate.session_id, policy, decision, lease, self.human, kept
                )
            except AuditOutcomeUnknown as exc:
                # The start and its reservation may be written yet, together:
                # the action does not run, and nothing is written again.
                self.lease = None
                return unrecorded(decision, None, exc)
            if started is None:  # meter again, the ordinary way
                return await Passage(gate, decision, self.stamp).run(defer=False)
            self.lease = None  # written with the start record, or not at all
            if isinstance(started, PolicyDecision):  # over the limit, and on_exceed blocks
                self.decision, self.human = started, None
                return await self.abort(blocked(started))
            self.token = started
            return None
        if gate.record_start is not None:
            fields = gate.stamp_fields(self.stamp) if gate.start_stamped else {}
            try:
                self.token = await gate.record_start(
                    gate.session_id,
                    decision,
                    human_decision=self.human if gate.stamped else gate.human_decision(self.human),
                    **fields,
                )
            except AuditError as exc:
                # An action whose start is not in the trail must not run.
                self.release()
                return unrecorded(decision, None, exc)
        # Noted once its start is written: an action the trail refused
        # never ran, so no ``after`` condition may count it.
        # An approved action is decided again once noted, with nothing awaited after it
        # (see MeteringStep.ran): what ran while it was started is seen.
        approved = decision if metered and self.human is not None else None
        try:
            failed = await gate.metering.ran(gate.session_id, policy, decision.action, approved)
        except BaseException as exc:  # cancelled or interrupted while it was noted
            # Its start is written: its end must be too, or the trail shows
            # an action begun and never ended, as a killed process leaves.
            await self.interrupted(exc, ResultStatus.SKIPPED)
            raise
        if failed is not None:
            if isinstance(failed, PolicyDecision):  # what ran meanwhile trips a flow rule now
                self.decision = failed
                return await self.abort(blocked(failed))
            return await self.abort(failed)
        self.lease = None  # the action runs: what it reserved stays counted
        return None

    async def execute(self) -> Result:
        """Step 4: run the action on the executor (or the framework's own tool)."""
        action = self.decision.action
        try:
            result = await self.gate.run_executor(action)
        except BaseException as exc:  # cancelled or interrupted mid-action
            # A cancelled sync executor goes on (see _calls): the record must
            # not read as if the action stopped; what it did is not known here.
            left = isinstance(exc, CancelledError) and self.gate.runs_on_a_thread(action)
            await self.interrupted(exc, ResultStatus.FAILED, left_running=left)
            raise
        if canonical_json(action) != self.decided:
            return self.changed(ran=True, result=result)
        return result

    async def finish(self, result: Result) -> Result:
        """Step 5: record ``result``; if the trail cannot take it, the Result is FAILED."""
        gate = self.gate
        try:
            self.record_id = await gate.record_final(
                gate.session_id,
                self.decision,
                result=result,
                human_decision=self.human if gate.stamped else gate.human_decision(self.human),
                start_token=self.token,
                **gate.stamp_fields(self.stamp),
            )
        except AuditError as exc:
            return unrecorded(self.decision, result, exc)
        return result

    async def traced(self, tracer: ActionTracer, *, plain: bool = False) -> Result:
        """:meth:`run` inside the action's span (see :mod:`aegis.runtime.tracing`)."""
        first = self.decision
        span, token = tracer.start(first, agent=self.gate.agent, context=self.stamp.context)
        try:
            result = await self.run(plain=plain)
        except BaseException as exc:
            tracer.finish(span, token, None, human=self.human, error=exc)
            raise
        changed = self.decision if self.decision.approval is not first.approval else None
        tracer.finish(
            span, token, result, changed=changed, human=self.human, record_id=self.record_id
        )
        return result

    # ------------------------------------------------------------ leaving early

    def release(self) -> None:
        """Give back what the metering step reserved (nothing once the action started)."""
        lease, self.lease = self.lease, None
        if lease:
            self.gate.metering.release(lease)

    async def abort(self, result: Result) -> Result:
        """End the action before it ran: give back what it reserved, and record why."""
        self.release()
        return await self.finish(result)

    async def interrupted(
        self, exc: BaseException, status: ResultStatus, *, left_running: bool = False
    ) -> None:
        """:meth:`abort` of an interrupted action, as far as it goes: the interruption goes on.

        ``left_running``: the executor was not stopped (a sync one, on its
        thread), and the record says so. Best effort: an audit that cannot
        write now would only hide the interruption, so a failure here is
        logged, not raised.
        """
        self.release()
        error = f"interrupted: {describe(exc)}"
        result = Result(
            self.decision.action,
            status,
            error=error + _LEFT_RUNNING if left_running else error,
            completed_at=_now(),
        )
        try:
            await self.finish(result)
        except Exception:
            _log.exception("could not record the interruption of %s", self.decision.action)

    def changed(self, *, ran: bool, result: Result | None = None) -> Result:
        """The Result of an action changed after it was decided; the record shows it as decided."""
        # Only tampering below the API gets here (object.__setattr__, gc):
        # the record shows what was decided, never the changed object.
        data = json.loads(self.decided)
        params = _unmarked(data["params"])  # marks read back as what they stand for
        original = Action(data["type"], data["target"], params, data["description"])
        self.decision = dataclasses.replace(self.decision, action=original)
        now = _now()
        if ran:
            error = "the action was changed while it ran; the record shows it as decided"
            status = ResultStatus.FAILED
            started = result.started_at if result is not None else now
        else:
            error = "refused: the action changed after it was decided; it did not run"
            status = ResultStatus.DENIED
            started = now
            self.human = refused(f"error: {error}")
        _log.error("%s: %s", original, error)
        return Result(original, status, error=error, started_at=started, completed_at=now)


def unrecorded(decision: PolicyDecision, result: Result | None, exc: AuditError) -> Result:
    """The FAILED Result of an action whose start (``result`` None) or outcome was not recorded.

    A failed write leaves no half-written record; the caller must not read
    success into an outcome the audit trail does not hold.
    """
    _log.error("could not record %s in the audit trail: %s", decision.action, exc)
    now = _now()
    if result is None:
        return Result(
            decision.action,
            ResultStatus.FAILED,
            error=f"not run: the audit trail could not record its start ({exc})",
            started_at=now,
            completed_at=now,
        )
    return Result(
        decision.action,
        ResultStatus.FAILED,
        data=result.data,
        error=f"ended {result.status.value}, but the audit trail could not record it ({exc})",
        started_at=result.started_at,
        completed_at=result.completed_at or now,
    )


def _checked_result(action: Action, out: Result, started: datetime) -> Result:
    """An executor's Result, normalised: the approved action, times set, a status it may give."""
    status = out.status
    if not isinstance(status, ResultStatus) or not isinstance(out.completed_at, datetime | None):
        # Result is mutable; one changed after construction could break
        # the audit write, and the action did run: record it as failed.
        return Result(
            action,
            ResultStatus.FAILED,
            error=f"executor returned an invalid Result (status={status!r}, "
            f"completed_at={out.completed_at!r}); use a ResultStatus and a datetime",
            started_at=started,
            completed_at=_now(),
        )
    if status in _RUNTIME_ONLY:
        return Result(
            action,
            ResultStatus.FAILED,
            data=out.data,
            error=f"executor reported status {status.name}, which only the runtime may "
            "give; return SUCCESS or FAILED, or raise",
            started_at=started,
            completed_at=_now(),
        )
    if out.action is not action:
        # What was approved is what gets recorded, never the executor's copy.
        out = Result(action, status, data=out.data, error=out.error)
    out.started_at = started
    if out.completed_at is None:
        out.completed_at = _now()
    return out


def _denied(decision: PolicyDecision, started: float, outcome: ApprovalOutcome) -> Result:
    """The ``DENIED`` Result of a refusal (asked at ``started``, a POSIX time): who refused, why."""
    return Result(
        decision.action,
        ResultStatus.DENIED,
        error=denial_text(outcome),
        started_at=datetime.fromtimestamp(started, UTC),
        completed_at=_now(),
    )


def _digest(decided: str) -> str:
    """The :func:`~aegis.core.action.action_digest` of the canonical JSON ``decided``."""
    return hashlib.sha256(decided.encode("utf-8", "surrogatepass")).hexdigest()


def _accepts_stamp(record: Callable[..., Any]) -> bool:
    """Whether a backend's ``record`` takes ``context``, ``decided_at`` and ``policy_digest``."""
    try:
        parameters = inspect.signature(record).parameters.values()
    except (TypeError, ValueError):  # no signature to read: assume the current protocol
        return True
    names = {p.name for p in parameters}
    return (
        any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
        or {
            "context",
            "decided_at",
            "policy_digest",
        }
        <= names
    )
