"""Agents SDK and Anthropic tools: the action is the arguments as the tool's schema types them."""

from __future__ import annotations

from typing import Any

from adapters_support import (
    ScriptedModel,
    function_call,
    make_runtime,
    mock_anthropic,
    output_text,
    text_block,
    tool_use,
)
from agents import Agent, Runner, function_tool

from aegis.adapters.openai_agents import govern
from aegis.testing import InMemoryAuditLog

POLICY: dict[str, Any] = {
    "version": "1",
    "defaults": {"risk_level": "low", "approval": "auto"},
    "rules": [
        {
            "name": "no-force",
            "match": {"type": "purge"},
            "conditions": {"param_eq": {"force": True}},
            "risk_level": "critical",
            "approval": "block",
        }
    ],
}


def _records(audit: InMemoryAuditLog) -> list[tuple[str, str, Any]]:
    return [(r["matched_rule"], r["result_status"], r["action_params"]) for r in audit.records]


async def test_agents_sdk_tools_decide_on_coerced_arguments() -> None:
    """force "yes" is blocked by the rule; force "no" runs, as False, and the audit says so."""
    ran: list[Any] = []

    @function_tool
    def purge(days: int, force: bool) -> str:
        """Purge old rows."""
        ran.append((days, force))
        return "purged"

    audit = InMemoryAuditLog()
    model = ScriptedModel(
        [
            [
                function_call("purge", {"days": "30", "force": "yes"}, "c1"),
                function_call("purge", {"days": "30", "force": "no"}, "c2"),
            ],
            [output_text("done")],
        ]
    )
    agent = govern(
        Agent(name="ops", model=model, tools=[purge]), make_runtime(audit=audit, policy=POLICY)
    )
    await Runner.run(agent, "go")
    assert ran == [(30, False)]
    assert sorted(_records(audit), key=str) == sorted(
        [
            ("no-force", "blocked", {"days": 30, "force": True}),
            ("<default>", "success", {"days": 30, "force": False}),
        ],
        key=str,
    )


def test_anthropic_tools_decide_on_coerced_arguments() -> None:
    """The Anthropic tool runner: the same call is read as the tool's input_schema types it."""
    from anthropic.lib.tools import beta_tool

    from aegis.adapters.anthropic import governed

    ran: list[Any] = []

    def purge(days: int, force: bool) -> str:
        """Purge old rows."""
        ran.append((days, force))
        return "purged"

    audit = InMemoryAuditLog()
    tool = governed(beta_tool(purge), make_runtime(audit=audit, policy=POLICY))
    client, _ = mock_anthropic(
        [
            [
                tool_use("purge", {"days": "30", "force": "true"}, "t1"),
                tool_use("purge", {"days": 30, "force": "false"}, "t2"),
            ],
            [text_block("done")],
        ]
    )
    runner = client.beta.messages.tool_runner(
        model="claude-test",
        max_tokens=100,
        messages=[{"role": "user", "content": "go"}],
        tools=[tool],
    )
    runner.until_done()
    assert ran == [(30, False)]
    assert [(rule, status) for rule, status, _ in _records(audit)] == [
        ("no-force", "blocked"),
        ("<default>", "success"),
    ]


async def test_a_hand_written_anthropic_loop_decides_on_coerced_arguments() -> None:
    """govern_tool_call(input_schema=...): the executor gets the values the policy saw."""
    from aegis.adapters.anthropic import govern_tool_call

    got: list[Any] = []
    audit = InMemoryAuditLog()
    runtime = make_runtime(audit=audit, policy=POLICY)
    schema = {"type": "object", "properties": {"force": {"type": "boolean"}}}
    blocked = await govern_tool_call(
        runtime=runtime, tool_name="purge", tool_input={"force": "1"}, input_schema=schema
    )
    ran = await govern_tool_call(
        runtime=runtime,
        tool_name="purge",
        tool_input={"force": "off"},
        input_schema=schema,
        execute=lambda action: got.append(dict(action.params)) or "ok",
    )
    assert (blocked.is_error, ran.is_error) == (True, False)
    assert got == [{"force": False}]
