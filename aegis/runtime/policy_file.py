"""A runtime's policy file: read it once, and optionally watch it for changes.

``Runtime(policy_path="policy.yaml")`` reads the file when no ``policy`` is
given; with ``reload=True`` a task on the runtime's event loop looks at the
file every ``reload_interval`` seconds and, when it changed (inode, size or
modification time), loads it and hands the new policy to the runtime. A file
that does not load keeps the current policy and is logged with its file and
line. The watch knows nothing of the runtime but the function it calls with
each new policy.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from aegis.errors import ConfigurationError, PolicyError

if TYPE_CHECKING:
    from aegis.core.policy import Policy

__all__ = ["PolicyFile"]

_log = logging.getLogger("aegis.runtime")


class PolicyFile:
    """The policy file of one runtime, and its watch when ``reload`` is set.

    Args:
        path: the policy file, or ``None`` when the runtime was given a policy.
        reload: watch ``path`` and hand every new version to ``update``.
        interval: seconds between two looks at the file.
        update: what to call with a newly loaded policy (the runtime's
            ``update_policy``), on the event loop's thread.

    Raises:
        ConfigurationError: ``reload`` without a ``path``, or an interval
            that is not a positive number.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None,
        reload: bool,
        interval: float,
        update: Callable[[Policy], None],
    ) -> None:
        if reload and path is None:
            raise ConfigurationError("reload=True needs policy_path, the file to watch")
        if isinstance(interval, bool) or not isinstance(interval, int | float) or not interval > 0:
            raise ConfigurationError(
                f"reload_interval must be a positive number of seconds, got {interval!r}"
            )
        self.path = None if path is None else os.fspath(path)
        self.reload = reload
        self.interval = float(interval)
        self._update = update
        self._watcher: asyncio.Task[None] | None = None
        self._seen: tuple[int, int, int] | None = None

    def load(self) -> Policy:
        """The policy read from the file, for a runtime given no ``policy``.

        Raises:
            ConfigurationError: there is no file to read.
            PolicyError: the file does not load (it names the file and line).
        """
        if self.path is None:
            raise ConfigurationError(
                "Runtime needs a policy: pass policy=Policy.from_yaml('policy.yaml'), or"
                " policy_path='policy.yaml'"
            )
        # Imported here: a runtime given its policy never loads the YAML machinery.
        from aegis.core.policy import Policy  # noqa: PLC0415  # see above

        self._seen = _signature(self.path)
        return Policy.from_yaml(self.path)

    def watch(self) -> None:
        """Start watching the file, once, on the running loop (if ``reload`` is set)."""
        if self.reload and self._watcher is None:
            if self._seen is None:
                self._seen = _signature(self.path or "")
            self._watcher = asyncio.get_running_loop().create_task(
                self._watch(), name="aegis-policy-reload"
            )

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.reload_now()
            except Exception:  # the watch must outlive any surprise; say what happened
                _log.exception("policy reload of %s failed; keeping the current policy", self.path)

    async def reload_now(self) -> bool:
        """Load the file if it changed; ``True`` when a new policy now decides.

        A file that does not load keeps the current policy and logs the error,
        which names the file and line.
        """
        path = self.path or ""
        seen = _signature(path)
        if seen == self._seen:
            return False
        self._seen = seen
        from aegis.core.policy import Policy  # noqa: PLC0415  # see load()

        try:
            policy = await asyncio.to_thread(Policy.from_yaml, path)
        except PolicyError as exc:
            _log.error("policy not reloaded, keeping the current one: %s", exc)
            return False
        self._update(policy)
        _log.info("policy reloaded from %s (digest %s)", path, policy.digest[:12])
        return True

    async def close(self) -> None:
        """Stop the watch, if one runs."""
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            try:
                await watcher
            except asyncio.CancelledError:
                if not watcher.cancelled():
                    raise


def _signature(path: str) -> tuple[int, int, int] | None:
    """What changes when a file is replaced or written: inode, size and mtime."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)
