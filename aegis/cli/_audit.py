"""``aegis audit``: read, export, follow and verify the audit trail.

Size: one module per command group: the audit subcommands (list, show, export,
follow, verify, evidence) share their options, the store opening and the output
helpers.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from itertools import chain
from pathlib import Path
from typing import Any

import click

from aegis.cli._app import CheckFailed
from aegis.cli._database import note_trail, open_audit, trail_name, trail_schema
from aegis.cli._output import (
    APPROVAL_STYLES,
    RISK_STYLES,
    STATUS_STYLES,
    Cell,
    Styled,
    emit_json,
    error,
    info,
    is_terminal,
    json_text,
    note,
    print_table,
    success,
    use_color,
    warn,
)
from aegis.cli._params import (
    DEFAULT_DB,
    DateTimeParam,
    db_option,
    db_password_check,
    format_option,
)
from aegis.core._text import counted
from aegis.core.chain import Head
from aegis.core.result import ResultStatus
from aegis.core.risk import RiskLevel
from aegis.errors import ConfigurationError
from aegis.runtime.audit import AuditLogger
from aegis.runtime.audit_backend import RECORD_FIELDS, mark_unfinished

__all__ = ["audit", "record_cells"]

LIST_COLUMNS = ("Id", "Time", "Session", "Action", "Risk", "Approval", "Rule", "Status", "Human")
#: on a terminal the session and human columns give way to the rest; `show` has them
SHORT_COLUMNS = ("Id", "Time", "Action", "Risk", "Approval", "Rule", "Status")

#: ids are SQLite integers; a larger number cannot name a record
SQLITE_MAX_INT = 2**63 - 1

#: how many records `list` shows in a terminal table when --limit is not given
TERMINAL_LIMIT = 500

#: export shows a progress bar from this many records on (on a terminal)
PROGRESS_THRESHOLD = 5_000

_STATS_TITLES = {
    "result_status": "By status",
    "risk_level": "By risk",
    "matched_rule": "By rule",
    "action_type": "By action type",
}


def record_cells(record: dict[str, Any], *, short: bool = False) -> list[Cell]:
    """One row for a record; ``short`` gives the narrower terminal row of SHORT_COLUMNS."""
    timestamp = str(record.get("timestamp") or "")
    session = str(record.get("session_id") or "")
    if short:
        timestamp = timestamp[5:19].replace("T", " ")  # MM-DD HH:MM:SS
    risk = str(record.get("risk_level") or "")
    approval = str(record.get("approval") or "")
    status = str(record.get("result_status") or "")
    if not status and record.get("kind") == "start":
        status = "started"  # the action reached the executor and has no outcome yet
    cells: list[Cell] = [
        str(record["id"]),
        timestamp,
        session,
        f"{record.get('action_type')}:{record.get('action_target')}",
        Styled(risk, RISK_STYLES.get(risk, "")),
        Styled(approval, APPROVAL_STYLES.get(approval, "")),
        str(record.get("matched_rule") or ""),
        Styled(status, STATUS_STYLES.get(status, "")),
        str(record.get("human_decision") or ""),
    ]
    if short:
        del cells[8], cells[2]
    return cells


def _record_line(record: dict[str, Any], *, color: bool) -> str:
    """A record on one line: aligned and coloured on a terminal, tab-separated otherwise."""
    cells = record_cells(record, short=color)
    if not color:
        return "\t".join(c.text if isinstance(c, Styled) else c for c in cells)
    widths = (5, 14, 24, 8, 7, 22, 0)  # SHORT_COLUMNS
    parts = []
    for cell, width in zip(cells, widths, strict=True):
        text = cell.text if isinstance(cell, Styled) else cell
        padded = text.ljust(width) if width else text
        style = cell.style if isinstance(cell, Styled) else ""
        parts.append(_click_style(padded, style))
    return " ".join(parts).rstrip()


def _click_style(text: str, rich_style: str) -> str:
    # The Rich style names used in tables map onto click.style for streamed lines.
    if not rich_style:
        return text
    words = rich_style.split()
    color = next((w for w in words if w not in {"bold", "dim"}), None)
    return click.style(text, fg=color, bold="bold" in words, dim="dim" in words)


def _echo_record(record: dict[str, Any]) -> None:
    color = use_color()
    click.echo(_record_line(record, color=color), color=color)


@click.group(invoke_without_command=True)
@click.option(
    "--db", "db_path", default=None, hidden=True, callback=db_password_check(long_running=False)
)
@click.option(
    "--format", "legacy_format", type=click.Choice(["table", "json", "jsonl"]), hidden=True
)
@click.option("-o", "--output", "legacy_output", default=None, hidden=True)
@click.option("--session", "legacy_session", default=None, hidden=True)
@click.pass_context
def audit(
    ctx: click.Context,
    db_path: str | None,
    legacy_format: str | None,
    legacy_output: str | None,
    legacy_session: str | None,
) -> None:
    """Read, export, follow and verify the audit trail.

    Every subcommand reads the audit trail the runtime writes (--db: a SQLite
    file, default aegis_audit.db, or a postgresql:// DSN; or $AEGIS_DB) and
    never creates one.

    The form agent-aegis users know works too: `aegis audit --db DB --format
    jsonl -o FILE` exports one line per action (as `aegis audit export`),
    and `--format table` or `json` lists (as `aegis audit list`).

    \b
    Examples:
      aegis audit list --status denied
      aegis audit verify --expect-head 42:9f86d0...
      aegis audit tail -f
    """
    given = (db_path, legacy_format, legacy_output, legacy_session)
    if ctx.invoked_subcommand is not None:
        if any(value is not None for value in given):
            raise click.UsageError(
                "give --db, --format, -o and --session after the subcommand: "
                f"aegis audit {ctx.invoked_subcommand} --db ..."
            )
        return
    if all(value is None for value in given):
        click.echo(ctx.get_help())
        return
    _legacy(db_path, legacy_format or "table", legacy_output, legacy_session)


def _legacy(
    db_path: str | None, output_format: str, output: str | None, session: str | None
) -> None:
    """agent-aegis's ``aegis audit [--db] [--format] [-o] [--session]``, with its outputs."""
    db = db_path or os.environ.get("AEGIS_DB") or DEFAULT_DB
    if output_format == "jsonl":
        target = output or "aegis_audit.jsonl"  # agent-aegis's default file
        with open_audit(db) as log:
            written = log.export_jsonl(target, session)
        click.echo(f"Exported {counted(written, 'entry', 'entries')} to {target}")
        note_trail(log, "entries")
        return
    if output is not None:
        raise click.UsageError("-o/--output goes with --format jsonl (or use aegis audit export)")
    with open_audit(db) as log:
        records = log.iter_log(session)
        if output_format == "json":
            _emit_json_array(records)
        else:
            shown = print_table(LIST_COLUMNS, (record_cells(r) for r in records))
            if not shown:
                note(f"no records in {trail_name(log)} match")
        if output_format == "json" or shown:
            note_trail(log, "records")


@audit.command("list")
@db_option
@click.option("--session", "session_id", help="Only this session's records.")
@click.option("--type", "action_type", help="Only this action type (exact).")
@click.option("--target", "action_target", help="Only this target (exact).")
@click.option(
    "--risk",
    type=click.Choice([level.name.lower() for level in RiskLevel], case_sensitive=False),
    help="Only this risk level.",
)
@click.option(
    "--status",
    type=click.Choice([status.value for status in ResultStatus], case_sensitive=False),
    help="Only this result status.",
)
@click.option("--since", type=DateTimeParam(), help="Records at or after this ISO 8601 time.")
@click.option("--until", type=DateTimeParam(), help="Records at or before this ISO 8601 time.")
@click.option("-n", "--limit", type=click.IntRange(min=1), help="At most this many records.")
@format_option("table", "json", "jsonl")
def list_records(  # noqa: PLR0917  # Click passes one argument per option
    db_path: str,
    session_id: str | None,
    action_type: str | None,
    action_target: str | None,
    risk: str | None,
    status: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int | None,
    output_format: str,
) -> None:
    """List audit records, oldest first, filtered.

    On a terminal without --limit it shows the newest 500, and says so last.

    \b
    Examples:
      aegis audit list
      aegis audit list --status denied --since 2026-11-01
      aegis audit list --type refund --risk high --format jsonl | jq .action_params
    """
    filters: dict[str, Any] = {
        "action_type": action_type,
        "action_target": action_target,
        "risk_level": risk,
        "result_status": status,
        "since": since,
        "until": until,
    }
    terminal_table = output_format == "table" and is_terminal()
    with open_audit(db_path) as log:
        records: Iterable[dict[str, Any]]
        matching = 0
        if terminal_table and limit is None:
            # A Rich table is built in memory and nobody reads a million rows
            # on screen: a terminal gets the newest, with the note last, where
            # it is read; pipes and machine formats still stream everything.
            matching = log.count(session_id, **filters)
            records = _newest(log, TERMINAL_LIMIT, session_id, filters)
        else:
            records = log.iter_log(session_id, limit=limit, **filters)
        records = _first_read(records)
        if output_format == "jsonl":
            _echo_jsonl(records)
        elif output_format == "json":
            _emit_json_array(records)
        else:
            shown = print_table(
                SHORT_COLUMNS if terminal_table else LIST_COLUMNS,
                (record_cells(r, short=terminal_table) for r in records),
                wrap=("Action", "Rule"),
            )
            if not shown:
                note(f"no records in {trail_name(log)} match")
            elif matching > TERMINAL_LIMIT:
                note(
                    f"showing the newest {TERMINAL_LIMIT} of {matching} matching records;"
                    " narrow with filters (--since), or use --limit or --format jsonl for all"
                )
        if output_format != "table" or shown:
            note_trail(log, "records")


def _first_read(records: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """``records``, the first one read already.

    A trail that cannot be read (not a database, an unreachable server)
    fails before a table's header or a JSON array's ``[`` is printed, so a
    pipe receives nothing but the error.
    """
    rows = iter(records)
    first = next(rows, None)
    return iter(()) if first is None else chain((first,), rows)


def _emit_json_array(records: Iterable[dict[str, Any]]) -> None:
    # Streamed by hand so a large log never sits in memory as one list.
    click.echo("[", nl=False)
    first = True
    for record in records:
        click.echo(("\n  " if first else ",\n  "), nl=False)
        click.echo(json_text(record), nl=False)
        first = False
    click.echo("]" if first else "\n]")


def _echo_jsonl(records: Iterable[dict[str, Any]]) -> int:
    written = 0
    for record in records:
        click.echo(json_text(record))
        written += 1
    return written


def _fetch(log: AuditLogger, record_id: int) -> dict[str, Any] | None:
    rows = log.get_log(after_id=record_id - 1, limit=1, view="records")
    return rows[0] if rows and rows[0]["id"] == record_id else None


@audit.command()
@click.argument("record_id", metavar="ID", type=click.IntRange(min=1, max=SQLITE_MAX_INT))
@db_option
@format_option("text", "json")
def show(record_id: int, db_path: str, output_format: str) -> None:
    """Show one audit record in full.

    \b
    Examples:
      aegis audit show 42
      aegis audit show 42 --format json
    """
    with open_audit(db_path) as log:
        record = _fetch(log, record_id)
    if record is None:
        raise click.ClickException(
            f"no record {record_id} in {trail_name(log)}; `aegis audit list` shows the ids"
        )
    note_trail(log, f"record {record_id}")
    if output_format == "json":
        emit_json(record)
        return
    color = use_color()
    width = max(len(name) for name in RECORD_FIELDS)
    for name in RECORD_FIELDS:
        value = record.get(name)
        if isinstance(value, dict | list) and value:
            text = json_text(value, indent=2).replace("\n", "\n" + " " * (width + 2))
        else:
            # a hand-edited column that is not JSON comes back as its raw text
            text = "" if value is None or value in ({}, []) else str(value)
        style = {
            "risk_level": RISK_STYLES,
            "approval": APPROVAL_STYLES,
            "result_status": STATUS_STYLES,
        }.get(name, {}).get(text, "")
        label = click.style(name.ljust(width), bold=True) if color else name.ljust(width)
        click.echo(f"{label}  {_click_style(text, style) if color else text}", color=color)


@audit.command()
@db_option
@click.option(
    "-o",
    "--output",
    default="-",
    show_default=True,
    type=click.Path(dir_okay=False, allow_dash=True),
    help="JSONL file to write; - writes to stdout.",
)
@click.option("--session", "session_id", help="Only this session's records.")
@click.option(
    "--records",
    "raw",
    is_flag=True,
    help="Every record of the chain, start records included, instead of one line per action.",
)
def export(db_path: str, output: str, session_id: str | None, raw: bool) -> None:
    """Export the audit trail as JSON lines, oldest first: one line per action.

    An action's line is its final record, or its start record, marked
    "unfinished": true, when it has no outcome (the process died mid-action,
    or it is still running). Each line has every field, the chain hashes
    included, and rehashes on its own; with --records every record of the
    chain is exported, so the export verifies as a chain.

    \b
    Examples:
      aegis audit export -o audit.jsonl
      aegis audit export --records -o chain.jsonl
      aegis audit export --session 3f2a... | jq .result_status
    """
    with open_audit(db_path) as log:
        if output == "-":
            found = log.iter_log(session_id, view="records" if raw else "actions")
            written = _echo_jsonl(found if raw else map(mark_unfinished, found))
        elif is_terminal(sys.stderr) and log.count(session_id) >= PROGRESS_THRESHOLD:
            written = _export_with_progress(log, output, session_id, raw)
        else:
            written = log.export_jsonl(output, session_id, records=raw)
    what = "records" if raw else "actions"
    note(f"exported {written} {what}" + ("" if output == "-" else f" to {output}"))
    note_trail(log, what)


def _export_with_progress(log: AuditLogger, output: str, session_id: str | None, raw: bool) -> int:
    """Run ``export_jsonl`` on a worker thread and show its progress on stderr.

    The bar follows the lines appearing in the output file, so the file is
    written by ``export_jsonl`` itself, byte for byte as without a bar.
    """
    from rich.console import Console  # noqa: PLC0415  # Rich costs ~50 ms; only terminals pay
    from rich.progress import Progress  # noqa: PLC0415  # same reason

    total = log.count(session_id)
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["written"] = log.export_jsonl(output, session_id, records=raw)
        except BaseException as exc:  # handed to the main thread, which re-raises it
            outcome["error"] = exc

    worker = threading.Thread(target=work, name="aegis-export", daemon=True)
    lines = _LineCounter(Path(output))
    with Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(f"exporting to {output}", total=total)
        worker.start()
        while worker.is_alive():
            worker.join(0.1)
            progress.update(task, completed=min(lines.count(), total))
    if "error" in outcome:
        raise outcome["error"]
    return int(outcome["written"])


class _LineCounter:
    """Counts the lines of a file that another thread is writing, reading only new bytes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.lines = 0

    def count(self) -> int:
        """The number of complete lines written so far."""
        try:
            size = self.path.stat().st_size
            if size < self.offset:  # the writer truncated an older file of that name
                self.offset = self.lines = 0
            with self.path.open("rb") as stream:
                stream.seek(self.offset)
                chunk = stream.read(size - self.offset)
        except OSError:
            return self.lines  # not created yet
        self.offset += len(chunk)
        self.lines += chunk.count(b"\n")
        return self.lines


def _head(ctx: click.Context, param: click.Parameter, value: str | None) -> Head | None:
    """The ``--expect-head`` text as a :class:`Head`, checked before the log is opened."""
    if value is None:
        return None
    try:
        return Head.parse(value)
    except ConfigurationError:
        # Head.parse speaks to Python callers (expected_head=, head()); say it in commands.
        raise click.BadParameter(
            f"{value!r} is not a head of an audit log; give one `aegis audit verify` or"
            " `aegis audit head` printed: the record count, ':' and 64 hex digits"
        ) from None


@audit.command(short_help="Check the hash chain: nothing edited, removed or reordered.")
@db_option
@click.option(
    "--expect-head",
    metavar="HEAD",
    callback=_head,
    help="A head printed by an earlier verify; also catches records removed from the end.",
)
@click.option(
    "--public-key",
    type=click.Path(dir_okay=False),
    envvar="AEGIS_AUDIT_PUBLIC_KEY",
    show_envvar=True,
    help="Check the signed checkpoints with this public key (from `aegis audit keygen`).",
)
@format_option("text", "json")
def verify(
    db_path: str, expect_head: Head | None, public_key: str | None, output_format: str
) -> None:
    """Check that no audit record was edited, removed, inserted or reordered.

    Exits 0 when the hash chain holds and prints the head to keep; exits 1
    naming the first record that does not fit. Actions that started but
    never finished (the process died mid-action) are reported too. With
    --public-key, every signed checkpoint must be valid and fit the chain,
    which also catches a rewritten or truncated log up to the last one.

    Without --public-key or --expect-head, nothing anchors the chain: it
    proves order and completeness against accidental damage only. Someone
    who can write the database can rewrite records and recompute every hash
    after them; the check then passes, and says so.

    \b
    Examples:
      aegis audit verify
      aegis audit verify --expect-head 1042:9f86d081884c7d65...
      aegis audit verify --public-key audit.key.pub
    """
    with open_audit(db_path) as log:
        report = log.verify(expect_head, public_key=public_key)
        pending = log.pending()
        kept = len(log.checkpoints()) if public_key else 0
        trail = trail_name(log)
    # a head kept elsewhere or a valid signed checkpoint ties the chain to
    # something its writer cannot recompute; nothing else does
    anchored = expect_head is not None or report.checkpoints > 0

    if output_format == "json":
        emit_json(
            {
                "ok": report.ok,
                "checked": report.checked,
                "first_bad_id": report.first_bad_id,
                "reason": report.reason,
                "head": str(report.head),
                "checkpoints": report.checkpoints,
                "unsigned": report.unsigned,
                "bad_signature": report.bad_signature,
                "anchored": anchored,
                "pending": pending,
                "schema": trail_schema(log),
            }
        )
    elif report.ok:
        success(f"audit chain intact: {counted(report.checked, 'record')} verified in {trail}")
        info(f"head: {report.head}")
        if public_key:
            info(f"{counted(report.checkpoints, 'signed checkpoint')} valid")
            if report.unsigned:
                first = report.checked - report.unsigned + 1
                span = (
                    f"record {first}"
                    if first == report.checked
                    else (f"records {first}-{report.checked}")
                )
                warn(
                    f"{span} ({counted(report.unsigned, 'record')})"
                    " after the last signed checkpoint:"
                    " no signature covers them yet (written since the last checkpoint,"
                    " or without the key)"
                )
        if not anchored:
            warn(
                "no key and no kept head: the chain proves order and completeness against "
                "accidental damage only; someone who can write the database can rewrite "
                "records and recompute every hash after them, which only a head kept "
                "elsewhere (--expect-head) or signed checkpoints (--public-key) catch"
            )
        note("keep the head elsewhere; `--expect-head HEAD` later also catches a truncated log")
    elif report.bad_signature:
        error(f"signature check failed: {report.reason}")
        if kept == 0:
            note("this trail keeps no signed checkpoints at all")
    else:
        error(f"audit chain broken at record {report.first_bad_id} in {trail}: {report.reason}")
        note(
            f"the {counted(report.checked, 'record before it is', 'records before it are')} intact"
        )

    if pending:
        warn(
            f"{counted(len(pending), 'action')} started but never finished"
            " (the process died mid-action, or is still running):"
        )
        for entry in pending[:10]:
            warn(
                f"  record {entry.get('id')}, started {entry.get('timestamp')}:"
                f" {entry.get('action_type')}:{entry.get('action_target')}"
                f" (session {entry.get('session_id')})"
            )
        if len(pending) > 10:
            warn(f"  ... and {len(pending) - 10} more")
    if not report.ok:
        raise CheckFailed("")


def _stats_order(field: str, counts: dict[str, int]) -> list[tuple[str, int]]:
    if field == "risk_level":
        rank = {level.name: level.value for level in RiskLevel}
        return sorted(counts.items(), key=lambda item: rank.get(item[0], 0))
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


@audit.command()
@db_option
@click.option("--session", "session_id", help="Only this session's records.")
@format_option("table", "json")
def stats(db_path: str, session_id: str | None, output_format: str) -> None:
    """Count records by status, risk level, rule and action type.

    \b
    Examples:
      aegis audit stats
      aegis audit stats --session 3f2a... --format json
    """
    with open_audit(db_path) as log:
        counts = log.stats(session_id)
        total = log.count(session_id)
    note_trail(log, "counts")
    if output_format == "json":
        emit_json({"total": total, **counts})
        return
    if not is_terminal():
        print_table(
            ("Field", "Value", "Count"),
            (
                [field, value, str(n)]
                for field in _STATS_TITLES
                for value, n in _stats_order(field, counts.get(field, {}))
            ),
        )
        return
    info(counted(total, "record") + (f" in session {session_id}" if session_id else ""))
    styles = {"result_status": STATUS_STYLES, "risk_level": RISK_STYLES}
    for field, title in _STATS_TITLES.items():
        rows = _stats_order(field, counts.get(field, {}))
        if rows:
            print_table(
                (title, "Count"),
                (
                    [Styled(value, styles.get(field, {}).get(value, "")), str(n)]
                    for value, n in rows
                ),
            )


def _newest(
    log: AuditLogger, count: int, session_id: str | None, filters: dict[str, Any]
) -> list[dict[str, Any]]:
    """The newest ``count`` matching records, oldest first.

    Ids are consecutive in a chain, so the newest records are an id range
    back from the head: read windows back from it, four times larger each
    time, until enough match. A log of millions answers at once when the
    filters match often, and costs about one scan when they match rarely.
    """
    if count == 0:
        return []
    head = log.head().count
    window = 2 * count  # an action that ran has two records and shows once
    while True:
        after = max(0, head - window)
        rows = log.get_log(session_id, after_id=after, **filters)
        if len(rows) >= count or after == 0:
            return rows[-count:]
        window *= 4


@audit.command()
@db_option
@click.option("-n", "--lines", "count", default=10, show_default=True, type=click.IntRange(min=0))
@click.option(
    "-f",
    "--follow",
    is_flag=True,
    is_eager=True,  # known to --db's check, which refuses a password on argv with it
    help="Keep printing new records as they arrive.",
)
@click.option("--session", "session_id", help="Only this session's records.")
@click.option(
    "--interval",
    default=0.5,
    show_default=True,
    type=click.FloatRange(min=0.01, max=3600),
    help="Seconds between checks for new records with --follow.",
)
@click.option(
    "--max-records",
    type=click.IntRange(min=1),
    help="With --follow, stop after this many new records (for scripts and tests).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    help="With --follow, stop after this many seconds.",
)
def tail(  # noqa: PLR0917  # Click passes one argument per option
    db_path: str,
    count: int,
    follow: bool,
    session_id: str | None,
    interval: float,
    max_records: int | None,
    timeout: float | None,
) -> None:
    """Show the last records; with -f, follow new ones until Ctrl-C.

    \b
    Examples:
      aegis audit tail -n 20
      aegis audit tail -f --session 3f2a...
    """
    try:
        with open_audit(db_path) as log:
            last_id = 0
            if count:
                for record in _newest(log, count, session_id, {}):
                    _echo_record(record)
                    last_id = record["id"]
            if not last_id and follow:
                last_id = log.head().count
            note_trail(log, "records")  # before following: a follower stops with Ctrl-C
            if not follow:
                return
            _follow(
                log,
                session_id=session_id,
                last_id=last_id,
                interval=interval,
                max_records=max_records,
                timeout=timeout,
            )
    except KeyboardInterrupt:
        # Ctrl-C is how one stops following: not an error, no traceback.
        return


def _follow(
    log: AuditLogger,
    *,
    session_id: str | None,
    last_id: int,
    interval: float,
    max_records: int | None,
    timeout: float | None,
) -> None:
    deadline = None if timeout is None else time.monotonic() + timeout
    seen = 0
    while True:
        for record in log.get_log(session_id, after_id=last_id, limit=1000):
            _echo_record(record)
            last_id = record["id"]
            seen += 1
            if max_records is not None and seen >= max_records:
                return
        sys.stdout.flush()
        if deadline is not None and time.monotonic() >= deadline:
            return
        time.sleep(interval)


@audit.command()
@db_option
@format_option("text", "json")
def head(db_path: str, output_format: str) -> None:
    """Print the current head of the chain, to keep somewhere else.

    A kept head lets `aegis audit verify --expect-head HEAD` catch records
    cut off the end, or a log rewritten since.

    \b
    Examples:
      aegis audit head >> /secure/aegis-heads.txt
      aegis audit head --format json
    """
    with open_audit(db_path) as log:
        current = log.head()
    note_trail(log, "head")
    if output_format == "json":
        emit_json({"count": current.count, "hash": current.hash, "head": str(current)})
    else:
        click.echo(str(current))


@audit.command()
@click.argument("path", default="aegis_audit.key", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Replace existing key files.")
def keygen(path: str, force: bool) -> None:
    """Create an Ed25519 key pair for signed checkpoints of the audit trail.

    Writes the private key to PATH (readable by you only) and the public
    key to PATH.pub. Give the runtime the private key
    (AuditLogger(signing_key=PATH) or $AEGIS_AUDIT_KEY); give auditors the
    public key (aegis audit verify --public-key PATH.pub), which can check
    checkpoints but never sign them.

    \b
    Examples:
      aegis audit keygen /etc/aegis/audit.key
    """
    from aegis.runtime.signing import generate_key_files  # noqa: PLC0415  # the signing extra

    private, public = generate_key_files(path, overwrite=force)
    success(f"wrote the private key to {private} and the public key to {public}")
    note(f"sign with: export AEGIS_AUDIT_KEY={private.resolve()}")
    note(f"verify with: aegis audit verify --public-key {public}")
