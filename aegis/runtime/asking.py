"""Asking the approval handler: any handler as one function, and its answer failing closed.

:func:`approval_function` reads whatever was given as ``approval_handler``
(an :class:`~aegis.runtime.approval.ApprovalHandler`, a duck-typed object
with ``request_approval``, or a plain function of the decision).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aegis.core.decision import PolicyDecision
from aegis.errors import ConfigurationError
from aegis.runtime.approval import ApprovalHandler
from aegis.runtime.approval_callback import CallbackApprovalHandler

__all__ = ["approval_function"]


def approval_function(handler: object) -> Callable[[PolicyDecision], Any]:
    """The function to call with a decision to ask ``handler`` (sync or async, as it is).

    Raises:
        ConfigurationError: ``handler`` is neither a handler nor a function.
    """
    # Returned as is: the approve step runs a sync one on a worker thread.
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
