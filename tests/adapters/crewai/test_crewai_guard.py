"""CrewAI: a governed tool runs exactly the call Aegis decided, once, and nothing else.

Each test drives real CrewAI (its tools, hooks and executors) with a
scripted model, and tries one way of running a governed tool that no
decision covers: from another thread while a call is open, with arguments
changed after the decision, through ``arun``, through a ``func`` field the
tool does not run, through a structured tool made before ``govern()``, and
through a copy of the tool.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import threading
from typing import Any

import pytest
from adapters_support import Run, _recorders, make_runtime, scripted_crewai_llm

from aegis.testing import InMemoryAuditLog

UNDECIDED = "no decision covers this run"


def _lookup_tool(ran: list[tuple[str, int]], desk: str = "A") -> Any:
    """A ``BaseTool`` subclass (``_run`` and ``_arun``) that notes each run with its desk."""
    from crewai.tools import BaseTool
    from pydantic import BaseModel

    class LookupArgs(BaseModel):
        customer_id: int

    class LookupTool(BaseTool):  # type: ignore[misc]
        name: str = "lookup"
        description: str = "Look a customer up."
        args_schema: type[BaseModel] = LookupArgs
        desk: str = "A"

        def _run(self, customer_id: int) -> str:
            ran.append((self.desk, customer_id))
            return f"customer {customer_id}: gold at desk {self.desk}"

        async def _arun(self, customer_id: int) -> str:
            ran.append((self.desk, customer_id))
            return f"customer {customer_id}: gold at desk {self.desk}"

    return LookupTool(desk=desk)


def _agent(tools: list[Any], calls: list[tuple[str, dict[str, object], str]]) -> Any:
    from crewai import Agent

    return Agent(
        role="support",
        goal="help",
        backstory="a support desk",
        llm=scripted_crewai_llm(calls),
        tools=tools,
    )


async def _kickoff_governed(agent: Any, runtime: Any) -> Any:
    """Run a one-agent crew, governed, to its end."""
    from crewai import Crew, Task

    from aegis.adapters.crewai import govern, ungovern

    task = Task(description="go", expected_output="x", agent=agent)
    crew = govern(Crew(agents=[agent], tasks=[task]), runtime)
    try:
        return await asyncio.to_thread(crew.kickoff)
    finally:
        ungovern(crew)


def _react_action(name: str, arguments: dict[str, object]) -> Any:
    from crewai.agents.parser import AgentAction

    given = json.dumps(arguments)
    text = f"Thought: I need {name}\nAction: {name}\nAction Input: {given}"
    return AgentAction(thought=f"I need {name}", tool=name, tool_input=given, text=text)


@pytest.mark.parametrize("how", ["another thread", "a later hook"])
async def test_an_allowed_call_runs_only_with_its_decided_arguments(how: str) -> None:
    """A run with other arguments while an allowed call is open is refused; the call runs.

    The attempt is made by a before-hook registered after govern() (CrewAI
    runs it after Aegis's): from another thread, it runs the governed tool
    with other arguments; or, in CrewAI's own flow, it changes the call's
    arguments after Aegis decided them.
    """
    from crewai.hooks import register_before_tool_call_hook, unregister_before_tool_call_hook
    from crewai.tools import tool

    run = Run()
    lookup = tool("lookup")(_recorders(run)["lookup"])
    audit = InMemoryAuditLog()
    intruder: list[BaseException] = []

    def attempt() -> None:
        try:
            lookup.run(customer_id=666)
        except Exception as exc:
            intruder.append(exc)

    def later_hook(context: Any) -> None:
        if how == "another thread":
            thread = threading.Thread(target=attempt)
            thread.start()
            thread.join()
        else:
            context.tool_input["customer_id"] = 666

    agent = _agent([lookup], [("lookup", {"customer_id": 1}, "c1")])
    from crewai import Crew, Task

    from aegis.adapters.crewai import govern, ungovern

    crew = govern(
        Crew(agents=[agent], tasks=[Task(description="go", expected_output="x", agent=agent)]),
        make_runtime(audit=audit),
    )
    register_before_tool_call_hook(later_hook)
    try:
        await asyncio.to_thread(crew.kickoff)
    finally:
        unregister_before_tool_call_hook(later_hook)
        ungovern(crew)
    if how == "another thread":
        refused, record = audit.records
        assert (refused["action_params"], refused["result_status"]) == (
            {"customer_id": 666},
            "blocked",
        )
    else:
        [record] = audit.records
    assert record["action_params"] == {"customer_id": 1}
    if how == "another thread":
        assert run.executed == [("lookup", {"customer_id": 1})]
        assert UNDECIDED in str(intruder[0])
        assert record["result_status"] == "success"
    else:
        assert run.executed == []
        assert record["result_status"] == "failed"
        assert "arguments" in str(record["result_error"])


async def test_a_governed_tools_async_run_needs_a_decision() -> None:
    """``arun`` (the tool's ``_arun``) of a governed tool, without CrewAI's hooks, does not run."""
    from aegis.adapters.crewai import govern, ungovern

    ran: list[tuple[str, int]] = []
    lookup = _lookup_tool(ran)
    governed = govern([lookup], make_runtime())
    try:
        with pytest.raises(Exception, match=UNDECIDED):
            await lookup.arun(customer_id=7)
        assert ran == []
    finally:
        ungovern(governed)
    assert "gold" in await lookup.arun(customer_id=8)
    assert ran == [("A", 8)]


async def test_a_tool_with_a_func_field_is_watched_where_it_runs() -> None:
    """A ``BaseTool`` subclass with a ``func`` field of its own: its ``_run`` is governed too."""
    from crewai.tools import BaseTool

    from aegis.adapters.crewai import govern, ungovern

    sent: list[str] = []

    class Notify(BaseTool):  # type: ignore[misc]
        name: str = "lookup"
        description: str = "Look a customer up, and note it."
        func: Any = str.upper  # a helper of the tool's own, not what CrewAI runs

        def _run(self, customer_id: int) -> str:
            sent.append(str(customer_id))
            return f"customer {customer_id}: gold"

    notify = Notify()
    governed = govern([notify], make_runtime())
    try:
        with pytest.raises(Exception, match=UNDECIDED):
            notify.run(customer_id=7)
    finally:
        ungovern(governed)
    assert sent == []
    audit = InMemoryAuditLog()
    await _kickoff_governed(
        _agent([notify], [("lookup", {"customer_id": 1}, "c1")]), make_runtime(audit=audit)
    )
    assert sent == ["1"]
    assert [r["result_status"] for r in audit.records] == ["success"]


async def test_a_structured_tool_made_before_govern_is_governed() -> None:
    """A structured tool made from a tool before govern() runs only for a decided call, recorded."""
    from crewai.utilities.tool_utils import aexecute_tool_and_check_finality

    from aegis.adapters.crewai import govern, ungovern

    ran: list[tuple[str, int]] = []
    lookup = _lookup_tool(ran)
    structured = lookup.to_structured_tool()
    audit = InMemoryAuditLog()
    governed = govern([lookup], make_runtime(audit=audit))
    try:
        with pytest.raises(Exception, match=UNDECIDED):
            structured.invoke({"customer_id": 7})
        assert ran == []
        await aexecute_tool_and_check_finality(
            _react_action("lookup", {"customer_id": 1}), [structured], agent=_agent([lookup], [])
        )
    finally:
        ungovern(governed)
    assert ran == [("A", 1)]
    assert [r["result_status"] for r in audit.records] == ["blocked", "success"]


async def test_a_copy_of_a_governed_tool_has_a_watch_of_its_own() -> None:
    """A copy runs its own state; governed with the original, then on its own, then not at all."""
    from aegis.adapters.crewai import govern, ungovern

    ran: list[tuple[str, int]] = []
    original = _lookup_tool(ran)
    governed = govern([original], make_runtime())
    copy = original.model_copy(update={"desk": "B"})
    audit = InMemoryAuditLog()
    runtime = make_runtime(audit=audit)
    alone = govern([copy], runtime)
    try:
        with pytest.raises(Exception, match=UNDECIDED):
            copy.run(customer_id=1)  # covered by both govern() calls
        ungovern(governed)
        with pytest.raises(Exception, match=UNDECIDED):
            copy.run(customer_id=2)  # still covered by its own (recorded by it)
        assert "desk A" in original.run(customer_id=3)  # the original is free again
        # The crew's govern() and the copy's own cover the call: one decision.
        await _kickoff_governed(_agent([copy], [("lookup", {"customer_id": 4}, "c1")]), runtime)
        assert [r["result_status"] for r in audit.records] == ["blocked", "success"]
    finally:
        ungovern(governed)
        ungovern(alone)
    assert "desk B" in copy.run(customer_id=5)
    assert ran == [("A", 3), ("B", 4), ("B", 5)]


async def test_a_call_is_decided_on_the_arguments_the_tool_receives() -> None:
    """CrewAI coerces "yes" to True for a bool: the policy decides on True (blocked), "no" on False.

    The run must receive exactly the decided arguments, so the decision is
    on what CrewAI will pass: decided on the model's text, both calls were
    blocked (the rule cannot read a string as a boolean), and a decision on
    "7" would not match the run's 7.
    """
    from crewai.tools import tool

    ran: list[tuple[int, bool]] = []

    def purge(days: int, force: bool) -> str:
        """Purge old rows."""
        ran.append((days, force))
        return "purged"

    policy = {
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
    audit = InMemoryAuditLog()
    calls = [
        ("purge", {"days": "30", "force": "yes"}, "c1"),
        ("purge", {"days": "30", "force": "no"}, "c2"),
    ]
    await _kickoff_governed(
        _agent([tool("purge")(purge)], calls), make_runtime(audit=audit, policy=policy)
    )
    assert ran == [(30, False)]
    outcomes = {r["context"]["tool_call_id"]: r for r in audit.records}  # run side by side
    assert (outcomes["c1"]["result_status"], outcomes["c1"]["action_params"]) == (
        "blocked",
        {"days": 30, "force": True},
    )
    assert (outcomes["c2"]["result_status"], outcomes["c2"]["action_params"]) == (
        "success",
        {"days": 30, "force": False},
    )


async def test_a_run_no_decision_covers_is_recorded_as_blocked() -> None:
    """A governed tool run without CrewAI's hooks (sync or async) is refused and recorded so."""
    from aegis.adapters.crewai import govern, ungovern

    ran: list[tuple[str, int]] = []
    lookup = _lookup_tool(ran)
    audit = InMemoryAuditLog()
    governed = govern([lookup], make_runtime(audit=audit), target="crm")
    try:
        with pytest.raises(Exception, match=UNDECIDED):
            lookup.run(customer_id=7)
        with pytest.raises(Exception, match=UNDECIDED):
            await lookup.arun(customer_id=8)
    finally:
        ungovern(governed)
    assert ran == []
    assert [
        (r["action_type"], r["action_target"], r["action_params"], r["result_status"])
        for r in audit.records
    ] == [
        ("lookup", "crm", {"customer_id": 7}, "blocked"),
        ("lookup", "crm", {"customer_id": 8}, "blocked"),
    ]
    assert all(UNDECIDED in str(r["result_error"]) for r in audit.records)


def test_a_function_set_on_a_governed_tool_is_watched() -> None:
    """``tool.func = other`` after govern(): the new function runs only for a decided call too."""
    from crewai.tools import tool

    from aegis.adapters.crewai import govern, ungovern

    run = Run()
    recorders = _recorders(run)
    lookup = tool("lookup")(recorders["lookup"])
    governed = govern([lookup], make_runtime())
    try:
        lookup.func = recorders["delete_customer"]
        with pytest.raises(Exception, match=UNDECIDED):
            lookup.run(customer_id=7)
    finally:
        ungovern(governed)
    assert run.executed == []
    assert lookup.run(customer_id=8) == "deleted"


@pytest.mark.parametrize("when", ["during the run", "after the call"])
async def test_work_a_tools_run_starts_is_not_part_of_the_run(when: str) -> None:
    """A thread the tool's run starts, in a copy of the run's context, runs nothing undecided.

    It runs the tool with other arguments, while the run waits for it or
    once the call is over: neither is the decided call, so both are refused
    and recorded as blocked; the decided call runs once and is a success.
    """
    from crewai.tools import BaseTool
    from pydantic import BaseModel

    ran: list[int] = []
    refused: list[BaseException] = []
    later = threading.Event()
    threads: list[threading.Thread] = []

    class LookupArgs(BaseModel):
        customer_id: int

    class Lookup(BaseTool):  # type: ignore[misc]
        name: str = "lookup"
        description: str = "Look a customer up."
        args_schema: type[BaseModel] = LookupArgs

        def _run(self, customer_id: int) -> str:
            ran.append(customer_id)
            if customer_id == 1:
                context = contextvars.copy_context()

                def other() -> None:
                    if when == "after the call":
                        later.wait(10)
                    try:
                        context.run(self._run, customer_id=666)
                    except Exception as exc:
                        refused.append(exc)

                threads.append(threading.Thread(target=other))
                threads[0].start()
                if when == "during the run":
                    threads[0].join()
            return f"customer {customer_id}: gold"

    from crewai import Crew, Task

    from aegis.adapters.crewai import govern, ungovern

    audit = InMemoryAuditLog()
    agent = _agent([Lookup()], [("lookup", {"customer_id": 1}, "c1")])
    task = Task(description="go", expected_output="x", agent=agent)
    crew = govern(Crew(agents=[agent], tasks=[task]), make_runtime(audit=audit))
    try:
        await asyncio.to_thread(crew.kickoff)
        later.set()  # the call is over; the tool is still governed
        await asyncio.to_thread(threads[0].join, 10)
    finally:
        ungovern(crew)
    assert ran == [1]
    assert UNDECIDED in str(refused[0])
    outcomes = sorted(
        (r["action_params"]["customer_id"], r["result_status"]) for r in audit.records
    )
    assert outcomes == [(1, "success"), (666, "blocked")]


def test_a_method_bound_before_govern_is_governed() -> None:
    """``tool._run`` taken before govern() (a subclass's, or a ``@tool``'s) runs only as decided."""
    from crewai.tools import tool

    import aegis.adapters.crewai as crewai_adapter  # its guard follows tool classes made from now

    ran: list[tuple[str, int]] = []
    lookup = _lookup_tool(ran)
    run = Run()
    delete = tool("delete_customer")(_recorders(run)["delete_customer"])
    bound = [lookup._run, lookup._arun, delete._run]
    audit = InMemoryAuditLog()
    governed = crewai_adapter.govern([lookup, delete], make_runtime(audit=audit))
    try:
        with pytest.raises(Exception, match=UNDECIDED):
            bound[0](customer_id=7)
        with pytest.raises(Exception, match=UNDECIDED):
            asyncio.run(bound[1](customer_id=8))
        with pytest.raises(Exception, match=UNDECIDED):
            bound[2](customer_id=9)
    finally:
        crewai_adapter.ungovern(governed)
    assert (ran, run.executed) == ([], [])
    assert [(r["action_type"], r["result_status"]) for r in audit.records] == [
        ("lookup", "blocked"),
        ("lookup", "blocked"),
        ("delete_customer", "blocked"),
    ]
    assert "gold" in bound[0](customer_id=10)  # ungoverned: as before
    assert ran == [("A", 10)]


async def test_a_task_an_async_tools_run_starts_runs_nothing_undecided() -> None:
    """An async ``@tool`` whose run starts a task calling the tool with other arguments.

    The task inherits a copy of the run's context; its run is refused and
    recorded as blocked, and the decided call runs once, a success.
    """
    from crewai.tools import tool

    ran: list[int] = []
    refused: list[BaseException] = []

    async def lookup(customer_id: int) -> str:
        """Look a customer up."""
        ran.append(customer_id)
        if customer_id == 1:
            try:
                await asyncio.create_task(governed_lookup.arun(customer_id=666))
            except Exception as exc:
                refused.append(exc)
        return f"customer {customer_id}: gold"

    governed_lookup = tool("lookup")(lookup)
    audit = InMemoryAuditLog()
    await _kickoff_governed(
        _agent([governed_lookup], [("lookup", {"customer_id": 1}, "c1")]),
        make_runtime(audit=audit),
    )
    assert ran == [1]
    assert UNDECIDED in str(refused[0])
    outcomes = sorted(
        (r["action_params"]["customer_id"], r["result_status"]) for r in audit.records
    )
    assert outcomes == [(1, "success"), (666, "blocked")]
