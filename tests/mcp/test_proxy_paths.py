"""Path rules in front of the real MCP filesystem server (from npm): what a regex lets past.

The reference ``@modelcontextprotocol/server-filesystem`` is installed,
pinned, into a temp folder; it resolves ``..`` and ``//`` itself, so a rule
that only matches text would let it read what the rule meant to keep out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mcp_support import Files, NpmPackages, proxied_client


@pytest.fixture
def filesystem_server(npm_packages: NpmPackages) -> Path:
    """The pinned server-filesystem's entry point (tests/npm_installs.py: PACKAGES)."""
    return npm_packages.filesystem


def _setup(tmp_path: Path, conditions: str, entry: Path) -> tuple[Files, list[str], Path]:
    root = (tmp_path / "srv").resolve()
    (root / "public").mkdir(parents=True)
    (root / "secret").mkdir()
    (root / "public" / "a.txt").write_text("public text")
    (root / "secret" / "key.txt").write_text("the secret key")
    policy = f"""\
version: "1"
defaults: {{risk_level: low, approval: auto}}
rules:
  - name: no-secrets
    match: {{type: "read*"}}
    conditions: {{{conditions.format(field="path", root=root)}}}
    risk_level: critical
    approval: block
  - name: no-secrets-in-lists
    match: {{type: "read*"}}
    conditions: {{{conditions.format(field="paths", root=root)}}}
    risk_level: critical
    approval: block
"""
    files = Files(tmp_path, policy)
    command = files.proxy()
    command = [*command[: command.index("--") + 1], "node", str(entry), str(root)]
    return files, command, root


def _text(result: Any) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


async def test_path_under_holds_against_dot_dot_double_slash_and_lists(
    tmp_path: Path, filesystem_server: Path
) -> None:
    """/public/../secret, //srv/secret and a list hiding one: all blocked, none reach the server."""
    files, command, root = _setup(
        tmp_path, "path_under: {{{field}: {root}/secret}}", filesystem_server
    )
    async with proxied_client(files, _command=command) as client:
        dotted = await client.call_tool(
            "read_text_file", {"path": f"{root}/public/../secret/key.txt"}
        )
        doubled = await client.call_tool("read_text_file", {"path": f"/{root}/secret/key.txt"})
        listed = await client.call_tool(
            "read_multiple_files",
            {"paths": [f"{root}/public/a.txt", f"{root}/public/../secret/key.txt"]},
        )
        public = await client.call_tool("read_text_file", {"path": f"{root}/public/a.txt"})
    for refused in (dotted, doubled, listed):
        assert refused.is_error is True
        assert "no-secrets" in _text(refused)
        assert "the secret key" not in _text(refused)
    assert public.is_error is False
    assert "public text" in _text(public)
    outcomes = [(r["matched_rule"], r["result_status"]) for r in files.records()]
    assert outcomes == [
        ("no-secrets", "blocked"),
        ("no-secrets", "blocked"),
        ("no-secrets-in-lists", "blocked"),
        ("<default>", "success"),
    ]


async def test_a_plain_regex_on_the_path_lets_the_same_reads_through(
    tmp_path: Path, filesystem_server: Path
) -> None:
    """The text match param_matches does: the server resolves the path and reads the secret."""
    files, command, root = _setup(
        tmp_path, 'param_matches: {{{field}: "^{root}/secret/"}}', filesystem_server
    )
    async with proxied_client(files, _command=command) as client:
        dotted = await client.call_tool(
            "read_text_file", {"path": f"{root}/public/../secret/key.txt"}
        )
    assert dotted.is_error is False
    assert "the secret key" in _text(dotted)
