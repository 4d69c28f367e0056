"""``aegis mcp-proxy``: govern any MCP server for any MCP client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import sys
from typing import Any

import click

from aegis.cli._output import APPROVAL_STYLES, RISK_STYLES, Styled, emit_json, print_table
from aegis.cli._params import DEFAULT_DB, db_password_check, format_option, secret_option
from aegis.cli._store import durability_option
from aegis.core.policy import Policy
from aegis.errors import ConfigurationError

__all__ = ["mcp_proxy"]

_HINTS = ("readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint")


def _listen_address(value: str | None) -> tuple[str, int] | None:
    if value is None:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:8811)")
    return host.strip("[]"), int(port)


def _session(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > 200 or not value.isprintable():
        raise click.BadParameter(
            "must be 1 to 200 printable characters, e.g. the agent's run id",
            param_hint="'--session' / AEGIS_SESSION",
        )
    return value


def _positive(value: float | None, what: str) -> float | None:
    # NaN compares false with everything and infinity never ends: neither is a deadline.
    if value is not None and not (0 < value < math.inf):
        raise click.BadParameter(
            f"{what} must be a positive, finite number of seconds, got {value:g}",
            param_hint=f"'{what}'",
        )
    return value


@click.command(
    "mcp-proxy",
    context_settings={"ignore_unknown_options": False},
    epilog="""\b
Examples:
  aegis mcp-proxy --policy policy.yaml --db aegis_audit.db --name files \\
      -- npx @modelcontextprotocol/server-filesystem /srv
  aegis mcp-proxy --policy policy.yaml --approval-url http://127.0.0.1:8700 \\
      --listen 127.0.0.1:8811 -- python my_server.py
  aegis mcp-proxy --check --policy policy.yaml -- python my_server.py

\b
In a client's configuration, replace the server's command with:
  "command": "aegis", "args": ["mcp-proxy", "--policy", "policy.yaml", "--", ...]
""",
)
@click.option(
    "--policy",
    "policy_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="The policy that decides every tool call.",
)
@click.option(
    "--db",
    default=DEFAULT_DB,
    envvar="AEGIS_DB",
    show_default=True,
    show_envvar=True,
    metavar="PATH_OR_DSN",
    callback=db_password_check(long_running=True),
    help="The audit trail every call is recorded in: a SQLite file or a postgresql:// DSN "
    "(a password only from $AEGIS_DB, PGPASSWORD or a passfile, never on argv).",
)
@durability_option
@click.option(
    "--schema",
    default=None,
    envvar="AEGIS_SCHEMA",
    show_envvar=True,
    metavar="NAME",
    help="PostgreSQL schema of the trail and the limits' counters [default: current schema].",
)
@click.option("--name", default=None, help="The actions' target [default: the command's name].")
@click.option(
    "--approval",
    type=click.Choice(["terminal", "deny", "remote"]),
    default=None,
    help="How approvals are asked [default: remote with --approval-url, else deny].",
)
@click.option("--approval-url", default=None, help="The approval service (aegis serve).")
@secret_option(
    "approval-token",
    "AEGIS_TOKEN",
    "the agent token",
    help_text="The agent token for the approval service.",
)
@click.option(
    "--approval-timeout",
    type=float,
    default=900.0,
    show_default=True,
    help="Seconds an approval may take before the call is denied.",
)
@click.option(
    "--call-timeout",
    type=float,
    default=300.0,
    show_default=True,
    help="Seconds the server may take to answer one request.",
)
@click.option("--listen", default=None, help="Serve Streamable HTTP on HOST:PORT (path /mcp).")
@click.option("--upstream-url", default=None, help="Govern a Streamable HTTP server at this URL.")
@click.option("--hide-blocked", is_flag=True, help="Leave tools the policy always blocks unlisted.")
@click.option(
    "--check",
    is_flag=True,
    help="List the server's tools and the policy's decisions, then stop the server.",
)
@click.option(
    "--check-timeout",
    type=float,
    default=10.0,
    show_default=True,
    help="With --check, seconds the server gets to start and list its tools (--call-timeout "
    "if shorter); one that hangs is then killed, within 1.5 s more.",
)
@click.option(
    "--check-args",
    "check_args",
    multiple=True,
    metavar="TOOL=JSON",
    help="With --check, decide TOOL with these sample arguments (a JSON object), e.g. "
    '--check-args write=\'{"path": "/srv/x"}\'; repeatable. Tools without one are '
    "decided with no arguments.",
)
@click.option(
    "--max-message-bytes",
    type=click.IntRange(min=1024),
    default=4 * 1024 * 1024,
    show_default=True,
    help="The largest message a client may send.",
)
@click.option(
    "--max-server-message-bytes",
    type=click.IntRange(min=1024),
    default=64 * 1024 * 1024,
    show_default=True,
    help="The longest message a server may send (a stdio line, an HTTP body or SSE event); "
    "a longer one is read past and the request it answers fails.",
)
@click.option(
    "--max-sessions",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="With --listen, client sessions served at once (each runs a server); when all are "
    "taken, the one idle the longest gives way to a new client.",
)
@click.option(
    "--session-idle-timeout",
    type=click.FloatRange(min=1, max=86400),
    default=300,
    show_default=True,
    help="With --listen, seconds a client session may sit idle before it ends.",
)
@click.option(
    "--metrics-public",
    is_flag=True,
    help="With --listen, serve /metrics (Prometheus) without a token, for a scraper on a "
    "trusted network.",
)
@secret_option(
    "metrics-token",
    "AEGIS_METRICS_TOKEN",
    "the token",
    help_text="With --listen, the bearer token /metrics asks for (from a file or the "
    "environment); without it or --metrics-public, /metrics is off.",
)
@click.option(
    "--progress-interval",
    type=click.FloatRange(min=0, max=3600),
    default=15.0,
    show_default=True,
    help="While a call waits for a reviewer, seconds between the progress notifications "
    "sent to a client that asked for progress (0: none).",
)
@click.option("--agent", default=None, help="Who acts, for limits keyed by agent.")
@click.option(
    "--session",
    "session_id",
    default=None,
    envvar="AEGIS_SESSION",
    show_envvar=True,
    metavar="ID",
    help="The audit session of every call [default: a new random one]. Give the proxies of "
    "one agent the same ID (and --db) to share flow history across servers and restarts.",
)
@click.option("--reload", is_flag=True, help="Decide later calls by the policy file's new content.")
@click.option("-v", "--verbose", is_flag=True, help="Also log each call's outcome to stderr.")
@format_option("table", "json")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def mcp_proxy(  # noqa: PLR0917  # click passes every option
    policy_path: str,
    db: str,
    durability: str | None,
    schema: str | None,
    name: str | None,
    approval: str | None,
    approval_url: str | None,
    approval_token: str | None,
    approval_timeout: float,
    call_timeout: float,
    listen: str | None,
    upstream_url: str | None,
    hide_blocked: bool,
    check: bool,
    check_timeout: float,
    check_args: tuple[str, ...],
    max_message_bytes: int,
    max_server_message_bytes: int,
    max_sessions: int,
    session_idle_timeout: float,
    metrics_public: bool,
    metrics_token: str | None,
    progress_interval: float,
    agent: str | None,
    session_id: str | None,
    reload: bool,
    verbose: bool,
    output_format: str,
    command: tuple[str, ...],
) -> None:
    """Put Aegis between an MCP client and an MCP server.

    Starts COMMAND as the MCP server (or reaches --upstream-url) and serves
    its tools over stdio, or over Streamable HTTP with --listen. Every
    tools/call is decided by the policy: auto calls are forwarded, blocked
    and denied ones come back as tool errors naming the rule, and calls
    needing approval wait for a human. Every call is recorded in the audit
    trail with its MCP request id.
    """
    from aegis.mcp.runner import (  # noqa: PLC0415  # loaded only for this command
        ProxySettings,
        check_loopback,
    )

    if bool(command) == bool(upstream_url):
        raise click.UsageError(
            "give the MCP server either as a command after `--` or with --upstream-url"
        )
    if approval is None:
        approval = "remote" if approval_url else "deny"
    if approval == "remote" and not approval_url:
        raise click.UsageError("--approval remote needs --approval-url URL")
    address = _listen_address(listen)
    _positive(approval_timeout, "--approval-timeout")
    _positive(call_timeout, "--call-timeout")
    _positive(check_timeout, "--check-timeout")
    _positive(session_idle_timeout, "--session-idle-timeout")
    if math.isnan(progress_interval):  # NaN passes click's range check, and means nothing
        raise click.BadParameter(
            "must be a finite number of seconds (0: none), got nan",
            param_hint="'--progress-interval'",
        )
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="aegis mcp-proxy: %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    settings = ProxySettings(
        policy=Policy.from_yaml(policy_path),
        command=command,
        upstream_url=upstream_url,
        name=name,
        db=db,
        durability=durability,
        schema=schema,
        approval=approval,
        approval_url=approval_url,
        approval_token=approval_token,
        approval_timeout=approval_timeout,
        call_timeout=call_timeout,
        hide_blocked=hide_blocked,
        max_message_bytes=max_message_bytes,
        max_server_message_bytes=max_server_message_bytes,
        max_sessions=max_sessions,
        idle_timeout=session_idle_timeout,
        metrics_public=metrics_public,
        metrics_token=metrics_token,
        progress_interval=progress_interval,
        agent=agent,
        session_id=_session(session_id),
        policy_path=policy_path,
        reload=reload,
    )
    if check:
        _check(settings, output_format, _samples(check_args), check_timeout)
        return
    if check_args:
        raise click.UsageError("--check-args goes with --check")
    if address is not None:
        check_loopback(address[0])
        try:
            from aegis.mcp.http import run_http  # noqa: PLC0415  # starlette and uvicorn
        except ImportError as exc:
            raise click.ClickException(str(exc)) from exc

        asyncio.run(run_http(settings, address[0], address[1]))
        return
    _serve_stdio(settings)


def _serve_stdio(settings: Any) -> None:
    from aegis.mcp.runner import run_stdio  # noqa: PLC0415
    from aegis.mcp.stdio import ServerGone  # noqa: PLC0415

    # The client's pipes carry the protocol. Keep private copies of them and
    # point fd 0 and 1 elsewhere, so that nothing else in this process (a
    # library printing, a prompt) can read from or write into the wire.
    wire_in, wire_out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(2, 1)
    os.close(null)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run_stdio(settings, input_fd=wire_in, output_fd=wire_out))
    except ServerGone as exc:
        # A host restarts a server whose process ends: end, and say why.
        raise click.ClickException(
            f"{exc}; the proxy stopped with it, so that the client can restart both"
        ) from None


def _samples(given: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    samples: dict[str, dict[str, Any]] = {}
    for item in given:
        tool, sep, text = item.partition("=")
        if not sep or not tool.strip():
            raise click.BadParameter(
                f'{item!r} is not TOOL=JSON, e.g. write=\'{{"path": "/srv/x"}}\'',
                param_hint="'--check-args'",
            )
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise click.BadParameter(
                f"{tool.strip()}: not JSON ({exc})", param_hint="'--check-args'"
            ) from None
        if not isinstance(value, dict):
            raise click.BadParameter(
                f"{tool.strip()}: the arguments must be a JSON object", param_hint="'--check-args'"
            )
        samples[tool.strip()] = value
    return samples


def _check(
    settings: Any, output_format: str, samples: dict[str, dict[str, Any]], timeout: float
) -> None:
    from aegis.mcp.proxy import blocks_every_call  # noqa: PLC0415
    from aegis.mcp.runner import check_tools  # noqa: PLC0415

    try:
        # A short deadline: a server that hangs must not hang the check.
        deadline = min(timeout, settings.call_timeout or timeout)
        listed = asyncio.run(check_tools(settings, samples, deadline=deadline))
    except ConfigurationError:
        raise
    except Exception as exc:
        raise ConfigurationError(
            f"could not list the tools of the MCP server: {type(exc).__name__}: {exc}"
        ) from exc
    target = settings.target
    rows = []
    for checked in listed:
        tool, decision = checked.tool, checked.decision
        hints = tool.get("annotations") or {}
        always = blocks_every_call(settings.policy, tool["name"], target)
        rows.append(
            {
                "tool": tool["name"],
                "target": target,
                "arguments": checked.arguments,
                "sample": tool["name"] in samples,
                "conditional": checked.conditional,
                "approval": decision.approval.value,
                "blocked_always": always,
                "risk": decision.risk_level.name,
                "rule": decision.matched_rule,
                "hints": [h for h in _HINTS if hints.get(h) is True],
            }
        )
    if output_format == "json":
        emit_json(rows)
        return
    print_table(
        ("Tool", "Decided with", "Approval", "Risk", "Rule", "Hints"),
        (
            (
                row["tool"],
                _decided_with(row),
                Styled(row["approval"], APPROVAL_STYLES.get(row["approval"], "")),
                Styled(row["risk"], RISK_STYLES.get(row["risk"], "")),
                row["rule"],
                ", ".join(row["hints"]),
            )
            for row in rows
        ),
        title=f"Tools of {target!r} and what the policy decides for a call",
        wrap=("Rule", "Decided with"),
    )
    unsampled = [row["tool"] for row in rows if row["conditional"] and not row["sample"]]
    if unsampled:
        click.echo(
            "Decided without arguments: rules with conditions on the arguments apply to "
            f"{', '.join(unsampled)}, so real calls may be decided otherwise; try one with "
            "--check-args TOOL='{...}'.",
            err=True,
        )


def _decided_with(row: dict[str, Any]) -> str:
    if row["sample"]:
        return json.dumps(row["arguments"], ensure_ascii=False)
    return "no arguments (rules with conditions)" if row["conditional"] else "no arguments"
