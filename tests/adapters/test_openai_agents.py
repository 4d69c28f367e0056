"""OpenAI Agents SDK specifics: suspension, the guardrail, the decorator, tampered state."""

from __future__ import annotations

import json
from typing import Any

import pytest
from adapters_support import ScriptedModel, function_call, make_runtime, output_text
from agents import (
    Agent,
    FunctionTool,
    Runner,
    RunState,
    ToolInputGuardrailTripwireTriggered,
    function_tool,
)

from aegis.adapters.openai_agents import govern, governed_tool, resolve_interruptions
from aegis.errors import ConfigurationError
from aegis.testing import InMemoryAuditLog, ScriptedApprovalHandler

REFUND = {"order_id": "o-17", "amount": 20.0}


def _refund(ran: list[Any]) -> Any:
    @function_tool
    def refund(order_id: str, amount: float) -> str:
        """Refund an order."""
        ran.append((order_id, amount))
        return "refunded"

    return refund


async def test_a_call_needing_approval_suspends_the_run_without_asking() -> None:
    """needs_approval comes from the policy: the run stops, and nobody is asked yet."""
    ran: list[Any] = []
    approver = ScriptedApprovalHandler([])
    model = ScriptedModel([[function_call("refund", REFUND, "c1")], [output_text("done")]])
    agent = govern(Agent(name="support", model=model, tools=[_refund(ran)]), make_runtime(approver))
    result = await Runner.run(agent, "go")
    assert [(i.name, i.call_id) for i in result.interruptions] == [("refund", "c1")]
    assert json.loads(result.interruptions[0].arguments or "{}") == REFUND
    assert approver.asked == []
    assert ran == []


async def test_arguments_edited_after_approval_need_a_new_approval() -> None:
    """A saved state edited after the yes (20 -> 20000) does not run: it is asked again."""
    ran: list[Any] = []
    audit = InMemoryAuditLog()
    approver = ScriptedApprovalHandler([True, False])
    runtime = make_runtime(approver, audit=audit)
    model = ScriptedModel([[function_call("refund", REFUND, "c1")], [output_text("done")]])
    agent = govern(Agent(name="support", model=model, tools=[_refund(ran)]), runtime, target="crm")
    result = await Runner.run(agent, "go")
    approved = (await resolve_interruptions(result, runtime)).to_string()
    edited = approved.replace('\\"amount\\": 20.0', '\\"amount\\": 20000.0')
    assert edited != approved
    # The SDK fingerprints each call; an editor who can change the file drops that too.
    data = json.loads(edited)
    _drop(data, "tool_invocations")
    result = await Runner.run(agent, await RunState.from_json(agent, data))
    assert ran == []
    assert [json.loads(i.arguments or "{}")["amount"] for i in result.interruptions] == [20000.0]
    result = await Runner.run(agent, await resolve_interruptions(result, runtime))
    assert ran == []
    assert [d.action.params["amount"] for d in approver.asked] == [20.0, 20000.0]
    [record] = audit.records
    assert (record["result_status"], record["action_params"]) == (
        "denied",
        {**REFUND, "amount": 20000.0},
    )


async def test_on_block_raise_stops_the_run_with_the_tripwire() -> None:
    """With on_block="raise" a blocked call stops the run with the SDK's guardrail tripwire."""
    ran: list[Any] = []
    audit = InMemoryAuditLog()

    @function_tool
    def delete_customer(customer_id: int) -> str:
        """Delete a customer."""
        ran.append(customer_id)
        return "deleted"

    model = ScriptedModel([[function_call("delete_customer", {"customer_id": 1}, "c1")], []])
    agent = govern(
        Agent(name="support", model=model, tools=[delete_customer]),
        make_runtime(audit=audit),
        on_block="raise",
    )
    with pytest.raises(ToolInputGuardrailTripwireTriggered):
        await Runner.run(agent, "go")
    assert ran == []
    assert [r["result_status"] for r in audit.records] == ["blocked"]


async def test_governed_tool_uses_the_given_action_type_and_target() -> None:
    """@governed_tool(action_type=..., action_target=...) decides the call as that action."""
    ran: list[Any] = []
    audit = InMemoryAuditLog()
    runtime = make_runtime(audit=audit)

    @governed_tool(runtime=runtime, action_type="delete_customer", action_target="crm")
    def purge(customer_id: int) -> str:
        """Purge a customer."""
        ran.append(customer_id)
        return "purged"

    model = ScriptedModel(
        [[function_call("purge", {"customer_id": 5}, "c1")], [output_text("done")]]
    )
    result = await Runner.run(Agent(name="support", model=model, tools=[purge]), "go")
    assert result.final_output == "done"
    assert ran == []
    [record] = audit.records
    assert (record["action_type"], record["action_target"], record["result_status"]) == (
        "delete_customer",
        "crm",
        "blocked",
    )


async def test_a_saved_state_resumes_after_approval() -> None:
    """A state saved as a string, loaded again and resolved, runs the approved call once."""
    ran: list[Any] = []
    runtime = make_runtime(ScriptedApprovalHandler([True]))
    model = ScriptedModel([[function_call("refund", REFUND, "c1")], [output_text("done")]])
    agent = govern(Agent(name="support", model=model, tools=[_refund(ran)]), runtime)
    saved = (await Runner.run(agent, "go")).to_state().to_string()
    state = await RunState.from_string(agent, saved)
    result = await Runner.run(agent, await resolve_interruptions(state, runtime))
    assert result.final_output == "done"
    assert ran == [("o-17", 20.0)]


async def test_interruptions_of_ungoverned_tools_are_left_alone() -> None:
    """resolve_interruptions decides only the calls of governed tools."""
    ran: list[Any] = []

    @function_tool(needs_approval=True)
    def wire(amount: float) -> str:
        """Wire money."""
        ran.append(amount)
        return "wired"

    model = ScriptedModel([[function_call("wire", {"amount": 1.0}, "c1")], [output_text("done")]])
    agent = Agent(name="support", model=model, tools=[wire])
    result = await Runner.run(agent, "go")
    state = await resolve_interruptions(result, make_runtime())
    assert len(state.get_interruptions()) == 1


def test_govern_refuses_what_is_not_an_agent_or_tools() -> None:
    """govern() says what it takes."""
    with pytest.raises(ConfigurationError, match=r"agents\.Agent or a list of tools"):
        govern("support", make_runtime())


def _drop(data: Any, key: str) -> None:
    """Remove ``key`` wherever it appears in a JSON document."""
    if isinstance(data, dict):
        data.pop(key, None)
        for value in data.values():
            _drop(value, key)
    elif isinstance(data, list):
        for value in data:
            _drop(value, key)


def _raw_call(name: str, arguments: str, call_id: str) -> Any:
    """A function call item whose arguments are the model's own text, as it wrote it."""
    from openai.types.responses import ResponseFunctionToolCall

    return ResponseFunctionToolCall(
        arguments=arguments,
        call_id=call_id,
        name=name,
        type="function_call",
        id=f"fc_{call_id}",
        status="completed",
    )


def _tool_outputs(model: Any) -> dict[str, str]:
    return {
        item["call_id"]: str(item["output"])
        for item in model.inputs[-1]
        if isinstance(item, dict) and item.get("type") == "function_call_output"
    }


async def test_an_infinite_argument_is_refused_recorded_and_read_by_the_model() -> None:
    """1e400 decodes to infinity: the call is blocked and recorded, and the run goes on."""
    ran: list[Any] = []
    audit = InMemoryAuditLog()
    policy = {
        "version": "1",
        "defaults": {"approval": "block", "risk_level": "high"},
        "rules": [
            {
                "name": "small-refunds",
                "match": {"type": "refund"},
                "conditions": {"param_lt": {"amount": 100}},
                "approval": "auto",
                "risk_level": "low",
            }
        ],
    }
    model = ScriptedModel(
        [
            [
                _raw_call("refund", '{"order_id": "o-17", "amount": -1e400}', "c1"),
                _raw_call("refund", '{"order_id": "o-18", "amount": 5}', "c2"),
            ],
            [output_text("done")],
        ]
    )
    runtime = make_runtime(audit=audit, policy=policy)
    agent = govern(Agent(name="support", model=model, tools=[_refund(ran)]), runtime)
    result = await Runner.run(agent, "go")
    assert result.final_output == "done"
    assert ran == [("o-18", 5.0)]
    saw = _tool_outputs(model)
    assert "param 'amount' is not a finite number" in saw["c1"]
    assert saw["c2"] == "refunded"
    blocked = [r for r in audit.records if r["result_status"] == "blocked"]
    assert [(r["action_type"], r["matched_rule"]) for r in blocked] == [("refund", "<aegis>")]
    assert blocked[0]["action_params"] == {"order_id": "o-17", "amount": "-inf"}
    assert blocked[0]["context"]["tool_call_id"] == "c1"


async def test_a_tool_with_an_unreadable_schema_is_refused_and_recorded() -> None:
    """A broken $ref cannot say how the tool reads its arguments: blocked, recorded, read."""
    ran: list[str] = []
    audit = InMemoryAuditLog()

    async def invoke(context: Any, arguments: str) -> str:
        ran.append(arguments)
        return "looked up"

    lookup = FunctionTool(
        name="lookup",
        description="Look a customer up.",
        params_json_schema={
            "type": "object",
            "properties": {"customer": {"$ref": "#/$defs/Missing"}},
        },
        on_invoke_tool=invoke,
        strict_json_schema=False,
    )
    model = ScriptedModel(
        [[_raw_call("lookup", '{"customer": {"id": 7}}', "c1")], [output_text("done")]]
    )
    agent = govern(Agent(name="support", model=model, tools=[lookup]), make_runtime(audit=audit))
    result = await Runner.run(agent, "go")
    assert result.final_output == "done"
    assert ran == []
    saw = _tool_outputs(model)["c1"]
    assert "lookup was not run" in saw
    assert "#/$defs/Missing" in saw
    [record] = audit.records
    assert (record["action_type"], record["result_status"], record["matched_rule"]) == (
        "lookup",
        "blocked",
        "<aegis>",
    )
    assert record["action_params"] == {"customer": {"id": 7}}
