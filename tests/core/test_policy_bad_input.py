"""Odd policy files and values: one PolicyError each, quickly; case-insensitive matching."""

from __future__ import annotations

import os
import threading
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aegis.core._index import covers
from aegis.core.action import Action
from aegis.core.decision import Approval
from aegis.core.policy import Policy, PolicyRule
from aegis.errors import PolicyError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (
            "rules:\n  - name: d\n    conditions: {param_eq: {d: 2024-02-30}}\n",
            3,
            "2024-02-30 looks like a date but is not one",
        ),
        (
            "rules:\n  - name: n\n    conditions: {param_gt: {n: " + "9" * 5000 + "}}\n",
            3,
            r"too many digits \(5000\)",
        ),
        (
            "rules:\n  - name: b\n    conditions: {param_eq: {country: NO}}\n",
            3,
            "NO is read by YAML 1.1 as the boolean false; write 'NO' in quotes",
        ),
        (
            "rules:\n  - name: b\n    conditions: {param_eq: {enabled: off}}\n",
            3,
            "off is read by YAML 1.1 as the boolean false",
        ),
        (
            "rules:\n  - name: b\n    conditions: {param_eq: {code: 012}}\n",
            3,
            "octal number",
        ),
        (
            "rules:\n  - name: d\n    conditions: {param_eq: {day: 2024-05-01}}\n",
            2,
            "date, not plain JSON-like data.*quote",
        ),
    ],
)
def test_values_yaml_would_change_are_one_policy_error(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    """Impossible dates, huge ints, YAML 1.1 booleans and octals fail with file:line and the fix."""
    path = write(tmp_path, text)
    with pytest.raises(PolicyError, match=message) as caught:
        Policy.from_yaml(path)
    assert caught.value.path == str(path)
    assert caught.value.line == line


def test_quoted_and_canonical_values_still_load(tmp_path: Path) -> None:
    """Quoting keeps the text; true/false stay booleans."""
    path = write(
        tmp_path,
        "rules:\n  - name: q\n    conditions: {param_eq: {c: 'NO', d: '2024-02-30', f: true}}\n",
    )
    rule = Policy.from_yaml(path).rules[0]
    assert dict(rule.conditions["param_eq"]) == {"c": "NO", "d": "2024-02-30", "f": True}


@pytest.mark.parametrize("version", [Decimal("sNaN"), True, 1.0, "2"])
def test_an_odd_version_is_a_policy_error(version: object) -> None:
    """version: sNaN (a Decimal that raises on ==), true or 1.0 is refused, not a crash."""
    with pytest.raises(PolicyError, match="unsupported policy version"):
        Policy.from_dict({"version": version, "rules": []})


@pytest.mark.parametrize("special", ["/dev/zero", "/dev/null", "fifo", "dir"])
def test_special_files_are_refused_at_once(tmp_path: Path, special: str) -> None:
    """/dev/zero, a FIFO with no writer, a directory: one PolicyError, no hang, no flood."""
    if special == "fifo":
        path = str(tmp_path / "policy.fifo")
        os.mkfifo(path)
    elif special == "dir":
        path = str(tmp_path)
    else:
        path = special
    errors: list[BaseException] = []

    def load() -> None:
        try:
            Policy.from_yaml(path)
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), f"loading {path} hung"
    [exc] = errors
    assert isinstance(exc, PolicyError)
    assert "regular file" in str(exc) or "directory" in str(exc)


def test_an_oversized_file_is_refused(tmp_path: Path) -> None:
    """A policy file over the size limit is refused before it is read."""
    path = tmp_path / "big.yaml"
    with path.open("wb") as file:
        file.truncate(17 * 1024 * 1024)
    with pytest.raises(PolicyError, match="may be at most"):
        Policy.from_yaml(path)


# ---------------------------------------------------------------- match_case


def test_globs_are_case_sensitive_by_default() -> None:
    """Without match_case, 'Delete' slips past a rule blocking 'delete' (the documented default)."""
    policy = Policy([PolicyRule("delete", "*", "critical", "block", "nd")], default_approval="auto")
    assert policy.evaluate(Action("delete", "crm")).approval is Approval.BLOCK
    assert policy.evaluate(Action("Delete", "crm")).approval is Approval.AUTO


@pytest.mark.parametrize(
    "name", ["delete", "DELETE", "Delete", "\uff24\uff25\uff2c\uff25\uff34\uff25"]
)
def test_match_case_insensitive_folds_both_sides(name: str) -> None:
    """match_case: insensitive compares NFKC case-folded names, globs and prefixes alike."""
    policy = Policy.from_dict(
        {
            "match_case": "insensitive",
            "defaults": {"approval": "auto"},
            "rules": [
                {"name": "nd", "match": {"type": "Delete", "target": "Prod*"}, "approval": "block"}
            ],
        }
    )
    assert policy.evaluate(Action(name, "PRODUCTION")).approval is Approval.BLOCK
    assert policy.evaluate(Action(name, "staging")).approval is Approval.AUTO
    assert policy.to_dict()["match_case"] == "insensitive"


def test_match_case_must_be_known_and_agree_when_merging() -> None:
    """An unknown match_case is a PolicyError; merging policies that disagree is one too."""
    with pytest.raises(PolicyError, match="match_case must be"):
        Policy.from_dict({"match_case": "maybe"})
    sensitive = Policy.from_dict({"match_case": "sensitive"})
    insensitive = Policy.from_dict({"match_case": "insensitive"})
    with pytest.raises(PolicyError, match="state the same match_case"):
        sensitive.merge(insensitive)


# ---------------------------------------------------------------- shadowed rules, fast


def reference_shadowed(policy: Policy) -> list[tuple[str, str]]:
    """The original quadratic check: each rule against every earlier catch-all, in order."""
    shadowed, catch_alls = [], []
    for rule in policy.rules:
        for earlier in catch_alls:
            if covers(earlier.match_type, rule.match_type) and covers(
                earlier.match_target, rule.match_target
            ):
                shadowed.append((rule.name, earlier.name))
                break
        if not rule.conditions:
            catch_alls.append(rule)
    return shadowed


GLOBS = st.sampled_from(["*", "a", "ab", "abc", "a*", "ab*", "b", "b*", "*c", "a?c", "[ab]c"])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(GLOBS, GLOBS, st.booleans()),
        min_size=1,
        max_size=12,
    )
)
def test_shadowed_rules_agree_with_the_quadratic_reference(
    specs: list[tuple[str, str, bool]],
) -> None:
    """The indexed shadow check reports exactly what the rule-by-rule check does."""
    rules = [
        PolicyRule(kind, target, name=f"r{i}", conditions={"param_eq": {"x": 1}} if cond else None)
        for i, (kind, target, cond) in enumerate(specs)
    ]
    policy = Policy(rules)
    assert [(r.name, by.name) for r, by in policy.shadowed_rules()] == reference_shadowed(policy)
