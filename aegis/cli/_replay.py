"""``aegis replay``: what a new policy would have decided for recorded actions."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import click

from aegis.cli._app import CheckFailed
from aegis.cli._database import note_trail, open_audit, trail_schema
from aegis.cli._output import (
    APPROVAL_STYLES,
    Cell,
    Styled,
    emit_json,
    info,
    print_table,
    success,
    warn,
)
from aegis.cli._params import db_option, format_option
from aegis.core._text import counted
from aegis.core.action import Action
from aegis.core.decision import PolicyDecision
from aegis.core.policy import Policy

__all__ = ["Change", "replay", "replay_records"]

CHANGE_COLUMNS = ("Id", "Time", "Action", "Before", "After", "Rule")


@dataclass(frozen=True, slots=True)
class Change:
    """A recorded decision that the new policy would make differently."""

    record: dict[str, Any]
    decision: PolicyDecision

    @property
    def before(self) -> str:
        """The recorded verdict, e.g. ``auto (LOW)``."""
        return f"{self.record['approval']} ({self.record['risk_level']})"

    @property
    def after(self) -> str:
        """The new verdict, e.g. ``block (CRITICAL)``."""
        return f"{self.decision.approval.value} ({self.decision.risk_level.name})"

    @property
    def transition(self) -> str:
        """How the approval moved (``auto -> block``), or the risk when only it moved."""
        old, new = self.record["approval"], self.decision.approval.value
        if old != new:
            return f"{old} -> {new}"
        return f"{old}, risk {self.record['risk_level']} -> {self.decision.risk_level.name}"


def _action_of(record: dict[str, Any]) -> Action | None:
    """The record's action, or None when a hand-edited row cannot make one."""
    params = record.get("action_params")
    action_type, target = record.get("action_type"), record.get("action_target")
    if params is None:
        params = {}
    if not (
        isinstance(params, Mapping) and isinstance(action_type, str) and isinstance(target, str)
    ):
        return None
    description = record.get("action_desc")
    return Action(action_type, target, params, description if isinstance(description, str) else "")


def _moment(record: dict[str, Any]) -> datetime | None:
    # When the action started is closer to when it was decided than when its
    # record was written (after the executor, or a long approval wait).
    for field in ("started_at", "timestamp"):
        try:
            return datetime.fromisoformat(record[field])
        except (KeyError, TypeError, ValueError):
            continue
    return None


def replay_records(
    policy: Policy,
    records: Iterator[dict[str, Any]],
    counter: Counter[str],
    skipped: list[int],
) -> Iterator[Change]:
    """Re-evaluate each record under ``policy``; yield the decisions that change.

    Each action is evaluated when it started (its record's ``started_at``,
    else its ``timestamp``) so that time windows replay as they were.
    ``counter`` gets ``checked`` and ``undated`` counts.
    A record that cannot be rebuilt as an action (a hand-edited row whose
    params are not an object, or whose type or target is not text) is not
    evaluated: its id goes to ``skipped``.
    """
    for record in records:
        action = _action_of(record)
        if action is None:
            skipped.append(record["id"])
            continue
        counter["checked"] += 1
        moment = _moment(record)
        if moment is None:
            counter["undated"] += 1
        decision = policy.evaluate(action, now=moment)
        if (
            decision.approval.value != record["approval"]
            or decision.risk_level.name != record["risk_level"]
        ):
            yield Change(record, decision)


def _skipped_message(skipped: list[int]) -> str:
    ids = ", ".join(str(i) for i in skipped[:10]) + (", ..." if len(skipped) > 10 else "")
    return (
        f"{counted(len(skipped), 'record')} could not be replayed (ids {ids}): their action"
        " type, target or params are not what the runtime writes; `aegis audit verify`"
        " shows whether the log was edited"
    )


def _change_cells(change: Change) -> list[Cell]:
    record, decision = change.record, change.decision
    new = decision.approval.value
    return [
        str(record["id"]),
        str(record["timestamp"])[:19].replace("T", " "),
        f"{record['action_type']}:{record['action_target']}",
        Styled(change.before, APPROVAL_STYLES.get(record["approval"], "")),
        Styled(change.after, APPROVAL_STYLES.get(new, "")),
        _rules(str(record["matched_rule"]), decision.matched_rule),
    ]


def _rules(before: str, after: str) -> str:
    return before if before == after else f"{before} -> {after}"


def _change_json(change: Change) -> dict[str, Any]:
    record, decision = change.record, change.decision
    return {
        "id": record["id"],
        "session_id": record["session_id"],
        "timestamp": record["timestamp"],
        "action": {
            "type": record["action_type"],
            "target": record["action_target"],
            "params": record.get("action_params") or {},
            "description": record.get("action_desc") or "",
        },
        "before": {
            "approval": record["approval"],
            "risk_level": record["risk_level"],
            "matched_rule": record["matched_rule"],
        },
        "after": {
            "approval": decision.approval.value,
            "risk_level": decision.risk_level.name,
            "matched_rule": decision.matched_rule,
            "reason": decision.reason,
        },
    }


@click.command(short_help="Show which recorded decisions a new policy would change.")
@click.argument("policy_path", metavar="POLICY", type=click.Path(dir_okay=False))
@db_option
@click.option("--session", "session_id", help="Replay only this session's records.")
@click.option(
    "--fail-on-change",
    is_flag=True,
    help="Exit 1 if any decision would change (for CI).",
)
@format_option("table", "json")
def replay(
    policy_path: str,
    db_path: str,
    session_id: str | None,
    fail_on_change: bool,
    output_format: str,
) -> None:
    """Re-decide recorded actions under POLICY and show what would change.

    Every action in the audit trail is evaluated again, at the time it was
    recorded, and each decision that differs (approval or risk) is listed
    with the rule before and after. Nothing is executed.

    \b
    Examples:
      aegis replay new-policy.yaml --db aegis_audit.db
      aegis replay new-policy.yaml --session 3f2a... --format json
      aegis replay new-policy.yaml --fail-on-change      # in CI
    """
    policy = Policy.from_yaml(policy_path)
    counter: Counter[str] = Counter()
    skipped: list[int] = []
    with open_audit(db_path) as audit:
        records = audit.iter_log(session_id)
        # Changes are usually few even in a large log, so keeping them is cheap;
        # the records themselves stream.
        changes = list(replay_records(policy, records, counter, skipped))
    transitions = Counter(change.transition for change in changes)
    note_trail(audit, "records")

    if output_format == "json":
        emit_json(
            {
                "policy": policy_path,
                "db": audit.db_path,
                "schema": trail_schema(audit),
                "session_id": session_id,
                "checked": counter["checked"],
                "changed": len(changes),
                "skipped": skipped,
                "transitions": dict(transitions.most_common()),
                "changes": [_change_json(change) for change in changes],
            }
        )
    elif changes:
        print_table(
            CHANGE_COLUMNS,
            (_change_cells(change) for change in changes),
            wrap=("Action", "Rule"),
        )
        detail = ", ".join(f"{name}: {n}" for name, n in transitions.most_common())
        info(f"{len(changes)} of {counted(counter['checked'], 'decision')} would change: {detail}")
    else:
        success(f"no decision would change ({counted(counter['checked'], 'record')} replayed)")
    if skipped:
        warn(_skipped_message(skipped))
    if counter["undated"]:
        warn(
            f"{counted(counter['undated'], 'record has', 'records have')} no readable timestamp;"
            " replayed at the current time"
        )

    if fail_on_change and changes:
        raise CheckFailed(
            f"{counted(len(changes), 'decision')} would change and --fail-on-change is set"
        )
