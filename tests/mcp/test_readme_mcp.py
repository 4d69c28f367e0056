"""The README's one-line MCP client configuration works as written."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp_support import POLICY, ROOT, SERVER

SECTION = (ROOT / "README.md").read_text(encoding="utf-8").split("## Governing MCP servers", 1)[1]


async def test_the_readme_client_configuration_governs_a_server(tmp_path: Path) -> None:
    """The JSON config, with our test server after `--`, lists the tools and blocks deletes."""
    [block] = re.findall(r"```json\n(.*?)```", SECTION.split("\n## ", 1)[0], flags=re.S)
    assert block.count("\n") == 1  # one line, as the README promises
    [server] = json.loads(block)["mcpServers"].values()
    assert server["command"] == "aegis"
    args = server["args"]
    args = [*args[: args.index("--") + 1], sys.executable, str(SERVER)]
    (tmp_path / "policy.yaml").write_text(POLICY, encoding="utf-8")
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "aegis", *args], env=dict(os.environ), cwd=tmp_path
    )
    async with Client(params, cache=None) as client:
        names = [t.name for t in (await client.list_tools()).tools]
        blocked = await client.call_tool("delete", {"path": "/srv/readme.txt"})
    assert names == ["read", "write", "delete"]
    assert blocked.is_error is True
    assert (tmp_path / "aegis_audit.db").exists()
