"""The governed runtime: every action goes decide -> approve -> execute -> record.

Each action passes through four small steps, each a method of
:class:`Runtime`:

1. **decide**: the policy evaluates the action (in :meth:`Runtime.plan`);
2. **approve**: ``block`` ends here with ``BLOCKED``; ``approve`` asks the
   approval handler, and a refusal, an exception or a timeout ends here
   with ``DENIED``;
3. **execute**: the audit notes the start durably, then the executor runs
   the action; an exception becomes ``FAILED``;
4. **record**: the final outcome is written to the audit trail, and only
   then is the :class:`~aegis.core.result.Result` returned.

A ``FAILED`` or ``DENIED`` action stops the plan: every later action is
``SKIPPED`` (and recorded). A ``BLOCKED`` action does not stop it.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import hashlib
import inspect
import json
import logging
import os
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from aegis.adapters.base import BaseExecutor
from aegis.core.action import Action, canonical_json
from aegis.core.decision import Approval, PolicyDecision
from aegis.core.outcome import ApprovalOutcome
from aegis.core.plan import ExecutionPlan
from aegis.core.record import ContextValue, DecisionStamp, check_context
from aegis.core.result import Result, ResultStatus
from aegis.core.risk import RiskLevel
from aegis.errors import AegisError, AuditError, ConfigurationError
from aegis.runtime._binding import binding_for
from aegis.runtime._calls import Deadline, call_with_deadline, is_async_callable
from aegis.runtime.approval import ApprovalHandler, CLIApprovalHandler
from aegis.runtime.approval_callback import CallbackApprovalHandler
from aegis.runtime.limits import Deferred, Lease, _LimitsSetup

if TYPE_CHECKING:
    from aegis.core.policy import Policy
    from aegis.runtime.audit_backend import AuditBackend
    from aegis.stores.usage import UsageStore

__all__ = ["Executor", "Runtime"]

_log = logging.getLogger("aegis.runtime")

#: an executor: a BaseExecutor, or a function of the action (sync or async)
Executor = BaseExecutor | Callable[[Action], Any]

_STOPPING = frozenset({ResultStatus.FAILED, ResultStatus.DENIED})
# Statuses only the runtime may give; an executor reporting one is confused.
_RUNTIME_ONLY = frozenset({ResultStatus.BLOCKED, ResultStatus.DENIED, ResultStatus.SKIPPED})


def _now() -> datetime:
    return datetime.now(UTC)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Runtime:
    """Run agent actions under a policy, with human approval and an audit trail.

    Args:
        executor: carries out allowed actions: a
            :class:`~aegis.adapters.base.BaseExecutor`, or a plain function
            ``f(action)`` (``async`` or not) returning a ``Result`` or any
            value (wrapped as ``SUCCESS`` data).
        policy: decides ``auto``, ``approve`` or ``block`` for each action.
        approval_handler: asked about ``approve`` actions; an
            :class:`~aegis.runtime.approval.ApprovalHandler` or a function
            ``f(decision) -> bool`` (``async`` or not). Defaults to
            :class:`~aegis.runtime.approval.CLIApprovalHandler`.
        audit_logger: where every outcome is recorded. Defaults to
            :class:`~aegis.runtime.audit.AuditLogger` (``aegis_audit.db``
            in the working directory).
        session_id: groups this runtime's audit records; a random hex id
            by default.
        approval_timeout: seconds an approval may take before it counts
            as denied; ``None`` (default) leaves timing to the handler. It
            holds for synchronous handlers (run on a worker thread) and for
            handlers that ignore cancellation; a late answer is logged.
        execute_timeout: seconds the executor may take before the action
            counts as failed; ``None`` (default) waits for it. An async
            executor is cancelled and not waited for; a synchronous one
            (which runs on a worker thread, so the event loop never blocks)
            is left to finish there, and what it returns is ignored.
        agent: who acts, for limits keyed by ``agent``; when ``None``, the
            ``"agent"`` entry of a call's ``context`` (see :mod:`aegis.runtime.limits`).
        usage_store: where limits, budgets and flow rules count
            (:class:`~aegis.stores.usage.UsageStore`); by default beside the
            audit trail (its SQLite file or PostgreSQL database), or in memory
            for an audit without a database. Opened only when the policy has
            such rules; a store given here is not closed by the runtime.
        policy_path: a policy file, read when ``policy`` is not given.
        reload: watch ``policy_path`` every ``reload_interval`` seconds and
            decide later actions by its new content; a broken file keeps the
            current policy and is logged with its file and line.

    Inside ``async with``, the executor's ``setup()`` runs once on entering
    and ``teardown()`` once on leaving. Outside it, :meth:`execute` sets the
    executor up before the plan and tears it down after it, while
    :meth:`run_one` sets it up once, before its first action, and
    :meth:`close` tears it down. The audit's ``close()`` runs once, when the
    block ends or on :meth:`close`.

    Example::

        async with Runtime(executor=crm, policy=Policy.from_yaml("policy.yaml")) as rt:
            result = await rt.run_one(Action("read", "crm"))
            assert result.ok
    """

    def __init__(
        self,
        *,
        executor: Executor,
        policy: Policy | None = None,
        approval_handler: ApprovalHandler | Callable[[PolicyDecision], Any] | None = None,
        audit_logger: AuditBackend | None = None,
        session_id: str | None = None,
        approval_timeout: float | None = None,
        execute_timeout: float | None = None,
        agent: str | None = None,
        usage_store: UsageStore | None = None,
        policy_path: str | os.PathLike[str] | None = None,
        reload: bool = False,
        reload_interval: float = 1.0,
    ) -> None:
        self._execute_action, self._setup, self._teardown = _executor_hooks(executor)
        self._limits = _LimitsSetup(agent, usage_store, policy_path, reload, reload_interval)
        if policy is None:
            policy = self._limits.initial_policy()
        self._execute_is_async = is_async_callable(self._execute_action)
        self._evaluate = _policy_evaluate(policy)
        if approval_handler is None:
            approval_handler = CLIApprovalHandler()
        self._ask = _approval_function(approval_handler)
        for name, timeout in (
            ("approval_timeout", approval_timeout),
            ("execute_timeout", execute_timeout),
        ):
            if timeout is not None and not timeout > 0:
                raise ConfigurationError(
                    f"{name} must be a positive number of seconds or None, got {timeout!r}"
                )
        if audit_logger is None:
            # Imported here so that the engine imports without the SQLite
            # backend, and so that a Runtime with its own audit never opens a file.
            from aegis.runtime.audit import AuditLogger  # noqa: PLC0415  # see above

            audit_logger = AuditLogger()
        self._check_audit(audit_logger)
        if session_id is not None and not isinstance(session_id, str):
            raise ConfigurationError(
                f"session_id must be a string, got {type(session_id).__name__}"
            )
        self.executor = executor
        self.policy = policy
        self.approval_handler = approval_handler
        self.approval_timeout = approval_timeout
        self.execute_timeout = execute_timeout
        self.audit: AuditBackend = audit_logger
        self.session_id: str = session_id or uuid.uuid4().hex
        bind = getattr(approval_handler, "bind_session", None)
        if callable(bind):
            # A handler that keys requests by session (the remote one) learns ours.
            bind(self.session_id)
        self._record_final = audit_logger.record
        self._record_start = getattr(audit_logger, "record_start", None)
        # A backend written before records had a context, a decision time
        # and a policy digest still works; it just does not store them.
        self._stamped = _accepts_stamp(audit_logger.record)
        self._start_stamped = self._record_start is not None and _accepts_stamp(self._record_start)
        self._started = False
        self._closed = False
        self._entered = False  # inside ``async with``: set up once for the block
        self._lazy = False  # set up by run_one outside ``async with``: until close()
        self._plans = 0  # execute() calls running on a setup of their own
        self._start_lock: asyncio.Lock | None = None

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        await self._start()
        self._entered = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _start(self) -> None:
        if self._closed:
            raise AegisError("this Runtime is closed; create a new Runtime to run more actions")
        if self._started:
            return
        self._limits.watch(self)
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        # Concurrent first calls wait here: setup() runs once, and no action
        # starts before it has finished. A failed setup() is tried again.
        async with self._start_lock:
            if not self._started:
                # The trail must be usable before anything runs: a file that
                # is not ours, damaged or read-only fails here, not after an
                # action already ran and could not be recorded.
                check = getattr(self.audit, "check", None)
                if callable(check):
                    check()
                if self._setup is not None:
                    await self._setup()
                self._started = True

    async def _begin_plan(self) -> bool:
        """Set the executor up for one execute() call; True when that call owns the setup.

        Inside ``async with``, or after run_one set the executor up, the
        plan runs on that setup. Otherwise the plan sets the executor up
        and :meth:`_end_plan` tears it down after it; concurrent plans share
        one setup, torn down when the last one ends.
        """
        if self._entered or (self._started and not self._plans):
            if not self._started or self._closed:
                await self._start()
            return False
        self._plans += 1
        try:
            await self._start()
        except BaseException:
            self._plans -= 1
            raise
        return True

    async def _end_plan(self) -> None:
        self._plans -= 1
        if self._plans or self._lazy or self._entered or self._closed or not self._started:
            return
        self._started = False
        if self._teardown is not None:
            await self._teardown()

    async def close(self) -> None:
        """Tear the executor down and close the audit trail; later calls do nothing.

        The audit is closed even when ``teardown()`` raises; the teardown
        error is raised afterwards.
        """
        if self._closed:
            return
        self._closed = True
        try:
            if self._started and self._teardown is not None:
                await self._teardown()
        finally:
            try:
                await self._limits.close()
            finally:
                self.audit.close()

    # ------------------------------------------------------------------ public API

    def plan(self, actions: Iterable[Action]) -> ExecutionPlan:
        """Evaluate ``actions`` against the policy; nothing runs, nothing is recorded.

        Example::

            plan = runtime.plan([Action("read", "crm"), Action("delete", "crm")])
            print(plan.summary())

        With rate limits, budgets or flow conditions in the policy, each action
        is shown as the limits would decide it now, alone, reserving nothing.
        """
        if getattr(self.policy, "limits", None) is not None:
            return ExecutionPlan([self._limits.preview(self, a) for a in actions])
        return ExecutionPlan([self.decide(a) for a in actions])

    def update_policy(self, policy: Policy) -> None:
        """Decide every later action by ``policy``; actions in flight finish under the old one.

        The swap is atomic for the event loop: an action is decided, metered,
        approved and executed under one policy. Call it from the loop's thread.

        Raises:
            ConfigurationError: ``policy`` has no ``evaluate()`` method.
        """
        evaluate = _policy_evaluate(policy)
        self.policy, self._evaluate = policy, evaluate

    async def execute(
        self,
        plan: ExecutionPlan | Iterable[Action],
        *,
        context: Mapping[str, ContextValue] | None = None,
    ) -> list[Result]:
        """Run every action of ``plan`` in order; return one Result per action.

        Each action is decided again, by this runtime's policy, as it comes
        up: a plan is a preview, never a permit. A plan made by another
        runtime, edited by hand, or made before a time window closed cannot
        run what the policy forbids now.

        Every action is also decided up front, so a plan holding something
        that is not an Action, or a policy that raises, stops before anything
        runs. A ``FAILED`` or ``DENIED`` action skips all the actions after
        it; a ``BLOCKED`` one does not. Each Result is recorded in the audit
        trail before this returns.

        ``context`` (str keys, JSON scalar values, e.g. ``{"agent": "support"}``)
        is stored with every action's audit records.
        """
        checked = check_context(context)
        actions = [d.action for d in plan] if isinstance(plan, ExecutionPlan) else plan
        planned = self.plan(actions).decisions
        stamp = self._stamp(checked)
        own = await self._begin_plan()
        results: list[Result] = []
        stopped_by: Result | None = None
        for position, first in enumerate(planned):
            reached = position  # the first action that has no record yet
            try:
                if position:
                    decision = self.decide(first.action)
                    stamp = self._stamp(checked)
                else:
                    decision = first
                if stopped_by is None:
                    reached = position + 1  # _run records even when interrupted
                    result = await self._run(decision, stamp)
                    if result.status in _STOPPING:
                        stopped_by = result
                else:
                    reached = position + 1
                    result = await self.record(
                        decision, self.skip(decision, stopped_by), stamp=stamp
                    )
            except BaseException as exc:  # cancelled or interrupted mid-plan
                await self._record_unreached(planned[reached:], exc, stamp)
                if own:
                    await self._end_plan()
                raise
            results.append(result)
        if own:
            await self._end_plan()
        return results

    async def run_one(
        self, action: Action, *, context: Mapping[str, ContextValue] | None = None
    ) -> Result:
        """Decide, approve, execute and record a single action.

        Equivalent to ``(await runtime.execute(runtime.plan([action])))[0]``.
        ``context`` (str keys, JSON scalar values) is stored with the
        action's audit records, e.g. the framework's tool-call id.

        Example::

            result = await runtime.run_one(
                Action("read", "crm"), context={"tool_call_id": "call_1"}
            )
            assert result.ok
        """
        checked = None if context is None else check_context(context)
        policy = self.policy
        decision = self.decide(action)
        stamp = self._stamp(checked)
        if not self._started or self._closed:
            await self._start()
        if not self._entered:
            self._lazy = True  # set up for good: close() tears it down
        return await self._run(decision, stamp, plain=self.policy is policy)

    # ------------------------------------------------------------------ the steps

    def decide(self, action: Action) -> PolicyDecision:
        """Step 1: the policy's decision for ``action``."""
        if not isinstance(action, Action):
            raise ConfigurationError(
                f"expected an aegis Action, got {type(action).__name__}; "
                'build one with Action("read", "crm", {...})'
            )
        decision = self._evaluate(action)
        if (
            type(decision) is PolicyDecision
            and decision.action is action
            and type(decision.approval) is Approval
            and type(decision.risk_level) is RiskLevel
        ):
            return decision
        return _checked(decision, action)

    async def approve(
        self, decision: PolicyDecision, *, decided: str | None = None
    ) -> tuple[Result | None, str]:
        """Step 2: ask the approval handler about an ``approve`` decision.

        Returns ``(None, "approved")`` when the action may run, otherwise a
        ``DENIED`` Result and the human decision to audit (``"denied"``,
        ``"denied: timeout: ..."`` or ``"denied: error: ..."``).

        The handler gets a copy of ``decision``: whatever it does to it,
        the runtime goes on with its own. ``decided`` is the action's
        :func:`~aegis.core.action.canonical_json` when it was decided (taken
        now when not given); an :class:`~aegis.core.outcome.ApprovalOutcome`
        bound to another digest denies. A synchronous handler runs on a
        worker thread, and ``approval_timeout`` holds for every handler, one
        that ignores cancellation included.
        """
        started = _now()
        if decided is None:
            decided = canonical_json(decision.action)
        view = copy.copy(decision)
        # A framework integration may bring an answer given while its run was
        # suspended; it passes the same checks as a fresh one (see _binding).
        binding = binding_for(decision.action)
        try:
            approved: Any
            if binding is not None and binding.answer is not None:
                approved = binding.answer
                if approved.approved is True and approved.digest is None:
                    # Carried across a suspension, a yes must name the action it is for.
                    approved = ApprovalOutcome(
                        False,
                        reason="the settled approval names no action digest",
                        request_id=approved.request_id,
                    )
            else:
                approved = await call_with_deadline(
                    self._ask, (view,), self.approval_timeout, "the approval handler"
                )
        except TimeoutError as exc:  # ours (Deadline) or the handler's own
            why = str(exc) or "the approval handler raised TimeoutError"
            return self._denied(decision, started, f"approval timed out ({why})"), (
                f"denied: timeout: {why}"
            )
        except Exception as exc:  # fail closed: a broken handler must not approve
            return self._denied(decision, started, f"approval handler failed: {_describe(exc)}"), (
                f"denied: error: {_describe(exc)}"
            )
        if approved is True:
            return None, "approved"
        if isinstance(approved, ApprovalOutcome):
            return self._settle(decision, started, approved, decided)
        if approved is False:
            return self._denied(decision, started, "denied by the approver"), "denied"
        why = f"approval handler returned {approved!r}, not True or False"
        return self._denied(decision, started, why), f"denied: error: {why}"

    def _settle(
        self, decision: PolicyDecision, started: datetime, outcome: ApprovalOutcome, decided: str
    ) -> tuple[Result | None, str]:
        """An :class:`ApprovalOutcome` as the result of the approve step."""
        human = outcome.human_decision()
        if outcome.approved is not True:
            why = "denied by " + ", ".join(outcome.reviewers) if outcome.reviewers else "denied"
            if outcome.reason:
                why += f": {outcome.reason}"
            elif outcome.comment:
                why += f": {outcome.comment}"
            return self._denied(decision, started, why), human
        if outcome.digest is not None and outcome.digest != _digest(decided):
            # An approval is bound to the exact action a reviewer saw.
            why = "the approval was given for a different action (digest mismatch)"
            return self._denied(decision, started, why), f"denied: error: {why}"
        return None, human

    async def run_executor(self, action: Action) -> Result:
        """Step 3: run ``action`` on the executor and normalise what comes back.

        An exception becomes ``FAILED`` with ``"Type: message"`` as error; a
        value that is not a Result becomes ``SUCCESS`` with that value as
        data. The Result always carries ``action``, the action that was
        approved, whatever the executor put in it.
        """
        started = _now()
        binding = binding_for(action)  # a framework's tool runs its own call
        if binding is None:
            execute, is_async = self._execute_action, self._execute_is_async
        else:
            execute, is_async = binding.execute, is_async_callable(binding.execute)
        limit = self.execute_timeout
        try:
            if is_async and limit is None:
                out = execute(action)
                if inspect.isawaitable(out):
                    out = await out
            else:
                # A sync executor runs on a worker thread, and a limit holds
                # even for one that ignores cancellation.
                out = await call_with_deadline(execute, (action,), limit, "the executor")
        except Deadline:
            return Result(
                action,
                ResultStatus.FAILED,
                error=f"TimeoutError: the executor took longer than {limit:g}s",
                started_at=started,
                completed_at=_now(),
            )
        except Exception as exc:  # an executor's failure is a result, not a crash
            return Result(
                action,
                ResultStatus.FAILED,
                error=_describe(exc),
                started_at=started,
                completed_at=_now(),
            )
        if not isinstance(out, Result):
            return Result(
                action, ResultStatus.SUCCESS, data=out, started_at=started, completed_at=_now()
            )
        status = out.status
        if not isinstance(status, ResultStatus) or not isinstance(
            out.completed_at, datetime | None
        ):
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

    async def record(
        self,
        decision: PolicyDecision,
        result: Result,
        human_decision: str | None = None,
        start_token: int | None = None,
        *,
        stamp: DecisionStamp | None = None,
    ) -> Result:
        """Step 4: write ``result`` to the audit trail, then return it.

        ``stamp`` says when and under which policy ``decision`` was taken,
        and the caller's context; a stamp of now, without context, if omitted.
        """
        await self._record_final(
            self.session_id,
            decision,
            result=result,
            human_decision=human_decision,
            start_token=start_token,
            **self._stamp_fields(stamp),
        )
        return result

    @staticmethod
    def block(decision: PolicyDecision) -> Result:
        """The ``BLOCKED`` Result of a decision the policy forbids."""
        error = f"blocked by policy rule {decision.matched_rule!r}"
        if decision.reason:
            error += f": {decision.reason}"
        now = _now()
        return Result(
            decision.action, ResultStatus.BLOCKED, error=error, started_at=now, completed_at=now
        )

    @staticmethod
    def skip(decision: PolicyDecision, cause: Result) -> Result:
        """The ``SKIPPED`` Result of an action after ``cause`` stopped the plan."""
        verb = "failed" if cause.status is ResultStatus.FAILED else "was denied"
        now = _now()
        return Result(
            decision.action,
            ResultStatus.SKIPPED,
            error=f"skipped: an earlier action {verb} ({cause.action.type} -> "
            f"{cause.action.target})",
            started_at=now,
            completed_at=now,
        )

    # ------------------------------------------------------------------ internals

    def _stamp(self, context: Mapping[str, ContextValue] | None) -> DecisionStamp:
        """The stamp of a decision taken now by this runtime's policy."""
        return DecisionStamp.now(self.policy, context)

    def _stamp_fields(self, stamp: DecisionStamp | None) -> dict[str, Any]:
        """The audit backend's keyword arguments for ``stamp``."""
        if not self._stamped:
            return {}
        if stamp is None:
            stamp = self._stamp(None)
        return {
            "context": stamp.context,
            "decided_at": stamp.decided_at,
            "policy_digest": stamp.policy_digest,
        }

    async def _run(  # noqa: PLR0915  # the per-action path stays in one frame for speed
        self,
        decision: PolicyDecision,
        stamp: DecisionStamp,
        *,
        plain: bool = False,
        defer: bool = True,
    ) -> Result:
        """One action through meter -> approve -> execute -> record.

        ``decision`` comes from :meth:`decide` and stays the runtime's own:
        the approval handler sees a copy, and what runs and what is recorded
        is checked against the action's canonical form taken here, when it
        was decided. ``plain``: it is exactly :meth:`decide`'s, just taken.
        ``defer``: the metering step may leave the reservation to the start
        record (see :class:`~aegis.runtime.limits.Deferred`).
        """
        policy = self.policy
        lease: Lease | Deferred | None = None
        if getattr(policy, "limits", None) is not None:
            try:  # without a trip through a coroutine when there is nothing to wait for
                checked, lease, fresh, pending = self._limits.check(
                    self, policy, decision, stamp, plain=plain, defer=defer
                )
                if pending is not None:  # reserved with the concurrent actions' charges
                    checked, lease = await self._limits.reserve(self, decision, checked, pending)
            except BaseException as exc:  # cancelled while counting: it never ran
                await self._record_interrupted(decision, stamp, exc, ResultStatus.SKIPPED, None)
                raise
            decision, stamp = checked, fresh
        action = decision.action
        approval = decision.approval
        if approval is Approval.BLOCK:
            return await self._finish(decision, self.block(decision), None, None, stamp)
        decided = canonical_json(action)
        human: str | None = None
        if approval is Approval.APPROVE:
            try:
                denied, human = await self.approve(decision, decided=decided)
            except BaseException as exc:  # cancelled or interrupted while waiting
                self._limits.release(lease)
                await self._record_interrupted(
                    decision, stamp, exc, ResultStatus.DENIED, "denied: interrupted"
                )
                raise
            if denied is not None:
                self._limits.release(lease)
                return await self._finish(decision, denied, human, None, stamp)
        elif approval is not Approval.AUTO:  # decide() allows nothing else; fail closed anyway
            self._limits.release(lease)
            return await self._finish(decision, self.block(decision), None, None, stamp)
        if canonical_json(action) != decided:
            self._limits.release(lease)
            return await self._changed(decision, stamp, decided, human, ran=False)
        token: int | None = None
        if type(lease) is Deferred:
            # Reserved and remembered with the start record, in its commit.
            kept = stamp if self._start_stamped and self._stamped else None
            started = self._limits.start(self, policy, decision, lease, human, kept)
            if started is None:  # meter again, the ordinary way
                return await self._run(decision, stamp, defer=False)
            if isinstance(started, PolicyDecision):  # over the limit, and on_exceed blocks
                return await self._finish(started, self.block(started), None, None, stamp)
            token = started
        else:
            if lease is not None or getattr(policy, "limits", None) is not None:
                failed = self._limits.ran(self, policy, action, lease)
                if failed is not None:
                    return await self._finish(decision, failed, human, None, stamp)
            if self._record_start is not None:
                fields = self._stamp_fields(stamp) if self._start_stamped else {}
                try:
                    token = await self._record_start(
                        self.session_id, decision, human_decision=human, **fields
                    )
                except AuditError as exc:
                    # An action whose start is not in the trail must not run.
                    self._limits.release(lease)
                    return _unrecorded(decision, None, exc)
        try:
            result = await self.run_executor(action)
        except BaseException as exc:  # cancelled or interrupted mid-action
            await self._record_interrupted(decision, stamp, exc, ResultStatus.FAILED, human, token)
            raise
        if canonical_json(action) != decided:
            return await self._changed(
                decision, stamp, decided, human, token, ran=True, result=result
            )
        return await self._finish(decision, result, human, token, stamp)

    async def _finish(
        self,
        decision: PolicyDecision,
        result: Result,
        human: str | None,
        token: int | None,
        stamp: DecisionStamp,
    ) -> Result:
        """Record ``result``; if the trail cannot take it, the Result is FAILED, never success."""
        try:
            return await self.record(decision, result, human, token, stamp=stamp)
        except AuditError as exc:
            return _unrecorded(decision, result, exc)

    async def _changed(
        self,
        decision: PolicyDecision,
        stamp: DecisionStamp,
        decided: str,
        human: str | None,
        token: int | None = None,
        *,
        ran: bool,
        result: Result | None = None,
    ) -> Result:
        """Record an action that changed after it was decided, as it was decided."""
        # Only tampering below the API gets here (object.__setattr__, gc):
        # the record shows what was decided, never the changed object.
        data = json.loads(decided)
        original = Action(data["type"], data["target"], data["params"], data["description"])
        decision = dataclasses.replace(decision, action=original)
        now = _now()
        if ran:
            error = "the action was changed while it ran; the record shows it as decided"
            status = ResultStatus.FAILED
            started = result.started_at if result is not None else now
        else:
            error = "refused: the action changed after it was decided; it did not run"
            status = ResultStatus.DENIED
            started = now
            human = f"denied: error: {error}"
        _log.error("%s: %s", original, error)
        changed = Result(original, status, error=error, started_at=started, completed_at=now)
        return await self._finish(decision, changed, human, token, stamp)

    async def _record_interrupted(  # noqa: PLR0917  # one call site, all needed
        self,
        decision: PolicyDecision,
        stamp: DecisionStamp,
        exc: BaseException,
        status: ResultStatus,
        human: str | None,
        token: int | None = None,
    ) -> None:
        # Best effort: the interruption must propagate whatever happens here,
        # and an audit that cannot write now would only hide it.
        result = Result(
            decision.action, status, error=f"interrupted: {_describe(exc)}", completed_at=_now()
        )
        try:
            await self.record(decision, result, human, token, stamp=stamp)
        except Exception:
            _log.exception("could not record the interruption of %s", decision.action)

    async def _record_unreached(
        self, decisions: tuple[PolicyDecision, ...], exc: BaseException, stamp: DecisionStamp
    ) -> None:
        # The rest of an interrupted plan never ran: say so in the audit
        # trail rather than leave it out. Best effort, like the interruption.
        for decision in decisions:
            now = _now()
            result = Result(
                decision.action,
                ResultStatus.SKIPPED,
                error=f"skipped: the plan was interrupted ({_describe(exc)})",
                started_at=now,
                completed_at=now,
            )
            try:
                await self.record(decision, result, stamp=stamp)
            except Exception:
                _log.exception("could not record the skipped action %s", decision.action)
                return

    @staticmethod
    def _denied(decision: PolicyDecision, started: datetime, error: str) -> Result:
        return Result(
            decision.action,
            ResultStatus.DENIED,
            error=error,
            started_at=started,
            completed_at=_now(),
        )

    @staticmethod
    def _check_audit(audit: object) -> None:
        for method in ("record", "close"):
            if not callable(getattr(audit, method, None)):
                raise ConfigurationError(
                    f"audit_logger {type(audit).__name__} has no {method}() method; pass an "
                    "aegis.runtime.audit.AuditLogger, a LoggingAuditLogger, or any object "
                    "implementing aegis.runtime.audit_backend.AuditBackend"
                )

    def __repr__(self) -> str:
        return (
            f"Runtime(session_id={self.session_id!r}, executor={self.executor!r}, "
            f"policy={self.policy!r})"
        )


_Hook = Callable[[], Awaitable[None]] | None


def _unrecorded(decision: PolicyDecision, result: Result | None, exc: AuditError) -> Result:
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


def _digest(decided: str) -> str:
    """The :func:`~aegis.core.action.action_digest` of the canonical JSON ``decided``."""
    return hashlib.sha256(decided.encode("utf-8", "surrogatepass")).hexdigest()


def _approval_of(value: object) -> Approval | None:
    """The :class:`Approval` that ``value`` names (by value, any case), or ``None``."""
    if isinstance(value, Approval):
        return Approval(value.value)  # a member, even of a look-alike subclass
    if isinstance(value, str):
        text = str.__str__(value).strip().lower()
        for member in Approval:
            if member.value == text:
                return member
    return None


def _risk_of(value: object) -> RiskLevel | None:
    """The :class:`RiskLevel` that ``value`` names (a member, 1-4, or a name), or ``None``."""
    if isinstance(value, RiskLevel):
        return RiskLevel(int.__int__(value))
    if isinstance(value, int) and not isinstance(value, bool):
        return RiskLevel._value2member_map_.get(int.__int__(value))  # type: ignore[return-value]
    if isinstance(value, str):
        return RiskLevel.__members__.get(str.__str__(value).strip().upper())
    return None


def _checked(decision: object, action: Action) -> PolicyDecision:
    """A policy's answer as a well-formed decision about ``action``; anything unclear blocks.

    Custom and duck-typed policies may return approvals as plain strings,
    risks as names, or a decision about another action; ``decide`` takes
    only what is unambiguous and blocks the rest with a reason.
    """
    approval = _approval_of(getattr(decision, "approval", None))
    risk = _risk_of(getattr(decision, "risk_level", None))
    rule = getattr(decision, "matched_rule", "")
    reason = getattr(decision, "reason", "")
    rule = rule if isinstance(rule, str) else repr(rule)
    reason = reason if isinstance(reason, str) else repr(reason)
    problems = []
    if not hasattr(decision, "approval"):
        problems.append(f"the policy returned {type(decision).__name__}, not a PolicyDecision")
    elif approval is None:
        problems.append(
            f"the policy's approval {getattr(decision, 'approval', None)!r} is none of"
            f" {', '.join(m.value for m in Approval)}"
        )
    if risk is None and hasattr(decision, "approval"):
        problems.append(
            f"the policy's risk level {getattr(decision, 'risk_level', None)!r} is not a RiskLevel"
        )
    other = getattr(decision, "action", None)
    if other is not action and (
        not isinstance(other, Action) or canonical_json(other) != canonical_json(action)
    ):
        problems.append("the policy's decision is about another action")
    if problems or approval is None or risk is None:
        approval, risk = Approval.BLOCK, max(risk or RiskLevel.CRITICAL, RiskLevel.HIGH)
        reason = "; ".join([*problems, reason] if reason else problems) + "; blocked"
    if isinstance(decision, PolicyDecision):
        return dataclasses.replace(
            decision,
            action=action,
            risk_level=risk,
            approval=approval,
            matched_rule=rule,
            reason=reason,
        )
    return PolicyDecision(action, risk, approval, rule, reason)


def _executor_hooks(executor: object) -> tuple[Callable[[Action], Any], _Hook, _Hook]:
    """The executor's action function and its setup/teardown hooks, if any."""
    if isinstance(executor, BaseExecutor):
        return executor.execute, executor.setup, executor.teardown
    execute = getattr(executor, "execute", None)
    if callable(execute) and not isinstance(executor, type):
        # Duck-typed executor (same shape as BaseExecutor, not a subclass).
        return execute, _hook(executor, "setup"), _hook(executor, "teardown")
    if callable(executor) and not isinstance(executor, type):
        return executor, None, None
    hint = ""
    if isinstance(executor, type):
        hint = (
            f" (you passed the class {executor.__name__}; pass an instance: {executor.__name__}())"
        )
    raise ConfigurationError(
        f"executor must be a BaseExecutor or a function taking an Action, got "
        f"{type(executor).__name__}{hint}; e.g. `async def execute(action): ...` or a "
        "subclass of aegis.adapters.base.BaseExecutor"
    )


def _hook(obj: object, name: str) -> _Hook:
    fn = getattr(obj, name, None)
    if fn is None:
        return None
    if not callable(fn):
        raise ConfigurationError(f"executor.{name} must be a method, got {type(fn).__name__}")
    return _awaiting(fn)


def _policy_evaluate(policy: object) -> Callable[[Action], PolicyDecision]:
    evaluate = getattr(policy, "evaluate", None)
    if callable(evaluate) and not isinstance(policy, type):
        return evaluate  # type: ignore[no-any-return]  # duck-typed policies welcome
    hint = ""
    if isinstance(policy, str) or hasattr(policy, "__fspath__"):
        hint = f"; to load a file use policy=Policy.from_yaml({str(policy)!r})"
    raise ConfigurationError(
        f"policy must be an aegis Policy (with an evaluate() method), got "
        f"{type(policy).__name__}{hint}"
    )


def _approval_function(handler: object) -> Callable[[PolicyDecision], Any]:
    # Returned as is: the approve step runs a sync one on a worker thread.
    if isinstance(handler, ApprovalHandler):
        return handler.request_approval
    request = getattr(handler, "request_approval", None)
    if callable(request) and not isinstance(handler, type):
        return request  # type: ignore[no-any-return]  # duck-typed handlers welcome
    if callable(handler) and not isinstance(handler, type):
        return CallbackApprovalHandler(handler).request_approval
    raise ConfigurationError(
        f"approval_handler must be an ApprovalHandler or a function of the decision "
        f"returning True/False, got {type(handler).__name__}; e.g. "
        "CallbackApprovalHandler(callback=lambda d: d.risk_level.value <= 2)"
    )


def _awaiting(fn: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    """``fn`` as an async function, whether it is one already or not."""

    async def call(*args: Any) -> Any:
        out = fn(*args)
        return await out if inspect.isawaitable(out) else out

    return call
