"""OpenAI Agents SDK: governing an agent governs everything its run can reach."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from adapters_support import ScriptedModel, function_call, make_runtime, output_text
from agents import Agent, Runner, WebSearchTool, function_tool, handoff
from agents.mcp import MCPServerStdio

from aegis.adapters.openai_agents import govern
from aegis.errors import ConfigurationError
from aegis.testing import InMemoryAuditLog

FILES_SERVER = Path(__file__).resolve().parent.parent / "mcp" / "files_server.py"


def _delete(ran: list[Any]) -> Any:
    @function_tool
    def delete_customer(customer_id: int) -> str:
        """Delete a customer."""
        ran.append(customer_id)
        return "deleted"

    return delete_customer


def _outcomes(audit: InMemoryAuditLog) -> list[tuple[str, str]]:
    return [(r["action_type"], r["result_status"]) for r in audit.records]


@pytest.mark.parametrize("wrap", [lambda a: a, handoff], ids=["agent", "handoff()"])
async def test_a_handoff_agents_tools_are_governed(wrap: Any) -> None:
    """After a handoff, a blocked delete of the agent handed to does not run."""
    ran: list[Any] = []
    audit = InMemoryAuditLog()
    specialist = Agent(
        name="specialist",
        model=ScriptedModel(
            [[function_call("delete_customer", {"customer_id": 7}, "d1")], [output_text("done")]]
        ),
        tools=[_delete(ran)],
    )
    triage = Agent(
        name="triage",
        model=ScriptedModel([[function_call("transfer_to_specialist", {}, "h1")]]),
        handoffs=[wrap(specialist)],
    )
    govern(triage, make_runtime(audit=audit), target="crm")
    result = await Runner.run(triage, "delete customer 7")
    assert result.final_output == "done"
    assert ran == []
    assert _outcomes(audit) == [("delete_customer", "blocked")]


async def test_a_custom_handoff_governs_the_agent_it_returns() -> None:
    """A Handoff whose function returns an agent built at run time: that agent is governed."""
    ran: list[Any] = []
    audit = InMemoryAuditLog()

    async def build(context: Any, arguments: str) -> Any:
        return Agent(
            name="late",
            model=ScriptedModel(
                [[function_call("delete_customer", {"customer_id": 8}, "d2")], [output_text("ok")]]
            ),
            tools=[_delete(ran)],
        )

    custom = handoff(Agent(name="late"), tool_name_override="go_late")
    custom.on_invoke_handoff = build
    triage = Agent(
        name="triage",
        model=ScriptedModel([[function_call("go_late", {}, "h1")]]),
        handoffs=[custom],
    )
    govern(triage, make_runtime(audit=audit))
    await Runner.run(triage, "go")
    assert ran == []
    assert _outcomes(audit) == [("delete_customer", "blocked")]


async def test_the_agent_behind_as_tool_is_governed() -> None:
    """An agent used as a tool runs its own tools: they are governed too."""
    ran: list[Any] = []
    audit = InMemoryAuditLog()
    inner = Agent(
        name="inner",
        model=ScriptedModel(
            [[function_call("delete_customer", {"customer_id": 9}, "d3")], [output_text("x")]]
        ),
        tools=[_delete(ran)],
    )
    outer = Agent(
        name="outer",
        model=ScriptedModel(
            [[function_call("ask_inner", {"input": "delete 9"}, "t1")], [output_text("done")]]
        ),
        tools=[inner.as_tool(tool_name="ask_inner", tool_description="Ask the inner agent.")],
    )
    policy = {
        "version": "1",
        "defaults": {"approval": "auto", "risk_level": "low"},
        "rules": [{"name": "no-deletes", "match": {"type": "delete*"}, "approval": "block"}],
    }
    govern(outer, make_runtime(audit=audit, policy=policy))
    await Runner.run(outer, "go")
    assert ran == []
    assert sorted(_outcomes(audit)) == [("ask_inner", "success"), ("delete_customer", "blocked")]


async def test_the_tools_of_mcp_servers_are_governed(tmp_path: Path) -> None:
    """Tools listed by a real MCP server: a blocked delete never reaches it, a read runs."""
    log = tmp_path / "calls.jsonl"
    audit = InMemoryAuditLog()
    policy = {
        "version": "1",
        "defaults": {"approval": "block", "risk_level": "medium"},
        "rules": [{"name": "reads", "match": {"type": "read"}, "approval": "auto"}],
    }
    server = MCPServerStdio(
        params={"command": sys.executable, "args": [str(FILES_SERVER), "--log", str(log)]},
        client_session_timeout_seconds=30,
    )
    model = ScriptedModel(
        [
            [
                function_call("delete", {"path": "/srv/readme.txt"}, "m1"),
                function_call("read", {"path": "/srv/readme.txt"}, "m2"),
            ],
            [output_text("done")],
        ]
    )
    async with server:
        agent = Agent(name="files", model=model, mcp_servers=[server])
        govern(agent, make_runtime(audit=audit, policy=policy), target="files")
        await Runner.run(agent, "go")
    reached = [json.loads(line)["tool"] for line in log.read_text().splitlines() if line]
    assert reached == ["read"]
    assert sorted(_outcomes(audit)) == [("delete", "blocked"), ("read", "success")]


async def test_a_clone_of_a_governed_agent_is_governed(tmp_path: Path) -> None:
    """Agent.clone copies fields only: its MCP servers' tools and new tools are governed still."""
    log = tmp_path / "calls.jsonl"
    audit = InMemoryAuditLog()
    ran: list[Any] = []
    policy = {
        "version": "1",
        "defaults": {"approval": "auto", "risk_level": "low"},
        "rules": [{"name": "no-deletes", "match": {"type": "delete*"}, "approval": "block"}],
    }
    server = MCPServerStdio(
        params={"command": sys.executable, "args": [str(FILES_SERVER), "--log", str(log)]},
        client_session_timeout_seconds=30,
    )
    model = ScriptedModel(
        [
            [
                function_call("delete", {"path": "/srv/readme.txt"}, "m1"),
                function_call("delete_customer", {"customer_id": 7}, "m2"),
            ],
            [output_text("done")],
        ]
    )
    async with server:
        agent = govern(
            Agent(name="files", mcp_servers=[server]), make_runtime(audit=audit, policy=policy)
        )
        clone = agent.clone(name="copy", model=model, tools=[_delete(ran)])
        await Runner.run(clone, "go")
    assert not log.exists() or log.read_text() == ""
    assert ran == []
    assert sorted(_outcomes(audit)) == [("delete", "blocked"), ("delete_customer", "blocked")]


def test_a_tool_that_cannot_be_governed_is_refused_unless_named() -> None:
    """A hosted tool runs at the provider, out of reach: govern() refuses it unless told."""
    search = WebSearchTool()
    with pytest.raises(ConfigurationError, match="cannot govern"):
        govern(Agent(name="a", tools=[search]), make_runtime())
    agent = govern(Agent(name="b", tools=[search]), make_runtime(), ungoverned=[search.name])
    assert agent.tools == [search]


@pytest.mark.parametrize("add", ["append", "replace"])
async def test_tools_added_after_govern_are_governed(add: str) -> None:
    """A tool appended to agent.tools after govern(), or a new tools list: governed."""
    ran: list[Any] = []
    audit = InMemoryAuditLog()
    model = ScriptedModel(
        [[function_call("delete_customer", {"customer_id": 7}, "d1")], [output_text("done")]]
    )
    agent = govern(Agent(name="support", model=model), make_runtime(audit=audit), target="crm")
    if add == "append":
        agent.tools.append(_delete(ran))
    else:
        agent.tools = [_delete(ran)]
    result = await Runner.run(agent, "delete customer 7")
    assert result.final_output == "done"
    assert ran == []
    assert _outcomes(audit) == [("delete_customer", "blocked")]
    assert audit.records[0]["context"]["tool_call_id"] == "d1"


async def test_a_tool_added_after_govern_that_cannot_be_governed_stops_the_run() -> None:
    """A hosted tool appended after govern(), not named ungoverned: the run stops at once."""
    model = ScriptedModel([[output_text("done")]])
    agent = govern(Agent(name="support", model=model), make_runtime())
    agent.tools.append(WebSearchTool())
    with pytest.raises(ConfigurationError, match="cannot govern"):
        await Runner.run(agent, "search")
    assert model.inputs == []


async def test_a_sandbox_agents_capability_tools_are_governed() -> None:
    """A SandboxAgent puts its capabilities' tools back in its tools on each turn: still governed.

    The tools come from the sandbox's capabilities when the run prepares the
    agent, after govern(); a blocked delete among them never runs.
    """
    from agents.run_config import RunConfig, SandboxRunConfig
    from agents.sandbox.capabilities.capability import Capability
    from agents.sandbox.sandbox_agent import SandboxAgent
    from agents.sandbox.sandboxes.unix_local import UnixLocalSandboxClient

    ran: list[Any] = []
    audit = InMemoryAuditLog()

    class Deleting(Capability):
        type: str = "deleting"

        def tools(self) -> list[Any]:
            return [_delete(ran)]

    model = ScriptedModel(
        [[function_call("delete_customer", {"customer_id": 3}, "c1")], [output_text("done")]]
    )
    agent = govern(
        SandboxAgent(name="support", model=model, capabilities=[Deleting()]),
        make_runtime(audit=audit),
    )
    sandbox = SandboxRunConfig(client=UnixLocalSandboxClient())
    result = await Runner.run(agent, "go", run_config=RunConfig(sandbox=sandbox))
    assert result.final_output == "done"
    assert ran == []
    assert _outcomes(audit) == [("delete_customer", "blocked")]
