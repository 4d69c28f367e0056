"""LangChain: every argument a governed tool receives is part of the decided action."""

from __future__ import annotations

from typing import Any

import pytest
from adapters_support import make_runtime, scripted_chat_model
from langchain.agents import create_agent
from langchain_core.messages import ToolMessage
from langchain_core.tools import StructuredTool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode
from pydantic import BaseModel, ConfigDict, Field

from aegis.adapters.langchain import AegisMiddleware, govern_tools
from aegis.testing import InMemoryAuditLog

POLICY: dict[str, Any] = {
    "version": "1",
    "defaults": {"risk_level": "low", "approval": "auto"},
    "rules": [
        {
            "name": "no-mallory",
            "match": {"type": "transfer"},
            "conditions": {"param_eq": {"to_account": "mallory"}},
            "risk_level": "critical",
            "approval": "block",
        },
        {
            "name": "no-force",
            "match": {"type": "transfer"},
            "conditions": {"param_eq": {"force": True}},
            "risk_level": "critical",
            "approval": "block",
        },
        {
            "name": "no-admin",
            "match": {"type": "transfer"},
            "conditions": {"param_eq": {"admin": True}},
            "risk_level": "critical",
            "approval": "block",
        },
    ],
}


class TransferArgs(BaseModel):
    """A permissive schema with an alias, as many tools have."""

    model_config = ConfigDict(extra="allow")
    to_account: str = Field(alias="to")
    amount: int
    force: bool = False


def _transfer(ran: list[dict[str, Any]]) -> StructuredTool:
    def transfer(to_account: str, amount: int, force: bool = False, **extra: Any) -> str:
        """Move money."""
        ran.append({"to_account": to_account, "amount": amount, "force": force, **extra})
        return "moved"

    return StructuredTool.from_function(transfer, args_schema=TransferArgs)


@pytest.mark.parametrize(
    ("args", "rule"),
    [
        ({"to": "mallory", "amount": 5}, "no-mallory"),  # the alias the schema reads
        ({"to": "bob", "amount": 5, "force": "yes"}, "no-force"),  # coerced to True
        ({"to": "bob", "amount": 5, "force": 1}, "no-force"),
        ({"to": "bob", "amount": 5, "admin": True}, "no-admin"),  # an extra field kept
    ],
)
def test_govern_tools_decides_on_what_the_tool_would_receive(
    args: dict[str, Any], rule: str
) -> None:
    """Aliases, coercions and extra fields are decided; a blocked call never runs."""
    ran: list[dict[str, Any]] = []
    audit = InMemoryAuditLog()
    [governed] = govern_tools([_transfer(ran)], make_runtime(audit=audit, policy=POLICY))
    governed.invoke(args)
    assert ran == []
    [record] = audit.records
    assert (record["result_status"], record["matched_rule"]) == ("blocked", rule)


def test_the_tool_gets_exactly_the_decided_coerced_values() -> None:
    """An allowed call runs with the values the audit shows, coerced by the schema."""
    ran: list[dict[str, Any]] = []
    audit = InMemoryAuditLog()
    [governed] = govern_tools([_transfer(ran)], make_runtime(audit=audit, policy=POLICY))
    assert governed.invoke({"to": "bob", "amount": "7", "force": "no", "memo": "rent"}) == "moved"
    decided = {"to_account": "bob", "amount": 7, "force": False, "memo": "rent"}
    assert ran == [decided]
    [record] = audit.records
    assert record["result_status"] == "success"
    assert record["action_params"] == decided


async def test_a_tool_node_call_with_an_alias_is_blocked() -> None:
    """Through a plain ToolNode, the aliased argument is what the policy reads."""
    ran: list[dict[str, Any]] = []
    graph = StateGraph(MessagesState)
    graph.add_node("tools", ToolNode(govern_tools([_transfer(ran)], make_runtime(policy=POLICY))))
    graph.add_edge(START, "tools")
    graph.add_edge("tools", END)
    call = {"name": "transfer", "args": {"to": "mallory", "amount": 5}, "id": "c1"}
    out = await graph.compile().ainvoke({"messages": [_ai(call)]})
    [message] = [m for m in out["messages"] if isinstance(m, ToolMessage)]
    assert message.status == "error"
    assert "no-mallory" in message.content
    assert ran == []


async def test_the_middleware_decides_on_the_schemas_reading_too() -> None:
    """create_agent with AegisMiddleware: "to" and "yes" are read as the tool reads them."""
    ran: list[dict[str, Any]] = []
    audit = InMemoryAuditLog()
    model = scripted_chat_model(
        [
            ("transfer", {"to": "mallory", "amount": 5}, "c1"),
            ("transfer", {"to": "bob", "amount": 5, "force": "yes"}, "c2"),
            ("transfer", {"to": "bob", "amount": "6"}, "c3"),
        ]
    )
    agent = create_agent(
        model,
        tools=[_transfer(ran)],
        middleware=[AegisMiddleware(make_runtime(audit=audit, policy=POLICY))],
        checkpointer=InMemorySaver(),
    )
    await agent.ainvoke({"messages": [("user", "pay")]}, {"configurable": {"thread_id": "t"}})
    assert ran == [{"to_account": "bob", "amount": 6, "force": False}]
    outcomes = sorted((r["result_status"], r["matched_rule"]) for r in audit.records)
    assert outcomes == [
        ("blocked", "no-force"),
        ("blocked", "no-mallory"),
        ("success", "<default>"),
    ]


def _ai(call: dict[str, Any]) -> Any:
    from langchain_core.messages import AIMessage

    return AIMessage(content="", tool_calls=[{**call, "type": "tool_call"}])
