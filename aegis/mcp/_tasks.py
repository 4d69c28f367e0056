"""The proxy's own MCP tasks: a task-augmented ``tools/call`` that outlives its request.

A client that sends ``tools/call`` with a ``task`` member (MCP 2025-11-25)
gets the task at once and polls it (``tasks/get``) or waits for its outcome
(``tasks/result``) without holding the call's own request open, so a call
waiting for a reviewer survives the client's request timeout. The proxy is
the receiver of every such task: the decision, the approval and the call
to the server run behind it, and the task ends with the call's real
outcome, which is also what the audit trail records.

Pure bookkeeping: :class:`TaskTable` knows no transport and no runtime.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aegis.mcp._jsonrpc import Message

__all__ = ["RELATED_TASK", "TERMINAL", "ProxyTask", "TaskTable"]

#: the ``_meta`` key tying a message to its task
RELATED_TASK = "io.modelcontextprotocol/related-task"
#: statuses a task never leaves
TERMINAL = frozenset({"completed", "failed", "cancelled"})
#: how long a finished task stays readable when the client asked for no ttl (ms)
_DEFAULT_TTL_MS = 3_600_000
#: the longest a finished task is kept, whatever the client asked (ms)
_MAX_TTL_MS = 24 * 3_600_000
#: the poll interval suggested to clients (ms)
POLL_INTERVAL_MS = 1000
#: tasks one session keeps at most; the oldest finished ones go first
_MAX_TASKS = 1000


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class ProxyTask:
    """One task-augmented call and where it stands."""

    task_id: str
    ttl_ms: int
    created_at: str = field(default_factory=_now)
    updated_at: str = ""
    status: str = "working"
    status_message: str | None = None
    #: the call's reply (a JSON-RPC result or error) once it ended
    reply: Message | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    worker: asyncio.Task[None] | None = None
    ended_at: float | None = None

    def __post_init__(self) -> None:
        self.updated_at = self.updated_at or self.created_at

    def view(self) -> dict[str, Any]:
        """The task as the protocol shows it (``Task``)."""
        shown: dict[str, Any] = {
            "taskId": self.task_id,
            "status": self.status,
            "createdAt": self.created_at,
            "lastUpdatedAt": self.updated_at,
            "ttl": self.ttl_ms,
            "pollInterval": POLL_INTERVAL_MS,
        }
        if self.status_message is not None:
            shown["statusMessage"] = self.status_message
        return shown

    def finish(self, status: str, reply: Message | None, message: str | None = None) -> None:
        """End the task (once): its status, the reply ``tasks/result`` gives."""
        if self.status in TERMINAL:
            return
        self.status = status
        self.reply = reply
        self.status_message = message
        self.updated_at = _now()
        self.ended_at = time.monotonic()
        self.done.set()


class TaskTable:
    """The tasks of one session, by id."""

    def __init__(self) -> None:
        self._tasks: dict[str, ProxyTask] = {}

    def create(self, requested: object) -> ProxyTask:
        """A new working task; ``requested`` is the request's ``task`` member."""
        self._expire()
        ttl = requested.get("ttl") if isinstance(requested, dict) else None
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not ttl >= 0:
            ttl_ms = _DEFAULT_TTL_MS
        else:
            ttl_ms = int(min(ttl, _MAX_TTL_MS))
        task = ProxyTask(f"aegis-{secrets.token_urlsafe(16)}", ttl_ms)
        self._tasks[task.task_id] = task
        return task

    def get(self, task_id: object) -> ProxyTask | None:
        """The task with this id, if it is the proxy's and still kept."""
        self._expire()
        return self._tasks.get(task_id) if isinstance(task_id, str) else None

    def owns(self, task_id: object) -> bool:
        """Whether ``task_id`` names one of the proxy's tasks (kept or not)."""
        return isinstance(task_id, str) and task_id.startswith("aegis-")

    def all(self) -> list[ProxyTask]:
        """Every kept task, oldest first."""
        self._expire()
        return list(self._tasks.values())

    def running(self) -> list[ProxyTask]:
        """The tasks still working."""
        return [task for task in self._tasks.values() if task.status not in TERMINAL]

    def _expire(self) -> None:
        now = time.monotonic()
        for task_id, task in list(self._tasks.items()):
            if task.ended_at is not None and now - task.ended_at > task.ttl_ms / 1000:
                del self._tasks[task_id]
        if len(self._tasks) > _MAX_TASKS:
            ended = [t for t in self._tasks.values() if t.ended_at is not None]
            for task in ended[: len(self._tasks) - _MAX_TASKS]:
                del self._tasks[task.task_id]
