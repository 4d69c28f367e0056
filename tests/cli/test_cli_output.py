"""Terminal versus piped output: Rich tables and colour only on a terminal, NO_COLOR honoured."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from aegis.cli import _audit, _output
from aegis.runtime.audit import AuditLogger

Invoke = Callable[..., Result]


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the CLI believe stdout and stderr are terminals."""

    def always(stream: Any = None) -> bool:
        return True

    monkeypatch.setattr(_output, "is_terminal", always)
    monkeypatch.setattr(_audit, "is_terminal", always)


@pytest.mark.usefixtures("terminal")
def test_terminal_gets_a_table_and_colour(invoke: Invoke, policy_path: Path) -> None:
    """On a terminal, validate draws a table and colours the verdict line."""
    result = invoke("validate", str(policy_path))
    assert result.exit_code == 0
    assert "─" in result.stdout
    assert "Approval" in result.stdout
    assert "\x1b[32mok: 1 policy file is valid" in result.stdout


@pytest.mark.usefixtures("terminal")
def test_no_color_keeps_the_table_but_drops_ansi(
    invoke: Invoke, policy_path: Path, audit_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With NO_COLOR set, terminal output has tables but no escape codes at all."""
    monkeypatch.setenv("NO_COLOR", "1")
    for args in (
        ["validate", str(policy_path)],
        ["simulate", str(policy_path), "read:x", "delete:y"],
        ["audit", "list", "--db", str(audit_db)],
        ["audit", "stats", "--db", str(audit_db)],
        ["audit", "tail", "--db", str(audit_db)],
        ["audit", "show", "1", "--db", str(audit_db)],
        ["audit", "verify", "--db", str(audit_db)],
    ):
        result = invoke(*args)
        assert result.exit_code == 0, args
        assert "\x1b[" not in result.output, args


@pytest.mark.usefixtures("terminal")
def test_terminal_list_drops_wide_columns(invoke: Invoke, audit_db: Path) -> None:
    """On a terminal, list shows the short time and leaves session ids to `show`."""
    result = invoke("audit", "list", "--db", str(audit_db))
    assert "Session" not in result.stdout
    assert "read:crm" in result.stdout


@pytest.mark.usefixtures("terminal")
def test_terminal_list_is_capped_with_a_note(
    invoke: Invoke, audit_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A terminal table without --limit shows the newest TERMINAL_LIMIT and says so."""
    monkeypatch.setattr(_audit, "TERMINAL_LIMIT", 2)
    result = invoke("audit", "list", "--db", str(audit_db))
    assert "showing the newest 2 of 4 matching records" in result.stderr
    assert "delete:crm" in result.stdout
    assert "read:bil" in result.stdout  # the narrow test terminal wraps the rest
    assert "read:crm" not in result.stdout
    assert result.stdout.index("delete:crm") < result.stdout.index("read:bil")
    filtered = invoke("audit", "list", "--db", str(audit_db), "--type", "read")
    assert "showing the" not in filtered.stderr  # 2 reads match: all of them shown
    assert "read:crm" in filtered.stdout
    piped = invoke("audit", "list", "--db", str(audit_db), "--format", "jsonl")
    assert len(piped.stdout.splitlines()) == 4


@pytest.mark.usefixtures("terminal")
def test_export_with_progress_writes_the_same_lines(
    invoke: Invoke, audit_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The progress-bar export path writes exactly what export_jsonl writes."""
    monkeypatch.setattr(_audit, "PROGRESS_THRESHOLD", 1)
    shown = tmp_path / "shown.jsonl"
    result = invoke("audit", "export", "--db", str(audit_db), "-o", str(shown))
    assert result.exit_code == 0
    reference = tmp_path / "reference.jsonl"
    with AuditLogger(audit_db) as audit:
        audit.export_jsonl(reference)
    assert shown.read_bytes() == reference.read_bytes()


def test_piped_output_has_no_ansi_even_when_forced(
    invoke: Invoke, policy_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FORCE_COLOR does not put escape codes into piped, tab-separated output."""
    monkeypatch.setenv("FORCE_COLOR", "1")
    result = invoke("simulate", str(policy_path), "read:x", "delete:y")
    assert "\x1b[" not in result.output
    assert result.stdout.splitlines()[0].startswith("#\taction")


def test_json_text_writes_non_finite_floats_as_strings() -> None:
    """json_text turns NaN and the infinities into strings, even nested or as keys."""
    document = {"a": float("nan"), "b": [float("inf"), (float("-inf"), 1.5)], float("inf"): 0}
    text = _output.json_text(document)
    assert json.loads(text) == {
        "a": "NaN",
        "b": ["Infinity", ["-Infinity", 1.5]],
        "Infinity": 0,
    }


def test_json_text_leaves_finite_documents_alone() -> None:
    """A document without non-finite floats is written exactly as json.dumps writes it."""
    document = {"amount": 1.5, "tags": ["ä", None], "n": 10**20}
    assert _output.json_text(document, indent=2) == json.dumps(
        document, indent=2, ensure_ascii=False
    )
