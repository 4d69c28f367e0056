"""``aegis reviewer``: take back everything a person of the OpenID provider may do here."""

from __future__ import annotations

from datetime import UTC, datetime

import click

from aegis.cli._output import note, success
from aegis.cli._store import open_tables, store_option
from aegis.cli._tokens import audit_revocation, given_by, withdrawn_by
from aegis.core.identity import KEY_SEPARATOR, Identity

__all__ = ["reviewer"]


@click.group()
def reviewer() -> None:
    """Manage the people who review through the OpenID provider (`aegis serve --oidc-issuer`).

    A person signed in with the provider decides as ISSUER#SUBJECT, as
    their decisions, the audit trail and `aegis approvals show` name them.
    """


def _person(key: str) -> Identity:
    issuer, sep, subject = key.partition(KEY_SEPARATOR)
    if not sep or not subject or not issuer.startswith(("https://", "http://")):
        raise click.BadParameter(
            "a person is ISSUER#SUBJECT, as decisions name them "
            "(for instance https://id.example.com#248289761001)",
            param_hint="PERSON",
        )
    return Identity(issuer, subject)


@reviewer.command("revoke")
@click.argument("person", metavar="PERSON")
@store_option
def revoke(person: str, db: str) -> None:
    """Revoke PERSON (ISSUER#SUBJECT): their sign-ins, tokens, grants and pending approvals.

    Every inbox session they signed in with ends at once, and so do the
    reviewer tokens tied to them (`aegis token create --oidc-subject`);
    their approvals of requests still pending stop counting and the
    grants they gave end, each audited, as `aegis token revoke` does.
    Requests already decided stay decided. Signing in again is the
    provider's to allow: remove or disable them there too.

    \b
    Example:
      aegis reviewer revoke 'https://id.example.com#248289761001'
    """
    who = _person(person)
    with open_tables(db, create=False) as store:
        tokens, sessions = store.revoke_person(who.issuer, who.subject, datetime.now(UTC))
        withdrawn = withdrawn_by(store, "person", who.key)
        given = given_by(store, lambda key: Identity.from_key(key) == who)
        because = f"reviewer {who.key} revoked"
        ended = audit_revocation(store, db, because, given) if given or withdrawn else []
    success(f"reviewer {who.key} revoked")
    counted = "1 inbox session" if sessions == 1 else f"{sessions} inbox sessions"
    note(f"{counted} ended; tokens revoked: {', '.join(tokens) or 'none'}")
    if withdrawn:
        note(f"their approvals of these pending requests no longer count: {', '.join(withdrawn)}")
    if ended:
        note(f"the grants they gave are revoked too: {', '.join(ended)}")
