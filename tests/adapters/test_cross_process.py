"""A suspended run is saved, a fresh process loads it, a reviewer approves, the run finishes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from aegis.runtime.audit import AuditLogger

AGENT = Path(__file__).with_name("resume_agent.py")
FRAMEWORKS = ["langchain", "openai"]


def _phase(framework: str, phase: str, folder: Path, *extra: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(AGENT), framework, phase, str(folder), *extra],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _ran(folder: Path) -> list[dict[str, Any]]:
    path = folder / "ran.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def _records(folder: Path) -> list[dict[str, Any]]:
    with AuditLogger(str(folder / "audit.db")) as audit:
        return audit.get_log()


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_run_suspends_and_another_process_finishes_it(framework: str, tmp_path: Path) -> None:
    """The first process stops at the refund; the second gets the yes and runs it exactly once."""
    started = _phase(framework, "start", tmp_path)
    assert started["suspended"]
    assert _ran(tmp_path) == []
    (tmp_path / "answer.json").write_text(json.dumps({"approve": True, "reviewer": "alice"}))
    finished = _phase(framework, "resume", tmp_path)
    assert finished == {"final": "done", "interrupted": False}
    assert _ran(tmp_path) == [{"order_id": "o-17", "amount": 20.0}]
    [record] = _records(tmp_path)
    assert (record["action_type"], record["result_status"]) == ("refund", "success")
    assert record["human_decision"] == "approved by alice"
    assert record["context"]["tool_call_id"] == "call_refund"
    assert record["context"]["agent"] == "support"


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_no_in_the_other_process_never_runs_the_tool(framework: str, tmp_path: Path) -> None:
    """A reviewer's no, given after the run was saved, is recorded and the tool never runs."""
    _phase(framework, "start", tmp_path)
    (tmp_path / "answer.json").write_text(json.dumps({"approve": False, "reviewer": "bob"}))
    finished = _phase(framework, "resume", tmp_path)
    assert finished["final"] == "done"
    assert _ran(tmp_path) == []
    [record] = _records(tmp_path)
    assert record["result_status"] == "denied"
    assert record["human_decision"] == "denied by bob"
