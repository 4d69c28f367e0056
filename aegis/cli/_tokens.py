"""``aegis token``: create, list and revoke the approval service's bearer tokens."""

from __future__ import annotations

import asyncio
import getpass
from datetime import UTC, datetime, timedelta

import click

from aegis.cli._output import emit_json, note, print_table, success
from aegis.cli._params import format_option
from aegis.cli._store import audit_trail, open_tables, store_option
from aegis.core.approval_request import Role, TokenInfo, iso, parse_duration
from aegis.core.identity import KEY_SEPARATOR
from aegis.errors import ConfigurationError
from aegis.stores.approvals import ApprovalStore, hash_token, new_token

__all__ = ["audit_revocation", "ended_by", "operator", "token", "withdrawn_by"]

#: the longest a token may live: ten years
_MAX_LIFETIME = 3650 * 86400.0


@click.group()
def token() -> None:
    """Manage the bearer tokens of the approval service (`aegis serve`).

    Agents use a token with the role `agent` to ask for approval; people
    use one with the role `reviewer` to decide; a Prometheus scraper uses
    one with the role `metrics`, which reads /metrics and nothing else.
    Tokens are stored hashed: the token itself is printed once, when created.
    """


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = parse_duration(value)
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc)) from None
    if seconds > _MAX_LIFETIME:
        raise click.BadParameter(f"{value!r} is longer than ten years; pick a shorter lifetime")
    return seconds


@token.command("create")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice([r.value for r in Role]),
    required=True,
    help="agent: asks for approval; reviewer: decides; metrics: reads /metrics only.",
)
@click.option("--group", "groups", multiple=True, help="A reviewer group (repeatable).")
@click.option("--expires", callback=_duration, help="Lifetime such as 30d or 12h; none by default.")
@click.option(
    "--oidc-subject",
    metavar="SUB",
    help="Tie a reviewer token to this person of the OpenID provider (their 'sub'): "
    "its decisions are theirs, and count once with their sign-ins. Its groups stay "
    "the token's --group, not the provider's, until `aegis token revoke`.",
)
@click.option(
    "--oidc-issuer",
    metavar="URL",
    help="The provider of --oidc-subject, required with it (usually the --oidc-issuer of "
    "`aegis serve`): the token is that subject at this provider only, so a service that "
    "trusts another issuer later never credits it to whoever holds the subject there.",
)
@store_option
def create(  # noqa: PLR0917  # Click passes one argument per option
    name: str,
    role: str,
    groups: tuple[str, ...],
    expires: float | None,
    oidc_subject: str | None,
    oidc_issuer: str | None,
    db: str,
) -> None:
    """Create a token called NAME and print it once.

    \b
    Examples:
      aegis token create alice --role reviewer --group finance
      aegis token create alice-cli --role reviewer --group finance \\
        --oidc-subject 248289761001 --oidc-issuer https://id.example.com
      export AEGIS_TOKEN=$(aegis token create support-bot --role agent --expires 30d)
      aegis token create prometheus --role metrics > /etc/prometheus/aegis.token
    """
    name = name.strip()
    if not name or len(name) > 200 or not name.isprintable() or KEY_SEPARATOR in name:
        raise click.BadParameter(
            f"a token name must be 1 to 200 printable characters, without {KEY_SEPARATOR!r}",
            param_hint="NAME",
        )
    if oidc_issuer is not None and oidc_subject is None:
        raise click.BadParameter("--oidc-issuer needs --oidc-subject", param_hint="--oidc-issuer")
    if oidc_subject is not None:
        if role != Role.REVIEWER.value:
            raise click.BadParameter(
                "only a reviewer token can be tied to a person", param_hint="--oidc-subject"
            )
        if not oidc_subject or len(oidc_subject) > 255 or not oidc_subject.isprintable():
            raise click.BadParameter(
                "a subject is 1 to 255 printable characters", param_hint="--oidc-subject"
            )
        if oidc_issuer is None:
            raise click.BadParameter(
                "a subject is a person only at its provider: add --oidc-issuer URL "
                "(the --oidc-issuer of `aegis serve`)",
                param_hint="--oidc-subject",
            )
        if not oidc_issuer.startswith(("https://", "http://")):
            raise click.BadParameter("an issuer is an http(s) URL", param_hint="--oidc-issuer")
    if groups and role == Role.METRICS.value:
        raise click.BadParameter(
            "a metrics token reads /metrics only; reviewer groups mean nothing to it",
            param_hint="--group",
        )
    for group in groups:
        if not group.strip():
            raise click.BadParameter("a group name must not be empty", param_hint="--group")
    now = datetime.now(UTC)
    secret = new_token()
    info = TokenInfo(
        name=name,
        role=Role(role),
        groups=tuple(g.strip() for g in groups),
        created_at=now,
        expires_at=None if expires is None else now + timedelta(seconds=expires),
        oidc_issuer=oidc_issuer,
        oidc_subject=oidc_subject,
    )
    with open_tables(db, create=True) as store:
        store.create_token(info, hash_token(secret))
    click.echo(secret)
    until = f", expires {iso(info.expires_at)}" if info.expires_at else ""
    person = f", decides as OpenID subject {oidc_subject!r}" if oidc_subject else ""
    note(f"token {name!r} ({role}{until}{person}) created; it is shown only this once")


@token.command("list")
@store_option
@format_option("table", "json")
def list_tokens(db: str, output_format: str) -> None:
    """List the tokens (never the secrets): name, role, groups, expiry, state."""
    now = datetime.now(UTC)
    with open_tables(db, create=False) as store:
        tokens = store.list_tokens()
    if output_format == "json":
        emit_json([t.to_json(now) for t in tokens])
        return
    shown = print_table(
        ("Name", "Role", "Groups", "Created", "Expires", "State", "Person"),
        (
            (
                t.name,
                str(t.role) if t.known_role else f"{t.role} (unknown)",
                ", ".join(t.groups) or "-",
                iso(t.created_at)[:19] if t.created_at else "-",
                iso(t.expires_at)[:19] if t.expires_at else "never",
                t.state_at(now),
                t.oidc_subject or "-",
            )
            for t in tokens
        ),
    )
    if not shown:
        note(f"no tokens in {db}; create one with `aegis token create NAME --role reviewer`")
    for t in tokens:
        if t.known_role is None:
            note(
                f"token {t.name!r} has the role {str(t.role)!r}, which this version of Aegis "
                "does not know (a newer version's, or edited by hand): the service refuses it; "
                f"upgrade Aegis, or revoke it (aegis token revoke {t.name})"
            )


@token.command("revoke")
@click.argument("name")
@store_option
def revoke(name: str, db: str) -> None:
    """Revoke the token called NAME; it stops working at once.

    Its approvals of requests still pending stop counting (each withdrawal
    is audited): a leaked token must not be one of a two-person rule's
    people. The grants a reviewer token gave end with it (each revocation
    is audited): a grant keeps approving actions in its giver's name, and a
    revoked giver's word must not. A token tied to an OpenID subject
    decided and gave its grants as that person, who may have done so from
    the inbox too; those are withdrawn and ended too, as nothing tells
    them apart.
    """
    with open_tables(db, create=False) as store:
        revoked = store.revoke_token(name, datetime.now(UTC), by=operator())
        if not revoked:
            raise click.ClickException(
                f"no active token named {name!r}; `aegis token list` shows them"
            )
        withdrawn = withdrawn_by(store, "token", name)
        # Ended by the revocation itself, in its transaction: as queued for the trail.
        ended = ended_by(store, "token", name)
        # Always: the revocation's own record is queued, whatever it withdrew.
        audit_revocation(store, db)
    success(f"token {name!r} revoked")
    if withdrawn:
        note(f"its approvals of these pending requests no longer count: {', '.join(withdrawn)}")
    if ended:
        note(f"the grants it gave are revoked too: {', '.join(ended)}")


def withdrawn_by(store: ApprovalStore, field: str, value: str) -> list[str]:
    """The requests of the queued withdrawals whose context's ``field`` is ``value``.

    For the operator's eyes only: a running service may have written some
    of the events already, and then they are not named.
    """
    events = store.pending_events(timedelta(0), limit=1000)
    return [
        e.request_id
        for e in events
        if e.kind == "approval.withdrawn" and e.context.get(field) == value
    ]


def ended_by(store: ApprovalStore, field: str, value: str) -> list[str]:
    """The grants of the queued ends (``grant.revoked``) whose context's ``field`` is ``value``.

    For the operator's eyes only, as :func:`withdrawn_by`.
    """
    events = store.pending_events(timedelta(0), limit=1000)
    return [
        str(e.context.get("grant"))
        for e in events
        if e.kind == "grant.revoked" and e.context.get(field) == value
    ]


def operator() -> str:
    """Who runs this command, as the audit trail names an operator."""
    return f"operator:{getpass.getuser()}"


def audit_revocation(store: ApprovalStore, db: str) -> None:
    """Write the queued events of a revocation (withdrawals, grants ended, its own) now.

    A running service would write them at its next sweep; there may be none.
    """
    # Imported here: the service is only needed for this.
    from aegis.server.service import ApprovalService  # noqa: PLC0415

    audit = audit_trail(db)
    try:
        asyncio.run(ApprovalService(store, audit).flush_audit())
    finally:
        audit.close()
