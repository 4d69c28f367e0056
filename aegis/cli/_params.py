"""Parameter types and shared options: actions, timestamps, ``--db``, ``--format``.

Bad input is a usage error: these types raise :class:`click.BadParameter`,
which Click reports with the command's usage and exit status 2.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import IO, Any, TypeVar

import click

from aegis.core.action import Action

__all__ = [
    "ACTION_FIELDS",
    "ActionParam",
    "DateTimeParam",
    "db_option",
    "format_option",
    "parse_action",
    "parse_actions_jsonl",
    "parse_datetime",
]

F = TypeVar("F", bound=Callable[..., Any])

#: keys an object in an ``--actions`` JSONL file may have
ACTION_FIELDS = ("type", "target", "params", "description")

DEFAULT_DB = "aegis_audit.db"


def parse_action(text: str) -> Action:
    """Parse ``type:target`` or ``type:target:{"json": "params"}`` into an Action.

    Only the first two colons split, so the JSON may contain colons.

    Raises:
        ValueError: with a message saying what is wrong and the expected form.
    """
    parts = text.split(":", 2)
    if len(parts) < 2:
        raise ValueError(f"{text!r} is not an action; write it as type:target or type:target:JSON")
    action_type, target = parts[0].strip(), parts[1].strip()
    if not action_type or not target:
        raise ValueError(f"{text!r} has an empty type or target; write it as type:target")
    params: dict[str, Any] = {}
    if len(parts) == 3 and parts[2].strip():
        try:
            loaded = json.loads(parts[2])
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"the params of {text!r} are not valid JSON ({exc.msg} at column {exc.colno});"
                " quote them in the shell, e.g. 'refund:stripe:{\"amount\": 50}'"
            ) from exc
        if not isinstance(loaded, dict):
            raise ValueError(
                f'the params of {text!r} must be a JSON object like {{"amount": 50}},'
                f" not {type(loaded).__name__}"
            )
        params = loaded
    return Action(action_type, target, params)


def _action_from_object(obj: Any, where: str) -> Action:
    if not isinstance(obj, dict):
        raise ValueError(f'{where}: expected a JSON object like {{"type": ..., "target": ...}}')
    unknown = sorted(set(obj) - set(ACTION_FIELDS))
    if unknown:
        raise ValueError(
            f"{where}: unknown key {unknown[0]!r}; an action has {', '.join(ACTION_FIELDS)}"
        )
    for key in ("type", "target"):
        if not isinstance(obj.get(key), str) or not obj[key]:
            raise ValueError(f"{where}: {key!r} is required and must be a non-empty string")
    params = obj.get("params") or {}
    if not isinstance(params, dict):
        raise ValueError(f"{where}: 'params' must be a JSON object")
    description = obj.get("description") or ""
    if not isinstance(description, str):
        raise ValueError(f"{where}: 'description' must be a string")
    return Action(obj["type"], obj["target"], params, description)


def parse_actions_jsonl(stream: IO[str], name: str) -> Iterator[Action]:
    """Yield one Action per non-blank line of a JSONL stream.

    Raises:
        ValueError: naming ``name:line`` for the first bad line.
    """
    for lineno, line in enumerate(stream, 1):
        if not line.strip():
            continue
        where = f"{name}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
        yield _action_from_object(obj, where)


def parse_datetime(text: str) -> datetime:
    """Parse an ISO 8601 date or date-time; without an offset it means UTC.

    Raises:
        ValueError: with an example of the expected form.
    """
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise ValueError(
            f"{text!r} is not an ISO 8601 time; write e.g. 2026-11-24T23:00+01:00 or 2026-11-24"
        ) from exc
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class ActionParam(click.ParamType):  # type: ignore[type-arg]  # generic only from Click 8.2
    """An action on the command line: ``type:target`` or ``type:target:JSON``."""

    name = "type:target[:json]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """Turn the text into an :class:`Action`, or fail with a usage error."""
        if isinstance(value, Action):
            return value
        try:
            return parse_action(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class DateTimeParam(click.ParamType):  # type: ignore[type-arg]  # generic only from Click 8.2
    """An ISO 8601 time such as ``2026-11-24T23:00+01:00`` (UTC when no offset)."""

    name = "iso-time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """Turn the text into an aware :class:`datetime`, or fail with a usage error."""
        if isinstance(value, datetime):
            return value
        try:
            return parse_datetime(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def db_option(function: F) -> F:
    """Add ``--db PATH`` (also ``$AEGIS_DB``), the audit database to read."""
    return click.option(
        "--db",
        "db_path",
        default=DEFAULT_DB,
        show_default=True,
        envvar="AEGIS_DB",
        show_envvar=True,
        type=click.Path(dir_okay=False),
        help="SQLite audit database written by the runtime.",
    )(function)


def format_option(*choices: str) -> Callable[[F], F]:
    """Add ``--format`` with ``choices``; the first one is the default."""
    return click.option(
        "--format",
        "output_format",
        type=click.Choice(choices, case_sensitive=False),
        default=choices[0],
        show_default=True,
        help="Output format; json and jsonl write nothing else on stdout.",
    )
