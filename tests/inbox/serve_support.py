"""Helpers for the inbox tests: tokens from the real CLI, the real `aegis serve` in a subprocess."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

import httpx


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def aegis(
    *args: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m aegis ARGS`` and return the finished process."""
    return subprocess.run(
        [sys.executable, "-m", "aegis", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=check,
        env={**os.environ, "NO_COLOR": "1", **(env or {})},
    )


def create_token(db: Path | str, name: str, role: str, groups: Sequence[str] = ()) -> str:
    """Create a token with `aegis token create` and return the secret it prints once."""
    args = ["token", "create", name, "--role", role, "--db", str(db)]
    for group in groups:
        args += ["--group", group]
    token = aegis(*args).stdout.strip()
    assert token, "aegis token create printed nothing"
    assert "\n" not in token, token
    return token


class Server:
    """`aegis serve` on a free loopback port, as a context manager."""

    def __init__(
        self,
        db: Path | str,
        *extra: str,
        log: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [
            sys.executable, "-m", "aegis", "serve", "--db", str(db),
            "--port", str(self.port), "--log-level", "warning", *extra,
        ]  # fmt: skip
        self.log = log
        self.env = {**os.environ, "NO_COLOR": "1", **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        if self.log is not None:
            with open(self.log, "wb") as out:  # the child keeps its own copy of the handle
                self.process = subprocess.Popen(
                    self.args,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                )
        else:
            self.process = subprocess.Popen(
                self.args,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"aegis serve exited with {self.process.returncode}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("aegis serve did not answer /healthz within 30 s")
            time.sleep(0.1)

    @contextlib.contextmanager
    def started(self, *extra: str) -> Iterator[Server]:
        """Run with ``extra`` arguments too for the block, then stop; it may start again."""
        base = self.args
        self.args = [*base, *extra]
        try:
            with self:
                yield self
        finally:
            self.args = base

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
