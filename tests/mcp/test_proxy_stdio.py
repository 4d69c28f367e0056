"""The proxy over stdio, driven by the real MCP SDK client, in front of a real MCP server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp_support import ROOT, Files, RawProxy, child_pids, proxied_client


@pytest.fixture
def files(tmp_path: Path) -> Files:
    """A policy, an audit database and a server call log in a fresh folder."""
    return Files(tmp_path)


def _tools(listed: Any) -> list[dict[str, Any]]:
    return [t.model_dump(by_alias=True, mode="json", exclude_none=True) for t in listed.tools]


async def test_tools_list_keeps_annotations_and_schemas(files: Files) -> None:
    """tools/list through the proxy equals the server's own, but that every tool takes tasks."""
    command = files.server()
    direct = StdioServerParameters(command=command[0], args=command[1:], env=dict(os.environ))
    async with Client(direct, cache=None) as client:
        expected = _tools(await client.list_tools())
    async with proxied_client(files) as client:
        listed = _tools(await client.list_tools())
    # The proxy is the receiver of task-augmented calls, for every tool.
    assert {t["name"]: t.pop("execution") for t in listed} == {
        t["name"]: {"taskSupport": "optional"} for t in expected
    }
    assert listed == [{k: v for k, v in t.items() if k != "execution"} for t in expected]
    read = next(t for t in listed if t["name"] == "read")
    assert read["annotations"] == {"readOnlyHint": True, "openWorldHint": False}
    assert read["outputSchema"]["required"] == ["path", "content"]
    assert read["_meta"] == {"example.com/category": "files"}


async def test_auto_call_is_forwarded_and_recorded(files: Files) -> None:
    """An auto call reaches the server and returns its result; the audit has the request id."""
    async with proxied_client(files) as client:
        result = await client.call_tool("read", {"path": "/srv/readme.txt"})
    assert result.is_error is False
    assert result.structured_content == {"path": "/srv/readme.txt", "content": "hello"}
    assert files.calls() == [{"tool": "read", "arguments": {"path": "/srv/readme.txt"}}]
    [record] = files.records()
    assert (record["action_type"], record["action_target"]) == ("read", "files")
    assert record["result_status"] == "success"
    assert isinstance(record["context"]["mcp_request_id"], int)
    assert record["context"]["mcp_client"]  # the client's own name, for the record


async def test_blocked_call_is_a_tool_error_naming_the_rule(files: Files) -> None:
    """A blocked call never reaches the server; the client gets isError with the rule."""
    async with proxied_client(files) as client:
        result = await client.call_tool("delete", {"path": "/srv/readme.txt"})
        after = await client.call_tool("read", {"path": "/srv/readme.txt"})
    assert result.is_error is True
    assert result.content[0].text == "blocked by rule no-deletes"  # type: ignore[union-attr]
    assert after.structured_content == {"path": "/srv/readme.txt", "content": "hello"}
    assert [c["tool"] for c in files.calls()] == ["read"]
    assert [r["result_status"] for r in files.records()] == ["blocked", "success"]


async def test_approval_without_an_approver_is_denied(files: Files) -> None:
    """With the default deny mode an approve call is denied, saying how to get an approver."""
    async with proxied_client(files) as client:
        result = await client.call_tool("write", {"path": "/x", "content": "y"})
    assert result.is_error is True
    assert "--approval-url" in result.content[0].text  # type: ignore[union-attr]
    assert files.calls() == []
    [record] = files.records()
    assert record["result_status"] == "denied"


async def test_hide_blocked_leaves_out_tools_always_blocked(files: Files) -> None:
    """--hide-blocked drops the tools the policy blocks outright, and they stay blocked."""
    async with proxied_client(files, "--hide-blocked") as client:
        names = [t.name for t in (await client.list_tools()).tools]
        result = await client.call_tool("delete", {"path": "/srv/readme.txt"})
    assert names == ["read", "write"]
    assert result.is_error is True
    assert files.calls() == []


async def test_resources_pass_and_a_named_method_is_governed(files: Files) -> None:
    """resources/read passes through unchanged; prompts/get, named by a rule, is refused."""
    async with proxied_client(files) as client:
        resource = await client.read_resource("file:///srv/readme.txt")
        prompts = await client.list_prompts()
        with pytest.raises(Exception, match="no-prompts"):
            await client.get_prompt("summarize", {"path": "/x"})
    assert resource.contents[0].text == "hello"  # type: ignore[union-attr]
    assert [p.name for p in prompts.prompts] == ["summarize"]
    [record] = files.records()
    assert (record["action_type"], record["result_status"]) == ("prompts/get", "blocked")


def test_a_crashing_server_ends_the_proxy_so_the_host_can_restart_it(files: Files) -> None:
    """A server that dies mid-call: that call gets an error, then the proxy exits saying why."""
    proxy = RawProxy(files.proxy(server_args=["--crash-on", "read"]), files.stderr)
    try:
        proxy.initialize()
        reply = proxy.request(
            1, "tools/call", {"name": "read", "arguments": {"path": "/srv/readme.txt"}}
        )
        assert reply["id"] == 1
        assert "closed the connection" in reply["error"]["message"]
        status = proxy.process.wait(30)  # without a client closing anything
    finally:
        proxy.close()
    assert status == 1
    err = files.stderr.read_text()
    assert "Traceback" not in err
    assert "the proxy stopped with it" in err
    assert [r["result_status"] for r in files.records()] == ["failed"]


def test_a_server_dying_between_calls_ends_the_proxy_too(files: Files) -> None:
    """Killed while no call is in flight, the server takes the proxy with it: status 1, one why."""
    import signal

    proxy = RawProxy(files.proxy(), files.stderr)
    try:
        proxy.initialize()
        assert "result" in proxy.request(1, "tools/list")
        [server] = child_pids(proxy.process.pid)
        os.kill(server, signal.SIGKILL)
        status = proxy.process.wait(30)  # without a client closing anything
    finally:
        proxy.close()
    assert status == 1
    err = files.stderr.read_text()
    assert "Traceback" not in err
    assert "the proxy stopped with it" in err


def test_stdin_at_dev_null_exits_with_one_line(files: Files) -> None:
    """Started with stdin at /dev/null (nohup, supervisors): one line, status 2, no hang."""
    with open(os.devnull, "rb") as null:
        done = subprocess.run(
            files.proxy(), stdin=null, capture_output=True, timeout=60, check=False, cwd=ROOT
        )
    assert done.returncode == 2
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert "/dev/null" in lines[0]
    assert done.stdout == b""


async def test_hanging_server_times_out(files: Files) -> None:
    """A call the server never answers fails after --call-timeout, and is recorded as failed."""
    async with proxied_client(
        files, "--call-timeout", "1", server_args=["--hang-on", "read"]
    ) as client:
        with pytest.raises(Exception, match="did not answer tools/call within 1s"):
            await client.call_tool("read", {"path": "/srv/readme.txt"})
    [record] = files.records()
    assert record["result_status"] == "failed"
    assert "did not answer" in files.stderr.read_text()


async def test_garbage_from_the_server_is_logged_and_skipped(files: Files) -> None:
    """A server line that is not JSON-RPC is logged; the call's real answer still arrives."""
    async with proxied_client(files, server_args=["--garbage-on", "read"]) as client:
        result = await client.call_tool("read", {"path": "/srv/readme.txt"})
    assert result.structured_content == {"path": "/srv/readme.txt", "content": "hello"}
    assert "not a JSON-RPC message" in files.stderr.read_text()


def test_check_lists_tools_with_decisions(files: Files) -> None:
    """--check prints each tool of the server with what the policy decides."""
    import subprocess

    out = subprocess.run(
        [*files.proxy("--check", "--format", "json")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows = {row["tool"]: row for row in json.loads(out.stdout)}
    assert {name: row["approval"] for name, row in rows.items()} == {
        "read": "auto",
        "write": "approve",
        "delete": "block",
    }
    assert rows["delete"]["blocked_always"] is True
    assert rows["read"]["hints"] == ["readOnlyHint"]
    assert files.calls() == []


def test_missing_command_is_one_clear_line(files: Files) -> None:
    """A server command that does not exist is a one-line error, not a traceback."""
    import subprocess

    command = files.proxy()
    command[command.index("--") + 1 :] = ["no-such-mcp-server-xyz"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2
    assert "'no-such-mcp-server-xyz' is not an executable" in out.stderr
    assert "Traceback" not in out.stderr


def test_terminal_approval_without_a_terminal_is_one_clear_line(files: Files) -> None:
    """--approval terminal with no terminal to ask on is refused at start, before serving."""
    import subprocess

    out = subprocess.run(
        files.proxy("--approval", "terminal"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        start_new_session=True,  # no controlling terminal
    )
    assert out.returncode == 2
    assert "--approval terminal needs a terminal" in out.stderr
    assert "Traceback" not in out.stderr


async def test_the_servers_own_requests_and_progress_reach_the_client(files: Files) -> None:
    """Mid-call, the server's elicitation and progress pass through the proxy and back."""
    from mcp import types

    asked: list[str] = []
    progress: list[float] = []

    async def elicit(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"ok": True})

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    async with proxied_client(files, elicitation_callback=elicit) as client:
        result = await client.call_tool("read", {"path": "/ask"}, progress_callback=on_progress)
    assert result.structured_content == {"path": "/ask", "content": "ok=True"}
    assert asked == ["May I read /ask?"]
    assert progress == [1]


async def test_the_audit_trail_may_be_postgresql(files: Files, postgres_dsn: str) -> None:
    """--db takes a PostgreSQL DSN: the call's record lands there, chained and verifiable."""
    from aegis.runtime.audit import AuditLogger

    files.db = postgres_dsn
    async with proxied_client(files) as client:
        await client.call_tool("read", {"path": "/srv/readme.txt"})
        await client.call_tool("delete", {"path": "/srv/readme.txt"})
    with AuditLogger(postgres_dsn) as audit:
        assert audit.verify().ok
        records = list(audit.get_log())
    assert [(r["action_type"], r["result_status"]) for r in records] == [
        ("read", "success"),
        ("delete", "blocked"),
    ]


async def test_reload_decides_later_calls_by_the_edited_policy(files: Files) -> None:
    """With --reload, an edit to the policy file governs the next calls without a restart."""
    import asyncio

    async with proxied_client(files, "--reload") as client:
        before = await client.call_tool("delete", {"path": "/srv/readme.txt"})
        files.policy.write_text(
            files.policy.read_text().replace("approval: block\n", "approval: auto\n"),
            encoding="utf-8",
        )
        for _ in range(100):
            after = await client.call_tool("delete", {"path": "/srv/readme.txt"})
            if not after.is_error:
                break
            await asyncio.sleep(0.1)
    assert before.is_error is True
    assert after.is_error is False
    assert [c["tool"] for c in files.calls()] == ["delete"]


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--call-timeout", "nan"),
        ("--call-timeout", "inf"),
        ("--approval-timeout", "1e400"),
        ("--approval-timeout", "-1"),
        # NaN passes a range check (it compares false with every bound)
        ("--session-idle-timeout", "nan"),
        ("--progress-interval", "nan"),
        ("--check-timeout", "nan"),
        ("--check-timeout", "0"),
    ],
)
def test_timeouts_must_be_finite_and_positive(files: Files, option: str, value: str) -> None:
    """NaN, infinity and overflowing timeouts are usage errors naming the option, before serving."""
    import subprocess

    out = subprocess.run(
        files.proxy(option, value), capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 2
    assert option in out.stderr
    assert "finite" in out.stderr
    assert files.calls() == []


CONDITIONAL_POLICY = """\
version: "1"
defaults:
  risk_level: medium
  approval: approve
rules:
  - name: no-secrets
    match: {type: read}
    conditions: {path_under: {path: /srv/secret}}
    risk_level: high
    approval: block
  - name: reads
    match: {type: read}
    risk_level: low
    approval: auto
"""


def _check(files: Files, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        files.proxy("--check", *args),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        cwd=ROOT,
    )


def test_check_says_when_it_decided_without_arguments(tmp_path: Path) -> None:
    """A tool under a conditional rule is flagged: decided without arguments, may differ."""
    files = Files(tmp_path, CONDITIONAL_POLICY)
    out = _check(files, "--format", "json")
    assert out.returncode == 0, out.stderr
    rows = {row["tool"]: row for row in json.loads(out.stdout)}
    assert rows["read"]["conditional"] is True
    assert rows["read"]["arguments"] == {}
    assert rows["write"]["conditional"] is False
    table = _check(files)
    assert table.returncode == 0, table.stderr
    assert "Decided without arguments" in table.stderr
    assert "read" in table.stderr.split("Decided without arguments", 1)[1]


def test_check_decides_with_sample_arguments(tmp_path: Path) -> None:
    """--check-args decides a tool with the sample given: the conditional rule now applies."""
    files = Files(tmp_path, CONDITIONAL_POLICY)
    out = _check(files, "--format", "json", "--check-args", 'read={"path": "/srv/secret/key"}')
    assert out.returncode == 0, out.stderr
    rows = {row["tool"]: row for row in json.loads(out.stdout)}
    assert (rows["read"]["approval"], rows["read"]["rule"]) == ("block", "no-secrets")
    assert rows["read"]["arguments"] == {"path": "/srv/secret/key"}
    table = _check(files, "--check-args", 'read={"path": "/srv/secret/key"}')
    assert "/srv/secret/key" in table.stdout
    assert "Decided without arguments" not in table.stderr


@pytest.mark.parametrize(
    ("sample", "says"),
    [
        ("read", "TOOL=JSON"),
        ("read={nope", "not JSON"),
        ("read=[1]", "JSON object"),
        ('nosuchtool={"a": 1}', "nosuchtool"),
    ],
)
def test_check_args_that_cannot_be_used_are_one_clear_error(
    files: Files, sample: str, says: str
) -> None:
    """A malformed sample, or one for a tool the server lacks, is refused in one line."""
    out = _check(files, "--check-args", sample)
    assert out.returncode != 0
    assert says in out.stderr
    assert "Traceback" not in out.stderr


def test_check_against_a_crashing_server_is_one_clear_line(files: Files) -> None:
    """A server that exits at once: one line naming the failure, no exception group text."""
    command = files.proxy("--check")
    command[command.index("--") + 1 :] = [sys.executable, "-c", "raise SystemExit(3)"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "could not list the tools of the MCP server" in lines[0]
    assert "ExceptionGroup" not in out.stderr
    assert "TaskGroup" not in out.stderr


def test_check_against_a_hanging_server_ends_within_its_deadline(files: Files) -> None:
    """A server that never answers: a clear line once --call-timeout (shorter than 30 s) passes."""
    command = files.proxy("--check", "--call-timeout", "2")
    command[command.index("--") + 1 :] = [sys.executable, "-c", "import time; time.sleep(600)"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode != 0
    assert "did not list its tools within 2s" in out.stderr
    assert "Traceback" not in out.stderr


def test_check_against_a_server_printing_on_stdout_is_one_clear_line(files: Files) -> None:
    """A server that prints a banner on stdout, then dies: one line naming the banner.

    The MCP SDK logs every unreadable line with its traceback; --check says
    the first such line in its own one-line error instead.
    """
    command = files.proxy("--check")
    command[command.index("--") + 1 :] = [
        sys.executable, "-c",
        "import sys; print('Starting server...', flush=True); sys.stdin.readline(); sys.exit(1)",
    ]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "could not list the tools of the MCP server" in lines[0]
    assert "not JSON-RPC on its stdout: 'Starting server...'" in lines[0]
    assert "Traceback" not in out.stderr


async def test_the_server_gets_the_proxys_environment_but_aegis_secrets(
    files: Files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The governed server never sees Aegis's secrets: a tool printing them would leak them.

    With the database's password or the signing key, the agent the proxy
    governs could rewrite the trail or approve its own requests.
    """
    from aegis.runtime.signing import generate_key_files

    private, _ = generate_key_files(tmp_path / "audit.key")
    secrets = {
        "AEGIS_DB": files.db,
        "AEGIS_TOKEN": "agent-token-zzq",
        "AEGIS_METRICS_TOKEN": "metrics-token-zzq",
        "AEGIS_AUDIT_KEY": str(private),
        "AEGIS_SESSION_KEY": "session-key-zzq",
        "AEGIS_WEBHOOK_SECRET": "webhook-secret-zzq",
        "AEGIS_OIDC_CLIENT_SECRET": "oidc-secret-zzq",
    }
    for name, value in {**secrets, "PLAIN_SETTING": "kept"}.items():
        monkeypatch.setenv(name, value)
    seen = tmp_path / "server-environment.json"
    # The server as started by the proxy: it notes its environment, then serves.
    note = (
        "import json, os, sys; "
        f"open({str(seen)!r}, 'w').write(json.dumps(dict(os.environ))); "
        "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
    )
    proxy = files.proxy()
    command = [*proxy[: proxy.index("--") + 1], sys.executable, "-c", note, *files.server()[1:]]
    async with proxied_client(files, _command=command) as client:
        result = await client.call_tool("read", {"path": "/srv/readme.txt"})
    assert result.is_error is False
    environment = json.loads(seen.read_text())
    assert environment["PLAIN_SETTING"] == "kept"
    assert sorted(set(secrets) & set(environment)) == []
    [record] = files.records()
    assert record["result_status"] == "success"
