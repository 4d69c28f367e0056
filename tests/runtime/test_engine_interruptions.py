"""What the runtime does when user code raises a BaseException, on a real SQLite trail.

An executor, an approval handler or the caller can raise more than
``Exception``. Each action still gets its records, whatever was raised:

- ``KeyboardInterrupt``, ``SystemExit`` and any other ``BaseException`` of
  the application mean "stop": the action is recorded as interrupted
  (``FAILED``, or ``DENIED`` while it waited for approval), then the same
  exception goes on to the caller;
- a ``CancelledError`` when nothing cancelled the caller's task, and a
  ``GeneratorExit`` from a sync function (on its worker thread, where it
  closes nothing), are the code's failure: the action ends ``FAILED`` (or
  ``DENIED``) and the caller gets the Result, never a cancellation of a task
  nobody cancelled.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from engine_support import TablePolicy
from flow_horizon import looked_back

from aegis.core.action import Action
from aegis.core.decision import PolicyDecision
from aegis.core.policy import Policy
from aegis.core.result import Result, ResultStatus
from aegis.errors import ConfigurationError
from aegis.runtime.audit import AuditLogger
from aegis.runtime.audit_logging import LoggingAuditLogger
from aegis.runtime.engine import Runtime


class Halt(BaseException):
    """An application's own BaseException (as pytest's outcomes or greenlet's exit are)."""


def _raiser(exc: BaseException, *, is_async: bool, approval: bool) -> Callable[..., Any]:
    def sync(arg: Any) -> Any:
        if approval or arg.type == "boom":
            raise exc
        return {"ran": arg.target}

    async def coro(arg: Any) -> Any:
        return sync(arg)

    return coro if is_async else sync


def _runtime(db: Path, exc: BaseException, place: str) -> Runtime:
    is_async = place.startswith("async")
    approval = place.endswith("approval")
    raiser = _raiser(exc, is_async=is_async, approval=approval)
    if approval:

        async def execute(action: Action) -> dict[str, str]:
            return {"ran": action.target}

        return Runtime(
            executor=execute,
            policy=TablePolicy(),
            approval_handler=raiser,
            audit_logger=AuditLogger(db),
        )
    return Runtime(
        executor=raiser,
        policy=TablePolicy(),
        approval_handler=lambda d: True,
        audit_logger=AuditLogger(db),
    )


PLACES = ["sync executor", "async executor", "sync approval", "async approval"]


def _action(place: str) -> Action:
    return Action("update" if place.endswith("approval") else "boom", "crm")


def _stray(kind: str) -> BaseException:
    return asyncio.CancelledError("its own") if kind == "CancelledError" else GeneratorExit()


@pytest.mark.parametrize(
    ("kind", "place"),
    [("CancelledError", place) for place in PLACES]
    + [("GeneratorExit", "sync executor"), ("GeneratorExit", "sync approval")],
)
async def test_a_stray_cancellation_or_generator_exit_is_the_code_s_failure(
    tmp_path: Path, kind: str, place: str
) -> None:
    """Nothing cancelled the caller: the action fails (or is denied), the caller gets its Result.

    Raised out of run_one, a CancelledError would mark the caller's task
    cancelled; a GeneratorExit handed over from a worker thread closed the
    caller's coroutines instead ("coroutine ignored GeneratorExit").
    """
    runtime = _runtime(tmp_path / "audit.db", _stray(kind), place)
    async with runtime:
        # Beside another action, so the records are committed as a batch.
        other, result = await asyncio.gather(
            runtime.run_one(Action("read", "other")), runtime.run_one(_action(place))
        )
        audit = runtime.audit
        assert isinstance(audit, AuditLogger)
        records = {r["action_target"]: r for r in audit.get_log()}
        assert audit.pending() == []
        assert audit.verify().ok
        again = await runtime.run_one(Action("read", "after"))
    assert (other.status, again.status) == (ResultStatus.SUCCESS, ResultStatus.SUCCESS)
    denied = place.endswith("approval")
    assert result.status is (ResultStatus.DENIED if denied else ResultStatus.FAILED)
    assert result.error is not None
    assert kind in result.error
    assert "interrupted" not in result.error
    assert "left running" not in result.error  # it raised: it is not running
    record = records["crm"]
    assert record["result_status"] == result.status.value
    if denied:
        assert record["human_decision"].startswith("denied: error: ")
        assert kind in record["human_decision"]
    else:
        assert record["result_error"] == result.error


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("kind", ["KeyboardInterrupt", "SystemExit", "Halt"])
async def test_an_interruption_is_recorded_then_raised(
    tmp_path: Path, kind: str, place: str
) -> None:
    """KeyboardInterrupt, SystemExit or the application's own BaseException: recorded, re-raised.

    The caller gets the very exception (its meaning, e.g. stop the program,
    is the caller's to act on), the record says the action was interrupted,
    and the runtime and the loop go on working for a caller that catches it.
    """
    exc: BaseException = {
        "KeyboardInterrupt": KeyboardInterrupt(),
        "SystemExit": SystemExit(3),
        "Halt": Halt("stop"),
    }[kind]
    runtime = _runtime(tmp_path / "audit.db", exc, place)
    async with runtime:
        with pytest.raises(type(exc)) as raised:
            await runtime.run_one(_action(place))
        assert raised.value is exc
        again = await runtime.run_one(Action("read", "after"))
        audit = runtime.audit
        assert isinstance(audit, AuditLogger)
        first, second = audit.get_log()
        assert audit.pending() == []
        assert audit.verify().ok
    assert again.status is ResultStatus.SUCCESS
    assert second["result_status"] == "success"
    denied = place.endswith("approval")
    assert first["result_status"] == ("denied" if denied else "failed")
    assert first["result_error"].startswith(f"interrupted: {kind}")
    if not denied:
        assert first["start_id"] is not None  # it reached the executor: started, then ended


async def test_a_real_cancellation_still_cancels(tmp_path: Path) -> None:
    """The caller's cancellation of a waiting approval is no failure of the handler: it goes on."""
    asked = asyncio.Event()

    async def wait(decision: PolicyDecision) -> bool:
        asked.set()
        await asyncio.Event().wait()
        return True

    async def execute(action: Action) -> None:
        raise AssertionError("never runs")

    audit = AuditLogger(tmp_path / "audit.db")
    runtime = Runtime(
        executor=execute, policy=TablePolicy(), approval_handler=wait, audit_logger=audit
    )
    async with runtime:
        task = asyncio.ensure_future(runtime.run_one(Action("update", "crm")))
        await asked.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        [record] = audit.get_log()
    assert record["result_status"] == "denied"
    assert record["result_error"] == "interrupted: CancelledError"


async def _cancel_the_second_of_three(
    tmp_path: Path, *, once_noting: bool
) -> tuple[BaseException | None, list[int], dict[str, Any]]:
    """Run three gathered reads and cancel the second while its start record waits in the
    batch (or, ``once_noting``, while its flow event does); what it raised, which ran and
    the cancelled action's record, read (and the trail verified) inside the runtime."""
    ran: list[int] = []

    async def execute(action: Action) -> None:
        ran.append(action.params["n"])

    looked_back(tmp_path / "audit.db")  # another process's flow rules: events are noted
    audit = AuditLogger(tmp_path / "audit.db")
    async with Runtime(executor=execute, policy=TablePolicy(), audit_logger=audit) as runtime:
        actions = [Action("read", "crm", {"n": n}) for n in range(3)]
        tasks = [asyncio.ensure_future(runtime.run_one(action)) for action in actions]
        if once_noting:
            while len(audit.pending()) < 3:  # the three starts are written, with one commit
                await asyncio.sleep(0)
            await asyncio.sleep(0)  # each now waits for its flow event, noted with the others'
        else:
            await asyncio.sleep(0)  # each waits for its start record, written with the others'
        tasks[1].cancel()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        assert audit.pending() == []
        (cancelled,) = [r for r in audit.get_log() if r["action_params"] == {"n": 1}]
        assert audit.verify().ok
    error = outcomes[1] if isinstance(outcomes[1], BaseException) else None
    return error, ran, cancelled


async def test_an_action_cancelled_while_its_start_is_written_gets_its_outcome(
    tmp_path: Path,
) -> None:
    """Cancelled while its start record waits in a batch, the action is recorded as not run.

    The batch writes the start all the same (a record once asked for is
    kept); without an outcome beside it, the trail would show an action
    that began and never ended, as a killed process leaves, for one that
    never ran.
    """
    raised, ran, cancelled = await _cancel_the_second_of_three(tmp_path, once_noting=False)
    assert isinstance(raised, asyncio.CancelledError)
    assert sorted(ran) == [0, 2]
    assert cancelled["result_status"] == "skipped"
    assert cancelled["result_error"].startswith("interrupted: CancelledError")
    assert cancelled["start_id"] is not None


async def test_an_action_cancelled_while_it_is_noted_gets_its_outcome(tmp_path: Path) -> None:
    """Cancelled while its flow event is noted (its start written), it is recorded as not run."""
    raised, ran, cancelled = await _cancel_the_second_of_three(tmp_path, once_noting=True)
    assert isinstance(raised, asyncio.CancelledError)
    assert sorted(ran) == [0, 2]
    assert cancelled["result_status"] == "skipped"
    assert cancelled["result_error"] == "interrupted: CancelledError"
    assert cancelled["start_id"] is not None


async def test_an_action_cancelled_before_it_was_noted_is_not_counted_as_run(
    tmp_path: Path,
) -> None:
    """Another runtime's ``not_after`` does not count tests cancelled before they were noted.

    Every runtime notes every action it lets through, for the flow rules
    of all; one cancelled while its event waited to be noted did not run,
    so a rule blocking deploys unless tests ran must still block.
    """
    ran: list[str] = []

    async def execute(action: Action) -> None:
        ran.append(action.type)

    db = tmp_path / "audit.db"
    looked_back(db)  # the gated runtime's rules look back (it runs below, after)
    plain = Policy.from_dict(
        {"rules": [{"name": "all", "match": {"type": "*"}, "approval": "auto"}]}
    )
    audit = AuditLogger(db)
    async with Runtime(executor=execute, policy=plain, audit_logger=audit, session_id="s") as rt:
        actions = [Action("run_tests", "ci"), Action("read", "crm"), Action("read", "wiki")]
        tasks = [asyncio.ensure_future(rt.run_one(action)) for action in actions]
        while len(audit.pending()) < 3:  # the three starts are written, with one commit
            await asyncio.sleep(0)
        await asyncio.sleep(0)  # each now waits for its flow event, noted with the others'
        tasks[0].cancel()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(outcomes[0], asyncio.CancelledError)
    assert ran == ["read", "read"]
    gated = Policy.from_dict(
        {
            "rules": [
                {
                    "name": "untested_deploys",
                    "match": {"type": "deploy"},
                    "conditions": {"not_after": {"type": "run_tests"}},
                    "approval": "block",
                },
                {"name": "all", "match": {"type": "*"}, "approval": "auto"},
            ]
        }
    )
    other = Runtime(executor=execute, policy=gated, audit_logger=AuditLogger(db), session_id="s")
    async with other:
        deploy = await other.run_one(Action("deploy", "prod"))
    assert deploy.status is ResultStatus.BLOCKED
    assert ran == ["read", "read"]


# ---------------------------------------------------------------- Ctrl-C in a real process

CHILD = Path(__file__).with_name("interrupt_child.py")


@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT")
@pytest.mark.parametrize(
    ("step", "raw", "status", "error"),
    [
        ("approval", False, "denied", "interrupted: CancelledError"),
        ("executor", False, "failed", "interrupted: CancelledError; the executor was left running"),
        ("async-executor", False, "failed", "interrupted: CancelledError"),
        ("commit", False, "success", None),
        # Without asyncio.run, SIGINT raises KeyboardInterrupt wherever the loop
        # is: in the action's coroutine it is recorded; out of the loop's wait it
        # leaves the action as started, with no outcome, and said so.
        ("executor", True, "raw", "interrupted: KeyboardInterrupt"),
    ],
)
def test_ctrl_c_mid_action_leaves_its_outcome_or_a_reported_start(
    tmp_path: Path, step: str, raw: bool, status: str, error: str | None
) -> None:
    """SIGINT while approving, executing, or committing the final record: nothing goes missing.

    The program still stops as Ctrl-C stops it (KeyboardInterrupt), the chain
    verifies, and the action has its final record, or shows as started
    without an outcome (``pending()``, which ``aegis audit verify`` reports).
    """
    db = tmp_path / "audit.db"
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(db), step, *(["raw"] if raw else [])],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n"
        lock = None
        if step == "commit":
            # The final record must wait for this lock; the executor may end now.
            lock = sqlite3.connect(db, isolation_level=None)
            lock.execute("BEGIN IMMEDIATE")
            go = tmp_path / "audit.db.go"
            go.touch()
            deadline = time.monotonic() + 30
            while go.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.3)  # the executor is done: the child reaches its commit and waits
        with AuditLogger(db, create=False, readonly=True) as seen:
            assert [r["action_type"] for r in seen.get_log() if r["result_status"]] == ["read"]
        child.send_signal(signal.SIGINT)
        if lock is not None:
            time.sleep(0.2)
            lock.execute("ROLLBACK")
            lock.close()
        _, err = child.communicate(timeout=60)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGINT, err  # Ctrl-C still stops the program
    assert err.rstrip().endswith("KeyboardInterrupt")
    with AuditLogger(db, create=False, readonly=True) as audit:
        assert audit.verify().ok
        first, transfer = audit.get_log()
        pending = [p["action_type"] for p in audit.pending()]
    assert first["result_status"] == "success"
    assert transfer["action_type"] == "wire_transfer"
    if status == "raw" and transfer["result_status"] is None:
        assert pending == ["wire_transfer"]
    else:
        if status == "raw":
            status = "failed"
        assert transfer["result_status"] == status
        assert pending == []
        if error is None:
            assert transfer["result_error"] is None
        else:
            assert transfer["result_error"].startswith(error)


class Unprintable(Exception):
    """An exception whose message cannot be read."""

    def __str__(self) -> str:
        raise RuntimeError("no message here")


@pytest.mark.parametrize("place", PLACES)
async def test_an_exception_whose_message_raises_is_still_a_plain_failure(
    tmp_path: Path, place: str
) -> None:
    """Reading its message raised: the action still fails (or is denied), named by the type.

    The runtime's own ``str()`` of it raised in its except clause, so the
    caller got that RuntimeError and the record read "interrupted".
    """
    runtime = _runtime(tmp_path / "audit.db", Unprintable(), place)
    async with runtime:
        result = await runtime.run_one(_action(place))
        audit = runtime.audit
        assert isinstance(audit, AuditLogger)
        [record] = audit.get_log()
        assert audit.verify().ok
    denied = place.endswith("approval")
    assert result.status is (ResultStatus.DENIED if denied else ResultStatus.FAILED)
    assert result.error is not None
    assert "Unprintable" in result.error
    assert "interrupted" not in result.error
    assert record["result_status"] == result.status.value
    assert record["result_error"] == result.error


async def test_a_handler_timeout_whose_message_raises_still_denies(tmp_path: Path) -> None:
    """The handler's own TimeoutError, unreadable: a denial for a timeout, not a crash."""

    class Late(TimeoutError):
        def __str__(self) -> str:
            raise RuntimeError("no message here")

    runtime = _runtime(tmp_path / "audit.db", Late(), "async approval")
    async with runtime:
        result = await runtime.run_one(Action("update", "crm"))
    assert result.status is ResultStatus.DENIED
    assert result.error == "approval timed out (the approval handler raised TimeoutError)"


def test_sys_exit_in_a_sync_executor_exits_the_program_after_its_record(tmp_path: Path) -> None:
    """sys.exit(3) on the executor's worker thread ends the program with 3, as a direct call would.

    (On a plain thread it would end only that thread, and the agent would
    wait forever.) The action's record is committed first.
    """
    db = tmp_path / "audit.db"
    done = subprocess.run(
        [sys.executable, str(CHILD), str(db), "exit"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 3, done.stderr
    with AuditLogger(db, create=False, readonly=True) as audit:
        assert audit.verify().ok
        assert audit.pending() == []
        first, transfer = audit.get_log()
    assert (first["result_status"], transfer["result_status"]) == ("success", "failed")
    assert transfer["result_error"] == "interrupted: SystemExit: 3"


def test_first_actions_from_several_threads_at_once_never_hang(tmp_path: Path) -> None:
    """Threads each running asyncio.run(run_one) on one fresh runtime: a Result or a clear error.

    The runtime's setup runs once, on one loop; a call from another thread's
    loop meanwhile used to wait on a lock of that loop, which nothing woke.
    """

    class Slow:
        async def setup(self) -> None:
            await asyncio.sleep(0.3)

        async def execute(self, action: Action) -> str:
            return action.target

    audit = AuditLogger(tmp_path / "audit.db")
    runtime = Runtime(executor=Slow(), policy=TablePolicy(), audit_logger=audit)
    answers: list[object] = []

    def call(n: int) -> None:
        try:
            answers.append(asyncio.run(runtime.run_one(Action("read", f"t{n}"))))
        except ConfigurationError as exc:
            answers.append(exc)

    threads = [threading.Thread(target=call, args=(n,), daemon=True) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert not any(thread.is_alive() for thread in threads), "a first call hung"
    results = [a for a in answers if isinstance(a, Result)]
    assert len(answers) == 4
    assert results, answers
    assert all(r.status is ResultStatus.SUCCESS for r in results)
    for error in answers:
        if not isinstance(error, Result):
            assert "another event loop" in str(error)
    assert len(audit.get_log()) == len(results)  # every Result has its record
    assert audit.verify().ok
    asyncio.run(runtime.close())


# ------------------------------------------------- recording a result whose code raises


class Unreadable:
    """An executor's data whose ``__repr__`` (what the audit stores of it) raises ``exc``."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __repr__(self) -> str:
        raise self.exc


def _reading_raises(exc: BaseException, where: str) -> Callable[[Action], Any]:
    """An executor whose Result raises ``exc`` when read: its data, or its error changed late."""

    async def execute(action: Action) -> Any:
        if where == "data":
            return {"rows": [Unreadable(exc)]}
        result = Result(action, ResultStatus.FAILED, error="upstream said no")
        result.error = Unreadable(exc)  # type: ignore[assignment]  # a Result changed after it was built
        return result

    return execute


def _read_back(db: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The one record of the trail at ``db`` and its actions without an outcome, read anew."""
    with AuditLogger(db, create=False, readonly=True) as audit:
        assert audit.verify().ok
        [record] = audit.get_log()
        return record, audit.pending()


@pytest.mark.parametrize("where", ["data", "error"])
@pytest.mark.parametrize("kind", ["KeyboardInterrupt", "SystemExit", "Halt"])
async def test_an_interruption_while_recording_the_result_is_recorded_then_raised(
    tmp_path: Path, kind: str, where: str
) -> None:
    """Ctrl-C or sys.exit() in the result's __repr__ or __str__: recorded interrupted, then raised.

    The audit reads the result after the action started; the exception left
    the action started without an outcome.
    """
    exc: BaseException = {
        "KeyboardInterrupt": KeyboardInterrupt(),
        "SystemExit": SystemExit(3),
        "Halt": Halt("stop"),
    }[kind]
    db = tmp_path / "audit.db"
    runtime = Runtime(
        executor=_reading_raises(exc, where),
        policy=TablePolicy(),
        audit_logger=AuditLogger(db),
    )
    async with runtime:
        with pytest.raises(type(exc)) as raised:
            await runtime.run_one(Action("read", "crm"))
        assert raised.value is exc
    record, pending = _read_back(db)
    assert pending == []
    assert record["start_id"] is not None  # it started, and has its outcome
    assert record["result_status"] == "failed"
    assert record["result_error"].startswith(f"interrupted: {kind}")
    assert record["result_data"] is None  # nothing of what could not be read


@pytest.mark.parametrize("where", ["data", "error"])
@pytest.mark.parametrize("kind", ["RuntimeError", "CancelledError", "GeneratorExit"])
async def test_a_failure_while_recording_the_result_keeps_the_rest_of_it(
    tmp_path: Path, kind: str, where: str
) -> None:
    """The result's own failure to be read (a stray CancelledError too) is marked; the action ends.

    Nothing cancelled or closed anything: the unreadable part is stored as a
    marker and the caller gets its Result, as with any broken __repr__.
    """
    exc: BaseException = {
        "RuntimeError": RuntimeError("broken"),
        "CancelledError": asyncio.CancelledError("its own"),
        "GeneratorExit": GeneratorExit(),
    }[kind]
    db = tmp_path / "audit.db"
    runtime = Runtime(
        executor=_reading_raises(exc, where), policy=TablePolicy(), audit_logger=AuditLogger(db)
    )
    async with runtime:
        result = await runtime.run_one(Action("read", "crm"))
    record, pending = _read_back(db)
    assert pending == []
    assert record["start_id"] is not None
    assert record["result_status"] == result.status.value
    if where == "data":
        assert result.status is ResultStatus.SUCCESS
        assert record["result_data"] == {"rows": ["<unrepresentable Unreadable>"]}
    else:
        assert result.status is ResultStatus.FAILED
        assert record["result_error"] == "<unrepresentable Unreadable>"


async def test_the_logging_backend_records_an_interruption_while_reading_the_result() -> None:
    """LoggingAuditLogger keeps the interrupted action's record too (it has no start records)."""
    audit = LoggingAuditLogger()
    exc = KeyboardInterrupt()
    runtime = Runtime(
        executor=_reading_raises(exc, "data"), policy=TablePolicy(), audit_logger=audit
    )
    async with runtime:
        with pytest.raises(KeyboardInterrupt) as raised:
            await runtime.run_one(Action("read", "crm"))
        assert raised.value is exc
        [record] = audit.get_log()
    assert record["result_status"] == "failed"
    assert record["result_error"] == "interrupted: KeyboardInterrupt"


def test_audit_log_records_an_interruption_while_reading_the_result(tmp_path: Path) -> None:
    """AuditLogger.log, called directly, writes the record as interrupted before Ctrl-C goes on."""
    action = Action("read", "crm")
    decision = TablePolicy().evaluate(action)
    exc = KeyboardInterrupt()
    db = tmp_path / "audit.db"
    with AuditLogger(db) as audit:
        result = Result(action, ResultStatus.SUCCESS, data=Unreadable(exc))
        with pytest.raises(KeyboardInterrupt) as raised:
            audit.log("s", decision, result=result)
        assert raised.value is exc
    record, _ = _read_back(db)
    assert (record["result_status"], record["result_error"]) == (
        "failed",
        "interrupted: KeyboardInterrupt",
    )
