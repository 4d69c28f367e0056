"""Claude Agent SDK: a decision lets run only the in-process tool its call names, server and all.

Two SDK MCP servers each have a tool named ``transfer``. A run names no
server (the SDK hands the tool only its input), so the tools are given per
server (``tools={server: [tools]}``): a decision on ``mcp__sandbox__transfer``
lets the sandbox tool run, never the prod one; a list, which names no server,
is refused at once.
"""

from __future__ import annotations

from typing import Any

import pytest
from adapters_support import make_runtime

from aegis.errors import ConfigurationError
from aegis.testing import InMemoryAuditLog

POLICY = {"rules": [{"name": "transfers", "match": {"type": "transfer"}, "approval": "auto"}]}


def _transfer(desk: str, ran: list[tuple[str, dict[str, Any]]]) -> Any:
    from claude_agent_sdk import tool

    @tool("transfer", f"Move money ({desk}).", {"amount": int})
    async def transfer(args: dict[str, Any]) -> dict[str, Any]:
        ran.append((desk, dict(args)))
        return {"content": [{"type": "text", "text": f"moved {args['amount']} at {desk}"}]}

    return transfer


async def test_a_decision_on_one_servers_tool_lets_only_that_tool_run() -> None:
    """The sandbox call is decided; prod's tool of the same name, never asked about, is refused."""
    from claude_agent_sdk import create_sdk_mcp_server

    from aegis.adapters.claude_agent_sdk import hooks

    ran: list[tuple[str, dict[str, Any]]] = []
    sandbox, prod = _transfer("sandbox", ran), _transfer("prod", ran)
    create_sdk_mcp_server("sandbox", tools=[sandbox])
    create_sdk_mcp_server("prod", tools=[prod])
    audit = InMemoryAuditLog()
    given = hooks(
        make_runtime(audit=audit, policy=POLICY),
        target="bank",
        tools={"sandbox": [sandbox], "prod": [prod]},
        matcher="mcp__sandbox__.*",
    )
    [[pre], [post]] = (given[e][0].hooks for e in ("PreToolUse", "PostToolUse"))
    args = {"amount": 1000}
    call = {"tool_name": "mcp__sandbox__transfer", "tool_input": args, "tool_use_id": "tu_1"}
    answer = await pre({**call, "session_id": "s"}, "tu_1", None)  # type: ignore[arg-type]
    assert answer["hookSpecificOutput"]["permissionDecision"] == "allow"  # type: ignore[typeddict-item]

    # Claude Code runs prod's transfer unasked (outside the matcher), while the call is open.
    with pytest.raises(Exception, match="no Aegis decision"):
        await prod.handler(args)
    result = await sandbox.handler(args)  # the SDK's server calls the handler so
    await post({**call, "session_id": "s", "tool_response": result}, "tu_1", None)  # type: ignore[arg-type]
    assert ran == [("sandbox", args)]
    refused, decided = audit.records
    assert (refused["action_type"], refused["result_status"], refused["matched_rule"]) == (
        "transfer",
        "blocked",
        "<aegis>",
    )
    assert refused["action_desc"] == "Move money (prod)."
    assert (decided["result_status"], decided["action_desc"]) == (
        "success",
        "Move money (sandbox).",
    )


def test_tools_given_without_their_servers_are_refused() -> None:
    """A list names no server: prod's tool in it would run on a decision about sandbox's.

    ``tools=[prod]`` with hooks for the sandbox server only: a decision on
    ``mcp__sandbox__transfer`` (a tool not given to Aegis) would let prod's
    ``transfer`` run unasked. The list is refused at once, for both gates.
    """
    from claude_agent_sdk import create_sdk_mcp_server

    from aegis.adapters.claude_agent_sdk import can_use_tool, hooks

    ran: list[tuple[str, dict[str, Any]]] = []
    sandbox, prod = _transfer("sandbox", ran), _transfer("prod", ran)
    create_sdk_mcp_server("sandbox", tools=[sandbox])
    create_sdk_mcp_server("prod", tools=[prod])
    with pytest.raises(ConfigurationError, match="maps each MCP server name"):
        hooks(make_runtime(policy=POLICY), tools=[prod], matcher="mcp__sandbox__.*")
    with pytest.raises(ConfigurationError, match="maps each MCP server name"):
        can_use_tool(make_runtime(policy=POLICY), tools=(prod,))
    with pytest.raises(ConfigurationError, match="maps each MCP server name"):
        hooks(make_runtime(), tools=[sandbox, prod])


def test_one_tool_given_twice_is_refused() -> None:
    """One tool object for two servers would share their decisions: refused, as is a bare tool."""
    from aegis.adapters.claude_agent_sdk import hooks

    ran: list[tuple[str, dict[str, Any]]] = []
    sandbox = _transfer("sandbox", ran)
    with pytest.raises(ConfigurationError, match="one tool twice"):
        hooks(make_runtime(), tools={"sandbox": [sandbox], "prod": [sandbox]})
    with pytest.raises(ConfigurationError, match="list of its @tool functions"):
        hooks(make_runtime(), tools={"sandbox": sandbox})
    assert ran == []
