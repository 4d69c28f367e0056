"""Govern the tools of a Claude Agent SDK agent.

The Claude Agent SDK drives Claude Code, which runs the tools itself (its
own, MCP servers', and the in-process tools of ``create_sdk_mcp_server``).
Aegis decides before a tool runs, through the SDK's two interception
points, with one semantics (see :mod:`aegis.adapters._governance`):

- :func:`hooks` gives the ``PreToolUse`` hook (with its ``PostToolUse`` and
  ``PostToolUseFailure`` partners) for ``ClaudeAgentOptions(hooks=...)``. A
  call the policy lets through is allowed with exactly the decided input
  (``updatedInput``); one it blocks is denied and Claude reads the rule and
  the reason; one that needs approval waits for the runtime's approval
  handler and is allowed only after a yes, with exactly the approved input.
  The audit record is written when the tool has run, with its output (or
  its failure), the ``tool_use_id`` and the agent's name; a ``Stop`` hook
  ends, as failed, the calls of its turn that got no ``PostToolUse``.
- :func:`can_use_tool` gives the permission callback for
  ``ClaudeAgentOptions(can_use_tool=...)``, with the same decisions; Claude
  Code asks it only for the calls its own permission rules leave open, and
  the SDK tells it nothing of the tool's outcome, so the record says the
  call was permitted.

A run no decision covers does not happen. Claude Code asks ``can_use_tool``
only about the calls its own permission rules leave open (a tool in
``allowed_tools`` or allowed by a settings file's ``permissions.allow``, a
file edit under ``acceptEdits``, anything under ``bypassPermissions`` runs
without asking), and code after Aegis may change a call's input (another
``PreToolUse`` hook's ``updatedInput``). So the SDK ``@tool`` functions
given as ``tools=`` are watched (their handler wrapped once, in place): each
decision that lets a call through gives one run of that tool with exactly
the decided input, and a run no decision covers (not asked about, another
input, a second run, a query whose options carry no Aegis gate) is refused
with an error, which the SDK's server hands Claude as the tool's error
result, and nothing runs; it is recorded as blocked (rule ``<aegis>``), with
the input it was run with, by the latest gate given the tool. A run names
no server, so ``tools=`` names each tool's: ``{server name: [its tools]}``
with the names of ``mcp_servers=`` (a list is refused with
``ConfigurationError``, as is one tool given twice), and a decision on
``mcp__SERVER__TOOL`` gives its run only to the tool given for that server,
never to one of that name on another server. Tools not
given as ``tools=`` (Claude Code's own, other MCP servers') are not watched:
govern them with :func:`hooks`. The SDK hands the tool only its input, not
the call it runs for, so an allowed run lives from the decision until the
call ends, and no longer than :data:`TICKET_SECONDS`: under the hooks, the
call's ``PostToolUse`` or, for a call that gets none (another hook denied
it, the hook timed out, the user interrupted its run), the ``Stop`` of its
session's turn, which also ends that call's record as failed: not run only
when no run with its input was made (its run unused, no other call's run
of that input made while it was allowed, none under way), else outcome
unknown, once no run with its input is under way (or ``run_timeout``
seconds after the ``Stop`` if one still is); a call of a tool not watched
ends outcome unknown, as Aegis sees none of its runs (and, for a
call whose run lapses unused with neither, the lapse, unless a run with the
same input was made: runs of one input are interchangeable, so that one
may have been this call's, and its record waits for Claude Code's word, up
to :data:`OUTCOME_SECONDS` after the last run with that input ends, then
ends as failed, outcome unknown, never as not run; a run with that input
still under way ``run_timeout`` seconds after the lapse, :data:`RUN_SECONDS`
by default, is taken to hang, and the record ends then, outcome unknown); under
``can_use_tool`` (the SDK tells the callback nothing after it answers) only
the deadline. Within that time a query without the gate could still make the
run with exactly the decided input.

Claude Code cannot suspend a run for a reviewer: a call that needs approval
waits (up to the runtime's ``approval_timeout``; set the hook's ``timeout``
above it). A yes that comes after Claude Code stopped waiting for the hook
(its ``timeout``, :data:`HOOK_TIMEOUT` when unset, less a tenth of it, at
most a second, for the answer's way back; the hook cancelled; its session's
turn over) lets nothing run: Claude Code has already blocked the call, so
its record ends as failed, not run, when the yes comes. The hooks fail
closed: a hook that fails blocks the call (``on_failure="block"``). Tools of
an SDK MCP server (``mcp__crm__refund``) are the action type ``refund``.

:func:`hooks` returns a :class:`Hooks` (the ``dict`` for ``hooks=``) to
close when its session ends (the ``query()`` run, the ``ClaudeSDKClient``):
the SDK tells hooks nothing of that, and no word can come for a call after
it. Closing cancels every timer of its calls, so none fires later or keeps
the loop busy; each call allowed and not yet recorded ends as failed,
outcome unknown (Claude Code may have run it); a decision still to come
lets nothing run; a call asked about after the close is denied and
recorded as blocked (rule ``<aegis>``).

Size: the two gates, the hooks' bookkeeping of allowed calls and the watch
on in-process runs share one gate object and its decisions; split, each
part would reach into the others' state.

Example::

    governed = hooks(runtime, target="billing", tools={"billing": [refund]})
    options = ClaudeAgentOptions(
        mcp_servers={"billing": create_sdk_mcp_server("billing", tools=[refund])},
        hooks=governed,
    )
    async with governed:  # closed when the query is over
        async for message in query(prompt="Refund order 17", options=options):
            ...
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from aegis.adapters._governance import Governor, OnBlock, ToolCall, missing_extra
from aegis.core.action import Action, thaw
from aegis.core.result import Result, ResultStatus
from aegis.errors import ConfigurationError

try:
    from claude_agent_sdk import (
        HookMatcher,
        PermissionResultAllow,
        PermissionResultDeny,
        ToolPermissionContext,
    )
except ImportError as exc:
    missing_extra("aegis.adapters.claude_agent_sdk", "claude-agent-sdk", exc)

__all__ = ["Hooks", "can_use_tool", "hooks"]

_FRAMEWORK = "claude-agent-sdk"
#: the attribute of a watched SDK tool holding its _Watch
_WATCHED = "_aegis_watch"

#: seconds an allowed run of a watched tool stays allowed when nothing ends it
#: sooner: Claude Code runs a tool as soon as its permission step allows it
TICKET_SECONDS = 30.0
#: seconds a call's record waits for Claude Code's word (``PostToolUse``, ``Stop``)
#: once its run has lapsed with a run of its input made (the last such run over),
#: before it ends as failed, outcome unknown: Claude Code is taken to be gone
OUTCOME_SECONDS = 30.0
#: seconds a run of a watched tool may still be under way once its call's run has
#: lapsed (the default of ``hooks(run_timeout=...)``): a run that has not ended by
#: then is taken to hang, and the call's record ends as failed, outcome unknown
RUN_SECONDS = 300.0
#: seconds Claude Code waits for a hook when its matcher sets no ``timeout``
HOOK_TIMEOUT = 60.0
#: the clock of the tickets' and the hooks' deadlines
_clock = time.monotonic

_log = logging.getLogger(__name__)


class ToolFailure(Exception):
    """The tool failed in Claude Code (``PostToolUseFailure``)."""


class _NotDecided(Exception):
    """A watched in-process tool was run with no Aegis decision covering the run."""


class _Ticket:
    """One run of a watched tool allowed with one exact input, until a deadline."""

    __slots__ = ("deadline", "key", "shared", "taken")

    def __init__(self, key: str, deadline: float) -> None:
        self.key = key
        self.deadline = deadline
        #: a run used this ticket
        self.taken = False
        #: a run with this input started while the ticket was held: tickets of one
        #: input are interchangeable (a run cannot name its call), so that run may
        #: be this ticket's call's, whichever ticket it used
        self.shared = False


class _Watch:
    """The runs one in-process tool may make: one per allowed call, for its exact input.

    The SDK hands the tool's handler only the input, not the call it runs
    for, so a ticket cannot name its call: it lives from the decision until
    the call ends (its ``PostToolUse``), its session's turn ends (``Stop``,
    which withdraws all of that session's tickets) or :data:`TICKET_SECONDS` pass,
    whichever comes first.
    """

    def __init__(self) -> None:
        #: the runs allowed, in the order allowed
        self.tickets: list[_Ticket] = []
        #: the runs in progress, by input
        self.running: dict[str, int] = {}
        #: what to do once no run with an input is in progress, by input
        self.idle: dict[str, list[Callable[[], None]]] = {}
        #: records a refused run: the governor of the latest gate given the tool
        self.recorder: Governor | None = None

    def grant(self, tool_input: object) -> _Ticket:
        """One run with exactly ``tool_input``; the ticket, to withdraw it."""
        ticket = _Ticket(_canonical(tool_input), _clock() + TICKET_SECONDS)
        self.tickets.append(ticket)
        return ticket

    def withdraw(self, ticket: _Ticket) -> None:
        """The call ended: a run it allowed and did not make is no longer allowed."""
        if any(held is ticket for held in self.tickets):
            self.tickets = [held for held in self.tickets if held is not ticket]

    def take(self, tool_input: object) -> bool:
        """Use up a live run allowed for ``tool_input``; False when none is.

        The run cannot say which call it is for, so it uses the oldest
        ticket for its input, and the others still held for that input are
        marked: the run may be any of their calls'.
        """
        now = _clock()
        self.tickets = [held for held in self.tickets if held.deadline > now]
        key = _canonical(tool_input)
        for index, ticket in enumerate(self.tickets):
            if ticket.key == key:
                del self.tickets[index]
                ticket.taken = True
                for other in self.tickets:
                    if other.key == key:
                        other.shared = True
                return True
        return False

    def started(self, key: str) -> None:
        """A run with the input ``key`` began."""
        self.running[key] = self.running.get(key, 0) + 1

    def ended(self, key: str) -> None:
        """A run with the input ``key`` is over: the last one calls what waits for it."""
        left = self.running.pop(key) - 1
        if left:
            self.running[key] = left
            return
        for then in self.idle.pop(key, []):
            then()

    def when_idle(self, key: str, then: Callable[[], None]) -> bool:
        """Call ``then`` once no run with the input ``key`` is in progress (now, if none is).

        Returns whether it waits (a run with that input is under way).
        """
        if key in self.running:
            self.idle.setdefault(key, []).append(then)
            return True
        then()
        return False

    def forget(self, key: str, then: Callable[[], None]) -> None:
        """No longer call ``then`` when the runs with the input ``key`` end."""
        waiting = self.idle.get(key, [])
        if any(held is then for held in waiting):
            waiting[:] = [held for held in waiting if held is not then]
            if not waiting:
                del self.idle[key]


def _watch(tool: Any, recorder: Governor) -> _Watch:
    """The watch of an SDK ``@tool``, wrapping its handler the first time.

    ``recorder`` (the latest gate's governor) records the runs it refuses.
    """
    watch = getattr(tool, _WATCHED, None)
    if isinstance(watch, _Watch):
        watch.recorder = recorder
        return watch
    watch = _Watch()
    watch.recorder = recorder
    handler: Callable[[Any], Awaitable[Any]] = tool.handler
    name = tool.name
    description = getattr(tool, "description", "")

    async def decided_runs_only(args: Any) -> Any:
        # The SDK's server looks the handler up at each call, so this runs
        # even for servers made before the watch began.
        if not watch.take(args):
            refusal = _NotDecided(
                f"not run: Aegis governs the tool {name!r} and no Aegis decision covers "
                "this run (Claude Code ran it without asking Aegis, with an input Aegis "
                "did not decide, or again); govern the call with hooks()"
            )
            await _record_refused(watch.recorder, name, description, args, refusal)
            raise refusal
        key = _canonical(args)
        watch.started(key)
        try:
            return await handler(args)
        finally:
            watch.ended(key)

    tool.handler = decided_runs_only
    setattr(tool, _WATCHED, watch)
    return watch


async def _record_refused(
    governor: Governor | None, name: str, description: object, args: object, why: Exception
) -> None:
    """Record a refused run of a watched tool as blocked, by Aegis (rule ``<aegis>``).

    It stays refused whether or not it can be recorded.
    """
    if governor is None:  # not reached: a watch is made by a gate
        _log.error("refused a run of %r that no Aegis decision covers; no gate records it", name)
        return
    call = ToolCall(
        name,
        args if isinstance(args, Mapping) else {"input": args},
        description=description if isinstance(description, str) else "",
        agent=governor.agent,
    )
    try:
        await governor._record_refused(call, governor._refused(call, str(why)))
    except Exception:
        _log.exception("could not record a refused run of %r", name)


def _lapsed(allowed: _Allowed, run_timeout: float) -> None:
    """An allowed run's time is over: unused, its call's record ends as failed (not run).

    Unless a run with its input was made (with this ticket, or with another
    call's for the same input, which may have been this call's run): the
    record is left to the call's ``PostToolUse`` or its turn's ``Stop``,
    which Claude Code sends for the call it ran and the one it did not, for
    :data:`OUTCOME_SECONDS` after the last run with that input ends; if
    neither comes by then (Claude Code gone), it ends as failed, outcome
    unknown, never as not run. A run with that input still under way
    ``run_timeout`` seconds after the lapse is taken to hang: the record
    ends then, outcome unknown, whatever the run does later.
    """
    outcome, watch, ticket = allowed.outcome, allowed.watch, allowed.ticket
    if outcome.done() or watch is None or ticket is None:
        return  # recorded already
    watch.withdraw(ticket)
    if ticket.taken or ticket.shared:
        # It may have run: never say "not run".
        loop = asyncio.get_running_loop()
        hung: list[asyncio.TimerHandle] = []

        def wait_for_word() -> None:
            allowed.idle = None
            for timer in hung:  # the run is over: it does not hang
                timer.cancel()
            if not outcome.done():
                no_word = (
                    "a run with the call's input was made, and Claude Code sent neither "
                    f"PostToolUse nor Stop within {OUTCOME_SECONDS:g} s of it; Aegis cannot "
                    "tell whether the tool ran for this call"
                )
                allowed.later(loop.call_later(OUTCOME_SECONDS, _unknown, outcome, no_word))

        allowed.idle = wait_for_word
        if watch.when_idle(ticket.key, wait_for_word):
            why = (
                f"a run with the call's input was still under way {run_timeout:g} s after "
                "the call's time to run was over (the tool hangs?); Aegis cannot tell what "
                "the tool did for this call"
            )
            hung.append(loop.call_later(run_timeout, _unknown, outcome, why))
            allowed.later(hung[0])
        return
    outcome.set_exception(
        ToolFailure(
            f"not run: Claude Code did not run the tool within {TICKET_SECONDS:g} s "
            "of the decision, and the run it was allowed has lapsed"
        )
    )


def _stopped(allowed: _Allowed, run_timeout: float) -> bool:
    """The call's turn is over (``Stop``) and no ``PostToolUse`` came for it: end its record.

    Only a call of a watched tool whose run was never made (its ticket
    unused, not shared, no run with its input under way) ends as not run.
    One whose run may have been made (the user interrupted it, or it goes
    on in a worker thread after the cancel) ends as failed, outcome
    unknown, once no run with its input is under way, or ``run_timeout``
    seconds after the ``Stop`` if one still is (the tool hangs); a word
    from Claude Code before then (a late ``PostToolUse``) records the real
    outcome. A call of a tool Aegis does not watch ends outcome unknown:
    Aegis sees none of its runs. Returns whether the record ends now.
    """
    outcome, watch, ticket = allowed.outcome, allowed.watch, allowed.ticket
    allowed.withdraw()  # no run more; the lapse's timers and wait are over
    allowed.stopped = True
    if outcome.done():
        return True
    if watch is None or ticket is None:
        _unknown(
            outcome,
            "the turn ended with no PostToolUse for the call, and Aegis does not watch "
            "the tool's runs: Claude Code may have run it (an interrupt) or not (another "
            "hook denied it)",
        )
        return True
    if not (ticket.taken or ticket.shared or ticket.key in watch.running):
        outcome.set_exception(
            ToolFailure(
                "not run: Claude Code did not run the tool: the turn ended with no "
                "PostToolUse for the call, and the run Aegis allowed it was never made"
            )
        )
        return True

    def over() -> None:
        allowed.idle = None
        _unknown(
            outcome,
            "a run with the call's input was made, and the turn ended with no "
            "PostToolUse for the call (the user interrupted the run?); Aegis cannot "
            "tell what the tool did for this call",
        )

    allowed.idle = over
    if not watch.when_idle(ticket.key, over):
        return True
    hung = (
        f"a run with the call's input was still under way {run_timeout:g} s after the "
        "call's turn ended (the tool hangs?); Aegis cannot tell what the tool did for "
        "this call"
    )
    allowed.later(asyncio.get_running_loop().call_later(run_timeout, _unknown, outcome, hung))
    return False


def _unknown(outcome: asyncio.Future[Any], why: str) -> None:
    """Claude Code never said what came of a call whose run may have been made."""
    if not outcome.done():
        outcome.set_exception(ToolFailure(f"outcome unknown: {why}"))


def _canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=repr)


class _Allowed:
    """A call the hooks allowed, in a session: its run of a watched tool and its outcome.

    It holds the timers that may end its record (the lapse of its run, the
    wait for Claude Code's word, the bound on a hung run) until the record
    is written or the hooks are closed, which cancel them all.
    """

    __slots__ = ("idle", "outcome", "session", "stopped", "task", "ticket", "timers", "watch")

    def __init__(
        self,
        session: str | None,
        watch: _Watch | None,
        ticket: _Ticket | None,
        outcome: asyncio.Future[Any],
        task: asyncio.Future[Result],
    ) -> None:
        self.session = session
        self.watch = watch
        self.ticket = ticket
        self.outcome = outcome
        self.task = task
        self.timers: list[asyncio.TimerHandle] = []
        #: what waits for the runs with its input to end, if anything does
        self.idle: Callable[[], None] | None = None
        #: its turn's ``Stop`` came: its record ends now, or once its input's runs end
        self.stopped = False

    def later(self, timer: asyncio.TimerHandle) -> None:
        """Hold ``timer`` until the record is written (or the hooks are closed)."""
        self.timers.append(timer)

    def withdraw(self) -> None:
        """The run it allowed and did not make is no longer allowed; no timer fires."""
        if self.watch is not None and self.ticket is not None:
            self.watch.withdraw(self.ticket)
            if self.idle is not None:
                self.watch.forget(self.ticket.key, self.idle)
                self.idle = None
        for timer in self.timers:
            timer.cancel()
        self.timers.clear()


class _Waiting:
    """A ``PreToolUse`` hook waiting for its decision, in a session, until a deadline.

    Claude Code waits for a hook up to its ``timeout``; after that (or once
    the hook is cancelled, or its session's turn has ended) an answer is
    too late: Claude Code does not run the call, so a decision to let it run
    ends the call's record as failed instead.
    """

    __slots__ = ("deadline", "over", "session")

    def __init__(self, session: str | None, deadline: float) -> None:
        self.session = session
        self.deadline = deadline
        #: why an answer is too late now, once it is
        self.over: str | None = None

    def too_late(self) -> str | None:
        """Why Claude Code no longer waits for this hook's answer; ``None`` while it does."""
        if self.over is None and _clock() >= self.deadline:
            self.over = "the hook's timeout passed"
        return self.over


class _Gate:
    """The decisions of one set of hooks: a runtime, a target, the tools' descriptions."""

    def __init__(
        self,
        runtime: Any,
        target: str,
        tools: Mapping[str, Iterable[Any]] | None,
        agent: str | None,
        on_block: OnBlock,
        *,
        timeout: float | None = None,
        run_timeout: float = RUN_SECONDS,
    ) -> None:
        number = isinstance(run_timeout, int | float) and not isinstance(run_timeout, bool)
        if not number or not 0 < run_timeout < float("inf"):
            raise ConfigurationError(
                f"run_timeout must be a positive, finite number of seconds, got {run_timeout!r}"
            )
        self.run_timeout = float(run_timeout)
        #: why the hooks decide nothing more, once they are closed
        self.closed: str | None = None
        self.governor = Governor(
            runtime, target=target, framework=_FRAMEWORK, on_block=on_block, agent=agent
        )
        #: the in-process tools' descriptions and watches, by (MCP server, tool name)
        self.descriptions: dict[tuple[str, str], str] = {}
        self.watches: dict[tuple[str, str], _Watch] = {}
        given: set[int] = set()
        for server, tool in _listed(tools):
            name, description = getattr(tool, "name", None), getattr(tool, "description", None)
            if not isinstance(name, str) or not isinstance(description, str):
                raise ConfigurationError(
                    "tools= takes the SDK's @tool functions (SdkMcpTool), got "
                    f"{type(tool).__name__}"
                )
            if (server, name) in self.watches or id(tool) in given:
                # A run names no server: one tool's decision must not let another run.
                raise ConfigurationError(
                    f"tools= gives two tools named {name!r} on the MCP server {server!r} "
                    "or one tool twice, and a decision on one would let the other run: "
                    "give tools= as {server name: [its tools]}, one tool object per server"
                )
            given.add(id(tool))
            self.descriptions[server, name] = description
            self.watches[server, name] = _watch(tool, self.governor)
        #: calls allowed to run, by tool_use_id: their outcome (set by the Post
        #: hooks) and the governed run that records it
        self.running: dict[str, tuple[asyncio.Future[Any], asyncio.Future[Result]]] = {}
        self.tasks: set[asyncio.Future[Result]] = set()
        #: the calls these hooks allowed whose record is not written yet
        self.open: list[_Allowed] = []
        #: the PreToolUse hooks waiting for their decision
        self.waiting: list[_Waiting] = []
        #: how long Claude Code waits for a hook, less a margin for the answer's way back
        wait = HOOK_TIMEOUT if timeout is None else float(timeout)
        self.hook_wait = wait - min(1.0, wait / 10)

    def call(
        self, tool_name: str, tool_input: object, tool_use_id: str | None, agent: Any
    ) -> ToolCall:
        name = _action_type(tool_name)
        if not isinstance(tool_input, Mapping):
            tool_input = {"input": tool_input}
        picked = self.picked(tool_name)
        return ToolCall(
            name,
            tool_input,
            call_id=tool_use_id,
            description=self.descriptions[picked] if picked is not None else "",
            agent=agent if isinstance(agent, str) and agent else self.governor.agent,
        )

    def picked(self, tool_name: str) -> tuple[str, str] | None:
        """The in-process tool ``mcp__SERVER__TOOL`` names, if one was given; else ``None``.

        Only the tool given for that very server: never one given for another.
        """
        server, name = _server_and_tool(tool_name)
        if server is None or (server, name) not in self.watches:
            return None  # not an MCP tool, or none given for its server
        return server, name

    async def pre_tool_use(
        self, input: Mapping[str, Any], tool_use_id: str | None, context: Any
    ) -> dict[str, Any]:
        """``PreToolUse``: allow exactly the decided input, or deny with the reason."""
        tool_use_id = tool_use_id or _text(input.get("tool_use_id"))
        call = self.call(
            str(input.get("tool_name")),
            input.get("tool_input"),
            tool_use_id,
            input.get("agent_type"),
        )
        if self.closed is not None:
            # Its session is over: nothing these hooks allow now could be recorded.
            refused = self.governor._refused(call, self.closed)
            result = await self.governor._record_refused(call, refused)
            return _pre_tool_use("deny", self.governor.refusal(call, result))
        loop = asyncio.get_running_loop()
        allowed: asyncio.Future[Action] = loop.create_future()
        outcome: asyncio.Future[Any] = loop.create_future()
        session = _text(input.get("session_id"))
        waiting = _Waiting(session, _clock() + self.hook_wait)

        async def execute(action: Action) -> Any:
            late = waiting.too_late()
            if late is not None:
                # Claude Code stopped waiting (a late approval): it never runs the call.
                raise ToolFailure(
                    f"not run: Aegis let the call through after Claude Code stopped "
                    f"waiting for the PreToolUse hook ({late}), so Claude Code did not run it"
                )
            # Claude Code runs the tool: let it, then wait for what came of it.
            allowed.set_result(action)
            return await outcome

        task = asyncio.ensure_future(self.governor.run(call, execute))
        if tool_use_id is not None:
            self.running[tool_use_id] = (outcome, task)
        self.tasks.add(task)
        task.add_done_callback(self._finished(tool_use_id, outcome))
        either: set[asyncio.Future[Any]] = {task, allowed}
        self.waiting.append(waiting)
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            # Claude Code gave up on the hook (its timeout, an interrupt): whatever
            # is decided now, Claude Code does not run the call.
            waiting.over = "the hook was cancelled"
            if allowed.done() and not outcome.done():
                gave_up = ToolFailure(f"Claude Code did not run the tool: {waiting.over}")
                outcome.set_exception(gave_up)
            raise
        finally:
            self.waiting.remove(waiting)
        if allowed.done() and self.closed is not None:
            # closed while it was let through: aclose() did not see it open
            if not outcome.done():
                outcome.set_exception(
                    ToolFailure(f"Claude Code did not run the tool: {self.closed}")
                )
            return _pre_tool_use("deny", self.closed)
        if allowed.done():
            decided = thaw(allowed.result().params)
            self._allowed(session, str(input.get("tool_name")), decided, outcome, task)
            return _pre_tool_use("allow", "allowed by Aegis", decided)
        return _pre_tool_use("deny", self.governor.refusal(call, task.result()))

    def _allowed(
        self,
        session: str | None,
        name: str,
        decided: object,
        outcome: asyncio.Future[Any],
        task: asyncio.Future[Result],
    ) -> None:
        """An allowed call: one run of ``decided``, withdrawn when the call's record is written."""
        picked = self.picked(name)
        watch = self.watches[picked] if picked is not None else None
        ticket = watch.grant(decided) if watch is not None else None
        allowed = _Allowed(session, watch, ticket, outcome, task)
        self.open.append(allowed)
        if watch is not None and ticket is not None:
            # Unused when it lapses, the run can no longer happen: end the record then,
            # even if neither PostToolUse nor Stop ever comes (Claude Code gone).
            loop = asyncio.get_running_loop()
            allowed.later(loop.call_later(TICKET_SECONDS, _lapsed, allowed, self.run_timeout))

        def ended(_: object) -> None:
            allowed.withdraw()
            if allowed in self.open:
                self.open.remove(allowed)

        task.add_done_callback(ended)

    def _finished(self, tool_use_id: str | None, outcome: asyncio.Future[Any]) -> Any:
        def done(task: asyncio.Future[Result]) -> None:
            self.tasks.discard(task)
            running = self.running.get(tool_use_id or "")
            if running is not None and running[0] is outcome:
                del self.running[tool_use_id or ""]

        return done

    async def post_tool_use(
        self, input: Mapping[str, Any], tool_use_id: str | None, context: Any
    ) -> dict[str, Any]:
        """``PostToolUse``: the tool's output completes the call's audit record."""
        await self._settle(tool_use_id or _text(input.get("tool_use_id")), input, None)
        return {}

    async def post_tool_use_failure(
        self, input: Mapping[str, Any], tool_use_id: str | None, context: Any
    ) -> dict[str, Any]:
        """``PostToolUseFailure``: the tool's error completes the call's audit record."""
        error = ToolFailure(str(input.get("error") or "the tool failed"))
        await self._settle(tool_use_id or _text(input.get("tool_use_id")), input, error)
        return {}

    async def _settle(
        self, tool_use_id: str | None, input: Mapping[str, Any], error: Exception | None
    ) -> None:
        running = self.running.get(tool_use_id or "")
        if running is None:
            return  # a call these hooks did not allow
        outcome, task = running
        if not outcome.done():
            if error is not None:
                outcome.set_exception(error)
            else:
                outcome.set_result(input.get("tool_response"))
        await asyncio.wait({task})  # recorded before Claude Code goes on

    async def stop(
        self, input: Mapping[str, Any], tool_use_id: str | None, context: Any
    ) -> dict[str, Any]:
        """``Stop``: the turn is over, and no ``PostToolUse`` comes for its open calls.

        Each allowed call of the session still open is withdrawn (no run
        more) and its record ends as failed (see :func:`_stopped`): not run
        when it was never run (another hook denied it, the hook timed out),
        outcome unknown when it may have been (the user interrupted its
        run), after any run with its input still under way. The records
        that can end now are written before Claude Code goes on.
        """
        session = _text(input.get("session_id"))
        for waiting in self.waiting:
            if waiting.session == session:
                # Its turn is over: Claude Code stopped waiting for that hook.
                waiting.over = "its turn had ended"
        tasks = []
        for allowed in list(self.open):
            if allowed.session != session or allowed.stopped:
                continue  # another session's, or waiting, since an earlier Stop, for a run
            if _stopped(allowed, self.run_timeout):
                tasks.append(allowed.task)
        if tasks:
            await asyncio.wait(tasks)  # recorded before Claude Code goes on
        return {}

    async def aclose(self) -> None:
        """The session is over: every timer is cancelled and every open record ends.

        A call allowed and not yet recorded ends as failed, outcome unknown
        (Claude Code may have run it and never said), and a decision still
        to come lets nothing run; calls the hooks are asked about from now
        on are denied, and recorded as blocked (rule ``<aegis>``).
        """
        if self.closed is None:
            self.closed = "the Aegis hooks of this session were closed (the session is over)"
        for waiting in self.waiting:
            waiting.over = self.closed
        ended = list(self.open)
        for allowed in ended:
            allowed.withdraw()
            if not allowed.outcome.done():
                allowed.outcome.set_exception(
                    ToolFailure(
                        "outcome unknown: the session ended before Claude Code said what "
                        "came of the call"
                    )
                )
        if ended:
            await asyncio.wait([allowed.task for allowed in ended])  # recorded on return

    async def permission(
        self, tool_name: str, tool_input: dict[str, Any], context: ToolPermissionContext
    ) -> PermissionResultAllow | PermissionResultDeny:
        """``can_use_tool``: allow exactly the decided input, or deny with the reason."""
        call = self.call(tool_name, tool_input, context.tool_use_id, context.agent_id)
        permitted: list[Action] = []

        def permit(action: Action) -> str:
            permitted.append(action)
            return "permitted; Claude Code runs the tool"

        result = await self.governor.run(call, permit)
        if result.status is ResultStatus.SUCCESS and permitted:
            decided = thaw(permitted[0].params)
            picked = self.picked(tool_name)
            if picked is not None:
                self.watches[picked].grant(decided)
            return PermissionResultAllow(updated_input=decided)
        return PermissionResultDeny(message=self.governor.refusal(call, result))


class Hooks(dict[str, list[HookMatcher]]):
    """The ``hooks=`` value :func:`hooks` gives, which closes with its session.

    A ``dict`` of hook matchers for ``ClaudeAgentOptions(hooks=...)``; close
    it when the session (the ``query()`` run, the ``ClaudeSDKClient``) is
    over, with :meth:`aclose` or ``async with``: every timer of its calls is
    cancelled (none fires later or keeps the loop busy), each call allowed
    and still unrecorded ends as failed, outcome unknown, and any call
    asked about afterwards is denied.

    Example::

        governed = hooks(runtime, target="billing", tools={"billing": [refund]})
        options = ClaudeAgentOptions(mcp_servers=servers, hooks=governed)
        async with governed, ClaudeSDKClient(options=options) as client:
            ...  # the client disconnects first, then the hooks close
    """

    def __init__(self, matchers: Mapping[str, list[HookMatcher]], gate: _Gate) -> None:
        super().__init__(matchers)
        self._gate = gate

    async def aclose(self) -> None:
        """End the session's open records (outcome unknown) and cancel every timer."""
        await self._gate.aclose()

    async def __aenter__(self) -> Hooks:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def hooks(
    runtime: Any,
    *,
    target: str = _FRAMEWORK,
    tools: Mapping[str, Iterable[Any]] | None = None,
    matcher: str | None = None,
    timeout: float | None = None,
    run_timeout: float = RUN_SECONDS,
    agent: str | None = None,
    on_block: OnBlock = "return",
) -> Hooks:
    """The hooks that put every tool call of a Claude Agent SDK run through Aegis.

    Args:
        runtime: the :class:`~aegis.runtime.engine.Runtime` that decides,
            approves and records.
        target: the action ``target`` of every call (the toolset's name).
        tools: the SDK ``@tool`` functions, whose descriptions go with
            their actions (shown to reviewers, part of what is approved),
            and whose runs are watched, as ``{server name: [its tools]}``
            with the names of ``mcp_servers=``: each is let run only by a
            decision on a call naming its own server (``mcp__SERVER__TOOL``).
            A list, or one tool given twice, is refused
            (``ConfigurationError``): a run does not name its server.
        matcher: the tools the hooks apply to (Claude Code's matcher
            syntax, e.g. ``"mcp__billing__.*"``); all tools by default.
        timeout: seconds Claude Code waits for the hook; keep it above the
            runtime's ``approval_timeout``.
        run_timeout: seconds a run of a watched tool may still be under way
            once its call's time to run (:data:`TICKET_SECONDS`) is over;
            past it the tool is taken to hang and the call's record ends as
            failed, outcome unknown.
        agent: the agent name recorded when the call names no subagent.
        on_block: ``"raise"`` makes a blocked call fail the hook (blocking
            the call) instead of answering with the reason.

    Returns:
        the ``hooks=`` value of ``ClaudeAgentOptions`` (merge it with your own),
        to close (:meth:`Hooks.aclose`, ``async with``) when the session ends.
    """
    gate = _Gate(runtime, target, tools, agent, on_block, timeout=timeout, run_timeout=run_timeout)

    def matched(hook: Any) -> list[HookMatcher]:
        return [HookMatcher(matcher=matcher, hooks=[hook], timeout=timeout, on_failure="block")]

    stop: Any = gate.stop

    matchers = {
        "PreToolUse": matched(gate.pre_tool_use),
        "PostToolUse": matched(gate.post_tool_use),
        "PostToolUseFailure": matched(gate.post_tool_use_failure),
        # Stop names no tool: it ends every call of the turn, whatever the matcher.
        "Stop": [HookMatcher(hooks=[stop], timeout=timeout)],
    }
    return Hooks(matchers, gate)


def can_use_tool(
    runtime: Any,
    *,
    target: str = _FRAMEWORK,
    tools: Mapping[str, Iterable[Any]] | None = None,
    agent: str | None = None,
    on_block: OnBlock = "return",
) -> Any:
    """The ``can_use_tool`` permission callback deciding through Aegis.

    Args: as :func:`hooks`.

    Returns:
        an async ``(tool_name, input, context) -> PermissionResult`` for
        ``ClaudeAgentOptions(can_use_tool=...)``.
    """
    return _Gate(runtime, target, tools, agent, on_block).permission


def _pre_tool_use(
    decision: str, reason: str, updated_input: dict[str, Any] | None = None
) -> dict[str, Any]:
    output: dict[str, Any] = {
        "hookEventName": "PreToolUse",
        "permissionDecision": decision,
        "permissionDecisionReason": reason,
    }
    if updated_input is not None:
        output["updatedInput"] = updated_input
    return {"hookSpecificOutput": output}


def _action_type(tool_name: str) -> str:
    """``mcp__SERVER__TOOL`` -> ``TOOL``; other names as they are."""
    return _server_and_tool(tool_name)[1]


def _server_and_tool(tool_name: str) -> tuple[str | None, str]:
    """``mcp__SERVER__TOOL`` -> ``(SERVER, TOOL)``; other names -> ``(None, name)``."""
    if tool_name.startswith("mcp__"):
        server_and_tool = tool_name[len("mcp__") :]
        if "__" in server_and_tool:
            server, tool = server_and_tool.split("__", 1)
            return server, tool
    return None, tool_name


def _listed(tools: Mapping[str, Iterable[Any]] | None) -> Iterable[tuple[str, Any]]:
    """``tools=`` (``{server name: [its tools]}``) as (MCP server, tool)."""
    if tools is None:
        return []
    if not isinstance(tools, Mapping):
        # A run names no server, and Claude Code calls a tool by its server: given
        # without one, a decision on another server's tool of that name would let
        # this one run.
        raise ConfigurationError(
            "tools= maps each MCP server name (as in mcp_servers=) to its @tool "
            f"functions, e.g. {{'billing': [refund]}}, got {type(tools).__name__}: "
            "Aegis lets a tool run only on a decision about a call to its own server"
        )
    listed: list[tuple[str, Any]] = []
    for server, its_tools in tools.items():
        if not isinstance(server, str) or not server or "__" in server:
            raise ConfigurationError(
                f"tools= maps MCP server names (as in mcp_servers=) to tools, got {server!r}"
            )
        if isinstance(its_tools, str | bytes | Mapping) or not isinstance(its_tools, Iterable):
            raise ConfigurationError(
                f"tools= maps each MCP server name to a list of its @tool functions, "
                f"got {type(its_tools).__name__} for {server!r}"
            )
        listed.extend((server, tool) for tool in its_tools)
    return listed


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
