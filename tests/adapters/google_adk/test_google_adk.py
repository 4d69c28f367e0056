"""Google ADK: the pause for a tool confirmation, its answer, and the README's example.

These run in ADK's own environment (``scripts/check`` makes it); the
contract suite covers the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adapters_support import DESCRIPTIONS, Run, make_runtime, scripted_llm
from test_readme_integrations import run_example

from aegis.testing import InMemoryAuditLog, ScriptedApprovalHandler

REFUND = {"order_id": "o-17", "amount": 20.0}


async def _start(runtime: Any, run: Run) -> tuple[Any, Any, list[Any]]:
    from google.adk.agents import LlmAgent
    from google.adk.apps import App
    from google.adk.runners import Runner
    from google.adk.sessions import InMemorySessionService
    from google.adk.tools import FunctionTool
    from google.genai import types

    from aegis.adapters.google_adk import AegisPlugin

    def refund(order_id: str, amount: float) -> str:
        run.executed.append(("refund", {"order_id": order_id, "amount": amount}))
        return "refunded"

    refund.__doc__ = DESCRIPTIONS["refund"]
    agent = LlmAgent(
        name="support",
        model=scripted_llm([("refund", REFUND, "call_1")]),
        tools=[FunctionTool(refund)],
    )
    app = App(name="t", root_agent=agent, plugins=[AegisPlugin(runtime, target="crm")])
    sessions = InMemorySessionService()
    runner = Runner(app=app, session_service=sessions)
    session = await sessions.create_session(app_name="t", user_id="u")
    message = types.Content(role="user", parts=[types.Part(text="go")])
    events = [
        e async for e in runner.run_async(user_id="u", session_id=session.id, new_message=message)
    ]
    return runner, session, events


async def test_a_call_needing_approval_pauses_and_nothing_waits() -> None:
    """The invocation pauses with ADK's confirmation request; nobody is asked, nothing runs."""
    from aegis.adapters.google_adk import pending_confirmations

    approver = ScriptedApprovalHandler([True])
    audit = InMemoryAuditLog()
    run = Run()
    _, _, events = await _start(make_runtime(approver, audit=audit), run)
    [pending] = pending_confirmations(events)
    assert pending.args["originalFunctionCall"]["id"] == "call_1"
    assert run.executed == []
    assert approver.asked == []
    assert audit.records == []


async def test_declining_the_confirmation_cancels_the_call() -> None:
    """confirmed=False: the call is recorded as denied and never runs; no reviewer is asked."""
    from aegis.adapters.google_adk import confirmation_responses, pending_confirmations

    approver = ScriptedApprovalHandler([True])
    audit = InMemoryAuditLog()
    run = Run()
    runner, session, events = await _start(make_runtime(approver, audit=audit), run)
    answer = confirmation_responses(events, confirmed=False)
    resumed = [
        e async for e in runner.run_async(user_id="u", session_id=session.id, new_message=answer)
    ]
    assert run.executed == []
    assert approver.asked == []
    assert pending_confirmations(resumed) == []
    [record] = audit.records
    assert record["result_status"] == "denied"


def test_the_readme_example_runs(tmp_path: Path) -> None:
    """The README's ADK example pauses, asks at the terminal, and runs the refund after a yes."""
    prelude = (
        "from adapters_support import scripted_llm\n"
        "model = scripted_llm([('refund', {'order_id': '17', 'amount': 120.0}, 'c1')])\n"
    )
    run_example("### Google ADK", prelude, tmp_path)
