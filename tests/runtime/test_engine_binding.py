"""What runs is exactly what was decided; every timeout holds; plan lifecycles."""

from __future__ import annotations

import asyncio
import gc
import io
import logging
import threading
import time
from typing import Any

import pytest
from engine_support import TablePolicy

from aegis.core.action import Action, FrozenDict
from aegis.core.decision import Approval, PolicyDecision
from aegis.core.result import ResultStatus
from aegis.core.risk import RiskLevel
from aegis.runtime.approval import AutoApprovalHandler, CLIApprovalHandler
from aegis.runtime.engine import Runtime
from aegis.testing import InMemoryAuditLog, RecordingExecutor

S = ResultStatus


def make(**kwargs: Any) -> Runtime:
    kwargs.setdefault("executor", RecordingExecutor())
    kwargs.setdefault("policy", TablePolicy())
    kwargs.setdefault("approval_handler", AutoApprovalHandler())
    kwargs.setdefault("audit_logger", InMemoryAuditLog())
    return Runtime(**kwargs)


# ---------------------------------------------------------------- the decided action runs


async def test_a_handler_swapping_the_decision_action_runs_nothing_else() -> None:
    """A handler that swaps decision.action cannot make the runtime run (or record) its swap."""

    def swap(decision: PolicyDecision) -> bool:
        object.__setattr__(decision, "action", Action("delete", "prod"))
        return True

    executor, audit = RecordingExecutor(), InMemoryAuditLog()
    runtime = make(executor=executor, audit_logger=audit, approval_handler=swap)
    result = await runtime.run_one(Action("update", "crm", {"id": 1}))
    assert result.ok
    assert [a.type for a in executor.actions] == ["update"]
    assert audit.records[0]["action_type"] == "update"


async def test_params_changed_below_the_api_while_approving_do_not_run() -> None:
    """Params changed through gc while a human looks are refused: the approver's 50 stays 50."""

    def tamper(decision: PolicyDecision) -> bool:
        [inner] = [r for r in gc.get_referents(decision.action.params) if isinstance(r, dict)]
        inner["amount"] = 1_000_000
        return True

    executor, audit = RecordingExecutor(), InMemoryAuditLog()
    runtime = make(executor=executor, audit_logger=audit, approval_handler=tamper)
    result = await runtime.run_one(Action("refund", "stripe", {"amount": 50}))
    assert result.status is S.DENIED
    assert "changed after it was decided" in (result.error or "")
    assert executor.actions == []
    assert audit.records[0]["action_params"] == {"amount": 50}
    assert audit.records[0]["result_status"] == "denied"


async def test_an_action_replaced_while_approving_does_not_run() -> None:
    """params swapped with object.__setattr__ during approval are caught by the digest check."""

    def tamper(decision: PolicyDecision) -> bool:
        object.__setattr__(decision.action, "params", FrozenDict(amount=1_000_000))
        return True

    executor = RecordingExecutor()
    result = await make(executor=executor, approval_handler=tamper).run_one(
        Action("refund", "stripe", {"amount": 50})
    )
    assert result.status is S.DENIED
    assert executor.actions == []


async def test_an_executor_changing_the_action_is_recorded_as_decided() -> None:
    """An executor that changes its action fails, and the record shows the action as decided."""

    class Sneaky(RecordingExecutor):
        async def execute(self, action: Action) -> Any:
            object.__setattr__(action, "params", FrozenDict(amount=1))
            return "done"

    audit = InMemoryAuditLog()
    result = await make(executor=Sneaky(), audit_logger=audit).run_one(
        Action("read", "ledger", {"amount": 900})
    )
    assert result.status is S.FAILED
    assert result.action.params == {"amount": 900}
    assert audit.records[0]["action_params"] == {"amount": 900}


class StringPolicy:
    """A custom policy answering with plain strings, as hand-written ones do."""

    def __init__(self, approval: object, risk: object = "high", other: Action | None = None):
        self.approval, self.risk, self.other = approval, risk, other

    def evaluate(self, action: Action) -> Any:
        class Decision:
            pass

        decision = Decision()
        decision.action = self.other or action  # type: ignore[attr-defined]
        decision.approval = self.approval  # type: ignore[attr-defined]
        decision.risk_level = self.risk  # type: ignore[attr-defined]
        decision.matched_rule = "custom"  # type: ignore[attr-defined]
        decision.reason = ""  # type: ignore[attr-defined]
        return decision


@pytest.mark.parametrize(
    ("approval", "status", "reason"),
    [
        ("block", S.BLOCKED, ""),
        ("BLOCK", S.BLOCKED, ""),
        ("auto", S.SUCCESS, ""),
        ("maybe", S.BLOCKED, "'maybe' is none of auto, approve, block"),
        (None, S.BLOCKED, "None is none of"),
        (True, S.BLOCKED, "True is none of"),
    ],
)
async def test_approvals_compare_by_value_and_unknown_blocks(
    approval: object, status: ResultStatus, reason: str
) -> None:
    """A plain-string approval counts by value; anything unknown blocks with a reason."""
    executor = RecordingExecutor()
    runtime = make(executor=executor, policy=StringPolicy(approval))
    result = await runtime.run_one(Action("wire", "bank", {"amount": 10**6}))
    assert result.status is status
    assert reason in (result.error or "")
    assert bool(executor.actions) is (status is S.SUCCESS)


async def test_an_unknown_risk_or_another_action_blocks() -> None:
    """A decision with a bogus risk, or about another action, blocks the asked action."""
    executor = RecordingExecutor()
    for policy in (
        StringPolicy("auto", risk="extreme"),
        StringPolicy("auto", other=Action("read", "crm")),
    ):
        result = await make(executor=executor, policy=policy).run_one(Action("wipe", "prod"))
        assert result.status is S.BLOCKED
        assert result.action == Action("wipe", "prod")
    assert executor.actions == []


def test_plan_shows_a_plain_string_block_as_blocked() -> None:
    """plan() normalises decisions too, so has_blocked sees a custom policy's "block"."""
    plan = make(policy=StringPolicy("block", risk=3)).plan([Action("wire", "bank")])
    assert plan.has_blocked
    assert plan[0].approval is Approval.BLOCK
    assert plan[0].risk_level is RiskLevel.HIGH


# ---------------------------------------------------------------- every timeout holds


async def _ticks_while(awaitable: Any) -> tuple[Any, int]:
    """Await ``awaitable`` while counting how often the loop got to run something else."""
    ticks = 0
    done = False

    async def tick() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await asyncio.sleep(0.01)

    ticker = asyncio.ensure_future(tick())
    try:
        return await awaitable, ticks
    finally:
        done = True
        await ticker


async def test_a_sync_callback_times_out_without_blocking_the_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A sleeping sync callback is DENIED in time, the loop runs on, and its late yes is logged."""

    release = threading.Event()

    def slow(decision: PolicyDecision) -> bool:
        release.wait(10)
        return True

    executor = RecordingExecutor()
    runtime = make(executor=executor, approval_handler=slow, approval_timeout=0.1)
    began = time.monotonic()
    result, ticks = await _ticks_while(runtime.run_one(Action("update", "crm")))
    # denied long before the callback answers (it waits until released)
    assert time.monotonic() - began < 5
    assert result.status is S.DENIED
    assert "timed out" in (result.error or "")
    assert ticks >= 3
    assert executor.actions == []
    with caplog.at_level(logging.WARNING, logger="aegis.runtime"):
        release.set()
        for _ in range(100):
            if "after it was abandoned" in caplog.text:
                break
            await asyncio.sleep(0.05)
    assert "after it was abandoned" in caplog.text
    assert executor.actions == []


async def test_a_sync_executor_times_out_without_blocking_the_loop() -> None:
    """A sync executor that hangs FAILS at execute_timeout and never blocks the loop."""
    release = threading.Event()

    def hang(action: Action) -> str:
        release.wait(10)
        return "late"

    runtime = make(executor=hang, execute_timeout=0.1)
    began = time.monotonic()
    result, ticks = await _ticks_while(runtime.run_one(Action("read", "crm")))
    release.set()
    # failed long before the executor returns (it waits until released)
    assert time.monotonic() - began < 5
    assert result.status is S.FAILED
    assert "took longer than 0.1s" in (result.error or "")
    assert ticks >= 3


async def test_handlers_and_executors_that_swallow_cancellation_cannot_hang() -> None:
    """Code that ignores cancellation still ends in DENIED / FAILED at the timeout."""
    stop = asyncio.Event()

    async def stubborn(*_: Any) -> bool:
        while not stop.is_set():
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                continue
        return True

    runtime = make(approval_handler=stubborn, approval_timeout=0.1)
    denied = await asyncio.wait_for(runtime.run_one(Action("update", "crm")), 3)
    runtime = make(executor=stubborn, execute_timeout=0.1)
    failed = await asyncio.wait_for(runtime.run_one(Action("read", "crm")), 3)
    stop.set()
    await asyncio.sleep(0.1)
    assert denied.status is S.DENIED
    assert failed.status is S.FAILED


async def test_a_bare_timeout_error_from_the_handler_is_a_denial() -> None:
    """A handler raising TimeoutError() with no message and no approval_timeout is DENIED."""

    async def gives_up(decision: PolicyDecision) -> bool:
        raise TimeoutError

    result = await make(approval_handler=gives_up).run_one(Action("update", "crm"))
    assert result.status is S.DENIED
    assert "TimeoutError" in (result.error or "")


class BrokenStream(io.StringIO):
    """An input stream whose read fails with an unusual error."""

    def readline(self, size: int | None = -1) -> str:
        raise RuntimeError("terminal vanished")


class BinaryStream:
    """A stream that answers bytes, as a binary stdin does (b"" forever at its end)."""

    def readline(self) -> bytes:
        return b""


@pytest.mark.parametrize("stream", [BrokenStream(), BinaryStream()])
async def test_the_terminal_handler_denies_when_its_input_breaks(stream: Any) -> None:
    """Any breakage of the terminal's input is a denial, never a hang or a loop."""
    handler = CLIApprovalHandler(input_stream=stream, output_stream=io.StringIO())
    runtime = make(approval_handler=handler)
    result = await asyncio.wait_for(runtime.run_one(Action("update", "crm")), 3)
    assert result.status is S.DENIED
    assert "cannot be read" in (result.error or "")


# ---------------------------------------------------------------- lifecycle of a plan


async def test_execute_outside_async_with_sets_up_and_tears_down_around_the_plan() -> None:
    """Outside async with, each execute() sets the executor up before and tears it down after."""
    executor = RecordingExecutor()
    runtime = make(executor=executor)
    await runtime.execute([Action("read", "a")])
    assert (executor.setup_calls, executor.teardown_calls) == (1, 1)
    await runtime.execute([Action("read", "b")])
    assert (executor.setup_calls, executor.teardown_calls) == (2, 2)
    await runtime.close()
    assert (executor.setup_calls, executor.teardown_calls) == (2, 2)


async def test_execute_inside_async_with_shares_one_setup() -> None:
    """Inside async with, plans run on the block's single setup."""
    executor = RecordingExecutor()
    async with make(executor=executor) as runtime:
        await runtime.execute([Action("read", "a")])
        await runtime.execute([Action("read", "b")])
        assert executor.teardown_calls == 0
    assert (executor.setup_calls, executor.teardown_calls) == (1, 1)


async def test_concurrent_plans_outside_async_with_share_one_setup() -> None:
    """Concurrent execute() calls share one setup, torn down when the last one ends."""
    executor = RecordingExecutor()
    runtime = make(executor=executor)
    await asyncio.gather(*(runtime.execute([Action("read", str(i))]) for i in range(4)))
    assert (executor.setup_calls, executor.teardown_calls) == (1, 1)
