"""Flow rules across servers: the proxies of one agent share a session, and its history."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from mcp_support import Files, proxied_client

POLICY = """\
version: "1"
defaults: {risk_level: low, approval: auto}
rules:
  - name: exfiltration
    match: {type: write, target: "external*"}
    conditions: {after: {type: read, target: crm, within: session}}
    risk_level: high
    approval: block
"""

READ = {"path": "/srv/readme.txt"}
WRITE = {"path": "/out.txt", "content": "the customer list"}


async def _read_then_write(files: Files, crm: list[str], mail: list[str]) -> Any:
    async with proxied_client(files, "--name", "crm", *crm) as client:
        assert (await client.call_tool("read", READ)).is_error is False
    async with proxied_client(files, "--name", "external-mail", *mail) as client:
        return await client.call_tool("write", WRITE)


async def test_two_proxies_with_one_session_share_flow_history(tmp_path: Path) -> None:
    """Read through the CRM's proxy, then a write through another proxy: the flow rule fires."""
    files = Files(tmp_path, POLICY)
    result = await _read_then_write(files, ["--session", "agent-7"], ["--session", "agent-7"])
    assert result.is_error is True
    assert "exfiltration" in result.content[0].text
    records = [(r["action_target"], r["session_id"], r["result_status"]) for r in files.records()]
    assert records == [("crm", "agent-7", "success"), ("external-mail", "agent-7", "blocked")]


async def test_proxies_running_side_by_side_see_each_others_calls(tmp_path: Path) -> None:
    """As a host runs them: both proxies started first, the read then the write, one flow."""
    files = Files(tmp_path, POLICY)
    async with (
        proxied_client(files, "--name", "crm", "--session", "agent-9") as crm,
        proxied_client(files, "--name", "external-mail", "--session", "agent-9") as mail,
    ):
        before = await mail.call_tool("write", WRITE)  # nothing read yet: it runs
        assert (await crm.call_tool("read", READ)).is_error is False
        after = await mail.call_tool("write", WRITE)
    assert before.is_error is False
    assert after.is_error is True
    assert "exfiltration" in after.content[0].text
    statuses = [(r["action_target"], r["result_status"]) for r in files.records()]
    assert statuses == [
        ("external-mail", "success"),
        ("crm", "success"),
        ("external-mail", "blocked"),
    ]


async def test_the_session_comes_from_the_environment_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AEGIS_SESSION names the session when --session is not given, across a restart."""
    monkeypatch.setitem(os.environ, "AEGIS_SESSION", "agent-8")
    files = Files(tmp_path, POLICY)
    result = await _read_then_write(files, [], [])
    assert result.is_error is True
    assert {r["session_id"] for r in files.records()} == {"agent-8"}


async def test_without_a_shared_session_each_proxy_has_its_own(tmp_path: Path) -> None:
    """The default stays one random session per proxy: the write is not linked to the read."""
    files = Files(tmp_path, POLICY)
    result = await _read_then_write(files, [], [])
    assert result.is_error is False
    assert len({r["session_id"] for r in files.records()}) == 2


async def test_an_unusable_session_id_is_refused(tmp_path: Path) -> None:
    """An empty or unprintable session id is a usage error, not a silent random session."""
    import subprocess

    files = Files(tmp_path, POLICY)
    for bad in ["  ", "a\nb", "x" * 201]:
        done = subprocess.run(
            [*files.proxy("--session", bad)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 2, done.stderr
        assert "--session" in done.stderr
