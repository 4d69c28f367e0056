"""Calling code we do not control (executors, approval handlers) from the event loop.

Two promises, whatever that code does:

- **The loop never blocks.** A synchronous function runs on a worker
  thread; the loop awaits its answer like any other future, so other
  actions keep moving while it works.
- **A deadline holds.** With a limit, the caller gets :class:`Deadline`
  when it passes, at once: the call is cancelled (an async one) or left to
  finish on its thread (a sync one, which cannot be interrupted), and is
  never awaited again, so code that swallows the cancellation cannot hold
  the runtime. Whatever it answers later is ignored and logged.

Worker threads are daemons, so a call that never returns cannot keep the
interpreter from exiting; idle ones are reused, then retire after a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import queue
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Final

__all__ = ["Deadline", "call_with_deadline", "is_async_callable", "run_in_worker"]

_log = logging.getLogger("aegis.runtime")

#: seconds an idle worker thread waits for more work before it ends
_IDLE_SECONDS: Final = 30.0


class Deadline(TimeoutError):
    """The call took longer than its limit; it was abandoned, not awaited."""

    def __init__(self, limit: float) -> None:
        super().__init__(f"no answer within {limit:g}s")
        self.limit = limit


def is_async_callable(fn: object) -> bool:
    """Whether calling ``fn`` returns a coroutine (an ``async def`` function or object)."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004  # an object with ``async def __call__``
    )


class _Workers:
    """Daemon threads that run submitted functions, reused while there is work."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle = 0
        self._queue: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()

    def submit(self, work: Callable[[], None]) -> None:
        with self._lock:
            if self._idle:
                self._idle -= 1
                self._queue.put(work)
                return
        threading.Thread(target=self._serve, args=(work,), name="aegis-worker", daemon=True).start()

    def _serve(self, work: Callable[[], None]) -> None:
        # Threads waiting in get() always number idle + queued items, so a
        # worker may retire only while idle > 0, i.e. no item is meant for it.
        while True:
            work()
            with self._lock:
                self._idle += 1
            while True:
                try:
                    work = self._queue.get(timeout=_IDLE_SECONDS)
                    break
                except queue.Empty:
                    with self._lock:
                        if self._idle:
                            self._idle -= 1
                            return


_WORKERS = _Workers()


def run_in_worker(fn: Callable[..., Any], *args: Any, what: str = "a call") -> asyncio.Future[Any]:
    """Start ``fn(*args)`` on a worker thread; return a future of the running loop for its answer.

    The function runs in a copy of the caller's context (context variables
    carry over). Cancelling the future does not stop the thread; the
    answer that comes later is dropped and logged, naming ``what``.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    context = contextvars.copy_context()

    def deliver(value: Any, error: BaseException | None) -> None:
        if future.done():
            shown = error if error is not None else value
            _log.warning("%s answered after it was abandoned; ignored: %r", what, shown)
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

    def work() -> None:
        value: Any = None
        error: BaseException | None = None
        try:
            value = context.run(fn, *args)
        except BaseException as exc:  # delivered to the awaiting task, never lost here
            error = exc
        # The loop may be gone by now (the program moved on); nobody waits then.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(deliver, value, error)

    _WORKERS.submit(work)
    return future


async def _settle(first: Awaitable[Any]) -> Any:
    # A sync function may hand back an awaitable: its answer is what that gives.
    value = await first
    while inspect.isawaitable(value):
        value = await value
    return value


def _start(
    fn: Callable[..., Any], args: tuple[Any, ...], what: str, is_async: bool
) -> Awaitable[Any]:
    if is_async:
        out = fn(*args)
        return out if inspect.isawaitable(out) else _ready(out)
    return run_in_worker(fn, *args, what=what)


async def _ready(value: Any) -> Any:
    return value


# What an approval handler or an executor answers most: never awaitable, and
# inspect.isawaitable would ask the Awaitable ABC about it (a Python-level check).
_PLAIN: Final = frozenset({bool, type(None), str, int, float, dict, list, tuple})


async def call_with_deadline(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    limit: float | None,
    what: str,
    *,
    is_async: bool | None = None,
) -> Any:
    """``fn(*args)``, sync on a worker thread or async on the loop, within ``limit`` seconds.

    ``is_async`` is :func:`is_async_callable` of ``fn`` when the caller
    knows it already (taken now when ``None``).

    Raises:
        Deadline: ``limit`` passed first; the call is abandoned (see the
            module's docstring) and its late answer logged, naming ``what``.
        Exception: whatever ``fn`` raised.
    """
    if is_async is None:
        is_async = is_async_callable(fn)
    if limit is None:
        # Speed (benchmarks/calls.py, "approve"; an approval asks through two of
        # these): no coroutine around the call, and no ABC check of a plain answer.
        value = fn(*args) if is_async else run_in_worker(fn, *args, what=what)
        while type(value) not in _PLAIN and inspect.isawaitable(value):
            value = await value
        return value
    pending = _settle(_start(fn, args, what, is_async))
    task = asyncio.ensure_future(pending)
    try:
        done, _ = await asyncio.wait({task}, timeout=limit)
    except BaseException:  # we were cancelled while waiting: so is the call
        task.cancel()
        raise
    if done:
        return task.result()
    task.cancel()
    task.add_done_callback(lambda late: _log_late(late, what, limit))
    raise Deadline(limit)


def _log_late(task: asyncio.Future[Any], what: str, limit: float) -> None:
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:
        _log.warning("%s failed after its %gs limit had passed; ignored: %r", what, limit, error)
    else:
        _log.warning(
            "%s answered after its %gs limit had passed; ignored: %r", what, limit, task.result()
        )
