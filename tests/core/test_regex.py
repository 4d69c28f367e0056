"""param_matches in linear time: RE2 when installed, else the built-in NFA; Python's meaning."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aegis.core._regex import RegexError, compile_search, load_re2
from aegis.core.action import Action
from aegis.core.decision import Approval
from aegis.core.policy import Policy, PolicyRule
from aegis.errors import PolicyError

RE2 = load_re2()
ENGINES = {"re2": {"re2": RE2}, "nfa": {"use_re2": False}}

PATTERNS = [
    r"a+b",
    r"^rm -rf .*",
    r"(a+)+$",
    r"\d{3}-\d{4}",
    r"[^\W_]+",
    r"\bfoo\b",
    r"(?i)SeCrEt",
    r"^(?:x|y)*z$",
    r"a$",
    r"(?m)^b$",
    r"\s+",
    r"[\D]",
    r"\Aab\Z",
    r"(?s)a.b",
    r"a.b",
    r"[a-c]{2,3}?d",
    r"\w+@\w+\.com",
    r"(?a)\w+\b",
    r"x|",
    r"()*a",
    r"[^a-z\s]",
    r"(?s)$.[^a]*",  # "$" with more after it: RE2 cannot say "before a final newline"
    r"$\s\Z",
    r"(?a)\B\d*",  # RE2 finds \B between the two bytes of "É"
    r"[ab]?$^",
]
TEXTS = [
    "",
    "aab",
    "rm -rf /",
    "aaaaaaaaaaaab",
    "555-1234",
    "٣٤٥-١٢٣٤",
    "a foo b",
    "SECRET",
    "xyxyz",
    "xyxyz\n",
    "a\n",
    "q\nb\nc",
    " \u3000",
    "ab",
    "a\nb",
    "abcd",
    "bob@x.com",
    "ünï_ß",
    "\ud800a",
    "a1\n",
    "1Ébé1éb",
    "\n",
]


def test_re2_is_installed_for_the_test_run() -> None:
    """CI installs every extra, so the RE2 path is really exercised here."""
    assert RE2 is not None


@pytest.mark.parametrize("engine", sorted(ENGINES))
@pytest.mark.parametrize("pattern", PATTERNS)
def test_both_engines_agree_with_python(engine: str, pattern: str) -> None:
    """Each engine decides exactly as Python's re.search on a table of tricky texts."""
    search = compile_search(pattern, **ENGINES[engine])
    for text in TEXTS:
        assert search(text) is (re.search(pattern, text) is not None), (pattern, text)


@settings(max_examples=150, deadline=None)
@given(
    pattern=st.from_regex(
        r"\A(?:\(\?[ams]\))?"
        r"(?:[ab.]|\[ab\]|\(a\|b\)|[*+?]|\{1,2\}|\^|\$|\\[bBAZdws]){1,6}\Z"
    ),
    text=st.text(alphabet="ab \n1\u00e9\u00c9_", max_size=8),
)
def test_the_nfa_agrees_with_python_on_random_patterns(pattern: str, text: str) -> None:
    """On random small patterns the NFA (and RE2 when it runs them) agree with Python's re."""
    try:
        expected = re.search(pattern, text) is not None
    except re.error:
        return
    if re.search(r"[*+?}]\+", pattern):  # a possessive repeat (a++): refused on purpose
        with pytest.raises(RegexError, match="possessive"):
            compile_search(pattern, use_re2=False)
        return
    assert compile_search(pattern, use_re2=False)(text) is expected
    assert compile_search(pattern, re2=RE2)(text) is expected


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_catastrophic_patterns_finish_fast(engine: str) -> None:
    """(a+)+$ on an agent's 5,000 a's and a '!' ends in well under a second (re: 2**5000)."""
    search = compile_search(r"(a+)+$", **ENGINES[engine])
    started = time.perf_counter()
    assert search("a" * 5000 + "!") is False
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        (r"(a)\1", "backreference"),
        (r"(?=x)", "lookahead"),
        (r"(?<!x)y", "negative lookahead"),
        (r"(?>a)", "atomic group"),
        (r"a*+", "possessive"),
        (r"(a)?(?(1)b|c)", "conditional"),
        (r"a{5000}", "over 1000"),
        (r"a{99999999999999999999}", "absurdly large"),
        (r"((((", "missing \\)"),
    ],
)
def test_patterns_no_linear_engine_runs_are_refused(pattern: str, message: str) -> None:
    """What cannot run in linear time is a RegexError saying why, never an OverflowError."""
    with pytest.raises(RegexError, match=message):
        compile_search(pattern)


def test_an_absurd_repeat_count_is_a_policy_error() -> None:
    """A rule with a{99999999999999999999} fails to load with a PolicyError naming the rule."""
    with pytest.raises(PolicyError, match=r"rule 'r'.*absurdly large"):
        PolicyRule(name="r", conditions={"param_matches": {"q": "a{99999999999999999999}"}})


def test_a_block_rule_with_a_regex_stays_fast_on_hostile_params() -> None:
    """A policy evaluating a catastrophic pattern on a 27-character param answers at once."""
    policy = Policy(
        [
            PolicyRule(
                "post",
                "*",
                "high",
                "block",
                "nested",
                {"param_matches": {"body": r"^(\w+\s?)*$"}},
            ),
            PolicyRule("post", "*", "low", "auto", "rest"),
        ]
    )
    started = time.perf_counter()
    decision = policy.evaluate(Action("post", "forum", {"body": "a" * 26 + "!"}))
    assert time.perf_counter() - started < 1.0
    assert decision.approval is Approval.AUTO


def test_without_re2_the_nfa_runs_and_oversized_patterns_say_to_install_it() -> None:
    """In a process where google-re2 cannot be imported, patterns still run in linear time.

    A pattern too large for the built-in engine is refused at load with a
    PolicyError that says to install aegis-runtime[re2].
    """
    script = textwrap.dedent(
        """
        import sys, time
        sys.modules["re2"] = None  # import re2 now raises ImportError
        from aegis.core._regex import _RE2
        from aegis import Action, Policy, PolicyRule, PolicyError
        assert _RE2 is None, "re2 was imported"
        rule = PolicyRule("post", "*", "high", "block", "r",
                          {"param_matches": {"body": r"(a+)+$"}})
        policy = Policy([rule], default_approval="auto")
        started = time.perf_counter()
        print(policy.evaluate(Action("post", "x", {"body": "a" * 3000 + "!"})).approval.value)
        print(policy.evaluate(Action("post", "x", {"body": "aaa"})).approval.value)
        assert time.perf_counter() - started < 2
        try:
            PolicyRule(name="big", conditions={"param_matches": {"q": "(a{1000}){1000}"}})
        except PolicyError as exc:
            print(exc)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    ).stdout.splitlines()
    assert out[:2] == ["auto", "block"]
    assert "rule 'big'" in out[2]
    assert 'pip install "aegis-runtime[re2]"' in out[2]
