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
    [(7, 7.0), (7, "7"), ("7", 7), (0, -0.0), ({"id": 7}, {"id": 7.0}), ([7], [7.0])],
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


INSENSITIVE = """\
version: "1"
match_case: insensitive
defaults: {approval: block}
rules:
  - name: exfiltration
    match: {type: "SEND*", target: "external*"}
    conditions:
      after: {type: "read*", target: CRM, within: session}
    risk_level: critical
    approval: block
  - name: emails
    match: {type: email}
    limit: {max: 1, per: 1h, key: [type, target]}
    risk_level: low
    approval: auto
  - name: reads
    match: {type: "read*"}
    risk_level: low
    approval: auto
  - name: sends
    match: {type: "send*"}
    risk_level: low
    approval: auto
"""


async def test_flow_rules_of_a_case_insensitive_policy_see_other_spellings(tmp_path: Path) -> None:
    """Under match_case: insensitive, READ_customer on Crm is a read of crm to a flow rule."""
    policy = Policy.from_dict(yaml.safe_load(INSENSITIVE))
    ran: list[object] = []
    audit = AuditLogger(db_path=str(tmp_path / "audit.db"))
    async with Runtime(executor=ran.append, policy=policy, audit_logger=audit) as runtime:
        read = await runtime.run_one(Action("READ_customer", "Crm"))
        send = await runtime.run_one(Action("send_mail", "External_partner"))
    assert read.status is ResultStatus.SUCCESS
    assert send.status is ResultStatus.BLOCKED
    assert "exfiltration" in (send.error or "")
    assert len(ran) == 1


async def test_limit_keys_of_a_case_insensitive_policy_count_spellings_together(
    tmp_path: Path,
) -> None:
    """Under match_case: insensitive, email to BOB and EMAIL to bob count with email to Bob."""
    policy = Policy.from_dict(yaml.safe_load(INSENSITIVE))
    ran: list[object] = []
    audit = AuditLogger(db_path=str(tmp_path / "audit.db"))
    async with Runtime(executor=ran.append, policy=policy, audit_logger=audit) as runtime:
        results = [
            await runtime.run_one(Action(kind, target))
            for kind, target in (("email", "Bob"), ("email", "BOB"), ("EMAIL", "bob"))
        ]
    assert [r.status for r in results] == [
        ResultStatus.SUCCESS,
        ResultStatus.BLOCKED,
        ResultStatus.BLOCKED,
    ]
    assert len(ran) == 1


async def test_a_case_sensitive_policy_keeps_spellings_apart(tmp_path: Path) -> None:
    """Without match_case: insensitive, names stay case-sensitive for flow rules and keys alike."""
    text = INSENSITIVE.replace("match_case: insensitive\n", "").replace('"SEND*"', '"send*"')
    policy = Policy.from_dict(yaml.safe_load(text.replace("CRM", "crm")))
    audit = AuditLogger(db_path=str(tmp_path / "audit.db"))
    async with Runtime(executor=lambda action: None, policy=policy, audit_logger=audit) as runtime:
        await runtime.run_one(Action("read_customer", "CRM"))  # not crm: no read of crm
        send = await runtime.run_one(Action("send_mail", "external_partner"))
        first = await runtime.run_one(Action("email", "Bob"))
        other = await runtime.run_one(Action("email", "bob"))
    assert send.status is ResultStatus.SUCCESS
    assert (first.status, other.status) == (ResultStatus.SUCCESS, ResultStatus.SUCCESS)
