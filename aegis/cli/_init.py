"""``aegis init``: write a commented starter policy that validates."""

from __future__ import annotations

from pathlib import Path

import click

from aegis.cli._output import info, note, success
from aegis.errors import AegisError

__all__ = ["STARTER_CASES", "STARTER_POLICY", "init"]

STARTER_POLICY = """\
# Aegis policy: what your agent may do on its own, what needs a human's yes,
# and what never runs. Rules are checked top to bottom and the first rule that
# matches an action decides; put narrow rules above broad ones.
#
#   aegis validate policy.yaml                      check this file
#   aegis simulate policy.yaml read:crm delete:crm  see what it decides
#   aegis test policy.yaml policy.cases.yaml        check the expected decisions
#   aegis schema > policy.schema.json               JSON Schema for your editor
version: "1"

# Compare type and target names without regard to case (after Unicode NFKC
# folding), so that "DELETE" meets the rule written for "delete*".
match_case: insensitive

# For actions no rule matches. "block" fails closed: an action you did not
# think of does not run until you write a rule for it.
defaults:
  risk_level: medium   # low | medium | high | critical
  approval: block      # auto | approve | block

rules:
  # Reading is harmless: let it run without asking.
  - name: reads
    description: Read-only operations on any system
    match: {type: "read*", target: "*"}   # shell-style globs
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

  # At most 20 emails an hour per agent; from the 21st on, a human decides.
  # Counts are shared by every process writing the same audit database.
  - name: email_rate
    match: {type: send_email}
    limit: {max: 20, per: 1h, key: [agent]}
    on_exceed: {approval: approve, risk_level: high}
    risk_level: low
    approval: auto

  # Deleting is irreversible: never let the agent do it.
  - name: no_deletes
    match: {type: "delete*"}
    risk_level: critical
    approval: block
"""


STARTER_CASES = """\
# Expected decisions of policy.yaml: run `aegis test policy.yaml policy.cases.yaml`
# (in CI too: --junit results.xml). Each case gives an action, optionally a time
# (at) and earlier actions (history), and what the policy must say: approval,
# risk_level, rule, and/or a text the reason contains.
cases:
  - name: reads run on their own
    action: {type: read, target: crm, params: {id: 7}}
    expect: {approval: auto, risk_level: low, rule: reads}

  - name: a refund in office hours needs approval
    action: {type: refund, target: stripe, params: {amount: 900}}
    at: "2026-11-24T10:00:00+01:00"
    expect: {approval: approve, rule: refunds}

  - name: a large refund at night never runs
    action: {type: refund, target: stripe, params: {amount: 900}}
    at: "2026-11-24T23:30:00+01:00"
    expect: {approval: block, risk_level: critical, rule: large_refunds_after_hours}

  - name: deletes are blocked
    action: {type: delete, target: crm, params: {id: 7}}
    expect: {approval: block, rule: no_deletes}

  - name: the 21st email in an hour needs a human
    action: {type: send_email, target: smtp}
    agent: support
    history:
      - {type: send_email, target: smtp, ago: 30m, count: 20}
    expect: {approval: approve, rule: email_rate, reason: "20 of 20"}

  - name: anything no rule mentions is blocked
    action: {type: launch, target: rocket}
    expect: {approval: block, rule: <default>}
"""


def _cases_path(policy: Path) -> Path:
    """``policy.cases.yaml`` beside ``policy.yaml``."""
    return policy.with_name(f"{policy.stem}.cases.yaml")


@click.command()
@click.option(
    "-o",
    "--output",
    default="policy.yaml",
    show_default=True,
    type=click.Path(dir_okay=False, allow_dash=True),
    help="Where to write the policy; '-' prints it on stdout.",
)
@click.option("--force", is_flag=True, help="Overwrite the files if they exist.")
def init(output: str, force: bool) -> None:
    """Write a commented starter policy to edit, and the cases that test it.

    It already validates: reads run on their own, refunds and updates need
    approval, emails are rate-limited, deletes and large late-night refunds
    are blocked, and anything else is blocked until a rule allows it. The
    cases (POLICY.cases.yaml beside it) run with `aegis test`.

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
    cases = _cases_path(path)
    for target in (path, cases):
        if target.exists() and not force:
            raise AegisError(
                f"{target} already exists; pass --force to overwrite it, or -o to write elsewhere"
            )
    named = STARTER_CASES.replace("policy.cases.yaml", "\0").replace("policy.yaml", path.name)
    for target, text in ((path, STARTER_POLICY), (cases, named.replace("\0", cases.name))):
        try:
            target.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise AegisError(
                f"cannot write {target}: {exc.strerror}; check the folder exists and is writable"
            ) from exc
        success(f"wrote {target}")
    info(f"next: aegis validate {path}")
    note(f"      aegis test {path} {cases}")
    note(f"      aegis simulate {path} read:crm 'refund:stripe:{{\"amount\": 900}}' delete:crm")
