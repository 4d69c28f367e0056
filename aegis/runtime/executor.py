"""The executor interface: how an allowed action is actually carried out.

:class:`BaseExecutor` is the base class of executors, :class:`ToolCallExecutor`
the executor of a runtime that only governs a framework's own tools, and
:func:`executor_hooks` how the runtime reads any executor it is given (a
subclass, a duck-typed object, or a plain function). They live in the runtime
layer because the runtime calls them; :mod:`aegis.adapters.base` re-exports
the two classes under the import path of the seed.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Any

from aegis.core.action import Action
from aegis.core.result import Result, ResultStatus
from aegis.errors import ConfigurationError

__all__ = ["BaseExecutor", "Executor", "Hook", "ToolCallExecutor", "executor_hooks"]


class BaseExecutor(ABC):
    """Base class for executors.

    Subclass it and implement :meth:`execute`; override :meth:`setup` and
    :meth:`teardown` when the executor holds resources. A plain
    ``async def f(action)`` works as an executor too.

    Example::

        class CRMExecutor(BaseExecutor):
            async def execute(self, action: Action) -> Result:
                row = await crm.get(action.params["id"])
                return Result(action, ResultStatus.SUCCESS, data=row)
    """

    @abstractmethod
    async def execute(self, action: Action) -> Result:
        """Carry out ``action`` and report what happened."""

    async def setup(self) -> None:  # noqa: B027  # optional hook, empty on purpose
        """Acquire resources; called once when the runtime starts."""

    async def teardown(self) -> None:  # noqa: B027  # optional hook, empty on purpose
        """Release resources; called once when the runtime stops."""


class ToolCallExecutor(BaseExecutor):
    """The executor of a runtime that governs an agent framework's tools.

    With the framework integrations (:mod:`aegis.adapters.langchain`,
    :mod:`aegis.adapters.openai_agents`, :mod:`aegis.adapters.anthropic`)
    each tool call runs the framework's own tool, so the runtime needs no
    executor of its own. This one is for that case: an action sent to the
    runtime directly (``run_one`` outside an integration) is not run; it
    ends ``FAILED`` with a message saying so.

    Example::

        runtime = Runtime(executor=ToolCallExecutor(), policy=policy)
        agent = govern(Agent(name="support", tools=[refund]), runtime)
    """

    async def execute(self, action: Action) -> Result:
        """Refuse ``action``: only a governed tool call carries its own tool."""
        return Result(
            action,
            ResultStatus.FAILED,
            error=f"{action.type} -> {action.target} has no tool to run: this runtime's "
            "ToolCallExecutor runs only the tool calls of a framework integration",
        )


#: an executor: a BaseExecutor, or a function of the action (sync or async)
Executor = BaseExecutor | Callable[[Action], Any]
#: an executor's ``setup`` or ``teardown``, as an async function, if it has one
Hook = Callable[[], Awaitable[None]] | None


def executor_hooks(executor: object) -> tuple[Callable[[Action], Any], Hook, Hook]:
    """The executor's action function and its setup/teardown hooks, if any.

    Raises:
        ConfigurationError: ``executor`` is neither an executor nor a function
            (a class passed instead of an instance is named as such).
    """
    if isinstance(executor, BaseExecutor):
        return executor.execute, executor.setup, executor.teardown
    execute = getattr(executor, "execute", None)
    if callable(execute) and not isinstance(executor, type):
        # Duck-typed executor (same shape as BaseExecutor, not a subclass).
        return execute, _hook(executor, "setup"), _hook(executor, "teardown")
    if callable(executor) and not isinstance(executor, type):
        return executor, None, None
    hint = ""
    if isinstance(executor, type):
        hint = (
            f" (you passed the class {executor.__name__}; pass an instance: {executor.__name__}())"
        )
    raise ConfigurationError(
        f"executor must be a BaseExecutor or a function taking an Action, got "
        f"{type(executor).__name__}{hint}; e.g. `async def execute(action): ...` or a "
        "subclass of aegis.adapters.base.BaseExecutor"
    )


def _hook(obj: object, name: str) -> Hook:
    fn = getattr(obj, name, None)
    if fn is None:
        return None
    if not callable(fn):
        raise ConfigurationError(f"executor.{name} must be a method, got {type(fn).__name__}")
    return _awaiting(fn)


def _awaiting(fn: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    """``fn`` as an async function, whether it is one already or not."""

    async def call(*args: Any) -> Any:
        out = fn(*args)
        return await out if inspect.isawaitable(out) else out

    return call
