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
import inspect
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from aegis.adapters.base import BaseExecutor
from aegis.core.action import Action, action_digest
from aegis.core.decision import Approval, PolicyDecision
from aegis.core.outcome import ApprovalOutcome
from aegis.core.plan import ExecutionPlan
from aegis.core.record import ContextValue, DecisionStamp, check_context
from aegis.core.result import Result, ResultStatus
from aegis.errors import AegisError, ConfigurationError
from aegis.runtime.approval import ApprovalHandler, CLIApprovalHandler
from aegis.runtime.approval_callback import CallbackApprovalHandler

if TYPE_CHECKING:
    from aegis.core.policy import Policy
    from aegis.runtime.audit_backend import AuditBackend

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
            as denied; ``None`` (default) leaves timing to the handler.
        execute_timeout: seconds an async executor may take before the
            action counts as failed (it is cancelled); ``None`` (default)
            waits for it. A synchronous executor cannot be interrupted.

    The executor's ``setup()`` runs once, on ``async with`` or else before
    the first action; ``teardown()`` and the audit's ``close()`` run once,
    when the ``async with`` block ends or on :meth:`close`.

    Example::

        async with Runtime(executor=crm, policy=Policy.from_yaml("policy.yaml")) as rt:
            result = await rt.run_one(Action("read", "crm"))
            assert result.ok
    """

    def __init__(
        self,
        *,
        executor: Executor,
        policy: Policy,
        approval_handler: ApprovalHandler | Callable[[PolicyDecision], Any] | None = None,
        audit_logger: AuditBackend | None = None,
        session_id: str | None = None,
        approval_timeout: float | None = None,
        execute_timeout: float | None = None,
    ) -> None:
        self._execute_action, self._setup, self._teardown = _executor_hooks(executor)
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
        self._record_final = audit_logger.record
        self._record_start = getattr(audit_logger, "record_start", None)
        # A backend written before records had a context, a decision time
        # and a policy digest still works; it just does not store them.
        self._stamped = _accepts_stamp(audit_logger.record)
        self._start_stamped = self._record_start is not None and _accepts_stamp(self._record_start)
        self._started = False
        self._closed = False
        self._start_lock: asyncio.Lock | None = None

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        await self._start()
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
            self.audit.close()

    # ------------------------------------------------------------------ public API

    def plan(self, actions: Iterable[Action]) -> ExecutionPlan:
        """Evaluate ``actions`` against the policy; nothing runs, nothing is recorded.

        Example::

            plan = runtime.plan([Action("read", "crm"), Action("delete", "crm")])
            print(plan.summary())
        """
        return ExecutionPlan([self.decide(a) for a in actions])

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
        if not self._started or self._closed:
            await self._start()
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
                raise
            results.append(result)
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
        decision = self.decide(action)
        stamp = self._stamp(checked)
        if not self._started or self._closed:
            await self._start()
        return await self._run(decision, stamp)

    # ------------------------------------------------------------------ the steps

    def decide(self, action: Action) -> PolicyDecision:
        """Step 1: the policy's decision for ``action``."""
        if not isinstance(action, Action):
            raise ConfigurationError(
                f"expected an aegis Action, got {type(action).__name__}; "
                'build one with Action("read", "crm", {...})'
            )
        return self._evaluate(action)

    async def approve(self, decision: PolicyDecision) -> tuple[Result | None, str]:
        """Step 2: ask the approval handler about an ``approve`` decision.

        Returns ``(None, "approved")`` when the action may run, otherwise a
        ``DENIED`` Result and the human decision to audit (``"denied"``,
        ``"denied: timeout: ..."`` or ``"denied: error: ..."``).
        """
        started = _now()
        try:
            if self.approval_timeout is None:
                approved = await self._ask(decision)
            else:
                approved = await asyncio.wait_for(self._ask(decision), self.approval_timeout)
        except TimeoutError as exc:
            why = str(exc) or f"no answer within {self.approval_timeout:g}s"
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
            return self._settle(decision, started, approved)
        if approved is False:
            return self._denied(decision, started, "denied by the approver"), "denied"
        why = f"approval handler returned {approved!r}, not True or False"
        return self._denied(decision, started, why), f"denied: error: {why}"

    def _settle(
        self, decision: PolicyDecision, started: datetime, outcome: ApprovalOutcome
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
        if outcome.digest is not None and outcome.digest != action_digest(decision.action):
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
        try:
            out = self._execute_action(action)
            if inspect.isawaitable(out):
                limit = self.execute_timeout
                out = await (out if limit is None else _in_time(out, limit))
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

    async def _run(self, decision: PolicyDecision, stamp: DecisionStamp) -> Result:
        """One action through approve -> execute -> record."""
        approval = decision.approval
        if approval is Approval.BLOCK:
            return await self.record(decision, self.block(decision), stamp=stamp)
        human: str | None = None
        if approval is Approval.APPROVE:
            try:
                denied, human = await self.approve(decision)
            except BaseException as exc:  # cancelled or interrupted while waiting
                await self._record_interrupted(
                    decision, stamp, exc, ResultStatus.DENIED, "denied: interrupted"
                )
                raise
            if denied is not None:
                return await self.record(decision, denied, human, stamp=stamp)
        token = None
        if self._record_start is not None:
            fields = self._stamp_fields(stamp) if self._start_stamped else {}
            token = await self._record_start(
                self.session_id, decision, human_decision=human, **fields
            )
        try:
            result = await self.run_executor(decision.action)
        except BaseException as exc:  # cancelled or interrupted mid-action
            await self._record_interrupted(decision, stamp, exc, ResultStatus.FAILED, human, token)
            raise
        return await self.record(decision, result, human, token, stamp=stamp)

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


async def _in_time(pending: Awaitable[Any], limit: float) -> Any:
    """Await an executor, cancelling it after ``limit`` seconds."""
    deadline = asyncio.timeout(limit)
    try:
        async with deadline:
            return await pending
    except TimeoutError as exc:
        if not deadline.expired():
            raise  # the executor's own TimeoutError, not ours
        raise TimeoutError(f"the executor took longer than {limit:g}s") from exc


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


def _approval_function(handler: object) -> Callable[[PolicyDecision], Awaitable[Any]]:
    if isinstance(handler, ApprovalHandler):
        return handler.request_approval
    request = getattr(handler, "request_approval", None)
    if callable(request) and not isinstance(handler, type):
        return _awaiting(request)
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
