"""The README's remote approval setup runs as written: shell lines, then the Python example."""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
from service_support import free_port

ROOT = Path(__file__).resolve().parent.parent.parent
SECTION = (
    (ROOT / "README.md")
    .read_text(encoding="utf-8")
    .split("## Remote approval", 1)[1]
    .split("\n## ")[0]
)


def test_the_remote_setup_runs(tmp_path: Path) -> None:
    """The shell block starts the service and makes tokens; the Python waits for Alice and runs."""
    shell = re.findall(r"```sh\n(.*?)```", SECTION, flags=re.S)[0]
    code = re.findall(r"```python\n(.*?)```", SECTION, flags=re.S)[0]
    lines = [line for line in (shell + code).splitlines() if line.strip()]
    assert len(lines) < 15
    port = str(free_port())
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "aegis"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m aegis "$@"\n', encoding="utf-8")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    (tmp_path / "examples").mkdir()
    shutil.copy(ROOT / "examples" / "policy.yaml", tmp_path / "examples" / "policy.yaml")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env.pop("AEGIS_DB", None)
    script = (
        "exec 3>serve.log\n"  # the background service must not hold our pipe open
        + shell.replace("8700", port).replace(" &", " >&3 2>&3 &")
        + 'echo "pid=$!"\necho "agent=$AEGIS_TOKEN"\n'
    )
    out = subprocess.run(
        ["bash", "-c", script.replace("aegis serve", f"aegis serve --port {port}")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    alice = out[0]
    pid = int(out[1].removeprefix("pid="))
    agent_token = out[2].removeprefix("agent=")
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120  # a loaded machine starts it slowly
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        agent = subprocess.Popen(
            [sys.executable, "-c", code.replace("8700", port)],
            cwd=tmp_path,
            env={**env, "AEGIS_TOKEN": agent_token},
            stdout=subprocess.PIPE,
            text=True,
        )
        headers = {"Authorization": f"Bearer {alice}"}
        pending: list[dict[str, str]] = []
        while not pending and time.monotonic() < deadline:
            pending = httpx.get(f"{url}/api/v1/approvals", headers=headers).json()["approvals"]
            time.sleep(0.05)
        decided = httpx.post(
            f"{url}/api/v1/approvals/{pending[0]['id']}/decision",
            json={"verdict": "approve"},
            headers=headers,
        )
        assert decided.status_code == 200
        printed, _ = agent.communicate(timeout=30)
        assert printed.strip() == "success"
    finally:
        os.kill(pid, signal.SIGTERM)
