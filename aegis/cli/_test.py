"""``aegis test``: check a policy against expected decisions, like unit tests for rules.

A cases file lists actions and what the policy must say about them::

    cases:
      - name: reads run on their own
        action: {type: read, target: crm, params: {id: 7}}
        expect: {approval: auto, risk_level: low, rule: reads}
      - name: the 21st email in an hour is blocked
        action: {type: send_email, target: smtp}
        agent: support                        # for key: [agent]
        at: "2026-11-24T10:00:00Z"            # optional; now when omitted
        history:                              # actions that ran before, oldest first
          - {type: send_email, target: smtp, ago: 30m, count: 20}
        expect: {approval: block, rule: email_rate, reason: "20 of 20"}

``expect`` may name ``approval``, ``risk_level``, ``rule`` and ``reason`` (a
text the reason must contain); at least one. A history entry is an action
(``type``, ``target``, ``params``) with ``ago`` (a window before the case's
time, such as ``30m``) or ``at``, and an optional ``count``, ``agent`` (the
case's by default) and ``session`` (another session's actions count for
limits but not for ``after``).
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import click

from aegis.cli._app import CheckFailed
from aegis.cli._output import _echo, info, success
from aegis.cli._params import parse_datetime
from aegis.core._text import counted
from aegis.core.action import Action
from aegis.core.decision import Approval, PolicyDecision
from aegis.core.limits import LimitSpecError, Subject, parse_window
from aegis.core.policy import Policy
from aegis.core.risk import RiskLevel
from aegis.errors import AegisError
from aegis.runtime.metering import Metering
from aegis.stores.usage import MemoryUsageStore

__all__ = ["Case", "CaseOutcome", "load_cases", "run_case", "test"]

CASE_KEYS: Final = ("name", "action", "at", "agent", "session", "history", "expect")
ACTION_KEYS: Final = ("type", "target", "params", "description")
HISTORY_KEYS: Final = (*ACTION_KEYS, "ago", "at", "count", "session", "agent")
EXPECT_KEYS: Final = ("approval", "risk_level", "rule", "reason")
_SESSION: Final = "test-session"
#: the most actions a history entry may stand for
_MAX_COUNT: Final = 100_000


@dataclass(frozen=True)
class _Earlier:
    """An action of a case's history: when, how many times, in which session, by whom."""

    action: Action
    moment: datetime | timedelta
    count: int
    session: str | None
    agent: str | None


@dataclass(frozen=True)
class Case:
    """One case of a cases file: an action, its moment and history, and what is expected."""

    name: str
    where: str
    action: Action
    at: datetime | None
    agent: str | None
    session: str
    history: tuple[_Earlier, ...]
    expect: Mapping[str, str]


@dataclass(frozen=True)
class CaseOutcome:
    """What the policy said about a case, and how it differs from what was expected."""

    case: Case
    decision: PolicyDecision
    mismatches: tuple[tuple[str, str, str], ...] = field(default=())  # key, expected, got

    @property
    def passed(self) -> bool:
        """Whether every expectation held."""
        return not self.mismatches


# -- reading a cases file ----------------------------------------------------------


class _Where:
    def __init__(self, path: str) -> None:
        self.path = path

    def at(self, mapping: object, key: object = None) -> str:
        from aegis.core._yaml import line_of  # noqa: PLC0415  # with YAML, only when loading

        line = line_of(mapping, key)
        return f"{self.path}:{line}" if line is not None else self.path

    def fail(self, message: str, mapping: object, key: object = None) -> AegisError:
        return AegisError(f"{self.at(mapping, key)}: {message}")


def _keys(mapping: Mapping[Any, Any], allowed: tuple[str, ...], what: str, where: _Where) -> None:
    for key in mapping:
        if key not in allowed:
            raise where.fail(
                f"unknown key {key!r} in {what}; valid keys are: {', '.join(allowed)}",
                mapping,
                key,
            )


def _text(value: object, what: str, where: _Where, mapping: object, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise where.fail(f"{what} must be a non-empty string, not {value!r}", mapping, key)
    return value


def _moment(value: object, where: _Where, mapping: object, key: str) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if not isinstance(value, str):
        raise where.fail(
            f"{key} must be an ISO 8601 time such as '2026-11-24T10:00:00Z', not {value!r}",
            mapping,
            key,
        )
    try:
        return parse_datetime(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise where.fail(str(exc), mapping, key) from None


def _action(raw: Mapping[Any, Any], where: _Where) -> Action:
    params = raw.get("params") or {}
    if not isinstance(params, Mapping):
        raise where.fail(f"params must be a mapping, not {params!r}", raw, "params")
    description = raw.get("description", "")
    try:
        return Action(
            _text(raw.get("type"), "type", where, raw, "type"),
            _text(raw.get("target"), "target", where, raw, "target"),
            params,
            description if isinstance(description, str) else str(description),
        )
    except TypeError as exc:
        raise where.fail(str(exc), raw, "params") from None


def _history_entry(raw: object, where: _Where, parent: object) -> _Earlier:
    if not isinstance(raw, Mapping):
        raise where.fail(
            "a history entry must be a mapping such as {type: read, target: crm, ago: 5m}",
            parent,
            "history",
        )
    _keys(raw, HISTORY_KEYS, "a history entry", where)
    action = _action(raw, where)
    if ("ago" in raw) == ("at" in raw):
        raise where.fail("a history entry needs exactly one of 'ago' and 'at'", raw)
    moment: datetime | timedelta
    if "ago" in raw:
        try:
            moment = timedelta(seconds=parse_window(raw["ago"], "ago"))
        except LimitSpecError as exc:
            raise where.fail(exc.message, raw, "ago") from None
    else:
        moment = _moment(raw["at"], where, raw, "at")
    count = raw.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= _MAX_COUNT:
        raise where.fail(f"count must be a whole number from 1 to {_MAX_COUNT}", raw, "count")
    session, agent = raw.get("session"), raw.get("agent")
    if session is not None:
        session = _text(session, "session", where, raw, "session")
    if agent is not None:
        agent = _text(agent, "agent", where, raw, "agent")
    return _Earlier(action, moment, count, session, agent)


def _expect(raw: object, where: _Where, parent: object) -> dict[str, str]:
    if not isinstance(raw, Mapping) or not raw:
        raise where.fail(
            "expect must name at least one of approval, risk_level, rule, reason",
            parent,
            "expect",
        )
    _keys(raw, EXPECT_KEYS, "expect", where)
    out: dict[str, str] = {}
    for key, value in raw.items():
        text = _text(value, f"expect {key}", where, raw, key)
        if key == "approval" and text.lower() not in {a.value for a in Approval}:
            raise where.fail(
                f"expect approval must be auto, approve or block, not {text!r}", raw, key
            )
        if key == "risk_level" and text.upper() not in RiskLevel.__members__:
            valid = ", ".join(m.lower() for m in RiskLevel.__members__)
            raise where.fail(f"expect risk_level must be one of {valid}, not {text!r}", raw, key)
        out[key] = text
    return out


def load_cases(path: str) -> list[Case]:
    """Read a cases file.

    Raises:
        AegisError: the file cannot be read or a case is malformed; the message
            names the file and line.
    """
    from aegis.core._yaml import load_yaml  # noqa: PLC0415

    where = _Where(path)
    try:
        data = load_yaml(path)
    except AegisError as exc:
        text = str(exc).replace("policy file", "cases file").replace("the policy", "the file")
        raise AegisError(text) from None
    raw_cases = data.get("cases") if isinstance(data, Mapping) else None
    if not isinstance(raw_cases, list) or not raw_cases:
        raise where.fail("a cases file needs a non-empty list under 'cases:'", data)
    if isinstance(data, Mapping):
        _keys(data, ("cases",), "the cases file", where)
    cases = []
    for number, raw in enumerate(raw_cases, 1):
        if not isinstance(raw, Mapping):
            raise where.fail(f"case {number} must be a mapping with action and expect", raw_cases)
        _keys(raw, CASE_KEYS, "a case", where)
        name = raw.get("name", f"case {number}")
        action_raw = raw.get("action")
        if not isinstance(action_raw, Mapping):
            raise where.fail("a case needs an action: {type, target, params}", raw, "action")
        _keys(action_raw, ACTION_KEYS, "an action", where)
        history_raw = raw.get("history") or []
        if not isinstance(history_raw, list):
            raise where.fail("history must be a list of earlier actions", raw, "history")
        agent = raw.get("agent")
        session = raw.get("session", _SESSION)
        cases.append(
            Case(
                name=str(name),
                where=where.at(raw),
                action=_action(action_raw, where),
                at=_moment(raw["at"], where, raw, "at") if "at" in raw else None,
                agent=None if agent is None else _text(agent, "agent", where, raw, "agent"),
                session=_text(session, "session", where, raw, "session"),
                history=tuple(_history_entry(h, where, raw) for h in history_raw),
                expect=_expect(raw.get("expect"), where, raw),
            )
        )
    return cases


# -- running a case ----------------------------------------------------------------


def run_case(policy: Policy, case: Case) -> CaseOutcome:
    """Decide ``case``'s action after replaying its history, in memory; compare with expect."""
    at = case.at or datetime.now(UTC)
    if policy.limits is None:
        decision = policy.evaluate(case.action, now=at)
    else:
        metering = Metering(MemoryUsageStore(), agent=case.agent)
        earlier = []
        for entry in case.history:
            moment = entry.moment
            when = moment if isinstance(moment, datetime) else at - moment
            subject = Subject(entry.session or case.session, entry.agent or case.agent)
            earlier.extend([(when.timestamp(), entry.action, subject)] * entry.count)
        earlier.sort(key=lambda item: item[0])
        for stamp, action, subject in earlier:
            metering.count(policy, action, subject, now=stamp)
        subject = Subject(case.session, case.agent)
        decision, _ = metering.check(
            policy, case.action, subject, reserve=False, now=at.timestamp()
        )
    got = {
        "approval": decision.approval.value,
        "risk_level": decision.risk_level.name.lower(),
        "rule": decision.matched_rule,
        "reason": decision.reason,
    }
    mismatches = []
    for key, expected in case.expect.items():
        if key == "reason":
            held = expected in got["reason"]
        elif key in ("approval", "risk_level"):
            held = expected.lower() == got[key]
        else:
            held = expected == got[key]
        if not held:
            mismatches.append((key, expected, got[key]))
    return CaseOutcome(case, decision, tuple(mismatches))


def failed_line(message: str) -> None:
    """Print a failing case's line on stdout, red on a colour terminal."""
    _echo(message, fg="red")


def _junit(path: str, policy_path: str, outcomes: list[CaseOutcome], seconds: float) -> None:
    failures = sum(not o.passed for o in outcomes)
    suite = ET.Element(
        "testsuite",
        name=f"aegis test {policy_path}",
        tests=str(len(outcomes)),
        failures=str(failures),
        errors="0",
        time=f"{seconds:.3f}",
    )
    for outcome in outcomes:
        case = ET.SubElement(
            suite, "testcase", classname=policy_path, name=outcome.case.name, time="0"
        )
        if not outcome.passed:
            lines = [f"{k}: expected {e!r}, got {g!r}" for k, e, g in outcome.mismatches]
            failure = ET.SubElement(case, "failure", message="; ".join(lines))
            failure.text = f"{outcome.case.where}\n" + "\n".join(lines)
    root = ET.Element("testsuites")
    root.append(suite)
    tree = ET.ElementTree(root)
    ET.indent(tree)
    try:
        tree.write(path, encoding="utf-8", xml_declaration=True)
    except OSError as exc:
        raise AegisError(f"cannot write {path}: {exc.strerror}; check the folder") from exc


@click.command(short_help="Check a policy against expected decisions in a cases file.")
@click.argument("policy_path", metavar="POLICY", type=click.Path(dir_okay=False))
@click.argument("cases_path", metavar="CASES", type=click.Path(dir_okay=False))
@click.option(
    "--junit",
    metavar="FILE.xml",
    type=click.Path(dir_okay=False),
    help="Also write the results as JUnit XML, for CI.",
)
def test(policy_path: str, cases_path: str, junit: str | None) -> None:
    """Check that POLICY decides each case of CASES as expected.

    Each case gives an action, optionally a time (at) and a history of
    earlier actions (for limits, budgets and after/not_after rules), and
    the expected approval, risk_level, rule or a text of the reason.
    Exit 1 if any case fails, with what was expected and what came out.

    \b
    Examples:
      aegis test policy.yaml policy.cases.yaml
      aegis test policy.yaml cases.yaml --junit test-results/aegis.xml
    """
    started = time.perf_counter()
    policy = Policy.from_yaml(policy_path)
    cases = load_cases(cases_path)
    outcomes = [run_case(policy, case) for case in cases]
    for outcome in outcomes:
        if outcome.passed:
            info(f"PASS  {outcome.case.name}")
            continue
        failed_line(f"FAIL  {outcome.case.name}  ({outcome.case.where})")
        width = max(len(key) for key, _, _ in outcome.mismatches)
        for key, expected, got in outcome.mismatches:
            info(f"      {key + ':':<{width + 1}}  expected {expected!r}")
            info(f"      {'':<{width + 1}}  got      {got!r}")
    if junit is not None:
        _junit(junit, policy_path, outcomes, time.perf_counter() - started)
    failed = sum(not o.passed for o in outcomes)
    if failed:
        raise CheckFailed(f"{failed} of {counted(len(outcomes), 'case')} failed")
    success(f"all {counted(len(outcomes), 'case')} passed")
