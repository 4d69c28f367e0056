"""Exports one line per action, as agent-aegis does; the raw records on request; its CLI form."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

from aegis.core.action import Action
from aegis.core.chain import record_hash, verify_chain
from aegis.core.policy import Policy
from aegis.core.record import from_dict
from aegis.core.result import Result as ActionResult
from aegis.core.result import ResultStatus
from aegis.runtime.audit import AuditLogger

Invoke = Callable[..., Result]

POLICY = Policy.from_dict(
    {
        "version": "1",
        "defaults": {"approval": "auto", "risk_level": "low"},
        "rules": [{"name": "no-drop", "match": {"type": "drop"}, "approval": "block"}],
    }
)


@pytest.fixture
def trail(tmp_path: Path) -> Path:
    """Three actions: one ran (start and final), one blocked (final), one unfinished (start)."""
    path = tmp_path / "audit.db"

    async def record() -> None:
        with AuditLogger(path) as audit:
            ran = POLICY.evaluate(Action("read", "crm", {"id": 1}))
            token = await audit.record_start("s1", ran)
            done = ActionResult(ran.action, ResultStatus.SUCCESS, data={"rows": 1})
            await audit.record("s1", ran, result=done, start_token=token)
            blocked = POLICY.evaluate(Action("drop", "db"))
            await audit.record(
                "s1", blocked, result=ActionResult(blocked.action, ResultStatus.BLOCKED)
            )
            await audit.record_start("s2", POLICY.evaluate(Action("write", "crm")))  # then died

    asyncio.run(record())
    return path


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _rehashes(line: dict[str, object]) -> bool:
    return record_hash(line) == line["hash"]


def test_export_jsonl_writes_one_line_per_action(trail: Path, tmp_path: Path) -> None:
    """The final record of each finished action, and the start of the unfinished one, marked."""
    out = tmp_path / "actions.jsonl"
    with AuditLogger(trail) as audit:
        assert audit.export_jsonl(out) == 3
    lines = _lines(out)
    assert [(line["action_type"], line["kind"]) for line in lines] == [
        ("read", "final"),
        ("drop", "final"),
        ("write", "start"),
    ]
    assert [line.get("unfinished") for line in lines] == [None, None, True]
    assert lines[0]["result_status"] == "success"
    assert lines[2]["result_status"] is None
    assert all(_rehashes(line) for line in lines)


def test_export_jsonl_of_one_session(trail: Path, tmp_path: Path) -> None:
    """A session id keeps that session's actions only."""
    out = tmp_path / "s2.jsonl"
    with AuditLogger(trail) as audit:
        assert audit.export_jsonl(out, "s2") == 1
    assert _lines(out)[0]["unfinished"] is True


def test_records_exports_the_whole_chain_which_verifies(trail: Path, tmp_path: Path) -> None:
    """records=True writes every record, starts included, and the lines verify as a chain."""
    out = tmp_path / "records.jsonl"
    with AuditLogger(trail) as audit:
        assert audit.export_jsonl(out, records=True) == 4
        head = audit.head()
    lines = _lines(out)
    assert [line["kind"] for line in lines] == ["start", "final", "final", "start"]
    assert all("unfinished" not in line for line in lines)
    report = verify_chain([from_dict(line) for line in lines], head)
    assert report.ok, report.reason


@pytest.mark.parametrize(("raw", "count"), [(False, 3), (True, 4)])
def test_the_export_command_writes_actions_or_records(
    invoke: Invoke, trail: Path, tmp_path: Path, raw: bool, count: int
) -> None:
    """aegis audit export writes one line per action; --records every record."""
    out = tmp_path / "out.jsonl"
    args = ["audit", "export", "--db", str(trail), "-o", str(out)] + (["--records"] if raw else [])
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert len(_lines(out)) == count
    assert f"exported {count} {'records' if raw else 'actions'}" in result.stderr


@pytest.mark.parametrize(("raw", "count"), [(False, 3), (True, 4)])
def test_the_export_command_to_stdout(invoke: Invoke, trail: Path, raw: bool, count: int) -> None:
    """Exported to stdout, the same lines: the unfinished action marked, or every record."""
    result = invoke("audit", "export", "--db", str(trail), *(["--records"] if raw else []))
    assert result.exit_code == 0
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == count
    assert [line.get("unfinished") for line in lines].count(True) == (0 if raw else 1)


def test_the_agent_aegis_form_exports_and_says_how_many(
    invoke: Invoke, trail: Path, tmp_path: Path
) -> None:
    """`aegis audit --db DB --format jsonl -o FILE` prints agent-aegis's `Exported N entries`."""
    out = tmp_path / "legacy.jsonl"
    result = invoke("audit", "--db", str(trail), "--format", "jsonl", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"Exported 3 entries to {out}"
    assert len(_lines(out)) == 3


def test_the_agent_aegis_form_defaults_its_file(
    invoke: Invoke, trail: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without -o the export goes to aegis_audit.jsonl in the working folder, as agent-aegis's."""
    monkeypatch.chdir(tmp_path)
    result = invoke("audit", "--db", str(trail), "--format", "jsonl")
    assert result.exit_code == 0
    assert result.stdout.strip() == "Exported 3 entries to aegis_audit.jsonl"
    assert len(_lines(tmp_path / "aegis_audit.jsonl")) == 3


def test_the_agent_aegis_form_lists_as_json(invoke: Invoke, trail: Path) -> None:
    """`aegis audit --db DB --format json` prints the actions as a JSON array."""
    result = invoke("audit", "--db", str(trail), "--format", "json")
    assert result.exit_code == 0
    assert [entry["action_type"] for entry in json.loads(result.stdout)] == [
        "read",
        "drop",
        "write",
    ]


def test_group_options_before_a_subcommand_are_a_usage_error(invoke: Invoke, trail: Path) -> None:
    """--db before a subcommand is refused with where it goes, not silently ignored."""
    result = invoke("audit", "--db", str(trail), "verify")
    assert result.exit_code == 2
    assert "after the subcommand" in result.stderr


def test_bare_audit_shows_its_help(invoke: Invoke) -> None:
    """`aegis audit` alone lists its subcommands, as before."""
    result = invoke("audit")
    assert result.exit_code == 0
    assert "export" in result.stdout
    assert "verify" in result.stdout
