"""The compiled form of a policy's rules: hash tables keyed by what is literal in their globs.

Rules whose type and target are both literal sit in a dict keyed by the
pair; rules with one literal side in a dict keyed by it; globs that are a
literal then ``*`` in a dict per prefix length; everything else in one
ordered list. Evaluating an action probes each table once and scans only
the buckets it finds, in rule order, so the first match is found without
looking at unrelated rules.
"""

from __future__ import annotations

import fnmatch
import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, TypeVar

from aegis.core.conditions import Unevaluable
from aegis.core.decision import decision_template

if TYPE_CHECKING:
    from aegis.core.rule import PolicyRule

__all__ = [
    "CLOCK",
    "FLOW",
    "PLAIN",
    "RUN",
    "Bucket",
    "CoverIndex",
    "Entry",
    "Index",
    "Matcher",
    "covers",
    "is_literal",
    "literal_prefix",
    "matcher",
]

_GLOB_CHARS: Final = frozenset("*?[")
_MISSING: Final[Any] = object()

#: a compiled glob: truthy when the string matches
Matcher = Callable[[str], object]


def is_literal(pattern: str) -> bool:
    """Whether ``pattern`` has no glob characters, so only itself matches it."""
    return _GLOB_CHARS.isdisjoint(pattern)


def literal_prefix(pattern: str) -> str | None:
    """``"tool_"`` for ``"tool_*"``; ``None`` when the glob is not a literal then ``*``."""
    if len(pattern) > 1 and pattern[-1] == "*" and is_literal(pattern[:-1]):
        return pattern[:-1]
    return None


def matcher(pattern: str) -> Matcher | None:
    """A fast case-sensitive ``fnmatch`` test for glob ``pattern``; ``None`` matches anything.

    Only globs get here: the index looks literal patterns up as dict keys.
    """
    if pattern == "*":
        return None
    prefix = literal_prefix(pattern)
    if prefix is not None:
        return lambda value: value.startswith(prefix)
    return re.compile(fnmatch.translate(pattern)).match


def covers(earlier: str, later: str) -> bool:
    """Whether glob ``earlier`` surely matches everything glob ``later`` matches."""
    if earlier in ("*", later):
        return True
    if is_literal(later):
        return fnmatch.fnmatchcase(later, earlier)
    prefix, later_prefix = literal_prefix(earlier), literal_prefix(later)
    return prefix is not None and later_prefix is not None and later_prefix.startswith(prefix)


def _cover_key(pattern: str) -> tuple[str, str]:
    if pattern == "*":
        return ("*", "")
    if is_literal(pattern):
        return ("=", pattern)
    prefix = literal_prefix(pattern)
    return ("p", prefix) if prefix is not None else ("?", pattern)


class _Side:
    """The catch-all globs seen so far on one side (type or target), by kind."""

    def __init__(self) -> None:
        self.prefix_lengths: set[int] = set()
        self.complex: dict[str, None] = {}  # ordered, deduplicated

    def add(self, pattern: str) -> tuple[str, str]:
        key = _cover_key(pattern)
        if key[0] == "p":
            self.prefix_lengths.add(len(key[1]))
        elif key[0] == "?":
            self.complex[pattern] = None
        return key

    def covering(self, pattern: str) -> list[tuple[str, str]]:
        """The keys of every seen glob that :func:`covers` ``pattern``."""
        keys = [("*", ""), _cover_key(pattern)]
        if is_literal(pattern):
            keys.extend(("p", pattern[:n]) for n in self.prefix_lengths if n <= len(pattern))
            keys.extend(("?", glob) for glob in self.complex if fnmatch.fnmatchcase(pattern, glob))
        else:
            prefix = literal_prefix(pattern)
            if prefix is not None:
                keys.extend(("p", prefix[:n]) for n in self.prefix_lengths if n <= len(prefix))
        return keys


class CoverIndex:
    """Earlier catch-all rules by their globs: which one first covers a later rule.

    Equivalent to trying :func:`covers` against every earlier rule in order,
    but each lookup costs a few dictionary probes (plus one ``fnmatch`` per
    distinct glob that is neither literal nor a literal then ``*``), so a
    policy of thousands of rules is checked in near-linear time.
    """

    def __init__(self) -> None:
        self._types = _Side()
        self._targets = _Side()
        self._first: dict[tuple[str, str], dict[tuple[str, str], int]] = {}

    def add(self, position: int, match_type: str, match_target: str) -> None:
        """Remember a catch-all rule (one without conditions) at ``position``."""
        inner = self._first.setdefault(self._types.add(match_type), {})
        inner.setdefault(self._targets.add(match_target), position)

    def first_covering(self, match_type: str, match_target: str) -> int | None:
        """The position of the earliest remembered rule that covers both globs, or ``None``."""
        best: int | None = None
        targets: list[tuple[str, str]] | None = None
        for type_key in self._types.covering(match_type):
            inner = self._first.get(type_key)
            if inner is None:
                continue
            if targets is None:
                targets = self._targets.covering(match_target)
            for target_key in targets:
                position = inner.get(target_key)
                if position is not None and (best is None or position < best):
                    best = position
        return best


# A compiled rule, as a tuple because unpacking one is the cheapest read:
# (position, type matcher, target matcher, check, mode, decision template).
# Matchers are None when the index already checked them. In RUN mode the
# entry stands for a _ThresholdRun: check is its ``first`` and the last item
# its ``hits``.
Entry = tuple[int, Matcher | None, Matcher | None, Callable[..., Any] | None, int, Any]
Bucket = tuple[Entry, ...]
# FLOW entries check the session's history too; their check takes it as a
# third argument. FLOW & CLOCK is true: flow conditions need the time.
PLAIN, CLOCK, RUN, FLOW = 0, 1, 2, 3
#: shortest run of threshold rules worth a binary search
_MIN_RUN = 4


class _ThresholdRun:
    """Consecutive rules that each compare the same top-level param with a number.

    ``refund if amount > 1000``, ``refund if amount > 500``, ... : the first of
    them that matches is found by binary search instead of one by one. A
    rule whose threshold an earlier one already covers (``> 500`` after
    ``> 100``) can never be the first match, so only the others are kept,
    and their thresholds are then sorted.
    """

    def __init__(self, entries: list[Entry], comparisons: list[tuple[str, str, Any]]) -> None:
        name, key, _ = comparisons[0]
        descending = name in ("param_gt", "param_gte")
        bounds: list[Any] = []
        hits: list[tuple[int, dict[str, Any]]] = []
        for entry, (_, _, bound) in zip(entries, comparisons, strict=True):
            if not bounds or (bound < bounds[-1] if descending else bound > bounds[-1]):
                bounds.append(bound)
                hits.append((entry[0], entry[5]))
        self.key = key
        self.first_check: Callable[..., Any] = entries[0][3]  # type: ignore[assignment]
        self.negate = descending
        self.keys = [-b for b in bounds] if descending else bounds
        # gt: v > b <=> -b > -v, first such key is bisect_right(keys, -v); and so on.
        self.search = bisect_left if name in ("param_gte", "param_lte") else bisect_right
        self.hits = tuple(hits)

    def first(self, params: Mapping[str, Any]) -> int:
        """Index in ``hits`` of the first rule that matches, or -1."""
        value = params.get(self.key, _MISSING)
        if type(value) is not int:
            # Let the first rule judge anything unusual, exactly as a scan
            # would: it raises Unevaluable or says False for a missing param.
            self.first_check(params, None)
            if value is _MISSING:
                return -1
        index = self.search(self.keys, -value if self.negate else value)
        return index if index < len(self.hits) else -1


def _with_runs(entries: list[Entry], rules: tuple[PolicyRule, ...]) -> list[Entry]:
    """Replace runs of threshold rules in a bucket with one :class:`_ThresholdRun` entry."""
    out: list[Entry] = []
    run: list[Entry] = []
    comparisons: list[tuple[str, str, Any]] = []

    def flush() -> None:
        if len(run) >= _MIN_RUN:
            threshold = _ThresholdRun(run, comparisons)
            out.append((run[0][0], None, None, threshold.first, RUN, threshold.hits))
        else:
            out.extend(run)
        run.clear()
        comparisons.clear()

    for entry in entries:
        compiled = rules[entry[0]]._compiled_conditions
        comparison = compiled.comparison if compiled is not None else None
        if comparison is None or entry[1] is not None or entry[2] is not None or entry[4] != PLAIN:
            flush()
            out.append(entry)
            continue
        if comparisons and comparisons[0][:2] != comparison[:2]:
            flush()
        run.append(entry)
        comparisons.append(comparison)
    flush()
    return out


class Index:
    """Rules sorted into hash tables by what is literal in their globs."""

    def __init__(
        self, rules: tuple[PolicyRule, ...], fold: Callable[[str], str] | None = None
    ) -> None:
        exact: dict[tuple[str, str], list[Entry]] = {}
        by_type: dict[str, list[Entry]] = {}
        by_target: dict[str, list[Entry]] = {}
        type_prefixes: dict[int, dict[str, list[Entry]]] = {}
        target_prefixes: dict[int, dict[str, list[Entry]]] = {}
        always: list[Entry] = []
        for pos, rule in enumerate(rules):
            kind, target = rule.match_type, rule.match_target
            if fold is not None:  # match_case: insensitive: both sides folded alike
                kind, target = fold(kind), fold(target)
            compiled = rule._compiled_conditions
            check = compiled.check if compiled is not None else None
            clock = CLOCK if compiled is not None and compiled.needs_clock else PLAIN
            limits = rule._rule_limits
            if limits is not None and limits.flows:
                check, clock = _with_flow(check, limits.flow_check()), FLOW
            template = decision_template(
                rule.risk_level,
                rule.approval,
                rule.name,
                approvers=rule.approvers,
                reviewers=rule.reviewers,
                approval_ttl=rule.approval_ttl,
            )
            type_prefix, target_prefix = literal_prefix(kind), literal_prefix(target)
            if is_literal(kind) and is_literal(target):
                entry: Entry = (pos, None, None, check, clock, template)
                exact.setdefault((kind, target), []).append(entry)
            elif is_literal(kind):
                entry = (pos, None, matcher(target), check, clock, template)
                by_type.setdefault(kind, []).append(entry)
            elif is_literal(target):
                entry = (pos, matcher(kind), None, check, clock, template)
                by_target.setdefault(target, []).append(entry)
            elif type_prefix is not None:
                entry = (pos, None, matcher(target), check, clock, template)
                table = type_prefixes.setdefault(len(type_prefix), {})
                table.setdefault(type_prefix, []).append(entry)
            elif target_prefix is not None:
                entry = (pos, matcher(kind), None, check, clock, template)
                table = target_prefixes.setdefault(len(target_prefix), {})
                table.setdefault(target_prefix, []).append(entry)
            else:
                always.append((pos, matcher(kind), matcher(target), check, clock, template))
        self.exact = _freeze_table(exact, rules)
        self.by_type = _freeze_table(by_type, rules)
        self.by_target = _freeze_table(by_target, rules)
        self.type_prefixes = tuple(
            (n, _freeze_table(t, rules)) for n, t in sorted(type_prefixes.items())
        )
        self.target_prefixes = tuple(
            (n, _freeze_table(t, rules)) for n, t in sorted(target_prefixes.items())
        )
        self.always: Bucket = tuple(_with_runs(always, rules))


def _with_flow(
    check: Callable[..., Any] | None, flow: Callable[[Any, Any], bool]
) -> Callable[..., bool]:
    """A FLOW entry's check: the rule's conditions and its flow conditions, all must hold."""

    def both(params: Mapping[str, Any], now: Any, history: Any) -> bool:
        if check is None:
            return flow(history, now)
        try:
            held = check(params, now)
        except Unevaluable:
            # Kleene AND, as for other conditions: a false one decides
            if not flow(history, now):
                return False
            raise
        return bool(held) and flow(history, now)

    return both


_K = TypeVar("_K")


def _freeze_table(table: dict[_K, list[Entry]], rules: tuple[PolicyRule, ...]) -> dict[_K, Bucket]:
    return {key: tuple(_with_runs(bucket, rules)) for key, bucket in table.items()}
