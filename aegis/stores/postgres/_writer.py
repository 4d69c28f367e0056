"""Group commit: one writer thread per process appends every queued record together.

Callers (event-loop tasks, threads) hand their record to :class:`GroupWriter`
and wait for its future. The writer thread takes everything queued, appends
it in one transaction, and resolves each future only after the commit, so
concurrent actions share one commit (one network round trip on PostgreSQL)
and no caller hears "recorded" before its record is durable. While one
transaction is in flight, the next batch gathers in the queue.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

__all__ = ["GroupWriter"]

In = TypeVar("In")
Out = TypeVar("Out")


class GroupWriter(Generic[In, Out]):
    """A thread that calls ``append(items)`` on batches and resolves each item's future.

    ``append`` must return one output per item, in order, or raise: then
    every future of the batch gets the exception. A forked child starts a
    thread of its own on first use.
    """

    def __init__(
        self, append: Callable[[Sequence[In]], Sequence[Out]], *, max_batch: int = 1000
    ) -> None:
        self._append = append
        self._max_batch = max_batch
        self._cond = threading.Condition()
        self._queue: list[tuple[In, Future[Out]]] = []
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._closed = False

    def submit(self, item: In) -> Future[Out]:
        """Queue ``item``; the future holds its output once committed.

        The future is already running, so cancelling it (an awaiting task
        being cancelled) never drops the record.
        """
        future: Future[Out] = Future()
        future.set_running_or_notify_cancel()
        with self._cond:
            if self._closed:
                raise RuntimeError("the writer is closed")
            if self._thread is None or self._pid != os.getpid():
                # After a fork the parent's thread does not exist in the child,
                # and the parent's queued items are the parent's to write.
                self._queue = []
                self._pid = os.getpid()
                self._thread = threading.Thread(
                    target=self._run, name="aegis-postgres-writer", daemon=True
                )
                self._thread.start()
            self._queue.append((item, future))
            self._cond.notify()
        return future

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
            try:
                outputs = self._append([item for item, _ in batch])
            except BaseException as exc:
                # Every waiter must wake up, or an action would hang on its record.
                for _, future in batch:
                    future.set_exception(exc)
                continue
            for (_, future), output in zip(batch, outputs, strict=True):
                future.set_result(output)

    def close(self, timeout: float | None = None) -> None:
        """Write what is queued, then stop the thread; calling it again does nothing."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread if self._pid == os.getpid() else None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
