"""Govern the tools of an OpenAI Agents SDK agent.

One semantics whatever the framework (see :mod:`aegis.adapters._governance`).
:func:`govern` changes each ``FunctionTool`` of an agent in three places:

- ``needs_approval`` asks the policy: a call it marks ``approve`` suspends
  the run, and the SDK lists it in ``result.interruptions``. No thread waits
  for the reviewer: save ``result.to_state().to_string()`` and come back,
  in this process or another one.
- a tool input guardrail runs just before the tool: a call the policy
  blocks never runs (the model reads the rule and the reason; with
  ``on_block="raise"`` the run stops with the SDK's tripwire exception), and
  an approved call whose arguments differ from the approved ones is refused.
- the tool's invocation goes through
  :meth:`~aegis.runtime.engine.Runtime.run_one`, which decides the call once
  more, runs it, and records it with the call id and the agent's name.

:func:`resolve_interruptions` settles a suspended run's pending calls
through the runtime's approval handler (the remote approval service too) and
returns the :class:`~agents.RunState` to resume with ``Runner.run``.

Example::

    agent = govern(Agent(name="support", tools=[lookup, refund]), runtime, target="billing")
    result = await Runner.run(agent, "Refund order 7")
    while result.interruptions:
        state = await resolve_interruptions(result, runtime)
        result = await Runner.run(agent, state)
"""

from __future__ import annotations

import copy
import json
import weakref
from collections.abc import Callable, Collection
from typing import Any

from aegis.adapters._governance import Governor, OnBlock, ToolCall, missing_extra, never_run
from aegis.core.action import Action, thaw
from aegis.core.coerce import UnreadableSchema, coerce_arguments
from aegis.core.decision import Approval
from aegis.core.outcome import ApprovalOutcome
from aegis.core.result import Result, ResultStatus
from aegis.errors import ConfigurationError

try:
    from agents import (
        Agent,
        FunctionTool,
        Handoff,
        RunContextWrapper,
        RunState,
        ToolGuardrailFunctionOutput,
        ToolInputGuardrail,
        ToolInputGuardrailData,
        function_tool,
    )
except ImportError as exc:
    missing_extra("aegis.adapters.openai_agents", "openai-agents", exc)

__all__ = ["govern", "governed_tool", "resolve_interruptions"]

_FRAMEWORK = "openai-agents"
#: the attributes of a governed FunctionTool holding its Governor and action type
_MARK = "_aegis_governor"
_KIND = "_aegis_action_type"
#: the attribute of a governed Agent holding its Governor
_AGENT_MARK = "_aegis_governor"
#: the attribute of a governed Agent holding the governed tools its MCP servers listed
_MCP_TOOLS = "_aegis_mcp_tools"
#: the key of a run's dict context under which approval request ids travel
_CONTEXT_KEY = "aegis_approval_requests"

#: approvals settled by resolve_interruptions, by runtime and call id, until the call runs
_settled: weakref.WeakKeyDictionary[Any, dict[str, ApprovalOutcome]] = weakref.WeakKeyDictionary()
#: approval requests created when a run suspended, by runtime and call id
_requests: weakref.WeakKeyDictionary[Any, dict[str, str]] = weakref.WeakKeyDictionary()


def govern(
    agent_or_tools: Any,
    runtime: Any,
    *,
    target: str = _FRAMEWORK,
    on_block: OnBlock = "return",
    ungoverned: Collection[str] = (),
) -> Any:
    """Put every tool an agent's run can reach (or a list of tools) under ``runtime``.

    Args:
        agent_or_tools: an ``agents.Agent`` (returned, governed in place) or
            a list of tools (a new list is returned). Governing an agent
            governs everything its run can reach: its function tools, the
            agents it hands off to (``handoffs``, and any agent a custom
            ``Handoff`` returns when it runs), the agents behind its
            ``Agent.as_tool`` tools, and the tools of its ``mcp_servers``,
            each listed anew on every turn, recursively.
        runtime: the :class:`~aegis.runtime.engine.Runtime`.
        target: the action ``target`` of every call (the toolset's name).
        on_block: ``"return"`` answers a blocked call with the reason;
            ``"raise"`` stops the run (``ToolInputGuardrailTripwireTriggered``).
        ungoverned: names of tools Aegis cannot govern (hosted tools, which
            run on the model provider's side, and other tools that are not
            ``FunctionTool``) that you accept to leave ungoverned. Any other
            such tool is refused.

    The policy replaces any ``needs_approval`` the tools had. Tools added to
    a governed agent later (``agent.tools.append(...)``, a new list in
    ``agent.tools``, or the capability tools a ``SandboxAgent`` puts back
    while its tools are listed) are governed on the next turn, before the
    model sees them; one that cannot be governed stops the run with
    :class:`~aegis.errors.ConfigurationError`. A list of tools is governed
    as it is: tools added to the returned list later are not.

    Raises:
        ConfigurationError: a tool cannot be governed and is not in
            ``ungoverned``, or a tool is governed already by another runtime.
    """
    governor = Governor(runtime, target=target, framework=_FRAMEWORK, on_block=on_block)
    reach = _Reach(governor, frozenset(ungoverned))
    if isinstance(agent_or_tools, Agent):
        reach.agent(agent_or_tools)
        return agent_or_tools
    if isinstance(agent_or_tools, list | tuple):
        return [reach.tool(t) for t in agent_or_tools]
    raise ConfigurationError(
        f"govern() takes an agents.Agent or a list of tools, got {type(agent_or_tools).__name__}"
    )


class _Reach:
    """Governs everything one agent's run can reach, each agent once."""

    def __init__(self, governor: Governor, ungoverned: frozenset[str]) -> None:
        self.governor = governor
        self.ungoverned = ungoverned
        #: the governed copy of each tool governed so far, by the tool's id
        self.copies: dict[int, tuple[Any, Any]] = {}

    def agent(self, agent: Any) -> None:
        mark = getattr(agent, _AGENT_MARK, None)
        if mark is self.governor:
            return
        if mark is not None:
            raise ConfigurationError(
                f"agent {agent.name!r} is governed already by another govern()"
            )
        setattr(agent, _AGENT_MARK, self.governor)  # first: handoff cycles end here
        agent.tools = [self.tool(t) for t in agent.tools]
        agent.handoffs = [self.handoff(h) for h in agent.handoffs]
        self.mcp_tools(agent)  # also when none yet: servers added later are governed too
        self.later_tools(agent)
        self.clones(agent)

    def later_tools(self, agent: Any) -> None:
        # The SDK asks the agent for its tools on every turn: tools appended to
        # agent.tools after govern(), or a list put in its place, are governed
        # then, before the model can call them (or refused, as govern() refuses).
        listed = agent.get_all_tools

        async def get_all_tools(run_context: Any) -> list[Any]:
            self.own_tools(agent)
            tools = await listed(run_context)
            if all(self.governs(t) for t in tools):
                return tools  # type: ignore[no-any-return]
            # The agent put tools in place while listing them (a SandboxAgent
            # puts its capabilities' tools back in agent.tools on every turn):
            # they are governed before the model sees them.
            self.own_tools(agent)
            return [self.tool(t) for t in tools]

        agent.get_all_tools = get_all_tools

    def own_tools(self, agent: Any) -> None:
        """Govern ``agent.tools`` in place, each tool once."""
        tools = agent.tools
        if all(self.governs(t) for t in tools):
            return
        governed = [self.tool(t) for t in tools]
        if isinstance(tools, list):
            tools[:] = governed  # the caller's list too
        else:
            agent.tools = governed

    def governs(self, tool: Any) -> bool:
        """Whether ``tool`` is governed by this govern() already (or left out on purpose)."""
        if isinstance(tool, FunctionTool):
            return getattr(tool, _MARK, None) is self.governor
        return getattr(tool, "name", type(tool).__name__) in self.ungoverned

    def clones(self, agent: Any) -> None:
        # Agent.clone copies the dataclass fields only, not what govern() set on
        # the instance (the governed MCP listing, the mark): govern each clone.
        clone = agent.clone

        def governed_clone(**changes: Any) -> Any:
            copy_ = clone(**changes)
            self.agent(copy_)
            return copy_

        agent.clone = governed_clone

    def tool(self, tool: Any) -> Any:
        if isinstance(tool, FunctionTool):
            inner = getattr(tool, "_agent_instance", None)
            if getattr(tool, "_is_agent_tool", False) and isinstance(inner, Agent):
                self.agent(inner)  # the agent behind Agent.as_tool runs its own tools
            if getattr(tool, _MARK, None) is self.governor:
                return tool
            # The same tool, met again (listed anew on each turn): the same copy.
            known = self.copies.get(id(tool))
            if known is not None and known[0] is tool:
                return known[1]
            governed = _governed(tool, self.governor)
            self.copies[id(tool)] = (tool, governed)
            return governed
        name = getattr(tool, "name", type(tool).__name__)
        if name in self.ungoverned:
            return tool
        raise ConfigurationError(
            f"tool {name!r} is a {type(tool).__name__}, which Aegis cannot govern (it does not "
            "run through a FunctionTool's invocation); remove it, or name it in "
            "govern(..., ungoverned=[...]) to leave it ungoverned on purpose"
        )

    def handoff(self, handoff: Any) -> Any:
        if isinstance(handoff, Agent):
            self.agent(handoff)
            return handoff
        if not isinstance(handoff, Handoff):
            return handoff
        ref = getattr(handoff, "_agent_ref", None)
        target = ref() if callable(ref) else None
        if isinstance(target, Agent):
            self.agent(target)
        invoke = handoff.on_invoke_handoff

        async def governed_handoff(context: Any, arguments: str) -> Any:
            # A custom handoff may return any agent: it is governed before it runs.
            agent = await invoke(context, arguments)
            if isinstance(agent, Agent):
                self.agent(agent)
            return agent

        governed = copy.copy(handoff)
        governed.on_invoke_handoff = governed_handoff
        return governed

    def mcp_tools(self, agent: Any) -> None:
        listed = agent.get_mcp_tools

        async def get_mcp_tools(run_context: Any) -> list[Any]:
            tools = [self.tool(t) for t in await listed(run_context)]
            known = {t.name: t for t in tools if isinstance(t, FunctionTool)}
            setattr(agent, _MCP_TOOLS, {**getattr(agent, _MCP_TOOLS, {}), **known})
            return tools

        # Listed anew on each turn by the SDK: each listing is governed as it comes.
        agent.get_mcp_tools = get_mcp_tools


def governed_tool(
    *,
    runtime: Any,
    action_type: str | None = None,
    action_target: str = _FRAMEWORK,
    on_block: OnBlock = "return",
    **function_tool_options: Any,
) -> Callable[[Callable[..., Any]], FunctionTool]:
    """Decorate a function into a governed ``FunctionTool``.

    The call's action is ``Action(action_type or the tool's name,
    action_target, arguments)``; everything else is as with :func:`govern`.
    ``function_tool_options`` go to ``agents.function_tool``.

    Example::

        @governed_tool(runtime=runtime, action_type="refund", action_target="billing")
        def refund(order_id: str, amount: float) -> str:
            "Refund an order."
            ...
    """
    governor = Governor(runtime, target=action_target, framework=_FRAMEWORK, on_block=on_block)

    def decorate(fn: Callable[..., Any]) -> FunctionTool:
        tool = function_tool(fn, **function_tool_options)
        governed: FunctionTool = _governed(tool, governor, action_type=action_type)
        return governed

    return decorate


def _governed(tool: Any, governor: Governor, *, action_type: str | None = None) -> Any:
    """A governed copy of ``tool``; other kinds of tools are returned unchanged."""
    if not isinstance(tool, FunctionTool):
        return tool
    if getattr(tool, _MARK, None) is not None:
        raise ConfigurationError(f"tool {tool.name!r} is governed already")
    kind = action_type or tool.name
    description = tool.description or ""
    original = tool.on_invoke_tool
    governed: FunctionTool = copy.copy(tool)

    def call_of(arguments: str | None, call_id: str | None, agent: Any) -> ToolCall:
        args, unreadable = _read_arguments(arguments, tool)
        return ToolCall(
            kind,
            args,
            call_id=call_id,
            description=description,
            agent=getattr(agent, "name", None),
            unreadable=unreadable,
        )

    async def needs_approval(
        context: RunContextWrapper[Any], params: dict[str, Any], call_id: str
    ) -> bool:
        try:
            args = coerce_arguments(params, tool.params_json_schema)
        except UnreadableSchema:
            return False  # blocked and recorded by the guardrail, which runs next
        call = ToolCall(kind, args, call_id=call_id, description=description)
        decision = governor.decide(call)
        if decision.approval is not Approval.APPROVE:
            return False
        # The run suspends on this call: create the request now (if the
        # handler can), so that reviewers see it while nobody waits.
        pending = _requests.setdefault(governor.runtime, {})
        if call_id not in pending:
            request_id = await governor.submit(decision, call)
            if request_id is not None:
                pending[call_id] = request_id
                _remember(context, call_id, request_id)
        return True

    async def check(data: ToolInputGuardrailData) -> ToolGuardrailFunctionOutput:
        context = data.context
        call = call_of(context.tool_arguments, context.tool_call_id, data.agent)
        decision = governor.decide(call)
        answer = _settled.get(governor.runtime, {}).get(call.call_id or "")
        refused: Result | None = None
        if decision.approval is Approval.BLOCK:
            refused = await governor.run(call, never_run, None)
        elif (
            decision.approval is Approval.APPROVE
            and answer is not None
            and answer.digest != governor.digest(call)
        ):
            # Approved, but not these arguments: the runtime refuses and records it.
            _settled[governor.runtime].pop(call.call_id or "", None)
            refused = await governor.run(call, never_run, answer)
        if refused is None or refused.status is ResultStatus.SUCCESS:
            return ToolGuardrailFunctionOutput.allow()
        if refused.status is ResultStatus.BLOCKED and governor.on_block == "raise":
            return ToolGuardrailFunctionOutput.raise_exception(output_info=refused.error)
        return ToolGuardrailFunctionOutput.reject_content(
            governor.refusal(call, refused), output_info=refused.error
        )

    async def invoke(context: Any, arguments: str) -> Any:
        call = call_of(
            arguments, getattr(context, "tool_call_id", None), getattr(context, "agent", None)
        )
        answer = _settled.get(governor.runtime, {}).pop(call.call_id or "", None)

        async def execute(action: Action) -> Any:
            # Exactly the params the runtime decided, as the JSON the SDK passes.
            return await original(context, json.dumps(thaw(action.params)))

        result = await governor.run(call, execute, answer, reraise=True)
        _requests.get(governor.runtime, {}).pop(call.call_id or "", None)
        if result.status is ResultStatus.SUCCESS:
            return result.data
        return governor.refusal(call, result)

    governed.on_invoke_tool = invoke
    governed.needs_approval = needs_approval
    governed.tool_input_guardrails = [
        ToolInputGuardrail(guardrail_function=check, name="aegis_policy"),
        *(tool.tool_input_guardrails or ()),
    ]
    setattr(governed, _MARK, governor)
    setattr(governed, _KIND, kind)
    return governed


async def resolve_interruptions(result_or_state: Any, runtime: Any) -> RunState[Any, Any]:
    """Settle a suspended run's pending tool calls through Aegis; return the state to resume.

    For each pending call of a governed tool, the policy decides again: a
    call it now blocks is rejected (and recorded) with the reason; one it
    now lets through is approved, to be decided again when it runs; one that
    still needs approval goes to the runtime's approval handler (collecting
    the request created when the run suspended, when the handler can). A
    denial or a timeout rejects the call, recorded with the reason; a yes is
    bound to the digest of exactly these arguments. Calls of tools that are
    not governed are left for you to decide.

    Args:
        result_or_state: a ``RunResult`` with ``interruptions``, or a
            ``RunState`` (for instance from ``RunState.from_string``).
        runtime: the runtime the tools were governed with.

    Example::

        state = await RunState.from_string(agent, saved)
        result = await Runner.run(agent, await resolve_interruptions(state, runtime))
    """
    to_state = getattr(result_or_state, "to_state", None)
    state: RunState[Any, Any] = to_state() if callable(to_state) else result_or_state
    if not isinstance(state, RunState):
        raise ConfigurationError(
            f"resolve_interruptions() takes a RunResult or a RunState, got "
            f"{type(result_or_state).__name__}"
        )
    for item in state.get_interruptions():
        tool = _tool_of(item)
        governor: Governor | None = getattr(tool, _MARK, None)
        if governor is None:
            continue  # not ours to decide
        if governor.runtime is not runtime:
            raise ConfigurationError(
                f"tool {item.name!r} is governed by another Runtime than the one given"
            )
        await _settle(state, item, tool, governor)
    return state


async def _settle(state: RunState[Any, Any], item: Any, tool: Any, governor: Governor) -> None:
    args, unreadable = _read_arguments(item.arguments, tool)
    call = ToolCall(
        getattr(tool, _KIND, None) or str(item.name),
        args,
        call_id=item.call_id,
        description=tool.description or "",
        agent=getattr(item.agent, "name", None),
        unreadable=unreadable,
    )
    requests = _requests.setdefault(governor.runtime, {})
    request_id = requests.pop(call.call_id or "", None) or _recalled(state, call.call_id)
    settled = await governor.settle(call, request_id)
    if settled.refusal is not None:
        state.reject(item, rejection_message=settled.refusal)
        return
    if settled.approval is not None:
        _settled.setdefault(governor.runtime, {})[call.call_id or ""] = settled.approval
    state.approve(item)  # decided again, and recorded, when it runs


def _remember(context: RunContextWrapper[Any], call_id: str, request_id: str) -> None:
    """Keep the request id in the run's context, so that the saved state carries it.

    Only a context that is ``None`` or a plain dict can hold it; a run
    resumed elsewhere without it asks the service again (which re-attaches
    to the request while it is pending).
    """
    if context.context is None:
        context.context = {}
    if type(context.context) is dict:
        context.context.setdefault(_CONTEXT_KEY, {})[call_id] = request_id


def _recalled(state: RunState[Any, Any], call_id: str | None) -> str | None:
    wrapper = getattr(state, "_context", None)
    held = getattr(wrapper, "context", None)
    if not isinstance(held, dict) or call_id is None:
        return None
    found = (held.get(_CONTEXT_KEY) or {}).get(call_id)
    return found if isinstance(found, str) else None


def _tool_of(item: Any) -> Any:
    agent = getattr(item, "agent", None)
    for tool in getattr(agent, "tools", None) or ():
        if isinstance(tool, FunctionTool) and tool.name == item.name:
            return tool
    return (getattr(agent, _MCP_TOOLS, None) or {}).get(item.name)


def _arguments(arguments: str | None, tool: Any = None) -> dict[str, Any]:
    """The call's arguments as a mapping, coerced as the tool's schema types them.

    The SDK's function tools validate their JSON with Pydantic, which runs
    ``"yes"`` as ``True``: the action is the coerced values, and the tool
    gets exactly them. Text that is not a JSON object is kept as text.
    """
    if not arguments:
        return {}
    try:
        parsed = json.loads(arguments)
    except ValueError:
        return {"arguments": arguments}
    if not isinstance(parsed, dict):
        return {"arguments": parsed}
    return coerce_arguments(parsed, getattr(tool, "params_json_schema", None))


def _read_arguments(arguments: str | None, tool: Any) -> tuple[dict[str, Any], str | None]:
    """:func:`_arguments`, or the arguments as sent and why they cannot be decided.

    A tool whose schema cannot be read (a broken ``$ref``) leaves its call
    undecidable: the governor blocks and records it, and the model reads why.
    """
    try:
        return _arguments(arguments, tool), None
    except UnreadableSchema as exc:
        return _arguments(arguments), str(exc)
