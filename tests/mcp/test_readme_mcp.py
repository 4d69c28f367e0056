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
