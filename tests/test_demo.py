"""The demo a new user runs first, its CRM executor, and the quickstart example."""

from __future__ import annotations

import io
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from rich.console import Console

from aegis.core.action import Action
from aegis.core.result import ResultStatus
from aegis.demo import AGENT_PLAN, NO_TERMINAL_RULE, demo_policy, run_demo
from aegis.demo_crm import CUSTOMERS, CRMExecutor
from aegis.errors import PolicyError
from aegis.runtime.audit import AuditLogger

ROOT = Path(__file__).resolve().parent.parent


def demo(tmp_path: Path, **kwargs: object) -> tuple[int, str, list[str]]:
    """Run the demo into tmp_path; return exit code, output and the audit statuses."""
    out = io.StringIO()
    console = Console(file=out, width=160, color_system=None)
    db = tmp_path / "audit.db"
    code = run_demo(db_path=db, console=console, **kwargs)  # type: ignore[arg-type]
    with AuditLogger(db) as audit:
        statuses = [r["result_status"] for r in audit.get_log()]
    return code, out.getvalue(), statuses


def test_demo_runs_without_a_terminal(tmp_path: Path) -> None:
    """Without a terminal the printed rule answers, and the audit chain verifies."""
    code, out, statuses = demo(tmp_path, interactive=False)
    assert code == 0
    assert NO_TERMINAL_RULE in out
    assert statuses == ["success", "success", "success", "blocked", "denied", "skipped"]
    for expected in ("The agent's plan", "Results", "Audit trail", "Audit chain intact"):
        assert expected in out


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        ("y\ny\n", ["success", "success", "success", "blocked", "success", "success"]),
        ("n\n", ["success", "denied", "skipped", "skipped", "skipped", "skipped"]),
        ("yes\nno\n", ["success", "success", "success", "blocked", "denied", "skipped"]),
        ("", ["success", "denied", "skipped", "skipped", "skipped", "skipped"]),
    ],
)
def test_demo_asks_at_the_terminal(tmp_path: Path, answers: str, expected: list[str]) -> None:
    """Interactively, each approval is the person's answer; end of input denies."""
    code, out, statuses = demo(tmp_path, interactive=True, input_stream=io.StringIO(answers))
    assert code == 0
    assert statuses == expected
    assert "Approve this action?" in out


def test_demo_detects_a_missing_terminal(tmp_path: Path) -> None:
    """By default, input that is not a terminal means the printed rule answers."""
    _, out, _ = demo(tmp_path, input_stream=io.StringIO("y\n"))
    assert NO_TERMINAL_RULE in out


def test_demo_runs_append_to_one_verified_chain(tmp_path: Path) -> None:
    """Running the demo twice on one database appends a second session; the chain holds."""
    demo(tmp_path, interactive=False)
    code, _, statuses = demo(tmp_path, interactive=False)
    assert code == 0
    assert len(statuses) == 2 * len(AGENT_PLAN)
    with AuditLogger(tmp_path / "audit.db") as audit:
        assert audit.verify().ok
        assert len({r["session_id"] for r in audit.get_log()}) == 2


def test_demo_reports_a_tampered_trail(tmp_path: Path) -> None:
    """If a record was edited since, the demo says the chain is broken and exits 1."""
    demo(tmp_path, interactive=False)
    with sqlite3.connect(tmp_path / "audit.db") as conn:
        conn.execute("UPDATE audit_log SET action_target = 'elsewhere' WHERE id = 4")
    code, out, _ = demo(tmp_path, interactive=False)
    assert code == 1
    assert "Audit chain broken" in out


def test_demo_uses_a_given_policy(tmp_path: Path) -> None:
    """policy_path replaces the demo policy; with nothing blocked, the bulk delete runs."""
    policy = tmp_path / "open.yaml"
    policy.write_text('version: "1"\ndefaults: {risk_level: low, approval: auto}\n', "utf-8")
    code, out, statuses = demo(tmp_path, interactive=False, policy_path=policy)
    assert code == 0
    # The agent deletes every customer, so the refund after it finds nobody.
    assert statuses == ["success", "success", "success", "success", "failed", "skipped"]
    assert "open.yaml" in out
    assert "CRM afterwards: 0 customers" in out


def test_demo_rejects_an_invalid_policy(tmp_path: Path) -> None:
    """An invalid policy file raises PolicyError naming the file."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules: [{approval: sometimes}]\n", "utf-8")
    with pytest.raises(PolicyError, match=r"bad\.yaml"):
        run_demo(db_path=tmp_path / "a.db", policy_path=bad, interactive=False)


def test_shipped_policy_matches_the_example() -> None:
    """The policy inside the package is the text of examples/policy.yaml."""
    shipped = (ROOT / "aegis" / "demo_policy.yaml").read_text("utf-8")
    assert shipped == (ROOT / "examples" / "policy.yaml").read_text("utf-8")
    assert len(demo_policy().rules) == 7


def test_demo_plan_covers_every_verdict() -> None:
    """The demo's plan has auto, approve and block actions under its policy."""
    verdicts = {demo_policy().evaluate(a).approval.value for a in AGENT_PLAN}
    assert verdicts == {"auto", "approve", "block"}


def run_python(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_python_m_aegis_demo_runs_in_ci(tmp_path: Path) -> None:
    """`python -m aegis.demo` with no stdin exits 0 and writes aegis_audit.db in cwd."""
    proc = run_python(["-m", "aegis.demo"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Audit chain intact" in proc.stdout
    assert (tmp_path / "aegis_audit.db").exists()


def test_quickstart_runs(tmp_path: Path) -> None:
    """examples/quickstart.py runs as written and prints its results."""
    proc = run_python([str(ROOT / "examples" / "quickstart.py")], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "[BLOCKED] delete -> crm" in proc.stdout
    assert "audit records for session" in proc.stdout


# ---------------------------------------------------------------- the CRM executor


@pytest.fixture
async def crm() -> AsyncIterator[CRMExecutor]:
    executor = CRMExecutor()
    await executor.setup()
    yield executor
    await executor.teardown()


async def test_crm_reads_updates_refunds_and_deletes(crm: CRMExecutor) -> None:
    """Each CRM action changes the database as it says."""
    assert len((await crm.execute(Action("read", "crm"))).data) == len(CUSTOMERS)
    await crm.execute(Action("update", "crm", {"id": 3, "fields": {"tier": "gold"}}))
    [alan] = (await crm.execute(Action("read", "crm", {"id": 3}))).data
    assert alan["tier"] == "gold"
    refund = await crm.execute(Action("refund", "billing", {"customer_id": 3, "amount": 9}))
    assert refund.data["refund_id"] == 1
    assert (await crm.execute(Action("delete", "crm", {"id": 3}))).data == {"deleted": 1}
    gone = await crm.execute(Action("delete", "crm", {"scope": "all"}))
    assert gone.data == {"deleted": len(CUSTOMERS) - 1}
    assert crm.customers() == []


@pytest.mark.parametrize(
    ("action", "error"),
    [
        (Action("fly", "crm"), ValueError),
        (Action("update", "crm", {"id": 99, "fields": {"tier": "x"}}), LookupError),
        (Action("update", "crm", {"id": 1, "fields": {"id": 5}}), ValueError),
        (Action("refund", "billing", {"customer_id": 42, "amount": 1}), LookupError),
    ],
)
async def test_crm_refuses_what_it_cannot_do(
    crm: CRMExecutor, action: Action, error: type[Exception]
) -> None:
    """Unknown actions, missing customers and unknown fields raise, changing nothing."""
    with pytest.raises(error):
        await crm.execute(action)
    assert len(crm.customers()) == len(CUSTOMERS)


async def test_crm_cleans_up_its_temporary_database() -> None:
    """teardown() closes the database; using it afterwards says to set it up."""
    crm = CRMExecutor()
    await crm.setup()
    await crm.teardown()
    with pytest.raises(RuntimeError, match="not set up"):
        await crm.execute(Action("read", "crm"))
    assert (await _status_after_runtime()) is ResultStatus.SUCCESS


async def _status_after_runtime() -> ResultStatus:
    from aegis.runtime.engine import Runtime
    from aegis.testing import InMemoryAuditLog

    async with Runtime(
        executor=CRMExecutor(), policy=demo_policy(), audit_logger=InMemoryAuditLog()
    ) as runtime:
        return (await runtime.run_one(Action("read", "crm"))).status
