"""``aegis init``: write a commented starter policy that validates."""

from __future__ import annotations

from pathlib import Path

import click

from aegis.cli._output import info, note, success
from aegis.errors import AegisError

__all__ = ["STARTER_POLICY", "init"]

STARTER_POLICY = """\
# Aegis policy: what your agent may do on its own, what needs a human's yes,
# and what never runs. Rules are checked top to bottom and the first rule that
# matches an action decides; put narrow rules above broad ones.
#
#   aegis validate policy.yaml                      check this file
#   aegis simulate policy.yaml read:crm delete:crm  see what it decides
#   aegis schema > policy.schema.json               JSON Schema for your editor
version: "1"

# For actions no rule matches. "block" fails closed: an action you did not
# think of does not run until you write a rule for it.
defaults:
  risk_level: medium   # low | medium | high | critical
  approval: block      # auto | approve | block

rules:
  # Reading is harmless: let it run without asking.
  - name: reads
    description: Read-only operations on any system
    match: {type: "read*", target: "*"}   # shell-style globs, case-sensitive
    risk_level: low
    approval: auto

  # Large refunds outside office hours never run, whoever approves.
  # Conditions must all hold; param_* look inside the action's params.
  - name: large_refunds_after_hours
    match: {type: refund}
    conditions:
      param_gt: {amount: 500}
      time_after: "18:00"      # a window across midnight: 18:00 to 08:00
      time_before: "08:00"
      timezone: Europe/Berlin
    risk_level: critical
    approval: block

  # Every other refund needs a human's approval.
  - name: refunds
    match: {type: refund}
    risk_level: high
    approval: approve

  # Changes to records need approval too.
  - name: writes
    match: {type: "update*"}
    risk_level: medium
    approval: approve

  # Deleting is irreversible: never let the agent do it.
  - name: no_deletes
    match: {type: "delete*"}
    risk_level: critical
    approval: block
"""


@click.command()
@click.option(
    "-o",
    "--output",
    default="policy.yaml",
    show_default=True,
    type=click.Path(dir_okay=False, allow_dash=True),
    help="Where to write the policy; '-' prints it on stdout.",
)
@click.option("--force", is_flag=True, help="Overwrite the file if it exists.")
def init(output: str, force: bool) -> None:
    """Write a commented starter policy to edit.

    It already validates: reads run on their own, refunds and updates need
    approval, deletes and large late-night refunds are blocked, and anything
    else is blocked until a rule allows it.

    \b
    Examples:
      aegis init
      aegis init -o policies/agent.yaml
      aegis init -o - | less
    """
    if output == "-":
        click.echo(STARTER_POLICY, nl=False)
        return
    path = Path(output)
    if path.exists() and not force:
        raise AegisError(
            f"{path} already exists; pass --force to overwrite it, or -o to write elsewhere"
        )
    try:
        path.write_text(STARTER_POLICY, encoding="utf-8")
    except OSError as exc:
        raise AegisError(
            f"cannot write {path}: {exc.strerror}; check the folder exists and is writable"
        ) from exc
    success(f"wrote {path}")
    info(f"next: aegis validate {path}")
    note(f"      aegis simulate {path} read:crm 'refund:stripe:{{\"amount\": 900}}' delete:crm")
