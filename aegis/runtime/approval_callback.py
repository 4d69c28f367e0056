"""Approve actions from code: a handler that asks a function of yours."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aegis.core.decision import PolicyDecision
from aegis.core.outcome import ApprovalOutcome
from aegis.errors import ConfigurationError
from aegis.runtime._calls import call_with_deadline, is_async_callable
from aegis.runtime.approval import ApprovalHandler

__all__ = ["ApprovalCallback", "CallbackApprovalHandler"]

#: a function that decides, given the policy's decision; it may be async
ApprovalCallback = Callable[
    [PolicyDecision], "bool | ApprovalOutcome | Awaitable[bool | ApprovalOutcome]"
]


class CallbackApprovalHandler(ApprovalHandler):
    """Ask ``callback(decision)`` whether an action may run.

    The callback may be a plain function (run on a worker thread, so that
    it never blocks the event loop) or an ``async`` one, and must return a
    ``bool`` (or an :class:`~aegis.core.outcome.ApprovalOutcome`). Anything
    else, or an exception, denies the action: the runtime fails closed and
    records why.

    Example::

        # approve LOW and MEDIUM risk, deny HIGH and CRITICAL
        handler = CallbackApprovalHandler(callback=lambda d: d.risk_level.value <= 2)
    """

    def __init__(self, callback: ApprovalCallback) -> None:
        if not callable(callback):
            raise ConfigurationError(
                f"CallbackApprovalHandler needs a callable, got {type(callback).__name__}; "
                "pass a function such as `lambda decision: decision.risk_level.value <= 2`"
            )
        self.callback = callback
        # the callback whose asyncness is known, and that asyncness
        self._known: tuple[object, bool] = (callback, is_async_callable(callback))

    async def request_approval(self, decision: PolicyDecision) -> bool | ApprovalOutcome:
        """Return the callback's answer for ``decision``, awaiting it if needed."""
        callback = self.callback
        # (a subclass that sets callback without our __init__ has no _known)
        known, is_async = getattr(self, "_known", (None, False))
        if known is not callback:  # replaced since: look again
            is_async = is_async_callable(callback)
            self._known = (callback, is_async)
        # A plain function runs on a worker thread: a slow or hanging one
        # must not block the event loop, nor outlive the runtime's timeout.
        answer = await call_with_deadline(
            callback, (decision,), None, "the approval callback", is_async=is_async
        )
        if not isinstance(answer, bool | ApprovalOutcome):
            # Fail closed: a truthy string or a forgotten `return` must not approve.
            raise TypeError(
                f"approval callback {_name(self.callback)} returned "
                f"{type(answer).__name__} {answer!r}; it must return True or False"
            )
        return answer


def _name(callback: object) -> str:
    return getattr(callback, "__qualname__", None) or type(callback).__name__
