"""The executor interface: how an allowed action is actually carried out."""

from __future__ import annotations

from abc import ABC, abstractmethod

from aegis.core.action import Action
from aegis.core.result import Result, ResultStatus

__all__ = ["BaseExecutor", "ToolCallExecutor"]


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
