"""The ``aegis`` command group and the one place errors become exit codes.

Commands live in their own modules and are imported only when used, so
``aegis validate`` never pays for the demo or the audit database code.
Below this module everything just raises: :class:`AegisGroup` turns an
:class:`~aegis.errors.AegisError` into a one-line message and the error's
``exit_code``; Click itself reports usage errors with exit status 2.
"""

from __future__ import annotations

import difflib
import functools
import importlib
from collections.abc import Sequence
from typing import Any, Final

import click

from aegis.errors import AegisError

__all__ = ["AegisGroup", "CheckFailed", "cli", "main"]

EPILOG = """\b
Exit status:
  0  success
  1  a check failed: invalid policy, broken audit chain, --fail-on or
     --fail-on-change hit, missing file or database
  2  usage error: unknown option, bad action syntax, bad value

\b
Start here:
  aegis init                      write a starter policy.yaml
  aegis validate policy.yaml      check it and list its rules
  aegis simulate policy.yaml read:crm delete:crm
  aegis test policy.yaml policy.cases.yaml   check expected decisions
  aegis demo                      run a governed session end to end
  aegis audit verify              check the audit trail was not edited
"""


#: The extra that brings each optional package a command may import.
EXTRAS: Final = {
    "uvicorn": "server",
    "starlette": "server",
    "jinja2": "server",
    "itsdangerous": "server",
    "multipart": "server",
    "python_multipart": "server",
    "httpx": "server",
    "prometheus_client": "server",
    "psycopg": "postgres",
    "psycopg_pool": "postgres",
    "authlib": "oidc",
    "joserfc": "oidc",
    "cryptography": "signing",
    "mcp": "mcp",
    "re2": "re2",
    "opentelemetry": "otel",
}


def _missing_extra(exc: BaseException) -> tuple[str, str] | None:
    """The missing package and its extra behind an ImportError, if an extra brings it."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ModuleNotFoundError) and seen.name:
            package = seen.name.partition(".")[0]
            if package in EXTRAS:
                return package, EXTRAS[package]
        seen = seen.__cause__
    return None


class CheckFailed(click.ClickException):
    """A check did not pass (exit status 1); the details were already printed."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        """Print the one-line summary unless the command already said everything."""
        if self.message:
            super().show(file)


@functools.cache
def _exit_class(code: int) -> type[click.ClickException]:
    """A ClickException class exiting with ``code``.

    Click declares ``exit_code`` on the class (a ClassVar since 8.2), so an
    AegisError's own status needs a class of its own, made once per code.
    """
    return type(f"AegisErrorExit{code}", (click.ClickException,), {"exit_code": code})


class AegisGroup(click.Group):
    """A group whose subcommands load lazily and whose Aegis errors exit cleanly.

    ``lazy`` maps a command name to ``"module:attribute"``.
    """

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every command name, eager and lazy, sorted for ``--help``."""
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """Return a command, importing its module the first time it is needed."""
        if cmd_name in self.lazy and cmd_name not in self.commands:
            module_name, _, attribute = self.lazy[cmd_name].partition(":")
            command = getattr(importlib.import_module(module_name), attribute)
            if not isinstance(command, click.Command):
                raise TypeError(f"{self.lazy[cmd_name]} is not a click command")
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        """Find the subcommand; for an unknown name, suggest the closest one."""
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            close = difflib.get_close_matches(name, self.list_commands(ctx), n=1)
            if close:
                ctx.fail(f"No such command {name!r}. Did you mean {close[0]!r}?")
        resolved = super().resolve_command(ctx, args)
        ctx.meta.setdefault("aegis.command", resolved[0])
        return resolved

    def invoke(self, ctx: click.Context) -> Any:
        """Run the subcommand; report an AegisError as one line and its exit code.

        A package of an extra that is not installed (``aegis serve`` without
        uvicorn) is one line naming the extra to install, not a traceback.
        """
        try:
            return super().invoke(ctx)
        except AegisError as exc:
            raise _exit_class(exc.exit_code)(str(exc)) from exc
        except ImportError as exc:
            missing = _missing_extra(exc)
            if missing is None:
                raise
            package, extra = missing
            command = " ".join(filter(None, ("aegis", ctx.meta.get("aegis.command"))))
            raise click.ClickException(
                f"{command} needs the {extra} extra ({package} is not installed): "
                f'pip install "aegis-runtime[{extra}]"'
            ) from exc


@click.group(
    name="aegis",
    cls=AegisGroup,
    lazy={
        "approvals": "aegis.cli._approvals:approvals",
        "audit": "aegis.cli._audit:audit",
        "demo": "aegis.cli._demo:demo",
        "grants": "aegis.cli._grants:grants",
        "init": "aegis.cli._init:init",
        "mcp-proxy": "aegis.cli._mcp:mcp_proxy",
        "replay": "aegis.cli._replay:replay",
        "reviewer": "aegis.cli._reviewers:reviewer",
        "schema": "aegis.cli._validate:schema",
        "serve": "aegis.cli._serve:serve",
        "simulate": "aegis.cli._simulate:simulate",
        "token": "aegis.cli._tokens:token",
        "test": "aegis.cli._test:test",
        "validate": "aegis.cli._validate:validate",
    },
    epilog=EPILOG,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="aegis-runtime", prog_name="aegis")
def cli() -> None:
    """Aegis: policy, human approval and a tamper-evident audit trail for AI agents.

    Check a policy before you ship it, see what it would decide, replay
    recorded sessions under a new policy, and inspect or verify the audit
    trail. Run `aegis COMMAND --help` for examples.
    """


def main(argv: Sequence[str] | None = None) -> None:
    """Run the ``aegis`` command line and exit with its status.

    ``argv`` defaults to ``sys.argv[1:]``; this is the console script's entry point.
    """
    cli.main(args=list(argv) if argv is not None else None, prog_name="aegis")
