"""``aegis test``: expected decisions checked, a readable diff per failing case, JUnit XML."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from cli_support import Invoke

from aegis.cli._init import STARTER_CASES, STARTER_POLICY

POLICY = """\
rules:
  - name: email_rate
    match: {type: send_email}
    limit: {max: 20, per: 1h, key: [agent]}
    on_exceed: {approval: block, risk_level: high}
    risk_level: low
    approval: auto
  - name: refund_budget
    match: {type: refund}
    budget: {sum: amount, max: 100, per: 1d, key: [params.customer_id]}
    on_exceed: {approval: approve, risk_level: critical}
    approval: auto
  - name: exfiltration
    match: {type: "send*", target: "external*"}
    conditions:
      after: {type: "read*", target: crm, within: 1h}
    risk_level: critical
    approval: approve
  - name: reads
    match: {type: "read*"}
    risk_level: low
    approval: auto
  - name: sends
    match: {type: "send*"}
    approval: auto
"""

PASSING = """\
cases:
  - name: reads run
    action: {type: read, target: crm}
    expect: {approval: auto, risk_level: low, rule: reads}
  - name: 20 emails of another agent do not count
    action: {type: send_email, target: smtp}
    agent: a
    history:
      - {type: send_email, target: smtp, ago: 10m, count: 20, agent: b}
    expect: {approval: auto}
  - name: the 21st email of the hour is blocked
    action: {type: send_email, target: smtp}
    at: 2026-11-24T10:00:00Z
    history:
      - {type: send_email, target: smtp, at: "2026-11-24T09:05:00Z", count: 20}
    expect: {approval: block, risk_level: HIGH, reason: "20 of 20 actions"}
  - name: emails older than the hour are forgotten
    action: {type: send_email, target: smtp}
    history:
      - {type: send_email, target: smtp, ago: 61m, count: 20}
    expect: {approval: auto}
  - name: refunds add up to the budget
    action: {type: refund, target: stripe, params: {amount: 0.5, customer_id: 7}}
    history:
      - {type: refund, target: stripe, params: {amount: 99.5, customer_id: 7}, ago: 1h}
      - {type: refund, target: stripe, params: {amount: 99.5, customer_id: 8}, ago: 1h}
    expect: {approval: auto, rule: refund_budget}
  - name: one cent more needs a human
    action: {type: refund, target: stripe, params: {amount: 0.51, customer_id: 7}}
    history:
      - {type: refund, target: stripe, params: {amount: 99.5, customer_id: 7}, ago: 1h}
    expect: {approval: approve, risk_level: critical}
  - name: a refund without an amount is blocked
    action: {type: refund, target: stripe, params: {customer_id: 7}}
    expect: {approval: block, reason: "does not have"}
  - name: sending outside after a read needs approval
    action: {type: send, target: external_mail}
    history:
      - {type: read, target: crm, ago: 5m}
    expect: {approval: approve, rule: exfiltration}
  - name: a read in another session does not count
    action: {type: send, target: external_mail}
    history:
      - {type: read, target: crm, ago: 5m, session: other}
    expect: {rule: sends}
"""

FAILING = """\
cases:
  - name: reads run
    action: {type: read, target: crm}
    expect: {approval: auto}
  - name: wrong expectation
    action: {type: send_email, target: smtp}
    history:
      - {type: send_email, target: smtp, ago: 1m, count: 19}
    expect: {approval: block, rule: email_rate, risk_level: high}
"""


def write(tmp_path: Path, name: str, text: str) -> str:
    """Write ``text`` to ``tmp_path/name``; its path."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_passing_cases_exit_zero(invoke: Invoke, tmp_path: Path) -> None:
    """Every case passes: exit 0, one PASS line per case and a summary."""
    result = invoke("test", write(tmp_path, "p.yaml", POLICY), write(tmp_path, "c.yaml", PASSING))
    assert result.exit_code == 0, result.output
    assert result.stdout.count("PASS  ") == 9
    assert "all 9 cases passed" in result.stdout


def test_a_failing_case_exits_one_with_a_diff(invoke: Invoke, tmp_path: Path) -> None:
    """A mismatch exits 1 and shows, per key, what was expected and what came out."""
    cases = write(tmp_path, "c.yaml", FAILING)
    result = invoke("test", write(tmp_path, "p.yaml", POLICY), cases)
    assert result.exit_code == 1
    assert f"FAIL  wrong expectation  ({cases}:5)" in result.stdout
    assert "approval:    expected 'block'\n" in result.stdout
    assert "got      'auto'" in result.stdout
    assert "risk_level:  expected 'high'" in result.stdout
    assert "rule:" not in result.stdout  # the rule was as expected
    assert "1 of 2 cases failed" in result.stderr


ONE_CASE = """\
cases:
  - name: reads run
    action: {type: read, target: crm}
    expect: {approval: %s}
"""


def test_one_case_reads_in_the_singular(invoke: Invoke, tmp_path: Path) -> None:
    """A file of one case passes as "1 case" and fails as "1 of 1 case", never "1 cases"."""
    policy = write(tmp_path, "p.yaml", POLICY)
    passed = invoke("test", policy, write(tmp_path, "pass.yaml", ONE_CASE % "auto"))
    assert passed.exit_code == 0, passed.output
    assert passed.stdout.splitlines()[-1].endswith("all 1 case passed")
    failed = invoke("test", policy, write(tmp_path, "fail.yaml", ONE_CASE % "block"))
    assert failed.exit_code == 1
    assert "1 of 1 case failed" in failed.stderr


def test_junit_xml_reports_each_case(invoke: Invoke, tmp_path: Path) -> None:
    """--junit writes one testcase per case, with a failure element for the failing one."""
    out = tmp_path / "results.xml"
    invoke(
        "test",
        write(tmp_path, "p.yaml", POLICY),
        write(tmp_path, "c.yaml", FAILING),
        "--junit",
        str(out),
    )
    suite = ET.parse(out).getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures")) == ("2", "1")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["reads run", "wrong expectation"]
    assert cases[0].find("failure") is None
    failure = cases[1].find("failure")
    assert failure is not None
    assert "approval: expected 'block', got 'auto'" in (failure.get("message") or "")


def test_a_malformed_cases_file_names_the_line(invoke: Invoke, tmp_path: Path) -> None:
    """A typo in a case is one line naming the file and line, exit 1."""
    cases = write(
        tmp_path,
        "c.yaml",
        "cases:\n  - action: {type: read, target: crm}\n    expect: {aproval: auto}\n",
    )
    result = invoke("test", write(tmp_path, "p.yaml", POLICY), cases)
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"Error: {cases}:3: unknown key 'aproval' in expect; valid keys are: approval,"
        " risk_level, rule, reason"
    )


def test_bad_case_values_are_refused(invoke: Invoke, tmp_path: Path) -> None:
    """Unknown approvals, bad windows, bad counts and missing files are clear errors."""
    policy = write(tmp_path, "p.yaml", POLICY)
    bad = {
        "expect: {approval: maybe}": "expect approval must be auto, approve or block",
        "expect: {}": "expect must name at least one",
        "history: [{type: read, target: crm, ago: 1w}]\n    expect: {rule: reads}": (
            "ago must be a window"
        ),
        "history: [{type: read, target: crm}]\n    expect: {rule: reads}": "exactly one of",
        "history: [{type: read, target: crm, ago: 1m, count: 0}]\n    expect: {rule: reads}": (
            "count must be a whole number"
        ),
        "at: yesterday\n    expect: {rule: reads}": "not an ISO 8601 time",
    }
    for tail, message in bad.items():
        cases = write(
            tmp_path, "c.yaml", f"cases:\n  - action: {{type: read, target: crm}}\n    {tail}\n"
        )
        result = invoke("test", policy, cases)
        assert result.exit_code == 1, tail
        assert message in result.stderr, (tail, result.stderr)
    missing = invoke("test", policy, str(tmp_path / "nope.yaml"))
    assert missing.exit_code == 1
    assert "cases file not found" in missing.stderr


def test_a_policy_without_limits_is_tested_too(invoke: Invoke, tmp_path: Path) -> None:
    """Plain policies are checked the same way, with times."""
    policy = write(tmp_path, "p.yaml", STARTER_POLICY)
    cases = write(tmp_path, "c.yaml", STARTER_CASES)
    result = invoke("test", policy, cases)
    assert result.exit_code == 0, result.output


def test_init_writes_cases_that_pass_in_a_real_process(tmp_path: Path) -> None:
    """`aegis init` writes policy and cases; `aegis test` on them exits 0 in a subprocess."""
    init = subprocess.run(
        [sys.executable, "-m", "aegis", "init", "-o", "agent.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert init.returncode == 0, init.stderr
    assert "wrote agent.cases.yaml" in init.stdout
    assert "aegis test agent.yaml agent.cases.yaml" in init.stdout + init.stderr
    cases = (tmp_path / "agent.cases.yaml").read_text(encoding="utf-8")
    assert "`aegis test agent.yaml agent.cases.yaml`" in cases
    test = subprocess.run(
        [sys.executable, "-m", "aegis", "test", "agent.yaml", "agent.cases.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert test.returncode == 0, test.stdout + test.stderr
    assert "all 6 cases passed" in test.stdout


def test_init_refuses_to_overwrite_a_cases_file(invoke: Invoke, tmp_path: Path) -> None:
    """An existing cases file stops init before it writes anything."""
    (tmp_path / "policy.cases.yaml").write_text("mine", encoding="utf-8")
    result = invoke("init", "-o", str(tmp_path / "policy.yaml"))
    assert result.exit_code == 1
    assert "policy.cases.yaml already exists" in result.stderr
    assert not (tmp_path / "policy.yaml").exists()


def test_simulate_says_that_it_ignores_history(invoke: Invoke, tmp_path: Path) -> None:
    """simulate on a policy with limits notes, on stderr, that nothing was counted."""
    result = invoke("simulate", write(tmp_path, "p.yaml", POLICY), "send_email:smtp")
    assert result.exit_code == 0
    assert "nothing counted yet" in result.stderr
    assert "email_rate" in result.stdout


def test_validate_lists_limits_and_budgets(invoke: Invoke, tmp_path: Path) -> None:
    """validate shows each rule's limit, budget and on_exceed, in the table and in JSON."""
    import json

    policy = write(tmp_path, "p.yaml", POLICY)
    table = invoke("validate", policy)
    assert table.exit_code == 0
    assert 'limit max=20, per=1h, key=["agent"]; on_exceed approval=block' in table.stdout
    data = json.loads(invoke("validate", policy, "--format", "json").stdout)
    rules = {r["name"]: r for r in data["files"][0]["rules"]} if "files" in data else None
    assert rules is not None, data
    assert rules["refund_budget"]["budget"] == {
        "sum": "amount",
        "max": 100,
        "per": "1d",
        "key": ["params.customer_id"],
    }
    assert "limit" not in rules["reads"]
