"""Helpers for testing your own agents under Aegis.

Swap the real executor, audit trail and approver for in-memory stand-ins
that record what happened, then assert on them::

    from aegis.testing import InMemoryAuditLog, RecordingExecutor, ScriptedApprovalHandler

    async def test_agent_never_deletes_without_approval() -> None:
        executor = RecordingExecutor()
        audit = InMemoryAuditLog()
        approver = ScriptedApprovalHandler([False])
        runtime = Runtime(executor=executor, policy=policy,
                          approval_handler=approver, audit_logger=audit)
        await my_agent(runtime)
        assert [a.type for a in executor.actions] == ["read"]
        assert audit.count(result_status="denied") == 1
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from aegis.adapters.base import BaseExecutor
from aegis.core.action import Action
from aegis.core.decision import PolicyDecision
from aegis.core.result import Result, ResultStatus
from aegis.runtime.approval import ApprovalHandler
from aegis.runtime.audit import AuditLogger
from aegis.stores.memory import MemoryStore

__all__ = ["InMemoryAuditLog", "RecordingExecutor", "ScriptedApprovalHandler"]


class RecordingExecutor(BaseExecutor):
    """An executor that records every action it receives and runs none.

    Args:
        responses: per action type, what to answer: a :class:`Result`, a
            function ``f(action)`` returning a Result or data, or plain data
            (returned as ``SUCCESS`` data).
        failures: per action type, an exception (instance or class) to raise,
            or a message to raise as ``RuntimeError``.
        default: the data of a ``SUCCESS`` for action types not listed.

    Example::

        executor = RecordingExecutor(
            responses={"read": [{"id": 1}]},
            failures={"delete": PermissionError("read-only replica")},
        )
        ...
        assert executor.types == ["read", "delete"]
    """

    def __init__(
        self,
        *,
        responses: Mapping[str, Any] | None = None,
        failures: Mapping[str, BaseException | type[BaseException] | str] | None = None,
        default: Any = None,
    ) -> None:
        self.responses = dict(responses or {})
        self.failures = dict(failures or {})
        self.default = default
        #: every action received, in order
        self.actions: list[Action] = []
        #: how many times setup() and teardown() ran
        self.setup_calls = 0
        self.teardown_calls = 0

    @property
    def types(self) -> list[str]:
        """The types of the received actions, in order."""
        return [a.type for a in self.actions]

    async def setup(self) -> None:
        """Count the call."""
        self.setup_calls += 1

    async def teardown(self) -> None:
        """Count the call."""
        self.teardown_calls += 1

    async def execute(self, action: Action) -> Result:
        """Record ``action`` and answer as configured for its type."""
        self.actions.append(action)
        failure = self.failures.get(action.type)
        if failure is not None:
            raise RuntimeError(failure) if isinstance(failure, str) else failure
        if action.type not in self.responses:
            return Result(action, ResultStatus.SUCCESS, data=self.default)
        response = self.responses[action.type]
        if callable(response):
            response = response(action)
        if isinstance(response, Result):
            return response
        return Result(action, ResultStatus.SUCCESS, data=response)


class ScriptedApprovalHandler(ApprovalHandler):
    """An approver that gives pre-written answers and remembers the questions.

    Args:
        answers: ``True``/``False`` answers used in order, or a mapping from
            action type to one answer or a list of answers used in order.
        default: the answer once the script runs out; ``None`` (default)
            raises ``LookupError`` instead, which the runtime records as a
            denial, so a test that asks more than it scripted notices.

    Example::

        approver = ScriptedApprovalHandler({"refund": [True, False], "update": True})
        ...
        assert [d.action.type for d in approver.asked] == ["refund", "refund"]
    """

    def __init__(
        self,
        answers: Iterable[bool] | Mapping[str, bool | Iterable[bool]] = (),
        *,
        default: bool | None = None,
    ) -> None:
        self.default = default
        self._in_order: deque[bool] = deque()
        self._by_type: dict[str, deque[bool] | bool] = {}
        if isinstance(answers, Mapping):
            for action_type, answer in answers.items():
                self._by_type[action_type] = (
                    answer if isinstance(answer, bool) else deque(_bools(answer))
                )
        else:
            self._in_order.extend(_bools(answers))
        #: every decision the handler was asked about, in order
        self.asked: list[PolicyDecision] = []

    async def request_approval(self, decision: PolicyDecision) -> bool:
        """Record ``decision`` and return the next scripted answer."""
        self.asked.append(decision)
        action_type = decision.action.type
        scripted = self._by_type.get(action_type)
        if isinstance(scripted, bool):
            return scripted
        queue = scripted if scripted is not None else self._in_order
        if queue:
            return queue.popleft()
        if self.default is not None:
            return self.default
        raise LookupError(
            f"ScriptedApprovalHandler has no answer left for {decision.action}; "
            "add one to its answers or pass default=True/False"
        )


def _bools(answers: Iterable[bool]) -> list[bool]:
    out = list(answers)
    for answer in out:
        if not isinstance(answer, bool):
            raise TypeError(f"scripted answers must be True or False, got {answer!r}")
    return out


class InMemoryAuditLog(AuditLogger):
    """An :class:`~aegis.runtime.audit.AuditLogger` over a memory store, for tests.

    The records, the hash chain, the filters and the start records are those
    of every audit trail; this adds :attr:`records` to look at what was
    written and :attr:`closed`, and keeps the records readable after
    :meth:`close`. :meth:`MemoryStore.tamper <aegis.stores.memory.MemoryStore.tamper>`
    edits a record in place, to test what verification catches.

    Example::

        audit = InMemoryAuditLog()
        runtime = Runtime(executor=..., policy=..., audit_logger=audit)
        await runtime.run_one(Action("read", "crm"))
        assert audit.records[-1]["result_status"] == "success"
    """

    def __init__(self) -> None:
        self.memory = MemoryStore()
        super().__init__(store=self.memory)
        #: whether :meth:`close` was called
        self.closed = False

    @property
    def records(self) -> list[dict[str, Any]]:
        """One record per action, oldest first (copies; see :meth:`get_log`)."""
        return self.get_log()

    def close(self) -> None:
        """Commit queued records and mark the log closed; records stay readable.

        Calling it again does nothing.
        """
        self._flush()
        self.closed = True
