"""Regular expressions that take linear time, whatever string an agent sends.

``param_matches`` runs a policy author's pattern on a string an agent
wrote. Python's ``re`` backtracks: ``(a+)+$`` on 30 characters takes
seconds and stalls the event loop. Here a pattern is parsed once, with
Python's own parser (so the syntax and meaning are Python's), and then run
by an engine whose time is linear in the text:

- **RE2** (``pip install "aegis-runtime[re2]"``), when installed and when
  the pattern translates to RE2 exactly: fast, compiled C++;
- otherwise a small **Thompson NFA** simulation written here, which keeps
  every possible match position at once instead of backtracking: time
  proportional to the text's length times the pattern's size.

What no linear-time engine can run is refused when the policy loads, with a
reason: backreferences, lookahead and lookbehind, conditional groups,
atomic groups and possessive repeats, a repeat count over 1,000, or a
pattern too large to run without RE2.

Semantics are Python's, with one approximation: case-insensitive matching
compares Unicode case-folded characters.
"""

from __future__ import annotations

import array
import importlib
import re
import sys
from collections.abc import Callable
from functools import cache
from typing import Any, Final

# The parser of the standard library's own ``re``: private, but it is the
# definition of the syntax we promise, and stable across 3.11+.
_parser: Any = importlib.import_module("re._parser")
C: Any = importlib.import_module("re._constants")

__all__ = ["MAX_REPEAT", "RegexError", "compile_search", "load_re2"]

#: the largest repeat count a pattern may use (RE2's own limit)
MAX_REPEAT: Final = 1_000
#: the most NFA instructions a pattern may compile to when RE2 cannot run it
MAX_PROGRAM: Final = 20_000

Search = Callable[[str], bool]


class RegexError(ValueError):
    """A pattern cannot be run in linear time, or is not a valid pattern."""


def load_re2() -> Any:
    """The ``re2`` module of google-re2, or ``None`` when it is not installed."""
    try:
        import re2  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415  # optional
    except ImportError:
        return None
    return re2


_UNSUPPORTED: Final = {
    C.GROUPREF: "a backreference (\\1, (?P=name))",
    C.GROUPREF_EXISTS: "a conditional group (?(1)...)",
    C.ASSERT: "a lookahead or lookbehind (?=...), (?<=...)",
    C.ASSERT_NOT: "a negative lookahead or lookbehind (?!...), (?<!...)",
    C.ATOMIC_GROUP: "an atomic group (?>...)",
    C.POSSESSIVE_REPEAT: "a possessive repeat (*+, ++, ?+)",
}


def _parse(pattern: str) -> Any:
    try:
        tree = _parser.parse(pattern, 0)
    except re.error as exc:
        raise RegexError(f"{exc.msg} at position {exc.pos}") from exc
    except OverflowError as exc:
        raise RegexError(f"a repeat count is absurdly large (at most {MAX_REPEAT})") from exc
    except RecursionError as exc:
        raise RegexError("the pattern is nested too deeply") from exc
    return tree


def _check(items: Any) -> None:
    """Refuse what no linear-time engine runs; walk without recursion limits."""
    stack = [items]
    while stack:
        for op, av in stack.pop():
            if op in _UNSUPPORTED:
                raise RegexError(
                    f"it uses {_UNSUPPORTED[op]}, which cannot run in linear time;"
                    " rewrite the pattern without it"
                )
            if op in (C.MAX_REPEAT, C.MIN_REPEAT):
                low, high, body = av
                for count in (low, high):
                    if count is not C.MAXREPEAT and count > MAX_REPEAT:
                        raise RegexError(f"a repeat count of {count} is over {MAX_REPEAT}")
                stack.append(body)
            elif op is C.SUBPATTERN:
                stack.append(av[3])
            elif op is C.BRANCH:
                stack.extend(av[1])


# -- the NFA ---------------------------------------------------------------------

_CHAR, _SPLIT, _JMP, _ASSERT, _MATCH = range(5)


def _is_word(ch: str, ascii_only: bool) -> bool:
    if ascii_only:
        return ch.isascii() and (ch.isalnum() or ch == "_")
    return ch.isalnum() or ch == "_"


def _category(code: Any, ascii_only: bool) -> Callable[[str], bool]:
    if code in (C.CATEGORY_DIGIT, C.CATEGORY_NOT_DIGIT):
        test = (lambda ch: "0" <= ch <= "9") if ascii_only else str.isdecimal
    elif code in (C.CATEGORY_SPACE, C.CATEGORY_NOT_SPACE):
        test = (lambda ch: ch in " \t\n\r\f\v") if ascii_only else str.isspace
    elif code in (C.CATEGORY_WORD, C.CATEGORY_NOT_WORD):

        def test(ch: str) -> bool:
            return _is_word(ch, ascii_only)

    else:  # pragma: no cover  # the LINEBREAK categories exist for bytes only
        raise RegexError(f"unsupported character category {code}")
    if code in (C.CATEGORY_NOT_DIGIT, C.CATEGORY_NOT_SPACE, C.CATEGORY_NOT_WORD):
        return lambda ch: not test(ch)
    return test


def _char_class(items: Any, flags: int) -> Callable[[str], bool]:
    ascii_only = bool(flags & C.SRE_FLAG_ASCII)
    negate = False
    chars: set[str] = set()
    ranges: list[tuple[str, str]] = []
    tests: list[Callable[[str], bool]] = []
    for op, av in items:
        if op is C.NEGATE:
            negate = True
        elif op is C.LITERAL:
            chars.add(chr(av))
        elif op is C.RANGE:
            ranges.append((chr(av[0]), chr(av[1])))
        elif op is C.CATEGORY:
            tests.append(_category(av, ascii_only))
        else:  # pragma: no cover  # the parser puts nothing else in a class
            raise RegexError(f"unsupported item in a character class: {op}")
    if flags & C.SRE_FLAG_IGNORECASE:
        chars |= {c.casefold() for c in chars}

    def member(ch: str) -> bool:
        return (
            ch in chars
            or any(low <= ch <= high for low, high in ranges)
            or any(test(ch) for test in tests)
        )

    if flags & C.SRE_FLAG_IGNORECASE:

        def test_any_case(ch: str) -> bool:
            return any(member(c) for c in {ch, ch.casefold(), ch.lower(), ch.upper()})

        return (lambda ch: not test_any_case(ch)) if negate else test_any_case
    return (lambda ch: not member(ch)) if negate else member


def _literal(code: int, flags: int) -> Callable[[str], bool]:
    char = chr(code)
    if flags & C.SRE_FLAG_IGNORECASE:
        folded = char.casefold()
        return lambda ch: ch == char or ch.casefold() == folded
    return char.__eq__


#: an anchor's test, given the characters around the position (``None``
#: past either end) and whether the next character is the text's last
Anchor = Callable[[str | None, str | None, bool], bool]


def _anchor(code: Any, flags: int) -> Anchor:
    multiline = bool(flags & C.SRE_FLAG_MULTILINE)
    ascii_only = bool(flags & C.SRE_FLAG_ASCII)
    if code is C.AT_BEGINNING_STRING or (code is C.AT_BEGINNING and not multiline):
        return lambda prev, cur, last: prev is None
    if code is C.AT_BEGINNING:
        return lambda prev, cur, last: prev is None or prev == "\n"
    if code is C.AT_END_STRING:
        return lambda prev, cur, last: cur is None
    if code is C.AT_END and multiline:
        return lambda prev, cur, last: cur is None or cur == "\n"
    if code is C.AT_END:
        return lambda prev, cur, last: cur is None or (last and cur == "\n")

    def boundary(prev: str | None, cur: str | None, last: bool) -> bool:
        before = prev is not None and _is_word(prev, ascii_only)
        after = cur is not None and _is_word(cur, ascii_only)
        return before != after

    if code is C.AT_BOUNDARY:
        return boundary
    if code is C.AT_NON_BOUNDARY:  # never in an empty text, as in Python's re
        return lambda prev, cur, last: (
            not (prev is None and cur is None) and not boundary(prev, cur, last)
        )
    raise RegexError(f"unsupported anchor {code}")  # pragma: no cover


#: the most cached transitions per pattern; the cache is emptied when full
_CACHE_LIMIT: Final = 10_000
_MATCHED: Final[frozenset[int]] = frozenset({-1})


class _Program:
    """A pattern compiled to NFA instructions, run by a Pike VM (no backtracking)."""

    def __init__(self, tree: Any) -> None:
        self.code: list[tuple[Any, ...]] = []
        self._emit(tree, tree.state.flags)
        self.code.append((_MATCH,))
        self._start = frozenset({0})
        # Without anchors a step depends only on the character read, so the
        # cache needs no neighbours in its keys and hits far more often.
        self._context = any(instruction[0] is _ASSERT for instruction in self.code)
        self._cache: dict[tuple[Any, ...], frozenset[int]] = {}

    def _add(self, instruction: tuple[Any, ...] | None) -> int:
        if len(self.code) >= MAX_PROGRAM:
            raise RegexError(
                f"the pattern is too large to run without RE2 (over {MAX_PROGRAM} steps);"
                ' install RE2 with: pip install "aegis-runtime[re2]", or simplify it'
            )
        self.code.append(instruction)  # type: ignore[arg-type]  # patched below
        return len(self.code) - 1

    def _emit(self, items: Any, flags: int) -> None:
        code = self.code
        for op, av in items:
            if op is C.LITERAL:
                self._add((_CHAR, _literal(av, flags)))
            elif op is C.NOT_LITERAL:
                same = _literal(av, flags)
                self._add((_CHAR, lambda ch, same=same: not same(ch)))
            elif op is C.ANY:
                dotall = flags & C.SRE_FLAG_DOTALL
                self._add((_CHAR, (lambda ch: True) if dotall else (lambda ch: ch != "\n")))
            elif op is C.IN:
                self._add((_CHAR, _char_class(av, flags)))
            elif op is C.AT:
                self._add((_ASSERT, _anchor(av, flags)))
            elif op is C.SUBPATTERN:
                _, add_flags, del_flags, body = av
                self._emit(body, (flags | add_flags) & ~del_flags)
            elif op is C.BRANCH:
                alternatives = av[1]
                jumps = []
                for alternative in alternatives[:-1]:
                    split = self._add(None)
                    self._emit(alternative, flags)
                    jumps.append(self._add(None))
                    code[split] = (_SPLIT, split + 1, len(code))
                self._emit(alternatives[-1], flags)
                for jump in jumps:
                    code[jump] = (_JMP, len(code))
            elif op in (C.MAX_REPEAT, C.MIN_REPEAT):
                low, high, body = av
                for _ in range(low):
                    self._emit(body, flags)
                if high is C.MAXREPEAT:
                    loop = self._add(None)
                    self._emit(body, flags)
                    self._add((_JMP, loop))
                    code[loop] = (_SPLIT, loop + 1, len(code))
                else:
                    splits = []
                    for _ in range(high - low):
                        splits.append(self._add(None))
                        self._emit(body, flags)
                    for split in splits:
                        code[split] = (_SPLIT, split + 1, len(code))
            else:  # _check refused everything else already
                raise RegexError(f"unsupported regular expression element {op}")

    def _closure(
        self, seeds: frozenset[int], prev: str | None, cur: str | None, last: bool
    ) -> tuple[list[int], bool]:
        """The character-consuming steps reachable from ``seeds`` here, and whether one matched."""
        code = self.code
        threads: list[int] = []
        seen: set[int] = set()
        stack = list(seeds)
        while stack:
            pc = stack.pop()
            if pc in seen:
                continue
            seen.add(pc)
            instruction = code[pc]
            kind = instruction[0]
            if kind is _CHAR:
                threads.append(pc)
            elif kind is _SPLIT:
                stack.append(instruction[2])
                stack.append(instruction[1])
            elif kind is _JMP:
                stack.append(instruction[1])
            elif kind is _ASSERT:
                if instruction[1](prev, cur, last):
                    stack.append(pc + 1)
            else:
                return threads, True  # _MATCH
        return threads, False

    def _step(
        self, seeds: frozenset[int], prev: str | None, cur: str, last: bool
    ) -> frozenset[int]:
        """The seeds after reading ``cur``, or :data:`_MATCHED`."""
        threads, matched = self._closure(seeds, prev, cur, last)
        if matched:
            return _MATCHED
        code = self.code
        following = {pc + 1 for pc in threads if code[pc][1](cur)}
        following.add(0)  # a match may also start at the next position
        return frozenset(following)

    def search(self, text: str) -> bool:
        """Whether the pattern matches anywhere in ``text``; linear in ``len(text)``.

        A lazy DFA: each (set of NFA states, characters around) seen is
        stepped once through the NFA and cached, so a repeated situation
        costs one dictionary look-up per character.
        """
        cache = self._cache
        context = self._context
        seeds = self._start
        prev: str | None = None
        end = len(text) - 1
        for index, cur in enumerate(text):
            last = index == end
            key = (seeds, prev, cur, last) if context else (seeds, cur)
            following = cache.get(key)
            if following is None:
                following = self._step(seeds, prev, cur, last)
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                cache[key] = following
            if following is _MATCHED:
                return True
            seeds, prev = following, cur
        return self._closure(seeds, prev, None, False)[1]


# -- RE2 -----------------------------------------------------------------------------


@cache
def _every_code_point() -> str:
    # Built as UTF-32 in one go: a join of a million chr() results is slow.
    points = array.array("I", range(sys.maxunicode + 1))
    points[0xD800:0xE000] = array.array("I", bytes(4 * 0x800))
    return points.tobytes().decode(f"utf-32-{sys.byteorder[0]}e")


@cache
def _ranges_of(category: str) -> str:
    """An RE2 class body of exactly the code points Python's ``re`` puts in ``category``.

    ``category`` is ``"\\d"``, ``"\\s"`` or ``"\\w"``; Python's own engine
    finds the runs, over a text holding every code point at its own index
    (surrogates, which no category holds, as NUL).
    """
    every = _every_code_point()
    parts = []
    for run in re.finditer(category + "+", every):
        start, end = run.start(), run.end() - 1
        parts.append(f"\\x{{{start:x}}}" + (f"-\\x{{{end:x}}}" if end > start else ""))
    return "".join(parts)


_POSITIVE: Final = {
    C.CATEGORY_DIGIT: C.CATEGORY_DIGIT,
    C.CATEGORY_NOT_DIGIT: C.CATEGORY_DIGIT,
    C.CATEGORY_SPACE: C.CATEGORY_SPACE,
    C.CATEGORY_NOT_SPACE: C.CATEGORY_SPACE,
    C.CATEGORY_WORD: C.CATEGORY_WORD,
    C.CATEGORY_NOT_WORD: C.CATEGORY_WORD,
}


def _category_body(code: Any, ascii_only: bool) -> str:
    positive = _POSITIVE[code]
    if ascii_only:
        return {
            C.CATEGORY_DIGIT: "0-9",
            C.CATEGORY_SPACE: "\\t\\n\\x0b\\f\\r ",
            C.CATEGORY_WORD: "0-9A-Za-z_",
        }[positive]
    # Exactly the code points Python's own engine accepts, so that RE2's
    # Unicode tables can never disagree with the ``re`` semantics we promise.
    return _ranges_of(
        {C.CATEGORY_DIGIT: "\\d", C.CATEGORY_SPACE: "\\s", C.CATEGORY_WORD: "\\w"}[positive]
    )


def _hex(code: int) -> str | None:
    return None if 0xD800 <= code <= 0xDFFF else f"\\x{{{code:x}}}"


def _class_to_re2(items: Any, flags: int) -> str | None:
    negate = any(op is C.NEGATE for op, _ in items)
    negated = [
        v for op, v in items if op is C.CATEGORY and v in _POSITIVE and v is not _POSITIVE[v]
    ]
    if negated:
        if len(items) != 1:
            return None  # [^\D...] and friends: left to the NFA
        negate, items = True, [(C.CATEGORY, _POSITIVE[negated[0]])]
    body = []
    for op, v in items:
        if op is C.LITERAL:
            text = _hex(v)
            if text is None:
                return None
            body.append(text)
        elif op is C.RANGE:
            low, high = _hex(v[0]), _hex(v[1])
            if low is None or high is None:
                return None
            body.append(f"{low}-{high}")
        elif op is C.CATEGORY:
            body.append(_category_body(v, bool(flags & C.SRE_FLAG_ASCII)))
    if not body:
        return None
    return ("[^" if negate else "[") + "".join(body) + "]"


def _anchor_to_re2(code: Any, flags: int, tail: bool) -> str | None:
    multiline = flags & C.SRE_FLAG_MULTILINE
    if code is C.AT_BEGINNING_STRING or (code is C.AT_BEGINNING and not multiline):
        return "\\A"
    if code is C.AT_BEGINNING:
        return "(?m:^)"
    if code is C.AT_END_STRING:
        return "\\z"
    if code is C.AT_END and multiline:
        return "(?m:$)"
    if code is C.AT_END:
        # "The end, or before a final newline": RE2 has no such anchor, but
        # consuming that newline gives the same answer where nothing follows.
        return "(?:\\n?\\z)" if tail else None
    if code is C.AT_BOUNDARY and flags & C.SRE_FLAG_ASCII:
        return "\\b"  # between ASCII word and non-word bytes: Python's places exactly
    # A Unicode \b (RE2's is ASCII-only), and \B, which RE2 also finds between
    # the bytes of one character: both are left to the NFA.
    return None


def _to_re2(items: Any, flags: int, tail: bool = True) -> str | None:  # None where RE2 differs
    """``items`` in RE2 syntax with Python's meaning; ``None`` where that is impossible."""
    out: list[str | None] = []
    items = list(items)
    for index, (op, av) in enumerate(items):
        at_tail = tail and index == len(items) - 1  # nothing of the pattern follows
        if op is C.LITERAL or op is C.NOT_LITERAL:
            text = _hex(av)
            if text is None:
                return None
            out.append(text if op is C.LITERAL else f"[^{text}]")
        elif op is C.ANY:
            out.append("(?s:.)" if flags & C.SRE_FLAG_DOTALL else "[^\\n]")
        elif op is C.IN:
            out.append(_class_to_re2(av, flags))
        elif op is C.AT:
            out.append(_anchor_to_re2(av, flags, at_tail))
        elif op is C.SUBPATTERN:
            inner = _to_re2(av[3], (flags | av[1]) & ~av[2], at_tail)
            out.append(None if inner is None else f"(?:{inner})")
        elif op is C.BRANCH:
            branches = [_to_re2(alternative, flags, at_tail) for alternative in av[1]]
            if any(branch is None for branch in branches):
                return None
            out.append("(?:" + "|".join(branches) + ")")  # type: ignore[arg-type]
        elif op in (C.MAX_REPEAT, C.MIN_REPEAT):
            low, high, body = av
            inner = _to_re2(body, flags, tail=False)
            count = f"{{{low},}}" if high is C.MAXREPEAT else f"{{{low},{high}}}"
            out.append(None if inner is None else f"(?:{inner}){count}")
        else:
            return None
        if out[-1] is None:
            return None
    return "".join(out)  # type: ignore[arg-type]  # no None is left


def _uses_ignorecase(tree: Any) -> bool:
    if tree.state.flags & C.SRE_FLAG_IGNORECASE:
        return True
    stack = [list(tree)]
    while stack:
        for op, av in stack.pop():
            if op is C.SUBPATTERN:
                if av[1] & C.SRE_FLAG_IGNORECASE:
                    return True
                stack.append(av[3])
            elif op is C.BRANCH:
                stack.extend(av[1])
            elif op in (C.MAX_REPEAT, C.MIN_REPEAT):
                stack.append(av[2])
    return False


def compile_search(pattern: str, *, re2: Any = None, use_re2: bool = True) -> Search:
    """A linear-time ``search(text) -> bool`` for the Python regular expression ``pattern``.

    RE2 (the ``re2`` module given, or found when ``use_re2`` is true and it
    is not given) runs the patterns it can run with exactly Python's
    meaning; the built-in NFA runs the rest, and any text RE2 cannot take
    (one with a lone surrogate).

    Raises:
        RegexError: the pattern is invalid or cannot run in linear time; the
            message says why and what to do.
    """
    tree = _parse(pattern)
    _check(tree)
    if re2 is None and use_re2:
        re2 = _RE2
    translated = None
    if re2 is not None and not _uses_ignorecase(tree):
        translated = _to_re2(tree, tree.state.flags)
    if translated is None:
        return _Program(tree).search
    try:
        compiled = re2.compile(translated)
    except re2.error as exc:
        raise RegexError(f"RE2 cannot run it: {exc}") from exc
    fast = compiled.search
    fallback: list[Search] = []

    def search(text: str) -> bool:
        try:
            return fast(text) is not None
        except UnicodeEncodeError:  # a lone surrogate: RE2 takes UTF-8 only
            if not fallback:
                fallback.append(_Program(tree).search)
            return fallback[0](text)

    return search


_RE2: Any = load_re2()
