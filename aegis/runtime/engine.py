"""The governed runtime: its lifecycle and its public API.

Every action goes decide -> meter -> approve -> start -> execute -> finish:

1. **decide**: the policy evaluates the action (:meth:`Runtime.decide`,
   and :meth:`Runtime.plan` for a whole plan, which runs nothing);
2. the other steps are those of :mod:`aegis.runtime.steps`: the limits are
   counted, ``block`` ends with ``BLOCKED``, ``approve`` asks the approval
   handler (a refusal, an exception or a timeout ends with ``DENIED``), the
   audit notes the start durably, the executor runs the action (an
   exception becomes ``FAILED``), and the final outcome is written to the
   audit trail before the :class:`~aegis.core.result.Result` is returned.

A ``FAILED`` or ``DENIED`` action stops the plan: every later action is
``SKIPPED`` (and recorded). A ``BLOCKED`` action does not stop it.

This module holds what lasts longer than one action: setting the executor
up and tearing it down, the policy in force (and its file, see
:mod:`aegis.runtime.policy_file`), the audit trail and the usage counters
(:mod:`aegis.runtime.metering`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from aegis.core.action import Action, canonical_json
from aegis.core.decision import Approval, PolicyDecision
from aegis.core.outcome import ApprovalOutcome
from aegis.core.plan import ExecutionPlan
from aegis.core.record import ContextValue, DecisionStamp, check_context
from aegis.core.result import Result, ResultStatus
from aegis.core.risk import RiskLevel
from aegis.errors import AegisError, ConfigurationError
from aegis.runtime.approval import ApprovalHandler, CLIApprovalHandler
from aegis.runtime.asking import approval_function
from aegis.runtime.deciding import checked_decision, policy_evaluate
from aegis.runtime.executor import Executor, executor_hooks
from aegis.runtime.metering import MeteringStep
from aegis.runtime.policy_file import PolicyFile
from aegis.runtime.steps import Gate, Passage, blocked, describe, skipped
from aegis.runtime.tracing import action_tracer

if TYPE_CHECKING:
    from aegis.core.policy import Policy
    from aegis.runtime.audit_backend import AuditBackend
    from aegis.stores.usage import UsageStore

__all__ = ["Executor", "Runtime"]

_log = logging.getLogger("aegis.runtime")

_STOPPING = frozenset({ResultStatus.FAILED, ResultStatus.DENIED})


def _now() -> datetime:
    return datetime.now(UTC)


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
            ``"agent"`` entry of a call's ``context`` (see :mod:`aegis.runtime.metering`).
        usage_store: where limits, budgets and flow rules count
            (:class:`~aegis.stores.usage.UsageStore`); by default beside the
            audit trail (its SQLite file or PostgreSQL database), or in memory
            for an audit without a database. Opened only when the policy has
            such rules; a store given here is not closed by the runtime.
        policy_path: a policy file, read when ``policy`` is not given.
        reload: watch ``policy_path`` every ``reload_interval`` seconds and
            decide later actions by its new content; a broken file keeps the
            current policy and is logged with its file and line.
        tracer_provider: an OpenTelemetry tracer provider for the spans of
            governed actions (see :mod:`aegis.runtime.tracing`); by default
            the global one, when the application has configured one.

    Inside ``async with``, the executor's ``setup()`` runs once on entering
    and ``teardown()`` once on leaving. Outside it, :meth:`execute` sets the
    executor up before the plan and tears it down after it, while
    :meth:`run_one` sets it up once, before its first action, and
    :meth:`close` tears it down. The audit's ``close()`` runs once, when the
    block ends or on :meth:`close`. Once started, a runtime may be called from
    several threads' loops (``asyncio.run`` in each); a first call from one
    loop while it is being started on another raises
    :class:`~aegis.errors.ConfigurationError` rather than wait for ever.

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
        tracer_provider: Any = None,
    ) -> None:
        execute, self._setup, self._teardown = executor_hooks(executor)
        self._tracer_provider = tracer_provider
        self._metering = MeteringStep(agent, usage_store)
        self._policy_file = PolicyFile(policy_path, reload, reload_interval, self.update_policy)
        if policy is None:
            policy = self._policy_file.load()
        self._evaluate = policy_evaluate(policy)
        if approval_handler is None:
            approval_handler = CLIApprovalHandler()
        ask = approval_function(approval_handler)
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
        self.approval_handler = approval_handler
        self.audit: AuditBackend = audit_logger
        self._metering.beside(audit_logger)
        self._gate = Gate(
            execute=execute,
            ask=ask,
            audit=audit_logger,
            metering=self._metering,
            policy=policy,
            session_id=session_id or uuid.uuid4().hex,
            approval_timeout=approval_timeout,
            execute_timeout=execute_timeout,
        )
        self._gate.agent = agent
        bind = getattr(approval_handler, "bind_session", None)
        if callable(bind):
            # A handler that keys requests by session (the remote one) learns ours.
            bind(self.session_id)
        self._started = False
        self._closed = False
        self._entered = False  # inside ``async with``: set up once for the block
        self._lazy = False  # set up by run_one outside ``async with``: until close()
        self._plans = 0  # execute() calls running on a setup of their own
        # the first calls' setup: the loop it runs on, its lock, how many wait
        self._start_guard = threading.Lock()
        self._start_loop: asyncio.AbstractEventLoop | None = None
        self._start_lock = asyncio.Lock()
        self._starting = 0

    # The steps read these from the gate; the runtime shows them as its own.

    @property
    def policy(self) -> Policy:
        """The policy deciding now; set it with :meth:`update_policy`."""
        return self._gate.policy  # type: ignore[no-any-return]  # duck-typed policies welcome

    @policy.setter
    def policy(self, policy: Policy) -> None:
        self.update_policy(policy)

    def _explained(self, decision: PolicyDecision) -> PolicyDecision:
        """The copy of ``decision`` a person is asked about (for the framework adapters)."""
        return self._gate.explained(decision)

    @property
    def session_id(self) -> str:
        """The session this runtime's audit records belong to."""
        return self._gate.session_id

    @session_id.setter
    def session_id(self, session_id: str) -> None:
        self._gate.session_id = session_id

    @property
    def approval_timeout(self) -> float | None:
        """Seconds an approval may take before it counts as denied, or ``None``."""
        return self._gate.approval_timeout

    @approval_timeout.setter
    def approval_timeout(self, seconds: float | None) -> None:
        self._gate.approval_timeout = seconds

    @property
    def execute_timeout(self) -> float | None:
        """Seconds the executor may take before the action counts as failed, or ``None``."""
        return self._gate.execute_timeout

    @execute_timeout.setter
    def execute_timeout(self, seconds: float | None) -> None:
        self._gate.execute_timeout = seconds

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
        self._policy_file.watch()
        loop = asyncio.get_running_loop()
        with self._start_guard:
            # An asyncio lock serves one loop: a first call from another
            # thread's loop meanwhile would wait for ever on it. It is refused.
            if self._start_loop is not None and self._start_loop is not loop:
                raise ConfigurationError(
                    "this Runtime is being started on another event loop (another "
                    "thread's); start it once first (async with, or one run_one), "
                    "then call it from any thread"
                )
            if self._start_loop is None:
                self._start_loop, self._start_lock = loop, asyncio.Lock()
            self._starting += 1
            lock = self._start_lock
        try:
            # Concurrent first calls wait here: setup() runs once, and no action
            # starts before it has finished. A failed setup() is tried again.
            async with lock:
                if not self._started:
                    # The trail must be usable before anything runs: a file that
                    # is not ours, damaged or read-only fails here, not after an
                    # action already ran and could not be recorded.
                    check = getattr(self.audit, "check", None)
                    if callable(check):
                        check()
                    if self._setup is not None:
                        await self._setup()
                    self._gate.tracer = action_tracer(self._tracer_provider)
                    self._started = True
        finally:
            with self._start_guard:
                self._starting -= 1
                if not self._starting:
                    self._start_loop = None

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
                await self._policy_file.close()
            finally:
                try:
                    self._metering.close()
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
        policy = self._gate.policy
        if getattr(policy, "limits", None) is not None:
            preview, session_id = self._metering.preview, self.session_id
            return ExecutionPlan([preview(policy, self.decide(a), session_id) for a in actions])
        return ExecutionPlan([self.decide(a) for a in actions])

    def update_policy(self, policy: Policy) -> None:
        """Decide every later action by ``policy``; actions in flight finish under the old one.

        The swap is atomic for the event loop: an action is decided, metered,
        approved and executed under one policy. Call it from the loop's thread.

        Raises:
            ConfigurationError: ``policy`` has no ``evaluate()`` method.
        """
        evaluate = policy_evaluate(policy)
        self._gate.policy, self._evaluate = policy, evaluate

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
                    passage = Passage(self._gate, decision, stamp)
                    tracer = self._gate.tracer
                    result = await (passage.run() if tracer is None else passage.traced(tracer))
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
        gate = self._gate
        policy = gate.policy
        decision = self.decide(action)
        stamp = DecisionStamp.now(gate.policy, checked)
        if not self._started or self._closed:
            await self._start()
        if not self._entered:
            self._lazy = True  # set up for good: close() tears it down
        if gate.tracer is not None:
            return await Passage(gate, decision, stamp).traced(
                gate.tracer, plain=gate.policy is policy
            )
        return await Passage(gate, decision, stamp).run(plain=gate.policy is policy)

    # ------------------------------------------------------------------ the steps

    def decide(self, action: Action) -> PolicyDecision:
        """The policy's decision for ``action`` (the decide step)."""
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
        return checked_decision(decision, action)

    async def approve(
        self, decision: PolicyDecision, *, decided: str | None = None
    ) -> tuple[Result | None, ApprovalOutcome]:
        """Ask the approval handler about an ``approve`` decision.

        Returns ``None`` and the approving
        :class:`~aegis.core.outcome.ApprovalOutcome` when the action may run,
        otherwise a ``DENIED`` Result and the refusing outcome, whose
        :meth:`~aegis.core.outcome.ApprovalOutcome.human_decision` the audit
        trail records (``"denied by carol: no"``, ``"denied: timeout: ..."``,
        ``"denied: error: ..."``). A handler that raises, times out or
        answers anything but a bool or an outcome refuses (see
        :func:`aegis.runtime.asking.ask`).

        The handler gets a copy of ``decision``: whatever it does to it,
        the runtime goes on with its own. ``decided`` is the action's
        :func:`~aegis.core.action.canonical_json` when it was decided (taken
        now when not given); an :class:`~aegis.core.outcome.ApprovalOutcome`
        bound to another digest denies. A synchronous handler runs on a
        worker thread, and ``approval_timeout`` holds for every handler, one
        that ignores cancellation included.
        """
        if decided is None:
            decided = canonical_json(decision.action)
        return await self._gate.approve(decision, decided)

    async def run_executor(self, action: Action) -> Result:
        """Run ``action`` on the executor and normalise what comes back.

        An exception becomes ``FAILED`` with ``"Type: message"`` as error (a
        ``CancelledError`` too, when nothing cancelled the caller: the
        executor's own); a value that is not a Result becomes ``SUCCESS``
        with that value as data. The Result always carries ``action``, the
        action that was approved, whatever the executor put in it.
        """
        return await self._gate.run_executor(action)

    async def record(
        self,
        decision: PolicyDecision,
        result: Result,
        human_decision: str | ApprovalOutcome | None = None,
        start_token: int | None = None,
        *,
        stamp: DecisionStamp | None = None,
    ) -> Result:
        """Write ``result`` to the audit trail, then return it.

        ``stamp`` says when and under which policy ``decision`` was taken,
        and the caller's context; a stamp of now, without context, if omitted.
        """
        return await self._gate.record(decision, result, human_decision, start_token, stamp)

    @staticmethod
    def block(decision: PolicyDecision) -> Result:
        """The ``BLOCKED`` Result of a decision the policy forbids."""
        return blocked(decision)

    @staticmethod
    def skip(decision: PolicyDecision, cause: Result) -> Result:
        """The ``SKIPPED`` Result of an action after ``cause`` stopped the plan."""
        return skipped(decision, cause)

    # ------------------------------------------------------------------ internals

    def _stamp(self, context: Mapping[str, ContextValue] | None) -> DecisionStamp:
        """The stamp of a decision taken now by this runtime's policy."""
        return DecisionStamp.now(self._gate.policy, context)

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
                error=f"skipped: the plan was interrupted ({describe(exc)})",
                started_at=now,
                completed_at=now,
            )
            try:
                await self.record(decision, result, stamp=stamp)
            except Exception:
                _log.exception("could not record the skipped action %s", decision.action)
                return

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
