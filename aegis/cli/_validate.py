"""``aegis validate`` and ``aegis schema``: check policy files before they ship."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import click

from aegis.cli._app import CheckFailed
from aegis.cli._output import (
    APPROVAL_STYLES,
    RISK_STYLES,
    Cell,
    Styled,
    emit_json,
    error,
    print_table,
    success,
    warn,
)
from aegis.cli._params import format_option
from aegis.core._text import counted
from aegis.core._yaml import read_policy_text, yaml11_warnings
from aegis.core.action import thaw
from aegis.core.decision import Approval
from aegis.core.policy import Policy, PolicyRule, fold_case
from aegis.errors import PolicyError

__all__ = ["describe_conditions", "schema", "validate"]

RULE_COLUMNS = ("#", "Name", "Match", "Conditions", "Risk", "Approval", "Source")


def _compact(value: Any) -> str:
    return (
        value
        if isinstance(value, str)
        else json.dumps(thaw(value), ensure_ascii=False, default=str)
    )


def describe_conditions(conditions: Mapping[str, Any]) -> str:
    """Render a rule's conditions on one line, e.g. ``param_gt amount=500; timezone=UTC``."""
    parts = []
    for name, value in conditions.items():
        if isinstance(value, Mapping):
            inner = ", ".join(f"{path}={_compact(v)}" for path, v in value.items())
            parts.append(f"{name} {inner}")
        else:
            parts.append(f"{name}={_compact(value)}")
    return "; ".join(parts)


def _rule_row(position: int, rule: PolicyRule) -> list[Cell]:
    risk = rule.risk_level.name
    approval = rule.approval.value
    return [
        str(position),
        rule.name,
        f"{rule.match_type}:{rule.match_target}",
        describe_conditions({**rule.conditions, **_counting(rule)}),
        Styled(risk, RISK_STYLES.get(risk, "")),
        Styled(approval, APPROVAL_STYLES.get(approval, "")),
        rule.source or "",
    ]


def _rule_json(rule: PolicyRule) -> dict[str, Any]:
    return {
        "name": rule.name,
        "match": {"type": rule.match_type, "target": rule.match_target},
        "conditions": thaw(rule.conditions),
        "risk_level": rule.risk_level.name,
        "approval": rule.approval.value,
        "source": rule.source,
        **thaw(_counting(rule)),
    }


def _counting(rule: PolicyRule) -> dict[str, Any]:
    """The rule's limit, budget and on_exceed, those it has."""
    return {
        key: value
        for key in ("limit", "budget", "on_exceed")
        if (value := getattr(rule, key, None)) is not None
    }


def _yaml_notes(path: str) -> list[str]:
    """Unquoted scalars whose meaning YAML 1.1 tools disagree on, with the fix."""
    try:
        text = read_policy_text(path)
    except PolicyError:  # it loaded a moment ago; a file that changed since says nothing
        return []
    return [f"{path}:{line}: {message}" for line, message in yaml11_warnings(text)]


def _case_notes(policy: Policy) -> list[str]:
    """Block rules that a differently-cased name would slip past (match_case not stated)."""
    if policy.match_case is not None:
        return []
    notes = []
    for rule in policy.rules:
        if rule.approval is not Approval.BLOCK:
            continue
        for side, glob in (("type", rule.match_type), ("target", rule.match_target)):
            other = glob.upper() if glob != glob.upper() else glob.lower()
            if other == glob and fold_case(glob) == glob:
                continue  # nothing to spell otherwise: "*", "42", ...
            if other == glob:
                other = fold_case(glob)
            where = f"{rule.source}: " if rule.source else ""
            # A glob is no name: say which names slip past ('READ*' is not one).
            slips = f"a {side} matching {other!r}" if any(c in glob for c in "*?[") else repr(other)
            notes.append(
                f"{where}rule {rule.name!r} blocks {side} {glob!r} case-sensitively, so"
                f" {slips} slips past it; add 'match_case: insensitive' to the policy,"
                " or 'match_case: sensitive' to keep exact matching and silence this"
            )
            break
    return notes


def _path_notes(policy: Policy) -> list[str]:
    """``param_matches`` regexes anchored at an absolute path: a text match a path slips past."""
    notes = []
    for rule in policy.rules:
        spec = (rule.conditions or {}).get("param_matches")
        if not isinstance(spec, Mapping):
            continue
        for param, pattern in spec.items():
            if not (isinstance(pattern, str) and pattern.startswith(("^/", "/", "\\A/"))):
                continue
            where = f"{rule.source}: " if rule.source else ""
            notes.append(
                f"{where}rule {rule.name!r} matches param {param!r} against {pattern!r} as "
                "text, so '/srv/public/../x', '//x' and the elements of a list of paths slip "
                f"past it; for directories use path_under / path_not_under: {{{param}: /dir}}"
            )
    return notes


def _shadow_message(shadowed: PolicyRule, by: PolicyRule) -> str:
    where = f"{shadowed.source}: " if shadowed.source else ""
    by_where = f" ({by.source})" if by.source else ""
    return (
        f"{where}rule {shadowed.name!r} can never match: rule {by.name!r}{by_where} comes first"
        " and matches every action it would; move it above, or narrow the earlier rule"
    )


def _report(label: str, policy: Policy, *, quiet: bool) -> list[tuple[PolicyRule, PolicyRule]]:
    """Print one policy's rules (unless quiet) and warnings; return its shadowed rules."""
    if not quiet:
        defaults = (
            f"anything else: {policy.default_approval.value}"
            f" ({policy.default_risk_level.name.lower()} risk)"
        )
        print_table(
            RULE_COLUMNS,
            (_rule_row(i, rule) for i, rule in enumerate(policy.rules, 1)),
            title=f"{label}: {counted(len(policy.rules), 'rule')}; {defaults}",
            wrap=("Name", "Match", "Conditions", "Source"),
        )
    shadowed = policy.shadowed_rules()
    for rule, by in shadowed:
        warn(_shadow_message(rule, by))
    return shadowed


def _policy_json(label: str, policy: Policy) -> dict[str, Any]:
    return {
        "path": label,
        "ok": True,
        "error": None,
        "defaults": {
            "risk_level": policy.default_risk_level.name,
            "approval": policy.default_approval.value,
        },
        "rules": [_rule_json(rule) for rule in policy.rules],
        "shadowed": [
            {"rule": rule.name, "source": rule.source, "by": by.name, "by_source": by.source}
            for rule, by in policy.shadowed_rules()
        ],
    }


@click.command()
@click.argument("policies", nargs=-1, required=True, metavar="POLICY...")
@click.option(
    "--merged",
    is_flag=True,
    help="Also check the files as one layered policy, rules in the order given.",
)
@click.option(
    "--strict",
    is_flag=True,
    help="Treat warnings (shadowed rules, case-sensitive blocks, YAML 1.1 values) as failures.",
)
@click.option("-q", "--quiet", is_flag=True, help="Print only errors and warnings.")
@format_option("table", "json")
def validate(
    policies: Sequence[str], merged: bool, strict: bool, quiet: bool, output_format: str
) -> None:
    """Check policy files and list their rules.

    Each file is loaded as the runtime would load it. Errors are printed as
    file:line: message and make the command exit with status 1; rules that
    can never match (an earlier rule always wins), block rules that a
    differently-cased name slips past, and unquoted values that YAML 1.1
    tools read otherwise (y, n, 1:30) are reported as warnings.

    \b
    Examples:
      aegis validate policy.yaml
      aegis validate base.yaml team.yaml --merged
      aegis validate policies/*.yaml --strict -q      # in CI
    """
    as_json = output_format == "json"
    documents: list[dict[str, Any]] = []
    failures = warnings = 0
    for path in policies:
        try:
            policy = Policy.from_yaml(path)
        except PolicyError as exc:
            failures += 1
            error(str(exc))
            documents.append({"path": path, "ok": False, "error": str(exc)})
            continue
        notes = _yaml_notes(path) + _case_notes(policy) + _path_notes(policy)
        if as_json:
            documents.append({**_policy_json(path, policy), "warnings": notes})
            warnings += len(documents[-1]["shadowed"]) + len(notes)
        else:
            warnings += len(_report(path, policy, quiet=quiet)) + len(notes)
            for note in notes:
                warn(note)

    merged_failed = False
    if merged and not failures:
        label = " + ".join(policies)
        try:
            combined = Policy.from_yaml_files(*policies)
        except PolicyError as exc:
            failures += 1
            merged_failed = True
            error(f"merging {label}: {exc}")
            documents.append({"path": label, "ok": False, "error": str(exc)})
        else:
            if as_json:
                documents.append(_policy_json(label, combined))
                warnings += len(documents[-1]["shadowed"])
            else:
                warnings += len(_report(f"merged ({label})", combined, quiet=quiet))

    if as_json:
        emit_json({"ok": not failures and not (strict and warnings), "files": documents})
    if failures:
        # A single file's error was the whole story; with several, say how many.
        several = len(policies) > 1
        raise CheckFailed(
            f"{failures} of {len(policies)} policy files are invalid"
            if several and not merged_failed
            else ""
        )
    if strict and warnings:
        raise CheckFailed(f"{counted(warnings, 'warning')} and --strict is set")
    if not as_json:
        success(f"ok: {counted(len(policies), 'policy file is', 'policy files are')} valid")


@click.command()
def schema() -> None:
    """Print the JSON Schema of the policy file format.

    Point your editor at it to get completion and checks while you write a
    policy (the YAML language server reads a modeline comment).

    \b
    Examples:
      aegis schema > policy.schema.json
      # then, on the first line of policy.yaml:
      # yaml-language-server: $schema=./policy.schema.json
    """
    emit_json(Policy.json_schema())
