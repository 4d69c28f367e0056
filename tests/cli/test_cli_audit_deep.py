"""A hand-edited record whose JSON nests thousands of levels deep: one clear error, no traceback."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest
from cli_support import write_session
from click.testing import Result

from aegis.core.record import MAX_JSON_DEPTH, storable_json, to_dict
from aegis.runtime.audit import AuditLogger

Invoke = Callable[..., Result]

#: every command that reads the records' JSON fields, and how it fails
READERS = [
    ["audit", "list"],
    ["audit", "list", "--format", "json"],
    ["audit", "list", "--format", "jsonl"],
    ["audit", "show", "2"],
    ["audit", "show", "2", "--format", "json"],
    ["audit", "export"],
    ["audit", "export", "-o", "{out}"],
    ["audit", "tail"],
    ["replay", "{policy}"],
]


def _nest(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.fixture(params=[5000, MAX_JSON_DEPTH + 50], ids=["thousands", "past-the-limit"])
def deep_db(request: pytest.FixtureRequest, audit_db: Path) -> Path:
    """The session's database with record 2's params and result nested ``param`` levels deep."""
    with closing(sqlite3.connect(audit_db)) as conn, conn:
        conn.execute(
            "UPDATE audit_log SET action_params = ?, result_data = ? WHERE id = 2",
            (_nest(request.param), '{"a":' * request.param + "1" + "}" * request.param),
        )
    return audit_db


@pytest.mark.parametrize("args", READERS, ids="-".join)
def test_every_reader_gives_one_clear_error(
    invoke: Invoke, deep_db: Path, policy_path: Path, tmp_path: Path, args: list[str]
) -> None:
    """Listing, showing, exporting, tailing and replaying name the record; no RecursionError."""
    filled = [a.format(out=tmp_path / "out.jsonl", policy=policy_path) for a in args]
    result = invoke(*filled, "--db", str(deep_db))
    assert result.exit_code == 1
    assert "cannot read audit record 2: action_params and result_data nest more than" in (
        result.stderr
    )
    assert "edited by hand" in result.stderr
    assert "Traceback" not in result.output
    assert "Recursion" not in result.output


def test_verify_names_the_edited_record(invoke: Invoke, deep_db: Path) -> None:
    """verify reads the stored text as it is and reports the edit where the chain breaks."""
    result = invoke("audit", "verify", "--db", str(deep_db))
    assert result.exit_code == 1
    assert "broken at record 2" in result.stderr + result.stdout
    assert "Recursion" not in result.output


def test_counting_reads_no_json_and_still_works(invoke: Invoke, deep_db: Path) -> None:
    """stats and head do not decode the JSON fields, so they answer as usual."""
    assert invoke("audit", "stats", "--db", str(deep_db)).exit_code == 0
    assert invoke("audit", "head", "--db", str(deep_db)).exit_code == 0


def test_what_aegis_writes_nests_no_deeper_than_it_reads(tmp_path: Path) -> None:
    """A result nested 500 deep is stored cut at the limit, with a marker, and reads back."""
    value: list[object] = []
    inner = value
    for _ in range(500):
        inner.append([])
        inner = inner[0]  # type: ignore[assignment]  # one level down
    text = storable_json(value)
    assert text.count("[") == MAX_JSON_DEPTH
    write_session(tmp_path / "audit.db")
    with AuditLogger(tmp_path / "audit.db") as audit:
        [record] = audit.store.records(limit=1)
    decoded = to_dict(record._replace(result_data=text))["result_data"]
    for _ in range(MAX_JSON_DEPTH - 1):
        [decoded] = decoded
    assert decoded == ["<unstorable: nested too deeply>"]
