"""One call's own executor and settled approval, for framework integrations.

A framework integration governs the framework's tools: when the model
calls a tool, the integration hands the call to :meth:`Runtime.run_one`
as an :class:`~aegis.core.action.Action`, and the runtime decides,
approves, executes and records it as it does any action. Two things
differ from an ordinary action, and this module carries them to the
runtime without changing its signatures:

- the executor is the framework's tool itself, not the runtime's executor;
- an approval may already have been given while the run was suspended
  (the framework paused, a reviewer answered, the run resumed, possibly in
  another process). The runtime then uses that answer instead of asking its
  handler again, through the same checks as a fresh one: an
  :class:`~aegis.core.outcome.ApprovalOutcome` whose digest is not the
  digest of the action about to run is refused.

A binding applies only to the action it names (the same object, or one
with the same digest), so a tool that itself calls ``run_one`` for another
action gets the runtime's ordinary executor and approval handler.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from aegis.core.action import Action, action_digest
from aegis.core.outcome import ApprovalOutcome

__all__ = ["CallBinding", "binding_for", "bound_call"]


@dataclass(frozen=True, slots=True)
class CallBinding:
    """What one governed tool call brings to the runtime.

    Args:
        action: the action the binding is for.
        execute: runs the action instead of the runtime's executor; it
            receives the action the runtime decided (sync or async).
        answer: an approval answer obtained earlier, used instead of asking
            the approval handler; ``None`` asks the handler as usual.
    """

    action: Action
    execute: Callable[[Action], Any]
    answer: ApprovalOutcome | None = None


_current: ContextVar[CallBinding | None] = ContextVar("aegis_call_binding", default=None)


@contextmanager
def bound_call(binding: CallBinding) -> Iterator[None]:
    """Run the block with ``binding`` applying to its action."""
    token = _current.set(binding)
    try:
        yield
    finally:
        _current.reset(token)


def binding_for(action: Action) -> CallBinding | None:
    """The binding of the current context if it is for ``action``, else ``None``."""
    binding = _current.get()
    if binding is None:
        return None
    if binding.action is action or action_digest(binding.action) == action_digest(action):
        return binding
    return None
