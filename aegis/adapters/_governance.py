"""What every framework integration shares: one tool call, one governed action.

The framework modules (:mod:`aegis.adapters.langchain`,
:mod:`aegis.adapters.openai_agents`, :mod:`aegis.adapters.anthropic`) only
translate: a framework's tool call into a :class:`ToolCall`, and a
:class:`~aegis.core.result.Result` back into the framework's reply. The
meaning of auto, approve and block lives once, in
:meth:`~aegis.runtime.engine.Runtime.run_one`; this module is the bridge:

- :class:`Governor` turns a call into an :class:`~aegis.core.action.Action`
  (``type`` = tool name, ``target`` = the toolset's name, ``params`` = the
  arguments, ``description`` = the tool's description) and runs it through
  the runtime with the tool itself as the executor, the framework's call id
  and agent name in the audit record's context;
- :meth:`Governor.ask` asks the runtime's approval handler while a
  framework's run is suspended, and binds the answer to the digest of the
  action that was asked about, so that only those arguments can run later;
- :meth:`Governor.run_sync` serves frameworks that call tools from plain
  threads: the runtime's steps run on one background event loop while the
  tool itself runs in the caller's thread (with the caller's context
  variables, which frameworks such as LangGraph rely on).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import queue
import sys
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, NoReturn

from aegis.core.action import Action, NonFiniteNumber, action_digest
from aegis.core.decision import Approval, PolicyDecision
from aegis.core.outcome import ApprovalOutcome
from aegis.core.record import DecisionStamp
from aegis.core.result import Result, ResultStatus
from aegis.core.risk import RiskLevel
from aegis.errors import ConfigurationError, ToolBlockedError
from aegis.runtime import asking
from aegis.runtime._binding import CallBinding, bound_call
from aegis.runtime.approval import SuspendableApprovalHandler
from aegis.runtime.refusal import refusal_text

if TYPE_CHECKING:
    from aegis.runtime.engine import Runtime

__all__ = [
    "Governor",
    "OnBlock",
    "Settled",
    "ToolCall",
    "missing_extra",
    "never_run",
]

_log = logging.getLogger("aegis.adapters")

#: what an integration does with a call the policy blocks: answer the model
#: with a tool error (``"return"``, the default) or raise ToolBlockedError
OnBlock = Literal["return", "raise"]


def missing_extra(module: str, extra: str, exc: ImportError) -> NoReturn:
    """Raise the one-line ImportError of an integration imported without its extra."""
    raise ImportError(
        f"{module} needs the {extra!r} extra ({exc.name or exc} is not installed); "
        f'install it with: pip install "aegis-runtime[{extra}]"'
    ) from None


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One tool call as a framework made it.

    Args:
        name: the tool's name; it becomes the action's ``type``.
        args: the call's arguments; they become the action's ``params``.
        call_id: the framework's id of the call (recorded in the audit).
        description: the tool's description, shown to approvers.
        agent: the name of the agent that made the call, if known.
        unreadable: why the call cannot be decided as the tool would read
            it (its schema cannot be read); such a call is blocked and
            recorded, and never runs.
    """

    name: str
    args: Mapping[str, Any]
    call_id: str | None = None
    description: str = ""
    agent: str | None = None
    unreadable: str | None = None


#: the rule of the audit record of a call refused before any decision
REFUSED_RULE = "<aegis>"


@dataclass(frozen=True, slots=True)
class Settled:
    """How :meth:`Governor.settle` answered a suspended call.

    Args:
        refusal: what the model reads instead of the call's output (the
            refusal is recorded); ``None`` when the call may run.
        approval: the reviewers' yes the call must run with; ``None`` when
            the policy now lets it run without one (or it is refused).
    """

    refusal: str | None = None
    approval: ApprovalOutcome | None = None


def never_run(action: Action) -> Any:
    """The executor of a call that is refused: the runtime records it and never runs it."""
    raise AssertionError(f"{action} was refused and must not run")


def _as_text_if_nonfinite(value: Any) -> Any:
    """``value`` with each infinite or NaN float as its text, for the record of a refusal."""
    if isinstance(value, float):
        return value if value - value == 0.0 else repr(value)
    if isinstance(value, Mapping):
        return {k: _as_text_if_nonfinite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_as_text_if_nonfinite(v) for v in value]
    return value


class Governor:
    """Runs a framework's tool calls through one :class:`~aegis.runtime.engine.Runtime`.

    Args:
        runtime: the runtime that decides, approves, executes and records.
        target: the action ``target`` of every call (the toolset's name).
        framework: recorded in each audit record's context.
        on_block: ``"return"`` answers a blocked call with a tool error the
            model reads; ``"raise"`` raises :class:`~aegis.errors.ToolBlockedError`.
        agent: the agent name recorded when the framework does not give one.
    """

    def __init__(
        self,
        runtime: Runtime,
        *,
        target: str,
        framework: str,
        on_block: OnBlock = "return",
        agent: str | None = None,
    ) -> None:
        run_one = getattr(runtime, "run_one", None)
        if not callable(run_one) or not callable(getattr(runtime, "decide", None)):
            raise ConfigurationError(
                f"expected an aegis Runtime, got {type(runtime).__name__}; build one with "
                "Runtime(executor=..., policy=Policy.from_yaml(...))"
            )
        if not isinstance(target, str) or not target:
            raise ConfigurationError(f"target must be a non-empty string, got {target!r}")
        if on_block not in ("return", "raise"):
            raise ConfigurationError(f'on_block must be "return" or "raise", got {on_block!r}')
        self.runtime = runtime
        self.target = target
        self.framework = framework
        self.on_block: OnBlock = on_block
        self.agent = agent

    # ------------------------------------------------------------ translation

    def action(self, call: ToolCall) -> Action:
        """The action a call asks for."""
        return Action(call.name, self.target, dict(call.args), call.description or "")

    def digest(self, call: ToolCall) -> str:
        """The digest of the action a call asks for: what an approval of it is bound to."""
        return action_digest(self.action(call))

    def context(self, call: ToolCall) -> dict[str, str]:
        """What the audit record says about the call besides the action."""
        context = {"framework": self.framework}
        if call.call_id is not None:
            context["tool_call_id"] = call.call_id
        agent = call.agent or self.agent
        if agent is not None:
            context["agent"] = agent
        return context

    def decide(self, call: ToolCall) -> PolicyDecision:
        """The policy's decision for a call now; nothing is recorded.

        A call that cannot be decided (a number that is not finite, or
        :attr:`ToolCall.unreadable`) is blocked.
        """
        try:
            action = self.action(call)
        except NonFiniteNumber as exc:
            return self._refused(call, str(exc))
        if call.unreadable is not None:
            return self._refused(call, call.unreadable)
        return self.runtime.decide(action)

    def _refused(self, call: ToolCall, why: str) -> PolicyDecision:
        """The blocking decision for a call that cannot be decided, on what can be kept of it."""
        try:
            action = Action(
                call.name, self.target, _as_text_if_nonfinite(call.args), call.description or ""
            )
        except (TypeError, ValueError):
            action = Action(call.name, self.target, {}, call.description or "")
        return PolicyDecision(action, RiskLevel.HIGH, Approval.BLOCK, REFUSED_RULE, why)

    async def _record_refused(self, call: ToolCall, decision: PolicyDecision) -> Result:
        """Record a call refused before any decision as blocked, and return its Result."""
        result = Result(
            decision.action,
            ResultStatus.BLOCKED,
            error=f"blocked: tool {call.name} was not run: {decision.reason}",
            completed_at=datetime.now(UTC),
        )
        stamp = DecisionStamp.now(self.runtime.policy, self.context(call))
        return await self.runtime.record(decision, result, stamp=stamp)

    # ------------------------------------------------------------ running

    async def run(
        self,
        call: ToolCall,
        execute: Callable[[Action], Any] | None,
        answer: ApprovalOutcome | None = None,
        *,
        reraise: bool = False,
    ) -> Result:
        """Decide, approve, execute (with ``execute``) and record one call.

        ``execute`` receives the action the runtime decided and runs the
        tool with exactly its params; ``None`` runs the runtime's own
        executor. ``answer`` is an approval given while the run was
        suspended; the runtime refuses it unless its digest is the digest
        of this call's action. With ``reraise``, an exception of ``execute``
        is raised again once the runtime has recorded the failure, so that
        the framework's own error handling (or control flow) applies.
        """
        try:
            action = self.action(call)
        except NonFiniteNumber as exc:
            # Fails closed: refused, recorded, and the model reads why.
            return await self._record_refused(call, self._refused(call, str(exc)))
        if call.unreadable is not None:
            return await self._record_refused(call, self._refused(call, call.unreadable))
        if execute is None:
            if answer is not None:
                raise ConfigurationError("an approval answer needs the tool to run with it")
            return await self._run_one(action, call)
        raised: list[Exception] = []
        if reraise:
            execute = _capturing(execute, raised)
        with bound_call(CallBinding(action, execute, answer)):
            result = await self._run_one(action, call)
        if raised and result.status is ResultStatus.FAILED:
            # Recorded as FAILED; the framework handles its tool's error its own way.
            raise raised[0]
        return result

    async def _run_one(self, action: Action, call: ToolCall) -> Result:
        return await self.runtime.run_one(action, context=self.context(call))

    def run_sync(
        self,
        call: ToolCall,
        execute: Callable[[Action], Any],
        answer: ApprovalOutcome | None = None,
        *,
        reraise: bool = False,
    ) -> Result:
        """:meth:`run` from synchronous code; ``execute`` runs in this thread."""

        async def run(
            call: ToolCall, execute: Callable[[Action], Any], answer: ApprovalOutcome | None
        ) -> Result:
            return await self.run(call, execute, answer, reraise=reraise)

        return _portal.run(run, call, execute, answer)

    def call_sync(self, work: Awaitable[Any]) -> Any:
        """Await ``work`` on the background loop from synchronous code."""
        return _portal.call(work)

    # ------------------------------------------------------------ replies

    def refusal(self, call: ToolCall, result: Result) -> str:
        """What the model reads when a call did not run, or failed.

        The same wording in every integration (see :mod:`aegis.runtime.refusal`):
        ``blocked by rule NAME: DESCRIPTION (REASON)``, or the approver's
        denial with its comment and the rule that asked for approval.

        Raises:
            ToolBlockedError: the call was blocked and ``on_block="raise"``.
        """
        decision = None
        if result.status is ResultStatus.DENIED:
            try:  # only for the text: which rule asked for approval
                decision = self.runtime.decide(result.action)
            except Exception:  # a text without the rule is still a refusal
                decision = None
        text = refusal_text(result, policy=self.runtime.policy, decision=decision)
        if result.status is ResultStatus.BLOCKED and self.on_block == "raise":
            raise ToolBlockedError(text, result=result)
        return text

    # ------------------------------------------------------------ approvals

    def explained(self, decision: PolicyDecision) -> PolicyDecision:
        """The copy of ``decision`` a person is asked about, as the runtime's approve step asks."""
        explain = getattr(self.runtime, "_explained", None)
        if callable(explain):
            return explain(decision)  # type: ignore[no-any-return]
        return asking.explained(self.runtime.policy, decision)

    async def submit(self, decision: PolicyDecision, call: ToolCall) -> str | None:
        """Create an approval request for a suspended call, if the handler can.

        A handler that can (a :class:`SuspendableApprovalHandler`, such as the
        approval service's client) creates the request now, so that reviewers
        see it while the run is suspended; :meth:`collect` waits for it later,
        possibly in another process. Others are asked when the run resumes.
        A request that cannot be created is logged; the resume asks afresh.
        """
        handler = _suspendable(self.runtime.approval_handler)
        if handler is None:
            return None
        try:
            return await handler.submit_approval(
                self.explained(decision), context=self.context(call)
            )
        except Exception:  # the resume will ask the handler again
            _log.exception("could not create an approval request for %s", decision.action)
            return None

    async def collect(self, request_id: str | None, decision: PolicyDecision) -> ApprovalOutcome:
        """Wait for the answer to the request :meth:`submit` created.

        Falls back to :meth:`ask` when there is no request (``None``: the
        handler could not create one) or the handler cannot collect; a
        failure or a timeout is a denial with its reason.
        """
        handler = _suspendable(self.runtime.approval_handler)
        if handler is None or request_id is None:
            return await self.ask(decision)
        return await asking.ask(
            handler.collect_approval,
            decision,
            timeout=self.runtime.approval_timeout,
            digest=action_digest(decision.action),
            request_id=request_id,
        )

    async def ask(self, decision: PolicyDecision) -> ApprovalOutcome:
        """Ask the runtime's approval handler as its approve step does (one ``asking.ask``)."""
        return await asking.ask(
            asking.approval_function(self.runtime.approval_handler),
            self.explained(decision),
            timeout=self.runtime.approval_timeout,
            digest=action_digest(decision.action),
        )

    async def settle(self, call: ToolCall, request_id: str | None) -> Settled:
        """Decide a suspended call again and answer it before its run resumes.

        A call the policy now blocks is recorded as blocked and refused; one
        it now lets through may run (decided again, and recorded, when it
        runs). One that still needs approval waits for the request
        ``request_id`` (created when the run suspended) or, without one,
        for a request submitted now: the service returns the pending request
        of the same session and action rather than open a second one. A yes
        comes back to run the call with; a denial or a timeout is recorded
        (the call never runs) and refused.
        """
        decision = self.decide(call)
        if decision.approval is Approval.AUTO:
            return Settled()
        if decision.approval is Approval.BLOCK:
            return Settled(refusal=self.refusal(call, await self.run(call, never_run, None)))
        if request_id is None:
            request_id = await self.submit(decision, call)
        outcome = await self.collect(request_id, decision)
        if outcome.approved is True:
            return Settled(approval=outcome)
        return Settled(refusal=self.refusal(call, await self.run(call, never_run, outcome)))

    def __repr__(self) -> str:
        return f"Governor(target={self.target!r}, framework={self.framework!r})"


def _suspendable(handler: object) -> SuspendableApprovalHandler | None:
    """``handler`` as one that can ask now and answer later, if it can."""
    if isinstance(handler, SuspendableApprovalHandler):
        return handler
    remote = sys.modules.get("aegis.runtime.approval_remote")
    if remote is not None and isinstance(handler, remote.RemoteApprovalHandler):
        from aegis.adapters._remote import RemoteSuspension  # noqa: PLC0415  # needs httpx

        return RemoteSuspension(handler)
    return None


# ---------------------------------------------------------------- sync bridge


class _Portal:
    """One background event loop for governed calls made from synchronous code.

    One loop for the whole process, so that approval handlers holding
    loop-bound resources (an HTTP client) always see the same loop. The
    runtime's steps run there; each tool runs back in the calling thread,
    which waits for the work the loop hands it.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="aegis-integration-loop", daemon=True
                )
                thread.start()
                self._loop = loop
            return self._loop

    def call(self, work: Awaitable[Any]) -> Any:
        async def wrapped() -> Any:
            return await work

        loop = self.loop()
        self._refuse_reentry(loop)
        return asyncio.run_coroutine_threadsafe(wrapped(), loop).result()

    @staticmethod
    def _refuse_reentry(loop: asyncio.AbstractEventLoop) -> None:
        # Waiting on the loop from its own thread would wait forever.
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            return
        if running is loop:
            raise ConfigurationError(
                "a governed tool was called synchronously from Aegis' own event loop (from "
                "an approval handler or an executor?); call it with its async API instead"
            )

    def run(
        self,
        run: Callable[
            [ToolCall, Callable[[Action], Any], ApprovalOutcome | None], Awaitable[Result]
        ],
        call: ToolCall,
        execute: Callable[[Action], Any],
        answer: ApprovalOutcome | None,
    ) -> Result:
        loop = self.loop()
        self._refuse_reentry(loop)
        work: queue.SimpleQueue[tuple[Action, asyncio.Future[Any]] | None] = queue.SimpleQueue()

        async def execute_in_caller(action: Action) -> Any:
            future: asyncio.Future[Any] = loop.create_future()
            work.put((action, future))
            return await future

        async def governed() -> Result:
            return await run(call, execute_in_caller, answer)

        done = asyncio.run_coroutine_threadsafe(governed(), loop)
        done.add_done_callback(lambda _: work.put(None))
        while (item := work.get()) is not None:
            action, future = item
            try:
                value = execute(action)
                if inspect.isawaitable(value):
                    raise ConfigurationError(
                        f"tool {call.name!r} returned an awaitable to a synchronous call; "
                        "call the agent with its async API (ainvoke, astream)"
                    )
            except Exception as exc:  # the runtime records the tool's failure
                loop.call_soon_threadsafe(_settle, future, None, exc)
            except BaseException:  # interrupted: the runtime records it, we re-raise
                loop.call_soon_threadsafe(future.cancel)
                raise
            else:
                loop.call_soon_threadsafe(_settle, future, value, None)
        return done.result()


def _capturing(
    execute: Callable[[Action], Any], raised: list[Exception]
) -> Callable[[Action], Any]:
    """``execute``, keeping any exception it raises in ``raised`` (async stays async)."""
    if inspect.iscoroutinefunction(execute):

        async def call_async(action: Action) -> Any:
            try:
                return await execute(action)
            except Exception as exc:
                raised.append(exc)
                raise

        return call_async

    def call(action: Action) -> Any:
        try:
            return execute(action)
        except Exception as exc:
            raised.append(exc)
            raise

    return call


def _settle(future: asyncio.Future[Any], value: Any, exc: BaseException | None) -> None:
    if future.done():  # the runtime gave up waiting (execute_timeout)
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(value)


_portal = _Portal()
