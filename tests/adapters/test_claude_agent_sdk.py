"""Claude Agent SDK specifics: the tool's real outcome in the record, hooks that fail closed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from adapters_support import make_runtime

from aegis.testing import InMemoryAuditLog


async def _query(options: Any, calls: list[Any], server: str) -> Any:
    from claude_agent_sdk import query
    from fake_claude_code import FakeClaudeCode

    cli = FakeClaudeCode(calls, server=server)

    async def prompt() -> Any:
        yield {"type": "user", "message": {"role": "user", "content": "go"}}

    async for _ in query(prompt=prompt(), options=options, transport=cli):
        pass
    return cli


async def test_a_tool_that_fails_in_claude_code_is_recorded_as_failed() -> None:
    """The call is allowed; the tool fails; PostToolUseFailure makes the record FAILED."""
    from claude_agent_sdk import ClaudeAgentOptions, create_sdk_mcp_server, tool

    from aegis.adapters.claude_agent_sdk import hooks

    @tool("lookup", "Look a customer up.", {"customer_id": int})
    async def lookup(args: dict[str, Any]) -> dict[str, Any]:
        raise LookupError(f"no customer {args['customer_id']}")

    audit = InMemoryAuditLog()
    options = ClaudeAgentOptions(
        mcp_servers={"crm": create_sdk_mcp_server("crm", tools=[lookup])},
        hooks=hooks(make_runtime(audit=audit), target="crm", tools={"crm": [lookup]}),  # type: ignore[arg-type]
    )
    cli = await _query(options, [("lookup", {"customer_id": 9}, "tu_1")], "crm")
    assert "no customer 9" in cli.model_saw["tu_1"]
    [record] = audit.records
    assert record["result_status"] == "failed"
    assert record["context"]["tool_call_id"] == "tu_1"


def test_the_hooks_fail_closed_and_cover_the_outcome() -> None:
    """Every matcher blocks the call when its hook fails; PostToolUse hooks record outcomes."""
    from aegis.adapters.claude_agent_sdk import hooks

    given = hooks(make_runtime(), target="crm", matcher="mcp__crm__.*", timeout=120)
    assert sorted(given) == ["PostToolUse", "PostToolUseFailure", "PreToolUse", "Stop"]
    [stop] = given.pop("Stop")  # it ends the turn's calls, whichever tools they used
    assert (stop.matcher, stop.timeout) == (None, 120)
    for matchers in given.values():
        [matcher] = matchers
        assert (matcher.on_failure, matcher.matcher, matcher.timeout) == (
            "block",
            "mcp__crm__.*",
            120,
        )


def _refund_tool(ran: list[dict[str, Any]]) -> Any:
    """An in-process SDK tool that notes every run of its handler."""
    from claude_agent_sdk import tool

    @tool("refund", "Refund an order.", {"order_id": str, "amount": float})
    async def refund(args: dict[str, Any]) -> dict[str, Any]:
        ran.append(dict(args))
        return {"content": [{"type": "text", "text": f"refunded {args['amount']}"}]}

    return refund


async def _play(options: Any, calls: list[Any], **cli_options: Any) -> Any:
    from claude_agent_sdk import query
    from fake_claude_code import FakeClaudeCode

    cli = FakeClaudeCode(calls, server="crm", **cli_options)

    async def prompt() -> Any:
        yield {"type": "user", "message": {"role": "user", "content": "go"}}

    async for _ in query(prompt=prompt(), options=options, transport=cli):
        pass
    return cli


async def test_a_tool_claude_codes_own_rules_allow_does_not_run_undecided() -> None:
    """A settings file's allow rule keeps can_use_tool from being asked: the tool refuses to run.

    Claude Code reads ``permissions.allow`` from its settings files, which
    the SDK does not see (it warns only about ``allowed_tools`` and
    ``bypassPermissions``); the scripted CLI plays such a rule.
    """
    from claude_agent_sdk import ClaudeAgentOptions, create_sdk_mcp_server

    from aegis.adapters.claude_agent_sdk import can_use_tool

    ran: list[dict[str, Any]] = []
    refund = _refund_tool(ran)
    audit = InMemoryAuditLog()
    runtime = make_runtime(lambda d: True, audit=audit)
    options = ClaudeAgentOptions(
        mcp_servers={"crm": create_sdk_mcp_server("crm", tools=[refund])},
        can_use_tool=can_use_tool(runtime, target="crm", tools={"crm": [refund]}),
    )
    call = ("refund", {"order_id": "17", "amount": 120.0}, "tu_1")
    cli = await _play(options, [call], ask_permission=True, pre_allowed=["mcp__crm__refund"])
    assert ran == []
    assert "no Aegis decision" in cli.model_saw["tu_1"]
    [refused] = audit.records  # the refused run, blocked by Aegis itself
    assert (refused["result_status"], refused["matched_rule"]) == ("blocked", "<aegis>")

    # Asked, the same callback decides and the tool runs once, with the decided input.
    cli = await _play(options, [call], ask_permission=True)
    assert ran == [{"order_id": "17", "amount": 120.0}]
    assert cli.model_saw["tu_1"] == "refunded 120.0"
    record = audit.records[-1]
    assert (record["result_status"], record["matched_rule"]) == ("success", "refunds")


async def test_an_input_changed_after_aegis_does_not_run() -> None:
    """Another PreToolUse hook's updatedInput is not what Aegis decided: it does not run."""
    from claude_agent_sdk import ClaudeAgentOptions, HookMatcher, create_sdk_mcp_server

    from aegis.adapters.claude_agent_sdk import hooks

    async def more(input: Any, tool_use_id: Any, context: Any) -> dict[str, Any]:
        changed = {**input["tool_input"], "amount": 9000.0}
        decided = {"permissionDecision": "allow", "updatedInput": changed}
        return {"hookSpecificOutput": {"hookEventName": "PreToolUse", **decided}}

    ran: list[dict[str, Any]] = []
    refund = _refund_tool(ran)
    audit = InMemoryAuditLog()
    governed = hooks(
        make_runtime(lambda d: True, audit=audit), target="crm", tools={"crm": [refund]}
    )
    governed["PreToolUse"].append(HookMatcher(hooks=[more]))
    options = ClaudeAgentOptions(
        mcp_servers={"crm": create_sdk_mcp_server("crm", tools=[refund])},
        hooks=governed,  # type: ignore[arg-type]
    )
    cli = await _play(options, [("refund", {"order_id": "17", "amount": 120.0}, "tu_1")])
    assert ran == []
    assert "no Aegis decision" in cli.model_saw["tu_1"]
    refused, record = audit.records  # the run with the other input; then the call
    assert (refused["action_params"]["amount"], refused["result_status"]) == (9000.0, "blocked")
    assert (record["action_params"]["amount"], record["result_status"]) == (120.0, "failed")


async def test_a_governed_tool_served_without_the_gate_does_not_run() -> None:
    """Once hooks() covers a tool, a query that does not use those hooks cannot run it."""
    from claude_agent_sdk import ClaudeAgentOptions, create_sdk_mcp_server

    from aegis.adapters.claude_agent_sdk import hooks

    ran: list[dict[str, Any]] = []
    refund = _refund_tool(ran)
    hooks(make_runtime(lambda d: True), target="crm", tools={"crm": [refund]})
    ungoverned = ClaudeAgentOptions(
        mcp_servers={"crm": create_sdk_mcp_server("crm", tools=[refund])}
    )
    cli = await _play(ungoverned, [("refund", {"order_id": "17", "amount": 120.0}, "tu_1")])
    assert ran == []
    assert "no Aegis decision" in cli.model_saw["tu_1"]


async def test_a_run_allowed_but_never_made_does_not_outlive_the_turn() -> None:
    """Aegis allows; the user's own hook denies; the run is withdrawn and the call recorded.

    No PostToolUse comes for a call Claude Code did not run, so the turn's
    end (Stop) closes it: a later query serving the tool without the gate
    cannot use the run Aegis allowed.
    """
    from claude_agent_sdk import ClaudeAgentOptions, HookMatcher, create_sdk_mcp_server

    from aegis.adapters.claude_agent_sdk import hooks

    async def users_own(input: Any, tool_use_id: Any, context: Any) -> dict[str, Any]:
        denied = {"permissionDecision": "deny", "permissionDecisionReason": "not today"}
        return {"hookSpecificOutput": {"hookEventName": "PreToolUse", **denied}}

    ran: list[dict[str, Any]] = []
    refund = _refund_tool(ran)
    audit = InMemoryAuditLog()
    governed = hooks(
        make_runtime(lambda d: True, audit=audit), target="crm", tools={"crm": [refund]}
    )
    governed["PreToolUse"].append(HookMatcher(hooks=[users_own]))
    server = {"crm": create_sdk_mcp_server("crm", tools=[refund])}
    options = ClaudeAgentOptions(mcp_servers=server, hooks=governed)  # type: ignore[arg-type]
    args = {"order_id": "17", "amount": 120.0}
    cli = await _play(options, [("refund", args, "tu_1")])
    assert cli.model_saw["tu_1"] == "not today"
    [record] = audit.records
    assert (record["result_status"], record["context"]["tool_call_id"]) == ("failed", "tu_1")
    assert "not run" in str(record["result_error"])  # its run was never made

    cli = await _play(ClaudeAgentOptions(mcp_servers=server), [("refund", args, "tu_2")])
    assert ran == []
    assert "no Aegis decision" in cli.model_saw["tu_2"]


async def test_a_permitted_run_never_made_expires(monkeypatch: Any) -> None:
    """can_use_tool learns nothing after allowing: an unused run lapses after TICKET_SECONDS."""
    from claude_agent_sdk import ClaudeAgentOptions, PermissionResultDeny, create_sdk_mcp_server

    from aegis.adapters import claude_agent_sdk
    from aegis.adapters.claude_agent_sdk import can_use_tool

    now = [1000.0]
    monkeypatch.setattr(claude_agent_sdk, "_clock", lambda: now[0])
    ran: list[dict[str, Any]] = []
    refund = _refund_tool(ran)
    aegis = can_use_tool(make_runtime(lambda d: True), target="crm", tools={"crm": [refund]})

    async def then_the_user_says_no(name: str, input: Any, context: Any) -> Any:
        await aegis(name, input, context)
        return PermissionResultDeny(message="the user said no")

    server = {"crm": create_sdk_mcp_server("crm", tools=[refund])}
    options = ClaudeAgentOptions(mcp_servers=server, can_use_tool=then_the_user_says_no)
    args = {"order_id": "17", "amount": 120.0}
    cli = await _play(options, [("refund", args, "tu_1")], ask_permission=True)
    assert cli.model_saw["tu_1"] == "the user said no"

    now[0] += claude_agent_sdk.TICKET_SECONDS
    cli = await _play(ClaudeAgentOptions(mcp_servers=server), [("refund", args, "tu_2")])
    assert ran == []
    assert "no Aegis decision" in cli.model_saw["tu_2"]


def _interrupted_refund(ran: list[dict[str, Any]], started: asyncio.Event, release: Any) -> Any:
    """An in-process SDK tool that refunds, then waits for its payment API's answer.

    Its run is interrupted while it waits. With ``release`` (an event) the
    payment goes on whatever the interrupt, until ``release`` is set;
    without, the cancel ends the run.
    """
    from claude_agent_sdk import tool

    @tool("refund", "Refund an order.", {"order_id": str, "amount": float})
    async def refund(args: dict[str, Any]) -> dict[str, Any]:
        ran.append(dict(args))  # the money moves
        started.set()
        if release is None:
            await asyncio.Event().wait()  # the answer never comes before the cancel
        answer = asyncio.ensure_future(release.wait())
        while not answer.done():
            try:
                await asyncio.shield(answer)
            except asyncio.CancelledError:
                continue  # the payment is not left half done
        return {"content": [{"type": "text", "text": f"refunded {args['amount']}"}]}

    return refund


async def _interrupted(audit: InMemoryAuditLog, release: asyncio.Event | None) -> None:
    """One allowed refund whose run the user interrupts, the money moved; then the turn ends.

    With ``release``, the user's own ``Stop`` hook (after Aegis's) sets it,
    noting the audit records then, so the run ends while the query closes.
    """
    from claude_agent_sdk import ClaudeAgentOptions, HookMatcher, create_sdk_mcp_server

    from aegis.adapters.claude_agent_sdk import hooks

    ran: list[dict[str, Any]] = []
    started = asyncio.Event()
    refund = _interrupted_refund(ran, started, release)
    governed = hooks(
        make_runtime(lambda d: True, audit=audit), target="crm", tools={"crm": [refund]}
    )
    at_stop: list[list[str]] = []

    async def users_stop(input: Any, tool_use_id: Any, context: Any) -> dict[str, Any]:
        at_stop.append([r["kind"] for r in audit.records])
        if release is not None:
            release.set()  # the payment API answers at last
        return {}

    governed["Stop"].append(HookMatcher(hooks=[users_stop]))
    options = ClaudeAgentOptions(
        mcp_servers={"crm": create_sdk_mcp_server("crm", tools=[refund])},
        hooks=governed,  # type: ignore[arg-type]
    )
    args = {"order_id": "17", "amount": 120.0}
    cli = await _play(options, [("refund", args, "tu_1")], interrupt={"tu_1": started})
    assert "interrupted" in cli.model_saw["tu_1"]
    assert ran == [args]
    if release is not None:
        assert at_stop == [["start"]]  # Aegis's Stop hook left the record to the run


async def test_an_interrupted_run_is_not_recorded_as_not_run() -> None:
    """The user interrupts the refund mid-run: no PostToolUse, then Stop; the money moved.

    The call's run was made, so its record must not say "not run": it ends
    as failed, outcome unknown.
    """
    audit = InMemoryAuditLog()
    await _interrupted(audit, None)
    [record] = await _until_ended(audit)
    assert (record["result_status"], record["context"]["tool_call_id"]) == ("failed", "tu_1")
    assert "outcome unknown" in str(record["result_error"])
    assert "not run" not in str(record["result_error"])


async def test_a_run_still_under_way_at_stop_ends_its_record_after_it() -> None:
    """The interrupted refund goes on past the turn's Stop: its record ends after it, unknown."""
    audit = InMemoryAuditLog()
    await _interrupted(audit, asyncio.Event())
    [record] = await _until_ended(audit)
    assert (record["result_status"], record["context"]["tool_call_id"]) == ("failed", "tu_1")
    assert "outcome unknown" in str(record["result_error"])
    assert "not run" not in str(record["result_error"])


async def test_a_run_hung_at_stop_ends_its_record_after_run_timeout() -> None:
    """A run still under way at Stop that never ends: run_timeout ends the record, unknown."""
    from aegis.adapters.claude_agent_sdk import hooks

    started, release = asyncio.Event(), asyncio.Event()
    refund = _hanging_refund(started, release)
    audit = InMemoryAuditLog()
    given = hooks(
        make_runtime(lambda d: True, audit=audit),
        target="crm",
        tools={"crm": [refund]},
        run_timeout=0.05,
    )
    [[pre], [stop]] = (given[e][0].hooks for e in ("PreToolUse", "Stop"))
    args = {"order_id": "17", "amount": 120.0}
    call = {"tool_name": "mcp__crm__refund", "tool_input": args, "tool_use_id": "tu_1"}
    answer = await pre({**call, "session_id": "a"}, "tu_1", None)  # type: ignore[arg-type]
    assert answer["hookSpecificOutput"]["permissionDecision"] == "allow"  # type: ignore[typeddict-item]
    run = asyncio.ensure_future(refund.handler(args))
    await started.wait()
    try:
        await stop({"session_id": "a", "stop_hook_active": False}, None, None)  # type: ignore[arg-type]
        [record] = await _until_ended(audit)
    finally:
        release.set()
        await run
    assert "outcome unknown" in str(record["result_error"])
    assert "still under way" in str(record["result_error"])


async def test_stop_ends_an_unwatched_tools_call_outcome_unknown() -> None:
    """Claude Code's own tool, allowed, then Stop with no PostToolUse: Aegis saw no run either way.

    An interrupt may have stopped it mid-run, so the record must not say "not run".
    """
    from aegis.adapters.claude_agent_sdk import hooks

    audit = InMemoryAuditLog()
    given = hooks(make_runtime(lambda d: True, audit=audit), target="crm")
    [[pre], [stop]] = (given[e][0].hooks for e in ("PreToolUse", "Stop"))
    call = {"tool_name": "Bash", "tool_input": {"command": "ls"}, "tool_use_id": "tu_1"}
    answer = await pre({**call, "session_id": "a"}, "tu_1", None)  # type: ignore[arg-type]
    assert answer["hookSpecificOutput"]["permissionDecision"] == "allow"  # type: ignore[typeddict-item]
    await stop({"session_id": "a", "stop_hook_active": False}, None, None)  # type: ignore[arg-type]
    [record] = audit.records
    assert (record["kind"], record["result_status"]) == ("final", "failed")
    assert "outcome unknown" in str(record["result_error"])
    assert "not run" not in str(record["result_error"])


async def test_the_end_of_one_session_leaves_anothers_calls_alone() -> None:
    """One hooks() value serving two sessions: a Stop ends only its own session's calls."""
    from aegis.adapters.claude_agent_sdk import hooks

    ran: list[dict[str, Any]] = []
    refund = _refund_tool(ran)
    audit = InMemoryAuditLog()
    given = hooks(make_runtime(lambda d: True, audit=audit), target="crm", tools={"crm": [refund]})
    [[pre], [post], [stop]] = (given[e][0].hooks for e in ("PreToolUse", "PostToolUse", "Stop"))
    args = {"order_id": "17", "amount": 120.0}
    call = {"tool_name": "mcp__crm__refund", "tool_input": args, "tool_use_id": "tu_1"}
    answer = await pre({**call, "session_id": "a"}, "tu_1", None)  # type: ignore[arg-type]
    assert answer["hookSpecificOutput"]["permissionDecision"] == "allow"  # type: ignore[typeddict-item]

    await stop({"session_id": "b", "stop_hook_active": False}, None, None)  # type: ignore[arg-type]
    result = await refund.handler(args)
    await post({**call, "session_id": "a", "tool_response": result}, "tu_1", None)  # type: ignore[arg-type]
    assert ran == [args]
    [record] = audit.records
    assert record["result_status"] == "success"


async def test_a_refused_run_of_an_in_process_tool_is_recorded_as_blocked() -> None:
    """A run no decision covers is refused and lands in the audit trail, blocked by Aegis."""
    from claude_agent_sdk import ClaudeAgentOptions, create_sdk_mcp_server

    from aegis.adapters.claude_agent_sdk import hooks

    ran: list[dict[str, Any]] = []
    refund = _refund_tool(ran)
    audit = InMemoryAuditLog()
    hooks(make_runtime(lambda d: True, audit=audit), target="crm", tools={"crm": [refund]})
    ungoverned = ClaudeAgentOptions(
        mcp_servers={"crm": create_sdk_mcp_server("crm", tools=[refund])}
    )
    args = {"order_id": "17", "amount": 120.0}
    cli = await _play(ungoverned, [("refund", args, "tu_1")])
    assert ran == []
    assert "no Aegis decision" in cli.model_saw["tu_1"]
    [record] = audit.records
    assert (
        record["action_type"],
        record["action_target"],
        record["action_params"],
        record["result_status"],
        record["matched_rule"],
    ) == ("refund", "crm", args, "blocked", "<aegis>")
    assert "no Aegis decision" in str(record["result_error"])


async def _until_ended(audit: InMemoryAuditLog) -> list[dict[str, Any]]:
    """The records once every one has its final; fails if they do not within 10 seconds."""
    for _ in range(1000):
        records = audit.records
        if records and all(r["kind"] == "final" for r in records):
            return records
        await asyncio.sleep(0.01)
    raise AssertionError(f"a record still has no final: {audit.records}")


@pytest.mark.parametrize("cancels", [True, False], ids=["cancelled", "ignored"])
async def test_an_approval_after_the_hook_timed_out_ends_the_record(cancels: bool) -> None:
    """The reviewer answers after Claude Code gave up on the hook and ended the turn.

    Claude Code blocked the call (its hook timed out) and will never run it,
    and no later turn comes: the call's record ends as failed, not run, when
    the yes arrives, whether Claude Code cancelled the hook's request or
    ignored its late answer.
    """
    from claude_agent_sdk import ClaudeAgentOptions, create_sdk_mcp_server

    from aegis.adapters.claude_agent_sdk import hooks

    answer = asyncio.Event()

    async def late_reviewer(decision: Any) -> bool:
        await answer.wait()
        return True

    ran: list[dict[str, Any]] = []
    refund = _refund_tool(ran)
    audit = InMemoryAuditLog()
    governed = hooks(
        make_runtime(late_reviewer, audit=audit), target="crm", tools={"crm": [refund]}, timeout=0.2
    )
    options = ClaudeAgentOptions(
        mcp_servers={"crm": create_sdk_mcp_server("crm", tools=[refund])},
        hooks=governed,  # type: ignore[arg-type]
    )
    args = {"order_id": "17", "amount": 120.0}
    cli = await _play(options, [("refund", args, "tu_1")], cancel_late_hooks=cancels)
    assert "timed out" in cli.model_saw["tu_1"]
    answer.set()
    [record] = await _until_ended(audit)
    assert (record["result_status"], record["context"]["tool_call_id"]) == ("failed", "tu_1")
    assert "not run" in str(record["result_error"])

    # The late yes allowed no run either.
    ungoverned = ClaudeAgentOptions(mcp_servers=options.mcp_servers)
    cli = await _play(ungoverned, [("refund", args, "tu_2")])
    assert ran == []
    assert "no Aegis decision" in cli.model_saw["tu_2"]


async def test_a_decision_after_the_hooks_timeout_is_refused(monkeypatch: Any) -> None:
    """No Stop, no cancel: a yes later than the hook's timeout is refused and recorded failed."""
    from aegis.adapters import claude_agent_sdk
    from aegis.adapters.claude_agent_sdk import hooks

    now = [1000.0]
    monkeypatch.setattr(claude_agent_sdk, "_clock", lambda: now[0])

    def slow_reviewer(decision: Any) -> bool:
        now[0] += 120.0  # past the default timeout Claude Code waits for a hook
        return True

    ran: list[dict[str, Any]] = []
    refund = _refund_tool(ran)
    audit = InMemoryAuditLog()
    given = hooks(make_runtime(slow_reviewer, audit=audit), target="crm", tools={"crm": [refund]})
    [pre] = given["PreToolUse"][0].hooks
    args = {"order_id": "17", "amount": 120.0}
    call = {"tool_name": "mcp__crm__refund", "tool_input": args, "tool_use_id": "tu_1"}
    answer = await pre({**call, "session_id": "a"}, "tu_1", None)  # type: ignore[arg-type]
    assert answer["hookSpecificOutput"]["permissionDecision"] == "deny"  # type: ignore[typeddict-item]
    [record] = audit.records
    assert (record["result_status"], record["context"]["tool_call_id"]) == ("failed", "tu_1")
    assert "timeout" in str(record["result_error"])


async def test_an_allowed_run_that_lapses_unused_ends_its_record(monkeypatch: Any) -> None:
    """Allowed, then neither PostToolUse nor Stop (Claude Code gone): the lapse ends the record."""
    from aegis.adapters import claude_agent_sdk
    from aegis.adapters.claude_agent_sdk import hooks

    monkeypatch.setattr(claude_agent_sdk, "TICKET_SECONDS", 0.05)
    ran: list[dict[str, Any]] = []
    refund = _refund_tool(ran)
    audit = InMemoryAuditLog()
    given = hooks(make_runtime(lambda d: True, audit=audit), target="crm", tools={"crm": [refund]})
    [pre] = given["PreToolUse"][0].hooks
    args = {"order_id": "17", "amount": 120.0}
    call = {"tool_name": "mcp__crm__refund", "tool_input": args, "tool_use_id": "tu_1"}
    answer = await pre({**call, "session_id": "a"}, "tu_1", None)  # type: ignore[arg-type]
    assert answer["hookSpecificOutput"]["permissionDecision"] == "allow"  # type: ignore[typeddict-item]
    [record] = await _until_ended(audit)
    assert (record["result_status"], record["context"]["tool_call_id"]) == ("failed", "tu_1")
    assert "lapsed" in str(record["result_error"])
    with pytest.raises(Exception, match="no Aegis decision"):
        await refund.handler(args)
    assert ran == []


async def test_a_run_that_expired_unused_lapses_as_not_run(monkeypatch: Any) -> None:
    """A refused run sweeps the call's expired run away before its lapse fires: still not run.

    Past its deadline the run is no longer allowed, and any run of the tool
    drops it; that is no use of it, so the lapse says "not run".
    """
    from aegis.adapters import claude_agent_sdk
    from aegis.adapters.claude_agent_sdk import hooks

    now = [1000.0]
    monkeypatch.setattr(claude_agent_sdk, "_clock", lambda: now[0])
    monkeypatch.setattr(claude_agent_sdk, "TICKET_SECONDS", 0.05)
    monkeypatch.setattr(claude_agent_sdk, "OUTCOME_SECONDS", 0.05)
    ran: list[dict[str, Any]] = []
    refund = _refund_tool(ran)
    audit = InMemoryAuditLog()
    given = hooks(make_runtime(lambda d: True, audit=audit), target="crm", tools={"crm": [refund]})
    [pre] = given["PreToolUse"][0].hooks
    args = {"order_id": "17", "amount": 120.0}
    call = {"tool_name": "mcp__crm__refund", "tool_input": args, "tool_use_id": "tu_1"}
    answer = await pre({**call, "session_id": "a"}, "tu_1", None)  # type: ignore[arg-type]
    assert answer["hookSpecificOutput"]["permissionDecision"] == "allow"  # type: ignore[typeddict-item]
    now[0] += 1.0  # its deadline passed; the lapse's timer has not fired yet
    with pytest.raises(Exception, match="no Aegis decision"):
        await refund.handler(args)
    records = {r["context"].get("tool_call_id"): r for r in await _until_ended(audit)}
    assert ran == []
    assert records[None]["result_status"] == "blocked"  # the refused run
    assert "lapsed" in str(records["tu_1"]["result_error"])


async def test_a_run_on_another_calls_ticket_is_not_recorded_as_not_run(
    monkeypatch: Any,
) -> None:
    """Two calls with one input: A is allowed and then denied, B runs, slower than its ticket.

    A run names no call, so B's run uses A's ticket (the oldest for its
    input) and B's own is still held when it lapses mid-run: the lapse must
    not end B's record as not run. B's PostToolUse records the run; the
    turn's Stop ends A, which never ran.
    """
    from claude_agent_sdk import ClaudeAgentOptions, HookMatcher, create_sdk_mcp_server, tool

    from aegis.adapters import claude_agent_sdk
    from aegis.adapters.claude_agent_sdk import hooks

    monkeypatch.setattr(claude_agent_sdk, "TICKET_SECONDS", 1.0)
    ran: list[dict[str, Any]] = []

    @tool("refund", "Refund an order.", {"order_id": str, "amount": float})
    async def slow_refund(args: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(1.2)  # outlives the ticket of the call it runs for
        ran.append(dict(args))
        return {"content": [{"type": "text", "text": f"refunded {args['amount']}"}]}

    async def users_own(input: Any, tool_use_id: Any, context: Any) -> dict[str, Any]:
        if input["tool_use_id"] != "tu_A":
            return {}
        denied = {"permissionDecision": "deny", "permissionDecisionReason": "not A"}
        return {"hookSpecificOutput": {"hookEventName": "PreToolUse", **denied}}

    audit = InMemoryAuditLog()
    governed = hooks(
        make_runtime(lambda d: True, audit=audit), target="crm", tools={"crm": [slow_refund]}
    )
    governed["PreToolUse"].append(HookMatcher(hooks=[users_own]))
    options = ClaudeAgentOptions(
        mcp_servers={"crm": create_sdk_mcp_server("crm", tools=[slow_refund])},
        hooks=governed,  # type: ignore[arg-type]
    )
    args = {"order_id": "17", "amount": 120.0}
    cli = await _play(options, [("refund", args, "tu_A"), ("refund", args, "tu_B")])
    assert (cli.model_saw["tu_A"], cli.model_saw["tu_B"]) == ("not A", "refunded 120.0")
    assert ran == [args]
    records = {r["context"]["tool_call_id"]: r for r in await _until_ended(audit)}
    assert records["tu_B"]["result_status"] == "success"
    assert records["tu_A"]["result_status"] == "failed"
    assert "lapsed" not in str(records["tu_A"]["result_error"])  # Stop ended it, not a lapse


async def _two_calls_one_run(
    monkeypatch: Any,
    audit: InMemoryAuditLog,
    outcome_seconds: float,
    release: asyncio.Event | None = None,
) -> tuple[Any, Any, asyncio.Future[Any]]:
    """Calls A and B with one input are allowed and one run is made; then nothing comes.

    The run uses A's ticket (the oldest) and marks B's; both tickets lapse
    half a second after the decisions. With ``release``, the run lasts until
    it is set. The PostToolUse hook, the input and the run are returned.
    """
    from claude_agent_sdk import tool

    from aegis.adapters import claude_agent_sdk
    from aegis.adapters.claude_agent_sdk import hooks

    monkeypatch.setattr(claude_agent_sdk, "TICKET_SECONDS", 0.5)
    monkeypatch.setattr(claude_agent_sdk, "OUTCOME_SECONDS", outcome_seconds)
    ran: list[dict[str, Any]] = []

    @tool("refund", "Refund an order.", {"order_id": str, "amount": float})
    async def refund(args: dict[str, Any]) -> dict[str, Any]:
        if release is not None:
            await release.wait()
        ran.append(dict(args))
        return {"content": [{"type": "text", "text": f"refunded {args['amount']}"}]}

    given = hooks(make_runtime(lambda d: True, audit=audit), target="crm", tools={"crm": [refund]})
    [pre] = given["PreToolUse"][0].hooks
    [post] = given["PostToolUse"][0].hooks
    args = {"order_id": "17", "amount": 120.0}
    for tu in ("tu_A", "tu_B"):
        call = {"tool_name": "mcp__crm__refund", "tool_input": args, "tool_use_id": tu}
        answer = await pre({**call, "session_id": "a"}, tu, None)  # type: ignore[arg-type]
        assert answer["hookSpecificOutput"]["permissionDecision"] == "allow"  # type: ignore[typeddict-item]
    run = asyncio.ensure_future(refund.handler(args))
    if release is None:
        await run
        assert ran == [args]
    return post, args, run


async def test_a_marked_run_that_lapses_with_no_word_ends_outcome_unknown(
    monkeypatch: Any,
) -> None:
    """Claude Code gone after a run (no PostToolUse, no Stop): each record ends once, unknown.

    The run may have been either call's, so neither record may say "not
    run"; a PostToolUse after the records ended writes no second final.
    """
    audit = InMemoryAuditLog()
    post, args, _ = await _two_calls_one_run(monkeypatch, audit, 0.05)
    records = {r["context"]["tool_call_id"]: r for r in await _until_ended(audit)}
    assert sorted(records) == ["tu_A", "tu_B"]
    for record in records.values():
        assert record["result_status"] == "failed"
        assert "outcome unknown" in str(record["result_error"])
        assert "not run" not in str(record["result_error"])
    written = audit.memory.head().count
    late = {"tool_name": "mcp__crm__refund", "tool_input": args, "tool_use_id": "tu_B"}
    await post({**late, "tool_response": "refunded", "session_id": "a"}, "tu_B", None)
    await asyncio.sleep(0.1)
    assert audit.memory.head().count == written  # no second final


async def test_a_marked_run_whose_post_tool_use_comes_in_time_records_it(
    monkeypatch: Any,
) -> None:
    """The tickets lapse, but PostToolUse comes before OUTCOME_SECONDS: the record says success."""
    audit = InMemoryAuditLog()
    post, args, _ = await _two_calls_one_run(monkeypatch, audit, 30.0)
    await asyncio.sleep(0.6)  # both tickets lapse; the records wait for Claude Code's word
    assert not [r for r in audit.records if r["kind"] == "final"]
    done = {"tool_name": "mcp__crm__refund", "tool_input": args, "tool_use_id": "tu_B"}
    await post({**done, "tool_response": "refunded", "session_id": "a"}, "tu_B", None)
    [record] = [r for r in audit.records if r["kind"] == "final"]
    assert audit.memory.head().count == 3  # two starts, one final
    assert (record["context"]["tool_call_id"], record["result_status"]) == ("tu_B", "success")


async def test_a_marked_run_waits_for_the_word_until_the_last_run_with_its_input_ends(
    monkeypatch: Any,
) -> None:
    """The tickets lapse mid-run: the wait for Claude Code's word starts when the run ends."""
    audit = InMemoryAuditLog()
    release = asyncio.Event()
    _, _, run = await _two_calls_one_run(monkeypatch, audit, 0.05, release)
    await asyncio.sleep(0.8)  # the tickets lapsed 0.3 s ago, far past OUTCOME_SECONDS
    assert not [r for r in audit.records if r["kind"] == "final"]
    release.set()
    await run
    records = await _until_ended(audit)
    assert [r["result_status"] for r in records] == ["failed", "failed"]
    assert all("outcome unknown" in str(r["result_error"]) for r in records)


def _hanging_refund(started: asyncio.Event, release: asyncio.Event) -> Any:
    """An in-process SDK tool whose run hangs until ``release`` is set."""
    from claude_agent_sdk import tool

    @tool("refund", "Refund an order.", {"order_id": str, "amount": float})
    async def refund(args: dict[str, Any]) -> dict[str, Any]:
        started.set()
        await release.wait()
        return {"content": [{"type": "text", "text": f"refunded {args['amount']}"}]}

    return refund


async def test_a_hung_run_ends_its_record_outcome_unknown(monkeypatch: Any) -> None:
    """The tool never returns and Claude Code never says: run_timeout ends the record, unknown."""
    from aegis.adapters import claude_agent_sdk
    from aegis.adapters.claude_agent_sdk import hooks

    monkeypatch.setattr(claude_agent_sdk, "TICKET_SECONDS", 0.05)
    started, release = asyncio.Event(), asyncio.Event()
    refund = _hanging_refund(started, release)
    audit = InMemoryAuditLog()
    given = hooks(
        make_runtime(lambda d: True, audit=audit),
        target="crm",
        tools={"crm": [refund]},
        run_timeout=0.05,
    )
    [pre] = given["PreToolUse"][0].hooks
    args = {"order_id": "17", "amount": 120.0}
    call = {"tool_name": "mcp__crm__refund", "tool_input": args, "tool_use_id": "tu_1"}
    answer = await pre({**call, "session_id": "a"}, "tu_1", None)  # type: ignore[arg-type]
    assert answer["hookSpecificOutput"]["permissionDecision"] == "allow"  # type: ignore[typeddict-item]
    run = asyncio.ensure_future(refund.handler(args))
    await started.wait()
    try:
        [record] = await _until_ended(audit)
    finally:
        release.set()
        await run
    assert (record["result_status"], record["context"]["tool_call_id"]) == ("failed", "tu_1")
    assert "outcome unknown" in str(record["result_error"])
    assert "not run" not in str(record["result_error"])


def test_run_timeout_must_be_a_positive_number_of_seconds() -> None:
    """A run_timeout that is not a positive, finite number is refused at once."""
    from aegis.adapters.claude_agent_sdk import hooks
    from aegis.errors import ConfigurationError

    for bad in (0, -1.0, float("inf"), float("nan"), True, "30"):
        with pytest.raises(ConfigurationError, match="run_timeout"):
            hooks(make_runtime(), target="crm", run_timeout=bad)  # type: ignore[arg-type]


async def test_closing_the_hooks_ends_open_records_and_cancels_every_timer(
    monkeypatch: Any,
) -> None:
    """At close, each open record ends outcome unknown, no Aegis timer is left, nothing more runs.

    Call tu_1 is a watched tool whose run hangs past its lapse (a hung-run
    timer and a wait for the run's end are pending); tu_2 is one of Claude
    Code's own tools, allowed, with no word to come. A call asked about
    after the close is denied and recorded as blocked.
    """
    from aegis.adapters import claude_agent_sdk
    from aegis.adapters.claude_agent_sdk import hooks

    monkeypatch.setattr(claude_agent_sdk, "TICKET_SECONDS", 0.05)
    loop = asyncio.get_running_loop()
    timers: list[asyncio.TimerHandle] = []
    call_later = loop.call_later

    def noting(delay: float, callback: Any, *args: Any, **kwargs: Any) -> Any:
        timer = call_later(delay, callback, *args, **kwargs)
        if getattr(callback, "__module__", "").startswith("aegis."):
            timers.append(timer)
        return timer

    monkeypatch.setattr(loop, "call_later", noting)
    started, release = asyncio.Event(), asyncio.Event()
    refund = _hanging_refund(started, release)
    audit = InMemoryAuditLog()
    governed = hooks(
        make_runtime(lambda d: True, audit=audit), target="crm", tools={"crm": [refund]}
    )
    [pre] = governed["PreToolUse"][0].hooks
    args = {"order_id": "17", "amount": 120.0}
    calls = [
        {"tool_name": "mcp__crm__refund", "tool_input": args, "tool_use_id": "tu_1"},
        {"tool_name": "Bash", "tool_input": {"command": "ls"}, "tool_use_id": "tu_2"},
    ]
    for call in calls:
        tu = str(call["tool_use_id"])
        answer = await pre({**call, "session_id": "a"}, tu, None)  # type: ignore[arg-type]
        assert answer["hookSpecificOutput"]["permissionDecision"] == "allow"  # type: ignore[typeddict-item]
    run = asyncio.ensure_future(refund.handler(args))
    await started.wait()
    for _ in range(1000):  # the lapse, then the bound on the hung run
        if len(timers) == 2:
            break
        await asyncio.sleep(0.01)
    assert len(timers) == 2, "the lapse found the run under way and bounded it"

    async with governed:
        pass
    records = {r["context"]["tool_call_id"]: r for r in audit.records if r["kind"] == "final"}
    assert sorted(records) == ["tu_1", "tu_2"]
    for record in records.values():
        assert record["result_status"] == "failed"
        assert "outcome unknown" in str(record["result_error"])
    assert all(timer.cancelled() for timer in timers)
    release.set()
    await run  # the hung run ends at last: nothing waits for it any more
    assert len(timers) == 2

    late = {"tool_name": "mcp__crm__refund", "tool_input": args, "tool_use_id": "tu_3"}
    answer = await pre({**late, "session_id": "a"}, "tu_3", None)  # type: ignore[arg-type]
    assert answer["hookSpecificOutput"]["permissionDecision"] == "deny"  # type: ignore[typeddict-item]
    record = audit.records[-1]
    assert (record["result_status"], record["matched_rule"]) == ("blocked", "<aegis>")


async def test_a_run_that_ends_after_all_drops_its_hung_run_bound(monkeypatch: Any) -> None:
    """The bound on a hung run is cancelled when the run ends; Claude Code's word is awaited.

    Otherwise a run_timeout shorter than OUTCOME_SECONDS would end the record
    saying the run was still under way when it was not.
    """
    from aegis.adapters import claude_agent_sdk
    from aegis.adapters.claude_agent_sdk import hooks

    monkeypatch.setattr(claude_agent_sdk, "TICKET_SECONDS", 0.05)
    loop = asyncio.get_running_loop()
    timers: list[tuple[Any, asyncio.TimerHandle]] = []
    call_later = loop.call_later

    def noting(delay: float, callback: Any, *args: Any, **kwargs: Any) -> Any:
        timer = call_later(delay, callback, *args, **kwargs)
        if getattr(callback, "__module__", "").startswith("aegis."):
            timers.append((args[-1] if args else None, timer))
        return timer

    monkeypatch.setattr(loop, "call_later", noting)
    started, release = asyncio.Event(), asyncio.Event()
    refund = _hanging_refund(started, release)
    audit = InMemoryAuditLog()
    governed = hooks(
        make_runtime(lambda d: True, audit=audit), target="crm", tools={"crm": [refund]}
    )
    [pre] = governed["PreToolUse"][0].hooks
    args = {"order_id": "17", "amount": 120.0}
    call = {"tool_name": "mcp__crm__refund", "tool_input": args, "tool_use_id": "tu_1"}
    await pre({**call, "session_id": "a"}, "tu_1", None)  # type: ignore[arg-type]
    run = asyncio.ensure_future(refund.handler(args))
    await started.wait()
    for _ in range(1000):  # the lapse, then the bound on the hung run
        if len(timers) == 2:
            break
        await asyncio.sleep(0.01)
    [_, (hung, bound)] = timers
    assert "still under way" in str(hung)
    release.set()
    await run
    [(word, _)] = timers[2:]  # the wait for Claude Code's word, now that the run is over
    assert "neither PostToolUse nor Stop" in str(word)
    assert bound.cancelled()
    await governed.aclose()


async def test_a_call_let_through_as_the_hooks_close_is_denied_and_recorded_not_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The session's owner closes the hooks in the very loop step a call is let through: the
    call, not yet open, is not seen by aclose(); the hook must still deny it (a closed
    session runs nothing) and its record end as not run, with no timer left behind."""
    from aegis.adapters import claude_agent_sdk
    from aegis.adapters.claude_agent_sdk import hooks

    ran: list[dict[str, Any]] = []
    refund = _refund_tool(ran)
    audit = InMemoryAuditLog()
    governed = hooks(
        make_runtime(lambda d: True, audit=audit), target="crm", tools={"crm": [refund]}
    )
    [pre] = governed["PreToolUse"][0].hooks
    closing: list[asyncio.Task[None]] = []
    too_late = claude_agent_sdk._Waiting.too_late

    def closed_meanwhile(self: Any) -> Any:
        answer = too_late(self)
        if not closing:  # another task closes the session as the call is let through
            closing.append(asyncio.ensure_future(governed.aclose()))
        return answer

    monkeypatch.setattr(claude_agent_sdk._Waiting, "too_late", closed_meanwhile)
    args = {"order_id": "17", "amount": 120.0}
    call = {"tool_name": "mcp__crm__refund", "tool_input": args, "tool_use_id": "tu_1"}
    answer = await pre({**call, "session_id": "a"}, "tu_1", None)  # type: ignore[arg-type]
    await closing[0]
    assert answer["hookSpecificOutput"]["permissionDecision"] == "deny"
    assert governed._gate.open == []
    for _ in range(100):  # its record is ended by the call's own task
        if audit.records[-1]["result_status"] is not None:
            break
        await asyncio.sleep(0.01)
    record = audit.records[-1]
    assert record["result_status"] == "failed"
    assert "did not run" in (record["result_error"] or "")
