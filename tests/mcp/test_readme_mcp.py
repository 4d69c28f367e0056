"""The README's one-line MCP client configuration works as written, with the Inspector too."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp_support import POLICY, ROOT, SERVER, NpmPackages

from aegis.runtime.audit import AuditLogger

SECTION = (ROOT / "README.md").read_text(encoding="utf-8").split("## Governing MCP servers", 1)[1]


async def test_the_readme_client_configuration_governs_a_server(tmp_path: Path) -> None:
    """The JSON config (absolute paths), run from another folder, lists tools and blocks deletes."""
    [block] = re.findall(r"```json\n(.*?)```", SECTION.split("\n## ", 1)[0], flags=re.S)
    assert block.count("\n") == 1  # one line, as the README promises
    [server] = json.loads(block)["mcpServers"].values()
    # Absolute paths: a host starts the server from a folder of its own choosing.
    assert Path(server["command"]).is_absolute()
    assert Path(server["command"]).name == "aegis"
    args = server["args"]
    options = args[: args.index("--")]
    home = Path(options[options.index("--policy") + 1]).parent
    for option in ("--policy", "--db"):
        assert Path(options[options.index(option) + 1]).is_absolute()
    args = [arg.replace(str(home), str(tmp_path)) for arg in args[: args.index("--") + 1]] + [
        sys.executable,
        str(SERVER),
    ]
    (tmp_path / "policy.yaml").write_text(POLICY, encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "aegis", *args], env=dict(os.environ), cwd=elsewhere
    )
    async with Client(params, cache=None) as client:
        names = [t.name for t in (await client.list_tools()).tools]
        blocked = await client.call_tool("delete", {"path": "/srv/readme.txt"})
    assert names == ["read", "write", "delete"]
    assert blocked.is_error is True
    assert (tmp_path / "aegis_audit.db").exists()


#: the Inspector test's policy: reads run, writes are blocked by a named rule
INSPECTOR_POLICY = """\
version: "1"
defaults: {risk_level: low, approval: auto}
rules:
  - name: no-writes
    match: {type: "write*"}
    risk_level: high
    approval: block
"""


def _write_readme_config(tmp_path: Path, server_command: list[str]) -> tuple[Path, str, str]:
    """The README's client configuration, for this machine: its file, server name and --db.

    Only what names this machine changes: the paths under the README's
    /home/me/agent, and ``npx`` fetching server-filesystem for /srv becomes
    ``server_command`` (the pinned, installed one serving a temporary folder).
    """
    [block] = re.findall(r"```json\n(.*?)```", SECTION.split("\n## ", 1)[0], flags=re.S)
    config = json.loads(block)
    [(name, server)] = config["mcpServers"].items()
    args = server["args"]
    options, fetched = args[: args.index("--")], args[args.index("--") + 1 :]
    home = Path(options[options.index("--policy") + 1]).parent
    assert fetched == ["npx", "@modelcontextprotocol/server-filesystem", "/srv"]
    agent = tmp_path / "agent"
    agent.mkdir()
    (agent / "policy.yaml").write_text(INSPECTOR_POLICY, encoding="utf-8")
    aegis = Path(sys.executable).parent / "aegis"
    assert aegis.exists(), "the aegis command of this environment (pip install -e .)"
    server["command"] = str(aegis)
    options = [arg.replace(str(home), str(agent)) for arg in options]
    server["args"] = [*options, "--", *server_command]
    config_file = tmp_path / "mcp.json"
    config_file.write_text(json.dumps(config), encoding="utf-8")
    return config_file, name, options[options.index("--db") + 1]


def test_the_readme_client_configuration_works_with_the_inspector_cli(
    npm_packages: NpmPackages, tmp_path: Path
) -> None:
    """The README's config file and Inspector line, run by the real Inspector CLI from npm.

    Tools listed, a read runs, a write is refused naming the rule, both recorded.
    """
    npm = npm_packages
    srv = tmp_path / "srv"
    srv.mkdir()
    (srv / "a.txt").write_text("hello from srv\n", encoding="utf-8")
    config_file, name, db = _write_readme_config(
        tmp_path, [npm.node, str(npm.filesystem), str(srv)]
    )

    # The README's Inspector line, with the installed Inspector and the file's absolute path.
    [line] = re.findall(r"`(npx @modelcontextprotocol/inspector [^`]*)`", SECTION)
    words = shlex.split(line)
    assert words[:2] == ["npx", "@modelcontextprotocol/inspector"]
    words = [str(config_file) if word == "mcp.json" else word for word in words[2:]]
    assert words[words.index("--server") + 1] == name
    listing = words[: words.index("--method")]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {
        **os.environ,
        "HOME": str(tmp_path / "home"),  # the Inspector's own state stays in the test's folder
        "MCP_INSPECTOR_SECRET_STORE": "memory",  # no OS keychain here
    }

    def inspector(*more: str) -> tuple[int, Any, str]:
        done = subprocess.run(
            [npm.node, str(npm.inspector), *more],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        return done.returncode, json.loads(done.stdout or "null"), done.stderr

    status, listed, err = inspector(*words)
    assert status == 0, err[-3000:]
    names = {tool["name"] for tool in listed["tools"]}
    assert {"read_text_file", "write_file", "list_directory"} <= names

    status, read, err = inspector(
        *listing, "--method", "tools/call", "--tool-name", "read_text_file",
        "--tool-arg", f"path={srv / 'a.txt'}",
    )  # fmt: skip
    assert status == 0, err[-3000:]
    assert read["content"][0]["text"] == "hello from srv\n"

    status, written, err = inspector(
        *listing, "--method", "tools/call", "--tool-name", "write_file",
        "--tool-arg", f"path={srv / 'b.txt'}", "content=boom",
    )  # fmt: skip
    assert status != 0  # the Inspector's own exit status for a tool error
    assert written["isError"] is True
    assert "no-writes" in written["content"][0]["text"]
    assert not (srv / "b.txt").exists()

    with AuditLogger(db) as audit:
        assert audit.verify().ok
        records = list(audit.get_log())
    outcomes = [(r["action_type"], r["result_status"], r["matched_rule"]) for r in records]
    assert outcomes == [
        ("read_text_file", "success", "<default>"),
        ("write_file", "blocked", "no-writes"),
    ]
    assert all(r["action_target"] == name for r in records)
    assert records[1]["action_params"] == {"path": str(srv / "b.txt"), "content": "boom"}
