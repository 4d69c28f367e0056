"""``aegis serve``: run the approval service on uvicorn."""

from __future__ import annotations

import ipaddress

import click

from aegis.cli._output import note
from aegis.cli._params import secret_option
from aegis.cli._store import durability_option, is_dsn, store_option
from aegis.core.approval_request import parse_approval_ttl

__all__ = ["serve"]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere


def _duration(ctx: click.Context, param: click.Parameter, value: str) -> float:
    try:
        return parse_approval_ttl(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command()
@store_option
@durability_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8700, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--approval-ttl",
    default="1h",
    show_default=True,
    callback=_duration,
    help="How long a request stays open unless its rule sets approval_ttl (90s, 30m, 1h).",
)
@click.option(
    "--policy",
    "policy_path",
    type=click.Path(exists=True, dir_okay=False),
    help="Decide each request again with this policy: its approvers, reviewers and TTL win.",
)
@click.option(
    "--tls-cert", type=click.Path(exists=True, dir_okay=False), help="TLS certificate (PEM)."
)
@click.option(
    "--tls-key", type=click.Path(exists=True, dir_okay=False), help="TLS private key (PEM)."
)
@click.option(
    "--insecure-http",
    is_flag=True,
    help="Serve plain HTTP on a non-loopback address (tokens cross the network in clear).",
)
@click.option(
    "--webhook",
    "webhooks",
    multiple=True,
    metavar="URL",
    help="POST every approval event here as signed JSON (repeatable).",
)
@secret_option(
    "webhook-secret",
    "AEGIS_WEBHOOK_SECRET",
    "the webhook key",
    help_text="The HMAC-SHA256 key of the X-Aegis-Signature header of webhooks.",
)
@click.option(
    "--slack-webhook",
    "slack_webhooks",
    multiple=True,
    metavar="URL",
    help="A Slack incoming webhook that hears of every request and decision (repeatable).",
)
@click.option(
    "--public-url",
    metavar="URL",
    help="The inbox's address as reviewers reach it (behind a proxy, say): links in "
    "notifications, and the origin the inbox's forms are accepted from "
    "(default: http://HOST:PORT).",
)
@secret_option(
    "session-key",
    "AEGIS_SESSION_KEY",
    "the session key",
    help_text="The key that signs inbox cookies; share it between processes and restarts "
    "to keep reviewers signed in (default: random per process).",
)
@click.option(
    "--metrics-public",
    is_flag=True,
    help="Serve /metrics (Prometheus) without a token, for a scraper on a trusted network.",
)
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    default="info",
    show_default=True,
)
def serve(  # noqa: PLR0917  # Click passes one argument per option
    db: str,
    durability: str | None,
    host: str,
    port: int,
    approval_ttl: float,
    policy_path: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    insecure_http: bool,
    webhooks: tuple[str, ...],
    webhook_secret: str | None,
    slack_webhooks: tuple[str, ...],
    public_url: str | None,
    session_key: str | None,
    metrics_public: bool,
    log_level: str,
) -> None:
    """Run the approval service and its inbox: agents ask, reviewers decide, all of it audited.

    Reviewers open http://HOST:PORT/ and sign in with a reviewer token.
    /metrics serves Prometheus metrics to any token (or none, with --metrics-public).
    --webhook and --slack-webhook announce every request and decision.

    It listens on 127.0.0.1 unless told otherwise, and refuses another
    address without TLS (--tls-cert and --tls-key) or --insecure-http.

    \b
    Examples:
      aegis serve --db aegis_audit.db
      aegis serve --db postgresql://aegis@db/aegis --host 0.0.0.0 \\
          --tls-cert cert.pem --tls-key key.pem
    """
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("give both --tls-cert and --tls-key, or neither")
    tls = tls_cert is not None
    if not _is_loopback(host) and not tls and not insecure_http:
        raise click.UsageError(
            f"--host {host} is not a loopback address: bearer tokens would cross the network "
            "in clear; give --tls-cert and --tls-key, or --insecure-http if a proxy in front "
            "terminates TLS"
        )
    # Imported here: the server extra is only needed by this command.
    import uvicorn  # noqa: PLC0415

    from aegis.core.policy import Policy  # noqa: PLC0415
    from aegis.server import create_app, open_service  # noqa: PLC0415
    from aegis.server.inbox import Inbox  # noqa: PLC0415
    from aegis.server.metrics import ServiceMetrics  # noqa: PLC0415
    from aegis.server.notify import Notifications  # noqa: PLC0415

    scheme = "https" if tls else "http"
    try:
        notifications = Notifications(
            webhooks,
            secret=webhook_secret,
            slack_webhooks=slack_webhooks,
            public_url=public_url or f"{scheme}://{host}:{port}",
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    policy = Policy.from_yaml(policy_path) if policy_path is not None else None
    service = open_service(db, approval_ttl=approval_ttl, policy=policy, durability=durability)
    inbox = Inbox(service, session_key=session_key, public_url=public_url)
    metrics = ServiceMetrics(service, public=metrics_public)
    app = create_app(
        service,
        routes=[*metrics.routes(), *inbox.routes()],
        on_startup=[notifications.startup, metrics.follow],
    )
    where = db if not is_dsn(db) else "PostgreSQL"
    note(f"Aegis approval service on {scheme}://{host}:{port} (store: {where})")
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        ssl_certfile=tls_cert,
        ssl_keyfile=tls_key,
        log_level=log_level,
        lifespan="on",
        server_header=False,
        # Long polls last up to a minute; waiting agents reconnect on their own.
        timeout_graceful_shutdown=3,
    )
    server = uvicorn.Server(config)
    try:
        server.run()
    except KeyboardInterrupt:
        # uvicorn shut down cleanly and then re-raised the Ctrl-C it caught.
        note("stopped")
        return
    except SystemExit:
        if server.started:
            raise
        # uvicorn has logged why (usually the port is taken); say what to do.
        raise click.ClickException(
            f"could not listen on {host}:{port}; if another process uses the port, "
            "pick another with --port"
        ) from None
    if not server.started:
        raise click.ClickException(f"could not listen on {host}:{port}; pick another --port")
