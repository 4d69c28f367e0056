"""Asking the approval handler, once, failing closed: every answer an ApprovalOutcome.

The runtime's approve step and the framework integrations ask through
:func:`ask`, so that what counts as a yes is decided in one place:

- ``True``, or an :class:`~aegis.core.outcome.ApprovalOutcome` that approves,
  is a yes for the action whose digest it carries (the asked action's when
  it names none);
- ``False``, an outcome that does not approve, anything else the handler
  returns, an exception it raises, and no answer within the timeout are a
  no, with the reason in the outcome (``"error: ..."``, ``"timeout: ..."``:
  the audit trail reads ``"denied: timeout: no answer within 30s"``).

:func:`approval_function` reads whatever was given as ``approval_handler``
(an :class:`~aegis.runtime.approval.ApprovalHandler`, a duck-typed object
with ``request_approval``, or a plain function of the decision);
:func:`explained` gives the copy of a decision a person is asked about, with
why they are asked.
"""

from __future__ import annotations

import copy
from asyncio import CancelledError
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from aegis.core.decision import PolicyDecision
from aegis.core.explain import safe_why
from aegis.core.outcome import ApprovalOutcome
from aegis.errors import ConfigurationError
from aegis.runtime._calls import call_with_deadline, cancel_requested
from aegis.runtime.approval import ApprovalHandler
from aegis.runtime.approval_callback import CallbackApprovalHandler

__all__ = [
    "approval_function",
    "ask",
    "bind_answer",
    "denial_text",
    "describe",
    "explained",
    "refused",
]

_TIMEOUT = "timeout: "


def explained(
    policy: object, decision: PolicyDecision, earlier: tuple[str, ...] = ()
) -> PolicyDecision:
    """A copy of ``decision`` carrying :func:`~aegis.core.explain.why` it needs a person.

    Called only where a person is about to be asked (the approve step, a
    suspended run's request), never on the per-action path. A decision that
    carries its ``why`` already keeps it. ``earlier``: lines naming the
    earlier actions a flow rule found (see
    :meth:`~aegis.runtime.metering.MeteringStep.earlier`), shown after the
    conditions.
    """
    if decision.why is not None:
        return replace(decision)
    why = safe_why(policy, decision)
    if earlier:
        why = replace(why, conditions=(*why.conditions, *earlier))
    if type(decision) is PolicyDecision:
        # Speed (benchmarks/calls.py, "approve"): the copy replace() makes, without
        # its per-field checks; a decision has no __post_init__ to skip.
        view: PolicyDecision = _new(PolicyDecision)
        fields = view.__dict__
        fields.update(decision.__dict__)
        fields["why"] = why
        return view
    return replace(decision, why=why)


_new = object.__new__


def approval_function(handler: object) -> Callable[[PolicyDecision], Any]:
    """The function to call with a decision to ask ``handler`` (sync or async, as it is).

    Raises:
        ConfigurationError: ``handler`` is neither a handler nor a function.
    """
    # Returned as is: ask() runs a sync one on a worker thread.
    if isinstance(handler, ApprovalHandler):
        return handler.request_approval
    request = getattr(handler, "request_approval", None)
    if callable(request) and not isinstance(handler, type):
        return request  # type: ignore[no-any-return]  # duck-typed handlers welcome
    if callable(handler) and not isinstance(handler, type):
        return CallbackApprovalHandler(handler).request_approval
    raise ConfigurationError(
        f"approval_handler must be an ApprovalHandler or a function of the decision "
        f"returning True/False, got {type(handler).__name__}; e.g. "
        "CallbackApprovalHandler(callback=lambda d: d.risk_level.value <= 2)"
    )


async def ask(
    handler: Callable[..., Any],
    decision: PolicyDecision,
    *,
    timeout: float | None,
    digest: str,
    request_id: str | None = None,
    copied: bool = False,
    is_async: bool | None = None,
) -> ApprovalOutcome:
    """Ask ``handler`` about ``decision``; its answer as an outcome bound to ``digest``.

    ``handler`` is called with a copy of ``decision`` (whatever it does to
    it, the caller goes on with its own; ``copied``: ``decision`` is such a
    copy already, e.g. from :func:`explained`), or, with ``request_id``, as
    ``handler(request_id, decision)`` (a suspendable handler's
    ``collect_approval``). A synchronous handler runs on a worker thread and
    ``timeout`` holds for every handler, one that ignores cancellation
    included. ``is_async``: whether ``handler`` is ``async``, when the caller
    knows. Never raises an ``Exception``: a failure is a refusal, and so is
    a ``CancelledError`` when nothing cancelled the caller (the handler's own).
    """
    view = decision if copied else copy.copy(decision)
    args = (view,) if request_id is None else (request_id, view)
    try:
        answer = await call_with_deadline(
            handler, args, timeout, "the approval handler", is_async=is_async
        )
    except TimeoutError as exc:  # ours (Deadline) or the handler's own
        why = _message(exc) or "the approval handler raised TimeoutError"
        return refused(_TIMEOUT + why, digest=digest, request_id=request_id)
    except Exception as exc:  # fail closed: a broken handler must not approve
        return refused(f"error: {describe(exc)}", digest=digest, request_id=request_id)
    except CancelledError as exc:
        if cancel_requested():  # the caller's cancellation goes on
            raise
        # The handler's own (nothing cancelled the caller): a broken handler.
        return refused(f"error: {describe(exc)}", digest=digest, request_id=request_id)
    return bind_answer(answer, digest)


def describe(exc: BaseException) -> str:
    """``"Type: message"`` of ``exc`` (just the type when it has no message); never raises.

    An exception whose ``__str__`` raises is named by its type alone, with a
    word saying why: reading it must not turn a failure into a crash of the
    runtime, nor lose the action's record.
    """
    name = type(exc).__name__
    text = _message(exc)
    if text is None:
        return f"{name} (its message could not be read)"
    return f"{name}: {text}" if text else name


def _message(exc: BaseException) -> str | None:
    """``str(exc)``, or ``None`` when its ``__str__`` raises."""
    try:
        return str(exc)
    except Exception:  # its own __str__ is broken
        return None


def bind_answer(answer: object, digest: str) -> ApprovalOutcome:
    """A handler's answer as an ApprovalOutcome bound to ``digest``.

    An outcome that names its own digest keeps it: if that is not the
    digest of the action about to run, the runtime refuses to run it.
    """
    if isinstance(answer, ApprovalOutcome):
        return answer if answer.digest is not None else replace(answer, digest=digest)
    if answer is True:
        return ApprovalOutcome(True, digest=digest)
    if answer is False:
        return ApprovalOutcome(False, digest=digest)
    return refused(f"error: approval handler returned {answer!r}, not True or False", digest=digest)


def refused(
    reason: str, *, digest: str | None = None, request_id: str | None = None
) -> ApprovalOutcome:
    """A refusal no reviewer gave; ``reason`` says why (``"error: ..."``, ``"timeout: ..."``)."""
    return ApprovalOutcome(False, reason=reason, request_id=request_id, digest=digest)


def denial_text(outcome: ApprovalOutcome) -> str:
    """What a refused action's Result says: who refused and why, for the agent and its user.

    ``"denied by carol: not today"``, ``"approval timed out (no answer
    within 30s)"``, ``"denied: error: ConnectionError: pager down"``; the
    audit trail keeps the outcome's own
    :meth:`~aegis.core.outcome.ApprovalOutcome.human_decision`.
    """
    why = outcome.reason or outcome.comment
    if outcome.reviewers:
        who = "denied by " + ", ".join(outcome.reviewers)
        return f"{who}: {why}" if why else who
    if not why:
        return "denied by the approver"
    if why.startswith(_TIMEOUT):
        return f"approval timed out ({why.removeprefix(_TIMEOUT)})"
    return f"denied: {why}"
