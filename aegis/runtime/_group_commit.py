"""Group commit: what concurrent actions of one event loop write, written together.

The audit trail (records) and the metering (reservations of usage counters)
both write once or twice per action, and a write that reaches the disk
costs far more than deciding whether to make it. :class:`GroupCommit` gives
them one way to share the cost: items submitted while the event loop runs
other tasks wait for the end of that loop iteration and go to the store in
one call (one transaction, at most one flush), and each submitter gets its
own result only once that call returned, so it never hears of a write that
has not happened.

An agent that runs actions one by one has nothing to group with: when the
task that submitted last submits again and nothing waits, the item is
written at once, on the loop's thread, without a trip round the event loop
(the benchmarks' sequential ``run_one``). Tasks that interleave
(``asyncio.gather``) take the batched path. There, a store that waits on the
network (``remote``) is called on a worker thread, while the next batch
gathers on the loop.

A remote store written at once holds the loop for its round trip, as a
SQLite commit (and its flush) does: on PostgreSQL about a tenth of a
millisecond on a healthy network, at most the store's client-side deadline
(``response_timeout``) when the server stops answering. Handing the write to
a thread and back cost more CPU than the round trip itself (two thread
wake-ups and several loop iterations per write, each way), and an agent
acting one action at a time has nothing to run meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from aegis.errors import AegisError

__all__ = ["GroupCommit"]

T = TypeVar("T")
R = TypeVar("R")

_log = logging.getLogger("aegis.runtime")


class GroupCommit(Generic[T, R]):
    """Commit the items of one event loop iteration with one call of ``commit``.

    Args:
        commit: writes a batch and returns one result per item, in order; an
            exception fails every item of the batch (each waiter gets its own
            copy of an :class:`~aegis.errors.AegisError`, so that tracebacks
            stay apart).
        remote: call ``commit`` of a batch on a worker thread; a task alone
            (see :meth:`alone`) still writes at once, on the loop's thread.
        drop_cancelled: leave out of a batch the items whose submitter was
            cancelled before it was written (a reservation nobody will use);
            by default every submitted item is written (a record, once asked
            for, is kept).
        give_back: called with the result of an item whose submitter was
            cancelled while it was written (to release a reservation).

    ``waiting`` (the queue) and ``last_task`` are read by callers that ask
    :meth:`alone` inline on their hottest path; only this class changes them.

    Several threads, each with its own event loop, may submit to one
    instance: a batch belongs to the loop that opened it, and an item of
    another loop is written on its own meanwhile. Joining a batch and taking
    it happen under a lock, so a thread preempted in between never adds its
    item to a batch already taken (it would wait for ever) nor to another
    loop's (whose thread would resolve it, never waking its loop).
    """

    __slots__ = (
        "__weakref__",
        "_commit",
        "_drop_cancelled",
        "_give_back",
        "_lock",
        "_loop",
        "_remote",
        "_tasks",
        "last_task",
        "waiting",
    )

    def __init__(
        self,
        commit: Callable[[list[T]], Sequence[R]],
        *,
        remote: bool = False,
        drop_cancelled: bool = False,
        give_back: Callable[[R], None] | None = None,
    ) -> None:
        self._commit = commit
        self._remote = remote
        self._drop_cancelled = drop_cancelled
        self._give_back = give_back
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop whose batch waits
        self._lock = threading.Lock()  # guards waiting and _loop between threads
        _EVERY.add(self)  # a forked child forgets its parent's batch (_forget_parents)
        self._tasks: set[asyncio.Task[None]] = set()  # remote commits under way
        #: the items of the batch being gathered, with their waiters
        self.waiting: list[tuple[T, asyncio.Future[R]]] = []
        #: the task that submitted last (one by one, it writes at once)
        self.last_task: asyncio.Task[Any] | None = None

    def alone(self) -> bool:
        """Whether an item submitted now would be written at once, with nothing to group with."""
        return not self.waiting and asyncio.current_task() is self.last_task

    async def submit(self, item: T) -> R:
        """Write ``item`` with the others of this loop iteration; return its result once written."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        if not self.waiting and task is self.last_task:
            return self._commit([item])[0]
        future: asyncio.Future[R] = loop.create_future()
        with self._lock:
            waiting = self.waiting
            joined = not waiting or self._loop is loop
            if joined:
                if not waiting:
                    self._loop = loop
                    loop.call_soon(self._start_remote if self._remote else self.flush)
                waiting.append((item, future))
        if not joined:
            # Another event loop's batch waits: never mix two loops' futures.
            if self._remote:
                return (await asyncio.to_thread(self._commit, [item]))[0]
            return self._commit([item])[0]
        self.last_task = task
        try:
            return await future
        except asyncio.CancelledError:
            # Cancelled once written: whoever wanted the result is gone.
            if future.done() and not future.cancelled() and future.exception() is None:
                self._hand_back(future.result())
            raise

    def flush(self) -> None:
        """Write the batch that waits now, on this thread (end of an iteration, or a close)."""
        batch = self._take()
        if batch:
            try:
                results = self._commit([item for item, _ in batch])
            except Exception as exc:
                self._fail(batch, exc)
            else:
                self._settle(batch, results)

    def _forget_parent(self) -> None:
        # A forked child: the batch that waited holds its parent's items, which
        # the parent writes (here they would be written twice), and the lock
        # may have been held by a thread the child does not have.
        self._lock, self.waiting, self._loop = threading.Lock(), [], None

    def _take(self) -> list[tuple[T, asyncio.Future[R]]]:
        with self._lock:
            batch, self.waiting, self._loop = self.waiting, [], None
        if self._drop_cancelled:
            return [(item, future) for item, future in batch if not future.done()]
        return batch

    def _start_remote(self) -> None:
        task = asyncio.get_running_loop().create_task(self._flush_remote())
        self._tasks.add(task)  # keep a reference until it is done
        task.add_done_callback(self._tasks.discard)

    async def _flush_remote(self) -> None:
        batch = self._take()
        if not batch:
            return
        try:
            # A round trip must not stall the loop: the next batch gathers meanwhile.
            results = await asyncio.to_thread(self._commit, [item for item, _ in batch])
        except Exception as exc:
            self._fail(batch, exc)
        else:
            self._settle(batch, results)

    def _settle(self, batch: list[tuple[T, asyncio.Future[R]]], results: Sequence[R]) -> None:
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():  # cancelled while the batch was written
                self._hand_back(result)
            else:
                future.set_result(result)

    def _fail(self, batch: list[tuple[T, asyncio.Future[R]]], exc: Exception) -> None:
        # Every waiter must wake up, or its action would hang on a write.
        for _, future in batch:
            if not future.done():
                future.set_exception(_copy(exc))

    def _hand_back(self, result: R) -> None:
        if self._give_back is not None:
            try:
                self._give_back(result)
            except AegisError:
                _log.exception("could not give back what a cancelled action had reserved")


#: every GroupCommit of this process, for _forget_parents
_EVERY: weakref.WeakSet[GroupCommit[Any, Any]] = weakref.WeakSet()


def _forget_parents() -> None:
    """In a forked child: empty every batch, which its parent writes."""
    for group in list(_EVERY):
        group._forget_parent()


# At the fork, not checked on every submit: the per-action path stays as it was.
os.register_at_fork(after_in_child=_forget_parents)


def _copy(exc: Exception) -> Exception:
    """A fresh exception per waiter, so that their tracebacks stay apart."""
    if isinstance(exc, AegisError):
        copy = type(exc).__new__(type(exc))
        copy.__dict__.update(exc.__dict__)
        copy.args = exc.args
        copy.__cause__ = exc
        return copy
    return exc
