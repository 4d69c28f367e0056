"""``aegis audit list|show|export|verify|stats|tail`` and ``aegis demo``."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cli_support import SESSION, edit_database, write_session
from click.testing import Result

from aegis.core.action import Action
from aegis.core.chain import row_hash
from aegis.core.filters import Filters
from aegis.core.result import ResultStatus
from aegis.runtime.audit import AuditLogger
from aegis.runtime.audit_backend import record_hash

Invoke = Callable[..., Result]

SUBCOMMANDS = [["list"], ["show", "1"], ["export"], ["verify"], ["stats"], ["tail"]]


def _create_empty(db: Path) -> None:
    with AuditLogger(db) as audit:
        audit.count()  # the logger opens (and creates) the file on first use


def _rows(result: Result) -> list[list[str]]:
    return [line.split("\t") for line in result.stdout.splitlines()[1:]]


@pytest.mark.parametrize("args", SUBCOMMANDS, ids=lambda a: a[0])
def test_missing_database_is_named_and_not_created(
    invoke: Invoke, tmp_path: Path, args: list[str]
) -> None:
    """Every audit command refuses a missing --db with one line naming it and how to fix it."""
    missing = tmp_path / "nope.db"
    result = invoke("audit", *args, "--db", str(missing))
    assert result.exit_code == 1
    assert f"no audit database at {missing}; run `aegis demo`" in result.stderr
    assert "--db" in result.stderr
    assert not missing.exists()


def test_db_defaults_to_the_environment(
    invoke: Invoke, audit_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$AEGIS_DB is used when --db is not given."""
    monkeypatch.setenv("AEGIS_DB", str(audit_db))
    assert len(_rows(invoke("audit", "list"))) == 4


def test_list_prints_tab_separated_records(invoke: Invoke, audit_db: Path) -> None:
    """list prints a header and one tab-separated line per record, oldest first, no ANSI."""
    result = invoke("audit", "list", "--db", str(audit_db))
    assert result.exit_code == 0
    header = result.stdout.splitlines()[0].split("\t")
    assert header == [
        "id",
        "time",
        "session",
        "action",
        "risk",
        "approval",
        "rule",
        "status",
        "human",
    ]
    rows = _rows(result)
    assert [(r[0], r[3], r[7]) for r in rows] == [
        ("1", "read:crm", "success"),
        ("2", "refund:stripe", "success"),
        ("3", "delete:crm", "blocked"),
        ("4", "read:billing", "success"),
    ]
    assert rows[1][8] == "approved"
    assert "\x1b[" not in result.output


@pytest.mark.parametrize(
    ("options", "ids"),
    [
        (["--type", "read"], ["1", "4"]),
        (["--target", "crm"], ["1", "3"]),
        (["--risk", "critical"], ["3"]),
        (["--status", "blocked"], ["3"]),
        (["--session", "session-1", "--limit", "2"], ["1", "2"]),
        (["--session", "other"], []),
        (["--since", "2000-01-01", "--until", "2999-01-01"], ["1", "2", "3", "4"]),
        (["--since", "2999-01-01"], []),
    ],
)
def test_list_filters(invoke: Invoke, audit_db: Path, options: list[str], ids: list[str]) -> None:
    """Each filter narrows the listed records."""
    result = invoke("audit", "list", "--db", str(audit_db), *options)
    assert result.exit_code == 0
    assert [row[0] for row in _rows(result)] == ids


def test_list_bad_risk_is_a_usage_error(invoke: Invoke, audit_db: Path) -> None:
    """An unknown --risk value exits 2 listing the valid ones."""
    result = invoke("audit", "list", "--db", str(audit_db), "--risk", "severe")
    assert result.exit_code == 2
    assert "critical" in result.stderr


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_list_machine_formats_parse(invoke: Invoke, audit_db: Path, fmt: str) -> None:
    """--format json is one JSON array; jsonl one object per line; both keep every field."""
    result = invoke("audit", "list", "--db", str(audit_db), "--format", fmt)
    assert result.exit_code == 0
    if fmt == "json":
        records = json.loads(result.stdout)
    else:
        records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["id"] for r in records] == [1, 2, 3, 4]
    assert records[1]["action_params"] == {"amount": 40}
    assert all(record_hash(r) == r["hash"] for r in records)


def test_list_json_of_an_empty_database(invoke: Invoke, tmp_path: Path) -> None:
    """An empty database lists as an empty JSON array, and as nothing in a table."""
    db = tmp_path / "empty.db"
    _create_empty(db)
    assert json.loads(invoke("audit", "list", "--db", str(db), "--format", "json").stdout) == []
    table = invoke("audit", "list", "--db", str(db))
    assert table.exit_code == 0
    assert _rows(table) == []
    assert "no records" in table.stderr


def test_show_prints_every_field(invoke: Invoke, audit_db: Path) -> None:
    """show ID prints all fields of that record, params pretty-printed."""
    result = invoke("audit", "show", "2", "--db", str(audit_db))
    assert result.exit_code == 0
    for field in ("session_id", "action_desc", "human_decision", "prev_hash", "hash"):
        assert field in result.stdout
    assert "refund order 7" in result.stdout
    assert '"amount": 40' in result.stdout


def test_show_json(invoke: Invoke, audit_db: Path) -> None:
    """show --format json prints the record as JSON."""
    record = json.loads(
        invoke("audit", "show", "3", "--db", str(audit_db), "--format", "json").stdout
    )
    assert (record["id"], record["result_status"]) == (3, "blocked")


def test_show_unknown_id(invoke: Invoke, audit_db: Path) -> None:
    """show of an id that does not exist exits 1 and says how to find ids."""
    result = invoke("audit", "show", "99", "--db", str(audit_db))
    assert result.exit_code == 1
    assert "no record 99" in result.stderr
    assert "aegis audit list" in result.stderr


def test_export_writes_jsonl_that_verifies(invoke: Invoke, audit_db: Path, tmp_path: Path) -> None:
    """export -o writes one JSON line per action, each still matching its hash."""
    out = tmp_path / "out.jsonl"
    result = invoke("audit", "export", "--db", str(audit_db), "-o", str(out))
    assert result.exit_code == 0
    assert "exported 4 actions" in result.stderr
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in lines] == [1, 2, 3, 4]
    assert all(record_hash(r) == r["hash"] for r in lines)


def test_export_to_stdout_by_session(invoke: Invoke, tmp_path: Path) -> None:
    """export without -o writes JSONL to stdout; --session narrows it."""
    db = tmp_path / "two.db"
    write_session(db, session_id="a")
    write_session(db, SESSION[:1], session_id="b")
    result = invoke("audit", "export", "--db", str(db), "--session", "b")
    assert [json.loads(line)["session_id"] for line in result.stdout.splitlines()] == ["b"]


def test_verify_intact_chain_prints_the_head(invoke: Invoke, audit_db: Path) -> None:
    """verify exits 0 on an intact chain and prints the count and head to keep."""
    with AuditLogger(audit_db) as audit:
        head = audit.head()
    result = invoke("audit", "verify", "--db", str(audit_db))
    assert result.exit_code == 0
    assert "4 records verified" in result.stdout
    assert f"head: {head}" in result.stdout
    assert invoke("audit", "verify", "--db", str(audit_db), "--expect-head", head).exit_code == 0


def test_verify_tampered_record_exits_1_naming_it(invoke: Invoke, audit_db: Path) -> None:
    """Editing a row with sqlite3 makes verify exit 1 naming that record."""
    with sqlite3.connect(audit_db) as conn:
        conn.execute("UPDATE audit_log SET result_status = 'success' WHERE id = 3")
    result = invoke("audit", "verify", "--db", str(audit_db))
    assert result.exit_code == 1
    assert "audit chain broken at record 3" in result.stderr
    assert "record 3 was modified" in result.stderr


def test_verify_truncated_log_against_kept_head(invoke: Invoke, audit_db: Path) -> None:
    """With --expect-head, removing the last record is caught."""
    with AuditLogger(audit_db) as audit:
        head = audit.head()
    with sqlite3.connect(audit_db) as conn:
        conn.execute("DELETE FROM audit_log WHERE id = 4")
    assert invoke("audit", "verify", "--db", str(audit_db)).exit_code == 0
    result = invoke("audit", "verify", "--db", str(audit_db), "--expect-head", head)
    assert result.exit_code == 1
    assert "removed from the end" in result.stderr


def test_verify_without_a_key_or_head_says_a_forged_tail_passes(
    invoke: Invoke, audit_db: Path
) -> None:
    """A last record rewritten with its hash recomputed verifies; verify says what it proves.

    Without a key or a head kept elsewhere nothing anchors the chain: the
    command says so plainly, on every run, and in its JSON. The kept head
    catches the forgery.
    """
    with AuditLogger(audit_db) as audit:
        head = audit.head()
        last = audit.store.records(Filters(view="records"))
        forged = list(last)[-1]._replace(reason="forged")
    edit_database(
        audit_db,
        f"UPDATE audit_log SET reason = 'forged', hash = '{row_hash(forged)}' "
        f"WHERE id = {forged.id}",
    )
    result = invoke("audit", "verify", "--db", str(audit_db))
    assert result.exit_code == 0  # the forgery is consistent
    message = " ".join(result.stderr.split())
    assert "accidental damage only" in message
    assert "--expect-head" in message
    assert "--public-key" in message
    document = json.loads(
        invoke("audit", "verify", "--db", str(audit_db), "--format", "json").stdout
    )
    assert document["ok"] is True
    assert document["anchored"] is False
    caught = invoke("audit", "verify", "--db", str(audit_db), "--expect-head", head)
    assert caught.exit_code == 1
    assert "accidental damage only" not in " ".join(caught.stderr.split())


def test_verify_bad_head_is_a_usage_error(invoke: Invoke, audit_db: Path) -> None:
    """A malformed --expect-head exits 2, not with a traceback."""
    result = invoke("audit", "verify", "--db", str(audit_db), "--expect-head", "42:9f86...")
    assert result.exit_code == 2
    message = " ".join(result.stderr.split())
    assert "'--expect-head': '42:9f86...' is not a head" in message
    assert "`aegis audit head`" in message
    assert "expected_head" not in message  # the Python parameter's name means nothing here


def test_verify_json(invoke: Invoke, audit_db: Path) -> None:
    """verify --format json reports ok, checked, head and pending."""
    document = json.loads(
        invoke("audit", "verify", "--db", str(audit_db), "--format", "json").stdout
    )
    assert document["ok"] is True
    assert document["checked"] == 4
    assert document["pending"] == []
    assert document["anchored"] is False  # no head given, no key
    with AuditLogger(audit_db) as audit:
        head = str(audit.head())
    anchored = json.loads(
        invoke(
            "audit", "verify", "--db", str(audit_db), "--format", "json", "--expect-head", head
        ).stdout
    )
    assert anchored["anchored"] is True


def test_verify_empty_database(invoke: Invoke, tmp_path: Path) -> None:
    """An empty but existing database verifies with 0 records."""
    db = tmp_path / "empty.db"
    _create_empty(db)
    result = invoke("audit", "verify", "--db", str(db))
    assert result.exit_code == 0
    assert "0 records verified" in result.stdout


def test_verify_reports_unfinished_actions(invoke: Invoke, audit_db: Path) -> None:
    """Actions started but never finished are listed as a warning."""
    import asyncio

    from aegis.core.policy import Policy

    policy = Policy.from_dict({"defaults": {"approval": "auto"}})

    async def start() -> None:
        with AuditLogger(audit_db) as audit:
            await audit.record_start("crashed", policy.evaluate(Action("wipe", "disk")))

    asyncio.run(start())
    result = invoke("audit", "verify", "--db", str(audit_db))
    assert result.exit_code == 0
    assert "1 action started but never finished" in result.stderr
    assert "wipe:disk" in result.stderr


def test_not_an_audit_database(invoke: Invoke, tmp_path: Path) -> None:
    """A file that is not an audit database is one clear error, exit 1."""
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    result = invoke("audit", "verify", "--db", str(other))
    assert result.exit_code == 1
    assert "not an Aegis audit database" in result.stderr
    assert "Traceback" not in result.output


def test_stats_counts_by_field(invoke: Invoke, audit_db: Path) -> None:
    """stats counts records by status, risk, rule and action type."""
    rows = {(r[0], r[1]): int(r[2]) for r in _rows(invoke("audit", "stats", "--db", str(audit_db)))}
    assert rows[("result_status", "success")] == 3
    assert rows[("result_status", "blocked")] == 1
    assert rows[("risk_level", "LOW")] == 2
    assert rows[("matched_rule", "reads")] == 2
    assert rows[("action_type", "refund")] == 1


def test_stats_json(invoke: Invoke, audit_db: Path) -> None:
    """stats --format json has the total and one mapping per field."""
    document = json.loads(
        invoke("audit", "stats", "--db", str(audit_db), "--format", "json").stdout
    )
    assert document["total"] == 4
    assert document["risk_level"] == {"CRITICAL": 1, "HIGH": 1, "LOW": 2}


@pytest.mark.parametrize(
    ("lines", "ids"), [("2", ["3", "4"]), ("10", ["1", "2", "3", "4"]), ("0", [])]
)
def test_tail_shows_the_last_records(
    invoke: Invoke, audit_db: Path, lines: str, ids: list[str]
) -> None:
    """tail -n N prints the last N records, oldest first."""
    result = invoke("audit", "tail", "--db", str(audit_db), "-n", lines)
    assert result.exit_code == 0
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == ids


def test_tail_by_session(invoke: Invoke, tmp_path: Path) -> None:
    """tail --session shows only that session's last records."""
    db = tmp_path / "two.db"
    write_session(db, session_id="a")
    write_session(db, SESSION[:2], session_id="b")
    result = invoke("audit", "tail", "--db", str(db), "--session", "a", "-n", "1")
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == ["4"]


def test_tail_follow_prints_new_records(
    invoke: Invoke, audit_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tail -f prints records written after it started, then stops at --max-records."""
    from aegis.cli import _audit

    started = threading.Event()
    follow = _audit._follow

    def following(*args: Any, **kwargs: Any) -> None:
        started.set()  # the head is read: what is written now is new
        follow(*args, **kwargs)

    monkeypatch.setattr(_audit, "_follow", following)

    def writer() -> None:
        if started.wait(60):
            write_session(audit_db, [(Action("late", "x"), ResultStatus.SUCCESS, None)] * 2)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        result = invoke(
            "audit", "tail", "-f", "-n", "0", "--db", str(audit_db),
            "--interval", "0.05", "--max-records", "2", "--timeout", "60",
        )  # fmt: skip
    finally:
        thread.join()
    assert result.exit_code == 0
    assert [line.split("\t")[3] for line in result.stdout.splitlines()] == ["late:x", "late:x"]


def test_tail_follow_stops_cleanly_on_ctrl_c(audit_db: Path) -> None:
    """In a real process, SIGINT ends `tail -f` with status 0 and no traceback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "aegis", "audit", "tail", "-f", "-n", "1", "--db", str(audit_db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # the last record: the process is now following
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert first.split("\t")[0] == "4"
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_demo_runs_and_leaves_a_verifiable_trail(invoke: Invoke, tmp_path: Path) -> None:
    """demo --no-interactive runs end to end; audit verify then passes on its database."""
    db = tmp_path / "demo.db"
    result = invoke("demo", "--db", str(db), "--no-interactive")
    assert result.exit_code == 0, result.output
    assert invoke("audit", "verify", "--db", str(db)).exit_code == 0
    assert len(_rows(invoke("audit", "list", "--db", str(db)))) > 0


# -- a hand-edited database ---------------------------------------------------------

#: (stored column text, what the runtime reads back): not an object, or not JSON at all
HAND_EDITS = [
    pytest.param("[1,2]", [1, 2], id="json-list"),
    pytest.param('"just text"', "just text", id="json-string"),
    pytest.param("not json", "not json", id="not-json"),  # needs the runtime to read it raw
]

READING_COMMANDS = [
    ["list"],
    ["list", "--format", "json"],
    ["list", "--format", "jsonl"],
    ["show", "2"],
    ["show", "2", "--format", "json"],
    ["stats"],
    ["tail"],
    ["export"],
]


def _json_records(result: Result, args: list[str], **options: Any) -> list[dict[str, Any]]:
    """The records in a JSON document (--format json) or in JSON lines (jsonl, export)."""
    if "json" in args:
        parsed = json.loads(result.stdout, **options)
        return parsed if isinstance(parsed, list) else [parsed]
    return [json.loads(line, **options) for line in result.stdout.splitlines()]


@pytest.mark.parametrize("column", ["action_params", "result_data"])
@pytest.mark.parametrize(("stored", "loaded"), HAND_EDITS)
@pytest.mark.parametrize("args", READING_COMMANDS, ids=" ".join)
def test_reading_commands_survive_a_hand_edited_column(  # noqa: PLR0917  # pytest passes by name
    invoke: Invoke, audit_db: Path, args: list[str], column: str, stored: str, loaded: object
) -> None:
    """list, show, stats, tail and export exit 0 on a record whose JSON column was edited."""
    edit_database(audit_db, f"UPDATE audit_log SET {column} = '{stored}' WHERE id = 2")
    result = invoke("audit", *args, "--db", str(audit_db))
    assert result.exit_code == 0
    assert "refund" in result.stdout
    if {"json", "jsonl", "export"} & set(args):
        records = _json_records(result, args)
        assert [r[column] for r in records if r["id"] == 2] == [loaded]


@pytest.mark.parametrize(("stored", "shown"), [("not json", "not json"), ('"text"', "text")])
def test_show_prints_a_hand_edited_string_as_it_is(
    invoke: Invoke, audit_db: Path, stored: str, shown: str
) -> None:
    """show prints params that came back as a string raw: no JSON quotes, no traceback."""
    edit_database(audit_db, f"UPDATE audit_log SET action_params = '{stored}' WHERE id = 2")
    result = invoke("audit", "show", "2", "--db", str(audit_db))
    assert result.exit_code == 0
    assert f"action_params   {shown}\n" in result.stdout


def test_show_pretty_prints_hand_edited_list(invoke: Invoke, audit_db: Path) -> None:
    """show pretty-prints params that were edited into a JSON list, like an object."""
    edit_database(audit_db, "UPDATE audit_log SET action_params = '[1,2]' WHERE id = 2")
    result = invoke("audit", "show", "2", "--db", str(audit_db))
    assert result.exit_code == 0
    assert "action_params   [\n                  1,\n                  2\n                ]" in (
        result.stdout
    )


@pytest.mark.parametrize(
    "args",
    [
        ["list", "--format", "json"],
        ["list", "--format", "jsonl"],
        ["show", "2", "--format", "json"],
        ["export"],
    ],
    ids=" ".join,
)
def test_non_finite_numbers_in_a_record_are_written_as_strings(
    invoke: Invoke, audit_db: Path, args: list[str]
) -> None:
    """A stored NaN or Infinity comes out as the string "NaN" / "-Infinity", never bare NaN."""
    edit_database(
        audit_db,
        "UPDATE audit_log SET action_params = '{\"amount\": NaN}', result_data = '-Infinity'"
        " WHERE id = 2",
    )
    result = invoke("audit", *args, "--db", str(audit_db))
    assert result.exit_code == 0

    def refuse(name: str) -> object:
        raise AssertionError(f"invalid JSON constant {name} in the output")

    records = _json_records(result, args, parse_constant=refuse)
    record = next(r for r in records if r["id"] == 2)
    assert record["action_params"] == {"amount": "NaN"}
    assert record["result_data"] == "-Infinity"


@pytest.mark.parametrize(
    ("kept", "verified", "exported"),
    [(1, "1 record verified", "Exported 1 entry"), (2, "2 records verified", "Exported 2 entries")],
)
def test_counts_read_right_for_one_record_and_many(
    invoke: Invoke, tmp_path: Path, kept: int, verified: str, exported: str
) -> None:
    """verify and the agent-aegis export say "1 record", "1 entry"; more in the plural."""
    db = tmp_path / "audit.db"
    write_session(db, SESSION[:kept])
    result = invoke("audit", "verify", "--db", str(db))
    assert result.stdout.splitlines()[0] == f"audit chain intact: {verified} in {db}"
    out = tmp_path / "out.jsonl"
    legacy = invoke("audit", "--db", str(db), "--format", "jsonl", "-o", str(out))
    assert legacy.stdout.strip() == f"{exported} to {out}"
