"""The executor interface: how an allowed action is actually carried out."""

from __future__ import annotations

from abc import ABC, abstractmethod

from aegis.core.action import Action
from aegis.core.result import Result

__all__ = ["BaseExecutor"]


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
