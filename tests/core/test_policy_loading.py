"""Loading policies from dicts and YAML files, and the errors that point at the fault."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from aegis.core.action import Action
from aegis.core.decision import DEFAULT_RULE, Approval
from aegis.core.policy import Policy
from aegis.core.risk import RiskLevel
from aegis.errors import PolicyError

EXAMPLE = """\
version: "1"
defaults: {risk_level: medium, approval: approve}
rules:
  - name: reads
    match: {type: "read*", target: "*"}
    risk_level: low
    approval: auto
  - name: big_refunds
    match: {type: refund}
    conditions: {param_gt: {amount: 500}, timezone: Europe/Berlin,
                 time_after: "18:00", time_before: "08:00"}
    risk_level: critical
    approval: block
"""


def write(tmp_path: Path, text: str, name: str = "policy.yaml") -> Path:
    """Write a policy file, dedented, and return its path."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str) -> PolicyError:
    """The PolicyError that loading ``text`` as a policy file raises."""
    path = write(tmp_path, text)
    with pytest.raises(PolicyError) as info:
        Policy.from_yaml(path)
    return info.value


def test_example_file_loads_and_decides(tmp_path: Path) -> None:
    """The documented example loads and decides as described."""
    policy = Policy.from_yaml(write(tmp_path, EXAMPLE))
    night = datetime(2024, 1, 10, 20, 0, tzinfo=UTC)  # 21:00 in Berlin
    day = datetime(2024, 1, 10, 12, 0, tzinfo=UTC)
    big = Action("refund", "stripe", {"amount": 900})
    assert policy.evaluate(Action("read_orders", "db")).approval is Approval.AUTO
    assert policy.evaluate(big, now=night).approval is Approval.BLOCK
    assert policy.evaluate(big, now=day).matched_rule == DEFAULT_RULE
    assert policy.default_approval is Approval.APPROVE


def test_rules_remember_their_source_line(tmp_path: Path) -> None:
    """Rules read from a file know their file and line."""
    path = write(tmp_path, EXAMPLE)
    policy = Policy.from_yaml(path)
    assert [r.source for r in policy.rules] == [f"{path}:4", f"{path}:8"]


def test_from_dict_without_defaults_fails_closed() -> None:
    """A policy that states no defaults blocks unmatched actions."""
    policy = Policy.from_dict({"rules": [{"match": {"type": "read"}}]})
    assert (policy.default_risk_level, policy.default_approval) == (
        RiskLevel.MEDIUM,
        Approval.BLOCK,
    )
    assert policy.rules[0].approval is Approval.APPROVE


@pytest.mark.parametrize(
    ("defaults", "expected"),
    [
        ({"risk_level": "high"}, (RiskLevel.HIGH, Approval.BLOCK)),
        ({"approval": "auto"}, (RiskLevel.MEDIUM, Approval.AUTO)),
        ({}, (RiskLevel.MEDIUM, Approval.BLOCK)),
        (None, (RiskLevel.MEDIUM, Approval.BLOCK)),
    ],
)
def test_partial_defaults_fill_from_fail_closed(
    defaults: dict[str, str] | None, expected: tuple[RiskLevel, Approval]
) -> None:
    """A partial defaults mapping takes the missing value from medium/block."""
    policy = Policy.from_dict({"defaults": defaults})
    assert (policy.default_risk_level, policy.default_approval) == expected


@pytest.mark.parametrize("version", ["1", 1])
def test_version_one_is_accepted(version: object) -> None:
    """Version "1" (or the number 1) is accepted."""
    assert Policy.from_dict({"version": version}).rules == ()


def test_empty_rules_are_allowed() -> None:
    """A policy with an empty rules key uses only its defaults."""
    assert Policy.from_dict({"rules": None}).evaluate(Action("a", "b")).matched_rule == (
        DEFAULT_RULE
    )


def test_description_is_kept() -> None:
    """A rule's description is free text kept on the rule."""
    policy = Policy.from_dict({"rules": [{"name": "r", "description": "why"}]})
    assert policy.rules[0].description == "why"


@pytest.mark.parametrize(
    ("text", "line", "fragments"),
    [
        ("rules: [\n  {name: a\n", 3, ["invalid YAML"]),
        (
            "rules:\n  - name: a\n    match: {type: read\n    approval: auto\n",
            4,
            ["invalid YAML", "flow mapping that starts at line 3"],
        ),
        ("- a\n- b\n", 1, ["must be a mapping", "a list"]),
        ("versoin: '1'\n", 1, ["unknown key 'versoin'", "did you mean 'version'"]),
        ("version: '2'\n", 1, ["unsupported policy version '2'"]),
        ("defaults:\n  approval: auto\n  risk: low\n", 3, ["unknown key 'risk'", "risk_level"]),
        ("defaults:\n  approval: sometimes\n", 2, ["auto, approve, block", "'sometimes'"]),
        ("defaults: [auto]\n", 1, ["defaults must be a mapping"]),
        ("rules: {name: a}\n", 1, ["rules must be a list"]),
        ("rules:\n  - just a string\n", 1, ["rule 1 must be a mapping"]),
        (
            "rules:\n  - name: r\n    match: {type: a}\n    approvall: auto\n",
            4,
            ["rule 'r'", "unknown key 'approvall'", "did you mean 'approval'"],
        ),
        (
            "rules:\n  - name: r\n    match: {type: a, tagret: b}\n",
            3,
            ["rule 'r'", "unknown key 'tagret'", "'target'"],
        ),
        (
            "rules:\n  - name: r\n    risk_level: huge\n",
            3,
            ["rule 'r'", "low, medium, high, critical"],
        ),
        (
            "rules:\n  - match: {type: a}\n  - match: {type: b}\n    approval: nope\n",
            4,
            ["rule 'rule_2'", "auto, approve, block"],
        ),
        (
            "rules:\n  - name: r\n    conditions:\n      param_gt: {amount: 1}\n"
            "      parm_eq: {a: 1}\n",
            5,
            ["rule 'r'", "unknown condition 'parm_eq'", "did you mean 'param_eq'"],
        ),
        (
            "rules:\n  - name: r\n    conditions:\n      param_matches: {q: '('}\n",
            4,
            ["rule 'r'", "cannot be used as a regular expression"],
        ),
        (
            "rules:\n  - name: r\n    conditions:\n      time_after: '25:00'\n",
            4,
            ["rule 'r'", "HH:MM"],
        ),
        (
            "rules:\n  - name: r\n    conditions:\n      time_after: 18:00\n",
            4,
            ["rule 'r'", "quoted", "1080"],
        ),
        (
            "rules:\n  - name: r\n    conditions:\n      timezone: Mars/Olympus\n",
            4,
            ["rule 'r'", "unknown timezone 'Mars/Olympus'"],
        ),
        (
            "rules:\n  - name: r\n    conditions:\n      weekdays: [1, 9]\n",
            4,
            ["rule 'r'", "ISO weekday"],
        ),
        (
            "rules:\n  - name: r\n    conditions: [param_gt]\n",
            3,
            ["rule 'r'", "conditions must be a mapping"],
        ),
        (
            "rules:\n  - name: dup\n  - name: x\n  - name: dup\n",
            4,
            ["rule 'dup'", "used twice", "first on line 2"],
        ),
        ("rules:\n  - name: [a]\n", 2, ["rule name must be a string"]),
        ("rules:\n  - match: {type: 5}\n", 2, ["match type must be a glob string"]),
        ("rules:\n  - match: {target: ''}\n", 2, ["match target must be a glob string"]),
        ("rules:\n  - description: 5\n", 2, ["description must be text"]),
        ("rules:\n  - match: [a]\n", 2, ["match must be a mapping"]),
        ("rules: []\nrules: []\n", 2, ["'rules' appears twice", "first on line 1"]),
        ("", None, ["the policy is empty"]),
    ],
)
def test_file_errors_name_file_line_and_rule(
    tmp_path: Path, text: str, line: int | None, fragments: list[str]
) -> None:
    """Every invalid file raises PolicyError naming the file, the line and the fault."""
    error = load_error(tmp_path, text)
    message = str(error)
    assert error.path is not None
    assert message.startswith(str(error.path))
    assert error.line == line
    if line is not None:
        assert f"policy.yaml:{line}:" in message
    for fragment in fragments:
        assert fragment in message


def test_missing_file(tmp_path: Path) -> None:
    """A missing file is a PolicyError that names it."""
    with pytest.raises(PolicyError, match=r"nope\.yaml: policy file not found"):
        Policy.from_yaml(tmp_path / "nope.yaml")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    """A directory path is a PolicyError, not an OSError."""
    with pytest.raises(PolicyError, match="is a directory"):
        Policy.from_yaml(tmp_path)


def test_non_utf8_file(tmp_path: Path) -> None:
    """A file that is not UTF-8 is a PolicyError."""
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"rules: []\n# caf\xe9\n")
    with pytest.raises(PolicyError, match="not UTF-8"):
        Policy.from_yaml(path)


def test_yaml_python_tags_are_refused(tmp_path: Path) -> None:
    """The loader is safe: python object tags are a YAML error, not code execution."""
    error = load_error(tmp_path, "rules: !!python/object/apply:os.system ['true']\n")
    assert "invalid YAML" in str(error)


def test_from_dict_errors_have_no_line() -> None:
    """from_dict on plain data names the source but no line."""
    with pytest.raises(PolicyError) as info:
        Policy.from_dict({"rules": [{"name": "r", "approval": "x"}]}, source="inline")
    assert info.value.line is None
    assert str(info.value).startswith("inline: rule 'r': ")


def test_from_dict_rejects_non_mapping() -> None:
    """from_dict on something that is not a mapping raises PolicyError."""
    with pytest.raises(PolicyError, match="must be a mapping"):
        Policy.from_dict(["rules"])  # type: ignore[arg-type]


def test_from_yaml_files_merges_in_order(tmp_path: Path) -> None:
    """Several files merge in order; the first file's defaults apply."""
    base = write(
        tmp_path,
        "defaults: {approval: auto}\nrules:\n  - {name: a, match: {type: x}}\n",
        "base.yaml",
    )
    team = write(tmp_path, "defaults: {approval: block}\nrules:\n  - {name: b}\n", "team.yaml")
    policy = Policy.from_yaml_files(base, team)
    assert [r.name for r in policy.rules] == ["a", "b"]
    assert policy.default_approval is Approval.AUTO


def test_from_yaml_files_name_clash(tmp_path: Path) -> None:
    """A rule name used in two files is an error naming both files and lines."""
    base = write(tmp_path, "rules:\n  - {name: a}\n", "base.yaml")
    team = write(tmp_path, "rules:\n  - {name: b}\n  - {name: a}\n", "team.yaml")
    with pytest.raises(PolicyError) as info:
        Policy.from_yaml_files(base, team)
    assert f"{base}:2" in str(info.value)
    assert f"{team}:3" in str(info.value)


def test_from_yaml_files_needs_a_path() -> None:
    """Calling from_yaml_files without paths is an error, not an empty policy."""
    with pytest.raises(PolicyError, match="no policy files"):
        Policy.from_yaml_files()


def walk_schema(schema: dict[str, Any], data: Any) -> None:
    """A small structural check of ``data`` against the subset of JSON Schema we emit."""
    if "enum" in schema:
        assert data in schema["enum"], (data, schema["enum"])
    kind = schema.get("type")
    if kind == "object":
        assert isinstance(data, dict)
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, value in data.items():
            if key in properties:
                walk_schema(properties[key], value)
            else:
                assert extra is not False, f"unexpected key {key!r}"
                if isinstance(extra, dict):
                    walk_schema(extra, value)
    elif kind == "array":
        assert isinstance(data, list)
        for item in data:
            walk_schema(schema.get("items", {}), item)
    elif kind == "string":
        assert isinstance(data, str)
    elif kind == "number":
        assert isinstance(data, int | float)


def test_json_schema_accepts_the_example(tmp_path: Path) -> None:
    """The example file fits the JSON Schema's structure."""
    import yaml

    schema = Policy.json_schema()
    assert schema["$schema"].startswith("https://json-schema.org/")
    walk_schema(schema, yaml.safe_load(EXAMPLE))


def test_json_schema_rejects_unknown_keys() -> None:
    """The schema, like the loader, forbids unknown keys at every level."""
    schema = Policy.json_schema()
    rule = schema["properties"]["rules"]["items"]
    assert schema["additionalProperties"] is False
    assert rule["additionalProperties"] is False
    assert rule["properties"]["match"]["additionalProperties"] is False
    assert rule["properties"]["conditions"]["additionalProperties"] is False
    with pytest.raises(AssertionError):
        walk_schema(schema, {"rules": [{"approvall": "auto"}]})


def test_json_schema_lists_every_condition() -> None:
    """The schema documents exactly the conditions the loader accepts."""
    from aegis.core.conditions import CONDITION_NAMES

    rule = Policy.json_schema()["properties"]["rules"]["items"]
    assert tuple(rule["properties"]["conditions"]["properties"]) == CONDITION_NAMES
    assert rule["properties"]["approval"]["enum"] == ["auto", "approve", "block"]


def nested_list(depth: int) -> object:
    """A list nested ``depth`` levels deep, built without recursion."""
    value: object = "x"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("depth", [3000, 40000])
def test_deeply_nested_file_is_a_policy_error(tmp_path: Path, depth: int) -> None:
    """A file nested thousands deep is a PolicyError, not a RecursionError or a crash."""
    error = load_error(tmp_path, "rules: " + "[" * depth + "]" * depth + "\n")
    assert "nested too deeply" in str(error)
    assert error.line == 1


def test_deep_block_nesting_names_its_line(tmp_path: Path) -> None:
    """Deep indentation-based nesting is refused at the line where it gets too deep."""
    text = "rules:\n" + "".join("  " * level + "- \n" for level in range(1, 200))
    error = load_error(tmp_path, text)
    assert "nested too deeply" in str(error)
    assert error.line is not None


def test_moderate_nesting_in_conditions_loads(tmp_path: Path) -> None:
    """Nested values a real policy uses still load."""
    text = "rules:\n  - conditions: {param_eq: {a: {b: {c: [[1, {d: [2]}]]}}}}\n"
    policy = Policy.from_yaml(write(tmp_path, text))
    assert policy.rules[0].conditions["param_eq"]["a"]["b"]["c"] == ((1, {"d": (2,)}),)


@pytest.mark.parametrize(
    "data",
    [
        {"rules": [{"conditions": {"param_in": {"x": nested_list(3000)}}}]},
        {"rules": [{"conditions": {"param_eq": {"x": nested_list(3000)}}}]},
        {"rules": [{"risk_level": nested_list(3000)}]},
        {"version": nested_list(3000)},
    ],
)
def test_deeply_nested_dict_is_a_policy_error(data: dict[str, Any]) -> None:
    """from_dict on data nested thousands deep raises PolicyError naming the source."""
    with pytest.raises(
        PolicyError, match=r"^inline: .*nested (too deeply|more than 100 levels deep)"
    ):
        Policy.from_dict(data, source="inline")


ALIAS_BOMB = (
    "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
    + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9))
    + "rules:\n  - conditions: {param_in: {cmd: *a8}}\n"
)


def test_alias_bomb_is_refused(tmp_path: Path) -> None:
    """A YAML alias bomb is refused at once instead of expanding to 10**9 values."""
    error = load_error(tmp_path, ALIAS_BOMB)
    assert "anchors and aliases (&name / *name) are not supported" in str(error)
    assert error.line == 1


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("defaults: &d {approval: auto}\nrules: []\n", 1),
        ("rules:\n  - name: a\n  - name: b\n    match: &m {type: x}\n", 4),
        ("rules:\n  - name: a\n    conditions: {param_in: {x: [1, *nowhere]}}\n", 3),
    ],
)
def test_anchors_and_aliases_name_their_line(tmp_path: Path, text: str, line: int) -> None:
    """Any anchor or alias is a PolicyError pointing at its line."""
    error = load_error(tmp_path, text)
    assert "anchors and aliases" in str(error)
    assert error.line == line


def test_ampersand_in_text_is_not_an_anchor(tmp_path: Path) -> None:
    """An '&' or '*' inside a quoted value is plain text."""
    text = "rules:\n  - name: r\n    description: 'R&D *only*'\n    match: {type: '*'}\n"
    assert Policy.from_yaml(write(tmp_path, text)).rules[0].description == "R&D *only*"


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("? [a]\n: 1\n", "a list"),
        ("? {a: 1}\n: 1\n", "a mapping"),
        ("? !!set {a: null}\n: 1\n", "a set"),
    ],
)
def test_unhashable_key_names_what_was_written(tmp_path: Path, text: str, kind: str) -> None:
    """A list or mapping used as a key is described as such, without internal class names."""
    error = load_error(tmp_path, text)
    assert f"a mapping key must be a plain value such as a name or a number, not {kind}" in str(
        error
    )
    assert "Line" not in str(error)


def test_duplicate_name_in_dict_names_the_rule() -> None:
    """A duplicate rule name in from_dict data is one PolicyError naming the rule."""
    with pytest.raises(PolicyError, match=r"^inline: rule 'a': rule name 'a' is used twice;"):
        Policy.from_dict({"rules": [{"name": "a"}, {"name": "b"}, {"name": "a"}]}, source="inline")
