"""CrewAI: a tool given to a governed agent, or to a governed list, after govern() is governed.

Each test gives a tool after ``govern()`` in one way, then runs it without
CrewAI's hooks (the tool called directly, as CrewAI's hook-less paths do):
the run is refused and recorded as blocked, and nothing runs. Through a
crew's hooks the same late tool is decided and runs.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from adapters_support import make_runtime, scripted_crewai_llm

from aegis.testing import InMemoryAuditLog

UNDECIDED = "no decision covers this run"


def _tool(name: str, ran: list[tuple[str, int]]) -> Any:
    from crewai.tools import tool

    def run(customer_id: int) -> str:
        """Look a customer up."""
        ran.append((name, customer_id))
        return f"customer {customer_id}: gold"

    return tool(name)(run)


def _agent(tools: list[Any], calls: list[tuple[str, dict[str, object], str]]) -> Any:
    from crewai import Agent

    return Agent(
        role="support",
        goal="help",
        backstory="a support desk",
        llm=scripted_crewai_llm(calls),
        tools=tools,
    )


def _give(agent: Any, tool: Any, how: str) -> None:
    if how == "append":
        agent.tools.append(tool)
    elif how == "insert":
        agent.tools.insert(0, tool)
    elif how == "extend":
        agent.tools.extend(iter([tool]))
    elif how == "item":
        agent.tools[0] = tool
    elif how == "slice":
        agent.tools[1:] = [tool]
    elif how == "+=":
        agent.tools += [tool]
    else:
        agent.tools = [*agent.tools, tool]


@pytest.mark.parametrize("how", ["append", "insert", "extend", "item", "slice", "+=", "set"])
def test_a_tool_given_to_a_governed_agent_later_needs_a_decision(how: str) -> None:
    """Given after govern() of its crew, a tool run without the hooks is refused and recorded."""
    from crewai import Crew, Task

    from aegis.adapters.crewai import govern, ungovern

    ran: list[tuple[str, int]] = []
    early, late = _tool("lookup", ran), _tool("lookup_backup", ran)
    audit = InMemoryAuditLog()
    agent = _agent([early], [])
    task = Task(description="go", expected_output="x", agent=agent)
    crew = govern(Crew(agents=[agent], tasks=[task]), make_runtime(audit=audit))
    try:
        _give(agent, late, how)
        assert any(tool is late for tool in agent.tools)
        with pytest.raises(Exception, match=UNDECIDED):
            late.run(customer_id=7)
    finally:
        ungovern(crew)
    assert ran == []
    assert [(r["action_type"], r["result_status"]) for r in audit.records] == [
        ("lookup_backup", "blocked")
    ]
    assert late.run(customer_id=8) == "customer 8: gold"  # ungoverned, it runs as before
    agent.tools.append(_tool("lookup_archive", ran))  # nothing governs the agent now
    agent.tools[-1].run(customer_id=9)
    assert ran == [("lookup_backup", 8), ("lookup_archive", 9)]


def test_a_tool_added_to_a_governed_list_needs_a_decision() -> None:
    """govern() of a list returns a governed list: a tool added to it is covered at once."""
    from aegis.adapters.crewai import govern, ungovern

    ran: list[tuple[str, int]] = []
    given = [_tool("lookup", ran)]
    late = _tool("lookup_backup", ran)
    audit = InMemoryAuditLog()
    governed = govern(given, make_runtime(audit=audit))
    try:
        governed.append(late)
        with pytest.raises(Exception, match=UNDECIDED):
            late.run(customer_id=7)
    finally:
        ungovern(given)  # the list given, or the one returned
    assert ran == []
    assert [(r["action_type"], r["result_status"]) for r in audit.records] == [
        ("lookup_backup", "blocked")
    ]
    assert late.run(customer_id=8) == "customer 8: gold"
    assert ran == [("lookup_backup", 8)]


async def test_a_tool_given_to_a_governed_agent_later_is_decided_and_runs_in_its_crew() -> None:
    """The crew's task holds the agent's tools: the late tool is called, decided and run once."""
    from crewai import Crew, Task

    from aegis.adapters.crewai import govern, ungovern

    ran: list[tuple[str, int]] = []
    early, late = _tool("lookup", ran), _tool("lookup_backup", ran)
    audit = InMemoryAuditLog()
    policy = {"rules": [{"name": "reads", "match": {"type": "lookup*"}, "approval": "auto"}]}
    agent = _agent([early], [("lookup_backup", {"customer_id": 3}, "c1")])
    task = Task(description="go", expected_output="x", agent=agent)
    crew = govern(Crew(agents=[agent], tasks=[task]), make_runtime(audit=audit, policy=policy))
    try:
        agent.tools.append(late)
        await asyncio.to_thread(crew.kickoff)
    finally:
        ungovern(crew)
    assert ran == [("lookup_backup", 3)]
    assert [(r["action_type"], r["result_status"]) for r in audit.records] == [
        ("lookup_backup", "success")
    ]


def _refused_and_recorded(tool: Any, audit: InMemoryAuditLog, ran: list[tuple[str, int]]) -> None:
    """``tool`` run without the hooks is refused, recorded as blocked by Aegis, and never runs."""
    before = len(audit.records)
    with pytest.raises(Exception, match=UNDECIDED):
        tool.run(customer_id=7)
    assert ran == []
    [record] = audit.records[before:]
    assert (record["action_type"], record["result_status"], record["matched_rule"]) == (
        tool.name,
        "blocked",
        "<aegis>",
    )


def test_a_tool_added_to_the_list_given_to_govern_needs_a_decision_at_once() -> None:
    """Appended to the list given to govern() (not the one returned): refused before any call."""
    from aegis.adapters.crewai import govern, ungovern

    ran: list[tuple[str, int]] = []
    given = [_tool("lookup", ran)]
    late = _tool("lookup_backup", ran)
    audit = InMemoryAuditLog()
    govern(given, make_runtime(audit=audit))
    try:
        given.append(late)
        _refused_and_recorded(late, audit, ran)
    finally:
        ungovern(given)
    assert late.run(customer_id=8) == "customer 8: gold"  # ungoverned, it runs as before


@pytest.mark.parametrize("how", ["own list", "agent's old list"])
def test_the_tools_of_a_task_made_before_govern_of_its_agent_need_a_decision(how: str) -> None:
    """A task made before govern(agent) keeps its list: every tool in it is governed."""
    from crewai import Task

    from aegis.adapters.crewai import govern, ungovern

    ran: list[tuple[str, int]] = []
    early, late = _tool("lookup", ran), _tool("lookup_backup", ran)
    audit = InMemoryAuditLog()
    agent = _agent([early], [])
    if how == "own list":
        task = Task(description="go", expected_output="x", agent=agent, tools=[late])
    else:
        task = Task(description="go", expected_output="x", agent=agent)
    govern(agent, make_runtime(audit=audit))
    try:
        if how != "own list":
            assert task.tools is not agent.tools  # the list the agent had
            task.tools.append(late)
        _refused_and_recorded(late, audit, ran)
    finally:
        ungovern(agent)


@pytest.mark.parametrize("how", ["in the crew", "made later", "given the agent", "added"])
def test_a_tasks_own_tools_are_governed_once_it_is_given_to_a_governed_crew(how: str) -> None:
    """task.tools of a governed crew's or agent's task need a decision before any call."""
    from crewai import Crew, Task

    from aegis.adapters.crewai import govern, ungovern

    ran: list[tuple[str, int]] = []
    early, own = _tool("lookup", ran), _tool("lookup_backup", ran)
    audit = InMemoryAuditLog()
    agent = _agent([early], [])
    first = Task(description="go", expected_output="x", agent=agent)
    tasks = [first]
    if how == "in the crew":
        tasks.append(Task(description="more", expected_output="x", agent=agent, tools=[own]))
    crew = govern(Crew(agents=[agent], tasks=tasks), make_runtime(audit=audit))
    try:
        if how == "made later":
            Task(description="more", expected_output="x", agent=agent, tools=[own])
        elif how == "given the agent":
            later = Task(description="more", expected_output="x", tools=[own])
            later.agent = agent
        elif how == "added":
            crew.tasks.append(Task(description="more", expected_output="x", tools=[own]))
        _refused_and_recorded(own, audit, ran)
    finally:
        ungovern(crew)


async def test_a_tasks_own_tool_is_decided_and_runs_in_its_governed_crew() -> None:
    """The task's own tool, governed before the crew runs, is decided and runs once when called."""
    from crewai import Crew, Task

    from aegis.adapters.crewai import govern, ungovern

    ran: list[tuple[str, int]] = []
    early, own = _tool("lookup", ran), _tool("lookup_backup", ran)
    audit = InMemoryAuditLog()
    policy = {"rules": [{"name": "reads", "match": {"type": "lookup*"}, "approval": "auto"}]}
    agent = _agent([early], [("lookup_backup", {"customer_id": 3}, "c1")])
    task = Task(description="go", expected_output="x", agent=agent, tools=[own])
    crew = govern(Crew(agents=[agent], tasks=[task]), make_runtime(audit=audit, policy=policy))
    try:
        await asyncio.to_thread(crew.kickoff)
    finally:
        ungovern(crew)
    assert ran == [("lookup_backup", 3)]
    assert [(r["action_type"], r["result_status"]) for r in audit.records] == [
        ("lookup_backup", "success")
    ]
