"""The governed runtime: decide -> approve -> execute -> record, fail-fast, lifecycle."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from engine_support import TablePolicy

from aegis.adapters.base import BaseExecutor
from aegis.core.action import Action
from aegis.core.decision import Approval, PolicyDecision
from aegis.core.plan import ExecutionPlan
from aegis.core.result import Result, ResultStatus
from aegis.core.risk import RiskLevel
from aegis.errors import AegisError, ConfigurationError
from aegis.runtime.approval import AutoApprovalHandler
from aegis.runtime.engine import Runtime
from aegis.testing import InMemoryAuditLog, RecordingExecutor, ScriptedApprovalHandler

S = ResultStatus


def make(
    *,
    executor: Any = None,
    approver: Any = None,
    audit: InMemoryAuditLog | None = None,
    policy: Any = None,
    **kwargs: Any,
) -> Runtime:
    return Runtime(
        executor=RecordingExecutor() if executor is None else executor,
        policy=TablePolicy() if policy is None else policy,
        approval_handler=AutoApprovalHandler() if approver is None else approver,
        audit_logger=InMemoryAuditLog() if audit is None else audit,
        **kwargs,
    )


def statuses(results: list[Result]) -> list[ResultStatus]:
    return [r.status for r in results]


# ---------------------------------------------------------------- one action


async def test_auto_action_runs_and_is_recorded() -> None:
    """An auto action reaches the executor and its success is audited."""
    executor, audit = RecordingExecutor(default={"rows": 2}), InMemoryAuditLog()
    runtime = make(executor=executor, audit=audit)
    result = await runtime.run_one(Action("read", "crm"))
    assert result.ok
    assert result.data == {"rows": 2}
    assert executor.types == ["read"]
    [record] = audit.records
    assert record["result_status"] == "success"
    assert record["session_id"] == runtime.session_id
    assert record["human_decision"] is None
    assert audit.pending() == []


async def test_blocked_action_never_reaches_executor() -> None:
    """A blocked action is BLOCKED, audited, and the executor is never called."""
    executor, audit = RecordingExecutor(), InMemoryAuditLog()
    approver = ScriptedApprovalHandler(default=True)
    runtime = make(executor=executor, audit=audit, approver=approver)
    result = await runtime.run_one(Action("delete", "crm"))
    assert result.status is S.BLOCKED
    assert "delete_rule" in (result.error or "")
    assert executor.actions == []
    assert approver.asked == []
    assert audit.records[0]["result_status"] == "blocked"


@pytest.mark.parametrize(
    ("answer", "status", "human", "ran"),
    [
        (True, S.SUCCESS, "approved", ["update"]),
        (False, S.DENIED, "denied", []),
    ],
)
async def test_approval_answer_decides(
    answer: bool, status: ResultStatus, human: str, ran: list[str]
) -> None:
    """An approve action runs only when the handler says yes; the answer is audited."""
    executor, audit = RecordingExecutor(), InMemoryAuditLog()
    runtime = make(executor=executor, audit=audit, approver=ScriptedApprovalHandler([answer]))
    result = await runtime.run_one(Action("update", "crm", {"id": 1}))
    assert result.status is status
    assert executor.types == ran
    assert audit.records[0]["human_decision"] == human
    assert audit.records[0]["result_status"] == status.value


async def test_auto_action_does_not_ask() -> None:
    """Auto actions never reach the approval handler."""
    approver = ScriptedApprovalHandler()
    await make(approver=approver).run_one(Action("read", "crm"))
    assert approver.asked == []


async def test_runs_exactly_the_approved_action() -> None:
    """The executor receives the very Action object the approver saw."""
    seen: list[PolicyDecision] = []

    def approve(decision: PolicyDecision) -> bool:
        seen.append(decision)
        return True

    executor = RecordingExecutor()
    action = Action("update", "crm", {"id": 7, "fields": {"tier": "gold"}})
    await make(executor=executor, approver=approve).run_one(action)
    assert executor.actions[0] is seen[0].action is action


# ---------------------------------------------------------------- plans and fail-fast


# fmt: off
PLAN_CASES = [
        (["read", "read"], {}, [], [S.SUCCESS, S.SUCCESS]),
        (["read", "boom", "read", "update"], {"boom": "x"}, [],
         [S.SUCCESS, S.FAILED, S.SKIPPED, S.SKIPPED]),
        (["update", "read", "read"], {}, [False], [S.DENIED, S.SKIPPED, S.SKIPPED]),
        (["delete", "read", "update"], {}, [True], [S.BLOCKED, S.SUCCESS, S.SUCCESS]),
        (["read", "delete", "delete", "read"], {}, [],
         [S.SUCCESS, S.BLOCKED, S.BLOCKED, S.SUCCESS]),
        (["delete", "boom", "delete"], {"boom": "x"}, [], [S.BLOCKED, S.FAILED, S.SKIPPED]),
        (["update", "update", "read"], {}, [True, False], [S.SUCCESS, S.DENIED, S.SKIPPED]),
]
# fmt: on


@pytest.mark.parametrize(("types", "failures", "answers", "expected"), PLAN_CASES)
async def test_plan_statuses(
    types: list[str], failures: dict[str, str], answers: list[bool], expected: list[ResultStatus]
) -> None:
    """FAILED and DENIED skip the rest of the plan; BLOCKED does not."""
    executor, audit = RecordingExecutor(failures=failures), InMemoryAuditLog()
    runtime = make(executor=executor, audit=audit, approver=ScriptedApprovalHandler(answers))
    results = await runtime.execute(runtime.plan([Action(t, "crm") for t in types]))
    assert statuses(results) == expected
    assert [r["result_status"] for r in audit.records] == [s.value for s in expected]
    ran = [t for t, s in zip(types, expected, strict=True) if s in (S.SUCCESS, S.FAILED)]
    assert executor.types == ran


async def test_skipped_actions_never_ask_for_approval() -> None:
    """After a failure, later approve actions are skipped without asking anyone."""
    approver = ScriptedApprovalHandler(default=True)
    runtime = make(executor=RecordingExecutor(failures={"read": "down"}), approver=approver)
    results = await runtime.execute(runtime.plan([Action("read", "crm"), Action("update", "crm")]))
    assert statuses(results) == [S.FAILED, S.SKIPPED]
    assert approver.asked == []
    assert "read -> crm" in (results[1].error or "")


async def test_plan_neither_executes_nor_records() -> None:
    """plan() only evaluates: no executor call, no audit record, no setup."""
    executor, audit = RecordingExecutor(), InMemoryAuditLog()
    plan = make(executor=executor, audit=audit).plan([Action("read", "crm"), Action("delete", "x")])
    assert isinstance(plan, ExecutionPlan)
    assert [d.approval for d in plan] == [Approval.AUTO, Approval.BLOCK]
    assert (executor.actions, audit.records, executor.setup_calls) == ([], [], 0)


async def test_execute_accepts_a_list_of_actions() -> None:
    """execute() plans a plain list of actions itself."""
    results = await make().execute([Action("read", "crm"), Action("delete", "crm")])
    assert statuses(results) == [S.SUCCESS, S.BLOCKED]


async def test_empty_plan_gives_no_results() -> None:
    """An empty plan returns an empty list and records nothing."""
    audit = InMemoryAuditLog()
    assert await make(audit=audit).execute(ExecutionPlan()) == []
    assert audit.records == []


@pytest.mark.parametrize("bad", [{"type": "read"}, "read", None])
async def test_plan_rejects_non_actions(bad: Any) -> None:
    """Something other than an Action in a plan is a ConfigurationError naming its type."""
    with pytest.raises(ConfigurationError, match=type(bad).__name__):
        make().plan([Action("read", "crm"), bad])


# ---------------------------------------------------------------- what executors return


async def test_executor_exception_becomes_failed() -> None:
    """An executor that raises gives FAILED with 'Type: message', audited."""
    audit = InMemoryAuditLog()
    runtime = make(executor=RecordingExecutor(failures={"read": ValueError("bad id")}), audit=audit)
    result = await runtime.run_one(Action("read", "crm"))
    assert result.status is S.FAILED
    assert result.error == "ValueError: bad id"
    assert audit.records[0]["result_error"] == "ValueError: bad id"
    assert audit.pending() == []


@pytest.mark.parametrize("value", [42, "text", {"a": [1, 2]}, None])
async def test_plain_return_value_becomes_success_data(value: Any) -> None:
    """An executor returning a non-Result value gives SUCCESS with it as data."""

    async def executor(action: Action) -> Any:
        return value

    result = await make(executor=executor).run_one(Action("read", "crm"))
    assert result.status is S.SUCCESS
    assert result.data == value


async def test_result_for_another_action_keeps_the_approved_one() -> None:
    """A Result naming a different action is recorded against the approved action."""
    approved = Action("update", "crm", {"id": 1})

    async def executor(action: Action) -> Result:
        return Result(Action("delete", "everything"), S.SUCCESS, data="done")

    audit = InMemoryAuditLog()
    result = await make(executor=executor, audit=audit).run_one(approved)
    assert result.action is approved
    assert result.data == "done"
    assert audit.records[0]["action_type"] == "update"


@pytest.mark.parametrize("claimed", [S.BLOCKED, S.DENIED, S.SKIPPED])
async def test_executor_cannot_claim_runtime_statuses(claimed: ResultStatus) -> None:
    """An executor reporting BLOCKED/DENIED/SKIPPED gives FAILED, explaining why."""

    async def executor(action: Action) -> Result:
        return Result(action, claimed)

    result = await make(executor=executor).run_one(Action("read", "crm"))
    assert result.status is S.FAILED
    assert claimed.name in (result.error or "")


async def test_executor_failed_result_stops_the_plan() -> None:
    """A FAILED Result returned (not raised) by the executor also skips the rest."""

    async def executor(action: Action) -> Result:
        return Result(action, S.FAILED, error="quota exceeded")

    runtime = make(executor=executor)
    results = await runtime.execute(runtime.plan([Action("read", "a"), Action("read", "b")]))
    assert statuses(results) == [S.FAILED, S.SKIPPED]
    assert results[0].error == "quota exceeded"


async def test_result_times_are_set() -> None:
    """Every Result comes back with started_at <= completed_at."""
    runtime = make(approver=ScriptedApprovalHandler([False]))
    results = await runtime.execute(
        [Action("read", "a"), Action("delete", "a"), Action("update", "a"), Action("read", "b")]
    )
    for r in results:
        assert r.completed_at is not None
        assert r.started_at <= r.completed_at


# ---------------------------------------------------------------- executors of every shape


async def test_sync_callable_executor() -> None:
    """A plain (non-async) function works as an executor."""
    calls: list[str] = []

    def executor(action: Action) -> str:
        calls.append(action.type)
        return "ok"

    result = await make(executor=executor).run_one(Action("read", "crm"))
    assert (result.status, result.data, calls) == (S.SUCCESS, "ok", ["read"])


async def test_duck_typed_executor_with_hooks() -> None:
    """An object with execute/setup/teardown methods works without subclassing."""

    class Duck:
        def __init__(self) -> None:
            self.events: list[str] = []

        def setup(self) -> None:
            self.events.append("setup")

        async def teardown(self) -> None:
            self.events.append("teardown")

        async def execute(self, action: Action) -> str:
            self.events.append(action.type)
            return "quack"

    duck = Duck()
    async with make(executor=duck) as runtime:
        assert (await runtime.run_one(Action("read", "pond"))).data == "quack"
    assert duck.events == ["setup", "read", "teardown"]


class _Exec(BaseExecutor):
    async def execute(self, action: Action) -> Result:
        return Result(action, S.SUCCESS)


@pytest.mark.parametrize(
    ("executor", "hint"),
    [
        (42, "int"),
        ("crm", "str"),
        (None, "NoneType"),
        (_Exec, "pass an instance: _Exec()"),
    ],
)
def test_unusable_executor_is_a_configuration_error(executor: Any, hint: str) -> None:
    """An executor that is neither a BaseExecutor nor a function fails at construction."""
    with pytest.raises(ConfigurationError, match="BaseExecutor") as info:
        Runtime(executor=executor, policy=TablePolicy(), audit_logger=InMemoryAuditLog())
    assert hint in str(info.value)


@pytest.mark.parametrize(("policy", "hint"), [("policy.yaml", "Policy.from_yaml"), (3, "int")])
def test_unusable_policy_is_a_configuration_error(policy: Any, hint: str) -> None:
    """A policy without evaluate() fails at construction, hinting at from_yaml for paths."""
    with pytest.raises(ConfigurationError, match="policy") as info:
        Runtime(executor=_Exec(), policy=policy, audit_logger=InMemoryAuditLog())
    assert hint in str(info.value)


@pytest.mark.parametrize("handler", [42, "yes", AutoApprovalHandler])
def test_unusable_approval_handler_is_a_configuration_error(handler: Any) -> None:
    """An approval handler that is neither a handler nor a function fails at construction."""
    with pytest.raises(ConfigurationError, match="approval_handler"):
        make(approver=handler)


def test_unusable_audit_is_a_configuration_error() -> None:
    """An audit logger without record()/close() fails at construction."""
    with pytest.raises(ConfigurationError, match="record"):
        Runtime(executor=_Exec(), policy=TablePolicy(), audit_logger=object())  # type: ignore[arg-type]


@pytest.mark.parametrize("timeout", [0, -1.5])
def test_non_positive_approval_timeout_is_rejected(timeout: float) -> None:
    """approval_timeout must be positive."""
    with pytest.raises(ConfigurationError, match="approval_timeout"):
        make(approval_timeout=timeout)


# ---------------------------------------------------------------- approval handlers of every shape


async def test_sync_callable_handler() -> None:
    """A plain function of the decision works as an approval handler."""
    runtime = make(approver=lambda d: d.risk_level <= RiskLevel.MEDIUM)
    results = await runtime.execute([Action("update", "crm"), Action("refund", "crm")])
    assert statuses(results) == [S.SUCCESS, S.DENIED]


async def test_async_callable_handler() -> None:
    """An async function of the decision works as an approval handler."""

    async def approve(decision: PolicyDecision) -> bool:
        await asyncio.sleep(0)
        return decision.action.params.get("ok") is True

    runtime = make(approver=approve)
    assert (await runtime.run_one(Action("update", "crm", {"ok": True}))).ok
    assert (await runtime.run_one(Action("update", "crm"))).status is S.DENIED


async def test_duck_typed_handler() -> None:
    """An object with a request_approval method works without subclassing."""

    class Approver:
        def request_approval(self, decision: PolicyDecision) -> bool:
            return True

    assert (await make(approver=Approver()).run_one(Action("update", "crm"))).ok


async def test_raising_handler_denies_and_audits_the_error() -> None:
    """A handler that raises denies the action; the error is audited."""

    def approve(decision: PolicyDecision) -> bool:
        raise ConnectionError("pager down")

    executor, audit = RecordingExecutor(), InMemoryAuditLog()
    result = await make(executor=executor, audit=audit, approver=approve).run_one(
        Action("update", "crm")
    )
    assert result.status is S.DENIED
    assert "ConnectionError: pager down" in (result.error or "")
    assert audit.records[0]["human_decision"] == "denied: error: ConnectionError: pager down"
    assert executor.actions == []


@pytest.mark.parametrize("answer", [None, 1, "yes", [True]])
async def test_non_bool_answer_denies(answer: Any) -> None:
    """A handler answering anything but True/False denies (fail closed)."""

    class Approver:
        async def request_approval(self, decision: PolicyDecision) -> Any:
            return answer

    audit = InMemoryAuditLog()
    result = await make(approver=Approver(), audit=audit).run_one(Action("update", "crm"))
    assert result.status is S.DENIED
    assert audit.records[0]["human_decision"].startswith("denied: error:")


async def test_approval_timeout_denies() -> None:
    """With approval_timeout set, a handler that never answers gives DENIED (timeout)."""
    never = asyncio.Event()

    async def approve(decision: PolicyDecision) -> bool:
        await never.wait()
        return True

    executor, audit = RecordingExecutor(), InMemoryAuditLog()
    runtime = make(executor=executor, audit=audit, approver=approve, approval_timeout=0.01)
    results = await runtime.execute([Action("update", "crm"), Action("read", "crm")])
    assert statuses(results) == [S.DENIED, S.SKIPPED]
    assert audit.records[0]["human_decision"].startswith("denied: timeout")
    assert executor.actions == []


async def test_handler_timeout_error_is_recorded_as_timeout() -> None:
    """A handler raising TimeoutError itself is audited as a timeout denial."""

    def approve(decision: PolicyDecision) -> bool:
        raise TimeoutError("no answer within 30s")

    audit = InMemoryAuditLog()
    await make(approver=approve, audit=audit).run_one(Action("update", "crm"))
    assert audit.records[0]["human_decision"] == "denied: timeout: no answer within 30s"


async def test_scripted_handler_running_out_denies() -> None:
    """A scripted handler without answers left denies, naming the action."""
    result = await make(approver=ScriptedApprovalHandler()).run_one(Action("update", "crm"))
    assert result.status is S.DENIED
    assert "no answer left" in (result.error or "")


# ---------------------------------------------------------------- audit ordering and failures


class EventAudit(InMemoryAuditLog):
    """An in-memory audit that notes the order of its calls in a shared list."""

    def __init__(self, events: list[str]) -> None:
        super().__init__()
        self.events = events

    async def record_start(
        self, session_id: str, decision: PolicyDecision, *, human_decision: str | None = None
    ) -> int | None:
        self.events.append("start")
        return await super().record_start(session_id, decision, human_decision=human_decision)

    async def record(
        self,
        session_id: str,
        decision: PolicyDecision,
        *,
        result: Result,
        human_decision: str | None = None,
        start_token: int | None = None,
    ) -> int:
        self.events.append(f"record:{result.status.value}:{start_token}")
        return await super().record(
            session_id,
            decision,
            result=result,
            human_decision=human_decision,
            start_token=start_token,
        )


async def test_start_marker_precedes_execution_and_final_record_follows() -> None:
    """record_start is durable before the executor runs; record() comes after, with the token."""
    events: list[str] = []

    async def executor(action: Action) -> None:
        events.append("execute")

    runtime = make(executor=executor, audit=EventAudit(events))
    await runtime.execute([Action("read", "a"), Action("delete", "a")])
    assert events == ["start", "execute", "record:success:1", "record:blocked:None"]


async def test_result_returned_only_after_record() -> None:
    """The Result is returned after its final record is stored."""
    audit = InMemoryAuditLog()
    runtime = make(audit=audit)
    result = await runtime.run_one(Action("read", "crm"))
    assert audit.count(result_status=result.status) == 1


async def test_failing_start_marker_prevents_execution() -> None:
    """If the audit cannot note the start, the action does not run and the error propagates."""

    class Broken(InMemoryAuditLog):
        async def record_start(
            self, session_id: str, decision: PolicyDecision, *, human_decision: str | None = None
        ) -> int | None:
            raise AegisError("disk full")

    executor = RecordingExecutor()
    with pytest.raises(AegisError, match="disk full"):
        await make(executor=executor, audit=Broken()).run_one(Action("read", "crm"))
    assert executor.actions == []


# ---------------------------------------------------------------- interruptions


async def test_cancellation_propagates_after_recording() -> None:
    """Cancelling a running action propagates CancelledError and audits it as FAILED."""
    started = asyncio.Event()

    async def executor(action: Action) -> None:
        started.set()
        await asyncio.Event().wait()

    audit = InMemoryAuditLog()
    task = asyncio.ensure_future(make(executor=executor, audit=audit).run_one(Action("read", "a")))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [record] = audit.records
    assert record["result_status"] == "failed"
    assert "CancelledError" in record["result_error"]
    assert audit.pending() == []


async def test_cancellation_while_waiting_for_approval_is_recorded() -> None:
    """Cancelling during approval propagates and audits a denial."""
    asked = asyncio.Event()

    async def approve(decision: PolicyDecision) -> bool:
        asked.set()
        await asyncio.Event().wait()
        return True

    executor, audit = RecordingExecutor(), InMemoryAuditLog()
    runtime = make(executor=executor, audit=audit, approver=approve)
    task = asyncio.ensure_future(runtime.run_one(Action("update", "a")))
    await asked.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert audit.records[0]["result_status"] == "denied"
    assert executor.actions == []


@pytest.mark.parametrize("how", ["cancel", "execute_timeout"])
async def test_a_sync_executor_left_running_is_not_recorded_as_stopped(how: str) -> None:
    """Cancelled or past its deadline, a sync executor goes on: its record says so."""
    started, release, done = threading.Event(), threading.Event(), threading.Event()

    def refund(action: Action) -> str:
        started.set()
        release.wait(10)
        done.set()  # the refund went through after all
        return "refunded"

    audit = InMemoryAuditLog()
    limit = 0.05 if how == "execute_timeout" else None
    runtime = make(executor=refund, audit=audit, execute_timeout=limit)
    task = asyncio.ensure_future(runtime.run_one(Action("read", "a")))
    if how == "cancel":
        while not started.is_set():
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    else:
        assert (await task).status is ResultStatus.FAILED
    release.set()
    assert done.wait(10)
    [record] = audit.records
    assert record["result_status"] == "failed"
    assert record["result_error"].startswith(
        "interrupted: CancelledError" if how == "cancel" else "TimeoutError"
    )
    assert "left running on its thread" in record["result_error"]


async def test_a_cancelled_async_executor_is_recorded_as_interrupted_only() -> None:
    """An async executor is stopped by the cancellation: nothing is said to go on."""
    started = asyncio.Event()

    async def wait(action: Action) -> None:
        started.set()
        await asyncio.Event().wait()

    audit = InMemoryAuditLog()
    task = asyncio.ensure_future(make(executor=wait, audit=audit).run_one(Action("read", "a")))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert audit.records[0]["result_error"] == "interrupted: CancelledError"


async def test_keyboard_interrupt_propagates_after_recording() -> None:
    """A KeyboardInterrupt inside the executor is audited, then re-raised."""

    def executor(action: Action) -> None:
        raise KeyboardInterrupt

    audit = InMemoryAuditLog()
    with pytest.raises(KeyboardInterrupt):
        await make(executor=executor, audit=audit).run_one(Action("read", "a"))
    assert audit.records[0]["result_error"] == "interrupted: KeyboardInterrupt"


# ---------------------------------------------------------------- lifecycle


async def test_context_manager_sets_up_and_tears_down_once() -> None:
    """async with calls setup() on enter, teardown() and audit.close() on exit, once each."""
    executor, audit = RecordingExecutor(), InMemoryAuditLog()
    async with make(executor=executor, audit=audit) as runtime:
        assert executor.setup_calls == 1
        await runtime.run_one(Action("read", "a"))
        await runtime.execute([Action("read", "b")])
    assert (executor.setup_calls, executor.teardown_calls, audit.closed) == (1, 1, True)


async def test_context_manager_cleans_up_when_body_raises() -> None:
    """teardown() and audit.close() still run when the body raises, and the error propagates."""
    executor, audit = RecordingExecutor(), InMemoryAuditLog()
    with pytest.raises(LookupError):
        async with make(executor=executor, audit=audit):
            raise LookupError("agent bug")
    assert (executor.setup_calls, executor.teardown_calls, audit.closed) == (1, 1, True)


async def test_failing_teardown_still_closes_audit() -> None:
    """A teardown() that raises still lets the audit close, then the error propagates."""

    class Leaky(RecordingExecutor):
        async def teardown(self) -> None:
            raise OSError("socket already closed")

    audit = InMemoryAuditLog()
    with pytest.raises(OSError, match="socket"):
        async with make(executor=Leaky(), audit=audit):
            pass
    assert audit.closed


async def test_setup_runs_lazily_once_without_context_manager() -> None:
    """Without async with, setup() runs once before the first action, even when concurrent."""
    setups: list[int] = []

    class Slow(RecordingExecutor):
        async def setup(self) -> None:
            await asyncio.sleep(0)
            setups.append(1)

        async def execute(self, action: Action) -> Result:
            assert setups, "an action ran before setup() finished"
            return await super().execute(action)

    runtime = make(executor=Slow())
    results = await asyncio.gather(*(runtime.run_one(Action("read", str(i))) for i in range(5)))
    assert all(r.ok for r in results)
    assert setups == [1]


async def test_close_is_idempotent_and_closed_runtime_refuses_work() -> None:
    """close() twice tears down once; running actions afterwards raises AegisError."""
    executor, audit = RecordingExecutor(), InMemoryAuditLog()
    runtime = make(executor=executor, audit=audit)
    await runtime.run_one(Action("read", "a"))
    await runtime.close()
    await runtime.close()
    assert executor.teardown_calls == 1
    with pytest.raises(AegisError, match="closed"):
        await runtime.run_one(Action("read", "a"))


async def test_close_without_use_skips_teardown() -> None:
    """Closing a runtime that never started does not tear down the executor."""
    executor, audit = RecordingExecutor(), InMemoryAuditLog()
    await make(executor=executor, audit=audit).close()
    assert (executor.setup_calls, executor.teardown_calls, audit.closed) == (0, 0, True)


# ---------------------------------------------------------------- identity and attributes


def test_session_id_is_generated_hex() -> None:
    """Without session_id, each runtime gets its own 32-character hex id."""
    a, b = make(), make()
    assert a.session_id != b.session_id
    assert len(a.session_id) == 32
    assert int(a.session_id, 16) >= 0


def test_attributes_are_exposed() -> None:
    """policy, audit and session_id are readable on the runtime."""
    policy, audit = TablePolicy(), InMemoryAuditLog()
    runtime = make(policy=policy, audit=audit, session_id="agent-7")
    assert (runtime.policy, runtime.audit, runtime.session_id) == (policy, audit, "agent-7")
    assert "agent-7" in repr(runtime)


async def test_policy_is_evaluated_once_per_action() -> None:
    """run_one evaluates the policy exactly once per action."""
    policy = TablePolicy()
    await make(policy=policy).run_one(Action("read", "a"))
    assert len(policy.evaluated) == 1


# ---------------------------------------------------------------- concurrency


async def test_many_concurrent_run_one_lose_nothing() -> None:
    """300 concurrent run_one calls on one runtime give 300 results and 300 intact records."""
    audit = InMemoryAuditLog()
    runtime = make(audit=audit, approver=lambda d: d.action.params["i"] % 2 == 0)
    types = ["read", "update", "delete"]
    actions = [Action(types[i % 3], "crm", {"i": i}) for i in range(300)]
    results = await asyncio.gather(*(runtime.run_one(a) for a in actions))

    def expected(a: Action) -> ResultStatus:
        if a.type == "read":
            return S.SUCCESS
        if a.type == "delete":
            return S.BLOCKED
        return S.SUCCESS if a.params["i"] % 2 == 0 else S.DENIED

    assert [r.action for r in results] == actions
    assert [r.status for r in results] == [expected(a) for a in actions]
    assert audit.count() == 300
    assert audit.verify()
    by_i = {r["action_params"]["i"]: r["result_status"] for r in audit.records}
    assert by_i == {a.params["i"]: expected(a).value for a in actions}
    assert audit.pending() == []


# ---------------------------------------------------------------- plans are previews


async def test_a_forged_plan_cannot_run_what_the_policy_blocks() -> None:
    """execute() decides each action again: a hand-made AUTO decision for a blocked action fails."""
    executor = RecordingExecutor()
    forged = ExecutionPlan(
        [PolicyDecision(Action("delete", "crm"), RiskLevel.LOW, Approval.AUTO, "forged")]
    )
    [result] = await make(executor=executor).execute(forged)
    assert result.status is S.BLOCKED
    assert executor.types == []


async def test_a_plan_from_a_laxer_runtime_is_decided_again() -> None:
    """A plan made under an allow-all policy is held to this runtime's policy."""
    lax = make(policy=TablePolicy({}))
    strict_executor = RecordingExecutor()
    strict = make(executor=strict_executor)
    plan = lax.plan([Action("read", "crm"), Action("delete", "crm")])
    assert not plan.has_blocked
    results = await strict.execute(plan)
    assert statuses(results) == [S.SUCCESS, S.BLOCKED]
    assert strict_executor.types == ["read"]


async def test_an_interrupted_plan_records_the_actions_it_never_reached() -> None:
    """Cancelling execute() mid-plan audits the running action and the rest as skipped."""
    started = asyncio.Event()

    async def executor(action: Action) -> None:
        started.set()
        await asyncio.Event().wait()

    audit = InMemoryAuditLog()
    runtime = make(executor=executor, audit=audit)
    actions = [Action("read", "a"), Action("read", "b"), Action("read", "c")]
    task = asyncio.ensure_future(runtime.execute(runtime.plan(actions)))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    records = audit.records
    assert [r["result_status"] for r in records] == ["failed", "skipped", "skipped"]
    assert [r["action_target"] for r in records] == ["a", "b", "c"]
    assert "interrupted" in records[2]["result_error"]


async def test_a_result_spoiled_after_construction_is_recorded_as_failed() -> None:
    """An executor whose Result has a non-ResultStatus status still gets a FAILED record."""

    async def executor(action: Action) -> Result:
        result = Result(action, ResultStatus.SUCCESS)
        result.status = "success"  # type: ignore[assignment]  # what a careless executor does
        return result

    audit = InMemoryAuditLog()
    result = await make(executor=executor, audit=audit).run_one(Action("read", "crm"))
    assert result.status is S.FAILED
    assert "invalid Result" in (result.error or "")
    assert [r["result_status"] for r in audit.records] == ["failed"]
    assert audit.pending() == []


@pytest.mark.parametrize("timeout", [0, -1.5])
def test_non_positive_execute_timeout_is_rejected(timeout: float) -> None:
    """execute_timeout must be positive."""
    with pytest.raises(ConfigurationError, match="execute_timeout"):
        make(execute_timeout=timeout)


async def test_a_hanging_executor_fails_after_execute_timeout() -> None:
    """An async executor that never returns is cancelled and recorded as FAILED."""

    async def hangs(action: Action) -> None:
        await asyncio.Event().wait()

    audit = InMemoryAuditLog()
    result = await make(executor=hangs, audit=audit, execute_timeout=0.05).run_one(
        Action("read", "crm")
    )
    assert result.status is S.FAILED
    assert "longer than 0.05s" in (result.error or "")
    assert [r["result_status"] for r in audit.records] == ["failed"]
    assert audit.pending() == []


async def test_an_executors_own_timeout_is_not_blamed_on_execute_timeout() -> None:
    """A TimeoutError the executor raises itself is recorded as its own, not as ours."""

    async def upstream_times_out(action: Action) -> None:
        raise TimeoutError("upstream did not answer in 2s")

    result = await make(executor=upstream_times_out, execute_timeout=600).run_one(
        Action("read", "crm")
    )
    assert result.status is S.FAILED
    assert result.error == "TimeoutError: upstream did not answer in 2s"


async def test_a_plan_with_a_bad_element_runs_nothing() -> None:
    """Something that is not an Action anywhere in the plan stops it before anything runs."""
    executor = RecordingExecutor()
    audit = InMemoryAuditLog()
    actions: list[Any] = [Action("read", "a"), "not an action", Action("read", "c")]
    with pytest.raises(ConfigurationError):
        await make(executor=executor, audit=audit).execute(actions)
    assert executor.types == []
    assert audit.records == []


async def test_a_policy_that_raises_mid_plan_leaves_the_rest_recorded() -> None:
    """If deciding an action again raises, it and the rest are recorded as skipped."""

    class Flaky(TablePolicy):
        def evaluate(self, action: Action) -> PolicyDecision:
            if action.target == "b" and len(self.evaluated) >= 3:  # decided again
                raise RuntimeError("policy store unreachable")
            return super().evaluate(action)

    audit = InMemoryAuditLog()
    actions = [Action("read", "a"), Action("read", "b"), Action("read", "c")]
    with pytest.raises(RuntimeError, match="unreachable"):
        await make(policy=Flaky(), audit=audit).execute(actions)
    assert [r["result_status"] for r in audit.records] == ["success", "skipped", "skipped"]


async def test_an_error_set_to_a_non_string_after_construction_is_still_recorded() -> None:
    """A Result whose error became an exception object is recorded with its text."""

    async def executor(action: Action) -> Result:
        result = Result(action, ResultStatus.FAILED)
        result.error = KeyError("id")  # type: ignore[assignment]  # a careless executor
        return result

    audit = InMemoryAuditLog()
    result = await make(executor=executor, audit=audit).run_one(Action("read", "crm"))
    assert result.status is S.FAILED
    assert audit.records[0]["result_error"] == "'id'"
    assert audit.pending() == []
