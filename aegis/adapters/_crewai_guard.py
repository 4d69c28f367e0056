"""The guard on governed CrewAI tools: a tool runs only the call Aegis decided, once.

Size: one module, because the ticket, the watch on a tool's attributes, the
guard in its class and the followed copies are one mechanism: each decides
through :func:`_claim`, and splitting them would only spread its state.

:mod:`aegis.adapters.crewai` decides each call in CrewAI's before-tool
hook, but CrewAI runs a tool's function itself, and some of its paths (and
any code holding the tool) run it without the hooks. So while ``govern()``
covers a tool, every function CrewAI can run for it is watched: ``func``
(a ``@tool`` function, or any callable field), ``_run`` and ``_arun``.
A watched function runs only when it is claimed by a :class:`Ticket`:

- the hook opens one ticket for each call it lets through, holding the
  arguments as the tool's function will receive them (the decided
  arguments, validated by the tool's schema as CrewAI does), and puts it in
  the *context* of the call (a :class:`contextvars.ContextVar`: CrewAI runs
  the hook and the tool in one thread, one asyncio task, or one copied
  context of its thread pool);
- a run claims the ticket of its own context, for its own tool, and only
  with exactly those arguments (same keys, same types, same values); a
  ticket allows one run (CrewAI's ReAct paths retry a tool that raised);
- a run that finds no ticket (another thread, a path without the hooks) or
  the wrong arguments raises without running. A run with the wrong
  arguments is named in its call's record; a run with no call behind it is
  recorded as blocked by the first govern() covering the tool.

A function of the tool called from within its own run (``Tool._run`` calls
``func``; a subclass's ``_run`` its parent's) runs as part of that run, but
only while that run is under way and only with exactly its decided arguments
(positional ones named by the function's signature): the mark of a run is
its ticket, not the tool. A task or thread the run starts inherits a copy of
its context, and with it the mark; running the tool with other arguments, or
after the run ended, it finds no decision and is refused and recorded as
blocked. (Started and awaited by the run, with exactly the decided
arguments, it runs as part of the run: the tool's own code chose to.) A
newer call of the same tool decided inside the run (a nested crew) claims
its own ticket. CrewAI's async ReAct path would run a sync function on an
executor thread, which does not carry the context: for a governed tool it
runs CrewAI's own ``invoke`` there through :func:`asyncio.to_thread`, which
does.

Two kinds of copies are followed. A structured tool (``CrewStructuredTool``)
holds its tool's ``_run`` as a bound method, taken when it was made; one
made before ``govern()`` would run the unwatched function, so its function
is watched when it first runs (CrewAI's ``CrewStructuredTool`` methods are
wrapped once, process-wide; for tools nothing covers they only pass the call
on). A copy of a tool (``model_copy``, ``copy.copy``, ``copy.deepcopy``)
gets its own watch, runs its own state, and is covered by the same
``govern()`` calls as the original. A function set on a governed tool
(``tool.func = other``) is watched as it is set (``BaseTool``'s copy
methods and ``__setattr__`` are wrapped once, process-wide, too).

A method of a tool bound before ``govern()`` (``run = tool._run``) holds
its class's function, not the tool's attribute. So every tool class's own
``_run`` and ``_arun`` are guarded in the class too, process-wide, from the
import of :mod:`aegis.adapters.crewai` on: the classes made by then, and
every class made later (``BaseTool.__init_subclass__``). For tools nothing
covers the guard only passes the call on, once it has asked whether a
``govern()`` claims the tool (:func:`claim_with`: a tool in a list
``govern()`` governs, added without Aegis seeing it); a claimed tool is
covered then, and its run refused. Each class's own ``run`` and ``arun``
ask too (``Tool.run`` calls ``func`` itself), and so does a structured
tool. What cannot be reached: a method bound before that import (it holds
the unguarded function), the plain function given to ``@tool`` (or a
``func`` read before govern()), which any holder can call as a Python
function, and a tool class whose ``_run`` is not a plain function.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import threading
from collections.abc import Callable
from contextvars import ContextVar
from types import FunctionType, MethodType
from typing import Any

from crewai.tools import BaseTool
from crewai.tools.structured_tool import CrewStructuredTool

from aegis.adapters._governance import _portal

#: the functions of a tool that CrewAI may run
_WATCHED_NAMES = ("func", "_run", "_arun")
#: on a watcher: the tool it watches
_OWNER = "_aegis_owner"

_log = logging.getLogger("aegis.adapters")
_lock = threading.RLock()
#: the govern() calls covering each tool, by its id (the tool is held, so the id stays its own)
_covering: dict[int, tuple[Any, list[Any]]] = {}
#: the allowed calls whose tool may run in this context
_decided: ContextVar[tuple[Ticket, ...]] = ContextVar("aegis_crewai_decided", default=())
#: the allowed calls whose claimed run was started in this context
_inside: ContextVar[tuple[Ticket, ...]] = ContextVar("aegis_crewai_inside", default=())
#: on a tool class's own ``_run`` / ``_arun``: it is the guarded one
_CLASS_GUARD = "_aegis_class_guard"
#: the govern() calls claiming a tool nothing covers yet (see :func:`claim_with`)
_claimants: Callable[[Any], list[Any]] | None = None


class Ticket:
    """One allowed call: its tool, the arguments it may run with, and what its run did."""

    __slots__ = ("active", "closed", "error", "expected", "ran", "refused", "started", "tool")

    def __init__(self, tool: Any, expected: dict[str, Any]) -> None:
        self.tool = tool
        #: the arguments the tool's function is to receive
        self.expected = expected
        #: the function was called for this call (once: a decision allows one run)
        self.started = False
        #: its one run is under way
        self.active = False
        #: the call is over (the after-hook ran): nothing runs for it any more
        self.closed = False
        #: the function returned for this call
        self.ran = False
        self.error: BaseException | None = None
        #: why a run for this call was refused without running, if one was
        self.refused: Exception | None = None


class NotDecided(Exception):
    """A governed tool run without CrewAI's tool-call hooks: no decision covers it."""


class NotRunAgain(Exception):
    """CrewAI tried to run a tool again for a call whose one allowed run is over."""


class ArgumentsChanged(Exception):
    """A governed tool run with arguments other than those Aegis decided."""


# ---------------------------------------------------------------- coverage


def cover(tool: Any, by: object) -> None:
    """Watch ``tool`` and count ``by`` (one govern() call) among those covering it."""
    watch(tool)
    with _lock:
        _, governors = _covering.setdefault(id(tool), (tool, []))
        if not any(g is by for g in governors):
            governors.append(by)


def release(by: object) -> None:
    """Uncount ``by`` from every tool it covered (ungovern())."""
    with _lock:
        for key, (_, governors) in list(_covering.items()):
            governors[:] = [g for g in governors if g is not by]
            if not governors:
                del _covering[key]


def covered(tool: Any) -> bool:
    """Whether any govern() call covers ``tool`` now."""
    entry = _covering.get(id(tool))
    return entry is not None and entry[0] is tool


def claim_with(claimants: Callable[[Any], list[Any]]) -> None:
    """Ask ``claimants`` which govern() calls claim a tool about to run uncovered.

    A tool can reach a list govern() governs without Aegis seeing it (a
    plain list given to govern(), a task's ``tools``); the first run of such
    a tool, on any path, asks: a tool claimed is covered then, before the
    run, which is refused without a decision.
    """
    global _claimants  # noqa: PLW0603  # one finder per process, set by aegis.adapters.crewai
    _claimants = claimants


def _claimed(tool: Any) -> bool:
    """Whether a govern() call claims the uncovered ``tool``; if one does, it is covered now."""
    claimants = _claimants
    if claimants is None:
        return False
    by = claimants(tool)
    for governor in by:
        cover(tool, governor)
    return bool(by)


# ---------------------------------------------------------------- tickets


def typed(tool: Any, arguments: dict[str, Any], *, mode: str = "json") -> dict[str, Any]:
    """``arguments`` as the tool's schema reads them (CrewAI validates them so before a run).

    In ``"json"`` mode, plain values to decide on; in ``"python"`` mode, what
    the tool's function receives. Arguments the schema refuses are kept as
    they are: CrewAI refuses them too, and nothing runs.
    """
    schema = getattr(tool, "args_schema", None)
    if not getattr(schema, "model_fields", None):
        return dict(arguments)
    try:
        return dict(schema.model_validate(arguments).model_dump(mode=mode))  # type: ignore[union-attr]
    except Exception:
        return dict(arguments)


def open_ticket(tool: Any, arguments: dict[str, Any]) -> Ticket:
    """Allow one run of ``tool`` with ``arguments``, in this context (the hook's call)."""
    ticket = Ticket(tool, typed(tool, arguments, mode="python"))
    _decided.set((*_decided.get(), ticket))
    return ticket


def close_ticket(ticket: Ticket) -> None:
    """The call is over: its ticket is no longer found by a run, in any context."""
    ticket.closed = True
    _decided.set(tuple(t for t in _decided.get() if t is not ticket))


def _claim(
    tool: Any, inner: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Ticket | None, Exception | None]:
    """The ticket this run of ``tool`` serves, and why it may not run (if it may not).

    In order: the newest open call of the tool not yet run, with exactly its
    arguments, is claimed; a run under way in this context, of this tool,
    with exactly its arguments, goes on (``Tool._run`` calling ``func``, a
    subclass's ``_run`` its parent's); a second run for a call whose run is
    over is refused as such (CrewAI's ReAct retry); anything else has no
    decision behind it. A copy of the context kept past the run (a task or
    thread the run started) finds the run over or the call closed, and other
    arguments are never part of a run.
    """
    mine = [t for t in _decided.get() if t.tool is tool and not t.closed]
    newest = mine[-1] if mine else None
    if newest is not None and not newest.started and not args and _same(kwargs, newest.expected):
        with _lock:
            if not newest.started:
                newest.started = True
                return newest, None
    given = _arguments(inner, args, kwargs)
    for run in reversed(_inside.get()):
        if run.tool is tool and run.active and not run.closed and _same(given, run.expected):
            return None, None  # part of that run
    if newest is not None and not newest.started:
        newest.refused = _changed(tool, newest.expected, args, kwargs)
        return None, newest.refused
    if newest is not None and not newest.active:
        return None, _again(newest)
    return None, _undecided(tool) if covered(tool) or _claimed(tool) else None


def _arguments(inner: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The arguments of a call of ``inner`` by name (``None`` when they cannot be named)."""
    if not args:
        return kwargs
    try:
        bound = inspect.signature(inner).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return None
    named: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = bound.signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                return None
        elif kind is inspect.Parameter.VAR_KEYWORD:
            named.update(value)
        else:
            named[name] = value
    return named


def _same(given: Any, expected: Any) -> bool:
    """Whether ``given`` is ``expected``: same types, same keys, same values, all the way down."""
    if type(given) is not type(expected):
        return False
    if isinstance(given, dict):
        return given.keys() == expected.keys() and all(
            _same(given[key], expected[key]) for key in given
        )
    if isinstance(given, list | tuple):
        return len(given) == len(expected) and all(map(_same, given, expected))
    try:
        return bool(given == expected)
    except Exception:  # a value that cannot say: not the same
        return False


# ---------------------------------------------------------------- the watch


def watch(tool: Any) -> None:
    """Put a watcher on each function CrewAI may run for ``tool`` (once each)."""
    with _lock:
        for name in _WATCHED_NAMES:
            current = getattr(tool, name, None)
            if not callable(current) or _owner(current) is tool:
                continue
            watched = _watcher(tool, _unwatched(tool, current))
            try:
                object.__setattr__(tool, name, watched)
            except (AttributeError, TypeError):  # a tool that takes no attributes
                return


def _owner(function: Any) -> Any:
    """The tool ``function`` watches, if it is a watcher."""
    if type(function) is FunctionType:
        return function.__dict__.get(_OWNER)
    return None


def _unwatched(tool: Any, function: Any) -> Any:
    """``function`` without watchers, bound to ``tool`` if it was a method of another tool.

    A copy of a watched tool holds the original's watchers, around methods
    bound to the original: the copy runs its own.
    """
    owner = None
    while _owner(function) is not None:
        owner = _owner(function)
        function = function.__wrapped__
    # The original's own method (a copy's watcher wraps it): the copy's instead.
    if owner is not None and owner is not tool and getattr(function, "__self__", None) is owner:
        return MethodType(function.__func__, tool)
    return function


def _watcher(tool: Any, inner: Any) -> Any:
    """``inner``, run only for a claimed ticket of ``tool`` (see the module's docstring)."""
    if asyncio.iscoroutinefunction(inner):

        async def watched_async(*args: Any, **kwargs: Any) -> Any:
            return await _guarded_async(tool, inner, args, kwargs)

        watched: Any = watched_async
    else:

        def watched_sync(*args: Any, **kwargs: Any) -> Any:
            return _guarded_sync(tool, inner, args, kwargs)

        watched = watched_sync
    watched.__wrapped__ = inner
    watched.__dict__[_OWNER] = tool
    return watched


async def _guarded_async(
    tool: Any, inner: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Run the coroutine function ``inner`` of ``tool`` if a decision covers the run."""
    ticket, refusal = _claim(tool, inner, args, kwargs)
    if refusal is not None:
        await _recorded(tool, args, kwargs, refusal)
        raise refusal
    if ticket is None:
        return await inner(*args, **kwargs)
    return await _awaited(ticket, inner(*args, **kwargs))


def _guarded_sync(tool: Any, inner: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run the function ``inner`` of ``tool`` if a decision covers the run."""
    ticket, refusal = _claim(tool, inner, args, kwargs)
    if refusal is not None:
        _recorded_sync(tool, args, kwargs, refusal)
        raise refusal
    if ticket is None:
        return inner(*args, **kwargs)
    outer = _inside.get()
    _inside.set((*outer, ticket))
    ticket.active = True
    result: Any = None
    try:
        result = inner(*args, **kwargs)
    except Exception as exc:
        ticket.error = exc
        raise
    finally:
        _inside.set(outer)
        # A coroutine returned is the run still to come (_awaited runs it).
        ticket.active = asyncio.iscoroutine(result)
    if asyncio.iscoroutine(result):
        return _awaited(ticket, result)
    ticket.ran = True
    return result


async def _awaited(ticket: Ticket, work: Any) -> Any:
    """Await a claimed run's coroutine, as part of the tool's run, noting what it did."""
    outer = _inside.get()
    _inside.set((*outer, ticket))
    ticket.active = True
    try:
        result = await work
    except Exception as exc:
        ticket.error = exc
        raise
    finally:
        _inside.set(outer)
        ticket.active = False
    ticket.ran = True
    return result


def _record(tool: Any, args: tuple[Any, ...], kwargs: dict[str, Any], refusal: Exception) -> Any:
    """The work of recording a refused run no decision covers (``None`` for other refusals).

    A refusal within an allowed call is in that call's record; a run with no
    call behind it is recorded as blocked by the first govern() covering the
    tool (its ``undecided``), with the arguments it was run with.
    """
    if not isinstance(refusal, NotDecided):
        return None
    with _lock:
        governors = list(_covering.get(id(tool), (None, []))[1])
    if not governors:
        return None
    params = {"positional": list(args), **kwargs} if args else dict(kwargs)
    return governors[0].undecided(tool, params, str(refusal))


def _recorded_sync(
    tool: Any, args: tuple[Any, ...], kwargs: dict[str, Any], refusal: Exception
) -> None:
    """Record a refused run from synchronous code (it stays refused if it cannot be recorded)."""
    work = _record(tool, args, kwargs, refusal)
    if work is None:
        return
    try:
        _portal.call(work)
    except Exception:
        _log.exception("could not record a refused run of %s", _name(tool))


async def _recorded(
    tool: Any, args: tuple[Any, ...], kwargs: dict[str, Any], refusal: Exception
) -> None:
    """Record a refused run from async code, on Aegis's loop (it stays refused regardless)."""
    work = _record(tool, args, kwargs, refusal)
    if work is None:
        return
    try:
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, _portal.loop()))
    except Exception:
        _log.exception("could not record a refused run of %s", _name(tool))


# ---------------------------------------------------------------- copies


def install() -> None:
    """Follow tool classes, structured tools and copies of tools (once per process)."""
    with _lock:
        if CrewStructuredTool.__dict__.get("_aegis_guarded"):
            return
        _follow_tool_classes()
        _follow_structured_tools()
        _follow_copies()
        type.__setattr__(CrewStructuredTool, "_aegis_guarded", True)


def _follow_tool_classes() -> None:
    """Guard the ``_run`` and ``_arun`` of every tool class, made already or from now on.

    A method of a tool bound before govern() holds its class's function; a
    class's own guarded function lets a bound method be watched like the
    tool's attribute. Methods bound before this ran hold the unguarded one.
    """
    pending = list(BaseTool.__subclasses__())
    seen: set[type] = set()
    while pending:
        cls = pending.pop()
        if cls in seen:
            continue
        seen.add(cls)
        _guard_class(cls)
        pending.extend(cls.__subclasses__())
    made = BaseTool.__dict__.get("__init_subclass__")

    def guarded_init_subclass(cls: type, /, **kwargs: Any) -> None:
        if isinstance(made, classmethod):
            made.__func__(cls, **kwargs)
        else:
            super(BaseTool, cls).__init_subclass__(**kwargs)
        _guard_class(cls)

    type.__setattr__(BaseTool, "__init_subclass__", classmethod(guarded_init_subclass))


def _guard_class(cls: type) -> None:
    """Put the guard on the class's own ``_run`` and ``_arun``, and ``run``/``arun`` (once each).

    ``run`` and ``arun`` only cover a tool a govern() call claims before they
    go on (``Tool.run`` calls ``func`` itself, not ``_run``).
    """
    for name in ("_run", "_arun", "run", "arun"):
        function = cls.__dict__.get(name)
        if type(function) is not FunctionType or function.__dict__.get(_CLASS_GUARD):
            continue
        if getattr(function, "__isabstractmethod__", False):
            continue
        wrap = _class_guard if name.startswith("_") else _class_claim
        type.__setattr__(cls, name, wrap(function))


def _class_claim(function: Any) -> Any:
    """A tool class's ``run`` or ``arun``, covering the tool first if a govern() call claims it."""
    if asyncio.iscoroutinefunction(function):

        @functools.wraps(function)
        async def claiming_async(self: Any, *args: Any, **kwargs: Any) -> Any:
            if id(self) not in _covering:
                _claimed(self)
            return await function(self, *args, **kwargs)

        claiming: Any = claiming_async
    else:

        @functools.wraps(function)
        def claiming_sync(self: Any, *args: Any, **kwargs: Any) -> Any:
            if id(self) not in _covering:
                _claimed(self)
            return function(self, *args, **kwargs)

        claiming = claiming_sync
    claiming.__dict__[_CLASS_GUARD] = True
    return claiming


def _class_guard(function: Any) -> Any:
    """A tool class's ``function``, run for a tool only if a decision covers the run."""
    if asyncio.iscoroutinefunction(function):

        @functools.wraps(function)
        async def guarded_async(self: Any, *args: Any, **kwargs: Any) -> Any:
            if _free(self):
                return await function(self, *args, **kwargs)
            return await _guarded_async(self, MethodType(function, self), args, kwargs)

        guarded: Any = guarded_async
    else:

        @functools.wraps(function)
        def guarded_sync(self: Any, *args: Any, **kwargs: Any) -> Any:
            if _free(self):
                return function(self, *args, **kwargs)
            return _guarded_sync(self, MethodType(function, self), args, kwargs)

        guarded = guarded_sync
    guarded.__dict__[_CLASS_GUARD] = True
    return guarded


def _free(tool: Any) -> bool:
    """Nothing covers or claims ``tool`` and no call is open here: the guard has nothing to do."""
    if id(tool) in _covering or _decided.get() or _inside.get():
        return False
    return not _claimed(tool)


def _adopt(structured: Any) -> Any:
    """The governed tool ``structured`` runs, with its function watched; ``None`` if none.

    A structured tool made before govern() holds the tool's unwatched
    ``_run``, bound when it was made.
    """
    function = getattr(structured, "func", None)
    owner = _owner(function)
    if owner is None:
        bound = getattr(function, "__self__", None)
        if not isinstance(bound, BaseTool) or not (covered(bound) or _claimed(bound)):
            return None
        with _lock:
            if _owner(structured.func) is None:
                object.__setattr__(structured, "func", _watcher(bound, structured.func))
        owner = bound
    return owner if covered(owner) else None


def _follow_structured_tools() -> None:
    cls = CrewStructuredTool
    invoke, ainvoke, legacy_run = cls.invoke, cls.ainvoke, cls._run

    def guarded_invoke(self: Any, input: Any, config: Any = None, **kwargs: Any) -> Any:
        _adopt(self)
        return invoke(self, input, config, **kwargs)

    async def guarded_ainvoke(self: Any, input: Any, config: Any = None, **kwargs: Any) -> Any:
        if _adopt(self) is not None and not asyncio.iscoroutinefunction(self.func):
            # CrewAI would run it on an executor thread without this context.
            return await asyncio.to_thread(self.invoke, input, config, **kwargs)
        return await ainvoke(self, input, config, **kwargs)

    def guarded_run(self: Any, *args: Any, **kwargs: Any) -> Any:
        _adopt(self)
        return legacy_run(self, *args, **kwargs)

    type.__setattr__(cls, "invoke", guarded_invoke)
    type.__setattr__(cls, "ainvoke", guarded_ainvoke)
    type.__setattr__(cls, "_run", guarded_run)


def _follow_copies() -> None:
    """Copies of a tool get their own watch; a function set on a governed tool is watched."""
    copy_, deepcopy, model_copy = BaseTool.__copy__, BaseTool.__deepcopy__, BaseTool.model_copy
    setattr_ = BaseTool.__setattr__

    def guarded_copy(self: Any) -> Any:
        return _copied(self, copy_(self))

    def guarded_deepcopy(self: Any, memo: Any = None) -> Any:
        return _copied(self, deepcopy(self, memo))

    def guarded_model_copy(self: Any, *args: Any, **kwargs: Any) -> Any:
        copied = model_copy(self, *args, **kwargs)
        if covered(copied):
            watch(copied)  # an ``update`` may have set a function of its own
        return copied

    def guarded_setattr(self: Any, name: str, value: Any) -> None:
        setattr_(self, name, value)
        if name in _WATCHED_NAMES and covered(self):
            watch(self)  # a function put on a governed tool is watched at once

    type.__setattr__(BaseTool, "__setattr__", guarded_setattr)
    type.__setattr__(BaseTool, "__copy__", guarded_copy)
    type.__setattr__(BaseTool, "__deepcopy__", guarded_deepcopy)
    type.__setattr__(BaseTool, "model_copy", guarded_model_copy)


def _copied(original: Any, copied: Any) -> Any:
    """Give ``copied`` its own functions back, and the original's coverage."""
    held = getattr(copied, "__dict__", None)
    if copied is original or not isinstance(held, dict):
        return copied
    fields = getattr(type(copied), "model_fields", {})
    for name in _WATCHED_NAMES:
        if _owner(held.get(name)) is None:
            continue
        if name in fields:
            held[name] = _unwatched(copied, held[name])
        else:
            del held[name]  # the class's own method again, bound to the copy
    with _lock:
        governors = list(_covering.get(id(original), (None, []))[1])
    for by in governors:
        cover(copied, by)
    return copied


# ---------------------------------------------------------------- refusals


def _name(tool: Any) -> str:
    return str(getattr(tool, "name", None) or type(tool).__name__)


def _undecided(tool: Any) -> NotDecided:
    """The refusal of a run of a governed tool that no decision covers."""
    return NotDecided(
        f"not run: Aegis governs the CrewAI tool {_name(tool)!r}, and it was run without "
        "CrewAI's tool-call hooks, so no decision covers this run; let a governed agent "
        "call it, or ungovern() what covers it"
    )


def _again(ticket: Ticket) -> NotRunAgain:
    """The refusal of a second run for one allowed call (CrewAI's ReAct retry)."""
    first = ticket.error
    ended = f"it raised {type(first).__name__}: {first}" if first is not None else "it ran"
    refusal = NotRunAgain(
        f"not run again: Aegis allowed this call one run of the tool, and {ended}; "
        "call the tool again to retry (a new call is decided on its own)"
    )
    refusal.__cause__ = first
    return refusal


def _changed(
    tool: Any, expected: dict[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> ArgumentsChanged:
    """The refusal of a run whose arguments are not those Aegis decided for the call."""
    given = f"{list(args)!r} and {kwargs!r}" if args else repr(kwargs)
    return ArgumentsChanged(
        f"not run: Aegis decided this call of {_name(tool)!r} with the arguments "
        f"{expected!r}, and the tool was to run with {given}"
    )
