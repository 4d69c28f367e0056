"""Sync executors and handlers on worker threads: the hand-off there and back (_calls)."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import pytest

from aegis import Action, Policy, Runtime
from aegis.runtime import _calls
from aegis.runtime._calls import call_with_deadline
from aegis.testing import InMemoryAuditLog

AUTO = Policy.from_dict({"rules": [{"name": "all", "match": {"type": "*"}, "approval": "auto"}]})


async def test_sequential_sync_actions_reuse_one_worker_thread() -> None:
    """A worker is idle before its answer lands, so the next action finds it: no new thread."""
    threads: list[int] = []

    def execute(action: Action) -> int:
        threads.append(threading.get_ident())
        return len(threads)

    runtime = Runtime(executor=execute, policy=AUTO, audit_logger=InMemoryAuditLog())
    results = [await runtime.run_one(Action("read", "crm", {"i": i})) for i in range(30)]
    assert [r.data for r in results] == list(range(1, 31))
    assert len(set(threads)) == 1
    assert threads[0] != threading.get_ident()


async def test_answers_arriving_together_each_reach_their_own_caller() -> None:
    """Many sync calls at once: every caller gets its own answer or its own exception."""
    gate = threading.Barrier(8)

    def work(i: int) -> int:
        gate.wait(5)  # eight threads answer at about the same time
        if i % 3 == 0:
            raise ValueError(f"no {i}")
        return i * 10

    calls = [call_with_deadline(work, (i,), None, "work", is_async=False) for i in range(8)]
    answers = await asyncio.gather(*calls, return_exceptions=True)
    for i, answer in enumerate(answers):
        if i % 3 == 0:
            assert isinstance(answer, ValueError)
            assert str(answer) == f"no {i}"
        else:
            assert answer == i * 10


async def test_context_variables_carry_over_and_stay_apart() -> None:
    """The call sees the caller's context variables; what it sets there stays on its copy."""
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    var.set("caller")

    def read_and_set() -> str:
        seen = var.get()
        var.set("worker")
        return seen

    assert await call_with_deadline(read_and_set, (), 5.0, "read", is_async=False) == "caller"
    assert await call_with_deadline(read_and_set, (), None, "read", is_async=False) == "caller"
    assert var.get() == "caller"


class _NoReaderLoop(asyncio.SelectorEventLoop):
    """A loop that cannot watch sockets, as Windows' proactor loop cannot."""

    def add_reader(self, *args: Any) -> None:
        raise NotImplementedError


def test_a_loop_without_add_reader_still_gets_answers_and_logs_late_ones(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Without add_reader, answers come back by call_soon_threadsafe: same results and warnings."""
    release = threading.Event()

    def slow() -> str:
        release.wait(5)
        return "late"

    async def main() -> tuple[Any, ...]:
        quick = await call_with_deadline(lambda: "quick", (), None, "quick", is_async=False)
        with pytest.raises(ZeroDivisionError):
            await call_with_deadline(lambda: 1 / 0, (), None, "fails", is_async=False)
        with pytest.raises(_calls.Deadline):
            await call_with_deadline(slow, (), 0.05, "the slow one", is_async=False)
        release.set()
        for _ in range(100):
            if "the slow one" in caplog.text:
                break
            await asyncio.sleep(0.02)
        return (quick,)

    loop = _NoReaderLoop()
    try:
        with caplog.at_level(logging.WARNING, logger="aegis.runtime"):
            assert loop.run_until_complete(main()) == ("quick",)
    finally:
        loop.close()
    assert "the slow one answered after it was abandoned" in caplog.text


async def test_an_idle_worker_retires_and_a_new_one_starts_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker idle for the idle limit ends; the next call starts a fresh thread."""
    monkeypatch.setattr(_calls, "_IDLE_SECONDS", 0.1)
    monkeypatch.setattr(_calls, "_WORKERS", _calls._Workers())
    first = await call_with_deadline(threading.current_thread, (), None, "who", is_async=False)
    first.join(5)
    assert not first.is_alive()
    second = await call_with_deadline(threading.current_thread, (), None, "who", is_async=False)
    assert second is not first
    assert second.name == "aegis-worker"


def test_a_thousand_sync_calls_at_once_fit_in_a_small_descriptor_limit(tmp_path: Path) -> None:
    """Past a few workers on sockets, the rest sleep on locks: 1,000 at once under 256 fds."""
    script = tmp_path / "many.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, resource, threading
            from aegis import Action, Policy, Runtime
            from aegis.testing import InMemoryAuditLog

            resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
            AUTO = Policy.from_dict(
                {"rules": [{"name": "all", "match": {"type": "*"}, "approval": "auto"}]}
            )
            gate = threading.Barrier(1000, timeout=60)

            def execute(action):
                gate.wait()  # every call holds its thread until all 1,000 have one
                return action.params["i"]

            async def main():
                runtime = Runtime(executor=execute, policy=AUTO, audit_logger=InMemoryAuditLog())
                results = await asyncio.gather(
                    *(runtime.run_one(Action("read", "crm", {"i": i})) for i in range(1000))
                )
                assert [r.error for r in results if not r.ok] == []
                assert [r.data for r in results] == list(range(1000))
                print("ok")

            asyncio.run(main())
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(script)], check=False, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX")
def test_a_forked_child_gets_fresh_workers(tmp_path: Path) -> None:
    """The parent's idle workers are not in the child: its sync calls start threads of its own."""
    script = tmp_path / "fork.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, os, sys
            from aegis.runtime._calls import call_with_deadline

            async def once():
                return await call_with_deadline(lambda: os.getpid(), (), None, "a call")

            assert asyncio.run(once()) == os.getpid()  # leaves an idle worker behind
            child = os.fork()
            if child == 0:
                answer = asyncio.run(asyncio.wait_for(once(), 30))
                os._exit(0 if answer == os.getpid() else 3)
            _, status = os.waitpid(child, 0)
            sys.exit(os.waitstatus_to_exitcode(status))
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(script)], check=False, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]


async def test_a_sync_executor_raising_stop_iteration_fails_and_strands_no_other_answer() -> None:
    """StopIteration (a bare next() on an empty iterator) fails its action; the batch arrives."""
    gate = threading.Barrier(4, timeout=10)

    def execute(action: Action) -> int:
        gate.wait()  # the four answer together: one wake-up of the loop for all
        if action.params["i"] == 2:
            return int(next(iter(())))
        return int(action.params["i"])

    runtime = Runtime(executor=execute, policy=AUTO, audit_logger=InMemoryAuditLog())
    calls = (runtime.run_one(Action("read", "crm", {"i": i})) for i in range(4))
    results = await asyncio.wait_for(asyncio.gather(*calls), 10)
    assert [r.status.value for r in results] == ["success", "success", "failed", "success"]
    assert [results[i].data for i in (0, 1, 3)] == [0, 1, 3]
    assert results[2].error == "RuntimeError: the executor raised StopIteration"


def test_a_loop_closed_before_a_late_answer_is_freed_with_its_sockets() -> None:
    """asyncio.run() ending while an abandoned sync call still works leaks no loop and no fd."""

    async def abandon(release: threading.Event) -> weakref.ref[asyncio.AbstractEventLoop]:
        with pytest.raises(_calls.Deadline):
            await call_with_deadline(release.wait, (10,), 0.01, "slow", is_async=False)
        return weakref.ref(asyncio.get_running_loop())

    def freed(loop: weakref.ref[asyncio.AbstractEventLoop]) -> bool:
        for _ in range(100):
            gc.collect()
            if loop() is None:
                return True
            time.sleep(0.01)
        return False

    descriptors: list[int] = []
    for _ in range(10):
        release = threading.Event()
        loop = asyncio.run(abandon(release))
        release.set()  # the call answers its closed loop now, and its worker is idle again
        assert freed(loop)
        descriptors.append(len(os.listdir("/proc/self/fd")))
    # A kept loop held two sockets: 18 more after ten. Other files' threads in
    # this process (pytest-xdist) may close theirs meanwhile, so the count may
    # fall; it must not grow by anything like one per loop.
    assert descriptors[-1] - descriptors[0] < 9, descriptors
