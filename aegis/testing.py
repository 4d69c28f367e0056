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

import json
import os
from collections import deque
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from aegis.adapters.base import BaseExecutor
from aegis.core.action import Action
from aegis.core.decision import PolicyDecision
from aegis.core.result import Result, ResultStatus
from aegis.core.risk import RiskLevel
from aegis.runtime.approval import ApprovalHandler
from aegis.runtime.audit import VerifyReport
from aegis.runtime.audit_backend import (
    GENESIS_HASH,
    RECORD_FIELDS,
    Filters,
    Subscriber,
    SubscriberList,
    record_hash,
    record_values,
    write_jsonl,
)

__all__ = ["InMemoryAuditLog", "RecordingExecutor", "ScriptedApprovalHandler"]

# The record fields record_values() fills, in order.
_VALUE_FIELDS = RECORD_FIELDS[1:-2]
# The fields of a start marker, as AuditLogger.pending() returns them.
_PENDING_FIELDS = (*RECORD_FIELDS[:12], "pid")


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


class InMemoryAuditLog:
    """An audit backend that keeps records in a list; same records, same chain.

    It implements :class:`~aegis.runtime.audit_backend.AuditBackend` like the
    SQLite :class:`~aegis.runtime.audit.AuditLogger`, hash chain included,
    and lets tests look at what was written.

    Example::

        audit = InMemoryAuditLog()
        runtime = Runtime(executor=..., policy=..., audit_logger=audit)
        await runtime.run_one(Action("read", "crm"))
        assert audit.records[-1]["result_status"] == "success"
    """

    def __init__(self) -> None:
        #: the finished records, oldest first
        self.records: list[dict[str, Any]] = []
        self._pending: dict[int, dict[str, Any]] = {}
        self.closed = False
        self._next_token = 1
        self._subscribers = SubscriberList()

    def log(
        self,
        session_id: str,
        decision: PolicyDecision,
        *,
        result: Result | None = None,
        human_decision: str | None = None,
    ) -> int:
        """Append one finished record and return its id."""
        values = record_values(session_id, decision, result, human_decision)
        record: dict[str, Any] = {"id": len(self.records) + 1}
        record.update(zip(_VALUE_FIELDS, values, strict=True))
        record["action_params"] = json.loads(record["action_params"])
        record["result_data"] = json.loads(record["result_data"])
        record["prev_hash"] = self.records[-1]["hash"] if self.records else GENESIS_HASH
        record["hash"] = record_hash(record)
        self.records.append(record)
        if self._subscribers:
            self._subscribers.notify(dict(record))
        return int(record["id"])

    async def record_start(
        self,
        session_id: str,
        decision: PolicyDecision,
        *,
        human_decision: str | None = None,
    ) -> int | None:
        """Note that ``decision.action`` is about to run; return the start token."""
        token = self._next_token
        self._next_token += 1
        values = record_values(session_id, decision, None, human_decision)
        marker: dict[str, Any] = {"id": token}
        marker.update(zip(_PENDING_FIELDS[1:-1], values[:11], strict=True))
        marker["action_params"] = json.loads(marker["action_params"])
        marker["pid"] = os.getpid()
        self._pending[token] = marker
        return token

    async def record(
        self,
        session_id: str,
        decision: PolicyDecision,
        *,
        result: Result,
        human_decision: str | None = None,
        start_token: int | None = None,
    ) -> int:
        """Append the final record of an action and clear its start marker."""
        if start_token is not None:
            self._pending.pop(start_token, None)
        return self.log(session_id, decision, result=result, human_decision=human_decision)

    def pending(self) -> list[dict[str, Any]]:
        """The actions that started and have no final record yet, oldest first."""
        return [dict(marker) for marker in self._pending.values()]

    def get_log(
        self,
        session_id: str | None = None,
        *,
        action_type: str | None = None,
        action_target: str | None = None,
        risk_level: RiskLevel | str | int | None = None,
        result_status: ResultStatus | str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        limit: int | None = None,
        after_id: int | None = None,
    ) -> list[dict[str, Any]]:
        """Return copies of the records matching every filter, oldest first."""
        filters = Filters.of(
            session_id,
            action_type=action_type,
            action_target=action_target,
            risk_level=risk_level,
            result_status=result_status,
            since=since,
            until=until,
        )
        out = []
        for record in self.records:
            if after_id is not None and record["id"] <= after_id:
                continue
            if filters.matches(record):
                out.append(dict(record))
                if limit is not None and len(out) >= limit:
                    break
        return out

    def count(
        self,
        session_id: str | None = None,
        *,
        action_type: str | None = None,
        action_target: str | None = None,
        risk_level: RiskLevel | str | int | None = None,
        result_status: ResultStatus | str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
    ) -> int:
        """Return how many records match every filter."""
        filters = Filters.of(
            session_id,
            action_type=action_type,
            action_target=action_target,
            risk_level=risk_level,
            result_status=result_status,
            since=since,
            until=until,
        )
        return sum(1 for record in self.records if filters.matches(record))

    def export_jsonl(self, path: str | Path, session_id: str | None = None) -> int:
        """Write the records (of one session, if given) as JSON lines; return how many."""
        return write_jsonl(path, self.get_log(session_id))

    def subscribe(self, callback: Subscriber) -> None:
        """Call ``callback`` with each new record."""
        self._subscribers.add(callback)

    def unsubscribe(self, callback: Subscriber) -> None:
        """Stop calling ``callback``."""
        self._subscribers.remove(callback)

    def verify(self) -> VerifyReport:
        """Check every record's hash and link, like :meth:`AuditLogger.verify`."""
        prev = GENESIS_HASH
        checked = 0
        for record in self.records:
            if record["prev_hash"] != prev or record_hash(record) != record["hash"]:
                reason = f"record {record['id']} was modified or does not link to its predecessor"
                return VerifyReport(False, checked, record["id"], reason, f"{checked}:{prev}")
            prev = record["hash"]
            checked = record["id"]
        return VerifyReport(True, checked, None, "", f"{checked}:{prev}")

    def close(self) -> None:
        """Mark the log closed; records stay readable. Calling it again does nothing."""
        self.closed = True
