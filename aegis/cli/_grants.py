"""``aegis grants``: the standing approvals reviewers gave, and taking them back."""

from __future__ import annotations

import asyncio
import getpass
from datetime import UTC, datetime

import click

from aegis.cli._output import emit_json, note, print_table, success
from aegis.cli._params import format_option
from aegis.cli._store import audit_trail, open_tables, store_option
from aegis.core.approval_request import Grant, iso
from aegis.stores.approvals import ApprovalStore

__all__ = ["grants"]


@click.group()
def grants() -> None:
    """List and revoke grants: approvals that let later, identical actions pass unasked.

    A reviewer gives one by approving with `grant_minutes`; it covers the
    same action type, target and rule in the same session until it expires.
    """


@grants.command("list")
@click.option("--all", "include_all", is_flag=True, help="Include revoked and expired grants.")
@store_option
@format_option("table", "json")
def list_grants(include_all: bool, db: str, output_format: str) -> None:
    """List active grants, newest first."""
    with open_tables(db, create=False) as store:
        now = _store_now(store)
        found = _every_grant(store, now, include_inactive=include_all)
        # Active as the store judges it, by the database server's clock too.
        live = {g.id for g in _every_grant(store, now)} if include_all else {g.id for g in found}
    if output_format == "json":
        emit_json([g.to_json() for g in found])
        return
    shown = print_table(
        ("Grant", "Session", "Action", "Rule", "Given by", "Expires", "State"),
        (
            (
                g.id,
                g.session_id,
                f"{g.action_type} -> {g.action_target}",
                g.matched_rule,
                ", ".join(g.granted_by),
                iso(g.expires_at)[:19],
                "active" if g.id in live else "revoked" if g.revoked_at else "expired",
            )
            for g in found
        ),
    )
    if not shown:
        note("no grants" if include_all else "no active grants (--all shows the others)")


def _store_now(store: ApprovalStore) -> datetime:
    """The time by the database server's clock, which grants end by; this host's for a file.

    A grant ends by the clock of the database its services share: this
    host's clock, off by minutes, would call an ended grant active.
    """
    database_time = getattr(store, "database_time", None)
    return database_time() if callable(database_time) else datetime.now(UTC)


def _every_grant(
    store: ApprovalStore, now: datetime, *, include_inactive: bool = False
) -> list[Grant]:
    """Every grant, page by page: the store lists 1000 at a time, newest first."""
    found: list[Grant] = []
    before = None
    while page := store.list_grants(now, include_inactive=include_inactive, before=before):
        found += page
        before = (page[-1].created_at, page[-1].id)
    return found


@grants.command("revoke")
@click.argument("grant_id")
@store_option
def revoke(grant_id: str, db: str) -> None:
    """Revoke GRANT_ID: the actions it covered ask a reviewer again.

    The revocation is written to the audit trail, naming the operator.
    """
    # Imported here: the service module is only needed for this command.
    from aegis.server.service import ApprovalService  # noqa: PLC0415

    with open_tables(db, create=False) as store:
        audit = audit_trail(db)
        try:
            # The operator holds the database, not a reviewer group: any grant is theirs to stop.
            operator = f"operator:{getpass.getuser()}"
            service = ApprovalService(store, audit)
            grant = asyncio.run(service.operator_revoke_grant(grant_id, operator))
        finally:
            audit.close()
    success(f"grant {grant.id} revoked")
