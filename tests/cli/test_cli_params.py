"""Parsing actions and times from the command line and from JSONL files."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta, timezone

import pytest

from aegis.cli._params import parse_action, parse_actions_jsonl, parse_datetime
from aegis.core.action import Action


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("read:crm", Action("read", "crm")),
        ("read:crm:", Action("read", "crm")),
        (' refund : stripe :{"amount": 5}', Action("refund", "stripe", {"amount": 5})),
        (
            'call:api:{"url": "https://x.io:8443/a"}',
            Action("call", "api", {"url": "https://x.io:8443/a"}),
        ),
        ('x:y:{"nested": {"a": [1, 2]}}', Action("x", "y", {"nested": {"a": [1, 2]}})),
        ("read:https://x.com/a", Action("read", "https://x.com/a")),
        ("read:https://x.com/a:", Action("read", "https://x.com/a")),
        ('read:https://x.com:8443/a:{"q": 1}', Action("read", "https://x.com:8443/a", {"q": 1})),
        ("connect:db:5432", Action("connect", "db:5432")),
        ("read:crm: ", Action("read", "crm")),
        ("read:http://x?a=b", Action("read", "http://x?a=b")),
    ],
)
def test_parse_action_accepts(text: str, expected: Action) -> None:
    """Params start at the first colon followed by "{"; any other colon belongs to the target."""
    assert parse_action(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("read", "write it as type:target"),
        (":crm", "empty type or target"),
        ("read:", "empty type or target"),
        ("read:crm:{bad", "not valid JSON"),
        ("read:crm:[1, 2]", "must be a JSON object"),
        ('read:crm:"x"', "must be a JSON object"),
        ("refund:stripe:amount=900", "must be a JSON object"),
        ('read:crm:{"a": 1} trailing', "not valid JSON"),
        ('refund:s:{"amount": NaN}', "NaN is not a JSON number"),
        ('refund:s:{"amount": Infinity}', "Infinity is not a JSON number"),
        ('refund:s:{"amount": [-Infinity]}', "-Infinity is not a JSON number"),
        ('refund:s:{"amount": 1e999}', "1e999 is too large for a number"),
        ('refund:s:{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
        ('refund:s:{"a": ' + "9" * 5000 + "}", "too many digits"),
    ],
    ids=lambda value: value[:40],
)
def test_parse_action_rejects(text: str, message: str) -> None:
    """Malformed actions raise ValueError saying what is wrong."""
    with pytest.raises(ValueError, match=message):
        parse_action(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "2026-11-24T23:00+01:00",
            datetime(2026, 11, 24, 23, 0, tzinfo=timezone(timedelta(hours=1))),
        ),
        ("2026-11-24T22:00Z", datetime(2026, 11, 24, 22, 0, tzinfo=UTC)),
        ("2026-11-24 22:00", datetime(2026, 11, 24, 22, 0, tzinfo=UTC)),
        ("2026-11-24", datetime(2026, 11, 24, tzinfo=UTC)),
    ],
)
def test_parse_datetime(text: str, expected: datetime) -> None:
    """ISO times parse to aware datetimes; no offset means UTC."""
    assert parse_datetime(text) == expected


def test_parse_action_error_quotes_a_long_action_shortened() -> None:
    """An error message quotes at most 80 characters of what was typed."""
    expected = r"^the params of 'refund:s:\{\"a\": \[\[\[+\.\.\.' "
    with pytest.raises(ValueError, match=expected) as caught:
        parse_action('refund:s:{"a": ' + "[" * 10_000 + "}")
    assert len(str(caught.value)) < 200


def test_parse_datetime_out_of_range() -> None:
    """A time with no UTC equivalent (year 1 east of Greenwich) raises ValueError."""
    with pytest.raises(ValueError, match="out of range"):
        parse_datetime("0001-01-01T00:00+05:00")


def test_parse_datetime_rejects_nonsense() -> None:
    """A time that is not ISO 8601 raises ValueError with an example."""
    with pytest.raises(ValueError, match="2026-11-24T23:00"):
        parse_datetime("tomorrow")


def test_jsonl_yields_actions_and_skips_blank_lines() -> None:
    """Each non-blank JSONL line becomes one Action, with params and description."""
    stream = io.StringIO(
        '{"type": "read", "target": "crm"}\n'
        "\n"
        '{"type": "refund", "target": "stripe", "params": {"amount": 9}, "description": "d"}\n'
    )
    assert list(parse_actions_jsonl(stream, "plan.jsonl")) == [
        Action("read", "crm"),
        Action("refund", "stripe", {"amount": 9}, "d"),
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "plan.jsonl:2: not valid JSON"),
        ("[1]", "plan.jsonl:2: expected a JSON object"),
        ('{"type": "read"}', "plan.jsonl:2: 'target' is required"),
        ('{"type": "read", "target": "x", "parms": {}}', "plan.jsonl:2: unknown key 'parms'"),
        ('{"type": "read", "target": "x", "params": [1]}', "plan.jsonl:2: 'params' must be"),
        ('{"type": "read", "target": "x", "description": 3}', "plan.jsonl:2: 'description'"),
        ('{"type": "read", "target": "x", "params": {"n": NaN}}', "plan.jsonl:2: NaN is not"),
        ('{"type": "read", "target": "x", "params": {"n": -Infinity}}', "plan.jsonl:2: -Inf"),
        ('{"type": "read", "target": "x", "params": {"n": 1e400}}', "plan.jsonl:2: 1e400 is"),
    ],
)
def test_jsonl_errors_name_the_line(line: str, message: str) -> None:
    """A bad JSONL line raises ValueError naming file:line and the problem."""
    stream = io.StringIO('{"type": "read", "target": "crm"}\n' + line + "\n")
    with pytest.raises(ValueError, match=message):
        list(parse_actions_jsonl(stream, "plan.jsonl"))


def test_jsonl_binary_stream_is_not_utf8() -> None:
    """A file that is not UTF-8 raises ValueError naming it, not a UnicodeDecodeError."""
    stream = io.TextIOWrapper(io.BytesIO(b"\xff\xfe\x00\x81binary"), encoding="utf-8")
    with pytest.raises(ValueError, match=r"^plan.jsonl: not UTF-8 text") as caught:
        list(parse_actions_jsonl(stream, "plan.jsonl"))
    assert not isinstance(caught.value, UnicodeDecodeError)
