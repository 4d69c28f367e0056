"""Approval handlers: who says yes or no to an action the policy marks ``approve``.

A handler answers one question, ``await handler.request_approval(decision)``,
with ``True`` (run it) or ``False`` (do not), or with an
:class:`~aegis.core.outcome.ApprovalOutcome` that also says who decided. A
handler that raises, or does not answer in time, counts as a denial: the
:class:`~aegis.runtime.engine.Runtime` fails closed and records why in the
audit trail.

Any callable ``f(decision) -> bool`` (sync or async) works as a handler too;
subclass :class:`ApprovalHandler` when you want a class.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import IO, Any, Protocol, runtime_checkable

from aegis.core.action import thaw
from aegis.core.decision import PolicyDecision
from aegis.core.outcome import ApprovalOutcome
from aegis.errors import ConfigurationError

__all__ = [
    "ApprovalHandler",
    "AutoApprovalHandler",
    "CLIApprovalHandler",
    "SuspendableApprovalHandler",
]

_YES = frozenset({"y", "yes"})
_NO = frozenset({"n", "no"})


class ApprovalHandler(ABC):
    """Base class for approval handlers.

    Example::

        class OnCallApprover(ApprovalHandler):
            async def request_approval(self, decision: PolicyDecision) -> bool:
                return await pager.ask(str(decision.action))
    """

    @abstractmethod
    async def request_approval(self, decision: PolicyDecision) -> bool | ApprovalOutcome:
        """Return ``True`` to let ``decision.action`` run, ``False`` to deny it.

        An :class:`~aegis.core.outcome.ApprovalOutcome` says the same and
        also who decided; the audit trail records it.

        Raising, or taking longer than the runtime's ``approval_timeout``,
        denies the action too.
        """


@runtime_checkable
class SuspendableApprovalHandler(Protocol):
    """An approval handler that can ask now and answer later, in another process.

    Framework integrations that suspend a run (LangGraph's ``interrupt()``,
    the Agents SDK's interruptions) call :meth:`submit_approval` when the run
    suspends, so that reviewers see the request while nobody waits, and
    :meth:`collect_approval` when it is resumed, possibly in another
    process. A handler without these methods is asked on resume instead.
    """

    async def submit_approval(
        self, decision: PolicyDecision, *, context: Mapping[str, Any] | None = None
    ) -> str:
        """Create an approval request for ``decision``; return its id."""

    async def collect_approval(
        self, request_id: str, decision: PolicyDecision
    ) -> bool | ApprovalOutcome:
        """Wait for the answer to request ``request_id`` about ``decision``."""


class AutoApprovalHandler(ApprovalHandler):
    """Approve every action without asking. For tests and demos only.

    With it, ``approve`` rules behave like ``auto`` rules; ``block`` rules
    still block, because blocked actions never reach a handler.
    """

    async def request_approval(self, decision: PolicyDecision) -> bool:
        """Approve ``decision`` unconditionally."""
        return True


def _printable(text: str) -> str:
    """``text`` with every control or format character shown as an escape.

    The agent writes these strings and a human trusts what the terminal
    shows: a newline could forge a "Risk: LOW" line, an ANSI sequence could
    erase or recolour one, a bidi override could reverse it.
    """
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )


def describe(decision: PolicyDecision) -> list[tuple[str, str]]:
    """The facts an approver needs, as (label, text) pairs in display order.

    Texts that come from the agent are made printable; the params are JSON
    with every non-ASCII character escaped, so nothing in them can act on
    the terminal either. The action's description is the agent's own claim,
    labelled and quoted as such (as ``aegis approvals`` and the inbox show it),
    never as a fact the runtime states.
    """
    action = decision.action
    rows = [("Action", _printable(action.type)), ("Target", _printable(action.target))]
    if action.params:
        rows.append(("Params", json.dumps(thaw(action.params), indent=2, default=repr)))
    if action.description:
        rows.append(("Agent wrote", f"\u201c{_printable(action.description)}\u201d"))
    rows.append(("Risk", decision.risk_level.name))
    rows.append(("Rule", _printable(decision.matched_rule) or "-"))
    why = decision.why
    if why is not None and why.description:
        rows.append(("Why", _printable(why.description)))
    if why is not None and why.conditions:
        rows.append(("Matched", "\n".join(_printable(c) for c in why.conditions)))
    if decision.reason:
        rows.append(("Reason", _printable(decision.reason)))
    return rows


class _LineReader:
    """Reads lines from a stream on a daemon thread, one request at a time.

    A daemon thread, not the event loop's default executor, because a read
    nobody answers must not keep the interpreter from exiting. A read that
    outlives its question (it timed out) stays pending; the line it
    eventually returns is stale and is discarded by the caller.
    """

    def __init__(self) -> None:
        self._pending: asyncio.Future[str] | None = None
        self._pending_question = 0

    def read(self, stream: IO[str], question: int) -> tuple[asyncio.Future[str], int]:
        """Return the future of the next line and the question it was read for."""
        loop = asyncio.get_running_loop()
        pending = self._pending
        if pending is not None:
            if not pending.done() and pending.get_loop() is loop:
                return pending, self._pending_question
            if pending.done() and not pending.cancelled():
                pending.exception()  # a stale answer: mark it seen, then drop it
        future: asyncio.Future[str] = loop.create_future()

        def deliver(line: str | None, exc: BaseException | None) -> None:
            if future.done():
                return
            if exc is not None:
                future.set_exception(exc)
            else:
                future.set_result(line or "")

        def work() -> None:
            line: str | None = None
            error: BaseException | None = None
            try:
                line = stream.readline()
                if not isinstance(line, str):  # a binary or broken stream: never an answer
                    raise TypeError(f"readline() gave {type(line).__name__}, not text")
            except BaseException as exc:  # any breakage denies; none may leave us waiting
                error = exc if isinstance(exc, Exception) else RuntimeError(repr(exc))
            # The loop may have ended while the person was away; nobody waits then.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(deliver, line, error)

        threading.Thread(target=work, name="aegis-approval-input", daemon=True).start()
        self._pending = future
        self._pending_question = question
        return future, question


class CLIApprovalHandler(ApprovalHandler):
    """Ask a person at the terminal to approve each action (the default).

    Shows the action's type, target, parameters, description, risk, the
    rule that asked for approval and why (the rule's description and the
    conditions that held, with their values), then reads ``y``/``yes`` or ``n``/``no``
    (any case); anything else is asked again. End of input (closed or
    piped-out stdin) raises ``EOFError`` and passing ``timeout`` seconds
    raises ``TimeoutError``: the runtime records both as denials with the
    reason. Reading happens on a thread, so other tasks keep running while
    the person thinks, and concurrent requests are asked one at a time.

    Args:
        timeout: seconds to wait for an answer; ``None`` waits forever.
        input_stream: where answers come from; ``sys.stdin`` by default.
        output_stream: where the prompt goes; ``sys.stdout`` by default.
    """

    def __init__(
        self,
        *,
        timeout: float | None = None,
        input_stream: IO[str] | None = None,
        output_stream: IO[str] | None = None,
    ) -> None:
        if timeout is not None and timeout <= 0:
            raise ConfigurationError(
                f"CLIApprovalHandler timeout must be a positive number of seconds, got {timeout!r}"
            )
        self.timeout = timeout
        self._input = input_stream
        self._output = output_stream
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None
        self._reader = _LineReader()
        self._questions = 0

    async def request_approval(self, decision: PolicyDecision) -> bool:
        """Show ``decision`` and wait for the person's y/n answer."""
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            # A lock belongs to one event loop; a handler may outlive several.
            self._lock, self._lock_loop = asyncio.Lock(), loop
        async with self._lock:
            self._questions += 1
            return await self._ask(decision, self._questions)

    async def _ask(self, decision: PolicyDecision, question: int) -> bool:
        # Streams are looked up per call so that redirections made after
        # construction (pytest's capture, a TUI) are honoured.
        stream_in = self._input if self._input is not None else sys.stdin
        out = self._output if self._output is not None else sys.stdout
        self._show(decision, out)
        loop = asyncio.get_running_loop()
        deadline = None if self.timeout is None else loop.time() + self.timeout
        prompt = "Approve this action? [y/n]: "
        while True:
            out.write(prompt)
            out.flush()
            line = await self._next_line(stream_in, question, deadline, out)
            if line == "":
                out.write("\nNo input (end of file): denied.\n")
                out.flush()
                raise EOFError("no answer: the approval input stream is closed")
            answer = line.strip().lower()
            if answer in _YES:
                return True
            if answer in _NO:
                return False
            prompt = f"Please answer y or n (got {line.strip()!r}): "

    async def _next_line(
        self, stream: IO[str], question: int, deadline: float | None, out: IO[str]
    ) -> str:
        loop = asyncio.get_running_loop()
        while True:
            future, asked_for = self._reader.read(stream, question)
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                remaining = 0
            # asyncio.wait, unlike wait_for, leaves the read running on timeout:
            # the thread cannot be interrupted, so its future must stay valid.
            done, _ = await asyncio.wait({future}, timeout=remaining)
            if not done:
                out.write(f"\nNo answer within {self.timeout:g}s: denied.\n")
                out.flush()
                raise TimeoutError(f"no answer within {self.timeout:g}s")
            try:
                line = future.result()
            except Exception as exc:  # whatever broke the stream, the answer is no
                raise EOFError(
                    f"no answer: the approval input stream cannot be read"
                    f" ({type(exc).__name__}: {exc})"
                ) from exc
            if asked_for == question:
                return line
            # Typed in reply to an earlier question that already timed out:
            # applying it here could approve something the person never saw.
            out.write("(That answer was for an earlier question; please answer again.)\n")
            out.flush()

    @staticmethod
    def _show(decision: PolicyDecision, out: IO[str]) -> None:
        rows = describe(decision)
        if out.isatty():
            _show_rich(rows, out)
            return
        lines = ["", "Approval required"]
        for label, text in rows:
            indented = text.replace("\n", "\n" + " " * 16)
            lines.append(f"  {label + ':':<14}{indented}")
        out.write("\n".join(lines) + "\n")
        out.flush()


def _show_rich(rows: list[tuple[str, str]], out: IO[str]) -> None:
    # Imported here: rich costs tens of milliseconds and only terminals need it.
    from rich.console import Console  # noqa: PLC0415  # deferred on purpose, see above
    from rich.panel import Panel  # noqa: PLC0415  # deferred on purpose, see above
    from rich.table import Table  # noqa: PLC0415  # deferred on purpose, see above
    from rich.text import Text  # noqa: PLC0415  # deferred on purpose, see above

    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    for label, text in rows:
        style: Any = "bold red" if label == "Risk" and text in ("HIGH", "CRITICAL") else None
        # Text, not a str: Rich would read "[...]" in the agent's words as markup.
        table.add_row(label, Text(text), style=style)
    Console(file=out).print(Panel(table, title="Approval required", expand=False))
