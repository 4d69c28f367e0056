"""Approval handlers: the terminal prompt, auto-approval and callbacks."""

from __future__ import annotations

import asyncio
import io
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aegis.core.action import Action
from aegis.core.decision import Approval, PolicyDecision
from aegis.core.risk import RiskLevel
from aegis.errors import ConfigurationError
from aegis.runtime.approval import ApprovalHandler, AutoApprovalHandler, CLIApprovalHandler
from aegis.runtime.approval_callback import CallbackApprovalHandler

HERE = Path(__file__).parent
SCRIPT = HERE / "cli_approval_script.py"


def decision(
    risk: RiskLevel = RiskLevel.MEDIUM, action: Action | None = None, reason: str = ""
) -> PolicyDecision:
    action = action or Action("update", "crm", {"id": 7, "fields": {"tier": "gold"}}, "Upgrade 7")
    return PolicyDecision(action, risk, Approval.APPROVE, matched_rule="updates", reason=reason)


def ask(answers: str, **kwargs: Any) -> tuple[bool, str]:
    """Ask one question with ``answers`` as the whole input; return answer and output."""
    out = io.StringIO()
    handler = CLIApprovalHandler(input_stream=io.StringIO(answers), output_stream=out, **kwargs)
    answer = asyncio.run(handler.request_approval(decision()))
    return answer, out.getvalue()


# ---------------------------------------------------------------- the terminal prompt, in process


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        ("y\n", True),
        ("yes\n", True),
        ("  YES  \n", True),
        ("Y\n", True),
        ("n\n", False),
        ("No\n", False),
        ("maybe\nyes\n", True),
        ("\n\nn\n", False),
        ("yes please\nsure\nn\n", False),
        ("y", True),  # last line without newline
    ],
)
def test_cli_answers(answers: str, expected: bool) -> None:
    """y/yes and n/no (any case, stripped) answer; anything else is asked again."""
    assert ask(answers)[0] is expected


def test_cli_reasks_on_unclear_answer() -> None:
    """An unclear answer is quoted back with a request for y or n."""
    _, out = ask("maybe\ny\n")
    assert "Please answer y or n (got 'maybe')" in out


@pytest.mark.parametrize("answers", ["", "maybe\n"])
def test_cli_end_of_input_denies_by_raising(answers: str) -> None:
    """End of input before a clear answer raises EOFError (the runtime's denial)."""
    with pytest.raises(EOFError, match="closed"):
        ask(answers)


def test_cli_closed_stream_denies_by_raising() -> None:
    """A closed input stream is a failure to answer, not an approval."""
    stream = io.StringIO("y\n")
    stream.close()
    handler = CLIApprovalHandler(input_stream=stream, output_stream=io.StringIO())
    with pytest.raises(EOFError, match="cannot be read"):
        asyncio.run(handler.request_approval(decision()))


def test_cli_shows_what_is_being_approved() -> None:
    """The prompt shows type, target, params as JSON, description, risk, rule and reason."""
    out = io.StringIO()
    handler = CLIApprovalHandler(input_stream=io.StringIO("n\n"), output_stream=out)
    asyncio.run(handler.request_approval(decision(RiskLevel.HIGH, reason="after hours")))
    text = out.getvalue()
    for expected in ("update", "crm", '"tier": "gold"', "Upgrade 7", "HIGH", "updates",
                     "after hours", "[y/n]"):  # fmt: skip
        assert expected in text


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_cli_uses_rich_on_a_terminal() -> None:
    """On a terminal the facts are drawn in a rich panel."""
    out = _Terminal()
    handler = CLIApprovalHandler(input_stream=io.StringIO("y\n"), output_stream=out)
    assert asyncio.run(handler.request_approval(decision()))
    text = out.getvalue()
    assert "Approval required" in text
    assert "╭" in text
    assert "gold" in text


@pytest.fixture
def pipe() -> Iterator[tuple[io.TextIOWrapper, io.TextIOWrapper]]:
    read_fd, write_fd = os.pipe()
    reader = open(read_fd, encoding="utf-8")  # noqa: SIM115  # closed by the fixture
    writer = open(write_fd, "w", encoding="utf-8")  # noqa: SIM115  # closed by the fixture
    yield reader, writer
    writer.close()
    reader.close()


async def test_cli_timeout_denies_by_raising(
    pipe: tuple[io.TextIOWrapper, io.TextIOWrapper],
) -> None:
    """Without an answer within timeout, the handler raises TimeoutError and says so."""
    reader, _ = pipe
    out = io.StringIO()
    handler = CLIApprovalHandler(timeout=0.05, input_stream=reader, output_stream=out)
    with pytest.raises(TimeoutError, match=r"0\.05s"):
        await handler.request_approval(decision())
    assert "No answer within 0.05s: denied." in out.getvalue()


async def test_cli_late_answer_is_not_applied_to_the_next_question(
    pipe: tuple[io.TextIOWrapper, io.TextIOWrapper],
) -> None:
    """A 'y' typed after a question timed out does not approve the next question."""
    reader, writer = pipe
    out = io.StringIO()
    handler = CLIApprovalHandler(timeout=0.05, input_stream=reader, output_stream=out)
    with pytest.raises(TimeoutError):
        await handler.request_approval(decision())
    handler.timeout = None
    second = asyncio.ensure_future(handler.request_approval(decision()))
    writer.write("y\n")
    writer.flush()
    while "earlier question" not in out.getvalue():
        await asyncio.sleep(0.01)
    writer.write("n\n")
    writer.flush()
    assert await second is False


async def test_cli_does_not_block_the_event_loop(
    pipe: tuple[io.TextIOWrapper, io.TextIOWrapper],
) -> None:
    """Other tasks keep running while the handler waits for the person."""
    reader, writer = pipe
    handler = CLIApprovalHandler(input_stream=reader, output_stream=io.StringIO())
    pending = asyncio.ensure_future(handler.request_approval(decision()))
    ticks = 0
    for _ in range(5):
        await asyncio.sleep(0)
        ticks += 1
    assert ticks == 5
    assert not pending.done()
    writer.write("yes\n")
    writer.flush()
    assert await pending is True


async def test_cli_asks_concurrent_requests_one_at_a_time(
    pipe: tuple[io.TextIOWrapper, io.TextIOWrapper],
) -> None:
    """Concurrent requests are shown and answered one after the other, in order."""
    reader, writer = pipe
    out = io.StringIO()
    handler = CLIApprovalHandler(input_stream=reader, output_stream=out)
    first = decision(action=Action("update", "first"))
    second = decision(action=Action("update", "second"))
    both = asyncio.gather(handler.request_approval(first), handler.request_approval(second))
    while "first" not in out.getvalue():
        await asyncio.sleep(0.01)
    assert "second" not in out.getvalue()
    writer.write("y\n")
    writer.flush()
    while "second" not in out.getvalue():
        await asyncio.sleep(0.01)
    writer.write("n\n")
    writer.flush()
    assert await both == [True, False]


def test_cli_rejects_non_positive_timeout() -> None:
    """A timeout of zero or less is refused when the handler is built."""
    with pytest.raises(ConfigurationError, match="positive"):
        CLIApprovalHandler(timeout=0)


# ---------------------------------------------------------------- the terminal prompt, real process


def run_script(stdin: str, *args: str) -> tuple[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), *sys.path]))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    lines = proc.stdout.strip().splitlines()
    return lines[-2].removeprefix("STATUS "), lines[-1].removeprefix("HUMAN ")


@pytest.mark.parametrize(
    ("stdin", "status", "human"),
    [
        ("y\n", "success", "approved"),
        ("n\n", "denied", "denied"),
        ("maybe\nyes\n", "success", "approved"),
        ("", "denied", "denied: error: EOFError: no answer: the approval input stream is closed"),
    ],
)
def test_cli_in_a_real_process(stdin: str, status: str, human: str) -> None:
    """Through a subprocess with piped stdin: y approves, n denies, maybe re-asks, EOF denies."""
    assert run_script(stdin) == (status, human)


# ---------------------------------------------------------------- auto and callback handlers


async def test_auto_handler_approves_everything() -> None:
    """AutoApprovalHandler says yes whatever the risk."""
    handler = AutoApprovalHandler()
    for risk in RiskLevel:
        assert await handler.request_approval(decision(risk)) is True


@pytest.mark.parametrize(
    ("risk", "expected"),
    [(RiskLevel.LOW, True), (RiskLevel.MEDIUM, True), (RiskLevel.HIGH, False),
     (RiskLevel.CRITICAL, False)],
)  # fmt: skip
async def test_callback_handler_seed_example(risk: RiskLevel, expected: bool) -> None:
    """The documented lambda approves LOW and MEDIUM and denies the rest."""
    handler = CallbackApprovalHandler(callback=lambda d: d.risk_level.value <= 2)
    assert await handler.request_approval(decision(risk)) is expected


async def test_callback_handler_awaits_async_callbacks() -> None:
    """An async callback is awaited."""

    async def callback(d: PolicyDecision) -> bool:
        await asyncio.sleep(0)
        return d.action.target == "crm"

    assert await CallbackApprovalHandler(callback).request_approval(decision()) is True


@pytest.mark.parametrize("answer", [None, 1, "yes", 0.0])
async def test_callback_handler_refuses_non_bool(answer: Any) -> None:
    """A callback returning anything but a bool raises TypeError naming the value."""
    handler = CallbackApprovalHandler(lambda d: answer)
    with pytest.raises(TypeError, match="must return True or False"):
        await handler.request_approval(decision())


def test_callback_handler_needs_a_callable() -> None:
    """A non-callable callback is a ConfigurationError at construction."""
    with pytest.raises(ConfigurationError, match="callable"):
        CallbackApprovalHandler(True)  # type: ignore[arg-type]


def test_approval_handler_is_abstract() -> None:
    """ApprovalHandler cannot be used without implementing request_approval."""
    with pytest.raises(TypeError):
        ApprovalHandler()  # type: ignore[abstract]


# ---------------------------------------------------------------- what the agent cannot forge

_SPOOFS = [
    Action("read\x1b[2K", "crm\nRisk:        LOW", {"q": "x\x1b[1A"}, "ok\x1b[2K\x1b[1A fake"),
    Action("read", "crm\u202e", {"q": "SELECT 1 [black on black]; DROP TABLE users[/]"}, "[/bold]"),
]


@pytest.mark.parametrize("action", _SPOOFS)
@pytest.mark.parametrize("terminal", [False, True])
def test_agent_text_cannot_act_on_the_approvers_terminal(action: Action, terminal: bool) -> None:
    """Control characters and Rich markup in the action are shown as text, never obeyed."""
    out: io.StringIO = _Terminal() if terminal else io.StringIO()
    handler = CLIApprovalHandler(input_stream=io.StringIO("n\n"), output_stream=out)
    assert asyncio.run(handler.request_approval(decision(action=action))) is False
    text = out.getvalue()
    # Rich's own colours are SGR sequences ending in "m"; nothing else may reach the terminal.
    assert set(re.findall(r"\x1b\[[0-9;]*([A-Za-z])", text)) <= {"m"}
    assert "\u202e" not in text
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
    risk_lines = [line for line in plain.splitlines() if line.strip("│ ").startswith("Risk")]
    assert len(risk_lines) == 1
    assert "MEDIUM" in risk_lines[0]
    if "DROP TABLE" in str(action.params):
        assert "[black on black]" in text
        assert "DROP TABLE users" in text
