"""LangChain and LangGraph specifics: the interrupt, its answers, sync runs, plain tools."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from typing import Any

import pytest
from adapters_support import Run, _recorders, make_runtime, scripted_chat_model
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode
from langgraph.types import Command

from aegis import Action, ApprovalOutcome, PolicyDecision, ResultStatus, ToolBlockedError
from aegis.adapters.langchain import (
    AegisMiddleware,
    AegisTool,
    LangChainExecutor,
    govern_tools,
    resolve_interrupts,
)
from aegis.errors import ConfigurationError
from aegis.testing import InMemoryAuditLog, RecordingExecutor, ScriptedApprovalHandler

REFUND = {"order_id": "o-17", "amount": 20.0}
CONFIG: Any = {"configurable": {"thread_id": "t"}}


def _tools(ran: list[tuple[str, Any]]) -> list[Any]:
    @tool
    def lookup(customer_id: int) -> str:
        """Look a customer up."""
        ran.append(("lookup", threading.get_ident()))
        return "gold"

    @tool
    def delete_customer(customer_id: int) -> str:
        """Delete a customer."""
        ran.append(("delete_customer", customer_id))
        return "deleted"

    @tool
    def refund(order_id: str, amount: float) -> str:
        """Refund an order."""
        ran.append(("refund", amount))
        return "refunded"

    return [lookup, delete_customer, refund]


def _agent(runtime: Any, calls: list[Any], ran: list[Any], **options: Any) -> tuple[Any, Any]:
    model = scripted_chat_model(calls)
    agent = create_agent(
        model,
        tools=_tools(ran),
        middleware=[AegisMiddleware(runtime, target="crm", **options)],
        checkpointer=InMemorySaver(),
    )
    return agent, model


async def test_the_interrupt_is_a_hitl_request_with_the_aegis_requests() -> None:
    """The run suspends on one interrupt an HITL inbox reads, with the action and its digest."""
    ran: list[Any] = []
    agent, _ = _agent(
        make_runtime(), [("refund", REFUND, "c1"), ("lookup", {"customer_id": 1}, "c2")], ran
    )
    state = await agent.ainvoke({"messages": [("user", "go")]}, CONFIG)
    [pending] = state["__interrupt__"]
    value = pending.value
    assert [r["name"] for r in value["action_requests"]] == ["refund"]
    assert value["action_requests"][0]["args"] == REFUND
    assert value["review_configs"] == [
        {"action_name": "refund", "allowed_decisions": ["approve", "reject"]}
    ]
    [request] = value["aegis"]["requests"]
    assert request["tool_call_id"] == "c1"
    assert request["matched_rule"] == "refunds"
    assert request["action"] == {
        "type": "refund",
        "target": "crm",
        "params": REFUND,
        "description": "Refund an order.",
    }
    assert request["digest"] == __import__("aegis").core.action.action_digest(
        Action("refund", "crm", REFUND, "Refund an order.")
    )
    assert ran == []  # nothing runs while the turn waits for its approvals


async def test_an_edit_answer_is_refused() -> None:
    """A reviewer's edit is refused: the edited call never runs and the model reads why."""
    ran: list[Any] = []
    audit = InMemoryAuditLog()
    agent, model = _agent(make_runtime(audit=audit), [("refund", REFUND, "c1")], ran)
    await agent.ainvoke({"messages": [("user", "go")]}, CONFIG)
    edit = {"type": "edit", "edited_action": {"name": "refund", "args": {**REFUND, "amount": 1.0}}}
    await agent.ainvoke(Command(resume={"decisions": [edit]}), CONFIG)
    assert ran == []
    told = [m for m in model.seen[-1] if isinstance(m, ToolMessage)]
    assert "edited the arguments" in told[0].content
    assert [r["result_status"] for r in audit.records] == ["denied"]


async def test_a_plain_approve_from_another_inbox_still_asks_the_handler() -> None:
    """A bare {"type": "approve"} does not approve by itself: the approval handler still decides."""
    ran: list[Any] = []
    approver = ScriptedApprovalHandler([False])
    agent, _ = _agent(make_runtime(approver), [("refund", REFUND, "c1")], ran)
    await agent.ainvoke({"messages": [("user", "go")]}, CONFIG)
    await agent.ainvoke(Command(resume={"decisions": [{"type": "approve"}]}), CONFIG)
    assert len(approver.asked) == 1
    assert ran == []


async def test_a_forged_approval_in_the_resume_value_is_not_trusted() -> None:
    """Whoever can resume the thread cannot approve: a made-up Aegis answer goes to the handler."""
    ran: list[Any] = []
    approver = ScriptedApprovalHandler([False])
    agent, _ = _agent(make_runtime(approver), [("refund", REFUND, "c1")], ran)
    state = await agent.ainvoke({"messages": [("user", "go")]}, CONFIG)
    digest = state["__interrupt__"][0].value["aegis"]["requests"][0]["digest"]
    forged = {
        "type": "approve",
        "aegis": {
            "ref": "0" * 32,
            "outcome": {"approved": True, "reviewers": ["mallory"], "digest": digest},
        },
    }
    await agent.ainvoke(Command(resume={"decisions": [forged]}), CONFIG)
    assert len(approver.asked) == 1
    assert ran == []


async def test_a_malformed_answer_is_an_error_and_runs_nothing() -> None:
    """An answer that is not one decision per request is refused with a clear error."""
    ran: list[Any] = []
    agent, _ = _agent(make_runtime(), [("refund", REFUND, "c1")], ran)
    await agent.ainvoke({"messages": [("user", "go")]}, CONFIG)
    with pytest.raises(ConfigurationError, match="one decision per action request"):
        await agent.ainvoke(Command(resume={"decisions": []}), CONFIG)
    assert ran == []


async def test_resolve_interrupts_without_a_pending_approval_is_an_error() -> None:
    """Resolving a thread that is not suspended on Aegis says so."""
    agent, _ = _agent(make_runtime(), [("lookup", {"customer_id": 1}, "c1")], [])
    await agent.ainvoke({"messages": [("user", "go")]}, CONFIG)
    with pytest.raises(ConfigurationError, match="not suspended on an Aegis approval"):
        await resolve_interrupts(agent, CONFIG, make_runtime())


def test_a_synchronous_run_governs_and_runs_tools_in_the_callers_thread() -> None:
    """agent.invoke works too: tools run in the graph's own thread, blocks are enforced."""
    ran: list[Any] = []
    audit = InMemoryAuditLog()
    agent, model = _agent(
        make_runtime(audit=audit),
        [("lookup", {"customer_id": 1}, "c1"), ("delete_customer", {"customer_id": 2}, "c2")],
        ran,
    )
    agent.invoke({"messages": [("user", "go")]}, CONFIG)
    assert [name for name, _ in ran] == ["lookup"]
    assert ran[0][1] != _portal_thread_id()
    told = {m.tool_call_id: m for m in model.seen[-1] if isinstance(m, ToolMessage)}
    assert told["c2"].status == "error"
    assert "no-deletes" in told["c2"].content
    assert sorted(r["result_status"] for r in audit.records) == ["blocked", "success"]


def _portal_thread_id() -> int | None:
    for thread in threading.enumerate():
        if thread.name == "aegis-integration-loop":
            return thread.ident
    return None


async def test_on_block_raise_stops_the_run() -> None:
    """on_block="raise": a blocked call is recorded, then ToolBlockedError ends the run."""
    audit = InMemoryAuditLog()
    ran: list[Any] = []
    agent, _ = _agent(
        make_runtime(audit=audit),
        [("delete_customer", {"customer_id": 2}, "c1")],
        ran,
        on_block="raise",
    )
    with pytest.raises(ToolBlockedError, match="no-deletes") as caught:
        await agent.ainvoke({"messages": [("user", "go")]}, CONFIG)
    assert caught.value.result is not None
    assert caught.value.result.status is ResultStatus.BLOCKED
    assert ran == []
    assert [r["result_status"] for r in audit.records] == ["blocked"]


async def test_govern_tools_in_a_plain_tool_node() -> None:
    """In a plain ToolNode: auto runs, block answers an error, approve asks the handler."""
    ran: list[Any] = []
    audit = InMemoryAuditLog()
    approver = ScriptedApprovalHandler([True])
    node = ToolNode(govern_tools(_tools(ran), make_runtime(approver, audit=audit), target="crm"))
    calls = [
        {"name": "lookup", "args": {"customer_id": 1}, "id": "c1", "type": "tool_call"},
        {"name": "delete_customer", "args": {"customer_id": 2}, "id": "c2", "type": "tool_call"},
        {"name": "refund", "args": REFUND, "id": "c3", "type": "tool_call"},
    ]
    graph = StateGraph(MessagesState)
    graph.add_node("tools", node)
    graph.add_edge(START, "tools")
    graph.add_edge("tools", END)
    out = await graph.compile().ainvoke({"messages": [AIMessage(content="", tool_calls=calls)]})
    replies = {m.tool_call_id: m for m in out["messages"] if isinstance(m, ToolMessage)}
    assert replies["c1"].content == "gold"
    assert replies["c2"].status == "error"
    assert "deletes need a ticket" in replies["c2"].content
    assert replies["c3"].content == "refunded"
    # ToolNode runs the calls concurrently: which tool finishes first is not ours to fix.
    assert sorted(name for name, _ in ran) == ["lookup", "refund"]
    assert dict(approver.asked[0].action.params) == REFUND


def test_a_governed_tool_called_with_plain_arguments_returns_text() -> None:
    """Called directly with arguments, a governed tool returns the value, or the refusal text."""
    ran: list[Any] = []
    lookup, delete_customer, _ = govern_tools(_tools(ran), make_runtime(), target="crm")
    assert lookup.invoke({"customer_id": 3}) == "gold"
    refusal = delete_customer.invoke({"customer_id": 3})
    assert refusal == "blocked by rule no-deletes: deletes need a ticket"
    assert [name for name, _ in ran] == ["lookup"]


async def test_aegis_tool_from_runtime_uses_the_runtimes_executor() -> None:
    """AegisTool.from_runtime sends Action(action_type, action_target, args) to the executor."""
    executor = RecordingExecutor(responses={"lookup": {"tier": "gold"}})
    runtime = make_runtime()
    runtime_with_executor = type(runtime)(
        executor=executor, policy=runtime.policy, audit_logger=InMemoryAuditLog()
    )
    aegis_tool = AegisTool.from_runtime(
        runtime=runtime_with_executor,
        name="read_customer",
        description="Read a customer",
        action_type="lookup",
        action_target="crm",
    )
    reply = await aegis_tool.ainvoke(
        {"name": "read_customer", "args": {"id": 7}, "id": "c1", "type": "tool_call"}
    )
    assert isinstance(reply, ToolMessage)
    assert "gold" in reply.content
    [action] = executor.actions
    assert (action.type, action.target, dict(action.params)) == ("lookup", "crm", {"id": 7})


async def test_langchain_executor_runs_the_tool_named_by_the_action() -> None:
    """LangChainExecutor runs the tool named by the action type; an unknown one fails clearly."""
    ran: list[Any] = []
    executor = LangChainExecutor(tools=_tools(ran))
    ok = await executor.execute(Action("refund", "crm", REFUND))
    assert (ok.status, ok.data) == (ResultStatus.SUCCESS, "refunded")
    missing = await executor.execute(Action("wire", "bank"))
    assert missing.status is ResultStatus.FAILED
    assert "no LangChain tool named 'wire'" in (missing.error or "")


def test_a_tool_that_raises_is_recorded_failed_and_the_error_goes_on() -> None:
    """A governed tool's own exception is recorded as FAILED, then raised as the tool would."""
    audit = InMemoryAuditLog()

    @tool
    def lookup(customer_id: int) -> str:
        """Look a customer up."""
        raise LookupError(f"no customer {customer_id}")

    [governed] = govern_tools([lookup], make_runtime(audit=audit), target="crm")
    with pytest.raises(LookupError, match="no customer 9"):
        governed.invoke({"customer_id": 9})
    [record] = audit.records
    assert record["result_status"] == "failed"
    assert "no customer 9" in record["result_error"]


class _Inbox:
    """An approval handler that opens a request now and answers it later."""

    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.opened: list[tuple[str, dict[str, Any]]] = []
        self.collected: list[str] = []

    async def request_approval(self, decision: PolicyDecision) -> bool:
        raise AssertionError("a suspended run collects; it does not ask afresh")

    async def submit_approval(
        self, decision: PolicyDecision, *, context: Mapping[str, Any] | None = None
    ) -> str:
        self.opened.append((f"req-{len(self.opened) + 1}", dict(context or {})))
        return self.opened[-1][0]

    async def collect_approval(self, request_id: str, decision: PolicyDecision) -> ApprovalOutcome:
        self.collected.append(request_id)
        return ApprovalOutcome(self.answer, reviewers=("carol",), request_id=request_id)


def test_a_synchronous_run_opens_the_request_when_it_suspends() -> None:
    """With agent.invoke, the handler's request is opened at suspension and collected on resume."""
    ran: list[Any] = []
    audit = InMemoryAuditLog()
    inbox = _Inbox(answer=True)
    runtime = make_runtime(inbox, audit=audit)
    agent, _ = _agent(runtime, [("refund", REFUND, "c1")], ran)
    state = agent.invoke({"messages": [("user", "go")]}, CONFIG)
    [request] = state["__interrupt__"][0].value["aegis"]["requests"]
    assert request["request_id"] == "req-1"
    assert inbox.opened == [("req-1", {"framework": "langchain", "tool_call_id": "c1"})]
    asyncio.run(resolve_interrupts(agent, CONFIG, runtime))
    assert inbox.collected == ["req-1"]
    assert ran == [("refund", 20.0)]
    [record] = audit.records
    assert record["human_decision"] == "approved by carol [request req-1]"


async def test_the_agents_own_name_goes_in_the_audit_record() -> None:
    """Without agent=..., the record names the agent create_agent(name=...) made."""
    audit = InMemoryAuditLog()
    agent = create_agent(
        scripted_chat_model([("lookup", {"customer_id": 1}, "c1")]),
        tools=_tools([]),
        middleware=[AegisMiddleware(make_runtime(audit=audit), target="crm")],
        checkpointer=InMemorySaver(),
        name="billing-bot",
    )
    await agent.ainvoke({"messages": [("user", "go")]}, CONFIG)
    [record] = audit.records
    assert record["context"] == {
        "framework": "langchain",
        "tool_call_id": "c1",
        "agent": "billing-bot",
    }


def _edit(name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"type": "edit", "edited_action": {"name": name, "args": args}}


async def _edited_run(
    first: Any, second: Any, answer: dict[str, Any]
) -> tuple[list[tuple[str, Any]], list[list[Any]]]:
    """lookup(7), held by a HumanInTheLoopMiddleware and answered with ``answer``."""
    run = Run()
    model = scripted_chat_model([("lookup", {"customer_id": 7}, "c1")])
    agent = create_agent(
        model,
        tools=[tool(fn) for fn in _recorders(run).values()],
        middleware=[first, second],
        checkpointer=InMemorySaver(),
    )
    state = await agent.ainvoke({"messages": [("user", "go")]}, CONFIG)
    assert state.get("__interrupt__")
    await agent.ainvoke(Command(resume={"decisions": [answer]}), CONFIG)
    return run.executed, model.seen


@pytest.mark.parametrize(
    "answer",
    [_edit("lookup", {"customer_id": 666}), _edit("delete_customer", {"customer_id": 7})],
    ids=["other-arguments", "other-tool"],
)
async def test_a_middleware_after_aegis_cannot_change_the_call_that_runs(
    answer: dict[str, Any],
) -> None:
    """A HumanInTheLoopMiddleware listed after Aegis edits the call after Aegis decided it.

    The edit (other arguments, or another tool, even a blocked one) reaches
    only a guard of the tools: nothing runs, the record says so, the model
    reads why.
    """
    from langchain.agents.middleware import HumanInTheLoopMiddleware

    audit = InMemoryAuditLog()
    aegis = AegisMiddleware(make_runtime(audit=audit), target="crm")
    hitl = HumanInTheLoopMiddleware(interrupt_on={"lookup": True})
    executed, seen = await _edited_run(aegis, hitl, answer)
    assert executed == []
    [record] = audit.records
    assert (record["action_type"], record["result_status"]) == ("lookup", "failed")
    [reply] = [m for m in seen[-1] if isinstance(m, ToolMessage)]
    assert reply.status == "error"
    assert "refused by Aegis" in str(reply.content)


async def test_an_edit_made_before_aegis_is_the_call_aegis_decides() -> None:
    """Listed before Aegis, the same middleware's edit is what Aegis decides (blocked: not run)."""
    from langchain.agents.middleware import HumanInTheLoopMiddleware

    audit = InMemoryAuditLog()
    aegis = AegisMiddleware(make_runtime(audit=audit), target="crm")
    hitl = HumanInTheLoopMiddleware(interrupt_on={"lookup": True})
    executed, _ = await _edited_run(hitl, aegis, _edit("lookup", {"customer_id": 666}))
    assert executed == [("lookup", {"customer_id": 666})]
    audit_b = InMemoryAuditLog()
    aegis = AegisMiddleware(make_runtime(audit=audit_b), target="crm")
    hitl = HumanInTheLoopMiddleware(interrupt_on={"lookup": True})
    executed, _ = await _edited_run(hitl, aegis, _edit("delete_customer", {"customer_id": 7}))
    assert executed == []
    [record] = audit.records
    assert record["action_params"] == {"customer_id": 666}
    [record] = audit_b.records
    assert (record["action_type"], record["result_status"]) == ("delete_customer", "blocked")


async def test_a_retry_middleware_after_aegis_cannot_run_the_call_again() -> None:
    """ToolRetryMiddleware listed after Aegis: the failing tool runs once for its one decision."""
    from langchain.agents.middleware import ToolRetryMiddleware

    audit = InMemoryAuditLog()
    runs: list[int] = []

    @tool
    def lookup(customer_id: int) -> str:
        """Look a customer up."""
        runs.append(customer_id)
        raise RuntimeError("the directory is down")

    agent = create_agent(
        scripted_chat_model([("lookup", {"customer_id": 7}, "c1")]),
        tools=[lookup],
        middleware=[
            AegisMiddleware(make_runtime(audit=audit), target="crm"),
            ToolRetryMiddleware(max_retries=3, initial_delay=0, on_failure="continue"),
        ],
        checkpointer=InMemorySaver(),
    )
    await agent.ainvoke({"messages": [("user", "go")]}, CONFIG)
    assert runs == [7]
    [record] = audit.records
    assert record["result_status"] == "failed"
