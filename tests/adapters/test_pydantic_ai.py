"""Pydantic AI specifics: edited deferred approvals, the capability, governed toolsets."""

from __future__ import annotations

from typing import Any

from adapters_support import (
    DESCRIPTIONS,
    Run,
    _recorders,
    make_runtime,
    pydantic_ai_tool_results,
    scripted_function_model,
)

from aegis.testing import InMemoryAuditLog, ScriptedApprovalHandler

REFUND = {"order_id": "o-17", "amount": 20.0}


async def test_arguments_edited_in_the_deferred_results_are_refused() -> None:
    """A yes for 20 whose ToolApproved overrides the amount to 2000: refused, never run."""
    from pydantic_ai import Agent, DeferredToolRequests, ToolApproved

    from aegis.adapters.pydantic_ai import govern, resolve_deferred

    audit = InMemoryAuditLog()
    runtime = make_runtime(ScriptedApprovalHandler([True]), audit=audit)
    run = Run()
    model, seen = scripted_function_model([("refund", REFUND, "call_1")])
    agent = govern(Agent(model, name="support", tools=list(_recorders(run).values())), runtime)
    result = await agent.run("go")
    assert isinstance(result.output, DeferredToolRequests)
    answers = await resolve_deferred(result, runtime)
    answers.approvals["call_1"] = ToolApproved(override_args={**REFUND, "amount": 2000.0})
    await agent.run(message_history=result.all_messages(), deferred_tool_results=answers)
    assert run.executed == []
    assert "digest mismatch" in pydantic_ai_tool_results(seen[-1])["call_1"]
    [record] = audit.records
    assert record["result_status"] == "denied"


async def test_the_capability_governs_the_agent_it_is_given_to() -> None:
    """AegisCapability in Agent(capabilities=...) blocks, defers and records like govern()."""
    from pydantic_ai import Agent, DeferredToolRequests

    from aegis.adapters.pydantic_ai import AegisCapability

    audit = InMemoryAuditLog()
    runtime = make_runtime(audit=audit)
    run = Run()
    calls: list[Any] = [
        ("delete_customer", {"customer_id": 3}, "c1"),
        ("refund", REFUND, "c2"),
    ]
    model, _ = scripted_function_model(calls)
    agent: Any = Agent(
        model,
        name="support",
        tools=list(_recorders(run).values()),
        output_type=[str, DeferredToolRequests],
        capabilities=[AegisCapability(runtime, target="crm")],
    )
    result = await agent.run("go")
    assert isinstance(result.output, DeferredToolRequests)
    assert [part.tool_call_id for part in result.output.approvals] == ["c2"]
    saw = pydantic_ai_tool_results(result.all_messages())
    assert saw["c1"] == "blocked by rule no-deletes: deletes need a ticket"
    assert run.executed == []
    assert [r["result_status"] for r in audit.records] == ["blocked"]


async def test_a_governed_toolset_records_its_calls() -> None:
    """govern(toolset) wraps a FunctionToolset: its auto call runs once, with its description."""
    from pydantic_ai import Agent, FunctionToolset

    from aegis.adapters.pydantic_ai import AegisToolset, govern

    audit = InMemoryAuditLog()
    run = Run()
    toolset = govern(FunctionToolset(list(_recorders(run).values())), make_runtime(audit=audit))
    assert isinstance(toolset, AegisToolset)
    model, _ = scripted_function_model([("lookup", {"customer_id": 7}, "c1")])
    result = await Agent(model, name="support", toolsets=[toolset]).run("go")
    assert result.output == "done"
    assert run.executed == [("lookup", {"customer_id": 7})]
    [record] = audit.records
    assert (record["result_status"], record["action_desc"]) == ("success", DESCRIPTIONS["lookup"])
    assert record["context"]["tool_call_id"] == "c1"


async def test_tools_registered_after_govern_are_governed() -> None:
    """A tool registered on the agent, or added to a governed toolset, after govern(): blocked."""
    from pydantic_ai import Agent, FunctionToolset

    from aegis.adapters.pydantic_ai import govern

    audit = InMemoryAuditLog()
    runtime = make_runtime(ScriptedApprovalHandler([]), audit=audit)
    run = Run()
    recorders = _recorders(run)
    model, seen = scripted_function_model([("delete_customer", {"customer_id": 7}, "c1")])
    base = Agent(model, name="support", tools=[recorders["lookup"]])
    agent = govern(base, runtime)
    base.tool_plain(recorders["delete_customer"])
    await agent.run("go")
    toolset = FunctionToolset([recorders["lookup"]])
    governed = govern(toolset, runtime)
    toolset.add_function(recorders["delete_customer"])
    model, seen = scripted_function_model([("delete_customer", {"customer_id": 8}, "c2")])
    await Agent(model, name="support", toolsets=[governed]).run("go")
    assert run.executed == []
    assert [(r["action_type"], r["result_status"]) for r in audit.records] == [
        ("delete_customer", "blocked"),
        ("delete_customer", "blocked"),
    ]
    assert "blocked by rule no-deletes" in pydantic_ai_tool_results(seen[-1])["c2"]


def _scripted_realtime_model(calls: list[tuple[str, dict[str, Any], str]]) -> Any:
    """A realtime model whose one response asks for ``calls``, then keeps the line open."""
    import asyncio
    import json
    from collections.abc import AsyncIterator
    from contextlib import asynccontextmanager

    from pydantic_ai.realtime import RealtimeModel
    from pydantic_ai.realtime._inferred_lifecycle import InferredLifecycle
    from pydantic_ai.realtime.codec import RealtimeConnection, ResponseDone, ToolCall

    class Connection(RealtimeConnection):
        async def send(self, content: Any) -> None:
            return None  # the tools' results: read from the session's events instead

        def frames(self) -> Any:
            async def events() -> AsyncIterator[Any]:
                for name, args, call_id in calls:
                    yield ToolCall(call_id, tool_name=name, args=json.dumps(args))
                yield ResponseDone()
                await asyncio.Event().wait()  # a live call: the session closes it

            return InferredLifecycle().frames(events())

    class Scripted(RealtimeModel):
        @property
        def model_name(self) -> str:
            return "scripted-realtime"

        @property
        def system(self) -> str:
            return "scripted"

        @asynccontextmanager
        async def connect(self, **_: Any) -> AsyncIterator[Any]:
            yield Connection()

    return Scripted()


async def _realtime_results(agent: Any, calls: list[tuple[str, dict[str, Any], str]]) -> dict:
    """Call id -> what the model read back, from one realtime session of ``agent``."""
    from pydantic_ai.messages import FunctionToolResultEvent

    saw: dict[str, str] = {}
    async with agent.realtime(_scripted_realtime_model(calls)).session() as session:
        async for event in session:
            if isinstance(event, FunctionToolResultEvent):
                saw[event.part.tool_call_id] = str(event.part.content)
                if len(saw) == len(calls):
                    break
    return saw


async def test_a_realtime_session_of_a_governed_agent_is_governed() -> None:
    """agent.realtime(...).session() does not go through iter(): its calls are governed too.

    A blocked call never runs; a call that needs approval waits for the
    approval handler (a live session cannot end and resume) and runs with
    its yes; each is recorded with the session's call id.
    """
    from pydantic_ai import Agent
    from pydantic_ai.models.test import TestModel

    from aegis.adapters.pydantic_ai import govern

    audit = InMemoryAuditLog()
    runtime = make_runtime(ScriptedApprovalHandler([True]), audit=audit)
    run = Run()
    agent = govern(
        Agent(TestModel(), name="support", tools=list(_recorders(run).values())),
        runtime,
        target="billing",
    )
    calls: list[Any] = [("delete_customer", {"customer_id": 3}, "c1"), ("refund", REFUND, "c2")]
    saw = await _realtime_results(agent, calls)
    assert run.executed == [("refund", REFUND)]
    assert saw["c1"] == "blocked by rule no-deletes: deletes need a ticket"
    assert saw["c2"] == "refunded 20.0 on o-17"
    by_call = {r["context"]["tool_call_id"]: r["result_status"] for r in audit.records}
    assert by_call == {"c1": "blocked", "c2": "success"}


async def test_an_output_function_is_refused_before_it_can_run() -> None:
    """An output function is called like a tool but no toolset sees it: the governed run refuses."""
    import pytest
    from pydantic_ai import Agent, TextOutput, ToolOutput
    from pydantic_ai.models.test import TestModel

    from aegis.adapters.pydantic_ai import govern
    from aegis.errors import ConfigurationError

    audit = InMemoryAuditLog()
    run = Run()
    delete = _recorders(run)["delete_customer"]
    agent = govern(Agent(TestModel(), output_type=ToolOutput(delete)), make_runtime(audit=audit))
    with pytest.raises(ConfigurationError, match="output function 'delete_customer'"):
        await agent.run("go")
    plain = govern(Agent(TestModel()), make_runtime(audit=audit))
    for spec in (delete, [str, delete], TextOutput(delete)):
        with pytest.raises(ConfigurationError, match="output function"):
            await plain.run("go", output_type=spec)
    assert run.executed == []
    assert audit.records == []


async def test_output_types_still_run() -> None:
    """Types, typing forms and structured dicts are output types, not functions: they run."""
    from typing import Literal

    from pydantic import BaseModel
    from pydantic_ai import Agent, StructuredDict
    from pydantic_ai.models.test import TestModel

    from aegis.adapters.pydantic_ai import govern

    class Order(BaseModel):
        order_id: str

    agent = govern(Agent(TestModel()), make_runtime())
    order = StructuredDict({"type": "object", "properties": {"id": {"type": "string"}}})
    for spec in (int, list[int], Order, Literal["a", "b"], order, [str, Order]):
        result = await agent.run("go", output_type=spec)
        assert result.output is not None


async def test_the_capability_alone_refuses_to_run_an_output_function() -> None:
    """AegisCapability put in an agent by hand: an output function the model calls never runs.

    Tool output (set on the agent or for one run, streamed or not) and text
    output alike; the run fails with the refusal and nothing is recorded.
    """
    import pytest
    from pydantic_ai import Agent, TextOutput
    from pydantic_ai.messages import ModelResponse, TextPart, ToolCallPart
    from pydantic_ai.models.function import DeltaToolCall, FunctionModel

    from aegis.adapters.pydantic_ai import AegisCapability
    from aegis.errors import ConfigurationError

    def final_call(messages: Any, info: Any) -> ModelResponse:
        [output_tool] = info.output_tools
        return ModelResponse(parts=[ToolCallPart(output_tool.name, {"customer_id": 5})])

    def text(messages: Any, info: Any) -> ModelResponse:
        return ModelResponse(parts=[TextPart("7")])

    async def streamed(messages: Any, info: Any) -> Any:
        yield {0: DeltaToolCall(name="final_result", json_args='{"customer_id": 5}')}

    audit = InMemoryAuditLog()
    run = Run()
    delete = _recorders(run)["delete_customer"]

    def shout(value: str) -> str:
        run.executed.append(("shout", {"value": value}))
        return value.upper()

    def governed(model: Any, **options: Any) -> Any:
        capability = AegisCapability(make_runtime(audit=audit), target="crm")
        return Agent(model, capabilities=[capability], **options)

    with pytest.raises(ConfigurationError, match="output function"):
        await governed(FunctionModel(final_call), output_type=delete).run("go")
    with pytest.raises(ConfigurationError, match="output function"):
        await governed(FunctionModel(final_call)).run("go", output_type=delete)
    with pytest.raises(ConfigurationError, match="output function"):
        await governed(FunctionModel(text), output_type=TextOutput(shout)).run("go")
    agent = governed(FunctionModel(stream_function=streamed), output_type=delete)

    async def stream_it() -> None:
        async with agent.run_stream("go") as stream:
            await stream.get_output()

    with pytest.raises(ConfigurationError, match="output function"):
        await stream_it()
    assert run.executed == []
    assert audit.records == []

    # Output types that are not functions still come through the capability.
    assert (await governed(FunctionModel(text), output_type=str).run("go")).output == "7"


async def test_the_capability_alone_governs_a_realtime_session_without_warnings() -> None:
    """Given to an Agent by hand, the capability governs a realtime session's calls.

    A blocked call and one that needs approval (a session cannot end and
    resume) do not run; the capability implements no hook a session never
    calls (Pydantic AI would warn that it may not work as intended).
    """
    from pydantic_ai import Agent
    from pydantic_ai.models.test import TestModel

    from aegis.adapters.pydantic_ai import AegisCapability

    audit = InMemoryAuditLog()
    run = Run()
    capability = AegisCapability(make_runtime(audit=audit), target="billing")
    agent = Agent(TestModel(), tools=list(_recorders(run).values()), capabilities=[capability])
    calls: list[Any] = [("delete_customer", {"customer_id": 3}, "c1"), ("refund", REFUND, "c2")]
    saw = await _realtime_results(agent, calls)
    assert run.executed == []
    assert saw["c1"] == "blocked by rule no-deletes: deletes need a ticket"
    assert [r["result_status"] for r in audit.records] == ["blocked"]
