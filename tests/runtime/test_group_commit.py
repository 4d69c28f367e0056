"""GroupCommit: the one batcher of the audit and the metering."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from aegis.errors import AuditError
from aegis.runtime._group_commit import GroupCommit


class Store:
    """Records each batch it commits, and on which thread; fails when told to."""

    def __init__(self, fail: Exception | None = None, wait: threading.Event | None = None) -> None:
        self.batches: list[list[int]] = []
        self.threads: list[int] = []
        self.fail = fail
        self.wait = wait

    def commit(self, items: list[int]) -> list[str]:
        if self.wait is not None:
            self.wait.wait(timeout=30)
        self.threads.append(threading.get_ident())
        if self.fail is not None:
            raise self.fail
        self.batches.append(list(items))
        return [f"r{item}" for item in items]


async def test_concurrent_items_share_one_commit() -> None:
    """Items submitted in one loop iteration go to the store in one call; each gets its own."""
    store = Store()
    group: GroupCommit[int, str] = GroupCommit(store.commit)
    results = await asyncio.gather(*(group.submit(n) for n in range(20)))
    assert results == [f"r{n}" for n in range(20)]
    assert store.batches == [list(range(20))]


async def test_a_task_alone_writes_at_once() -> None:
    """The task that submitted last, with nothing waiting, writes before any other task runs."""
    store = Store()
    group: GroupCommit[int, str] = GroupCommit(store.commit)
    await group.submit(1)  # the first time it takes the batched path
    assert group.alone()
    seen: list[str] = []

    async def other() -> None:
        seen.append(f"other ran after {len(store.batches)} batches")

    task = asyncio.ensure_future(other())
    assert await group.submit(2) == "r2"
    assert store.batches == [[1], [2]]
    assert seen == []  # no trip round the loop: the other task has not run yet
    await task


async def test_a_failed_commit_fails_every_waiter_with_its_own_error() -> None:
    """Every waiter wakes with an error of the same kind and text, each its own object."""
    store = Store(fail=AuditError("disk full"))
    group: GroupCommit[int, str] = GroupCommit(store.commit)
    outcomes = await asyncio.gather(*(group.submit(n) for n in range(3)), return_exceptions=True)
    assert all(isinstance(o, AuditError) and str(o) == "disk full" for o in outcomes)
    assert len({id(o) for o in outcomes}) == 3


@pytest.mark.parametrize(("drop", "committed"), [(False, [0, 1, 2]), (True, [0, 2])])
async def test_a_cancelled_submitter_is_written_unless_dropped(
    drop: bool, committed: list[int]
) -> None:
    """Records stay written once asked for; reservations of a cancelled check are left out."""
    store = Store()
    group: GroupCommit[int, str] = GroupCommit(store.commit, drop_cancelled=drop)
    tasks = [asyncio.ensure_future(group.submit(n)) for n in range(3)]
    await asyncio.sleep(0)  # all three wait in the batch
    tasks[1].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert store.batches == [committed]


async def test_remote_commits_run_on_a_thread_and_give_back_what_is_abandoned() -> None:
    """A remote store is written on a worker thread; a result nobody awaits is handed back."""
    release = threading.Event()
    store = Store(wait=release)
    given_back: list[str] = []
    group: GroupCommit[int, str] = GroupCommit(
        store.commit, remote=True, give_back=given_back.append
    )
    first = asyncio.ensure_future(group.submit(1))
    second = asyncio.ensure_future(group.submit(2))
    await asyncio.sleep(0.05)  # the batch is on its thread, blocked in the store
    second.cancel()
    release.set()
    assert await first == "r1"
    with pytest.raises(asyncio.CancelledError):
        await second
    for _ in range(1000):  # the thread's result reaches the loop a moment later
        if given_back:
            break
        await asyncio.sleep(0.01)
    assert given_back == ["r2"]
    assert store.threads[0] != threading.get_ident()


async def test_a_task_alone_writes_a_remote_store_at_once_on_the_loop_thread() -> None:
    """One task submitting in turn never waits for a thread: its items go to the store at once."""
    store = Store()
    group: GroupCommit[int, str] = GroupCommit(store.commit, remote=True)
    assert await group.submit(1) == "r1"  # the first submit of a task is batched: a thread
    assert group.alone()
    assert await group.submit(2) == "r2"
    assert await group.submit(3) == "r3"
    assert store.batches == [[1], [2], [3]]
    loop_thread = threading.get_ident()
    assert store.threads[0] != loop_thread
    assert store.threads[1:] == [loop_thread, loop_thread]


def test_another_loop_never_joins_a_batch_of_the_first() -> None:
    """While one loop's batch waits, a submit from another loop is written on its own."""
    store = Store()
    group: GroupCommit[int, str] = GroupCommit(store.commit)
    results: list[str] = []

    async def first_loop() -> None:
        waiting = asyncio.ensure_future(group.submit(1))
        await asyncio.sleep(0)
        assert group.waiting  # the batch of this loop waits for the end of its iteration
        thread = threading.Thread(target=lambda: results.append(asyncio.run(group.submit(2))))
        thread.start()
        thread.join(timeout=30)
        results.append(await waiting)

    asyncio.run(first_loop())
    assert results == ["r2", "r1"]
    assert store.batches == [[2], [1]]


class PausedLoop(asyncio.SelectorEventLoop):
    """An event loop that, once armed, makes its next future only when ``go`` is set.

    ``inside`` says that it waits: a thread preempted at that point of a submit.
    """

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.inside = threading.Event()
        self.go = threading.Event()

    def create_future(self) -> asyncio.Future[Any]:
        if self.armed:
            self.armed = False
            self.inside.set()
            self.go.wait(timeout=30)
        return super().create_future()


def test_a_submit_from_another_thread_never_joins_a_batch_already_taken() -> None:
    """A thread preempted in its submit while another loop's batch came and went is written."""
    store = Store()
    group: GroupCommit[int, str] = GroupCommit(store.commit)
    paused = PausedLoop()
    results: list[str] = []

    async def submit_paused() -> str:
        paused.armed = True
        return await group.submit(2)

    def other_thread() -> None:
        with asyncio.Runner(loop_factory=lambda: paused) as runner:
            # before the fix the item waited in a batch nobody would write: a hang
            results.append(runner.run(asyncio.wait_for(submit_paused(), timeout=10)))

    async def first_loop() -> None:
        thread = threading.Thread(target=other_thread)
        thread.start()
        assert paused.inside.wait(timeout=30)  # the other thread is inside its submit
        results.append(await group.submit(1))  # this loop's batch is gathered and written
        paused.go.set()
        await asyncio.to_thread(thread.join, 60)

    asyncio.run(first_loop())
    assert results == ["r1", "r2"]
    assert sorted(store.batches) == [[1], [2]]
