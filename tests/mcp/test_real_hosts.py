"""The proxy under real hosts from npm: the TypeScript SDK client and the reference server.

The pinned packages are installed by the test into a temporary folder (once
per session); a failing install fails the test, it is never skipped.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from mcp_support import HERE, ROOT, Files, NpmPackages

sys.path.insert(0, str(HERE.parent / "server"))
from service_support import Service, add_tokens  # tests/server's helpers

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


def _host_command(
    npm: NpmPackages, files: Files, steps: list[dict[str, Any]], *options: str
) -> list[str]:
    """The TypeScript SDK client's command line, against the proxy in front of server-everything."""
    proxy = [
        sys.executable, "-m", "aegis", "mcp-proxy", "--policy", str(files.policy),
        "--db", files.db, "--name", "everything", *options,
        "--", "node", str(npm.everything), "stdio",
    ]  # fmt: skip
    return [
        "node",
        str(HERE / "npm" / "ts_client.mjs"),
        str(npm.sdk),
        json.dumps(proxy),
        json.dumps(steps),
    ]


def _host(npm: NpmPackages, files: Files, steps: list[dict[str, Any]]) -> dict[str, Any]:
    """Run the TypeScript SDK client against the proxy in front of server-everything."""
    done = subprocess.run(
        _host_command(npm, files, steps),
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


APPROVED_ECHO = """\
version: "1"
defaults: {risk_level: medium, approval: block}
rules:
  - name: echo-needs-a-person
    match: {type: echo}
    risk_level: medium
    approval: approve
"""


def test_a_typescript_host_waits_for_a_reviewer_longer_than_its_request_timeout(
    npm_packages: NpmPackages, tmp_path: Path
) -> None:
    """The proxy's progress resets the TS SDK's 2 s timeout while alice takes 4 s: the call runs."""
    db = str(tmp_path / "approvals.db")
    add_tokens(db)
    service = Service(db, tmp_path).start()
    files = Files(tmp_path, APPROVED_ECHO)
    message = f"wait for alice {uuid.uuid4().hex}"
    steps = [
        {"kind": "patient", "name": "echo", "arguments": {"message": message}, "timeout": 2000}
    ]
    token = tmp_path / "bot.token"  # a secret never goes on the command line
    token.write_text("bot-secret", encoding="utf-8")
    token.chmod(0o600)
    options = ("--approval-url", service.url, "--approval-token-file", str(token))
    command = _host_command(npm_packages, files, steps, *options, "--progress-interval", "0.5")
    host = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        alice = httpx.Client(
            base_url=service.url, headers={"Authorization": "Bearer alice-secret"}, timeout=10
        )
        with alice:
            deadline = time.monotonic() + 120
            pending: list[Any] = []
            while not pending:
                assert time.monotonic() < deadline, "the call never reached the reviewer"
                assert host.poll() is None, host.communicate()[1][-3000:]
                approvals = alice.get("/api/v1/approvals").json()["approvals"]
                pending = [a for a in approvals if a["action"]["params"] == {"message": message}]
                time.sleep(0.1)
            time.sleep(4)  # twice the host's request timeout
            decided = alice.post(
                f"/api/v1/approvals/{pending[0]['id']}/decision",
                json={"verdict": "approve", "comment": "ok"},
            )
            assert decided.status_code == 200, decided.text
        out, err = host.communicate(timeout=120)
    finally:
        if host.poll() is None:
            host.kill()
            host.wait(10)
        service.stop()
    assert host.returncode == 0, err[-3000:]
    [step] = json.loads(out)["steps"]
    assert "error" not in step, step
    assert step["result"]["content"] == [{"type": "text", "text": f"Echo: {message}"}]
    assert step["elapsed"] > 4000
    assert step["progress"] >= 4
    [record] = files.records()
    assert (record["action_type"], record["result_status"]) == ("echo", "success")
