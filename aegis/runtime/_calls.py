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
import os
import socket
import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Final

__all__ = [
    "Deadline",
    "call_with_deadline",
    "cancel_requested",
    "is_async_callable",
    "run_in_worker",
]

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


# Speed (benchmarks/calls.py --threads). A hand-off between threads costs
# little CPU; a context switch costs much more, and each wake-up made while
# the GIL is held costs two: the woken thread runs, finds the GIL taken,
# sleeps again, and is woken once more when it is let go. So both ways
# across wake the other thread with a ``send`` on a socket, which lets go of
# the GIL first: a sync call costs two switches, the least there can be (the
# worker sleeps, the loop sleeps). A queue's ``put`` and the loop's
# ``call_soon_threadsafe`` wake with the GIL held: four to eight switches.


class _Answers:
    """Answers of worker threads on their way back to one loop's thread.

    An answer joins a list; only the first answer of a batch wakes the loop,
    with one byte on a socket the loop watches, and answers that arrive
    together share the wake-up. (``call_soon_threadsafe`` also wakes the loop
    by a socket, but with the GIL held, and makes it read until ``recv``
    raises: a Python exception per wake-up.)
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._lock = threading.Lock()
        self._answers: list[tuple[asyncio.Future[Any], Any, BaseException | None, str]] = []
        self._signalled = False  # a byte is on its way and the loop has yet to read it
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        try:
            loop.add_reader(self._read, self._deliver)
        except BaseException:  # NotImplementedError on a proactor loop
            _close(self._read, self._write)
            raise
        # The loop's reader keeps this alive while the loop is open (a closed
        # loop drops its readers), and so does a thread still at work, which
        # holds it to answer; the sockets go with it. Nothing else may hold
        # it: an answer waiting here after the loop closed holds the loop.
        weakref.finalize(self, _close, self._read, self._write).atexit = False

    def put(
        self, future: asyncio.Future[Any], value: Any, error: BaseException | None, what: str
    ) -> None:
        """Hand ``future`` its answer on its loop's thread (called on a worker thread)."""
        with self._lock:
            self._answers.append((future, value, error, what))
            if self._signalled:  # the loop has yet to wake for the earlier answers
                return
            self._signalled = True
        self._write.send(b"\0")

    def _deliver(self) -> None:
        self._read.recv(1)  # the one byte: sent only while unsignalled
        with self._lock:
            answers, self._answers = self._answers, []
            self._signalled = False
        for future, value, error, what in answers:
            _settle_future(future, value, error, what)


class _Threadsafe:
    """Answers back to a loop that cannot watch a socket: one ``call_soon_threadsafe`` each."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def put(
        self, future: asyncio.Future[Any], value: Any, error: BaseException | None, what: str
    ) -> None:
        """Hand ``future`` its answer on its loop's thread (called on a worker thread)."""
        # The loop may be gone by now (the program moved on); nobody waits then.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(_settle_future, future, value, error, what)


def _settle_future(
    future: asyncio.Future[Any], value: Any, error: BaseException | None, what: str
) -> None:
    if future.done():  # abandoned: cancelled at its deadline
        shown = error if error is not None else value
        _log.warning("%s answered after it was abandoned; ignored: %r", what, shown)
    elif error is not None:
        if isinstance(error, StopIteration | GeneratorExit):
            # A future refuses StopIteration (TypeError), which left the caller
            # waiting forever and lost the rest of the batch; a coroutine's
            # would be a RuntimeError too (PEP 479). A GeneratorExit thrown
            # into the awaiting task closes its coroutines instead of raising
            # in them: whatever they await on the way out ends in "coroutine
            # ignored GeneratorExit". On a worker thread neither means what it
            # means in a generator: it is the function's failure.
            error = _misplaced(what, error)
        future.set_exception(error)
    else:
        future.set_result(value)


def _misplaced(what: str, raised: BaseException) -> RuntimeError:
    error = RuntimeError(f"{what} raised {type(raised).__name__}")
    error.__cause__ = raised
    return error


def cancel_requested() -> bool:
    """Whether the running task was asked to stop (a ``CancelledError`` caught now is that).

    A ``CancelledError`` that user code raised, or let out of a future that
    something else cancelled, while nobody cancelled the task awaiting it, is
    that code's failure: passed on, it would end a task nobody cancelled.
    Outside a task nothing tells them apart: a cancellation, to be safe.
    """
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        sock.close()


#: each loop's way back from the workers, made at its first sync call; held
#: weakly (see _Answers): a strong value here, holding the loop through an
#: answer that came after the loop closed, kept the loop and two descriptors
#: for good, a pair per asyncio.run() that abandoned a sync call
_ANSWERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, weakref.ref[_Answers]] = (
    weakref.WeakKeyDictionary()
)


def _answers_for(loop: asyncio.AbstractEventLoop) -> _Answers | _Threadsafe:
    kept = _ANSWERS.get(loop)
    answers = None if kept is None else kept()
    if answers is None:
        try:
            answers = _Answers(loop)
        except NotImplementedError:  # no add_reader (Windows' proactor loop)
            return _Threadsafe(loop)
        _ANSWERS[loop] = weakref.ref(answers)
    return answers


#: one call for a worker: the function, its arguments, the context to run it in,
#: the future for its answer, where to hand that, and what to call it in a warning
_Call = tuple[
    Callable[..., Any],
    tuple[Any, ...],
    contextvars.Context,
    asyncio.Future[Any],
    _Answers | _Threadsafe,
    str,
]


#: at most this many workers sleep on a socket of their own (two descriptors
#: each); more at once, as many sync calls gathered together make, sleep on a
#: lock instead, so a thousand calls never take two thousand file descriptors
_SOCKET_WORKERS: Final = 16


class _SocketBell:
    """How a worker sleeps until handed a call: one byte on a socket of its own.

    ``send`` lets go of the GIL before it wakes the worker (see above).
    """

    def __init__(self) -> None:
        self._bell, self._ring = socket.socketpair()

    def ring(self) -> None:
        self._ring.send(b"\0")

    def wait(self, timeout: float) -> bool:
        """Whether the bell rang within ``timeout`` seconds."""
        self._bell.settimeout(timeout)
        try:
            self._bell.recv(1)
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        _close(self._bell, self._ring)


class _LockBell:
    """The same with no file descriptor: a lock released to wake (the GIL is held then)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()

    def ring(self) -> None:
        self._lock.release()

    def wait(self, timeout: float) -> bool:
        return self._lock.acquire(timeout=timeout)

    def close(self) -> None:
        pass


class _Worker:
    """One daemon thread that runs the calls handed to it, one at a time.

    It sleeps on a bell of its own, rung once per call, and ends after
    :data:`_IDLE_SECONDS` without one.
    """

    def __init__(self, pool: _Workers, call: _Call, bell: _SocketBell | _LockBell) -> None:
        self._pool = pool
        self._call: _Call | None = call
        self._bell = bell
        threading.Thread(target=self._serve, name="aegis-worker", daemon=True).start()

    @property
    def on_socket(self) -> bool:
        return type(self._bell) is _SocketBell

    def hand(self, call: _Call) -> None:
        """Give this idle thread ``call`` and wake it."""
        self._call = call
        self._bell.ring()

    def _serve(self) -> None:
        try:
            while self._call is not None:
                fn, args, context, future, answers, what = self._call
                self._call = None
                value: Any = None
                error: BaseException | None = None
                try:
                    value = context.run(fn, *args)
                except BaseException as exc:  # delivered to the awaiting task, never lost here
                    error = exc
                # Idle before answering: the loop's next call, made as soon as
                # this answer lands, finds this thread instead of starting another.
                self._pool.idle(self)
                answers.put(future, value, error, what)
                del fn, args, context, future, answers, value, error  # nothing kept while idle
                self._wait()
        finally:
            self._pool.gone(self)
            self._bell.close()

    def _wait(self) -> None:
        """Sleep until a call is handed over, or return without one to retire."""
        while not self._bell.wait(_IDLE_SECONDS):
            if self._pool.retire(self):
                return  # no call was handed over, and none will be now


class _Workers:
    """The idle worker threads; the most recently busy (its caches warm) is used first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._on_sockets = 0  # live workers sleeping on a socket

    def submit(self, call: _Call) -> None:
        with self._lock:
            worker = self._idle.pop() if self._idle else None
            socket_bell = worker is None and self._on_sockets < _SOCKET_WORKERS
            if socket_bell:
                self._on_sockets += 1
        if worker is not None:
            worker.hand(call)
            return
        bell: _SocketBell | _LockBell = _LockBell()
        if socket_bell:
            try:
                bell = _SocketBell()
            except OSError:  # out of descriptors: a lock wakes it as well
                with self._lock:
                    self._on_sockets -= 1
        try:
            _Worker(self, call, bell)
        except BaseException:  # no thread could start: the call fails, nothing leaks
            if type(bell) is _SocketBell:
                with self._lock:
                    self._on_sockets -= 1
            bell.close()
            raise

    def idle(self, worker: _Worker) -> None:
        with self._lock:
            self._idle.append(worker)

    def retire(self, worker: _Worker) -> bool:
        """Whether ``worker`` may end: still idle, so no call was handed to it."""
        with self._lock:
            if worker in self._idle:
                self._idle.remove(worker)
                return True
            return False

    def gone(self, worker: _Worker) -> None:
        """``worker``'s thread ends (retired, or its answer could not be handed back)."""
        with self._lock:
            if worker in self._idle:  # never hand a call to a thread that is gone
                self._idle.remove(worker)
            if worker.on_socket:
                self._on_sockets -= 1

    def forget(self) -> None:
        """In a forked child: the parent's threads do not exist here."""
        self._lock = threading.Lock()
        self._idle = []
        self._on_sockets = 0


_WORKERS = _Workers()


def _after_fork_in_child() -> None:
    # A child of fork() has only the thread that forked: the idle workers it
    # inherited would never answer, and the loops' sockets are the parent's.
    _WORKERS.forget()
    _ANSWERS.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def run_in_worker(fn: Callable[..., Any], *args: Any, what: str = "a call") -> asyncio.Future[Any]:
    """Start ``fn(*args)`` on a worker thread; return a future of the running loop for its answer.

    The function runs in a copy of the caller's context (context variables
    carry over). Cancelling the future does not stop the thread; the
    answer that comes later is dropped and logged, naming ``what``.
    """
    loop = asyncio.get_running_loop()
    answers = _answers_for(loop)
    future: asyncio.Future[Any] = loop.create_future()
    _WORKERS.submit((fn, args, contextvars.copy_context(), future, answers, what))
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
