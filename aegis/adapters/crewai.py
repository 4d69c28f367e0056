"""Govern the tools of a CrewAI crew, agent or tool list.

:func:`govern` registers a pair of CrewAI tool-call hooks (the framework's
own ``before_tool_call`` / ``after_tool_call`` interception points) scoped
to what it is given, with one semantics (see
:mod:`aegis.adapters._governance`):

- a call the policy lets through runs, with exactly the decided arguments
  (the hook sets CrewAI's tool input to them), and is recorded with the
  tool's result, the tool call id and the agent's role. The arguments are
  decided as the tool's schema reads them (CrewAI validates and coerces
  them so before a run: ``"7"`` for an ``int`` is decided as ``7``, a
  field's default is filled in), so what was decided is what runs;
- a call it blocks never runs: the agent reads the rule and the reason as
  the tool's result;
- a call that needs approval waits for the runtime's approval handler (up
  to its ``approval_timeout``) and runs only after a yes, with exactly the
  approved arguments. CrewAI has no way to suspend a crew for a reviewer.

CrewAI lets a hook that raises pass the call (it fails open); these hooks
never raise: anything unexpected blocks the call and is recorded.

A call covered by several govern() calls (a crew and one of its agents, or
a crew and a list of its tools) is decided once, by the first of them that
was made: one decision, one approval asked, one record. When they differ
in runtime or target, which decision holds is ambiguous: the call is
blocked, recorded by the first (rule ``<aegis>``), and does not run.

The record says what really happened. CrewAI turns a tool's exception, and
its own refusals (arguments its validation rejects, a usage limit reached,
a ReAct call repeated word for word), into the text the model reads, and
the after-hook sees only that text. So each governed tool's functions are
watched (:mod:`aegis.adapters._crewai_guard`; wrapped once, re-raising
whatever they raise): a call is recorded as a success only when the
function returned for it; as failed with the error when it raised; and as
failed with CrewAI's text, or with Aegis's refusal, when it never ran.

A governed tool runs exactly the call Aegis decided, once, with exactly
the decided arguments; any other run raises without running. While
govern() covers a tool, its functions (``func``, ``_run``, ``_arun``) run
only for a call the hooks let through, in that call's own context (the
thread, asyncio task or copied context in which CrewAI runs the hook and
then the tool), with exactly the decided arguments as the function
receives them, and once: CrewAI's ReAct paths run a tool that raised again
under the same hook call (up to six runs), and those runs are refused, so
the record's outcome is that of the one run; the model may call the tool
again, as a new call. Refused, with an error and nothing run: a run
without CrewAI's tool-call hooks (the tool called directly: ``run``,
``arun``, a structured tool's ``invoke``; or a CrewAI path that skips the
hooks, such as its LangGraph and OpenAI Agents agent adapters); a run from
another thread or task while a call is open; a run with arguments other
than the decided ones (a later hook changing them, say), which the call's
record names as refused; a run through the hooks by an agent that govern()
does not cover, when it shares a covered tool object. A structured tool
made before govern() and a copy of a tool (``model_copy``, ``copy.copy``)
are watched too: the copy runs its own state, and is covered by the
govern() calls that cover the original. After ungovern() of everything
that covers it, a tool runs as before.

A run refused because no decision covers it is recorded as blocked, with
the arguments it was run with, by the first govern() call covering the
tool (rule ``<aegis>``); it did not run. A function set on a governed
tool (``tool.func = other``) is watched as it is set. A task or thread a
tool's run starts does not inherit its right to run: run with other
arguments, or after the run, it is refused and recorded as blocked. A
method bound before govern() (``tool._run``) is guarded too: from this
module's import on, every tool class's own ``_run`` and ``_arun`` are
(process-wide; for tools nothing covers the guard only passes the call
on). Still not covered: a method bound before this module was imported,
and the plain function given to ``@tool`` (or a ``func`` read before
govern()), which code holding it runs as any Python function. Keep
governed tools out of reach of other code.

An answer from CrewAI's tool cache (a call repeated with the same
arguments, with the crew's or agent's ``cache`` on) is decided like any
call, since the decision comes first (a blocked call never reads the
cache), but the tool does not run: it is recorded as failed, with the
error saying CrewAI answered from its cache and the cached value as its
data, so that the trail never counts it as a run of the tool.

CrewAI's other limits come after the decision too: a call past a tool's
``max_usage_count`` is decided (and asked about, if the policy says so)
before CrewAI refuses to run it, and is recorded as failed, not run. On
CrewAI's native path a blocked call to a ``result_as_answer`` tool ends the
task with the refusal as its answer (that path takes a blocked call's text
as the tool's result); nothing ran, and the record says blocked.

Size: the hooks, govern() and the following of lists, agents and tasks
that keeps a tool covered as it reaches a governed agent by any of them
share the registry of govern() calls; apart, each would reach into it.

Example::

    crew = govern(Crew(agents=[support], tasks=[refund_task]), runtime, target="billing")
    crew.kickoff()
    ungovern(crew)  # when done: CrewAI's hooks are process-wide
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
import weakref
from collections.abc import Iterable, Sequence
from types import FrameType
from typing import Any

from aegis.adapters._governance import Governor, OnBlock, ToolCall, _portal, missing_extra
from aegis.core.action import Action, thaw
from aegis.core.result import Result, ResultStatus
from aegis.errors import ConfigurationError

try:
    from crewai import Agent, Crew, Task
    from crewai.agents.agent_builder.base_agent import BaseAgent
    from crewai.hooks import (
        register_after_tool_call_hook,
        register_before_tool_call_hook,
        unregister_after_tool_call_hook,
        unregister_before_tool_call_hook,
    )
    from crewai.tools import BaseTool

    from aegis.adapters import _crewai_guard as guard
except ImportError as exc:
    missing_extra("aegis.adapters.crewai", "crewai", exc)

__all__ = ["govern", "ungovern"]

# From import on, so that a tool method bound before govern() is guarded too.
guard.install()

_FRAMEWORK = "crewai"
_log = logging.getLogger("aegis.adapters")

#: the hooks registered for each governed object, by id, until ungovern()
_registered: dict[int, _Hooks] = {}
#: the tasks made since this module's import: a governed agent's are governed too
_tasks: weakref.WeakSet[Any] = weakref.WeakSet()
_tasks_lock = threading.Lock()


class _NotRun(Exception):
    """CrewAI answered the call without running the tool's function."""


class _Hooks:
    """The two hooks of one govern() call, and the calls between them."""

    def __init__(
        self,
        governor: Governor,
        agents: list[Any],
        tools: list[Any],
        given: Sequence[Any] = (),
        crew: Any = None,
    ) -> None:
        self.governor = governor
        self.agents = agents
        self.tools = tools
        #: the crew govern() was given, whose tasks' tools it governs
        self.crew = crew
        #: the list govern() was given, when it returned a governed copy of it
        self.given = given
        self.lock = threading.Lock()
        #: calls allowed to run, by their tool input: the action, the outcome to set,
        #: the run to wait for, and the ticket that lets the tool's function run once
        self.running: dict[int, tuple[Action, asyncio.Future[Any], Any, guard.Ticket]] = {}
        #: calls refused, by their tool input: what the agent reads instead
        self.refused: dict[int, str] = {}

    def cover(self, tool: Any) -> None:
        """Watch ``tool``; while this govern() call covers it, it runs only for decided calls."""
        guard.cover(tool, self)

    def release(self) -> None:
        """This govern() call no longer covers its tools (ungovern())."""
        guard.release(self)

    async def undecided(self, tool: Any, params: dict[str, Any], why: str) -> None:
        """Record a run of a covered tool that no decision covers as blocked (it did not run)."""
        governor = self.governor
        call = ToolCall(
            str(getattr(tool, "name", None) or type(tool).__name__),
            params,
            description=_description(tool),
            agent=governor.agent,
        )
        await governor._record_refused(call, governor._refused(call, why))

    def tasks(self) -> list[Any]:
        """The tasks whose tools this govern() call governs: its crew's, its agents'."""
        tasks = list(getattr(self.crew, "tasks", None) or ())
        if self.agents:
            with _tasks_lock:
                made = list(_tasks)
            tasks.extend(t for t in made if any(t.agent is a for a in self.agents))
        return tasks

    def claims(self, tool: Any) -> bool:
        """Whether ``tool`` is in a list this govern() call governs without seeing it change.

        The list govern() was given (a plain list, not the governed one it
        returned), and the ``tools`` of its crew's tasks and of its agents'
        tasks (a task keeps the list it was made with).
        """
        if any(held is tool for held in self.given):
            return True
        return any(
            held is tool for task in self.tasks() for held in (getattr(task, "tools", None) or ())
        )

    def applies(self, context: Any) -> bool:
        if self.agents:
            return any(context.agent is agent for agent in self.agents)
        tool = getattr(context.tool, "_original_tool", None) or context.tool
        return any(tool is governed for governed in self.tools) or any(
            tool is governed for governed in self.given
        )

    def governs(self, tools: object) -> bool:
        """Whether ``tools`` is this govern() call's list of tools, or a covered agent's."""
        return tools is self.tools or any(getattr(a, "tools", None) is tools for a in self.agents)

    def before(self, context: Any) -> bool | None:
        """CrewAI's before-tool hook: ``None`` lets the call run, ``False`` blocks it.

        A call several govern() calls cover is decided once, by the first of
        them (CrewAI runs the hooks in the order they were registered); the
        others let it pass to that decision. The tool's guard runs it only
        for the one decision.
        """
        if not self.applies(context):
            return None
        try:
            covering = [hooks for hooks in list(_registered.values()) if hooks.applies(context)]
            if covering and covering[0] is not self:
                return None  # decided once, by the first govern() covering it
            return self._before(context, covering)
        except Exception as exc:  # CrewAI would let the call pass: block it instead
            _log.exception("the Aegis hook failed; the call is blocked")
            with self.lock:
                self.refused[id(context.tool_input)] = f"blocked: the Aegis hook failed ({exc})"
            return False

    def _before(self, context: Any, covering: list[_Hooks]) -> bool | None:
        governor = self.governor
        tool = getattr(context.tool, "_original_tool", None) or context.tool
        role = getattr(context.agent, "role", None)
        call = ToolCall(
            str(context.tool_name),
            # As the tool's schema reads them: CrewAI validates (and coerces)
            # them so before the tool runs, and the decision is on what runs.
            guard.typed(tool, dict(context.tool_input)),
            call_id=_call_id(context),
            description=_description(tool),
            agent=role if isinstance(role, str) and role else governor.agent,
            unreadable=_ambiguous(self, covering),
        )
        loop = _portal.loop()
        allowed = threading.Event()
        held: dict[str, Any] = {}

        async def execute(action: Action) -> Any:
            # CrewAI runs the tool once this hook returns; its result settles this.
            outcome: asyncio.Future[Any] = loop.create_future()
            held["action"], held["outcome"] = action, outcome
            allowed.set()
            return await outcome

        done = asyncio.run_coroutine_threadsafe(governor.run(call, execute), loop)
        done.add_done_callback(lambda _: allowed.set())
        allowed.wait()
        key = id(context.tool_input)
        if "action" in held:
            # Exactly the decided (approved) arguments, in CrewAI's own input dict.
            decided = thaw(held["action"].params)
            context.tool_input.clear()
            context.tool_input.update(decided)
            self.cover(tool)
            # One run, in this call's context, with exactly these arguments.
            ticket = guard.open_ticket(tool, decided)
            with self.lock:
                self.running[key] = (held["action"], held["outcome"], done, ticket)
            return None
        result: Result = done.result()
        text = governor.refusal(call, result)
        with self.lock:
            self.refused[key] = text
        return False

    def after(self, context: Any) -> str | None:
        """CrewAI's after-tool hook: the refusal as the result, or the outcome recorded."""
        key = id(context.tool_input)
        with self.lock:
            text = self.refused.pop(key, None)
            running = self.running.pop(key, None)
        if text is not None:
            return text
        if running is not None:
            action, outcome, done, ticket = running
            guard.close_ticket(ticket)
            value, error = _what_happened(action, ticket, context)
            loop = _portal.loop()
            loop.call_soon_threadsafe(_settle, outcome, value, error)
            try:
                done.result()  # recorded before the agent goes on
            except Exception:
                _log.exception("could not record the outcome of %s", context.tool_name)
        return None


def govern(
    crew_or_agent_or_tools: Any,
    runtime: Any,
    *,
    target: str = _FRAMEWORK,
    agent: str | None = None,
    on_block: OnBlock = "return",
) -> Any:
    """Govern every tool call of a crew, an agent, or a list of tools.

    Args:
        crew_or_agent_or_tools: a ``Crew`` (all its agents' calls), an
            ``Agent`` (its calls), or a list of CrewAI tools (their calls,
            whichever agent makes them).
        runtime: the :class:`~aegis.runtime.engine.Runtime` that decides,
            approves, executes and records.
        target: the action ``target`` of every call (the toolset's name).
        agent: the agent name recorded when the agent has no role.
        on_block: only ``"return"``: a blocked call is answered with the
            reason (CrewAI lets a hook that raises pass the call, so a hook
            cannot stop the crew).

    Returns:
        the crew or agent it was given, now governed (until :func:`ungovern`);
        for tools, a governed list holding them (a ``list``).

    Tools added later are governed too, as they are added: a tool given to a
    governed agent (``agent.tools`` appended to, extended, set), a tool added
    to the governed list govern() returned. The tools of the crew's tasks and
    of the governed agents' tasks (``task.tools``, a list of the task's own)
    are governed from govern() on, and those of a task made, given such an
    agent (``task.agent = ...``) or given tools later, as that happens. A
    tool added without Aegis seeing it (to the plain list given to govern(),
    not the one it returned; to a task's list) is governed from its first
    run on any path: a run through CrewAI's hooks is decided, any other is
    refused. An agent added to a crew after govern() is not governed: govern
    the crew again (or that agent). A governed agent's ``tools`` becomes a
    list of its own; a task of the crew holding the agent's list (CrewAI's
    default) is given it; one made before govern() of the agent alone keeps
    the list as it was, governed as a task's own.
    """
    if on_block != "return":
        raise ConfigurationError(
            'CrewAI cannot stop a crew from a tool hook: use on_block="return" (the default)'
        )
    governor = Governor(runtime, target=target, framework=_FRAMEWORK, agent=agent)
    given = crew_or_agent_or_tools
    if isinstance(given, Crew):
        hooks = _Hooks(governor, list(given.agents), [], crew=given)
    elif isinstance(given, Agent):
        hooks = _Hooks(governor, [given], [])
    elif isinstance(given, Iterable) and not isinstance(given, str | bytes):
        # A list of its own, which covers a tool as it is added; the calls of the
        # tools still in the given list are decided too.
        tools = _Covering(given)
        if not all(isinstance(tool, BaseTool) for tool in tools):
            raise ConfigurationError("govern() takes a list of CrewAI tools (BaseTool)")
        hooks = _Hooks(governor, [], tools, given if isinstance(given, list) else ())
    else:
        raise ConfigurationError(
            f"govern() takes a crewai Crew, Agent or list of tools, got {type(given).__name__}"
        )
    ungovern(given)
    guard.install()
    _follow_agents()
    for agent_ in hooks.agents:
        _covering_tools(agent_, getattr(given, "tasks", None) or ())
        for tool in getattr(agent_, "tools", None) or ():
            hooks.cover(tool)
    for tool in hooks.tools:
        hooks.cover(tool)
    for task in hooks.tasks():  # made before govern(), holding lists of their own
        for tool in getattr(task, "tools", None) or ():
            hooks.cover(tool)
    register_before_tool_call_hook(hooks.before)
    register_after_tool_call_hook(hooks.after)
    if isinstance(hooks.tools, _Covering):  # a list: the governed one govern() made
        _registered[id(hooks.tools)] = hooks
        return hooks.tools
    _registered[id(given)] = hooks
    return given


def ungovern(crew_or_agent_or_tools: Any) -> None:
    """Remove the hooks :func:`govern` registered for this object (CrewAI's are process-wide).

    For tools, either the list given to :func:`govern` or the one it returned.
    """
    key = id(crew_or_agent_or_tools)
    if key not in _registered:  # the list given to govern(), for the one it returned
        held = list(_registered.items())
        key = next((k for k, h in held if h.given is crew_or_agent_or_tools), key)
    hooks = _registered.pop(key, None)
    if hooks is not None:
        unregister_before_tool_call_hook(hooks.before)
        unregister_after_tool_call_hook(hooks.after)
        hooks.release()


def _ambiguous(first: _Hooks, covering: list[_Hooks]) -> str | None:
    """Why a call covered by govern() calls that would decide it differently is refused.

    Calls covered twice with one runtime and one target are decided once;
    with two runtimes (two policies, two audit trails) or two targets, which
    decision holds is ambiguous, so the call is blocked (recorded by the first).
    """
    mine = first.governor
    others = [
        hooks.governor
        for hooks in covering
        if hooks.governor.runtime is not mine.runtime or hooks.governor.target != mine.target
    ]
    if not others:
        return None
    return (
        f"{len(covering)} govern() calls cover this call with different runtimes or "
        "targets, so which decision holds is ambiguous; govern each tool once"
    )


class _Covering(list):  # type: ignore[type-arg]
    """A governed agent's ``tools``, or a governed list: a tool added is covered first.

    Covered before it is in the list, by every govern() call governing the
    list then, so no run of it, with or without CrewAI's hooks, goes undecided.
    A list nothing governs any more only holds its tools.
    """

    def _cover(self, tools: Iterable[Any]) -> list[Any]:
        tools = list(tools)
        for hooks in [h for h in list(_registered.values()) if h.governs(self)]:
            for tool in tools:
                hooks.cover(tool)
        return tools

    def append(self, tool: Any) -> None:
        self._cover([tool])
        super().append(tool)

    def extend(self, tools: Iterable[Any]) -> None:
        super().extend(self._cover(tools))

    def insert(self, index: Any, tool: Any) -> None:
        self._cover([tool])
        super().insert(index, tool)

    def __setitem__(self, index: Any, value: Any) -> None:
        if isinstance(index, slice):
            super().__setitem__(index, self._cover(value))
        else:
            self._cover([value])
            super().__setitem__(index, value)

    def __iadd__(self, tools: Iterable[Any]) -> Any:  # type: ignore[misc]  # list.__iadd__ too
        self.extend(tools)
        return self


def _covering_tools(agent: Any, tasks: Iterable[Any] = ()) -> None:
    """Make ``agent.tools`` a list that covers a tool as it is added (see :class:`_Covering`).

    A task given the agent's own list (CrewAI's default) is given the new one.
    """
    tools = getattr(agent, "tools", None)
    if not isinstance(tools, list) or isinstance(tools, _Covering):
        return
    covering = _Covering(tools)
    try:
        object.__setattr__(agent, "tools", covering)
    except (AttributeError, TypeError):  # an agent that takes no attributes: as it was
        return
    for task in tasks:
        if getattr(task, "tools", None) is tools:
            object.__setattr__(task, "tools", covering)


def _follow_agents() -> None:
    """Tools set on a governed agent (``agent.tools = [...]``) are covered as they are set.

    ``BaseAgent.__setattr__`` is wrapped once, process-wide; for agents nothing
    governs it only sets the attribute.
    """
    if BaseAgent.__dict__.get("_aegis_guarded"):
        return
    setattr_ = BaseAgent.__setattr__

    def guarded_setattr(self: Any, name: str, value: Any) -> None:
        if name != "tools":
            setattr_(self, name, value)
            return
        governing = [h for h in list(_registered.values()) if any(a is self for a in h.agents)]
        for hooks in governing:
            for tool in value if isinstance(value, list | tuple) else ():
                hooks.cover(tool)  # covered before the agent holds it
        setattr_(self, name, value)
        if governing:
            _covering_tools(self)
            for hooks in governing:  # as the agent holds them (validated, converted)
                for tool in getattr(self, "tools", None) or ():
                    hooks.cover(tool)

    type.__setattr__(BaseAgent, "__setattr__", guarded_setattr)
    type.__setattr__(BaseAgent, "_aegis_guarded", True)


def _claimants(tool: Any) -> list[_Hooks]:
    """The govern() calls claiming ``tool``, which nothing covers yet (:meth:`_Hooks.claims`)."""
    return [hooks for hooks in list(_registered.values()) if hooks.claims(tool)]


def _task_given(task: Any) -> None:
    """Cover the tools of ``task`` by the govern() calls governing its agent or its crew."""
    tools = getattr(task, "tools", None) or ()
    if not tools:
        return
    for hooks in list(_registered.values()):
        agent = getattr(task, "agent", None)
        mine = any(agent is a for a in hooks.agents) or any(
            task is held for held in getattr(hooks.crew, "tasks", None) or ()
        )
        if mine:
            for tool in tools:
                hooks.cover(tool)


def _follow_tasks() -> None:
    """Know every task made from now on, and cover its tools as it is given to a governed agent.

    ``Task.__init__`` and ``Task.__setattr__`` are wrapped once, process-wide;
    for tasks nothing governs they only note the task (weakly) and set the
    attribute.
    """
    if Task.__dict__.get("_aegis_guarded"):
        return
    init, setattr_ = Task.__init__, Task.__setattr__

    def noted_init(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        with _tasks_lock:
            _tasks.add(self)
        _task_given(self)

    def guarded_setattr(self: Any, name: str, value: Any) -> None:
        setattr_(self, name, value)
        if name in ("agent", "tools"):
            _task_given(self)

    type.__setattr__(Task, "__init__", noted_init)
    type.__setattr__(Task, "__setattr__", guarded_setattr)
    type.__setattr__(Task, "_aegis_guarded", True)


# From import on: a tool of a task or a list govern() governs is claimed when it
# first runs, and a task made from now on is known to govern() of its agent.
guard.claim_with(_claimants)
_follow_tasks()


def _settle(outcome: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if outcome.done():
        return
    if error is not None:
        outcome.set_exception(error)  # recorded as failed, with the tool's error
    else:
        outcome.set_result(value)


def _what_happened(
    action: Action, ticket: guard.Ticket, context: Any
) -> tuple[Any, BaseException | None]:
    """The outcome to record for an allowed call: what it returned, or the error."""
    if ticket.error is not None:
        return None, ticket.error
    text = context.tool_result
    if ticket.ran:
        return text, None
    if not ticket.started and _from_cache(context):
        # Not a run of the tool: failed (Result.ok means "ran and succeeded"),
        # with what the agent read instead.
        return Result(
            action,
            ResultStatus.FAILED,
            data=text,
            error="not run: CrewAI answered from its tool cache, "
            "with the result of an earlier run of the same call",
        ), None
    if ticket.refused is not None:
        return None, _NotRun(f"Aegis refused to run it ({ticket.refused}); CrewAI answered: {text}")
    return None, _NotRun(f"CrewAI did not run the tool: {text}")


def _from_cache(context: Any) -> bool:
    """Whether CrewAI answered the call from its tool cache (the tool did not run)."""
    handler = getattr(context.agent, "tools_handler", None)
    read = getattr(getattr(handler, "cache", None), "read", None)
    if not callable(read):
        return False
    given = json.dumps(context.tool_input) if context.tool_input else ""
    try:
        cached = read(tool=context.tool_name, input=given)
    except Exception:  # a cache that cannot be read answered nothing
        return False
    return cached is not None and cached == context.raw_tool_result


def _description(tool: Any) -> str:
    """The tool's own description, without the header CrewAI adds for the model."""
    text = getattr(tool, "description", "") or ""
    marker = "Tool Description:"
    if marker in text:
        text = text.split(marker, 1)[1]
    return str(text).strip()


def _call_id(context: Any) -> str | None:
    """The model's id of the call, from CrewAI's frame that built the hook's context.

    The hook's context does not carry it; the function that built the
    context (and passed it to the hooks) holds it as ``call_id``. Only a
    frame holding this very context counts, so an id is never misattributed.
    """
    frame: FrameType | None = sys._getframe(1)
    for _ in range(10):
        if frame is None:
            return None
        values = frame.f_locals
        call_id = values.get("call_id")
        if isinstance(call_id, str) and any(v is context for v in values.values()):
            return call_id
        frame = frame.f_back
    return None
