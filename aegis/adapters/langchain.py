"""Govern LangChain and LangGraph tools: middleware for ``create_agent``, wrappers for ``ToolNode``.

One semantics whatever the framework (see :mod:`aegis.adapters._governance`):
a tool call becomes an Action (``type`` = tool name, ``target`` = the
toolset's name, ``params`` = the arguments, ``description`` = the tool's
description) and goes through :meth:`~aegis.runtime.engine.Runtime.run_one`
with the tool as its executor. ``auto`` runs and is recorded; ``block``
never runs and the model gets an error ``ToolMessage`` naming the rule and
the reason; ``approve`` runs only after a yes bound to exactly these
arguments.

- :class:`AegisMiddleware` for ``langchain.agents.create_agent``: after each
  model turn it collects the calls that need approval into one
  ``interrupt()`` (the payload a ``HumanInTheLoopMiddleware`` inbox reads,
  plus the Aegis request ids), so the run suspends on its checkpointer and
  no thread waits for the reviewer. :func:`resolve_interrupts` settles those
  requests through the runtime's approval handler (the remote service too)
  and resumes the run, in this process or another one. Each call is then
  decided again, in ``wrap_tool_call``, right before it runs: a call whose
  arguments differ from the approved ones is refused.
- :func:`govern_tools` wraps ``BaseTool`` objects for a plain LangGraph
  ``ToolNode`` or any other use; an ``approve`` call waits on the handler.
- :class:`AegisTool` and :class:`LangChainExecutor`, the names the most
  used governance package documents, for moving from it.

Example::

    agent = create_agent(
        model, tools=[lookup, refund],
        middleware=[AegisMiddleware(runtime, target="billing")],
        checkpointer=InMemorySaver(),
    )
    config = {"configurable": {"thread_id": "t1"}}
    state = await agent.ainvoke({"messages": [("user", "refund order 7")]}, config)
    if state.get("__interrupt__"):
        state = await resolve_interrupts(agent, config, runtime)

Size: one module per framework, as every integration is: the middleware for
create_agent, the ToolNode wrappers and the human-in-the-loop resume share the
framework's types and the Governor; split, each part would import the others.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from typing import Any

from aegis.adapters._governance import (
    Governor,
    OnBlock,
    ToolCall,
    missing_extra,
)
from aegis.adapters.base import BaseExecutor
from aegis.core.action import Action, action_digest, thaw
from aegis.core.decision import Approval, PolicyDecision
from aegis.core.outcome import ApprovalOutcome
from aegis.core.result import Result, ResultStatus
from aegis.errors import ConfigurationError

try:
    from langchain.agents.middleware import AgentMiddleware
    from langchain_core.messages import AIMessage, ToolMessage
    from langchain_core.tools import BaseTool
    from langgraph.errors import GraphInterrupt
    from langgraph.prebuilt.tool_node import ToolCallRequest
    from langgraph.types import Command, interrupt
    from pydantic import BaseModel, ConfigDict
except ImportError as exc:
    missing_extra("aegis.adapters.langchain", "langchain", exc)

__all__ = [
    "AegisMiddleware",
    "AegisTool",
    "LangChainExecutor",
    "govern_tools",
    "resolve_interrupts",
]

_FRAMEWORK = "langchain"
#: the interrupt payload key that marks an Aegis interrupt
_KEY = "aegis"


class _Answers:
    """Approval outcomes obtained by :func:`resolve_interrupts`, waiting for their run.

    The outcomes never travel through the resume value or the graph state:
    both can be written by whoever may resume the thread (an inbox UI, a
    LangGraph server's client), and an approval must not be forgeable. The
    resume value carries only an unguessable reference to an outcome held
    here, in the process that asked the approval handler and resumes the run.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_ref: dict[str, tuple[str | None, ApprovalOutcome, str]] = {}

    def keep(self, call_id: str | None, outcome: ApprovalOutcome, description: str) -> str:
        ref = secrets.token_hex(16)
        with self._lock:
            self._by_ref[ref] = (call_id, outcome, description)
        return ref

    def take(self, ref: object, call_id: str | None) -> tuple[ApprovalOutcome, str] | None:
        if not isinstance(ref, str):
            return None
        with self._lock:
            found = self._by_ref.pop(ref, None)
        if found is None or found[0] != call_id:
            return None
        return found[1], found[2]


_answers = _Answers()


class AegisMiddleware(AgentMiddleware[Any, Any, Any]):
    """Govern every tool call of a ``create_agent`` agent.

    Args:
        runtime: the :class:`~aegis.runtime.engine.Runtime` that decides,
            approves, executes and records.
        target: the action ``target`` of every call (the toolset's name).
        on_block: ``"return"`` answers a blocked call with an error
            ``ToolMessage``; ``"raise"`` raises
            :class:`~aegis.errors.ToolBlockedError` out of the run.
        agent: the agent name for the audit record (default: the name
            given to ``create_agent(name=...)``, if any).

    The agent needs a checkpointer: a call that needs approval suspends the
    run with ``interrupt()`` (its value is a ``HITLRequest`` with an extra
    ``"aegis"`` key); :func:`resolve_interrupts` resumes it. Without an
    interrupt answer (a plain ``{"type": "approve"}`` from another inbox),
    the runtime's approval handler still decides when the tool is about to
    run. ``edit`` answers are refused: only approved arguments run.
    """

    def __init__(
        self,
        runtime: Any,
        *,
        target: str = _FRAMEWORK,
        on_block: OnBlock = "return",
        agent: str | None = None,
    ) -> None:
        super().__init__()
        self.governor = Governor(
            runtime, target=target, framework=_FRAMEWORK, on_block=on_block, agent=agent
        )
        # Tool descriptions, learnt from the model requests: after_model only
        # sees the calls. A resumed run gets them back with the answers.
        self._descriptions: dict[str, str] = {}
        # The tools themselves, whose schemas read the calls' arguments.
        self._tools: dict[str, BaseTool] = {}
        # Settled answers by tool call id, from after_model to wrap_tool_call.
        self._settled: dict[str, tuple[ApprovalOutcome, str]] = {}
        self._lock = threading.Lock()
        # The tools as the middleware after this one gets them (see _with_args).
        self._guards = _Guards()

    # ------------------------------------------------------------ model turn

    def wrap_model_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        """Learn the tools' descriptions, then call the model unchanged."""
        self._learn(request)
        return handler(request)

    async def awrap_model_call(self, request: Any, handler: Callable[[Any], Awaitable[Any]]) -> Any:
        """Learn the tools' descriptions, then call the model unchanged."""
        self._learn(request)
        return await handler(request)

    def _learn(self, request: Any) -> None:
        for tool in getattr(request, "tools", None) or ():
            name = getattr(tool, "name", None)
            if isinstance(name, str):
                self._descriptions[name] = getattr(tool, "description", "") or ""
                if isinstance(tool, BaseTool):
                    self._tools[name] = tool

    def after_model(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        """Suspend the run for the calls of this turn that need approval."""
        pending = self._pending(state)
        if pending is None:
            return None
        payload = _payload(pending)
        try:
            answer = interrupt(payload)
        except GraphInterrupt:
            self.governor.call_sync(self._submit(pending, payload))
            raise
        self._settle(pending, answer)
        return None

    async def aafter_model(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        """Suspend the run for the calls of this turn that need approval."""
        pending = self._pending(state)
        if pending is None:
            return None
        payload = _payload(pending)
        try:
            answer = interrupt(payload)
        except GraphInterrupt:
            await self._submit(pending, payload)
            raise
        self._settle(pending, answer)
        return None

    def _pending(self, state: Any) -> list[tuple[ToolCall, PolicyDecision]] | None:
        messages = state.get("messages") or []
        last = next((m for m in reversed(messages) if isinstance(m, AIMessage)), None)
        if last is None or not last.tool_calls:
            return None
        answered = {
            m.tool_call_id
            for m in messages[messages.index(last) + 1 :]
            if isinstance(m, ToolMessage)
        }
        pending = []
        for tool_call in last.tool_calls:
            if tool_call.get("id") in answered:
                continue
            call = self._call(tool_call, self._descriptions.get(tool_call["name"], ""))
            decision = self.governor.decide(call)
            if decision.approval is Approval.APPROVE:
                pending.append((call, decision))
        return pending or None

    def _call(
        self,
        tool_call: Mapping[str, Any],
        description: str,
        config: object = None,
        tool: Any = None,
    ) -> ToolCall:
        return self._read(tool_call, description, config, tool)[0]

    def _read(
        self,
        tool_call: Mapping[str, Any],
        description: str,
        config: object = None,
        tool: Any = None,
    ) -> tuple[ToolCall, _ToolArgs]:
        args = tool_call.get("args")
        name = str(tool_call.get("name"))
        if tool is None:
            tool = self._tools.get(name)
        read = _ToolArgs(tool, args if isinstance(args, Mapping) else {}, tool_call.get("id"))
        call = ToolCall(
            name,
            read.decided,
            call_id=tool_call.get("id"),
            description=description,
            agent=self.governor.agent or _agent_name(config),
        )
        return call, read

    async def _submit(
        self, pending: list[tuple[ToolCall, PolicyDecision]], payload: dict[str, Any]
    ) -> None:
        # The run is suspending: create the approval requests now, so that
        # reviewers see them at once, and put their ids in the interrupt value
        # (the same dict the interrupt holds; nothing is saved before we return).
        for (call, decision), request in zip(pending, payload[_KEY]["requests"], strict=True):
            request["request_id"] = await self.governor.submit(decision, call)

    def _settle(self, pending: list[tuple[ToolCall, PolicyDecision]], answer: object) -> None:
        decisions = answer.get("decisions") if isinstance(answer, Mapping) else None
        if not isinstance(decisions, list) or len(decisions) != len(pending):
            raise ConfigurationError(
                f"the answer to an Aegis interrupt must be {{'decisions': [...]}} with one "
                f"decision per action request ({len(pending)}), got {_short(answer)}; use "
                "aegis.adapters.langchain.resolve_interrupts(agent, config, runtime)"
            )
        for (call, _), decision in zip(pending, decisions, strict=True):
            settled = _settled_answer(call, decision, self.governor)
            if settled is not None and call.call_id is not None:
                with self._lock:
                    self._settled[call.call_id] = settled

    # ------------------------------------------------------------ tool calls

    def wrap_tool_call(self, request: ToolCallRequest, handler: Callable[..., Any]) -> Any:
        """Decide the call again and run it through the runtime, or answer with an error."""
        call, read, answer = self._tool_call(request)
        box: list[Any] = []
        execute = _tool_executor(request, handler, box, read, self._guards)
        result = self.governor.run_sync(call, execute, answer, reraise=True)
        return self._reply(call, request, result, box)

    async def awrap_tool_call(self, request: ToolCallRequest, handler: Callable[..., Any]) -> Any:
        """Decide the call again and run it through the runtime, or answer with an error."""
        call, read, answer = self._tool_call(request)
        box: list[Any] = []
        execute = _async_tool_executor(request, handler, box, read, self._guards)
        result = await self.governor.run(call, execute, answer, reraise=True)
        return self._reply(call, request, result, box)

    def _tool_call(
        self, request: ToolCallRequest
    ) -> tuple[ToolCall, _ToolArgs, ApprovalOutcome | None]:
        tool_call = request.tool_call
        with self._lock:
            settled = self._settled.pop(str(tool_call.get("id")), None)
        config = getattr(request.runtime, "config", None)
        tool = request.tool
        if settled is not None:
            outcome, description = settled
            return (*self._read(tool_call, description, config, tool), outcome)
        description = getattr(tool, "description", "") if tool is not None else ""
        return (*self._read(tool_call, description or "", config, tool), None)

    def _reply(
        self, call: ToolCall, request: ToolCallRequest, result: Result, box: list[Any]
    ) -> Any:
        if result.status is ResultStatus.SUCCESS and box:
            return box[0]
        if result.status is ResultStatus.FAILED and box:
            return box[0]  # the tool node's own error message
        return ToolMessage(
            content=self.governor.refusal(call, result),
            name=call.name,
            tool_call_id=request.tool_call.get("id") or "",
            status="error",
        )


class _ToolArgs:
    """A tool's arguments as the tool will receive them: what is decided, and how it is handed over.

    Where the tool's ``args_schema`` is a Pydantic model, the model's
    arguments are validated and coerced with it first (aliases resolved to
    field names, ``"5"`` to ``5`` for an ``int``, defaults filled in, extra
    fields a permissive schema keeps kept): the action's params are those
    values, by field name, and the tool gets exactly them back (under the
    names its schema reads). Arguments the tool node injects (state, store,
    the call id) are not the model's: they reach the tool but are not part
    of the action. Without a Pydantic schema, or when the arguments do not
    validate, every argument but the injected ones is the action.
    """

    __slots__ = ("aliases", "decided", "injected")

    def __init__(self, tool: Any, args: Mapping[str, Any], call_id: object = None) -> None:
        keys = getattr(tool, "_injected_args_keys", ()) if tool is not None else ()
        injected = frozenset(keys) if isinstance(keys, frozenset | set | tuple | list) else ()
        self.injected = {k: v for k, v in args.items() if k in injected}
        self.aliases: dict[str, str] = {}
        plain = {k: v for k, v in args.items() if k not in injected}
        self.decided: dict[str, Any] = plain
        schema = getattr(tool, "args_schema", None)
        if not (isinstance(schema, type) and issubclass(schema, BaseModel)):
            return
        fields = schema.model_fields
        values = dict(args)
        for name in injected:
            if name not in values and name in fields and isinstance(call_id, str):
                values[name] = call_id  # an injected call id, as the tool will get it
        try:
            model = schema.model_validate(values)
        except ValueError:
            return  # the tool refuses these arguments itself, as they were decided
        try:
            dumped = model.model_dump(mode="json", exclude=set(injected))
        except ValueError:
            return
        self.decided = dumped
        for name, info in fields.items():
            alias = info.validation_alias if isinstance(info.validation_alias, str) else info.alias
            if alias and alias != name and not schema.model_config.get("populate_by_name"):
                self.aliases[name] = alias

    def for_tool(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The tool's input for the decided ``params``: under its schema's names, plus injected."""
        aliases = self.aliases
        return {**{aliases.get(k, k): v for k, v in params.items()}, **self.injected}


def _agent_name(config: object) -> str | None:
    """The name ``create_agent(name=...)`` gave the agent, from the run's config."""
    metadata = config.get("metadata") if isinstance(config, Mapping) else None
    name = metadata.get("lc_agent_name") if isinstance(metadata, Mapping) else None
    return name if isinstance(name, str) else None


def _tool_executor(
    request: ToolCallRequest,
    handler: Callable[..., Any],
    box: list[Any],
    read: _ToolArgs,
    guards: _Guards,
) -> Callable[[Action], Any]:
    def execute(action: Action) -> Any:
        decided, ticket = _with_args(request, action, read, guards)
        token = _ticket.set(ticket)
        try:
            out = handler(decided)
        finally:
            _ticket.reset(token)
        box.append(out)
        return _outcome(action, out)

    return execute


def _async_tool_executor(
    request: ToolCallRequest,
    handler: Callable[..., Any],
    box: list[Any],
    read: _ToolArgs,
    guards: _Guards,
) -> Callable[[Action], Any]:
    async def execute(action: Action) -> Any:
        decided, ticket = _with_args(request, action, read, guards)
        token = _ticket.set(ticket)
        try:
            out = await handler(decided)
        finally:
            _ticket.reset(token)
        box.append(out)
        return _outcome(action, out)

    return execute


def _with_args(
    request: ToolCallRequest, action: Action, read: _ToolArgs, guards: _Guards
) -> tuple[ToolCallRequest, _Ticket]:
    # The tool runs with the params of the action the runtime decided (the
    # call's arguments as the tool's schema reads them), handed over under the
    # names the schema reads: never a copy read back from elsewhere.
    args = read.for_tool(thaw(action.params))
    tool_call = {**request.tool_call, "args": args}
    # What goes down the middleware chain holds the agent's tools only as
    # guards: a middleware after this one that rewrites the call (the edit of
    # a HumanInTheLoopMiddleware, a redirect to another tool) or runs it again
    # reaches a guard that refuses it.
    overrides: dict[str, Any] = {"tool_call": tool_call}
    if isinstance(request.tool, BaseTool):
        overrides["tool"] = guards.guard(request.tool)
    runtime = request.runtime
    if dataclasses.is_dataclass(runtime) and isinstance(getattr(runtime, "tools", None), list):
        overrides["runtime"] = dataclasses.replace(
            runtime,
            tools=[guards.guard(t) if isinstance(t, BaseTool) else t for t in runtime.tools],
        )
    return request.override(**overrides), _Ticket(tool_call)


class _Ticket:
    """The one call Aegis let through, for the guards: it may run once, as decided."""

    __slots__ = ("args", "call_id", "name", "used")

    def __init__(self, tool_call: Mapping[str, Any]) -> None:
        self.name = tool_call.get("name")
        self.call_id = tool_call.get("id")
        self.args: Mapping[str, Any] = tool_call.get("args") or {}
        self.used = False

    def refusal(self, tool: _Guard, input: Any) -> str | None:
        """Why ``tool`` may not run with ``input``, or None (and the ticket is spent)."""
        if not (isinstance(input, Mapping) and input.get("type") == "tool_call"):
            return "it was called directly, not as the tool call Aegis decided"
        if input.get("name") != self.name or tool.name != self.name:
            return f"Aegis decided a call of {self.name!r}, not of this tool"
        if self.used:
            return "it ran already for this decision (a middleware after Aegis ran it again)"
        if input.get("id") != self.call_id or not _same_args(tool, input.get("args"), self.args):
            return "its arguments are not the decided ones (a middleware after Aegis changed them)"
        self.used = True
        return None


def _same_args(tool: _Guard, given: object, decided: Mapping[str, Any]) -> bool:
    """Whether ``given`` is ``decided`` plus only what the tool node injects (state, runtime)."""
    if not isinstance(given, Mapping):
        return False
    hidden = tool.hidden
    if any(given.get(k, _MISSING) != v for k, v in decided.items() if k not in hidden):
        return False
    return all(k in decided or k in hidden for k in given)


_MISSING = object()


def _hidden_keys(tool: BaseTool) -> frozenset[str]:
    """The arguments of ``tool`` the model does not give: the tool node injects them."""
    try:
        schema = tool.tool_call_schema
        shown = schema if isinstance(schema, dict) else schema.model_json_schema()  # type: ignore[union-attr]
        visible = set(shown.get("properties") or {})
        every = set(tool.args)
    except Exception:  # a schema that cannot be read: nothing is taken as injected
        return frozenset()
    injected: frozenset[str] = frozenset(getattr(tool, "_injected_args_keys", ()))
    return frozenset(every - visible) | injected


#: the call the guards may run now, in this thread or task (None: none)
_ticket: ContextVar[_Ticket | None] = ContextVar("aegis_langchain_ticket", default=None)


class _Guards:
    """One guard per tool of an agent, made once and kept."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_id: dict[int, tuple[BaseTool, _Guard]] = {}

    def guard(self, tool: BaseTool) -> BaseTool:
        if isinstance(tool, _Guard):
            return tool
        with self._lock:
            found = self._by_id.get(id(tool))
            if found is None or found[0] is not tool:
                found = (tool, _Guard.of(tool))
                self._by_id[id(tool)] = found
            return found[1]


class _Guard(BaseTool):
    """An agent's tool as the middlewares after Aegis get it: it runs only the decided call."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    inner: BaseTool
    """The tool that runs for the decided call."""
    hidden: frozenset[str]
    """The inner tool's arguments that the tool node injects, not the model."""

    @classmethod
    def of(cls, tool: BaseTool) -> _Guard:
        return cls(
            name=tool.name,
            description=tool.description,
            args_schema=tool.args_schema,
            return_direct=tool.return_direct,
            response_format=tool.response_format,
            inner=tool,
            hidden=_hidden_keys(tool),
        )

    def _run(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("a guarded tool runs through invoke() and ainvoke()")

    def _refused(self, input: Any) -> Any:
        ticket = _ticket.get()
        why = (
            "no call decided by Aegis is running" if ticket is None else ticket.refusal(self, input)
        )
        if why is None:
            return None
        text = f"refused by Aegis: tool {self.name} was not run: {why}"
        if isinstance(input, Mapping) and input.get("type") == "tool_call":
            return ToolMessage(
                content=text, name=self.name, tool_call_id=input.get("id") or "", status="error"
            )
        raise ConfigurationError(text)

    def invoke(self, input: Any, config: Any = None, **kwargs: Any) -> Any:
        """Run the inner tool if this is the call Aegis decided, once; else refuse."""
        refused = self._refused(input)
        if refused is not None:
            return refused
        return self.inner.invoke(input, config, **kwargs)

    async def ainvoke(self, input: Any, config: Any = None, **kwargs: Any) -> Any:
        """Run the inner tool if this is the call Aegis decided, once; else refuse."""
        refused = self._refused(input)
        if refused is not None:
            return refused
        return await self.inner.ainvoke(input, config, **kwargs)


def _outcome(action: Action, out: Any) -> Result:
    """What the audit records about a tool node's answer."""
    if isinstance(out, ToolMessage):
        if out.status == "error":
            return Result(action, ResultStatus.FAILED, error=_content(out.content))
        return Result(action, ResultStatus.SUCCESS, data=_content(out.content))
    return Result(action, ResultStatus.SUCCESS, data=type(out).__name__)


def _content(content: Any) -> str:
    return content if isinstance(content, str) else json.dumps(content, default=str)


def _payload(pending: list[tuple[ToolCall, PolicyDecision]]) -> dict[str, Any]:
    """The interrupt value: a ``HITLRequest`` plus the Aegis requests."""
    action_requests = []
    review_configs = []
    requests = []
    for call, decision in pending:
        args = thaw(decision.action.params)
        why = f"Aegis policy rule {decision.matched_rule!r} (risk {decision.risk_level.name})"
        text = (
            f"{why} requires approval.\n\nTool: {call.name}\nArgs: {json.dumps(args, default=str)}"
        )
        if call.description:
            text += f"\n\n{call.description}"
        action_requests.append({"name": call.name, "args": args, "description": text})
        review_configs.append(
            {"action_name": call.name, "allowed_decisions": ["approve", "reject"]}
        )
        requests.append(
            {
                "tool_call_id": call.call_id,
                "request_id": None,
                "digest": action_digest(decision.action),
                "risk_level": decision.risk_level.name,
                "matched_rule": decision.matched_rule,
                "reason": decision.reason,
                "action": {
                    "type": decision.action.type,
                    "target": decision.action.target,
                    "params": args,
                    "description": decision.action.description,
                },
            }
        )
    return {
        "action_requests": action_requests,
        "review_configs": review_configs,
        _KEY: {"version": 1, "requests": requests},
    }


def _settled_answer(
    call: ToolCall, decision: object, governor: Governor
) -> tuple[ApprovalOutcome, str] | None:
    """The outcome of one answer and the action's description, or None to ask at run time.

    Only an answer made by :func:`resolve_interrupts` in this process (its
    reference found in :data:`_answers`) carries an approval; any other
    ``approve`` leaves the decision to the approval handler when the tool is
    about to run. A rejection needs no proof; an edit is refused.
    """
    digest = governor.digest(call)
    if not isinstance(decision, Mapping):
        return ApprovalOutcome(False, reason=f"malformed decision: {_short(decision)}"), ""
    kind = decision.get("type")
    aegis = decision.get(_KEY)
    ours = _answers.take(aegis.get("ref"), call.call_id) if isinstance(aegis, Mapping) else None
    if kind == "approve":
        return ours  # None: another inbox said yes; the approval handler still decides
    if kind in ("reject", "respond"):
        if ours is not None and ours[0].approved is not True:
            return ours
        message = decision.get("message")
        reason = message if isinstance(message, str) and message else "rejected by the reviewer"
        return ApprovalOutcome(False, reason=reason, digest=digest), call.description
    if kind == "edit":
        reason = (
            "the reviewer edited the arguments; Aegis runs only arguments approved as they "
            "are (deny this call and let the model call again)"
        )
        return ApprovalOutcome(False, reason=reason, digest=digest), call.description
    return (
        ApprovalOutcome(False, reason=f"unknown decision type {kind!r}", digest=digest),
        call.description,
    )


def _short(value: object) -> str:
    text = json.dumps(value, default=repr) if not isinstance(value, str) else value
    return text if len(text) <= 200 else text[:197] + "..."


# ---------------------------------------------------------------- resuming


async def resolve_interrupts(agent: Any, config: Mapping[str, Any], runtime: Any) -> Any:
    """Settle a suspended run's Aegis approvals through the runtime, then resume it.

    For each call the run is waiting on, the policy decides again: a call it
    now blocks is rejected with the reason; one it now lets through runs
    when the run resumes; one that still needs approval is put to the
    runtime's approval handler (collecting the request created when the run
    suspended, when the handler can). Each answer is bound to the digest of
    the action the reviewer saw. Then the run resumes with
    ``Command(resume=...)`` and this returns what ``agent.ainvoke`` returns;
    if it suspends again, call this again.

    Works in any process that has the agent with the same checkpointer.

    Raises:
        ConfigurationError: the run is not waiting on an Aegis interrupt.
    """
    snapshot = await agent.aget_state(config)
    ours = [i for i in snapshot.interrupts if isinstance(i.value, Mapping) and _KEY in i.value]
    if not ours:
        raise ConfigurationError(
            "this run is not suspended on an Aegis approval (no interrupt with an 'aegis' "
            "key); check the thread_id in config"
        )
    answers: dict[str, Any] = {}
    for pending in ours:
        requests = pending.value[_KEY].get("requests") or []
        decisions = [await _decide(runtime, request) for request in requests]
        answers[pending.id] = {"decisions": decisions}
    resume: Any = answers if len(answers) > 1 else next(iter(answers.values()))
    return await agent.ainvoke(Command(resume=resume), config)


async def _decide(runtime: Any, request: Mapping[str, Any]) -> dict[str, Any]:
    """One HITL decision for one suspended call, with a reference to its Aegis outcome."""
    raw = request.get("action") or {}
    call_id = request.get("tool_call_id")
    call = ToolCall(
        str(raw.get("type")),
        dict(raw.get("params") or {}),
        call_id=call_id if isinstance(call_id, str) else None,
        description=str(raw.get("description") or ""),
    )
    governor = Governor(runtime, target=str(raw.get("target")), framework=_FRAMEWORK)
    decision = governor.decide(call)  # a call that cannot be decided is blocked
    if decision.approval is Approval.BLOCK:
        return {"type": "reject", "message": runtime.block(decision).error}
    if decision.approval is Approval.AUTO:
        return {"type": "approve"}  # nothing to approve; decided again when it runs
    request_id = request.get("request_id")
    outcome = await governor.collect(request_id if isinstance(request_id, str) else None, decision)
    ref = _answers.keep(call.call_id, outcome, call.description)
    answer: dict[str, Any] = {
        "type": "approve" if outcome.approved is True else "reject",
        _KEY: {"ref": ref},
    }
    if outcome.approved is not True:
        answer["message"] = outcome.human_decision()
    return answer


# ---------------------------------------------------------------- plain tools


class _GovernedBase(BaseTool):
    """A BaseTool whose calls run through a Governor."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    governor: Any
    """The Governor of the calls."""

    def _execute(
        self, args: dict[str, Any], tool_call: Mapping[str, Any] | None, config: Any
    ) -> Any:
        raise NotImplementedError

    async def _aexecute(
        self, args: dict[str, Any], tool_call: Mapping[str, Any] | None, config: Any
    ) -> Any:
        raise NotImplementedError

    def _run(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("governed tools run through invoke() and ainvoke()")

    def _parse(self, input: Any) -> tuple[ToolCall, Mapping[str, Any] | None, _ToolArgs]:
        tool_call = (
            input if isinstance(input, Mapping) and input.get("type") == "tool_call" else None
        )
        if tool_call is not None:
            args = dict(tool_call.get("args") or {})
        elif isinstance(input, Mapping):
            args = dict(input)
        elif isinstance(input, str):
            args = {"input": input}
        else:
            raise ConfigurationError(
                f"tool {self.name!r} takes a mapping of arguments or a ToolCall, got "
                f"{type(input).__name__}"
            )
        read = self._read_args(args, tool_call.get("id") if tool_call else None)
        call = ToolCall(
            self.name,
            read.decided,
            call_id=tool_call.get("id") if tool_call else None,
            description=self.description or "",
            agent=self.governor.agent,
        )
        return call, tool_call, read

    def _read_args(self, args: dict[str, Any], call_id: object) -> _ToolArgs:
        return _ToolArgs(None, args)

    def _reply(
        self, call: ToolCall, tool_call: Mapping[str, Any] | None, result: Result, out: list[Any]
    ) -> Any:
        if result.status is not ResultStatus.SUCCESS or not out:
            text = self.governor.refusal(call, result)
            if tool_call is None:
                return text
            return ToolMessage(
                content=text, name=self.name, tool_call_id=tool_call.get("id") or "", status="error"
            )
        value = out[0]
        if tool_call is not None and not isinstance(value, ToolMessage | Command):
            return ToolMessage(
                content=_content(value), name=self.name, tool_call_id=tool_call.get("id") or ""
            )
        return value

    def invoke(self, input: Any, config: Any = None, **kwargs: Any) -> Any:
        """Run the call through the runtime (from synchronous code)."""
        call, tool_call, args = self._parse(input)
        out: list[Any] = []

        def execute(action: Action) -> Any:
            value = self._execute(args.for_tool(thaw(action.params)), tool_call, config)
            out.append(value)
            return _outcome(action, value) if isinstance(value, ToolMessage) else value

        result = self.governor.run_sync(call, execute, reraise=True)
        return self._reply(call, tool_call, result, out)

    async def ainvoke(self, input: Any, config: Any = None, **kwargs: Any) -> Any:
        """Run the call through the runtime."""
        call, tool_call, args = self._parse(input)
        out: list[Any] = []

        async def execute(action: Action) -> Any:
            value = await self._aexecute(args.for_tool(thaw(action.params)), tool_call, config)
            out.append(value)
            return _outcome(action, value) if isinstance(value, ToolMessage) else value

        result = await self.governor.run(call, execute, reraise=True)
        return self._reply(call, tool_call, result, out)


class _GovernedTool(_GovernedBase):
    """Another BaseTool, governed: :func:`govern_tools` makes these."""

    inner: BaseTool
    """The tool that runs when the runtime allows it."""

    def _read_args(self, args: dict[str, Any], call_id: object) -> _ToolArgs:
        # Every argument the tool receives is part of the decided action.
        return _ToolArgs(self.inner, args, call_id)

    def _input(self, args: dict[str, Any], tool_call: Mapping[str, Any] | None) -> Any:
        return {**tool_call, "args": args} if tool_call is not None else args

    def _execute(
        self, args: dict[str, Any], tool_call: Mapping[str, Any] | None, config: Any
    ) -> Any:
        return self.inner.invoke(self._input(args, tool_call), config)

    async def _aexecute(
        self, args: dict[str, Any], tool_call: Mapping[str, Any] | None, config: Any
    ) -> Any:
        return await self.inner.ainvoke(self._input(args, tool_call), config)


def govern_tools(
    tools: Sequence[BaseTool],
    runtime: Any,
    *,
    target: str = _FRAMEWORK,
    on_block: OnBlock = "return",
    agent: str | None = None,
) -> list[BaseTool]:
    """Wrap LangChain tools so that every call goes through ``runtime``.

    For a plain LangGraph ``ToolNode`` or any direct use. The wrapped tools
    keep their names, descriptions and argument schemas. A call given as a
    ``ToolCall`` gets a ``ToolMessage`` back (an error one when it did not
    run); plain arguments get the tool's value, or the refusal text. An
    ``approve`` call waits on the runtime's approval handler; use
    :class:`AegisMiddleware` to suspend the run instead.

    Only the tools given are governed: a tool added to the returned list
    later is not (wrap it with ``govern_tools`` too). :class:`AegisMiddleware`
    governs every call of its agent, whatever tool it names.

    Example::

        node = ToolNode(govern_tools([lookup, refund], runtime, target="billing"))
    """
    governor = Governor(
        runtime, target=target, framework=_FRAMEWORK, on_block=on_block, agent=agent
    )
    wrapped: list[BaseTool] = []
    for tool in tools:
        if not isinstance(tool, BaseTool):
            raise ConfigurationError(
                f"govern_tools() takes LangChain BaseTools, got {type(tool).__name__}; "
                "make one with langchain_core.tools.tool"
            )
        wrapped.append(
            _GovernedTool(
                name=tool.name,
                description=tool.description,
                args_schema=tool.args_schema,
                return_direct=tool.return_direct,
                inner=tool,
                governor=governor,
            )
        )
    return wrapped


class _AnyArgs(BaseModel):
    """Any arguments: the action's params."""

    model_config = ConfigDict(extra="allow")


class AegisTool(_GovernedBase):
    """A LangChain tool that asks the runtime to carry out one kind of action.

    The runtime's own executor does the work: a call becomes
    ``Action(action_type, action_target, arguments, description)`` and goes
    through ``runtime.run_one``. Build it with :meth:`from_runtime`.
    """

    action_type: str
    action_target: str

    @classmethod
    def from_runtime(
        cls,
        *,
        runtime: Any,
        name: str,
        description: str,
        action_type: str,
        action_target: str,
        on_block: OnBlock = "return",
    ) -> AegisTool:
        """A tool named ``name`` running ``action_type`` on ``action_target`` through ``runtime``.

        Example::

            tool = AegisTool.from_runtime(runtime=rt, name="refund", description="Refund an order",
                                          action_type="refund", action_target="billing")
        """
        governor = Governor(runtime, target=action_target, framework=_FRAMEWORK, on_block=on_block)
        return cls(
            name=name,
            description=description,
            args_schema=_AnyArgs,
            governor=governor,
            action_type=action_type,
            action_target=action_target,
        )

    def _parse(self, input: Any) -> tuple[ToolCall, Mapping[str, Any] | None, _ToolArgs]:
        call, tool_call, args = super()._parse(input)
        call = ToolCall(self.action_type, call.args, call.call_id, call.description, call.agent)
        return call, tool_call, args

    def invoke(self, input: Any, config: Any = None, **kwargs: Any) -> Any:
        """Run the action through the runtime and its executor (from synchronous code)."""
        call, tool_call, _ = self._parse(input)
        result = self.governor.call_sync(self.governor.run(call, None))
        return self._reply(call, tool_call, result, [result.data])

    async def ainvoke(self, input: Any, config: Any = None, **kwargs: Any) -> Any:
        """Run the action through the runtime and its executor."""
        call, tool_call, _ = self._parse(input)
        result = await self.governor.run(call, None)
        return self._reply(call, tool_call, result, [result.data])


class LangChainExecutor(BaseExecutor):
    """An executor that runs LangChain tools: ``action.type`` names the tool.

    Example::

        runtime = Runtime(executor=LangChainExecutor(tools=[lookup, refund]), policy=policy)
    """

    def __init__(self, tools: Sequence[BaseTool]) -> None:
        self.tools: dict[str, BaseTool] = {}
        for tool in tools:
            if not isinstance(tool, BaseTool):
                raise ConfigurationError(
                    f"LangChainExecutor takes LangChain BaseTools, got {type(tool).__name__}"
                )
            self.tools[tool.name] = tool

    async def execute(self, action: Action) -> Result:
        """Run the tool named ``action.type`` with ``action.params``."""
        tool = self.tools.get(action.type)
        if tool is None:
            known = ", ".join(sorted(self.tools)) or "none"
            return Result(
                action,
                ResultStatus.FAILED,
                error=f"no LangChain tool named {action.type!r} (tools: {known})",
            )
        data = await tool.ainvoke(thaw(action.params))
        return Result(action, ResultStatus.SUCCESS, data=data)
