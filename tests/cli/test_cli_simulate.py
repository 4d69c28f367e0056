"""``aegis simulate`` and ``aegis replay``: decisions without running anything."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_support import edit_database, write_session
from click.testing import Result

from aegis.core.action import Action
from aegis.core.result import ResultStatus

Invoke = Callable[..., Result]

NIGHT_POLICY = """\
version: "1"
defaults: {risk_level: low, approval: auto}
rules:
  - name: night_refunds
    match: {type: refund}
    conditions: {time_after: "22:00", time_before: "06:00", timezone: Europe/Berlin}
    risk_level: high
    approval: block
"""


def test_simulate_prints_decisions_and_summary(invoke: Invoke, policy_path: Path) -> None:
    """simulate lists one decision per action and the auto/approval/blocked summary."""
    result = invoke(
        "simulate", str(policy_path), "read:crm", 'refund:stripe:{"amount": 5}', "delete:crm", "x:y"
    )
    assert result.exit_code == 0
    rows = [line.split("\t") for line in result.stdout.splitlines()[1:-1]]
    assert [(r[1], r[3], r[4], r[5]) for r in rows] == [
        ("read:crm", "auto", "LOW", "reads"),
        ("refund:stripe", "approve", "HIGH", "refunds"),
        ("delete:crm", "block", "CRITICAL", "no_deletes"),
        ("x:y", "block", "MEDIUM", "<default>"),
    ]
    assert rows[1][2] == '{"amount": 5}'
    assert result.stdout.splitlines()[-1] == "1 auto, 1 needs approval, 2 blocked"


def test_simulate_json_is_valid_and_complete(invoke: Invoke, policy_path: Path) -> None:
    """--format json prints one JSON document with decisions and counts."""
    result = invoke(
        "simulate", str(policy_path), "read:crm", 'refund:s:{"a": "b:c"}', "--format", "json"
    )
    assert result.exit_code == 0
    document = json.loads(result.stdout)
    assert document["summary"] == {"total": 2, "auto": 1, "approve": 1, "block": 0}
    second = document["decisions"][1]
    assert second["action"] == {
        "type": "refund",
        "target": "s",
        "params": {"a": "b:c"},
        "description": "",
    }
    assert (second["approval"], second["risk_level"], second["matched_rule"]) == (
        "approve",
        "HIGH",
        "refunds",
    )


@pytest.mark.parametrize(
    ("actions", "fail_on", "exit_code"),
    [
        (["read:crm"], "block", 0),
        (["read:crm"], "approve", 0),
        (["refund:stripe"], "block", 0),
        (["refund:stripe"], "approve", 1),
        (["delete:crm"], "block", 1),
        (["delete:crm"], "approve", 1),
        (["read:crm", "delete:crm"], None, 0),
    ],
)
def test_simulate_fail_on(
    invoke: Invoke, policy_path: Path, actions: list[str], fail_on: str | None, exit_code: int
) -> None:
    """--fail-on block fails on blocks; --fail-on approve fails on approvals and blocks."""
    options = ["--fail-on", fail_on] if fail_on else []
    result = invoke("simulate", str(policy_path), *actions, *options)
    assert result.exit_code == exit_code
    if exit_code:
        assert f"hit --fail-on {fail_on}" in result.stderr


@pytest.mark.parametrize(
    ("actions", "summary", "hits"),
    [
        (["read:crm", "refund:a"], "1 auto, 1 needs approval, 0 blocked", "1 of 2 actions"),
        (["refund:a"], "0 auto, 1 needs approval, 0 blocked", "1 of 1 action"),
        (["refund:a", "delete:crm"], "0 auto, 1 needs approval, 1 blocked", "2 of 2 actions"),
        (["refund:a", "refund:b"], "0 auto, 2 need approval, 0 blocked", "2 of 2 actions"),
    ],
)
def test_simulate_counts_read_right_for_one_and_many(
    invoke: Invoke, policy_path: Path, actions: list[str], summary: str, hits: str
) -> None:
    """The summary and the --fail-on messages agree with their counts: 1 action, 2 actions."""
    result = invoke("simulate", str(policy_path), *actions, "--fail-on", "approve")
    assert result.exit_code == 1
    assert result.stdout.splitlines()[-1] == summary
    assert f"{hits} hit --fail-on approve" in result.stderr
    as_json = invoke(
        "simulate", str(policy_path), *actions, "--fail-on", "approve", "--format", "json"
    )
    alone = "1 action" if hits.startswith("1 ") else "2 actions"  # the JSON run's warning
    assert f"{alone} hit --fail-on approve" in as_json.stderr


def test_simulate_fail_on_keeps_json_clean(invoke: Invoke, policy_path: Path) -> None:
    """With --format json, a --fail-on hit still leaves only JSON on stdout."""
    result = invoke(
        "simulate", str(policy_path), "delete:crm", "--fail-on", "block", "--format", "json"
    )
    assert result.exit_code == 1
    assert json.loads(result.stdout)["summary"]["block"] == 1


@pytest.mark.parametrize("bad", ["read", "read:crm:{oops", 'read:crm:{"n": NaN}', ":crm"])
def test_simulate_bad_action_is_a_usage_error(invoke: Invoke, policy_path: Path, bad: str) -> None:
    """Malformed action syntax exits 2 with a hint to try --help."""
    result = invoke("simulate", str(policy_path), bad)
    assert result.exit_code == 2
    assert "Try 'aegis simulate --help'" in result.stderr


def test_simulate_target_may_contain_colons(invoke: Invoke, policy_path: Path) -> None:
    """A URL target keeps its colons; params start only at a colon followed by "{"."""
    result = invoke(
        "simulate",
        str(policy_path),
        "read:https://x.com/a",
        'read:https://x.com:8443/a:{"q": "b:c"}',
        "--format",
        "json",
    )
    assert result.exit_code == 0
    actions = [d["action"] for d in json.loads(result.stdout)["decisions"]]
    assert [(a["target"], a["params"]) for a in actions] == [
        ("https://x.com/a", {}),
        ("https://x.com:8443/a", {"q": "b:c"}),
    ]


def test_simulate_help_explains_where_params_start(invoke: Invoke) -> None:
    """simulate --help says params start at a colon followed by "{" and NaN is refused."""
    help_text = " ".join(invoke("simulate", "--help").stdout.split())
    assert 'The params start at the first colon followed by "{"' in help_text
    assert "read:https://x.com/a" in help_text
    assert "NaN and Infinity are refused" in help_text


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_simulate_refuses_non_finite_params(invoke: Invoke, policy_path: Path, number: str) -> None:
    """NaN, Infinity or an overflowing number in params exits 2; stdout gets no invalid JSON."""
    action = f'refund:stripe:{{"amount": {number}}}'
    result = invoke("simulate", str(policy_path), action, "--format", "json")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert f"the params of '{action}' cannot be used: {number}" in result.stderr
    assert "Try 'aegis simulate --help'" in result.stderr


def test_simulate_refuses_non_finite_params_in_jsonl(
    invoke: Invoke, policy_path: Path, tmp_path: Path
) -> None:
    """NaN in an --actions line exits 2 naming file:line."""
    plan = tmp_path / "plan.jsonl"
    plan.write_text(
        '{"type": "read", "target": "crm"}\n'
        '{"type": "refund", "target": "s", "params": {"amount": NaN}}\n',
        encoding="utf-8",
    )
    result = invoke("simulate", str(policy_path), "--actions", str(plan), "--format", "json")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert f"{plan}:2: NaN is not a JSON number" in result.stderr


def test_simulate_binary_actions_file_is_a_usage_error(
    invoke: Invoke, policy_path: Path, tmp_path: Path
) -> None:
    """An --actions file that is not UTF-8 text exits 2 naming it."""
    plan = tmp_path / "plan.jsonl"
    plan.write_bytes(b"\x89PNG\r\n\x1a\n\xff\x00\x81")
    result = invoke("simulate", str(policy_path), "--actions", str(plan))
    assert result.exit_code == 2
    assert f"{plan}: not UTF-8 text" in result.stderr


def test_simulate_without_actions_is_a_usage_error(invoke: Invoke, policy_path: Path) -> None:
    """simulate with no action and no --actions file exits 2."""
    result = invoke("simulate", str(policy_path))
    assert result.exit_code == 2
    assert "give at least one action" in result.stderr


def test_simulate_reads_actions_from_jsonl(
    invoke: Invoke, policy_path: Path, tmp_path: Path
) -> None:
    """--actions FILE.jsonl adds one action per line after those on the command line."""
    plan = tmp_path / "plan.jsonl"
    plan.write_text(
        '{"type": "delete", "target": "crm"}\n'
        '{"type": "read", "target": "x", "params": {"n": 1}}\n',
        encoding="utf-8",
    )
    result = invoke(
        "simulate", str(policy_path), "refund:s", "--actions", str(plan), "--format", "json"
    )
    assert result.exit_code == 0
    rules = [d["matched_rule"] for d in json.loads(result.stdout)["decisions"]]
    assert rules == ["refunds", "no_deletes", "reads"]


def test_simulate_reads_actions_from_stdin(invoke: Invoke, policy_path: Path) -> None:
    """--actions - reads the JSONL from stdin."""
    result = invoke(
        "simulate", str(policy_path), "--actions", "-", input='{"type": "read", "target": "crm"}\n'
    )
    assert result.exit_code == 0
    assert result.stdout.splitlines()[-1] == "1 auto, 0 need approval, 0 blocked"


def test_simulate_bad_jsonl_names_the_line(
    invoke: Invoke, policy_path: Path, tmp_path: Path
) -> None:
    """A bad line in --actions exits 2 naming file:line."""
    plan = tmp_path / "plan.jsonl"
    plan.write_text('{"type": "read", "target": "crm"}\n{"type": "read"}\n', encoding="utf-8")
    result = invoke("simulate", str(policy_path), "--actions", str(plan))
    assert result.exit_code == 2
    assert f"{plan}:2: 'target' is required" in result.stderr


@pytest.mark.parametrize(
    ("at", "approval"),
    [
        ("2026-11-24T23:00+01:00", "block"),
        ("2026-11-24T22:30Z", "block"),  # 23:30 in Berlin
        ("2026-11-24T12:00+01:00", "auto"),
        ("2026-11-24T20:59Z", "auto"),  # 21:59 in Berlin
    ],
)
def test_simulate_at_evaluates_time_conditions(
    invoke: Invoke, tmp_path: Path, at: str, approval: str
) -> None:
    """--at evaluates the policy as of that moment, honouring time zones."""
    path = tmp_path / "night.yaml"
    path.write_text(NIGHT_POLICY, encoding="utf-8")
    result = invoke("simulate", str(path), "refund:stripe", "--at", at, "--format", "json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["decisions"][0]["approval"] == approval


def test_simulate_bad_at_is_a_usage_error(invoke: Invoke, policy_path: Path) -> None:
    """An --at that is not ISO 8601 exits 2."""
    assert invoke("simulate", str(policy_path), "read:x", "--at", "tonight").exit_code == 2


def test_simulate_invalid_policy_exits_1(invoke: Invoke, tmp_path: Path) -> None:
    """An invalid policy is reported as file:line with exit status 1."""
    path = tmp_path / "bad.yaml"
    path.write_text("rules:\n  - approval: sometimes\n", encoding="utf-8")
    result = invoke("simulate", str(path), "read:x")
    assert result.exit_code == 1
    assert f"{path}:2" in result.stderr


# -- replay -----------------------------------------------------------------------


def test_replay_same_policy_changes_nothing(
    invoke: Invoke, policy_path: Path, audit_db: Path
) -> None:
    """Replaying the recording policy reports no change and exits 0."""
    result = invoke("replay", str(policy_path), "--db", str(audit_db), "--fail-on-change")
    assert result.exit_code == 0
    assert "no decision would change (4 records replayed)" in result.stdout


def test_replay_shows_each_change_with_old_and_new_rule(
    invoke: Invoke, tmp_path: Path, audit_db: Path
) -> None:
    """A stricter policy lists the records whose decision changes, with counts."""
    strict = tmp_path / "strict.yaml"
    strict.write_text(
        'version: "1"\nrules:\n  - name: crm_lockdown\n    match: {target: crm}\n'
        "    risk_level: critical\n    approval: block\n",
        encoding="utf-8",
    )
    result = invoke("replay", str(strict), "--db", str(audit_db))
    assert result.exit_code == 0
    rows = [line.split("\t") for line in result.stdout.splitlines()[1:-1]]
    assert [(r[0], r[3], r[4], r[5]) for r in rows] == [
        ("1", "auto (LOW)", "block (CRITICAL)", "reads -> crm_lockdown"),
        ("2", "approve (HIGH)", "block (MEDIUM)", "refunds -> <default>"),
        ("4", "auto (LOW)", "block (MEDIUM)", "reads -> <default>"),
    ]
    summary = result.stdout.splitlines()[-1]
    assert summary.startswith("3 of 4 decisions would change:")
    assert "auto -> block: 2" in summary
    assert "approve -> block: 1" in summary


def test_replay_fail_on_change_exits_1(invoke: Invoke, tmp_path: Path, audit_db: Path) -> None:
    """--fail-on-change exits 1 when any decision would change."""
    lax = tmp_path / "lax.yaml"
    lax.write_text('version: "1"\ndefaults: {risk_level: low, approval: auto}\n', encoding="utf-8")
    result = invoke("replay", str(lax), "--db", str(audit_db), "--fail-on-change")
    assert result.exit_code == 1
    assert "--fail-on-change" in result.stderr


def test_replay_json(invoke: Invoke, tmp_path: Path, audit_db: Path) -> None:
    """--format json gives counts, transitions and before/after of each change."""
    lax = tmp_path / "lax.yaml"
    lax.write_text('version: "1"\ndefaults: {risk_level: low, approval: auto}\n', encoding="utf-8")
    document = json.loads(
        invoke("replay", str(lax), "--db", str(audit_db), "--format", "json").stdout
    )
    assert (document["checked"], document["changed"]) == (4, 2)
    assert document["transitions"] == {"approve -> auto": 1, "block -> auto": 1}
    change = document["changes"][0]
    assert change["id"] == 2
    assert change["action"]["params"] == {"amount": 40}
    assert change["before"]["matched_rule"] == "refunds"
    assert change["after"] == {
        "approval": "auto",
        "risk_level": "LOW",
        "matched_rule": "<default>",
        "reason": "",
    }


def test_replay_filters_by_session(invoke: Invoke, tmp_path: Path, policy_path: Path) -> None:
    """--session replays only that session's records."""
    db = tmp_path / "two.db"
    write_session(db, session_id="a")
    write_session(db, [(Action("read", "x"), ResultStatus.SUCCESS, None)], session_id="b")
    result = invoke("replay", str(policy_path), "--db", str(db), "--session", "b")
    assert "(1 record replayed)" in result.stdout


def test_replay_counts_read_right_for_one_and_many(
    invoke: Invoke, tmp_path: Path, policy_path: Path
) -> None:
    """One record and one change read in the singular; four of each in the plural."""
    db = tmp_path / "two.db"
    write_session(db, session_id="a")
    write_session(db, [(Action("read", "x"), ResultStatus.SUCCESS, None)], session_id="b")
    strict = tmp_path / "strict.yaml"
    strict.write_text(
        'version: "1"\ndefaults: {risk_level: low, approval: block}\n', encoding="utf-8"
    )
    one = invoke("replay", str(strict), "--db", str(db), "--session", "b", "--fail-on-change")
    assert one.stdout.splitlines()[-1].startswith("1 of 1 decision would change: ")
    assert "1 decision would change and --fail-on-change is set" in one.stderr
    many = invoke("replay", str(strict), "--db", str(db), "--session", "a", "--fail-on-change")
    assert many.stdout.splitlines()[-1].startswith("4 of 4 decisions would change: ")
    assert "4 decisions would change and --fail-on-change is set" in many.stderr


def test_replay_evaluates_at_the_recorded_time(invoke: Invoke, tmp_path: Path) -> None:
    """A time window replays against when each action started, not when it was recorded or now."""
    db = tmp_path / "audit.db"
    refund = (Action("refund", "stripe"), ResultStatus.SUCCESS, None)
    write_session(db, [refund, refund])
    import sqlite3

    with sqlite3.connect(db) as conn:
        # Moving a record's times breaks its hash, which replay does not need.
        # Record 2 started at noon and was written at night: a long-running action.
        for record_id, started, written in (
            (1, "2026-11-24T22:30", "2026-11-24T22:31"),
            (2, "2026-11-24T12:00", "2026-11-24T23:00"),
        ):
            conn.execute(
                "UPDATE audit_log SET started_at = ?, timestamp = ? WHERE id = ?",
                (f"{started}:00.000000+00:00", f"{written}:00.000000+00:00", record_id),
            )
    night = tmp_path / "night.yaml"
    night.write_text(NIGHT_POLICY, encoding="utf-8")
    document = json.loads(invoke("replay", str(night), "--db", str(db), "--format", "json").stdout)
    after = {change["id"]: change["after"]["approval"] for change in document["changes"]}
    assert after == {1: "block", 2: "auto"}


def test_replay_missing_database(invoke: Invoke, policy_path: Path, tmp_path: Path) -> None:
    """replay against a missing database exits 1 and does not create it."""
    missing = tmp_path / "none.db"
    result = invoke("replay", str(policy_path), "--db", str(missing))
    assert result.exit_code == 1
    assert f"no audit database at {missing}" in result.stderr
    assert not missing.exists()


#: hand edits that leave a record no Action can be rebuilt from
UNREPLAYABLE = [
    pytest.param("action_params = '[1,2]'", id="params-list"),
    pytest.param("action_params = '\"text\"'", id="params-json-string"),
    pytest.param("action_params = 'not json'", id="params-not-json"),  # needs the runtime fix
    pytest.param("action_type = x'00ff'", id="type-blob"),
    pytest.param("action_target = x'00ff'", id="target-blob"),
]


@pytest.mark.parametrize("edit", UNREPLAYABLE)
def test_replay_skips_records_it_cannot_rebuild(
    invoke: Invoke, policy_path: Path, audit_db: Path, edit: str
) -> None:
    """A hand-edited record is skipped and named on stderr; the others replay, exit 0."""
    edit_database(audit_db, f"UPDATE audit_log SET {edit} WHERE id = 2")
    result = invoke("replay", str(policy_path), "--db", str(audit_db), "--fail-on-change")
    assert result.exit_code == 0
    assert "no decision would change (3 records replayed)" in result.stdout
    assert "1 record could not be replayed (ids 2)" in result.stderr


def test_replay_json_lists_skipped_ids(invoke: Invoke, policy_path: Path, audit_db: Path) -> None:
    """--format json counts only replayed records and lists the skipped ids."""
    edit_database(audit_db, "UPDATE audit_log SET action_params = '[1,2]' WHERE id IN (2, 4)")
    result = invoke("replay", str(policy_path), "--db", str(audit_db), "--format", "json")
    assert result.exit_code == 0
    document = json.loads(result.stdout)
    assert (document["checked"], document["changed"], document["skipped"]) == (2, 0, [2, 4])
    assert "2 records could not be replayed (ids 2, 4)" in result.stderr


def test_replay_skipped_records_leave_fail_on_change_alone(
    invoke: Invoke, tmp_path: Path, audit_db: Path
) -> None:
    """--fail-on-change still fails on the changes among the records that did replay."""
    edit_database(audit_db, "UPDATE audit_log SET action_params = '[1,2]' WHERE id = 3")
    lax = tmp_path / "lax.yaml"
    lax.write_text('version: "1"\ndefaults: {risk_level: low, approval: auto}\n', encoding="utf-8")
    result = invoke("replay", str(lax), "--db", str(audit_db), "--fail-on-change")
    assert result.exit_code == 1
    assert "1 decision would change and --fail-on-change is set" in result.stderr
    assert "1 record could not be replayed (ids 3)" in result.stderr


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_simulate_shows_params_holding_a_lone_surrogate(
    invoke: Invoke, policy_path: Path, fmt: str
) -> None:
    """A lone surrogate in params is shown as its escape, never a UnicodeEncodeError."""
    result = invoke("simulate", str(policy_path), 'read:crm:{"a": "\\ud800"}', "--format", fmt)
    assert result.exit_code == 0
    assert "\\ud800" in result.stdout
    if fmt == "json":
        assert json.loads(result.stdout)["decisions"][0]["action"]["params"] == {"a": "\ud800"}


def test_simulate_refuses_absurdly_deep_params_in_one_line(
    invoke: Invoke, policy_path: Path, tmp_path: Path
) -> None:
    """Params nested 900 levels deep are one usage error line, from the argument or a file."""
    deep = '{"a":' * 900 + "1" + "}" * 900
    result = invoke("simulate", str(policy_path), f"read:crm:{deep}")
    assert result.exit_code == 2
    assert "nested more than 100 levels deep" in result.stderr
    assert "Traceback" not in result.stderr
    lines = tmp_path / "deep.jsonl"
    lines.write_text(f'{{"type": "read", "target": "crm", "params": {deep}}}\n', encoding="utf-8")
    result = invoke("simulate", str(policy_path), "--actions", str(lines))
    assert result.exit_code == 2
    assert "deep.jsonl:1: the params cannot be used" in result.stderr
