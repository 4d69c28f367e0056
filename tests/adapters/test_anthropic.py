"""Anthropic SDK specifics: async tools, hand-written loops, on_block="raise"."""

from __future__ import annotations

from typing import Any

import pytest
from adapters_support import make_runtime, mock_anthropic, text_block, tool_use
from anthropic.lib.tools import BetaFunctionTool, beta_async_tool

from aegis import Action, Result, ResultStatus, Runtime, ToolBlockedError
from aegis.adapters.anthropic import govern_tool_call, governed, tool_results_to_api_format
from aegis.errors import ConfigurationError
from aegis.testing import InMemoryAuditLog, RecordingExecutor, ScriptedApprovalHandler

REFUND = {"order_id": "o-17", "amount": 20.0}


async def test_async_tools_with_the_async_tool_runner() -> None:
    """Async tools under AsyncAnthropic's runner: auto runs, approve-no does not."""
    ran: list[Any] = []
    audit = InMemoryAuditLog()
    runtime = make_runtime(ScriptedApprovalHandler([False]), audit=audit)

    @beta_async_tool
    async def lookup(customer_id: int) -> str:
        """Look a customer up."""
        ran.append(("lookup", customer_id))
        return "gold"

    async def refund(order_id: str, amount: float) -> str:
        """Refund an order."""
        ran.append(("refund", amount))
        return "refunded"

    client, sent = mock_anthropic(
        [
            [tool_use("lookup", {"customer_id": 7}, "tu_1"), tool_use("refund", REFUND, "tu_2")],
            [text_block("done")],
        ],
        asynchronous=True,
    )
    runner = client.beta.messages.tool_runner(
        model="claude-test",
        max_tokens=100,
        messages=[{"role": "user", "content": "go"}],
        tools=[governed(lookup, runtime, target="crm"), governed(refund, runtime, target="crm")],
    )
    await runner.until_done()
    assert ran == [("lookup", 7)]
    results = {b["tool_use_id"]: b for b in sent[-1]["messages"][-1]["content"]}
    assert results["tu_1"]["content"] == "gold"
    assert results["tu_2"]["is_error"] is True
    assert "denied" in results["tu_2"]["content"]
    assert sorted(r["result_status"] for r in audit.records) == ["denied", "success"]


async def test_a_hand_written_loop_with_the_runtimes_executor() -> None:
    """govern_tool_call runs on the runtime's executor; results become tool_result blocks."""
    executor = RecordingExecutor(responses={"lookup": {"tier": "gold"}})
    base = make_runtime()
    runtime = Runtime(executor=executor, policy=base.policy, audit_logger=InMemoryAuditLog())
    blocks = [
        tool_use("lookup", {"customer_id": 7}, "tu_1"),
        tool_use("delete_customer", {"customer_id": 7}, "tu_2"),
    ]
    results = [
        await govern_tool_call(
            runtime=runtime,
            tool_name=b["name"],
            tool_input=b["input"],
            tool_use_id=b["id"],
            target="crm",
        )
        for b in blocks
    ]
    assert [a.type for a in executor.actions] == ["lookup"]
    assert tool_results_to_api_format(results) == [
        {"type": "tool_result", "tool_use_id": "tu_1", "content": '{"tier": "gold"}'},
        {
            "type": "tool_result",
            "tool_use_id": "tu_2",
            "content": "blocked by rule no-deletes: deletes need a ticket",
            "is_error": True,
        },
    ]


async def test_a_governed_result_answers_like_a_result() -> None:
    """Code written for Result (status, ok, data, error) works on govern_tool_call's answer."""
    runtime = make_runtime(ScriptedApprovalHandler([]))

    def lookup(action: Action) -> dict[str, str]:
        return {"tier": "gold", "id": str(action.params["customer_id"])}

    ran = await govern_tool_call(
        runtime=runtime, tool_name="lookup", tool_input={"customer_id": 7}, execute=lookup
    )
    assert (ran.status, ran.ok, ran.data, ran.error) == (
        ResultStatus.SUCCESS,
        True,
        {"tier": "gold", "id": "7"},
        None,
    )
    refused = await govern_tool_call(
        runtime=runtime, tool_name="delete_customer", tool_input={"customer_id": 7}, execute=lookup
    )
    assert (refused.status, refused.ok, refused.data) == (ResultStatus.BLOCKED, False, None)
    assert refused.error is not None
    assert "no-deletes" in refused.error


async def test_govern_tool_call_with_its_own_function() -> None:
    """govern_tool_call(execute=...) runs that function with the approved action."""
    seen: list[Action] = []

    def execute(action: Action) -> Result:
        seen.append(action)
        return Result(action, ResultStatus.SUCCESS, data="refunded")

    out = await govern_tool_call(
        runtime=make_runtime(ScriptedApprovalHandler([True])),
        tool_name="refund",
        tool_input=REFUND,
        tool_use_id="tu_9",
        target="crm",
        execute=execute,
    )
    assert (out.is_error, out.content) == (False, "refunded")
    assert [dict(a.params) for a in seen] == [REFUND]


async def test_on_block_raise_raises_tool_blocked_error() -> None:
    """on_block="raise" raises ToolBlockedError carrying the recorded BLOCKED result."""
    audit = InMemoryAuditLog()
    with pytest.raises(ToolBlockedError, match="no-deletes") as caught:
        await govern_tool_call(
            runtime=make_runtime(audit=audit),
            tool_name="delete_customer",
            tool_input={"customer_id": 1},
            on_block="raise",
        )
    assert caught.value.result is not None
    assert caught.value.result.status is ResultStatus.BLOCKED
    assert [r["result_status"] for r in audit.records] == ["blocked"]


def test_tool_results_to_api_format_refuses_other_values() -> None:
    """Only the results of govern_tool_call can be formatted: a bare Result has no tool_use id."""
    with pytest.raises(ConfigurationError, match="GovernedToolResult"):
        tool_results_to_api_format([Result(Action("a", "b"), ResultStatus.SUCCESS)])


def test_governed_refuses_what_is_not_a_function() -> None:
    """governed() says what it takes."""
    with pytest.raises(ConfigurationError, match="function or a @beta_tool"):
        governed(42, make_runtime())  # type: ignore[arg-type]


_BROKEN_SCHEMA = {"type": "object", "properties": {"customer": {"$ref": "#/$defs/Missing"}}}


def test_a_tool_whose_schema_cannot_be_read_is_refused_and_recorded() -> None:
    """A broken $ref cannot say how the tool reads its input: blocked, recorded, and read."""
    ran: list[Any] = []
    audit = InMemoryAuditLog()

    def lookup(customer: dict[str, Any]) -> str:
        """Look a customer up."""
        ran.append(customer)
        return "gold"

    tool = BetaFunctionTool(lookup, name="lookup", input_schema=_BROKEN_SCHEMA)
    client, sent = mock_anthropic(
        [[tool_use("lookup", {"customer": {"id": 7}}, "tu_1")], [text_block("done")]]
    )
    runner = client.beta.messages.tool_runner(
        model="claude-test",
        max_tokens=100,
        messages=[{"role": "user", "content": "go"}],
        tools=[governed(tool, make_runtime(audit=audit), target="crm")],
    )
    runner.until_done()
    assert ran == []
    [block] = sent[-1]["messages"][-1]["content"]
    assert block["is_error"] is True
    assert "lookup was not run" in block["content"]
    assert "#/$defs/Missing" in block["content"]
    [record] = audit.records
    assert (record["action_type"], record["result_status"], record["matched_rule"]) == (
        "lookup",
        "blocked",
        "<aegis>",
    )
    assert record["action_params"] == {"customer": {"id": 7}}
    assert record["context"]["tool_call_id"] == "tu_1"


async def test_govern_tool_call_with_a_schema_that_cannot_be_read_refuses_and_records() -> None:
    """A hand-written loop's broken input_schema: the call is blocked and recorded, never run."""
    ran: list[Action] = []
    audit = InMemoryAuditLog()
    out = await govern_tool_call(
        runtime=make_runtime(audit=audit),
        tool_name="lookup",
        tool_input={"customer": {"id": 7}},
        tool_use_id="tu_1",
        execute=ran.append,
        input_schema=_BROKEN_SCHEMA,
    )
    assert ran == []
    assert (out.status, out.is_error) == (ResultStatus.BLOCKED, True)
    assert "#/$defs/Missing" in out.content
    [record] = audit.records
    assert (record["result_status"], record["matched_rule"]) == ("blocked", "<aegis>")
    assert record["context"]["tool_call_id"] == "tu_1"
