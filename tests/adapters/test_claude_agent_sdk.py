"""Claude Agent SDK specifics: the tool's real outcome in the record, hooks that fail closed."""

from __future__ import annotations

from typing import Any

from adapters_support import make_runtime

from aegis.testing import InMemoryAuditLog


async def _query(options: Any, calls: list[Any], server: str) -> Any:
    from claude_agent_sdk import query
    from fake_claude_code import FakeClaudeCode

    cli = FakeClaudeCode(calls, server=server)

    async def prompt() -> Any:
        yield {"type": "user", "message": {"role": "user", "content": "go"}}

    async for _ in query(prompt=prompt(), options=options, transport=cli):
        pass
    return cli


async def test_a_tool_that_fails_in_claude_code_is_recorded_as_failed() -> None:
    """The call is allowed; the tool fails; PostToolUseFailure makes the record FAILED."""
    from claude_agent_sdk import ClaudeAgentOptions, create_sdk_mcp_server, tool

    from aegis.adapters.claude_agent_sdk import hooks

    @tool("lookup", "Look a customer up.", {"customer_id": int})
    async def lookup(args: dict[str, Any]) -> dict[str, Any]:
        raise LookupError(f"no customer {args['customer_id']}")

    audit = InMemoryAuditLog()
    options = ClaudeAgentOptions(
        mcp_servers={"crm": create_sdk_mcp_server("crm", tools=[lookup])},
        hooks=hooks(make_runtime(audit=audit), target="crm", tools=[lookup]),  # type: ignore[arg-type]
    )
    cli = await _query(options, [("lookup", {"customer_id": 9}, "tu_1")], "crm")
    assert "no customer 9" in cli.model_saw["tu_1"]
    [record] = audit.records
    assert record["result_status"] == "failed"
    assert record["context"]["tool_call_id"] == "tu_1"


def test_the_hooks_fail_closed_and_cover_the_outcome() -> None:
    """Every matcher blocks the call when its hook fails; PostToolUse hooks record outcomes."""
    from aegis.adapters.claude_agent_sdk import hooks

    given = hooks(make_runtime(), target="crm", matcher="mcp__crm__.*", timeout=120)
    assert sorted(given) == ["PostToolUse", "PostToolUseFailure", "PreToolUse"]
    for matchers in given.values():
        [matcher] = matchers
        assert (matcher.on_failure, matcher.matcher, matcher.timeout) == (
            "block",
            "mcp__crm__.*",
            120,
        )
