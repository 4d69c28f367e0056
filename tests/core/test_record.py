"""The pure audit record, chain and filters: no database involved."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aegis.core.action import Action, canonical_json
from aegis.core.chain import (
    EMPTY_HEAD,
    GENESIS_HASH,
    Head,
    hash_pieces,
    record_hash,
    seal,
    seal_pieces,
    verify_chain,
)
from aegis.core.decision import Approval, PolicyDecision
from aegis.core.filters import Filters
from aegis.core.record import (
    AuditRecord,
    check_context,
    export_line,
    final_draft,
    from_dict,
    isoformat,
    start_draft,
    storable_json,
    to_dict,
)
from aegis.core.result import Result, ResultStatus
from aegis.core.risk import RiskLevel
from aegis.errors import ConfigurationError


def chain(count: int) -> list[AuditRecord]:
    """``count`` sealed final records."""
    out: list[AuditRecord] = []
    prev = GENESIS_HASH
    for n in range(1, count + 1):
        d = PolicyDecision(Action("read", "crm", {"n": n}), RiskLevel.LOW, Approval.AUTO, "r")
        record = seal(final_draft("s", d, Result(d.action, ResultStatus.SUCCESS)), n, prev)
        prev = record.hash
        out.append(record)
    return out


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"big": 10**5000, "n": 1}, {"big": f"<unstorable int: {hex(10**5000)}>", "n": 1}),
        ({"s": "a\ud800b"}, {"s": "<unstorable str: 'a\\ud800b'>"}),
        ({"x": float("nan"), "y": [float("inf")]}, {"x": "nan", "y": ["inf"]}),
        ({"\udcff": 1}, {"<unstorable str: '\\udcff'>": 1}),
    ],
    ids=["huge-int", "surrogate", "non-finite", "surrogate-key"],
)
def test_storable_json_marks_what_cannot_be_stored_and_keeps_the_rest(
    value: Any, expected: Any
) -> None:
    """Parts that cannot be stored become marker text; the text is valid UTF-8 JSON."""
    text = storable_json(value)
    text.encode("utf-8")
    assert json.loads(text) == expected


@settings(max_examples=100)
@given(st.dictionaries(st.text(), st.integers() | st.text() | st.none(), max_size=5))
def test_a_record_survives_to_dict_from_dict_and_export(params: dict[str, Any]) -> None:
    """A sealed record goes to its public form, to an export line and back, hash intact."""
    d = PolicyDecision(Action("read", "crm", params), RiskLevel.LOW, Approval.AUTO, "r")
    record = seal(start_draft("s", d), 1, GENESIS_HASH)
    assert from_dict(to_dict(record)) == record
    assert from_dict(json.loads(export_line(record))) == record
    assert verify_chain([from_dict(json.loads(export_line(record)))]).ok


@pytest.mark.parametrize(
    "context",
    [{"a": 1, "b": "x", "c": None, "d": True, "e": 1.5}, {}, None],
)
def test_check_context_accepts_json_scalars(context: dict[str, Any] | None) -> None:
    """A mapping of str to JSON scalars is accepted; an empty one means no context."""
    assert check_context(context) == (context or None)


def test_check_context_refuses_a_str_subclass_value() -> None:
    """A str subclass could print differently later: it is refused, naming the key."""

    class Sneaky(str):
        pass

    with pytest.raises(ConfigurationError, match="'who'"):
        check_context({"who": Sneaky("alice")})


@pytest.mark.parametrize("text", ["", "12", "x:" + "0" * 64, "1:" + "g" * 64, "-1:" + "0" * 64])
def test_a_malformed_head_is_refused(text: str) -> None:
    """Head.parse refuses text that no head prints."""
    with pytest.raises(ValueError, match="expected_head"):
        Head.parse(text)


def test_a_head_round_trips_through_its_text() -> None:
    """str(head) parses back to the same head."""
    head = Head(42, "ab" * 32)
    assert Head.parse(str(head)) == head
    assert str(EMPTY_HEAD) == f"0:{GENESIS_HASH}"


def test_verify_chain_streams_and_names_the_first_bad_record() -> None:
    """An edited record in the middle is reported by id; the records before it count."""
    records = chain(5)
    records[2] = records[2]._replace(action_target="elsewhere")
    report = verify_chain(iter(records))
    assert (report.ok, report.checked, report.first_bad_id) == (False, 2, 3)


def test_verify_chain_reports_a_record_with_a_wrong_type_instead_of_crashing() -> None:
    """A hand edit that put a number or bytes where text belongs is a misfit, not a crash."""
    records = chain(3)
    records[1] = records[1]._replace(action_params=b"\x00", session_id=7)  # type: ignore[arg-type]  # a hand edit
    report = verify_chain(records)
    assert (report.ok, report.first_bad_id) == (False, 2)


def test_filters_match_typed_records_and_dicts_alike() -> None:
    """Filters.matches gives the same answer for a record and its public form."""
    [record] = chain(1)
    for filters in (Filters.of("s"), Filters.of("t"), Filters.of(result_status="success")):
        assert filters.matches(record) == filters.matches(to_dict(record))


def test_filters_refuse_an_unknown_view() -> None:
    """A view other than actions or records is a ValueError."""
    with pytest.raises(ValueError, match="view"):
        Filters.of(view="everything")  # type: ignore[arg-type]  # the point of the test


@settings(max_examples=100)
@given(
    params=st.dictionaries(st.text(), st.integers() | st.text() | st.none(), max_size=4),
    data=st.none() | st.text() | st.lists(st.integers(), max_size=3),
    human=st.none() | st.text(),
    context=st.none() | st.dictionaries(st.text(min_size=1), st.integers(), max_size=2),
)
def test_a_final_from_the_start_equals_a_final_from_scratch(
    params: dict[str, Any], data: Any, human: str | None, context: dict[str, int] | None
) -> None:
    """finish_draft reuses the start's encoding and gives exactly what final_draft gives."""
    from aegis.core.record import DecisionStamp, finish_draft

    d = PolicyDecision(Action("pay", "bank", params), RiskLevel.HIGH, Approval.APPROVE, "r")
    stamp = DecisionStamp("2024-01-01T00:00:00.000000+00:00", "ab" * 32, context or None)
    result = Result(d.action, ResultStatus.SUCCESS, data=data)
    start = start_draft("s", d, human_decision=human, stamp=stamp)
    reused = finish_draft(start, 7, result, human_decision=human, timestamp="t")
    fresh = final_draft(
        "s", d, result, human_decision=human, stamp=stamp, start_id=7, timestamp="t"
    )
    assert reused == fresh


@given(
    st.datetimes(
        min_value=datetime(1900, 1, 1), max_value=datetime(2300, 1, 1), timezones=st.just(UTC)
    ),
    st.sampled_from([0, 1, 500_000, 999_999, None]),
)
def test_isoformat_matches_datetime_for_every_moment(moment: datetime, micro: int | None) -> None:
    """The cached per-second formatting gives exactly datetime's fixed-width text."""
    for each in (moment, moment if micro is None else moment.replace(microsecond=micro)):
        assert isoformat(each) == each.isoformat(timespec="microseconds")


def test_record_times_are_now_in_fixed_width() -> None:
    """A draft's timestamp lies between two clock readings taken around it, in the same form."""
    for _ in range(3):
        before = datetime.now(UTC).isoformat(timespec="microseconds")
        decision = PolicyDecision(Action("a", "b"), RiskLevel.LOW, Approval.AUTO, "r")
        draft = start_draft("s", decision)
        after = datetime.now(UTC).isoformat(timespec="microseconds")
        assert before <= draft.timestamp <= after
        assert len(draft.timestamp) == len(before)


_FLAT_VALUES = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",))), st.integers(), st.booleans(), st.none()
)


@given(st.dictionaries(st.text(st.characters(blacklist_categories=("Cs",))), _FLAT_VALUES))
def test_storable_json_of_flat_params_is_canonical_json(params: dict[str, Any]) -> None:
    """Flat params (the fast path) store exactly as json.dumps writes them canonically."""
    expected = json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert storable_json(Action("a", "b", params).params) == expected
    assert storable_json(params) == expected


@given(
    st.dictionaries(
        st.text(),
        st.text() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.none(),
        max_size=5,
    )
    | st.just({"big": 10**5000, "n": 1.5})
)
def test_params_store_the_same_just_after_their_canonical_json(params: dict[str, Any]) -> None:
    """The start record reuses the params' text canonical_json just wrote: it is what storing gives.

    Surrogates (not storable as UTF-8) and ints past the digit limit must
    not come through that way: the stored text is as for params never encoded.
    """
    action = Action("a", "b", params)
    fresh = storable_json(Action("a", "b", params).params)  # another object: encoded anew
    canonical_json(action)
    assert storable_json(action.params) == fresh
    fresh.encode("utf-8")


@given(
    st.sampled_from(["start", "final", "other", None]),
    st.one_of(st.none(), st.text(max_size=40)),
    st.one_of(st.none(), st.text(max_size=70)),
    st.one_of(st.none(), st.integers(min_value=1), st.booleans()),
)
def test_row_hash_equals_record_hash_for_runtime_shaped_records(
    kind: str | None, decided_at: str | None, digest: str | None, start_id: int | None
) -> None:
    """Records shaped as the runtime writes them (its fast path) hash as their public form."""
    decision = PolicyDecision(Action("read", "crm", {"n": 1}), RiskLevel.LOW, Approval.AUTO, "r")
    draft = start_draft("s", decision)._replace(
        kind=kind, decided_at=decided_at, policy_digest=digest, start_id=start_id
    )
    record = seal(draft, 3, GENESIS_HASH)
    assert record.hash == record_hash(to_dict(record))


_FIELD_TEXT = st.text(max_size=12) | st.sampled_from(['a"b', "a\\b", "\x7f", "é", "\ud800", "~ "])


@given(
    st.lists(_FIELD_TEXT, min_size=11, max_size=11),
    st.lists(st.none() | _FIELD_TEXT, min_size=5, max_size=5),
    st.sampled_from(["start", "final"]),
    st.none() | st.integers(min_value=1),
)
def test_row_hash_equals_record_hash_whatever_the_texts(
    texts: list[str], optional: list[str | None], kind: str, start_id: int | None
) -> None:
    """Every text field, quotes, escapes and surrogates included, hashes as its public form.

    The verbatim path joins texts that JSON writes as they are; the rest must
    take the encoder, and both must give the public form's hash.
    """
    session, stamp, kind_type, target, desc, risk, approval, rule, reason, at, digest = texts
    human, status, error, started, completed = optional
    draft = start_draft(
        "s", PolicyDecision(Action("read", "crm", {"n": 1.5}), RiskLevel.LOW, Approval.AUTO, "r")
    )._replace(
        kind=kind, session_id=session, timestamp=stamp, action_type=kind_type,
        action_target=target, action_desc=desc, risk_level=risk, approval=approval,
        matched_rule=rule, reason=reason, human_decision=human, result_status=status,
        result_error=error, started_at=started, completed_at=completed, decided_at=at,
        policy_digest=digest, start_id=start_id,
    )  # fmt: skip
    record = seal(draft, 7, GENESIS_HASH)
    assert record.hash == record_hash(to_dict(record))


@given(
    st.sampled_from(["start", "final", None]),
    st.text(max_size=20),
    st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3),
    st.one_of(st.none(), st.integers(min_value=1, max_value=2**62)),
    st.integers(min_value=1, max_value=2**62),
    st.text("0123456789abcdef", min_size=64, max_size=64),
)
def test_hash_pieces_around_id_and_prev_give_the_seal_hash(  # noqa: PLR0917
    kind: str | None,
    reason: str,
    params: dict[str, Any],
    start_id: int | None,
    record_id: int,
    prev: str,
) -> None:
    """The text a database assembles from hash_pieces, the id and prev_hash hashes as seal does."""
    decision = PolicyDecision(Action("read", "crm", params), RiskLevel.LOW, Approval.AUTO, reason)
    draft = start_draft("s", decision)._replace(kind=kind, start_id=start_id)
    middle, tail = hash_pieces(draft)
    text = f'[{record_id},{middle},"{prev}"{tail}'
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    assert digest == seal(draft, record_id, prev).hash
    assert seal_pieces(draft, (middle, tail), record_id, prev) == seal(draft, record_id, prev)
