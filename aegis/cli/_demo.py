"""``aegis demo``: a governed agent session, end to end, in a few seconds."""

from __future__ import annotations

import click

from aegis.demo import run_demo

__all__ = ["demo"]


@click.command()
@click.option(
    "--db",
    "db_path",
    default="aegis_audit.db",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="Audit database to write (created if missing).",
)
@click.option(
    "--policy",
    "policy_path",
    type=click.Path(dir_okay=False),
    help="Use this policy instead of the demo's own.",
)
@click.option(
    "--interactive/--no-interactive",
    default=None,
    help="Ask for approvals at the terminal (default: only when stdin is a terminal).",
)
@click.pass_context
def demo(
    ctx: click.Context, db_path: str, policy_path: str | None, interactive: bool | None
) -> None:
    """Run a demo agent against a small local CRM, under a policy.

    Reads and small refunds run on their own, updates, larger refunds and
    deletes ask you for approval, deleting every customer is blocked; every
    step lands in the audit trail, which is then listed and verified.
    Without a terminal, approvals follow a printed rule so the demo also
    runs in CI.

    \b
    Examples:
      aegis demo
      aegis demo --db /tmp/demo.db --no-interactive
      aegis audit list --db /tmp/demo.db      # afterwards
    """
    ctx.exit(run_demo(db_path=db_path, policy_path=policy_path, interactive=interactive))
