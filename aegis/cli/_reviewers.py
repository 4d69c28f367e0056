"""``aegis reviewer``: take back everything a person of the OpenID provider may do here."""

from __future__ import annotations

from datetime import UTC, datetime

import click

from aegis.cli._output import emit_json, note, print_table, success
from aegis.cli._params import format_option
from aegis.cli._store import open_tables, store_option
from aegis.cli._tokens import audit_revocation, ended_by, operator, withdrawn_by
from aegis.core.approval_request import iso
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
    Requests already decided stay decided. The revocation sticks: they
    cannot sign in again, nor be given a token, until `aegis reviewer
    reinstate`. The audit trail records it, naming you, whatever it ended.

    \b
    Example:
      aegis reviewer revoke 'https://id.example.com#248289761001'
    """
    who = _person(person)
    with open_tables(db, create=False) as store:
        tokens, sessions = store.revoke_person(
            who.issuer, who.subject, datetime.now(UTC), by=operator()
        )
        withdrawn = withdrawn_by(store, "person", who.key)
        # Ended by the revocation itself, in its transaction: as queued for the trail.
        ended = ended_by(store, "person", who.key)
        # Always: the revocation's own record is queued, whatever it withdrew.
        audit_revocation(store, db)
    success(f"reviewer {who.key} revoked; they cannot sign in until reinstated")
    counted = "1 inbox session" if sessions == 1 else f"{sessions} inbox sessions"
    note(f"{counted} ended; tokens revoked: {', '.join(tokens) or 'none'}")
    if withdrawn:
        note(f"their approvals of these pending requests no longer count: {', '.join(withdrawn)}")
    if ended:
        note(f"the grants they gave are revoked too: {', '.join(ended)}")


@reviewer.command("reinstate")
@click.argument("person", metavar="PERSON")
@store_option
def reinstate(person: str, db: str) -> None:
    """Let PERSON (ISSUER#SUBJECT), revoked by `aegis reviewer revoke`, sign in again.

    Nothing revoked comes back: they sign in anew (as the provider allows),
    and tokens tied to them are created anew. The audit trail records the
    reinstatement, naming you.

    \b
    Example:
      aegis reviewer reinstate 'https://id.example.com#248289761001'
    """
    who = _person(person)
    with open_tables(db, create=False) as store:
        if not store.reinstate_person(who.issuer, who.subject, datetime.now(UTC), by=operator()):
            raise click.ClickException(
                f"{who.key} is not revoked; `aegis reviewer list` shows who is"
            )
        audit_revocation(store, db)
    success(f"reviewer {who.key} reinstated; they may sign in again")


@reviewer.command("list")
@store_option
@format_option("table", "json")
def list_revoked(db: str, output_format: str) -> None:
    """List the people revoked by `aegis reviewer revoke`: when, and by whom."""
    with open_tables(db, create=False) as store:
        people = store.revoked_people()
    if output_format == "json":
        emit_json([{"person": p, "revoked_at": iso(at), "revoked_by": by} for p, at, by in people])
        return
    shown = print_table(
        ("Person", "Revoked", "By"), ((p, iso(at)[:19], by) for p, at, by in people)
    )
    if not shown:
        note("nobody is revoked")
