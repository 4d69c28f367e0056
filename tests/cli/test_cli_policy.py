"""``aegis init``, ``aegis validate`` and ``aegis schema``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

from aegis.cli._init import STARTER_POLICY
from aegis.core.policy import Policy

Invoke = Callable[..., Result]

TYPO_POLICY = """\
version: "1"
rules:
  - name: reads
    match: {type: read}
    risk_levle: low
    approval: auto
"""

SHADOWED_POLICY = """\
version: "1"
rules:
  - name: everything
    match: {type: "*"}
    approval: approve
  - name: deletes
    match: {type: delete}
    approval: block
"""


def test_init_writes_a_starter_policy_that_validates(invoke: Invoke, tmp_path: Path) -> None:
    """init writes policy.yaml, which loads, has rules and shadows none."""
    target = tmp_path / "policy.yaml"
    result = invoke("init", "-o", str(target))
    assert result.exit_code == 0
    assert f"wrote {target}" in result.stdout
    policy = Policy.from_yaml(target)
    assert len(policy.rules) >= 4
    assert policy.shadowed_rules() == []
    assert invoke("validate", str(target)).exit_code == 0


def test_init_policy_validates_strictly_without_a_warning(invoke: Invoke, tmp_path: Path) -> None:
    """The first validate of what init wrote has nothing to warn about, even with --strict."""
    target = tmp_path / "policy.yaml"
    assert invoke("init", "-o", str(target)).exit_code == 0
    result = invoke("validate", "--strict", str(target))
    assert result.exit_code == 0
    assert "warning" not in result.stderr


def test_starter_policy_fails_closed_and_blocks_deletes(tmp_path: Path) -> None:
    """The starter policy blocks deletes and actions no rule mentions."""
    path = tmp_path / "p.yaml"
    path.write_text(STARTER_POLICY, encoding="utf-8")
    policy = Policy.from_yaml(path)
    from aegis.core.action import Action

    assert policy.evaluate(Action("delete", "crm")).approval.value == "block"
    assert policy.evaluate(Action("launch", "rocket")).approval.value == "block"
    assert policy.evaluate(Action("read", "crm")).approval.value == "auto"
    assert policy.evaluate(Action("DELETE", "crm")).approval.value == "block"


def test_init_refuses_to_overwrite(invoke: Invoke, tmp_path: Path) -> None:
    """init exits 1 with a hint about --force and leaves an existing file alone."""
    target = tmp_path / "policy.yaml"
    target.write_text("mine", encoding="utf-8")
    result = invoke("init", "-o", str(target))
    assert result.exit_code == 1
    assert "already exists; pass --force" in result.stderr
    assert target.read_text(encoding="utf-8") == "mine"


def test_init_force_overwrites(invoke: Invoke, tmp_path: Path) -> None:
    """init --force replaces an existing file with the starter policy."""
    target = tmp_path / "policy.yaml"
    target.write_text("mine", encoding="utf-8")
    assert invoke("init", "-o", str(target), "--force").exit_code == 0
    assert target.read_text(encoding="utf-8") == STARTER_POLICY


def test_init_dash_prints_the_policy(invoke: Invoke) -> None:
    """init -o - prints the starter policy on stdout instead of writing a file."""
    result = invoke("init", "-o", "-")
    assert result.exit_code == 0
    assert result.stdout == STARTER_POLICY


def test_init_into_a_missing_folder_is_one_clear_error(invoke: Invoke, tmp_path: Path) -> None:
    """init into a folder that does not exist exits 1 naming the path."""
    result = invoke("init", "-o", str(tmp_path / "no" / "such" / "p.yaml"))
    assert result.exit_code == 1
    assert "cannot write" in result.stderr
    assert "Traceback" not in result.output


def test_validate_lists_rules_as_plain_tab_separated_text(
    invoke: Invoke, policy_path: Path
) -> None:
    """validate prints a header and one tab-separated row per rule when piped."""
    result = invoke("validate", str(policy_path))
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0] == "#\tname\tmatch\tconditions\trisk\tapproval\tsource"
    assert lines[1].split("\t") == ["1", "reads", "read*:*", "", "LOW", "auto", f"{policy_path}:4"]
    assert "ok: 1 policy file is valid" in result.stdout
    assert "\x1b[" not in result.output


def test_validate_typo_prints_file_line_and_exits_1(invoke: Invoke, tmp_path: Path) -> None:
    """An unknown key is reported as file:line: message with exit status 1."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(TYPO_POLICY, encoding="utf-8")
    result = invoke("validate", str(bad))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"{bad}:5: ")
    assert "risk_levle" in result.stderr
    assert "Traceback" not in result.output


def test_validate_checks_every_file(invoke: Invoke, tmp_path: Path, policy_path: Path) -> None:
    """With several files, a bad one fails the run but the good ones are still listed."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(TYPO_POLICY, encoding="utf-8")
    result = invoke("validate", str(bad), str(policy_path))
    assert result.exit_code == 1
    assert "no_deletes" in result.stdout
    assert "1 of 2 policy files are invalid" in result.stderr


def test_validate_missing_file(invoke: Invoke, tmp_path: Path) -> None:
    """A missing policy file is one line naming it, exit 1."""
    result = invoke("validate", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 1
    assert "nope.yaml" in result.stderr
    assert "Traceback" not in result.output


def test_validate_warns_about_shadowed_rules(invoke: Invoke, tmp_path: Path) -> None:
    """A rule that can never match is a warning on stderr naming both rules."""
    path = tmp_path / "shadow.yaml"
    path.write_text(SHADOWED_POLICY, encoding="utf-8")
    result = invoke("validate", str(path))
    assert result.exit_code == 0
    assert "warning:" in result.stderr
    assert "'deletes' can never match" in result.stderr
    assert "'everything'" in result.stderr


def test_validate_strict_fails_on_warnings(invoke: Invoke, tmp_path: Path) -> None:
    """--strict turns shadowed-rule warnings into exit status 1."""
    path = tmp_path / "shadow.yaml"
    path.write_text(SHADOWED_POLICY, encoding="utf-8")
    assert invoke("validate", "--strict", "-q", str(path)).exit_code == 1


@pytest.mark.parametrize(
    ("shadowed", "said"),
    [(1, "1 warning and --strict is set"), (2, "2 warnings and --strict is set")],
)
def test_validate_strict_counts_its_warnings_right(
    invoke: Invoke, tmp_path: Path, shadowed: int, said: str
) -> None:
    """--strict names how many warnings stopped it: "1 warning", "2 warnings"."""
    path = tmp_path / "shadow.yaml"
    rules = "".join(
        f"  - name: {name}s\n    match: {{type: {name}}}\n    approval: auto\n"
        for name in ("read", "write")[:shadowed]
    )
    everything = '  - name: everything\n    match: {type: "*"}\n    approval: approve\n'
    path.write_text(f'version: "1"\nrules:\n{everything}{rules}', encoding="utf-8")
    result = invoke("validate", "--strict", "-q", str(path))
    assert result.exit_code == 1
    assert said in result.stderr


def test_validate_merged_finds_shadowing_across_files(
    invoke: Invoke, tmp_path: Path, policy_path: Path
) -> None:
    """--merged checks the files as one policy, so a later file's rule can be shadowed."""
    later = tmp_path / "later.yaml"
    later.write_text(
        'version: "1"\nrules:\n  - name: read_crm\n    match: {type: read, target: crm}\n',
        encoding="utf-8",
    )
    alone = invoke("validate", str(policy_path), str(later))
    assert "can never match" not in alone.stderr
    merged = invoke("validate", "--merged", str(policy_path), str(later))
    assert merged.exit_code == 0
    assert "'read_crm' can never match" in merged.stderr


def test_validate_json(invoke: Invoke, tmp_path: Path, policy_path: Path) -> None:
    """--format json prints only JSON: per-file status, rules and errors."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(TYPO_POLICY, encoding="utf-8")
    result = invoke("validate", "--format", "json", str(policy_path), str(bad))
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    assert document["ok"] is False
    good, broken = document["files"]
    assert good["ok"] is True
    assert [r["name"] for r in good["rules"]] == ["reads", "refunds", "no_deletes"]
    assert good["defaults"] == {"risk_level": "MEDIUM", "approval": "block"}
    assert broken["ok"] is False
    assert broken["error"].startswith(f"{bad}:5:")


def test_schema_is_json_and_only_json(invoke: Invoke) -> None:
    """schema prints the policy JSON Schema and nothing else on stdout."""
    result = invoke("schema")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == Policy.json_schema()


@pytest.mark.parametrize("quiet", [True, False])
def test_validate_quiet_hides_the_table(invoke: Invoke, policy_path: Path, quiet: bool) -> None:
    """-q prints no rule table; without it the rules are listed."""
    args = ["validate", str(policy_path)] + (["-q"] if quiet else [])
    result = invoke(*args)
    assert result.exit_code == 0
    assert ("no_deletes" in result.stdout) is not quiet


def test_validate_merged_reports_clashing_rule_names(invoke: Invoke, policy_path: Path) -> None:
    """--merged fails with exit 1 when two files define the same rule name."""
    result = invoke("validate", "-q", "--merged", str(policy_path), str(policy_path))
    assert result.exit_code == 1
    assert "merging" in result.stderr
    assert "'reads'" in result.stderr


def test_validate_shows_conditions_as_data(invoke: Invoke, tmp_path: Path) -> None:
    """validate prints a rule's conditions as JSON data and readable text, never a repr."""
    path = tmp_path / "p.yaml"
    path.write_text(
        "rules:\n  - name: big\n    match: {type: refund}\n"
        "    conditions: {param_gt: {amount: 500}}\n    approval: block\n",
        encoding="utf-8",
    )
    document = json.loads(invoke("validate", str(path), "--format", "json").stdout)
    assert document["files"][0]["rules"][0]["conditions"] == {"param_gt": {"amount": 500}}
    assert "param_gt amount=500" in invoke("validate", str(path)).stdout


def test_validate_warns_about_yaml_1_1_values_with_the_fix(invoke: Invoke, tmp_path: Path) -> None:
    """Unquoted y/n and base-60 numbers are warnings naming the line and how to quote them."""
    path = tmp_path / "p.yaml"
    path.write_text(
        "match_case: sensitive\nrules:\n  - name: r\n    match: {type: x}\n"
        "    conditions: {param_eq: {answer: y, at: 1:30}}\n",
        encoding="utf-8",
    )
    result = invoke("validate", "-q", str(path))
    assert result.exit_code == 0
    assert f"{path}:5: y is a boolean in YAML 1.1" in result.stderr
    assert "quote it, 'y'" in result.stderr
    assert f"{path}:5: 1:30 is read by YAML 1.1 as a base-60 number" in result.stderr
    assert invoke("validate", "-q", "--strict", str(path)).exit_code == 1
    document = json.loads(invoke("validate", str(path), "--format", "json").stdout)
    assert len(document["files"][0]["warnings"]) == 2


def test_validate_warns_about_case_sensitive_block_rules(invoke: Invoke, tmp_path: Path) -> None:
    """A block rule 'DELETE' would slip past is a warning until match_case is stated."""
    path = tmp_path / "p.yaml"
    rules = "rules:\n  - name: nd\n    match: {type: delete}\n    approval: block\n"
    path.write_text(rules, encoding="utf-8")
    result = invoke("validate", "-q", str(path))
    assert "rule 'nd' blocks type 'delete' case-sensitively, so 'DELETE' slips past" in (
        result.stderr
    )
    assert "match_case: insensitive" in result.stderr
    for stated in ("sensitive", "insensitive"):
        path.write_text(f"match_case: {stated}\n{rules}", encoding="utf-8")
        assert invoke("validate", "-q", "--strict", str(path)).stderr == ""
    path.write_text(rules.replace("delete", "'delete*'"), encoding="utf-8")
    result = invoke("validate", "-q", str(path))
    assert "so a type matching 'DELETE*' slips past" in " ".join(result.stderr.split())


def test_validate_warns_about_path_regexes(invoke: Invoke, tmp_path: Path) -> None:
    """A param_matches anchored at an absolute path is a warning pointing at path_under."""
    path = tmp_path / "p.yaml"
    rules = (
        "match_case: sensitive\nrules:\n  - name: secrets\n    match: {type: read}\n"
        '    conditions: {param_matches: {path: "^/srv/secret/"}}\n    approval: block\n'
    )
    path.write_text(rules, encoding="utf-8")
    result = invoke("validate", "-q", str(path))
    assert "rule 'secrets' matches param 'path' against '^/srv/secret/' as text" in result.stderr
    assert "path_under" in result.stderr
    assert invoke("validate", "-q", "--strict", str(path)).exit_code == 1
    fixed = rules.replace(
        'param_matches: {path: "^/srv/secret/"}', "path_under: {path: /srv/secret}"
    )
    path.write_text(fixed, encoding="utf-8")
    assert invoke("validate", "-q", "--strict", str(path)).stderr == ""


def test_validate_refuses_special_files(invoke: Invoke) -> None:
    """aegis validate /dev/zero is one clear line, at once."""
    result = invoke("validate", "/dev/zero")
    assert result.exit_code == 1
    assert "is not a regular file" in result.stderr
