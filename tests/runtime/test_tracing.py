"""OpenTelemetry spans of governed actions, read from the SDK's in-memory exporter."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from aegis import Action, Policy, Runtime
from aegis.core.outcome import ApprovalOutcome
from aegis.runtime.audit import AuditLogger

POLICY = Policy.from_dict(
    {
        "version": "1",
        "rules": [
            {"name": "reads", "match": {"type": "read"}, "approval": "auto", "risk_level": "low"},
            {"name": "no_deletes", "match": {"type": "delete"}, "approval": "block"},
            {"name": "refunds", "match": {"type": "refund"}, "approval": "approve"},
            {"name": "boom", "match": {"type": "explode"}, "approval": "auto"},
        ],
    }
)


class Traced:
    """A tracer provider whose finished spans land in memory."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> ReadableSpan:
        (span,) = [s for s in self.spans() if s.name == name]
        return span


@pytest.fixture
def traced() -> Traced:
    """A fresh in-memory tracer provider."""
    return Traced()


def runtime(traced: Traced, db: Path, approve: bool = True) -> Runtime:
    """A runtime tracing to ``traced``, whose tool starts a span of its own."""
    tool = traced.provider.get_tracer("tool")

    async def executor(action: Action) -> dict[str, Any]:
        with tool.start_as_current_span("tool-work"):
            if action.type == "explode":
                raise RuntimeError("kaboom")
        return {"done": action.type}

    return Runtime(
        executor=executor,
        policy=POLICY,
        approval_handler=lambda decision: ApprovalOutcome(
            approved=approve, reviewers=("alice",), comment="checked"
        ),
        audit_logger=AuditLogger(db),
        agent="support-bot",
        tracer_provider=traced.provider,
    )


async def test_an_action_is_an_execute_tool_span_with_the_decision(
    traced: Traced, tmp_path: Path
) -> None:
    """A run action is `execute_tool NAME` with the GenAI attributes and Aegis's verdict."""
    async with runtime(traced, tmp_path / "a.db") as rt:
        result = await rt.run_one(Action("read", "crm"), context={"tool_call_id": "call_7"})
    assert result.ok
    span = traced.named("execute_tool read")
    attributes = dict(span.attributes or {})
    assert attributes["gen_ai.operation.name"] == "execute_tool"
    assert attributes["gen_ai.tool.name"] == "read"
    assert attributes["gen_ai.tool.call.id"] == "call_7"
    assert attributes["gen_ai.agent.name"] == "support-bot"
    assert attributes["aegis.approval"] == "auto"
    assert attributes["aegis.risk"] == "low"
    assert attributes["aegis.rule"] == "reads"
    assert attributes["aegis.status"] == "success"
    with AuditLogger(tmp_path / "a.db", readonly=True, create=False) as audit:
        final = audit.get_log(view="records")[-1]
    assert attributes["aegis.audit.record_id"] == final["id"]
    assert span.kind is trace.SpanKind.INTERNAL
    # plain values, as every exporter takes them: no enum member leaks out
    assert {type(value) for value in attributes.values()} <= {str, int}


async def test_blocked_denied_and_failed_calls_get_spans(traced: Traced, tmp_path: Path) -> None:
    """Blocked and denied calls have spans too; a failure is an error span with its type."""
    async with runtime(traced, tmp_path / "a.db", approve=False) as rt:
        await rt.run_one(Action("delete", "crm"))
        await rt.run_one(Action("refund", "billing", {"amount": 5}))
        await rt.run_one(Action("explode", "lab"))
    blocked = dict(traced.named("execute_tool delete").attributes or {})
    assert (blocked["aegis.approval"], blocked["aegis.status"]) == ("block", "blocked")
    assert blocked["aegis.rule"] == "no_deletes"
    denied = dict(traced.named("execute_tool refund").attributes or {})
    assert (denied["aegis.approval"], denied["aegis.status"]) == ("approve", "denied")
    assert denied["aegis.reviewer"] == ("alice",)
    failed = traced.named("execute_tool explode")
    assert failed.status.status_code is StatusCode.ERROR
    assert dict(failed.attributes or {})["error.type"] == "RuntimeError"


async def test_the_span_joins_the_callers_trace_and_parents_the_tools_spans(
    traced: Traced, tmp_path: Path
) -> None:
    """The action's span is a child of the caller's span; the executor's spans are its children."""
    tracer = traced.provider.get_tracer("agent")
    async with runtime(traced, tmp_path / "a.db") as rt:
        with tracer.start_as_current_span("agent turn"):
            await rt.run_one(Action("refund", "billing", {"amount": 5}))
    turn = traced.named("agent turn")
    action = traced.named("execute_tool refund")
    work = traced.named("tool-work")
    assert action.parent is not None
    assert action.parent.span_id == turn.context.span_id
    assert action.context.trace_id == turn.context.trace_id
    assert work.parent is not None
    assert work.parent.span_id == action.context.span_id
    assert dict(action.attributes or {})["aegis.reviewer"] == ("alice",)


async def test_a_plan_traces_every_action(traced: Traced, tmp_path: Path) -> None:
    """execute() gives each action of a plan its span."""
    async with runtime(traced, tmp_path / "a.db") as rt:
        await rt.execute(rt.plan([Action("read", "crm"), Action("delete", "crm")]))
    assert {s.name for s in traced.spans()} >= {"execute_tool read", "execute_tool delete"}


def run_script(tmp_path: Path, *parts: str) -> dict[str, Any]:
    """Run the script of ``parts`` in a fresh interpreter and return the JSON it prints last."""
    script = tmp_path / "script.py"
    script.write_text("".join(textwrap.dedent(part) for part in parts), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=True
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


RUN_ONE = """
    async def main():
        async with Runtime(
            executor=lambda action: {"ok": True},
            policy=Policy.from_dict(
                {"version": "1", "rules": [{"name": "r", "match": {"type": "*"},
                                            "approval": "auto"}]}
            ),
            audit_logger=AuditLogger(sys.argv[0] + ".db"),
        ) as rt:
            return await rt.run_one(Action("read", "crm"))

    result = asyncio.run(main())
"""


def test_the_global_tracer_provider_is_used_when_configured(tmp_path: Path) -> None:
    """With a global provider set before the runtime starts, actions are traced with no option."""
    found = run_script(
        tmp_path,
        """
        import asyncio, json, sys
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from aegis import Action, AuditLogger, Policy, Runtime

        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        """,
        RUN_ONE,
        """
        names = [span.name for span in exporter.get_finished_spans()]
        print(json.dumps({"spans": names, "ok": result.ok}))
        """,
    )
    assert found == {"spans": ["execute_tool read"], "ok": True}


def test_without_opentelemetry_nothing_is_imported(tmp_path: Path) -> None:
    """An application that does not trace never imports OpenTelemetry through Aegis."""
    found = run_script(
        tmp_path,
        """
        import asyncio, json, sys
        from aegis import Action, AuditLogger, Policy, Runtime
        """,
        RUN_ONE,
        """
        loaded = sorted(name for name in sys.modules if name.startswith("opentelemetry"))
        print(json.dumps({"loaded": loaded, "ok": result.ok}))
        """,
    )
    assert found == {"loaded": [], "ok": True}


async def test_a_limit_that_changes_the_decision_shows_on_the_span(
    traced: Traced, tmp_path: Path
) -> None:
    """Past a limit the span carries the verdict that held, with the limit's reason."""
    limited = Policy.from_dict(
        {
            "version": "1",
            "rules": [
                {
                    "name": "mail",
                    "match": {"type": "send"},
                    "approval": "auto",
                    "limit": {"max": 1, "per": "1h"},
                    "on_exceed": {"approval": "block"},
                }
            ],
        }
    )
    async with Runtime(
        executor=lambda action: {},
        policy=limited,
        audit_logger=AuditLogger(tmp_path / "a.db"),
        tracer_provider=traced.provider,
    ) as rt:
        await rt.run_one(Action("send", "mail"))
        second = await rt.run_one(Action("send", "mail"))
    assert second.status.value == "blocked"
    first_span, second_span = traced.spans()
    assert dict(first_span.attributes or {})["aegis.approval"] == "auto"
    attributes = dict(second_span.attributes or {})
    assert (attributes["aegis.approval"], attributes["aegis.status"]) == ("block", "blocked")
    assert "limit" in str(attributes["aegis.reason"])
