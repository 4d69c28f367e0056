"""CrewAI: hooks scoped to what was governed, and the README's example.

These run in CrewAI's own environment (``scripts/check`` makes it); the
contract suite covers the rest.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

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


async def test_a_tool_that_raises_is_recorded_as_failed() -> None:
    """A tool that raises is recorded as failed, with its error; one that returns, as success."""
    from crewai import Agent, Crew, Task
    from crewai.tools import tool

    from aegis.adapters.crewai import govern, ungovern

    ran: list[int] = []

    def lookup(customer_id: int) -> str:
        """Look a customer up."""
        ran.append(customer_id)
        if customer_id == 2:
            raise RuntimeError("the CRM is down")
        return f"customer {customer_id}: gold"

    audit = InMemoryAuditLog()
    runtime = make_runtime(ScriptedApprovalHandler([]), audit=audit)
    calls = [("lookup", {"customer_id": 1}, "c1"), ("lookup", {"customer_id": 2}, "c2")]
    agent = Agent(
        role="support",
        goal="help",
        backstory="a support desk",
        llm=scripted_crewai_llm(calls),
        tools=[tool("lookup")(lookup)],
    )
    crew = govern(
        Crew(agents=[agent], tasks=[Task(description="go", expected_output="x", agent=agent)]),
        runtime,
    )
    try:
        await asyncio.to_thread(crew.kickoff)
    finally:
        ungovern(crew)
    assert sorted(ran) == [1, 2]
    outcomes = {r["context"]["tool_call_id"]: r for r in audit.records}
    assert outcomes["c1"]["result_status"] == "success"
    assert outcomes["c2"]["result_status"] == "failed"
    assert "the CRM is down" in str(outcomes["c2"]["result_error"])


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


def _react_action(name: str, arguments: str) -> object:
    from crewai.agents.parser import AgentAction

    text = f"Thought: I need {name}\nAction: {name}\nAction Input: {arguments}"
    return AgentAction(thought=f"I need {name}", tool=name, tool_input=arguments, text=text)


async def test_a_tool_run_on_the_async_react_path_is_recorded_as_it_ended() -> None:
    """CrewAI's async ReAct path runs a tool on an executor thread: its failure is still seen."""
    from crewai import Agent
    from crewai.tools import tool
    from crewai.utilities.tool_utils import aexecute_tool_and_check_finality

    from aegis.adapters.crewai import govern, ungovern

    ran: list[int] = []

    def lookup(customer_id: int) -> str:
        """Look a customer up."""
        ran.append(customer_id)
        if customer_id == 2:
            raise RuntimeError("the CRM is down")
        return f"customer {customer_id}: gold"

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
        for customer_id in (1, 2):
            await aexecute_tool_and_check_finality(
                _react_action("lookup", f'{{"customer_id": {customer_id}}}'),  # type: ignore[arg-type]
                [t.to_structured_tool() for t in tools],
                agent=agent,
            )
    finally:
        ungovern(governed)
    assert set(ran) == {1, 2}  # CrewAI retries a failing call on this path
    assert [r["result_status"] for r in audit.records] == ["success", "failed"]
    assert "the CRM is down" in str(audit.records[1]["result_error"])


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
