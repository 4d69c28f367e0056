"""Adversarial review: a budget or limit cannot be split by spelling its key differently."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from aegis import Action, AuditLogger, Policy, ResultStatus, Runtime

BUDGET = """\
version: "1"
defaults: {approval: block}
rules:
  - name: refund_budget
    match: {type: refund}
    budget: {sum: amount, max: 100, per: 1d, key: [params.customer_id]}
    on_exceed: {approval: block}
    risk_level: medium
    approval: auto
"""


@pytest.mark.parametrize(
    ("first", "second"),
    [(7, 7.0), (0, -0.0), ({"id": 7}, {"id": 7.0}), ([7], [7.0])],
)
async def test_a_budget_key_spelt_as_a_float_counts_with_its_int(
    tmp_path: Path, first: object, second: object
) -> None:
    """customer_id 7.0 (or -0.0, nested alike) draws on the same budget as 7 (or 0)."""
    policy = Policy.from_dict(yaml.safe_load(BUDGET))
    ran: list[object] = []
    audit = AuditLogger(db_path=str(tmp_path / "audit.db"))
    async with Runtime(executor=ran.append, policy=policy, audit_logger=audit) as runtime:
        spent = await runtime.run_one(
            Action("refund", "billing", {"amount": 100, "customer_id": first})
        )
        again = await runtime.run_one(
            Action("refund", "billing", {"amount": 100, "customer_id": second})
        )
    assert spent.status is ResultStatus.SUCCESS
    assert again.status is ResultStatus.BLOCKED
    assert "budget of rule 'refund_budget' exceeded" in (again.error or "")
    assert len(ran) == 1
