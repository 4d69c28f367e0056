"""``aegis simulate``: what a policy decides for actions, without running them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import IO, Any

import click

from aegis.cli._app import CheckFailed
from aegis.cli._output import (
    APPROVAL_STYLES,
    RISK_STYLES,
    Cell,
    Styled,
    emit_json,
    info,
    json_text,
    note,
    print_table,
    warn,
)
from aegis.cli._params import ActionParam, DateTimeParam, format_option, parse_actions_jsonl
from aegis.core._text import counted
from aegis.core.action import Action, thaw
from aegis.core.decision import Approval, PolicyDecision
from aegis.core.policy import Policy

__all__ = [
    "action_json",
    "decision_cells",
    "fail_on_hits",
    "params_text",
    "simulate",
    "summary_line",
]

DECISION_COLUMNS = ("#", "Action", "Params", "Approval", "Risk", "Rule", "Reason")

#: which approvals make ``--fail-on X`` fail: approve is the stricter gate
FAIL_ON = {
    "block": frozenset({Approval.BLOCK}),
    "approve": frozenset({Approval.APPROVE, Approval.BLOCK}),
}


def action_json(action: Action) -> dict[str, Any]:
    """An action as the JSON object ``--actions`` files use."""
    return {
        "type": action.type,
        "target": action.target,
        "params": thaw(action.params),
        "description": action.description,
    }


def params_text(action: Action) -> str:
    """An action's params as one line of JSON, or "" when it has none."""
    if not action.params:
        return ""
    return json_text(thaw(action.params))


def decision_cells(position: int, decision: PolicyDecision) -> list[Cell]:
    """One table row for a decision."""
    action = decision.action
    approval = decision.approval.value
    risk = decision.risk_level.name
    return [
        str(position),
        f"{action.type}:{action.target}",
        params_text(action),
        Styled(approval, APPROVAL_STYLES.get(approval, "")),
        Styled(risk, RISK_STYLES.get(risk, "")),
        decision.matched_rule,
        decision.reason,
    ]


def summary_line(counts: Counter[Approval]) -> str:
    """``"N auto, N need approval, N blocked"``."""
    return (
        f"{counts[Approval.AUTO]} auto,"
        f" {counted(counts[Approval.APPROVE], 'needs approval', 'need approval')},"
        f" {counts[Approval.BLOCK]} blocked"
    )


def fail_on_hits(counts: Counter[Approval], fail_on: str | None) -> int:
    """How many decisions trip ``--fail-on`` (0 when it is not set)."""
    if fail_on is None:
        return 0
    return sum(counts[approval] for approval in FAIL_ON[fail_on])


@click.command(short_help="Show what a policy decides for actions, without running them.")
@click.argument("policy_path", metavar="POLICY", type=click.Path(dir_okay=False))
@click.argument("actions", nargs=-1, type=ActionParam(), metavar="[ACTION]...")
@click.option(
    "--actions",
    "actions_file",
    metavar="FILE.jsonl",
    type=click.File("r", encoding="utf-8"),
    help='JSONL file, one {"type", "target", "params", "description"} per line; - for stdin.',
)
@click.option(
    "--at",
    "at",
    type=DateTimeParam(),
    help="Evaluate as if it were this time (ISO 8601, UTC without an offset).",
)
@click.option(
    "--fail-on",
    type=click.Choice(sorted(FAIL_ON)),
    help="Exit 1 if any action is blocked (block), or needs approval or is blocked (approve).",
)
@format_option("table", "json")
def simulate(  # noqa: PLR0917  # Click passes one argument per option
    policy_path: str,
    actions: Sequence[Action],
    actions_file: IO[str] | None,
    at: datetime | None,
    fail_on: str | None,
    output_format: str,
) -> None:
    """Show what POLICY decides for each action, without running anything.

    Write an action as type:target, or type:target:{JSON} to give params
    (quote it for the shell). The params start at the first colon followed
    by "{", so the target may contain colons (read:https://x.com/a) and so
    may the JSON. NaN and Infinity are refused: JSON has no such numbers.
    Prints one decision per action and a summary line.

    \b
    Examples:
      aegis simulate policy.yaml read:crm delete:crm read:https://x.com/a
      aegis simulate policy.yaml 'refund:stripe:{"amount": 900}' --at 2026-11-24T23:00+01:00
      aegis simulate policy.yaml --actions plan.jsonl --fail-on block --format json
    """
    all_actions = list(actions)
    if actions_file is not None:
        try:
            all_actions.extend(parse_actions_jsonl(actions_file, str(actions_file.name)))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--actions'") from exc
    if not all_actions:
        raise click.UsageError(
            "give at least one action (type:target) or --actions FILE.jsonl",
        )

    policy = Policy.from_yaml(policy_path)
    decisions = [policy.evaluate(action, now=at) for action in all_actions]
    if policy.limits is not None:
        note(
            "note: limits, budgets and after/not_after rules are shown for a fresh session"
            " with nothing counted yet; give history with `aegis test`"
        )
    counts = Counter(d.approval for d in decisions)

    if output_format == "json":
        emit_json(
            {
                "policy": policy_path,
                "at": at.isoformat() if at else None,
                "decisions": [_decision_json(d) for d in decisions],
                "summary": {
                    "total": len(decisions),
                    **{approval.value: counts[approval] for approval in Approval},
                },
            }
        )
    else:
        print_table(
            DECISION_COLUMNS,
            (decision_cells(i, d) for i, d in enumerate(decisions, 1)),
            wrap=("Action", "Params", "Rule", "Reason"),
        )
        info(summary_line(counts))

    hits = fail_on_hits(counts, fail_on)
    if hits:
        if output_format == "json":
            warn(f"{counted(hits, 'action')} hit --fail-on {fail_on}")
        raise CheckFailed(f"{hits} of {counted(len(decisions), 'action')} hit --fail-on {fail_on}")


def _decision_json(decision: PolicyDecision) -> dict[str, Any]:
    return {
        "action": action_json(decision.action),
        "approval": decision.approval.value,
        "risk_level": decision.risk_level.name,
        "matched_rule": decision.matched_rule,
        "reason": decision.reason,
    }
