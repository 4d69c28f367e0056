"""``aegis demo``: a governed agent session against a small CRM, end to end.

An "agent" plans six actions on a local customer database. The policy
(``examples/policy.yaml``; the same text ships as ``aegis/demo_policy.yaml``)
lets reads and small refunds run, asks about updates and large refunds,
and blocks deleting every customer. Approvals are asked at the terminal
when there is one; otherwise a printed rule answers, so the demo runs in
CI. The results, the audit trail and its verified hash chain are printed.

Run it with ``aegis demo`` or ``python -m aegis.demo``.
"""

from __future__ import annotations

import asyncio
import sys
from importlib.resources import files
from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.table import Table

from aegis.core.action import Action
from aegis.core.decision import PolicyDecision
from aegis.core.plan import ExecutionPlan
from aegis.core.policy import Policy
from aegis.core.result import Result
from aegis.core.risk import RiskLevel
from aegis.demo_crm import CRMExecutor
from aegis.errors import AegisError
from aegis.runtime.approval import ApprovalHandler, CLIApprovalHandler
from aegis.runtime.approval_callback import CallbackApprovalHandler
from aegis.runtime.audit import AuditLogger
from aegis.runtime.engine import Runtime

__all__ = ["AGENT_PLAN", "NO_TERMINAL_RULE", "demo_policy", "main", "run_demo"]

#: what the demo agent wants to do, in order
AGENT_PLAN: tuple[Action, ...] = (
    Action("read", "crm", {"table": "customers"}, "Look up all customers"),
    Action("update", "crm", {"id": 2, "fields": {"tier": "gold"}}, "Upgrade Grace Hopper to gold"),
    Action("refund", "billing", {"customer_id": 3, "amount": 30}, "Goodwill refund of 30"),
    Action("delete", "crm", {"scope": "all"}, "Clean up: delete every customer"),
    Action("refund", "billing", {"customer_id": 1, "amount": 900}, "Refund an annual plan (900)"),
    Action("read", "crm", {"id": 2}, "Check Grace Hopper's record"),
)

#: how approvals are answered when nobody is at a terminal
NO_TERMINAL_RULE = "no terminal: approving LOW and MEDIUM risk, denying HIGH and CRITICAL"

_STATUS_STYLE = {
    "success": "green",
    "failed": "bold red",
    "blocked": "red",
    "denied": "yellow",
    "skipped": "dim",
}
_VERDICT_STYLE = {"auto": "green", "approve": "yellow", "block": "bold red"}


def demo_policy() -> Policy:
    """The demo's policy, read from the copy shipped inside the package."""
    text = files("aegis").joinpath("demo_policy.yaml").read_text(encoding="utf-8")
    # Parsed from text, not a path: an installed package may live in a zip.
    import yaml  # noqa: PLC0415  # only the demo needs YAML at this point

    return Policy.from_dict(yaml.safe_load(text), source="aegis/demo_policy.yaml")


def run_demo(
    *,
    db_path: str | Path = "aegis_audit.db",
    policy_path: str | Path | None = None,
    interactive: bool | None = None,
    console: Console | None = None,
    input_stream: TextIO | None = None,
) -> int:
    """Run the demo and return the exit code: 0 when the audit chain verifies.

    Args:
        db_path: the SQLite audit database to append to (created if missing).
        policy_path: a policy file to use instead of the demo's own.
        interactive: ask for approvals at the terminal; by default only when
            the input is a terminal.
        console: where to print; a Rich console on stdout by default.
        input_stream: where interactive answers come from; stdin by default.

    Raises:
        PolicyError: ``policy_path`` is not a valid policy.
        AuditError: the audit database cannot be opened or written.
    """
    console = console if console is not None else Console()
    policy = demo_policy() if policy_path is None else Policy.from_yaml(policy_path)
    stream = input_stream if input_stream is not None else sys.stdin
    if interactive is None:
        interactive = _is_terminal(stream)
    session = _session(
        policy,
        policy_path=policy_path,
        db_path=Path(db_path),
        interactive=interactive,
        console=console,
        stream=stream,
    )
    return asyncio.run(session)


def _is_terminal(stream: TextIO | None) -> bool:
    try:
        return stream is not None and stream.isatty()
    except ValueError:  # a closed stream is no terminal
        return False


def _approver(interactive: bool, console: Console, stream: TextIO) -> ApprovalHandler:
    if interactive:
        return CLIApprovalHandler(input_stream=stream, output_stream=console.file)

    def rule(decision: PolicyDecision) -> bool:
        approved = decision.risk_level <= RiskLevel.MEDIUM
        verdict = "[green]approved[/]" if approved else "[yellow]denied[/]"
        action = decision.action
        console.print(
            f"  {verdict} by the rule: {action.type} -> {action.target} "
            f"({decision.risk_level.name})",
            highlight=False,
        )
        return approved

    return CallbackApprovalHandler(rule)


async def _session(
    policy: Policy,
    *,
    policy_path: str | Path | None,
    db_path: Path,
    interactive: bool,
    console: Console,
    stream: TextIO,
) -> int:
    console.rule("[bold]Aegis demo: a support agent works on a customer database")
    source = policy_path or "the demo policy (same as examples/policy.yaml)"
    console.print(f"Policy: {source}, {len(policy.rules)} rules", highlight=False)
    console.print(f"Audit trail: {db_path}", highlight=False)
    if interactive:
        console.print("Approvals: you decide, at this terminal (answer y or n).")
    else:
        console.print(f"Approvals: {NO_TERMINAL_RULE}.", highlight=False)

    executor = CRMExecutor()
    audit = AuditLogger(db_path)
    approver = _approver(interactive, console, stream)
    async with Runtime(
        executor=executor, policy=policy, approval_handler=approver, audit_logger=audit
    ) as runtime:
        plan = runtime.plan(AGENT_PLAN)
        console.print()
        console.print(_plan_table(plan))
        console.print("\n[bold]Running the plan...[/]")
        results = await runtime.execute(plan)
        console.print()
        console.print(_results_table(results))
        customers = executor.customers()
        console.print(
            f"CRM afterwards: {len(customers)} customers; "
            + ", ".join(f"{c['name']} ({c['tier']})" for c in customers),
            highlight=False,
        )
        console.print()
        console.print(_audit_table(audit, runtime.session_id))
        report = audit.verify()
    console.print()
    if report.ok:
        console.print(
            f"[green]✔ Audit chain intact:[/] {report.checked} records verified "
            f"(head {str(report.head)[:24]}...).",
            highlight=False,
        )
    else:
        console.print(f"[bold red]✘ Audit chain broken:[/] {report.reason}", highlight=False)
    console.print(f"Explore it:       aegis audit list --db {db_path}", highlight=False)
    console.print("Your own policy:  aegis init", highlight=False)
    return 0 if report.ok else 1


def _plan_table(plan: ExecutionPlan) -> Table:
    table = Table(title="The agent's plan, as the policy sees it", title_justify="left")
    for column in ("#", "verdict", "risk", "rule", "the agent wants to"):
        table.add_column(column)
    for i, d in enumerate(plan, 1):
        verdict = d.approval.value
        table.add_row(
            str(i),
            f"[{_VERDICT_STYLE[verdict]}]{verdict}[/]",
            d.risk_level.name,
            d.matched_rule,
            f"{d.action.type} -> {d.action.target}: {d.action.description}",
        )
    return table


def _results_table(results: list[Result]) -> Table:
    table = Table(title="Results", title_justify="left")
    for column in ("#", "status", "action", "detail"):
        table.add_column(column)
    for i, r in enumerate(results, 1):
        status = r.status.value
        detail = r.error if r.error else _short(r.data)
        table.add_row(
            str(i),
            f"[{_STATUS_STYLE[status]}]{status.upper()}[/]",
            f"{r.action.type} -> {r.action.target}",
            detail,
        )
    return table


def _audit_table(audit: AuditLogger, session_id: str) -> Table:
    table = Table(title=f"Audit trail of session {session_id[:12]}...", title_justify="left")
    for column in ("id", "action", "risk", "approval", "human", "status", "hash"):
        table.add_column(column)
    for rec in audit.get_log(session_id):
        status = rec["result_status"] or "-"
        table.add_row(
            str(rec["id"]),
            f"{rec['action_type']} -> {rec['action_target']}",
            rec["risk_level"],
            rec["approval"],
            rec["human_decision"] or "-",
            f"[{_STATUS_STYLE.get(status, '')}]{status}[/]",
            rec["hash"][:10],
        )
    return table


def _short(data: object, limit: int = 60) -> str:
    if isinstance(data, list):
        return f"{len(data)} row(s)"
    text = "" if data is None else str(data)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def main(argv: list[str] | None = None) -> int:
    """``python -m aegis.demo [--no-interactive]``: run the demo, return the exit code."""
    args = sys.argv[1:] if argv is None else argv
    interactive = False if "--no-interactive" in args else None
    try:
        return run_demo(interactive=interactive)
    except AegisError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
