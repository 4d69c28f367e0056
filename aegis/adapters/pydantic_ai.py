"""Govern the tools of a Pydantic AI agent.

One semantics whatever the framework (see :mod:`aegis.adapters._governance`).
Every call of a governed tool goes through
:meth:`~aegis.runtime.engine.Runtime.run_one`, with the tool itself as the
executor and the call id and the agent's name in the audit record:

- a call the policy lets through runs, once, with exactly the decided
  arguments;
- a call it blocks never runs: the model reads the rule and the reason as a
  tool failure (Pydantic AI's ``ToolFailed``);
- a call that needs approval becomes one of the framework's *deferred tool
  calls*: the run ends with ``DeferredToolRequests`` and nothing waits.
  Save ``result.all_messages()`` and ``result.output`` (both serialize), and
  later, in this process or another, :func:`resolve_deferred` asks the
  runtime's approval handler (collecting the request the approval service
  opened when the run ended) and returns the ``DeferredToolResults`` to run
  again with. An approved call then runs with exactly the approved
  arguments; a refused one is recorded and the model reads why.

Three ways in, one toolset underneath (:class:`AegisToolset`):

- :func:`govern` takes an ``Agent`` (returns an agent that governs every
  run), a toolset or a list of tools;
- :class:`AegisCapability` goes in ``Agent(capabilities=[...])``.

Output functions run as the run's result, outside every toolset, so a
governed run never runs one: a :class:`GovernedAgent` refuses such an
``output_type`` before the model is called, and a capability given by hand
refuses when the output would call the function (it cannot see a run's
``output_type`` earlier).

Example::

    agent = govern(Agent(model, name="support", tools=[refund]), runtime, target="billing")
    result = await agent.run("Refund order 17")
    while isinstance(result.output, DeferredToolRequests):
        result = await agent.run(
            message_history=result.all_messages(),
            deferred_tool_results=await resolve_deferred(result, runtime),
        )
"""

from __future__ import annotations

import functools
import inspect
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aegis.adapters._governance import Governor, OnBlock, ToolCall, missing_extra
from aegis.core.action import Action, thaw
from aegis.core.decision import Approval
from aegis.core.outcome import ApprovalOutcome
from aegis.core.result import ResultStatus
from aegis.errors import ConfigurationError

try:
    from pydantic_ai import (
        AbstractToolset,
        ApprovalRequired,
        DeferredToolRequests,
        DeferredToolResults,
        FunctionToolset,
        RunContext,
        ToolApproved,
        ToolDenied,
        ToolFailed,
        WrapperToolset,
    )
    from pydantic_ai.agent import AbstractAgent, WrapperAgent
    from pydantic_ai.capabilities import AbstractCapability
    from pydantic_ai.output import (
        NativeOutput,
        OutputContext,
        PromptedOutput,
        TextOutput,
        ToolOutput,
    )
    from pydantic_ai.realtime import RealtimeModel
    from pydantic_ai.toolsets import ToolsetTool
except ImportError as exc:
    missing_extra("aegis.adapters.pydantic_ai", "pydantic-ai", exc)

__all__ = ["AegisCapability", "AegisToolset", "GovernedAgent", "govern", "resolve_deferred"]

_FRAMEWORK = "pydantic-ai"
#: the key of a deferred call's metadata under which Aegis keeps what it needs to resume
_META = "aegis"

#: approvals settled by resolve_deferred, by runtime and call id, until the call runs
_settled: weakref.WeakKeyDictionary[Any, dict[str, ApprovalOutcome]] = weakref.WeakKeyDictionary()


@dataclass
class AegisToolset(WrapperToolset[Any]):
    """A toolset whose every call the runtime decides, approves, runs and records.

    Args:
        wrapped: the toolset whose tools are governed.
        governor: the bridge to the runtime (see :func:`govern`).
    """

    governor: Governor = field(kw_only=True)
    #: whether a call that needs approval ends the run as a deferred call;
    #: when not (a realtime session cannot end), it waits for the approval handler
    suspend: bool = field(default=True, kw_only=True)

    async def call_tool(
        self, name: str, tool_args: dict[str, Any], ctx: RunContext[Any], tool: ToolsetTool[Any]
    ) -> Any:
        """Run one call through the runtime; defer it when it needs a reviewer."""
        governor = self.governor
        call = ToolCall(
            name,
            tool_args,
            call_id=ctx.tool_call_id,
            description=tool.tool_def.description or "",
            agent=_agent_name(ctx) or governor.agent,
        )

        async def execute(action: Action) -> Any:
            # Exactly the params the runtime decided (and a reviewer approved).
            return await WrapperToolset.call_tool(self, name, thaw(action.params), ctx, tool)

        answer: ApprovalOutcome | None = None
        if ctx.tool_call_approved:
            # Resumed: the answer resolve_deferred settled, or (when the call was
            # approved by other means) none, and the runtime asks its handler.
            answer = _settled.get(governor.runtime, {}).pop(call.call_id or "", None)
        elif self.suspend:
            decision = governor.decide(call)
            if decision.approval is Approval.APPROVE:
                # The run ends here; reviewers see the request while nobody waits.
                request_id = await governor.submit(decision, call)
                raise ApprovalRequired(metadata={_META: _metadata(governor, call, request_id)})
        result = await governor.run(call, execute, answer, reraise=True)
        if result.status is ResultStatus.SUCCESS:
            return result.data
        raise ToolFailed(governor.refusal(call, result))


@dataclass
class AegisCapability(AbstractCapability[Any]):
    """A Pydantic AI capability that governs every tool of the agent it is given to.

    The agent's ``output_type`` must include ``DeferredToolRequests`` for
    calls that need approval (or use :func:`govern`, which adds it).

    Example::

        agent = Agent(model, tools=[refund], output_type=[str, DeferredToolRequests],
                      capabilities=[AegisCapability(runtime, target="billing")])
    """

    runtime: Any
    target: str = _FRAMEWORK
    on_block: OnBlock = "return"
    agent: str | None = None
    governor: Governor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.governor = Governor(
            self.runtime,
            target=self.target,
            framework=_FRAMEWORK,
            on_block=self.on_block,
            agent=self.agent,
        )

    @classmethod
    def get_serialization_name(cls) -> str | None:
        """Not part of agent specs: it holds a live runtime."""
        return None

    def get_wrapper_toolset(self, toolset: AbstractToolset[Any]) -> AbstractToolset[Any] | None:
        """The agent's tools, governed."""
        return AegisToolset(toolset, governor=self.governor)

    async def for_run(self, ctx: RunContext[Any]) -> AbstractCapability[Any]:
        """This run's capability: one that also refuses output functions, but in realtime.

        A realtime session has no output functions and never calls the
        output hooks (Pydantic AI warns about a capability implementing one),
        so only other runs get :class:`_OutputFunctionsRefused`.
        """
        if isinstance(ctx.model, RealtimeModel):
            return self
        return _OutputFunctionsRefused.of(self)


@dataclass
class _OutputFunctionsRefused(AegisCapability):
    """The capability of one run, refusing to run output functions.

    Output functions run while the output is processed, outside every
    toolset. :class:`GovernedAgent` refuses them before the model is called;
    a capability put in an agent by hand cannot see a run's ``output_type``
    that early (one given to ``run()`` is not on the agent), so it refuses
    where the function would run: the run fails and the function never runs.
    """

    @classmethod
    def of(cls, capability: AegisCapability) -> _OutputFunctionsRefused:
        """``capability`` for one run, deciding through the same governor."""
        guarded = cls.__new__(cls)
        guarded.__dict__.update(capability.__dict__)
        return guarded

    async def for_run(self, ctx: RunContext[Any]) -> AbstractCapability[Any]:
        """Already a run's capability."""
        return self

    async def wrap_output_process(
        self, ctx: RunContext[Any], *, output_context: OutputContext, output: Any, handler: Any
    ) -> Any:
        """Refuse to process an output that would call an output function."""
        if output_context.has_function:
            raise _output_function_refused(output_context.function_name or "of this run")
        return await handler(output)


@dataclass
class _LiveCapability(AegisCapability):
    """The capability of a realtime session: a call that needs approval waits for the yes.

    A live session cannot end with deferred calls and resume later (Pydantic
    AI would answer them as "cannot be completed"), so the runtime's approval
    handler is asked while the session waits, as in a synchronous framework.
    """

    async def for_run(self, ctx: RunContext[Any]) -> AbstractCapability[Any]:
        """The same capability: a realtime session has no output functions."""
        return self

    def get_wrapper_toolset(self, toolset: AbstractToolset[Any]) -> AbstractToolset[Any] | None:
        """The session's tools, governed, approvals waited for."""
        return AegisToolset(toolset, governor=self.governor, suspend=False)


class GovernedAgent(WrapperAgent[Any, Any]):
    """An agent whose every run is governed by an :class:`AegisCapability`.

    Runs without an explicit ``output_type`` also accept
    ``DeferredToolRequests``, so that a call needing approval ends the run
    instead of failing it. Realtime sessions (``agent.realtime(model)``) do
    not run through ``iter()``: they are governed on their own path.
    """

    def __init__(self, wrapped: AbstractAgent[Any, Any], capability: AegisCapability) -> None:
        super().__init__(wrapped)
        self.aegis = capability
        self._live = _LiveCapability(
            capability.runtime,
            target=capability.target,
            on_block=capability.on_block,
            agent=capability.agent,
        )
        self._live.governor = capability.governor

    @asynccontextmanager
    async def iter(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        """Run the wrapped agent with the Aegis capability added."""
        kwargs["capabilities"] = [*(kwargs.get("capabilities") or ()), self.aegis]
        if kwargs.get("output_type") is None:
            kwargs["output_type"] = _with_deferred(self.wrapped.output_type)
        _refuse_output_functions(kwargs["output_type"])
        async with self.wrapped.iter(*args, **kwargs) as run:
            yield run

    # Pydantic AI opens realtime sessions (and resolves WebRTC signaling) on
    # the wrapped agent without iter(): without these, a session's tools
    # would run ungoverned.

    @asynccontextmanager
    async def _open_realtime_session(self, model: Any, **kwargs: Any) -> AsyncIterator[Any]:
        kwargs["capabilities"] = [*(kwargs.get("capabilities") or ()), self._live]
        async with self.wrapped._open_realtime_session(model, **kwargs) as session:
            yield session

    @asynccontextmanager
    async def _resolve_realtime_session(self, model: Any, **kwargs: Any) -> AsyncIterator[Any]:
        kwargs["capabilities"] = [*(kwargs.get("capabilities") or ()), self._live]
        async with self.wrapped._resolve_realtime_session(model, **kwargs) as resolved:
            yield resolved


def govern(
    agent_or_toolset: Any,
    runtime: Any,
    *,
    target: str = _FRAMEWORK,
    on_block: OnBlock = "return",
    agent: str | None = None,
) -> Any:
    """Govern a Pydantic AI agent, toolset or list of tools.

    Args:
        agent_or_toolset: an ``Agent`` (a :class:`GovernedAgent` wrapping it
            is returned), a toolset (an :class:`AegisToolset`), or a list of
            tools or functions (an :class:`AegisToolset` around a
            ``FunctionToolset``), to pass to ``Agent(toolsets=[...])``.
        runtime: the :class:`~aegis.runtime.engine.Runtime` that decides,
            approves, executes and records.
        target: the action ``target`` of every call (the toolset's name).
        on_block: ``"return"`` (the model reads the refusal) or ``"raise"``
            (:class:`~aegis.errors.ToolBlockedError` ends the run).
        agent: the agent name recorded when the run's agent has none.

    A governed agent governs each run's tools as the run starts, so tools
    registered on it later are governed too; so are tools added later to a
    governed toolset. A list of tools is copied: add tools to the toolset
    returned, not to the list.
    """
    capability = AegisCapability(runtime, target=target, on_block=on_block, agent=agent)
    if isinstance(agent_or_toolset, AbstractAgent):
        return GovernedAgent(agent_or_toolset, capability)
    if isinstance(agent_or_toolset, AbstractToolset):
        return AegisToolset(agent_or_toolset, governor=capability.governor)
    if isinstance(agent_or_toolset, Sequence) and not isinstance(agent_or_toolset, str):
        return AegisToolset(FunctionToolset(list(agent_or_toolset)), governor=capability.governor)
    raise ConfigurationError(
        "govern() takes a pydantic_ai Agent, a toolset or a list of tools, got "
        f"{type(agent_or_toolset).__name__}"
    )


async def resolve_deferred(result_or_requests: Any, runtime: Any) -> DeferredToolResults:
    """The reviewers' answers to a run's deferred calls, as the next run's deferred results.

    For each call Aegis deferred, the policy decides again: a call it now
    blocks is denied (and recorded) with the rule and reason; one it now lets
    through is approved, to be decided again when it runs; one that still
    needs approval goes to the runtime's approval handler (collecting the
    request opened when the run ended, when the handler can). A denial or a
    timeout is recorded and answered with ``ToolDenied`` and the reason; a
    yes is bound to the digest of exactly these arguments. Calls Aegis did
    not defer are left for you to answer.

    Args:
        result_or_requests: the run's result (``AgentRunResult``) or its
            ``DeferredToolRequests`` output (for instance loaded from storage).
        runtime: the runtime the tools were governed with.
    """
    requests = getattr(result_or_requests, "output", result_or_requests)
    if not isinstance(requests, DeferredToolRequests):
        raise ConfigurationError(
            "resolve_deferred() takes a run result whose output is DeferredToolRequests, or "
            f"the DeferredToolRequests, got {type(requests).__name__}"
        )
    results = DeferredToolResults()
    for part in requests.approvals:
        meta = (requests.metadata.get(part.tool_call_id) or {}).get(_META)
        if not isinstance(meta, Mapping):
            continue  # not ours to decide
        governor = Governor(
            runtime,
            target=str(meta.get("target") or _FRAMEWORK),
            framework=_FRAMEWORK,
            agent=_text(meta.get("agent")),
        )
        call = ToolCall(
            part.tool_name,
            part.args_as_dict(),
            call_id=part.tool_call_id,
            description=str(meta.get("description") or ""),
            agent=_text(meta.get("agent")),
        )
        results.approvals[part.tool_call_id] = await _settle(
            governor, call, _text(meta.get("request_id"))
        )
    return results


async def _settle(governor: Governor, call: ToolCall, request_id: str | None) -> Any:
    settled = await governor.settle(call, request_id)
    if settled.refusal is not None:
        return ToolDenied(settled.refusal)
    if settled.approval is not None:
        _settled.setdefault(governor.runtime, {})[call.call_id or ""] = settled.approval
    return ToolApproved()  # decided again, and recorded, when it runs


def _metadata(governor: Governor, call: ToolCall, request_id: str | None) -> dict[str, Any]:
    return {
        "target": governor.target,
        "description": call.description,
        "agent": call.agent,
        "request_id": request_id,
    }


def _refuse_output_functions(output_type: Any) -> None:
    """Raise for an output function: Pydantic AI runs it outside the agent's toolsets.

    The model calls an output function as it calls a tool, with arguments
    of its choosing, but the call is the run's result and no toolset (so no
    policy) sees it: a governed agent refuses to run with one.
    """
    for function in _output_functions(output_type):
        raise _output_function_refused(getattr(function, "__name__", None) or repr(function))


def _output_function_refused(name: str) -> ConfigurationError:
    return ConfigurationError(
        f"output function {name!r} would run outside Aegis (Pydantic AI calls output "
        "functions as the run's result, not through the agent's tools); give it to the "
        "agent as a tool, and keep output_type to types"
    )


def _output_functions(spec: Any) -> list[Any]:
    """The functions among an output spec (types, forms and markers are not)."""
    if isinstance(spec, ToolOutput):
        return _output_functions(spec.output)
    if isinstance(spec, NativeOutput | PromptedOutput):
        return _output_functions(spec.outputs)
    if isinstance(spec, TextOutput):
        return [spec.output_function]
    if isinstance(spec, Sequence) and not isinstance(spec, str):
        return [f for item in spec for f in _output_functions(item)]
    if inspect.isroutine(spec) or isinstance(spec, functools.partial):
        return [spec]
    if callable(spec) and not isinstance(spec, type):
        module = type(spec).__module__
        return [] if module in ("typing", "types", "typing_extensions") else [spec]
    return []


def _with_deferred(output_type: Any) -> Any:
    if output_type is DeferredToolRequests:
        return output_type
    if isinstance(output_type, Sequence) and not isinstance(output_type, str):
        if DeferredToolRequests in output_type:
            return output_type
        return [*output_type, DeferredToolRequests]
    return [output_type, DeferredToolRequests]


def _agent_name(ctx: RunContext[Any]) -> str | None:
    agent = getattr(ctx, "agent", None)
    name = getattr(agent, "name", None)
    return name if isinstance(name, str) and name else None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
