"""``aegis serve``: run the approval service on uvicorn."""

from __future__ import annotations

import ipaddress

import click

from aegis.cli._output import note
from aegis.cli._store import is_dsn, store_option
from aegis.core.approval_request import parse_duration

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
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command()
@store_option
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
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    default="info",
    show_default=True,
)
def serve(  # noqa: PLR0917  # Click passes one argument per option
    db: str,
    host: str,
    port: int,
    approval_ttl: float,
    policy_path: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    insecure_http: bool,
    log_level: str,
) -> None:
    """Run the approval service: agents ask, reviewers decide, all of it audited.

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

    policy = Policy.from_yaml(policy_path) if policy_path is not None else None
    service = open_service(db, approval_ttl=approval_ttl, policy=policy)
    app = create_app(service)
    scheme = "https" if tls else "http"
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
    )
    uvicorn.Server(config).run()
