"""Parameter types and shared options: actions, timestamps, ``--db``, ``--format``.

Bad input is a usage error: these types raise :class:`click.BadParameter`,
which Click reports with the command's usage and exit status 2.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import IO, Any, NoReturn, TypeVar

import click

from aegis.core.action import Action
from aegis.errors import ConfigurationError
from aegis.stores._url import parse_store_url

__all__ = [
    "ACTION_FIELDS",
    "ActionParam",
    "DateTimeParam",
    "db_option",
    "db_password_check",
    "format_option",
    "load_json",
    "parse_action",
    "parse_actions_jsonl",
    "parse_datetime",
]

F = TypeVar("F", bound=Callable[..., Any])

#: keys an object in an ``--actions`` JSONL file may have
ACTION_FIELDS = ("type", "target", "params", "description")

DEFAULT_DB = "aegis_audit.db"


class _Unusable(ValueError):
    """JSON that parses but that Aegis refuses: NaN, Infinity, too deep, too long."""


def _refuse_constant(name: str) -> NoReturn:
    raise _Unusable(f"{name} is not a JSON number; write a finite number, or quote it as a string")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Unusable(f"{text} is too large for a number; write a smaller one, or quote it")
    return value


def load_json(text: str) -> Any:
    """Parse JSON that every consumer accepts: no NaN or Infinity, no number out of range.

    Python's :func:`json.loads` takes ``NaN`` and ``1e999`` (as ``inf``), which
    strict parsers (jq, JavaScript, most databases) then refuse downstream.

    Raises:
        json.JSONDecodeError: the text is not JSON.
        ValueError: it is JSON that Aegis refuses; the message says why.
    """
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (json.JSONDecodeError, _Unusable):
        raise
    except RecursionError as exc:
        raise _Unusable("the JSON is nested too deeply") from exc
    except ValueError as exc:  # int() refuses numbers of more than 4300 digits
        raise _Unusable("a number has too many digits") from exc


def _shown(text: str, limit: int = 80) -> str:
    # an error message quotes what was typed, but not a whole pasted file
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


#: params start at the first colon after the target that is followed by "{"
_PARAMS_START = re.compile(r":\s*\{")


# what follows type:target: when it looks like params that are not an object:
# a JSON array or string, or key=value (a number is left alone: host:5432)
_NOT_PARAMS = re.compile(r'\s*(\[|"|\w+\s*=)')


def parse_action(text: str) -> Action:
    """Parse ``type:target`` or ``type:target:{"json": "params"}`` into an Action.

    The params start at the first colon (after the type) followed by ``{``, so
    a target may contain colons (``read:https://x.com/a``) and so may the JSON.

    Raises:
        ValueError: with a message saying what is wrong and the expected form.
    """
    action_type, colon, rest = text.partition(":")
    if not colon:
        raise ValueError(
            f"{_shown(text)} is not an action; write it as type:target or type:target:JSON"
        )
    rest = rest.strip()
    start = _PARAMS_START.search(rest)
    if start is not None:
        target, params_text = rest[: start.start()], rest[start.start() + 1 :]
    elif rest.endswith(":"):  # "read:crm:" is read:crm with no params
        target, params_text = rest[:-1], ""
    else:
        target, params_text = rest, ""
        _, colon, tail = rest.partition(":")
        if colon and _NOT_PARAMS.match(tail):
            # Params that are not a JSON object would otherwise quietly become
            # part of the target, and the policy would judge another action.
            raise ValueError(
                f"the params of {_shown(text)} must be a JSON object, like"
                " 'refund:stripe:{\"amount\": 50}'"
            )
    action_type, target = action_type.strip(), target.strip()
    if not action_type or not target:
        raise ValueError(f"{_shown(text)} has an empty type or target; write it as type:target")
    params: dict[str, Any] = {}
    if params_text:
        try:
            # text that starts with "{" is an object or not JSON at all
            params = load_json(params_text)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"the params of {_shown(text)} are not valid JSON"
                f" ({exc.msg} at column {exc.colno});"
                " quote them in the shell, e.g. 'refund:stripe:{\"amount\": 50}'"
            ) from exc
        except ValueError as exc:
            raise ValueError(f"the params of {_shown(text)} cannot be used: {exc}") from exc
    try:
        return Action(action_type, target, params)
    except TypeError as exc:  # too deep, or a key or value no Action holds
        raise ValueError(f"the params of {_shown(text)} cannot be used: {exc}") from exc


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
    try:
        return Action(obj["type"], obj["target"], params, description)
    except TypeError as exc:  # too deep, or a key or value no Action holds
        raise ValueError(f"{where}: the params cannot be used: {exc}") from exc


def parse_actions_jsonl(stream: IO[str], name: str) -> Iterator[Action]:
    """Yield one Action per non-blank line of a JSONL stream.

    Raises:
        ValueError: naming ``name:line`` for the first bad line.
    """
    lines = enumerate(stream, 1)
    while True:
        try:
            lineno, line = next(lines)
        except StopIteration:
            return
        except UnicodeDecodeError as exc:
            raise ValueError(
                f"{name}: not UTF-8 text ({exc.reason}); give a JSONL file,"
                " one JSON object per line"
            ) from exc
        if not line.strip():
            continue
        where = f"{name}:{lineno}"
        try:
            obj = load_json(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from exc
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
    value = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    try:
        value.astimezone(UTC)  # 0001-01-01T00:00+05:00 is a valid date but no UTC time
    except OverflowError as exc:
        raise ValueError(f"{text!r} is out of range; give a time between years 1 and 9999") from exc
    return value


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
    """Add ``--db PATH_OR_DSN`` (also ``$AEGIS_DB``), the audit trail to read, and ``--schema``."""
    return schema_option(
        click.option(
            "--db",
            "db_path",
            default=DEFAULT_DB,
            show_default=True,
            envvar="AEGIS_DB",
            show_envvar=True,
            type=click.Path(dir_okay=False),
            callback=db_password_check(long_running=False),
            help="SQLite audit database written by the runtime, or a postgresql:// DSN.",
        )(function)
    )


def db_password_check(
    *, long_running: bool
) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """The ``--db`` callback that keeps a DSN's password off the process list.

    A process's arguments are readable by every local user (``ps``,
    ``/proc/PID/cmdline``) for as long as it runs. A command that runs for
    hours (``long_running``, or one given ``--follow``, an eager flag, so
    set by then) refuses a ``--db`` holding a password on its command line;
    a short one warns on stderr and goes on. The same DSN from ``$AEGIS_DB``,
    or without its password (libpq then reads ``PGPASSWORD`` or a
    passfile), is taken as it is.
    """

    def check(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        source = ctx.get_parameter_source(param.name or "")
        if not isinstance(value, str) or source is not click.core.ParameterSource.COMMANDLINE:
            return value
        try:
            location = parse_store_url(value)
        except ConfigurationError:
            return value  # the command says what is wrong with it, password masked
        if location.engine != "postgres" or not location.secrets:
            return value
        instead = (
            "set AEGIS_DB to the DSN instead, or leave the password out of it and give it in "
            "PGPASSWORD or a passfile (~/.pgpass, or the file PGPASSFILE names)"
        )
        if long_running or ctx.params.get("follow") is True:
            raise click.UsageError(
                "--db holds a password, which every local user can read in the process list "
                f"for as long as this command runs; {instead}"
            )
        click.echo(
            "warning: --db holds a password, which every local user can read in the process "
            f"list while this command runs; {instead}",
            err=True,
        )
        return value

    return check


_SCHEMA_KEY = "aegis.schema"


def schema_option(function: F) -> F:
    """Add ``--schema NAME`` (also ``$AEGIS_SCHEMA``): the PostgreSQL schema beside ``--db``.

    The value is kept on the command's context rather than passed to the
    command, so every command that takes ``--db`` takes ``--schema`` too
    without a parameter of its own; the store openers of the command line
    read it with :func:`command_schema`.
    """

    def keep(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
        if value is not None and not value.strip():
            raise click.BadParameter("give a schema name, or leave --schema out", ctx, param)
        ctx.meta[_SCHEMA_KEY] = value

    return click.option(
        "--schema",
        default=None,
        envvar="AEGIS_SCHEMA",
        show_envvar=True,
        expose_value=False,
        callback=keep,
        metavar="NAME",
        help="PostgreSQL schema of the tables [default: the connection's current schema].",
    )(function)


def command_schema() -> str | None:
    """The ``--schema`` of the running command, or ``None``."""
    ctx = click.get_current_context(silent=True)
    found = None if ctx is None else ctx.meta.get(_SCHEMA_KEY)
    return found if isinstance(found, str) else None


def format_option(*choices: str) -> Callable[[F], F]:
    """Add ``--format`` with ``choices``; the first one is the default."""
    machine = [choice for choice in choices if choice not in {"table", "text"}]
    verb = "writes" if len(machine) == 1 else "write"
    return click.option(
        "--format",
        "output_format",
        type=click.Choice(choices, case_sensitive=False),
        default=choices[0],
        show_default=True,
        help=f"Output format; {' and '.join(machine)} {verb} nothing else on stdout.",
    )


def secret_option(name: str, envvar: str, what: str, *, help_text: str) -> Callable[[F], F]:
    """``--NAME-file PATH`` and ``$ENVVAR`` for a secret; ``--NAME VALUE`` on argv is refused.

    A value on the command line is visible to every local user in the
    process list (``ps``, ``/proc/*/cmdline``), so a secret comes from a
    file or the environment. The command receives the secret itself (or
    ``None``) under the option's name.
    """
    flag = "--" + name

    def read(ctx: click.Context, param: click.Parameter, value: Any) -> str | None:
        source = ctx.get_parameter_source(param.name or "")
        if value is not None and source is click.core.ParameterSource.COMMANDLINE:
            raise click.UsageError(
                f"{flag} takes no value on the command line, where every local user can read "
                f"it in the process list; put {what} in a file readable only by you and give "
                f"{flag}-file PATH, or set {envvar}"
            )
        path = ctx.params.pop(f"{param.name}_file", None)
        if path is not None:
            if value is not None:
                raise click.UsageError(f"give {flag}-file or {envvar}, not both")
            try:
                if os.stat(path).st_mode & 0o077:
                    click.echo(
                        f"warning: {path} can be read by other local users; chmod 600 {path}",
                        err=True,
                    )
                with open(path, encoding="utf-8") as handle:
                    value = handle.read().strip()
            except OSError as exc:
                raise click.BadParameter(
                    f"cannot read {path!r}: {exc.strerror or exc}", param_hint=f"'{flag}-file'"
                ) from None
            if not value:
                raise click.BadParameter(f"{path!r} is empty", param_hint=f"'{flag}-file'")
        return str(value) if value else None

    def decorate(function: F) -> F:
        function = click.option(
            flag,
            envvar=envvar,
            show_envvar=True,
            callback=read,
            help=f"{help_text} Only from ${envvar} or {flag}-file (never on argv).",
        )(function)
        return click.option(
            f"{flag}-file",
            f"{name.replace('-', '_')}_file",
            type=click.Path(exists=True, dir_okay=False),
            is_eager=True,
            expose_value=True,
            help=f"A file holding {what}.",
        )(function)

    return decorate
