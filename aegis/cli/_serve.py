"""``aegis serve``: run the approval service on uvicorn."""

from __future__ import annotations

import importlib
import ipaddress
import secrets
from typing import TYPE_CHECKING

import click

from aegis.cli._output import note, warn
from aegis.cli._params import command_schema, secret_option
from aegis.cli._store import durability_option, service_store_option
from aegis.core.approval_request import parse_approval_ttl, parse_duration
from aegis.errors import ConfigurationError, StoreError

if TYPE_CHECKING:
    from aegis.server.oidc import OidcSignIn
    from aegis.server.service import ApprovalService

__all__ = ["serve"]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere


def _bound_address(scheme: str, host: str, port: int) -> str | None:
    """``scheme://host:port`` as a browser would reach it; ``None`` when it cannot tell."""
    if port == 0 or host in {"0.0.0.0", "::", ""}:  # any address: no one to name
        return None  # each request's own address stands in
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}"


def _oidc_signin(
    issuer: str | None,
    client_id: str | None,
    secret: str | None,
    *,
    groups_claim: str,
    scopes: str,
    required_groups: tuple[str, ...],
    max_age: float,
    key: str,
    redirect_base: str | None,
) -> OidcSignIn | None:
    """The inbox's OpenID sign-in of the ``--oidc-*`` options, or ``None`` without them."""
    if issuer is None and client_id is None:
        if secret is not None:
            raise click.UsageError("an OpenID client secret needs --oidc-issuer")
        return None
    if issuer is None or client_id is None:
        raise click.UsageError("give both --oidc-issuer and --oidc-client-id")
    # Imported here: Authlib (the oidc extra) is only needed with these options.
    from aegis.server.oidc import OidcSettings, OidcSignIn  # noqa: PLC0415

    # The sign-in imports these only when someone signs in: without the oidc
    # extra, refuse to start rather than fail the first person at the door.
    for package in ("authlib.integrations.httpx_client", "authlib.oidc.core", "joserfc.jwt"):
        importlib.import_module(package)

    try:
        settings = OidcSettings(
            issuer=issuer,
            client_id=client_id,
            client_secret=secret,
            groups_claim=groups_claim,
            scopes=tuple(scopes.split()),
            required_groups=tuple(g.strip() for g in required_groups if g.strip()),
            max_age=max_age,
        )
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from None
    return OidcSignIn(settings, key, redirect_base=redirect_base)


def _warn_of_clock_skew(service: ApprovalService) -> None:
    """Warn when this host's clock and the database server's disagree by more than 5 s."""
    # Imported here: the server extra is only needed by this command.
    from aegis.server.clocks import read_clocks, skew_warning  # noqa: PLC0415

    try:
        reading = read_clocks(service.store, service.clock)
    except StoreError as exc:  # it answered a moment ago: let serving find out
        warn(f"could not read the database server's clock to compare it with this host's: {exc}")
        return
    message = None if reading is None else skew_warning(reading)
    if message is not None:
        warn(message)


def _duration(ctx: click.Context, param: click.Parameter, value: str) -> float:
    try:
        return parse_approval_ttl(value)
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc)) from None


def _seconds(ctx: click.Context, param: click.Parameter, value: str) -> float:
    try:
        return parse_duration(value)
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command()
@service_store_option
@durability_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    default=8700,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on.",
)
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
    "--oidc-issuer",
    metavar="URL",
    help="Let reviewers sign in with this OpenID provider (its issuer URL, exactly).",
)
@click.option("--oidc-client-id", metavar="ID", help="The inbox's client id at the provider.")
@secret_option(
    "oidc-client-secret",
    "AEGIS_OIDC_CLIENT_SECRET",
    "the OpenID client secret",
    help_text="The inbox's client secret at the provider (none: a public client, PKCE alone).",
)
@click.option(
    "--oidc-groups-claim",
    default="groups",
    show_default=True,
    help="The ID token claim listing a person's groups: their reviewer groups.",
)
@click.option(
    "--oidc-scopes",
    default="openid profile email",
    show_default=True,
    help="The scopes asked for at sign-in (add the one that brings the groups claim).",
)
@click.option(
    "--oidc-require-group",
    "oidc_required_groups",
    multiple=True,
    metavar="GROUP",
    help="Only people in one of these groups may sign in (repeatable; default: anyone "
    "the provider signs in for this client).",
)
@click.option(
    "--oidc-max-age",
    default="1h",
    show_default=True,
    callback=_seconds,
    help="How long an OpenID sign-in lasts (90s, 30m, 1h; 10s or more): then the person signs in "
    "again and the provider's groups of now apply; the longest a person the provider "
    "took out of a group still decides for it.",
)
@click.option(
    "--auditor-group",
    "auditor_groups",
    multiple=True,
    metavar="GROUP",
    help="Reviewers in this group (a token's --group, or the OpenID groups claim) read the "
    "whole audit trail and verify it; others read only the records of requests they may "
    "see (repeatable; default: none).",
)
@click.option(
    "--no-token-signin",
    is_flag=True,
    help="The inbox takes no reviewer tokens: people sign in with the OpenID provider "
    "(the API still takes tokens).",
)
@click.option(
    "--metrics-public",
    is_flag=True,
    help="Serve /metrics (Prometheus) without a token, for a scraper on a trusted network.",
)
@click.option(
    "--read-timeout",
    default=10.0,
    show_default=True,
    type=click.FloatRange(0.1, 300),
    help="Seconds a client has to send a request's headers, and then its body.",
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
    oidc_issuer: str | None,
    oidc_client_id: str | None,
    oidc_client_secret: str | None,
    oidc_groups_claim: str,
    oidc_scopes: str,
    oidc_required_groups: tuple[str, ...],
    oidc_max_age: float,
    auditor_groups: tuple[str, ...],
    no_token_signin: bool,
    metrics_public: bool,
    read_timeout: float,
    log_level: str,
) -> None:
    """Run the approval service and its inbox: agents ask, reviewers decide, all of it audited.

    Reviewers open http://HOST:PORT/ and sign in with a reviewer token, or
    with the company's OpenID provider (--oidc-issuer, --oidc-client-id).
    /metrics serves Prometheus metrics to reviewer and metrics tokens (a scraper's:
    `aegis token create NAME --role metrics`), or to anyone with --metrics-public.
    --webhook and --slack-webhook announce every request and decision.

    It listens on 127.0.0.1 unless told otherwise, and refuses another
    address without TLS (--tls-cert and --tls-key) or --insecure-http.

    \b
    Examples:
      aegis serve --db aegis_audit.db
      aegis serve --db postgresql://aegis@db/aegis --host 0.0.0.0 \\
          --tls-cert cert.pem --tls-key key.pem
      aegis serve --public-url https://aegis.example.com \\
          --oidc-issuer https://id.example.com --oidc-client-id aegis \\
          --oidc-client-secret-file /run/secrets/oidc --no-token-signin
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
    from starlette.middleware import Middleware  # noqa: PLC0415

    from aegis.core.policy import Policy  # noqa: PLC0415
    from aegis.server import create_app, open_service  # noqa: PLC0415
    from aegis.server.bounds import LoopbackHosts, bounded_protocol  # noqa: PLC0415
    from aegis.server.inbox import Inbox  # noqa: PLC0415
    from aegis.server.metrics import ServiceMetrics  # noqa: PLC0415
    from aegis.server.notify import Notifications  # noqa: PLC0415
    from aegis.stores import parse_store_url  # noqa: PLC0415

    scheme = "https" if tls else "http"
    key = session_key or secrets.token_urlsafe(32)  # the inbox and its OpenID flows share it
    oidc = _oidc_signin(
        oidc_issuer,
        oidc_client_id,
        oidc_client_secret,
        groups_claim=oidc_groups_claim,
        scopes=oidc_scopes,
        required_groups=oidc_required_groups,
        max_age=oidc_max_age,
        key=key,
        redirect_base=public_url or _bound_address(scheme, host, port),
    )
    if no_token_signin and oidc is None:
        raise click.UsageError(
            "--no-token-signin leaves no way to sign in; give --oidc-issuer and --oidc-client-id"
        )
    try:
        notifications = Notifications(
            webhooks,
            secret=webhook_secret,
            slack_webhooks=slack_webhooks,
            public_url=public_url or f"{scheme}://{host}:{port}",
        )
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from None
    policy = Policy.from_yaml(policy_path) if policy_path is not None else None
    if any(not g.strip() for g in auditor_groups):
        raise click.UsageError("--auditor-group needs a group name")
    service = open_service(
        db,
        approval_ttl=approval_ttl,
        policy=policy,
        durability=durability,
        schema=command_schema(),
        auditor_groups=auditor_groups,
    )
    service.oidc_issuer = oidc_issuer
    inbox = Inbox(
        service,
        session_key=key,
        public_url=public_url,
        oidc=oidc,
        token_signin=not no_token_signin,
    )
    metrics = ServiceMetrics(service, public=metrics_public)
    # On a loopback bind, only loopback names (and the public URL's host) are
    # served: a page elsewhere cannot reach the service through DNS rebinding.
    middleware = [Middleware(LoopbackHosts, public_url=public_url)] if _is_loopback(host) else []
    app = create_app(
        service,
        routes=[*metrics.routes(), *inbox.routes()],
        on_startup=[notifications.startup, metrics.follow],
        middleware=middleware,
    )
    app.state.read_timeout = read_timeout
    where = parse_store_url(db).where  # a DSN's password masked
    note(f"Aegis approval service on {scheme}://{host}:{port} (store: {where})")
    _warn_of_clock_skew(service)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        ssl_certfile=tls_cert,
        ssl_keyfile=tls_key,
        log_level=log_level,
        lifespan="on",
        server_header=False,
        http=bounded_protocol(read_timeout),  # a request's head must arrive in time
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
