"""The proxy under real hosts from npm: the TypeScript SDK client and the reference server.

The pinned packages are installed by the test into a temporary folder (once
per session); a failing install fails the test, it is never skipped.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from mcp_support import HERE, ROOT, Files, NpmPackages

POLICY = """\
version: "1"
defaults:
  risk_level: medium
  approval: block
rules:
  - name: echo
    match: {type: echo}
    risk_level: low
    approval: auto
  - name: research
    match: {type: simulate-research-query}
    risk_level: low
    approval: auto
"""


def _host(npm: NpmPackages, files: Files, steps: list[dict[str, Any]]) -> dict[str, Any]:
    """Run the TypeScript SDK client against the proxy in front of server-everything."""
    proxy = [
        sys.executable, "-m", "aegis", "mcp-proxy", "--policy", str(files.policy),
        "--db", files.db, "--name", "everything", "--", "node", str(npm.everything), "stdio",
    ]  # fmt: skip
    done = subprocess.run(
        [
            "node",
            str(HERE / "npm" / "ts_client.mjs"),
            str(npm.sdk),
            json.dumps(proxy),
            json.dumps(steps),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout))


def test_the_typescript_sdk_host_lists_calls_and_is_refused(
    npm_packages: NpmPackages, tmp_path: Path
) -> None:
    """The TS SDK client through the proxy: tools listed, echo runs, get-env is refused."""
    files = Files(tmp_path, POLICY)
    seen = _host(
        npm_packages,
        files,
        [
            {"kind": "list"},
            {"kind": "call", "name": "echo", "arguments": {"message": "hi"}},
            {"kind": "call", "name": "get-env", "arguments": {}},
        ],
    )
    listed, echo, env = seen["steps"]
    names = [tool["name"] for tool in listed["tools"]]
    assert {"echo", "get-env"} <= set(names)
    assert echo["result"]["content"] == [{"type": "text", "text": "Echo: hi"}]
    assert env["result"]["isError"] is True
    assert "<default>" in env["result"]["content"][0]["text"]
    statuses = {(r["action_type"], r["result_status"]) for r in files.records()}
    assert statuses == {("echo", "success"), ("get-env", "blocked")}


def test_the_typescript_sdk_host_runs_task_calls(npm_packages: NpmPackages, tmp_path: Path) -> None:
    """callToolStream (tasks): an allowed call completes with its result; a blocked one fails.

    The SDK rejects a plain tool result to a task-augmented call; here it
    gets a task each time, and the audit trail the real outcomes.
    """
    files = Files(tmp_path, POLICY)
    seen = _host(
        npm_packages,
        files,
        [
            {"kind": "task", "name": "echo", "arguments": {"message": "t"}},
            {"kind": "task", "name": "get-env", "arguments": {}},
            # The server takes this tool only as a task: the proxy follows the server's task.
            {"kind": "task", "name": "simulate-research-query", "arguments": {"topic": "x"}},
        ],
    )
    assert "call" in seen["server"]["tasks"]["requests"]["tools"]
    allowed, blocked, research = (step["stream"] for step in seen["steps"])
    assert research[-1]["type"] == "result"
    assert "Research Report: x" in research[-1]["result"]["content"][0]["text"]
    assert allowed[0]["type"] == "taskCreated"
    assert allowed[-1]["type"] == "result"
    assert allowed[-1]["result"]["content"] == [{"type": "text", "text": "Echo: t"}]
    assert blocked[0]["type"] == "taskCreated"
    [final] = [m for m in blocked if m["type"] == "taskStatus" and m["task"]["status"] == "failed"]
    assert "<default>" in final["task"]["statusMessage"]
    assert blocked[-1]["type"] == "error"  # the SDK's own report of a failed task
    assert "schema" not in blocked[-1]["error"].lower()
    statuses = {(r["action_type"], r["result_status"]) for r in files.records()}
    assert statuses == {
        ("echo", "success"),
        ("get-env", "blocked"),
        ("simulate-research-query", "success"),
    }
