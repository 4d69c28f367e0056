"""How the command line writes: Rich on a terminal, plain text when piped.

Everything a command prints goes through these helpers so that one rule
holds everywhere: colour and boxed tables only when stdout is a terminal
and ``NO_COLOR`` is unset; otherwise tab-separated lines a script can cut,
and no ANSI escape codes at all. Machine formats (``--format json``) write
exactly one JSON document on stdout; notes and warnings go to stderr.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections.abc import Collection, Iterable, Sequence
from typing import IO, Any, Final, NamedTuple

import click

__all__ = [
    "APPROVAL_STYLES",
    "RISK_STYLES",
    "STATUS_STYLES",
    "Cell",
    "Styled",
    "emit_json",
    "error",
    "inert",
    "info",
    "is_terminal",
    "json_text",
    "note",
    "print_table",
    "success",
    "use_color",
    "warn",
    "writable",
]

APPROVAL_STYLES = {"auto": "green", "approve": "yellow", "block": "bold red"}
RISK_STYLES = {"LOW": "green", "MEDIUM": "yellow", "HIGH": "red", "CRITICAL": "bold red"}
STATUS_STYLES = {
    "started": "bold yellow",
    "success": "green",
    "failed": "bold red",
    "blocked": "red",
    "denied": "yellow",
    "skipped": "dim",
}


class Styled(NamedTuple):
    """A table cell with a Rich style, shown only on a colour terminal."""

    text: str
    style: str = ""


class Lines(NamedTuple):
    """A table cell of several lines, each shown inert on its own line (`` · `` when piped)."""

    lines: tuple[str, ...]


Cell = str | Styled
#: what a table cell of :func:`print_table` may be
TableCell = str | Styled | Lines


def is_terminal(stream: IO[str] | None = None) -> bool:
    """Whether ``stream`` (stdout by default) is an interactive terminal."""
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def use_color(*, err: bool = False) -> bool:
    """Whether to colour stdout (or stderr): a terminal and ``NO_COLOR`` unset."""
    # https://no-color.org: any non-empty value disables colour.
    if os.environ.get("NO_COLOR"):
        return False
    return is_terminal(sys.stderr if err else sys.stdout)


def writable(text: str) -> str:
    """``text`` with any lone surrogate written as its escape (``\\udc80``).

    Agents and hand-edited files can hold them; UTF-8 cannot, and a crash
    while printing would hide everything else the command had to say.
    """
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


#: bidirectional controls: they reorder what is drawn (``invoice_\u202efdp.exe``)
BIDI_CONTROLS: Final = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
#: what a terminal would act on instead of showing: C0 and C1 controls, DEL, line
#: and paragraph separators, and the bidi controls
_ACTIVE: Final = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029" + BIDI_CONTROLS + "]")
#: the same, minus what JSON escapes on its own (C0), for JSON text
_JSON_ACTIVE: Final = re.compile("[\x7f-\x9f\u2028\u2029" + BIDI_CONTROLS + "]")


def _escape(found: re.Match[str]) -> str:
    code = ord(found.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def inert(text: str) -> str:
    """``text`` with every control a terminal would obey written out visibly.

    Agent-written text may hold escape sequences (erase a line, hide the
    real params, write the clipboard with OSC 52) or bidi overrides that
    draw ``invoice_\u202efdp.exe`` as ``invoice_exe.pdf``. Each such
    character becomes its escape (``\\x1b``, ``\\u202e``), so what a
    reviewer reads is what the agent sent, on a terminal and when piped.
    """
    return _ACTIVE.sub(_escape, writable(text))


def _json_escape(found: re.Match[str]) -> str:
    return f"\\u{ord(found.group()):04x}"


def _echo(message: str, *, err: bool = False, **style: Any) -> None:
    message = writable(message)
    color = use_color(err=err)
    text = click.style(message, **style) if color and style else message
    click.echo(text, err=err, color=color)


def info(message: str = "") -> None:
    """Print a plain line on stdout."""
    click.echo(writable(message))


def success(message: str) -> None:
    """Print a line on stdout, green on a colour terminal."""
    _echo(message, fg="green")


def note(message: str) -> None:
    """Print a side remark on stderr, so it never mixes with parseable output."""
    _echo(message, err=True, dim=True)


def warn(message: str) -> None:
    """Print ``warning: message`` on stderr."""
    _echo(f"warning: {message}", err=True, fg="yellow")


def error(message: str) -> None:
    """Print ``message`` on stderr, red on a terminal; it should name the file and line."""
    _echo(message, err=True, fg="red")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {_finite(key): _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def json_text(document: Any, *, indent: int | None = None) -> str:
    """``document`` as JSON text that strict parsers (jq, JavaScript) accept.

    JSON has no NaN or Infinity; a non-finite float (say, in a hand-edited
    audit record) is written as the string ``"NaN"``, ``"Infinity"`` or
    ``"-Infinity"`` instead, so the output stays valid and the value visible.
    Objects JSON cannot encode are written as their ``str()``.
    """
    try:
        text = json.dumps(document, indent=indent, ensure_ascii=False, default=str, allow_nan=False)
    except ValueError:
        # Rare, so the common path does not pay for walking every document.
        text = json.dumps(
            _finite(document), indent=indent, ensure_ascii=False, default=str, allow_nan=False
        )
    # C1 controls, DEL and bidi controls become JSON escapes: parsers read them
    # back as they were, and no terminal acts on them.
    text = _JSON_ACTIVE.sub(_json_escape, text)
    # A lone surrogate becomes its JSON escape, which parsers read back as is.
    return writable(text)


def emit_json(document: Any) -> None:
    """Write one JSON document on stdout and nothing else (see :func:`json_text`)."""
    click.echo(json_text(document, indent=2))


def _plain(cell: TableCell) -> str:
    if isinstance(cell, Lines):
        return " \u00b7 ".join(_plain(line) for line in cell.lines if line)
    text = cell.text if isinstance(cell, Styled) else cell
    # One record per line: tabs and newlines inside a value would break cut/awk.
    return inert(text.replace("\t", " ").replace("\r", " ").replace("\n", " "))


def _rich_cell(cell: TableCell, text: Any) -> Any:
    if isinstance(cell, Styled):
        return text(inert(cell.text), style=cell.style)
    if isinstance(cell, Lines):
        # our line breaks, between lines each made inert: the agent's stay escaped
        return text("\n".join(inert(line) for line in cell.lines if line))
    return text(inert(cell))


def _min_width(name: str, wrap: Collection[str]) -> int | None:
    # Rich squeezes wrapping columns first; below ~10 characters they turn into
    # a vertical ribbon of letters, which is harder to read than a wide table.
    return max(10, len(name)) if name in wrap else None


def print_table(
    columns: Sequence[str],
    rows: Iterable[Sequence[TableCell]],
    *,
    title: str | None = None,
    wrap: Collection[str] = (),
) -> int:
    """Print rows under ``columns``; return how many rows were printed.

    On a terminal this is a Rich table (coloured unless ``NO_COLOR``); when
    piped it is a header line and one tab-separated line per row, streamed
    so that large outputs do not wait for the last row. On a narrow
    terminal only the columns named in ``wrap`` (free text such as a rule
    name) fold onto several lines; the others (ids, times, levels) stay whole.
    """
    if not is_terminal():
        if title:
            note(title)
        click.echo("\t".join(c.lower().replace(" ", "_") for c in columns))
        count = 0
        for row in rows:
            click.echo("\t".join(_plain(cell) for cell in row))
            count += 1
        return count

    from rich import box  # noqa: PLC0415  # Rich costs ~50 ms; only terminals pay
    from rich.console import Console  # noqa: PLC0415  # same reason
    from rich.table import Column, Table  # noqa: PLC0415  # same reason
    from rich.text import Text  # noqa: PLC0415  # same reason

    # fold, not ellipsis: a cut-off rule name or file:line is worse than a tall row
    table = Table(
        *(
            Column(
                name, overflow="fold", no_wrap=name not in wrap, min_width=_min_width(name, wrap)
            )
            for name in columns
        ),
        title=title,
        title_justify="left",
        header_style="bold",
        box=box.SIMPLE_HEAD,
        show_edge=False,
    )
    count = 0
    for row in rows:
        table.add_row(*(_rich_cell(c, Text) for c in row))
        count += 1
    Console(no_color=not use_color(), highlight=False).print(table)
    return count
