"""The README's integration examples run as written, against scripted models."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from aegis.runtime.audit import AuditLogger

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
HERE = Path(__file__).resolve().parent

#: what each example leaves to the reader (`model`, `client`), scripted: one refund of 120
PRELUDES = {
    "### LangChain and LangGraph": (
        "from adapters_support import scripted_chat_model\n"
        "model = scripted_chat_model([('refund', {'order_id': '17', 'amount': 120.0}, 'c1')])\n"
    ),
    "### OpenAI Agents SDK": (
        "from agents import set_tracing_disabled\n"
        "from adapters_support import ScriptedModel, function_call, output_text\n"
        "set_tracing_disabled(True)\n"
        "model = ScriptedModel([[function_call('refund', {'order_id': '17', 'amount': 120.0},"
        " 'c1')], [output_text('done')]])\n"
    ),
    "### Pydantic AI": (
        "from adapters_support import scripted_function_model\n"
        "model, _ = scripted_function_model([('refund', {'order_id': '17', 'amount': 120.0},"
        " 'c1')])\n"
    ),
    "### Claude Agent SDK": (
        "import functools\n"
        "import claude_agent_sdk\n"
        "from fake_claude_code import FakeClaudeCode\n"
        "# the claude CLI, scripted: the SDK talks to it through its Transport\n"
        "claude_agent_sdk.query = functools.partial(claude_agent_sdk.query, transport="
        "FakeClaudeCode([('refund', {'order_id': '17', 'amount': 120.0}, 'c1')],"
        " server='billing'))\n"
    ),
    "### Anthropic SDK": (
        "from adapters_support import mock_anthropic, text_block, tool_use\n"
        "client, _ = mock_anthropic([[tool_use('refund', {'order_id': '17', 'amount': 120.0},"
        " 'c1')], [text_block('done')]])\n"
    ),
}


def _example(heading: str) -> str:
    section = README.split("## Integrations", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section.split(heading, 1)[1], flags=re.S)[0]


@pytest.mark.parametrize("heading", list(PRELUDES))
def test_the_integration_example_runs(heading: str, tmp_path: Path) -> None:
    """The example asks at the terminal, runs the refund after the yes, and records it."""
    run_example(heading, PRELUDES[heading], tmp_path)


def run_example(heading: str, prelude: str, tmp_path: Path) -> None:
    """Run the README's example under ``heading`` after ``prelude``; check the yes ran it."""
    (tmp_path / "examples").mkdir()
    shutil.copy(ROOT / "examples" / "policy.yaml", tmp_path / "examples" / "policy.yaml")
    script = tmp_path / "example.py"
    script.write_text(
        f"import sys\nsys.path.insert(0, {str(HERE)!r})\n" + prelude + _example(heading),
        encoding="utf-8",
    )
    done = subprocess.run(
        [sys.executable, str(script)],
        input="y\n",
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Approve this action?" in done.stdout
    assert done.stdout.rstrip().endswith("done")
    with AuditLogger(str(tmp_path / "aegis_audit.db")) as audit:
        [record] = audit.get_log()
    assert (record["action_type"], record["action_target"]) == ("refund", "billing")
    assert (record["result_status"], record["human_decision"]) == ("success", "approved")
