"""CrewAI: hooks scoped to what was governed, and the README's example.

These run in CrewAI's own environment (``scripts/check`` makes it); the
contract suite covers the rest.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from adapters_support import Run, _recorders, make_runtime, scripted_crewai_llm
from test_readme_integrations import run_example

from aegis.errors import ConfigurationError
from aegis.testing import InMemoryAuditLog, ScriptedApprovalHandler


def _crew(run: Run, calls: list[tuple[str, dict[str, object], str]]) -> object:
    from crewai import Agent, Crew, Task
    from crewai.tools import tool

    tools = [tool(name)(fn) for name, fn in _recorders(run).items()]
    agent = Agent(
        role="support",
        goal="help",
        backstory="a support desk",
        llm=scripted_crewai_llm(calls),
        tools=tools,
    )
    return Crew(agents=[agent], tasks=[Task(description="go", expected_output="x", agent=agent)])


async def test_an_ungoverned_crew_is_left_alone_and_ungovern_ends_governance() -> None:
    """Hooks apply to the governed crew only; after ungovern() its calls are not recorded."""
    from aegis.adapters.crewai import govern, ungovern

    audit = InMemoryAuditLog()
    runtime = make_runtime(ScriptedApprovalHandler([]), audit=audit)
    governed_run, other_run = Run(), Run()
    governed = govern(_crew(governed_run, [("delete_customer", {"customer_id": 1}, "c1")]), runtime)
    other = _crew(other_run, [("delete_customer", {"customer_id": 2}, "c2")])
    try:
        await asyncio.to_thread(governed.kickoff)  # type: ignore[attr-defined]
        await asyncio.to_thread(other.kickoff)  # type: ignore[attr-defined]
    finally:
        ungovern(governed)
    assert governed_run.executed == []
    assert other_run.executed == [("delete_customer", {"customer_id": 2})]
    assert [r["result_status"] for r in audit.records] == ["blocked"]


def test_govern_refuses_what_it_cannot_govern() -> None:
    """govern() names what it takes; on_block="raise" is refused (a hook cannot stop a crew)."""
    from aegis.adapters.crewai import govern

    with pytest.raises(ConfigurationError, match="Crew, Agent or list of tools"):
        govern(42, make_runtime())
    with pytest.raises(ConfigurationError, match="on_block"):
        govern([], make_runtime(), on_block="raise")


def test_the_readme_example_runs(tmp_path: Path) -> None:
    """The README's CrewAI example asks at the terminal and runs the refund after a yes."""
    prelude = (
        "from adapters_support import scripted_crewai_llm\n"
        "llm = scripted_crewai_llm([('refund', {'order_id': '17', 'amount': 120.0}, 'c1')])\n"
    )
    run_example("### CrewAI", prelude, tmp_path)


def _flaky_lookup(ran: list[int]) -> Any:
    """A ``lookup`` tool that notes each run in ``ran`` and raises for customer 2."""
    from crewai.tools import tool

    def lookup(customer_id: int) -> str:
        """Look a customer up."""
        ran.append(customer_id)
        if customer_id == 2:
            raise RuntimeError("the CRM is down")
        return f"customer {customer_id}: gold"

    return tool("lookup")(lookup)


def _turns_llm(turns: list[Any], *, native: bool) -> Any:
    """A CrewAI ``BaseLLM`` answering each request with the next turn, then with its final answer.

    A turn is a list of native tool calls (``native``), or ReAct text
    (:func:`_react`): without native function calling CrewAI takes its
    ReAct path, which runs tools through its ToolUsage (and its retries).
    ``.seen`` holds every message list it was sent.
    """
    from crewai.llms.base_llm import BaseLLM

    final = "done" if native else "Thought: I know enough\nFinal Answer: done"

    class TurnsLLM(BaseLLM):  # type: ignore[misc]
        """Answers from the script, one turn per request."""

        script: list[Any] = []  # noqa: RUF012  # a pydantic field, copied per instance
        seen: list[Any] = []  # noqa: RUF012  # a pydantic field, copied per instance

        def call(self, messages: Any, tools: Any = None, *args: Any, **kwargs: Any) -> Any:
            self.seen.append(messages)
            if not self.script:
                return final
            turn = self.script.pop(0)
            if isinstance(turn, str):
                return turn
            return [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": json.dumps(args)},
                }
                for name, args, call_id in turn
            ]

        def supports_function_calling(self) -> bool:
            return native

    return TurnsLLM(model="scripted", script=list(turns), seen=[])


def _react(name: str, arguments: dict[str, object]) -> str:
    """One ReAct turn calling ``name`` with ``arguments``."""
    return f"Thought: I need {name}\nAction: {name}\nAction Input: {json.dumps(arguments)}"


def _lookups_of_1_then_2(*, native: bool) -> list[Any]:
    """Two turns: look customer 1 up (call id c1), then customer 2 (c2)."""
    if native:
        return [[("lookup", {"customer_id": 1}, "c1")], [("lookup", {"customer_id": 2}, "c2")]]
    return [_react("lookup", {"customer_id": 1}), _react("lookup", {"customer_id": 2})]


async def _kickoff(runtime: Any, llm: Any, tools: list[Any], **crew: Any) -> Any:
    """Run a governed one-agent crew with ``llm`` and ``tools`` to its end; its output."""
    from crewai import Agent, Crew, Task

    from aegis.adapters.crewai import govern, ungovern

    agent = Agent(role="support", goal="help", backstory="a support desk", llm=llm, tools=tools)
    task = Task(description="go", expected_output="x", agent=agent)
    governed = govern(Crew(agents=[agent], tasks=[task], **crew), runtime)
    try:
        return await asyncio.to_thread(governed.kickoff)
    finally:
        ungovern(governed)


@pytest.mark.parametrize("native", [True, False], ids=["native", "react"])
async def test_each_run_of_a_tool_is_one_recorded_action(native: bool) -> None:
    """A raising tool runs once per call, recorded as failed with its error, on both paths.

    CrewAI's ReAct path (its ToolUsage) retries a tool that raised, up to six
    runs under one hook call; each run would need a decision of its own.
    """
    ran: list[int] = []
    audit = InMemoryAuditLog()
    runtime = make_runtime(ScriptedApprovalHandler([]), audit=audit)
    llm = _turns_llm(_lookups_of_1_then_2(native=native), native=native)
    await _kickoff(runtime, llm, [_flaky_lookup(ran)])
    assert ran == [1, 2]
    assert [r["result_status"] for r in audit.records] == ["success", "failed"]
    assert "the CRM is down" in str(audit.records[1]["result_error"])
    assert "the CRM is down" in str(llm.seen[-1])  # the model reads the tool's own error
    if native:
        assert [r["context"]["tool_call_id"] for r in audit.records] == ["c1", "c2"]


async def test_a_call_crewai_refuses_to_run_is_recorded_as_failed() -> None:
    """Arguments CrewAI's own validation rejects: the tool never runs, and the record says so."""
    from aegis.adapters.crewai import govern, ungovern

    audit = InMemoryAuditLog()
    runtime = make_runtime(ScriptedApprovalHandler([]), audit=audit)
    run = Run()
    calls = [("lookup", {"customer_id": "seven"}, "c1"), ("lookup", {"customer_id": 8}, "c2")]
    crew = govern(_crew(run, calls), runtime)
    try:
        await asyncio.to_thread(crew.kickoff)  # type: ignore[attr-defined]
    finally:
        ungovern(crew)
    assert run.executed == [("lookup", {"customer_id": 8})]
    outcomes = {r["context"]["tool_call_id"]: r for r in audit.records}
    assert outcomes["c1"]["result_status"] == "failed"
    assert "customer_id" in str(outcomes["c1"]["result_error"])
    assert outcomes["c2"]["result_status"] == "success"


def _react_action(name: str, arguments: dict[str, object]) -> object:
    """The parsed ReAct turn :func:`_react` writes, as CrewAI's agent hands it on."""
    from crewai.agents.parser import AgentAction

    given = json.dumps(arguments)
    return AgentAction(
        thought=f"I need {name}", tool=name, tool_input=given, text=_react(name, arguments)
    )


async def test_an_approved_call_that_raises_runs_once_on_the_react_path() -> None:
    """One yes allows one run: CrewAI's ReAct retry of an approved refund that raised is refused."""
    from crewai.tools import tool

    runs: list[tuple[str, float]] = []

    def refund(order_id: str, amount: float) -> str:
        runs.append((order_id, amount))
        raise RuntimeError("the payment gateway timed out")

    refund.__doc__ = "Refund an order."
    audit = InMemoryAuditLog()
    approver = ScriptedApprovalHandler([True])
    runtime = make_runtime(approver, audit=audit)
    turns = [_react("refund", {"order_id": "17", "amount": 120.0})]
    await _kickoff(runtime, _turns_llm(turns, native=False), [tool("refund")(refund)])
    assert runs == [("17", 120.0)]
    assert [d.action.type for d in approver.asked] == ["refund"]
    assert [r["result_status"] for r in audit.records] == ["failed"]
    assert "the payment gateway timed out" in str(audit.records[0]["result_error"])


async def test_a_tool_run_on_the_async_react_path_runs_once_per_decision() -> None:
    """The async ReAct path (tools on an executor thread, retries) runs a tool once per decision."""
    from crewai import Agent
    from crewai.utilities.tool_utils import aexecute_tool_and_check_finality

    from aegis.adapters.crewai import govern, ungovern

    ran: list[int] = []
    audit = InMemoryAuditLog()
    runtime = make_runtime(ScriptedApprovalHandler([]), audit=audit)
    tools = [_flaky_lookup(ran)]
    agent = Agent(
        role="support",
        goal="help",
        backstory="a support desk",
        llm=scripted_crewai_llm([]),
        tools=tools,
    )
    governed = govern(tools, runtime)
    try:
        for customer_id in (1, 2):
            await aexecute_tool_and_check_finality(
                _react_action("lookup", {"customer_id": customer_id}),  # type: ignore[arg-type]
                [t.to_structured_tool() for t in tools],
                agent=agent,
            )
    finally:
        ungovern(governed)
    assert ran == [1, 2]
    assert [r["result_status"] for r in audit.records] == ["success", "failed"]
    assert "the CRM is down" in str(audit.records[1]["result_error"])


async def test_two_calls_at_once_on_the_async_react_path_run_the_tool_twice_at_most() -> None:
    """Two allowed calls of one raising tool, under way together: two runs, not their retries."""
    from crewai import Agent
    from crewai.tools import tool
    from crewai.utilities.tool_utils import aexecute_tool_and_check_finality

    from aegis.adapters.crewai import govern, ungovern

    ran: list[int] = []
    both = threading.Barrier(2, timeout=10)  # each first run waits for the other call's

    def lookup(customer_id: int) -> str:
        """Look a customer up."""
        ran.append(customer_id)
        if len(ran) <= 2:
            both.wait()
        raise RuntimeError("the CRM is down")

    audit = InMemoryAuditLog()
    runtime = make_runtime(ScriptedApprovalHandler([]), audit=audit)
    tools = [tool("lookup")(lookup)]
    agent = Agent(
        role="support",
        goal="help",
        backstory="a support desk",
        llm=scripted_crewai_llm([]),
        tools=tools,
    )
    governed = govern(tools, runtime)
    try:
        await asyncio.gather(
            *(
                aexecute_tool_and_check_finality(
                    _react_action("lookup", {"customer_id": customer_id}),  # type: ignore[arg-type]
                    [t.to_structured_tool() for t in tools],
                    agent=agent,
                )
                for customer_id in (1, 2)
            )
        )
    finally:
        ungovern(governed)
    assert sorted(ran) == [1, 2]
    assert [r["result_status"] for r in audit.records] == ["failed", "failed"]


async def test_a_blocked_call_on_the_react_path_never_runs() -> None:
    """A blocked call on CrewAI's ReAct path is refused once and never retried into running."""
    from crewai.tools import tool

    run = Run()
    audit = InMemoryAuditLog()
    runtime = make_runtime(ScriptedApprovalHandler([]), audit=audit)
    tools = [tool(name)(fn) for name, fn in _recorders(run).items()]
    turns = [_react("delete_customer", {"customer_id": 7}), _react("lookup", {"customer_id": 1})]
    await _kickoff(runtime, _turns_llm(turns, native=False), tools)
    assert run.executed == [("lookup", {"customer_id": 1})]
    assert [(r["action_type"], r["result_status"]) for r in audit.records] == [
        ("delete_customer", "blocked"),
        ("lookup", "success"),
    ]


async def test_an_answer_from_crewais_cache_is_not_recorded_as_a_run() -> None:
    """A call CrewAI answers from its cache did not run the tool, and its record says so."""
    ran: list[int] = []
    audit = InMemoryAuditLog()
    runtime = make_runtime(ScriptedApprovalHandler([]), audit=audit)
    turns = [[("lookup", {"customer_id": 1}, "c1")], [("lookup", {"customer_id": 1}, "c2")]]
    await _kickoff(runtime, _turns_llm(turns, native=True), [_flaky_lookup(ran)], cache=True)
    assert ran == [1]
    first, second = audit.records
    assert (first["context"]["tool_call_id"], first["result_status"]) == ("c1", "success")
    assert (second["context"]["tool_call_id"], second["result_status"]) == ("c2", "failed")
    assert "cache" in str(second["result_error"])
    assert second["result_data"] == first["result_data"]  # what the agent read instead


@pytest.mark.parametrize("native", [True, False], ids=["native", "react"])
async def test_a_call_past_the_tools_usage_limit_is_recorded_as_not_run(native: bool) -> None:
    """A call past the tool's max_usage_count is decided, but CrewAI does not run it: failed."""
    from crewai.tools import tool

    run = Run()
    audit = InMemoryAuditLog()
    runtime = make_runtime(ScriptedApprovalHandler([]), audit=audit)
    lookup = tool("lookup", max_usage_count=1)(_recorders(run)["lookup"])
    await _kickoff(
        runtime, _turns_llm(_lookups_of_1_then_2(native=native), native=native), [lookup]
    )
    assert run.executed == [("lookup", {"customer_id": 1})]
    assert [r["result_status"] for r in audit.records] == ["success", "failed"]
    assert "did not run" in str(audit.records[1]["result_error"])


@pytest.mark.parametrize(
    ("call", "answer", "status"),
    [
        (("lookup", {"customer_id": 1}, "c1"), "customer 1: gold", "success"),
        # CrewAI's native path takes a blocked call's text as the tool's
        # result: the task ends with the refusal as its answer, nothing ran.
        (("delete_customer", {"customer_id": 7}, "c1"), "no-deletes", "blocked"),
    ],
    ids=["allowed", "blocked"],
)
async def test_a_result_as_answer_tool_ends_the_task_with_one_record(
    call: tuple[str, dict[str, object], str], answer: str, status: str
) -> None:
    """A result_as_answer tool's call ends the task with what the agent read, recorded once."""
    from crewai.tools import tool

    run = Run()
    audit = InMemoryAuditLog()
    runtime = make_runtime(ScriptedApprovalHandler([]), audit=audit)
    tools = [tool(name, result_as_answer=True)(fn) for name, fn in _recorders(run).items()]
    output = await _kickoff(runtime, _turns_llm([[call]], native=True), tools)
    assert answer in str(output)
    assert run.executed == ([(call[0], call[1])] if status == "success" else [])
    assert [(r["action_type"], r["result_status"]) for r in audit.records] == [(call[0], status)]


async def test_a_tool_appended_to_a_governed_tool_list_is_governed() -> None:
    """A tool appended to the list govern() was given, then given to an agent: blocked, recorded."""
    from crewai import Agent, Crew, Task
    from crewai.tools import tool

    from aegis.adapters.crewai import govern, ungovern

    run = Run()
    recorders = _recorders(run)
    audit = InMemoryAuditLog()
    runtime = make_runtime(ScriptedApprovalHandler([]), audit=audit)
    tools = govern([tool("lookup")(recorders["lookup"])], runtime)
    tools.append(tool("delete_customer")(recorders["delete_customer"]))
    agent = Agent(
        role="support",
        goal="help",
        backstory="a support desk",
        llm=scripted_crewai_llm([("delete_customer", {"customer_id": 7}, "c1")]),
        tools=tools,
    )
    crew = Crew(agents=[agent], tasks=[Task(description="go", expected_output="x", agent=agent)])
    try:
        await asyncio.to_thread(crew.kickoff)
    finally:
        ungovern(tools)
    assert run.executed == []
    assert [(r["action_type"], r["result_status"]) for r in audit.records] == [
        ("delete_customer", "blocked")
    ]


@pytest.mark.parametrize("given", ["tools", "crew"])
def test_a_governed_tool_run_without_crewais_hooks_does_not_run(given: str) -> None:
    """A governed tool run directly (no hook, so no decision) is refused; after ungovern() it runs.

    CrewAI has paths that run a tool without its tool-call hooks (its
    LangGraph and OpenAI Agents adapters call ``tool.run``; so can any code
    holding the tool): such a run would escape the policy.
    """
    from crewai import Agent, Crew, Task
    from crewai.tools import tool

    from aegis.adapters.crewai import govern, ungovern

    run = Run()
    audit = InMemoryAuditLog()
    delete = tool("delete_customer")(_recorders(run)["delete_customer"])
    agent = Agent(
        role="support",
        goal="help",
        backstory="a support desk",
        llm=scripted_crewai_llm([]),
        tools=[delete],
    )
    crew = Crew(agents=[agent], tasks=[Task(description="go", expected_output="x", agent=agent)])
    governed: Any = [delete] if given == "tools" else crew
    again = [delete]
    govern(governed, make_runtime(ScriptedApprovalHandler([]), audit=audit))
    try:
        with pytest.raises(Exception, match="no decision covers this run"):
            delete.run(customer_id=7)
        # Covered twice, released once: still governed.
        govern(again, make_runtime(ScriptedApprovalHandler([])))
        ungovern(governed)
        with pytest.raises(Exception, match="no decision covers this run"):
            delete.run(customer_id=8)
        assert run.executed == []
    finally:
        ungovern(governed)
        ungovern(again)
    # Nothing covers it any more: it is the user's own tool again.
    assert delete.run(customer_id=9) == "deleted"
    assert run.executed == [("delete_customer", {"customer_id": 9})]
    # Refused, and recorded as blocked by the govern() covering it then (the
    # second refusal went to the other runtime's trail).
    assert [(r["action_params"], r["result_status"]) for r in audit.records] == [
        ({"customer_id": 7}, "blocked")
    ]


@pytest.mark.parametrize("also", ["its tools", "its agent"])
async def test_a_call_two_govern_calls_cover_is_decided_once(also: str) -> None:
    """A crew governed, and its tools (or its agent) governed again with the same runtime.

    The refund needs approval: the reviewer is asked once, the tool runs
    once, and the trail holds one record of the call.
    """
    from crewai import Agent, Crew, Task
    from crewai.tools import tool

    from aegis.adapters.crewai import govern, ungovern

    run = Run()
    asked: list[object] = []

    def reviewer(decision: object) -> bool:
        asked.append(decision)
        return True

    audit = InMemoryAuditLog()
    runtime = make_runtime(reviewer, audit=audit)
    tools = [tool(name)(fn) for name, fn in _recorders(run).items()]
    llm = scripted_crewai_llm([("refund", {"order_id": "17", "amount": 120.0}, "c1")])
    agent = Agent(role="support", goal="help", backstory="a desk", llm=llm, tools=tools)
    crew = govern(
        Crew(agents=[agent], tasks=[Task(description="go", expected_output="x", agent=agent)]),
        runtime,
    )
    again = govern(tools if also == "its tools" else agent, runtime)
    try:
        await asyncio.to_thread(crew.kickoff)
    finally:
        ungovern(again)
        ungovern(crew)
    assert run.executed == [("refund", {"order_id": "17", "amount": 120.0})]
    assert len(asked) == 1
    [record] = audit.records
    assert (record["result_status"], record["context"]["tool_call_id"]) == ("success", "c1")


async def test_a_call_covered_by_two_runtimes_is_refused() -> None:
    """Two govern() calls with different runtimes cover a call: ambiguous, so blocked, once."""
    from aegis.adapters.crewai import govern, ungovern

    run = Run()
    first, second = InMemoryAuditLog(), InMemoryAuditLog()
    crew = _crew(run, [("lookup", {"customer_id": 1}, "c1")])
    governed = govern(crew, make_runtime(audit=first))
    tools = list(crew.agents[0].tools)  # type: ignore[attr-defined]
    again = govern(tools, make_runtime(audit=second))
    try:
        await asyncio.to_thread(crew.kickoff)  # type: ignore[attr-defined]
    finally:
        ungovern(again)
        ungovern(governed)
    assert run.executed == []
    [record] = first.records
    assert (record["result_status"], record["matched_rule"]) == ("blocked", "<aegis>")
    assert "ambiguous" in str(record["result_error"])
    assert second.records == []
