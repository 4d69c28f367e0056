"""One contract for every usage store: memory, SQLite and PostgreSQL count alike."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any, Final

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aegis.stores.sqlite.usage as sqlite_usage
from aegis.core.action import Action, FrozenDict, canonical_json, freeze, thaw
from aegis.core.limits import Charge, FlowEvent
from aegis.core.record import storable_json
from aegis.errors import StoreError
from aegis.runtime.audit import AuditLogger
from aegis.stores.base import CoversEvents
from aegis.stores.postgres.usage import PostgresUsageStore
from aegis.stores.sqlite.connection import APPLICATION_ID
from aegis.stores.sqlite.usage import SCHEMA_VERSION, USAGE_MIGRATIONS, SQLiteUsageStore
from aegis.stores.usage import (
    EVENT_MARGIN,
    FORGET_ROWS,
    FORGET_SESSIONS,
    MemoryUsageStore,
    Request,
    UsageStore,
    check_storable,
    params_json,
)

Factory = Callable[[], UsageStore]


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    """Open stores of one engine that share their data (one file, one schema)."""
    opened: list[UsageStore] = []
    if request.param == "memory":
        shared = MemoryUsageStore()
        opened.append(shared)

        def factory() -> UsageStore:
            return shared

    elif request.param == "sqlite":

        def factory() -> UsageStore:
            store = SQLiteUsageStore(tmp_path / "aegis_audit.db")
            opened.append(store)
            return store

    else:
        dsn = request.getfixturevalue("postgres_dsn")

        def factory() -> UsageStore:
            store = PostgresUsageStore(dsn)
            opened.append(store)
            return store

    yield factory
    for store in opened:
        store.close()


def limit(bucket: str = "b", maximum: int = 3, window: float = 60.0, amount: int = 1) -> Charge:
    """A charge of ``amount`` on counter ``bucket``."""
    return Charge(bucket, amount, maximum, window)


def test_a_store_implements_the_protocol(make_store: Factory) -> None:
    """Every engine is a UsageStore."""
    assert isinstance(make_store(), UsageStore)


def test_acquire_reserves_until_the_maximum(make_store: Factory) -> None:
    """Three of a limit of three are reserved; the fourth is refused and reserves nothing."""
    store = make_store()
    results = [store.acquire([limit()], 100.0 + i, reserve=True, over=False) for i in range(4)]
    assert [r.exceeded for r in results] == [None, None, None, 0]
    assert [r.used for r in results] == [(0,), (1,), (2,), (3,)]
    assert [r.reserved for r in results] == [True, True, True, False]
    again = store.acquire([limit()], 104.0, reserve=False, over=False)
    assert again.used == (3,)


def test_over_reserves_past_the_maximum(make_store: Factory) -> None:
    """With over=True the action past the limit is still counted (on_exceed lets it run)."""
    store = make_store()
    for i in range(4):
        store.acquire([limit()], 100.0 + i, reserve=True, over=True)
    assert store.acquire([limit()], 105.0, reserve=False, over=False).used == (4,)


def test_preview_never_writes(make_store: Factory) -> None:
    """reserve=False reports counts and reserves nothing."""
    store = make_store()
    for _ in range(5):
        found = store.acquire([limit()], 100.0, reserve=False, over=True)
        assert (found.used, found.exceeded, found.reservation) == ((0,), None, None)


def test_the_window_slides(make_store: Factory) -> None:
    """Reservations older than the window stop counting, one by one."""
    store = make_store()
    for at in (100.0, 110.0, 120.0):
        store.acquire([limit(window=30.0)], at, reserve=True, over=False)
    assert store.acquire([limit(window=30.0)], 129.0, reserve=False, over=False).used == (3,)
    assert store.acquire([limit(window=30.0)], 130.0, reserve=False, over=False).used == (2,)
    assert store.acquire([limit(window=30.0)], 145.0, reserve=False, over=False).used == (1,)
    assert store.acquire([limit(window=30.0)], 150.5, reserve=True, over=False).reserved


def test_release_gives_the_room_back(make_store: Factory) -> None:
    """A released reservation no longer counts."""
    store = make_store()
    first = store.acquire([limit(maximum=1)], 100.0, reserve=True, over=False)
    assert first.reservation is not None
    assert not store.acquire([limit(maximum=1)], 101.0, reserve=True, over=False).reserved
    store.release(first.reservation)
    assert store.acquire([limit(maximum=1)], 102.0, reserve=True, over=False).reserved


def test_buckets_count_apart(make_store: Factory) -> None:
    """Two counters never see each other's reservations."""
    store = make_store()
    store.acquire([limit("a", maximum=1)], 100.0, reserve=True, over=False)
    assert store.acquire([limit("b", maximum=1)], 100.0, reserve=True, over=False).reserved
    assert not store.acquire([limit("a", maximum=1)], 100.0, reserve=True, over=False).reserved


def test_several_charges_are_all_or_nothing(make_store: Factory) -> None:
    """When one of two charges does not fit, neither is reserved."""
    store = make_store()
    store.acquire([limit("full", maximum=1)], 100.0, reserve=True, over=False)
    found = store.acquire(
        [limit("free", maximum=5), limit("full", maximum=1)], 101.0, reserve=True, over=False
    )
    assert (found.exceeded, found.reserved) == (1, False)
    assert store.acquire([limit("free", maximum=5)], 102.0, reserve=False, over=False).used == (0,)


def test_budgets_sum_exact_units(make_store: Factory) -> None:
    """Amounts add up exactly: 100000 + 200000 units fit a maximum of 300000, one more does not."""
    store = make_store()
    budget = 300_000
    assert store.acquire([limit(maximum=budget, amount=100_000)], 1.0, reserve=True, over=False)
    assert store.acquire([limit(maximum=budget, amount=200_000)], 2.0, reserve=True, over=False)
    last = store.acquire([limit(maximum=budget, amount=1)], 3.0, reserve=True, over=False)
    assert (last.used, last.exceeded) == ((300_000,), 0)


def test_huge_counts_stay_exact(make_store: Factory) -> None:
    """Counters near 2**62 units neither overflow nor round."""
    store = make_store()
    big = 2**61
    for at in (1.0, 2.0, 3.0):
        store.acquire([limit(maximum=2**62, amount=big)], at, reserve=True, over=True)
    found = store.acquire([limit(maximum=2**62, amount=1)], 4.0, reserve=False, over=False)
    assert found.exceeded == 0
    assert found.used[0] >= 2**62


def test_a_shorter_window_never_forgets_what_a_longer_one_counts(make_store: Factory) -> None:
    """A counter charged under two windows (a policy reloaded with another ``per``) stays safe.

    Rows the hourly limit counts must survive the trims and sweeps the
    per-minute charges cause: the sixth hourly action is refused.
    """
    store = make_store()
    bucket = uuid.uuid4().hex
    hourly, per_minute = Charge(bucket, 1, 5, 3600.0), Charge(bucket, 1, 1000, 60.0)
    for _ in range(5):
        assert store.acquire([hourly], 1000.0, reserve=True, over=False).reserved
    for _ in range(70):  # past a counter's trim at its 64th row
        store.acquire([per_minute], 1120.0, reserve=True, over=False)
    store.acquire([per_minute], 1700.0, reserve=True, over=False)  # past the 10-minute sweep
    found = store.acquire([hourly], 1761.0, reserve=True, over=False)
    assert found.used[0] >= 5
    assert not found.reserved


def test_whole_second_times_give_reservations_that_release(make_store: Factory) -> None:
    """Times given as ints work like floats, releases included."""
    store = make_store()
    made = store.acquire([limit("ints", maximum=2)], 100, reserve=True, over=False)  # type: ignore[arg-type]
    assert made.reservation is not None
    store.release(made.reservation)
    assert store.acquire([limit("ints", maximum=2)], 101.0, reserve=False, over=False).used == (0,)


def test_counts_are_shared_between_store_objects(make_store: Factory) -> None:
    """Two stores on one database see each other's reservations (as two processes do)."""
    one, two = make_store(), make_store()
    one.acquire([limit(maximum=2)], 100.0, reserve=True, over=False)
    two.acquire([limit(maximum=2)], 100.0, reserve=True, over=False)
    assert not one.acquire([limit(maximum=2)], 100.0, reserve=True, over=False).reserved


def test_flow_events_are_recalled_per_session_and_time(make_store: Factory) -> None:
    """recall filters by session, by time and by an exact type, oldest first."""
    store = make_store()
    store.remember(FlowEvent("s1", "read", "crm", {"id": 1, "nested": {"x": [1]}}, 10.0))
    store.remember(FlowEvent("s1", "send", "mail", {}, 20.0))
    store.remember(FlowEvent("s2", "read", "crm", {}, 15.0))
    events = store.recall("s1", None, None)
    assert [(e.type, e.at) for e in events] == [("read", 10.0), ("send", 20.0)]
    assert events[0].params == {"id": 1, "nested": {"x": (1,)}}
    assert [e.type for e in store.recall("s1", 10.0, None)] == ["send"]
    assert [e.type for e in store.recall("s1", None, "read")] == ["read"]
    assert store.recall("nobody", None, None) == []


def test_events_come_back_with_params_as_an_action_holds_them(make_store: Factory) -> None:
    """Lists are tuples and mappings frozen, as in the Action that ran, on every engine:
    a rule's ``param_eq: {ids: [1, 2]}`` compares equal to what is read back."""
    store = make_store()
    params = Action("read", "crm", {"ids": [1, 2], "o": {"a": [True]}, "tags": {"b", "a"}}).params
    store.remember(FlowEvent("s", "read", "crm", params, 1.0))
    for found in (store.latest_event("s", None), store.recall("s", None, None)[0]):
        assert found is not None
        assert type(found.params) is FrozenDict
        assert found.params == FrozenDict({"ids": (1, 2), "o": {"a": (True,)}, "tags": ("a", "b")})
        assert type(found.params["ids"]) is tuple
        assert type(found.params["o"]) is FrozenDict


def test_flat_params_of_every_kind_come_back_as_they_ran(make_store: Factory) -> None:
    """Text (any script, control characters), exact floats, wide ints, bools and null:
    the flat params of the usual tool call, written the short way, read back unchanged."""
    store = make_store()
    params = Action(
        "send",
        "mail",
        {
            "to": 'zoë@例え.jp\u2028\x00"\\',
            "amount": 0.1 + 0.2,
            "tiny": -0.0,
            "huge": 1e300,
            "id": 10**30,
            "count": -7,
            "ok": True,
            "none": None,
            "B": "upper keys sort first",
        },
    ).params
    store.remember(FlowEvent("s", "send", "mail", params, 1.0))
    for found in (store.latest_event("s", None), store.recall("s", None, None)[0]):
        assert found is not None
        assert found.params == params
        assert [type(found.params[key]) for key in params] == [type(v) for v in params.values()]
        assert repr(found.params["amount"]) == repr(0.1 + 0.2)
        assert repr(found.params["tiny"]) == "-0.0"


def test_events_noted_together_can_be_taken_back_by_their_ids(make_store: Factory) -> None:
    """remember_many gives one id per event, in order; drop_events deletes those events only
    (an action cancelled once noted never ran), also through another store object, and an id
    already gone is passed over."""
    store: Any = make_store()
    ids = store.remember_many([FlowEvent("s", "test", "ci", {"n": n}, 10.0 + n) for n in range(3)])
    (lone,) = store.remember_many([FlowEvent("s", "test", "ci", {"n": 3}, 13.0)])
    assert len({*ids, lone}) == 4
    other: Any = make_store()
    other.drop_events([ids[1], lone])
    assert [_number(e) for e in store.recall("s", None, None)] == [0, 2]
    assert _number(store.latest_event("s", None, action_type="test", action_target="ci")) == 2
    store.drop_events([ids[1]])
    store.drop_events([])
    assert [_number(e) for e in store.recall("s", None, "test")] == [0, 2]
    store.drop_events([ids[2]])
    assert _number(store.latest_event("s", None, action_type="test", action_target="ci")) == 0


def test_latest_event_passes_over_the_one_event_it_is_given_the_id_of(
    make_store: Factory,
) -> None:
    """passing=id skips that event only: its twin (same session, names, params and time,
    noted by another action at the same moment) is found, through another store object too,
    with or without a where; once the twin is gone, the older event."""
    store: Any = make_store()
    twin = FlowEvent("s", "send", "mail", {"n": 1}, 20.0)
    older, own, other = store.remember_many(
        [FlowEvent("s", "send", "mail", {"n": 0}, 10.0), twin, twin]
    )
    reader: Any = make_store()
    for where in (None, lambda event: True):
        for passing in (own, other):
            found = reader.latest_event(
                "s", None, where, action_type="send", action_target="mail", passing=passing
            )
            assert (_number(found), found.at) == (1, 20.0)
            assert _number(reader.latest_event("s", None, where, passing=passing)) == 1
    store.drop_events([other])
    assert _number(reader.latest_event("s", None, action_type="send", passing=own)) == 0
    assert _number(reader.latest_event("s", 15.0, passing=own)) is None
    assert _number(reader.latest_event("s", 15.0)) == 1  # passed over only when asked
    store.drop_events([older])
    assert reader.latest_event("s", None, passing=own) is None


@pytest.mark.parametrize("bad", ["1", 1.0, ("s", 1)])
def test_passing_what_is_no_event_id_is_refused(make_store: Factory, bad: object) -> None:
    """An id of the wrong kind to pass over is a StoreError, not an event passed over or not."""
    store: Any = make_store()
    store.remember_many([FlowEvent("s", "test", "ci", {}, 1.0)])
    with pytest.raises(StoreError):
        store.latest_event("s", None, passing=bad)


@pytest.mark.parametrize("bad", ["1", None, 1.0, ("s", 1)])
def test_dropping_what_is_no_event_id_is_refused(make_store: Factory, bad: object) -> None:
    """An id of the wrong kind is a StoreError, and nothing is deleted."""
    store: Any = make_store()
    store.remember_many([FlowEvent("s", "test", "ci", {}, 1.0)])
    with pytest.raises(StoreError):
        store.drop_events([bad])
    assert len(store.recall("s", None, None)) == 1


@pytest.mark.parametrize(
    "params",
    [
        {"amount": 1.5, "customer": 7, "note": 'a "quoted"\\ line\n', "ok": None},
        {"text": "a DEL \x7f, which only the ASCII encoder escapes"},
        {"text": "zo\u00eb, not ASCII"},
        {"ids": [1, 2], "nested": {"a": True}},
    ],
)
def test_an_event_keeps_its_params_as_json_dumps_writes_them_after_the_start_record(
    params: dict[str, object],
) -> None:
    """The start record's draft encodes an action's params just before its event is noted;
    the event's text is json.dumps's (ASCII) all the same, reused from the draft or not."""
    action = Action("send", "mail", params)
    frozen = action.params
    canonical_json(action)  # as the runtime does when it decides the action
    storable_json(frozen)  # as the start record's draft does, just before the event is noted
    expected = json.dumps(thaw(frozen), sort_keys=True, separators=(",", ":"), default=repr)
    assert params_json(frozen) == expected
    assert params_json(Action("send", "mail", params).params) == expected  # an equal, new one


# Text with what each encoder writes its own way: DEL (only the ASCII encoder
# escapes it), lone surrogates (UTF-8 has none), non-ASCII, and the very
# characters that tell an array in canonical text (":[).
_TRICKY_TEXT = st.text(st.sampled_from('a"\\:[]{}\x7f\x00\n')) | st.text(
    st.sampled_from('a"\\:[]{}\x7f\u00e9\u202e\ud800\udcff\U0001f600')
)
_SCALARS = (
    _TRICKY_TEXT
    | st.integers()
    | st.integers(4300, 4400).map(lambda digits: -(10**digits))  # past int -> str's limit
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.booleans()
    | st.none()
)
_PARAMS = st.dictionaries(
    _TRICKY_TEXT,
    st.recursive(
        _SCALARS,
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.frozensets(st.integers() | _TRICKY_TEXT, max_size=3)
            | st.dictionaries(_TRICKY_TEXT, inner, max_size=3)
        ),
        max_leaves=6,
    )
    # a set: canonical_json orders it by each element's text, json.dumps by the elements
    | st.frozensets(st.integers(), min_size=2, max_size=4),
    max_size=4,
)


@settings(max_examples=300)
@given(params=_PARAMS)
def test_params_just_decided_store_as_params_never_encoded(params: dict[str, Any]) -> None:
    """The start record and the flow event take canonical_json's text of the params it just
    encoded when that text is theirs too: whatever the params hold (DEL, surrogates, non-ASCII,
    ints past the digit limit, nesting), both are what encoding another equal object gives."""
    action = Action("send", "mail", params)
    other = Action("send", "mail", params).params  # equal, never passed to canonical_json
    expected_start, expected_event = storable_json(other), params_json(other)
    canonical_json(action)  # as the runtime does when it decides the action
    assert storable_json(action.params) == expected_start
    assert params_json(action.params) == expected_event
    canonical_json(action)  # again: the event is noted after the start record's draft too
    assert params_json(action.params) == expected_event
    assert storable_json(action.params) == expected_start


def test_an_event_whose_params_do_not_encode_is_refused_before_its_batch() -> None:
    """check_storable tries a mapping's params and refuses them when they do not encode; an
    Action's params always encode (the property test above encodes every kind), surrogates and
    ints past the digit limit included, so they pass without being encoded twice."""
    looped: dict[str, Any] = {}
    looped["self"] = looped
    with pytest.raises(StoreError, match="params do not encode"):
        check_storable(FlowEvent("s", "send", "mail", looped, 1.0))
    params = Action("send", "mail", {"n": -(10**5000), "t": "\ud800", "s": {1, 2}}).params
    check_storable(FlowEvent("s", "send", "mail", params, 1.0))
    assert json.loads(params_json(params))["t"] == "\ud800"


def test_an_int_too_long_to_print_is_kept_as_canonical_json_writes_it(make_store: Factory) -> None:
    """Past the 4,300-digit limit of int -> str (an Action takes one): kept, on every engine,
    as canonical_json's marked hex text, and read back as the int it stands for."""
    store = make_store()
    huge = 10**5000
    store.remember(FlowEvent("s", "read", "crm", Action("read", "crm", {"n": huge}).params, 1.0))
    (found,) = store.recall("s", None, None)
    assert found.params == FrozenDict({"n": huge})


def test_params_shaped_like_a_marked_int_read_back_as_written(make_store: Factory) -> None:
    """A param that is a mapping shaped like canonical_json's mark of an int too long to print
    is not that int: on every engine each event reads back as its own params, and the two
    events' texts differ."""
    store = make_store()
    huge = 10**5000
    look_alike = {"n": {"__aegis_int__": hex(huge)}, "m": [{"__aegis_map__": {"a": 1}}]}
    for at, params in enumerate(({"n": huge}, look_alike), 1):
        event = FlowEvent("s", "read", "crm", Action("read", "crm", params).params, float(at))
        store.remember(event)
    assert params_json(Action("r", "c", {"n": huge}).params) != params_json(
        Action("r", "c", look_alike).params
    )
    found = store.recall("s", None, None)
    assert [event.params for event in found] == [
        FrozenDict({"n": huge}),
        Action("r", "c", look_alike).params,
    ]


def test_sqlite_flow_events_of_the_older_encoding_read_back_as_they_ran(tmp_path: Path) -> None:
    """Events a release before escapes stored (a mark of an int too long to print, a param
    shaped like one, an escape's look-alike) read back: the mark as its int, the rest as
    they were; a mark no process writes is no int."""
    path = tmp_path / "aegis_audit.db"
    with SQLiteUsageStore(path) as created:
        assert created.recall("s", None, None) == []  # the empty store, its tables created
    huge = 10**5000
    stored = [  # as params_json wrote them then: json.dumps, sorted keys, compact
        {"n": {"__aegis_int__": hex(huge)}, "m": [{"__aegis_int__": hex(-huge)}]},
        {"n": {"__aegis_int__": "0x5"}},
        {"n": {"__aegis_int__": hex(huge).upper()}},
        {"n": {"__aegis_map__": 1}},
    ]
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.executemany(
            "INSERT INTO aegis_flow_events"
            " (session_id, action_type, action_target, params, at) VALUES (?, ?, ?, ?, ?)",
            [
                ("s", "read", "crm", json.dumps(p, sort_keys=True, separators=(",", ":")), at)
                for at, p in enumerate(stored, 1)
            ],
        )
    with SQLiteUsageStore(path) as store:
        found = store.recall("s", None, None)
    assert [event.params for event in found] == [
        freeze({"n": huge, "m": [-huge]}),
        *map(freeze, stored[1:]),
    ]


def _number(found: FlowEvent | None) -> int | None:
    """The ``n`` param of an event found, ``None`` when none was."""
    return None if found is None else int(found.params["n"])


def test_the_latest_event_is_the_newest_of_the_session_in_the_window(make_store: Factory) -> None:
    """latest_event narrows by session, time, exact type and target; the newest comes back."""
    store = make_store()
    store.remember(FlowEvent("s1", "read", "crm", {"n": 1}, 10.0))
    store.remember(FlowEvent("s1", "read", "wiki", {"n": 2}, 20.0))
    store.remember(FlowEvent("s1", "send", "crm", {"n": 3}, 30.0))
    store.remember(FlowEvent("s2", "read", "crm", {"n": 4}, 40.0))
    n = _number
    assert n(store.latest_event("s1", None)) == 3
    assert n(store.latest_event("s1", None, action_type="read")) == 2
    assert n(store.latest_event("s1", None, action_target="crm")) == 3
    assert n(store.latest_event("s1", None, action_type="read", action_target="crm")) == 1
    assert n(store.latest_event("s1", 10.0, action_type="read", action_target="crm")) is None
    assert n(store.latest_event("s1", 9.9, action_type="read", action_target="crm")) == 1
    assert n(store.latest_event("s1", None, lambda e: e.params["n"] < 3)) == 2
    assert n(store.latest_event("s1", 20.0, lambda e: e.params["n"] < 3)) is None
    assert n(store.latest_event("s2", None, action_type="send")) is None
    assert store.latest_event("nobody", None) is None


def test_a_fresh_store_answers_latest_event_first(make_store: Factory) -> None:
    """latest_event as a store's first call (an explanation, a plan) finds nothing, no error."""
    assert make_store().latest_event("s", None, action_type="read", action_target="crm") is None


def test_the_latest_event_goes_by_time_then_by_the_order_noted(make_store: Factory) -> None:
    """An event noted late with an older time is not the newest; of equal times, the last noted."""
    store = make_store()
    for n, at in enumerate([5.0, 30.0, 10.0, 30.0, 20.0]):
        store.remember(FlowEvent("s", "read", "crm", {"n": n}, at))
    assert _number(store.latest_event("s", None, action_type="read", action_target="crm")) == 3
    assert _number(store.latest_event("s", None, lambda e: e.params["n"] != 3)) == 1
    assert _number(store.latest_event("s", None, lambda e: e.at < 30.0)) == 4


def test_the_latest_event_reads_past_many_that_do_not_match(make_store: Factory) -> None:
    """The one match under 300 newer events is found, also when they share its time."""
    store = make_store()
    store.remember(FlowEvent("s", "read", "crm", {"wanted": True}, 1.0))
    for n in range(150):
        store.remember(FlowEvent("s", "read", "crm", {"wanted": False}, 2.0 + n))
    store.remember(FlowEvent("t", "read", "crm", {"wanted": False}, 0.5))
    for _ in range(150):  # one time for all: the pages go on by the order noted
        store.remember(FlowEvent("t", "read", "crm", {"wanted": False}, 1.0))
    store.remember(FlowEvent("t", "read", "crm", {"wanted": True}, 1.0))  # noted in between
    for _ in range(150):
        store.remember(FlowEvent("t", "read", "crm", {"wanted": False}, 1.0))

    def wanted(event: FlowEvent) -> bool:
        return bool(event.params["wanted"])

    def where(session: str, since: float | None = None) -> float | None:
        found = store.latest_event(session, since, wanted, action_type="read")
        return None if found is None else found.at

    assert where("s") == 1.0
    assert where("s", 1.0) is None
    assert where("t") == 1.0
    older = store.latest_event("t", None, lambda e: e.at < 1.0)
    assert (older.at if older else None) == 0.5


def test_a_closed_store_refuses_work(make_store: Factory) -> None:
    """After close(), every call raises StoreError."""
    store = make_store()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.acquire([limit()], 1.0, reserve=True, over=False)


# -- a model of a sliding-window counter ------------------------------------------------

_STEP = st.tuples(
    st.sampled_from(["a", "b"]),
    st.integers(min_value=0, max_value=40),  # seconds since the last step
    st.integers(min_value=1, max_value=4),  # amount
    st.booleans(),  # over
    st.booleans(),  # release the reservation right away
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(steps=st.lists(_STEP, max_size=25))
def test_every_store_matches_a_sliding_window_model(
    make_store: Factory, steps: list[tuple[str, int, int, bool, bool]]
) -> None:
    """Any sequence of acquires and releases gives the counts a list of timestamps would."""
    store = make_store()
    bucket_prefix = uuid.uuid4().hex  # hypothesis reuses the store: start from empty counters
    window, maximum = 60.0, 6
    model: dict[str, list[tuple[float, int]]] = {"a": [], "b": []}
    now = 1000.0
    for name, gap, amount, over, release in steps:
        now += gap
        live = [(at, units) for at, units in model[name] if at > now - window]
        used = sum(units for _, units in live)
        charge = Charge(bucket_prefix + name, amount, maximum, window)
        found = store.acquire([charge], now, reserve=True, over=over)
        assert found.used == (used,)
        fits = used + amount <= maximum
        assert found.exceeded == (None if fits else 0)
        assert found.reserved == (fits or over)
        if found.reservation is not None:
            if release:
                store.release(found.reservation)
            else:
                model[name].append((now, amount))


_LONG_STEP = st.tuples(
    st.sampled_from(["a", "b"]),
    st.sampled_from([0.0, 0.5, 1.0, 3.0, 7.0]),  # seconds since the last step
    st.integers(min_value=1, max_value=3),  # amount
    st.booleans(),  # over
    st.integers(min_value=0, max_value=4),  # 0: release this reservation; 1: an older one
)


@settings(max_examples=30, deadline=None)
@given(steps=st.lists(_LONG_STEP, min_size=50, max_size=300))
def test_sqlite_running_totals_match_the_model_through_trims_and_releases(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, float, int, bool, int]]
) -> None:
    """Long runs (counters trimmed every 64th row) with releases anywhere count like the model."""
    path = tmp_path_factory.mktemp("usage") / "aegis_audit.db"
    window, maximum = 20.0, 25
    model: dict[str, list[tuple[float, int, object]]] = {"a": [], "b": []}
    now = 5000.0
    with SQLiteUsageStore(path) as store:
        for name, gap, amount, over, release in steps:
            now += gap
            used = sum(units for at, units, _ in model[name] if at > now - window)
            found = store.acquire(
                [Charge(name, amount, maximum, window)], now, reserve=True, over=over
            )
            assert found.used == (used,)
            assert found.reserved == (used + amount <= maximum or over)
            if found.reservation is not None:
                model[name].append((now, amount, found.reservation))
            if release < 2 and model[name]:
                token = model[name].pop(-1 - release if len(model[name]) > 1 else -1)[2]
                store.release(token)  # type: ignore[arg-type]  # the store's own token
        for name, rows in model.items():  # and a look from another connection, as another process
            used = sum(units for at, units, _ in rows if at > now - window)
            with SQLiteUsageStore(path) as other:
                peek = other.acquire(
                    [Charge(name, 1, maximum, window)], now, reserve=False, over=False
                )
            assert peek.used == (used,)


# -- engine specifics ------------------------------------------------------------------


def test_sqlite_usage_tables_join_the_audit_file(tmp_path: Path) -> None:
    """The usage store creates its tables beside the audit's, which still verifies."""
    path = tmp_path / "aegis_audit.db"
    with SQLiteUsageStore(path) as store:
        store.acquire([limit()], 1.0, reserve=True, over=False)
    with AuditLogger(path) as audit:
        audit.log("s", _decision())
        assert audit.verify().ok
    with sqlite3.connect(path) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        versions = dict(conn.execute("SELECT component, version FROM aegis_schema_versions"))
    assert {"audit_log", "aegis_usage", "aegis_flow_events", "aegis_flow_horizon"} <= tables
    assert "aegis_flow_events_kind" in tables  # the index a flow condition's look-up seeks in
    assert versions["usage"] == SCHEMA_VERSION == 6


def _older_usage_file(path: Path, version: int, rows: list[tuple[str, float, int]]) -> None:
    """A file with usage tables as schema ``version`` wrote them, holding ``rows``."""
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(
            "CREATE TABLE aegis_schema_versions (component TEXT PRIMARY KEY, version INTEGER)"
        )
        for step in range(version):
            for statement in USAGE_MIGRATIONS[step]:
                conn.execute(statement)
        conn.execute("INSERT INTO aegis_schema_versions VALUES ('usage', ?)", (version,))
        for bucket, at, units in rows:
            conn.execute(
                "INSERT INTO aegis_usage (bucket, at, units, expires) VALUES (?, ?, ?, ?)",
                (bucket, at, units, at + 60.0),
            )
            if version == 1:  # no trigger yet: the first release kept the total itself
                conn.execute(
                    "INSERT INTO aegis_usage_totals VALUES (?, ?) ON CONFLICT (bucket)"
                    " DO UPDATE SET units = units + excluded.units",
                    (bucket, units),
                )


@pytest.mark.parametrize("version", [1, 2])
def test_sqlite_older_tables_migrate_keeping_their_counts(tmp_path: Path, version: int) -> None:
    """Files of the first two usage schemas migrate in place and count what they held."""
    path = tmp_path / "aegis_audit.db"
    _older_usage_file(path, version, [("b", 1.0, 1), ("b", 1.5, 1), ("other", 1.2, 5)])
    with SQLiteUsageStore(path) as store:
        found = [store.acquire([limit(maximum=4)], 2.0, reserve=True, over=False) for _ in range(3)]
        other = store.acquire([limit("other", maximum=5)], 2.0, reserve=False, over=False)
        later = store.acquire([limit(maximum=4)], 61.6, reserve=False, over=False)
    assert [a.used for a in found] == [(2,), (3,), (4,)]
    assert [a.reserved for a in found] == [True, True, False]
    assert (other.used, other.exceeded) == ((5,), 0)
    assert later.used == (2,)  # the rows of 1.0 and 1.5 left the window; the two of 2.0 count
    with sqlite3.connect(path) as conn:
        version_now = conn.execute(
            "SELECT version FROM aegis_schema_versions WHERE component = 'usage'"
        ).fetchone()[0]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert version_now == SCHEMA_VERSION
    assert "aegis_usage_totals" not in tables


#: the usage tables as the release before flow-event deleting (usage schema 3) left them,
#: written out here rather than replayed from USAGE_MIGRATIONS, which may change
_USAGE_V3: Final = (
    """CREATE TABLE aegis_flow_events (
        id INTEGER PRIMARY KEY,
        session_id TEXT NOT NULL,
        action_type TEXT NOT NULL,
        action_target TEXT NOT NULL,
        params TEXT NOT NULL,
        at REAL NOT NULL
    )""",
    "CREATE INDEX aegis_flow_events_session ON aegis_flow_events (session_id, at)",
    """CREATE TABLE "aegis_usage" (
        bucket TEXT NOT NULL,
        at REAL NOT NULL,
        seq INTEGER NOT NULL,
        units INTEGER NOT NULL,
        total INTEGER NOT NULL,
        expires REAL NOT NULL,
        PRIMARY KEY (bucket, at, seq)
    ) WITHOUT ROWID""",
    "CREATE TABLE aegis_schema_versions (component TEXT PRIMARY KEY, version INTEGER NOT NULL)",
    "INSERT INTO aegis_schema_versions VALUES ('usage', 3)",
)


def test_sqlite_a_schema_3_file_migrates_keeping_its_counters_and_flow_events(
    tmp_path: Path,
) -> None:
    """A schema 3 usage file gains the horizon table and the flow index; counts and events stay."""
    path = tmp_path / "aegis_audit.db"
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA page_size = 1024")
        conn.execute("PRAGMA journal_mode = WAL")
        with conn:
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            for statement in _USAGE_V3:
                conn.execute(statement)
            conn.executemany(  # running totals, as schema 3 keeps them
                "INSERT INTO aegis_usage VALUES (?, ?, ?, ?, ?, ?)",
                [
                    ("b", 1.0, 1, 1, 1, 61.0),
                    ("b", 1.5, 2, 1, 2, 61.5),
                    ("other", 1.2, 1, 5, 5, 61.2),
                ],
            )
            conn.executemany(
                "INSERT INTO aegis_flow_events"
                " (session_id, action_type, action_target, params, at) VALUES (?, ?, ?, ?, ?)",
                [("s", "read", "crm", '{"id":7}', 10.0), ("s", "read", "crm", "{}", 9000.0)],
            )
    with SQLiteUsageStore(path) as store:
        events = store.recall("s", None, None)
        newest = store.latest_event("s", None, action_type="read", action_target="crm")
        found = [store.acquire([limit(maximum=4)], 2.0, reserve=True, over=False) for _ in range(3)]
        other = store.acquire([limit("other", maximum=5)], 2.0, reserve=False, over=False)
        later = store.acquire([limit(maximum=4)], 61.6, reserve=False, over=False)
        assert store.forget_events(3600.0, 9000.0 + 3600) is False
        kept = store.recall("s", None, None)
    assert [(e.target, dict(e.params), e.at) for e in events] == [
        ("crm", {"id": 7}, 10.0),
        ("crm", {}, 9000.0),
    ]
    assert newest == events[-1]
    assert [a.used for a in found] == [(2,), (3,), (4,)]
    assert [a.reserved for a in found] == [True, True, False]
    assert (other.used, other.exceeded) == ((5,), 0)
    assert later.used == (2,)  # the rows of 1.0 and 1.5 left the window; the two of 2.0 count
    assert [e.at for e in kept] == [9000.0]  # the old one is past the horizon now declared
    with closing(sqlite3.connect(path)) as conn:
        versions = dict(conn.execute("SELECT component, version FROM aegis_schema_versions"))
        horizon = conn.execute("SELECT id, seconds FROM aegis_flow_horizon").fetchall()
        indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert versions == {"usage": SCHEMA_VERSION} == {"usage": 6}
    assert "aegis_flow_events_kind" in indexes
    assert horizon == [(1, 3600.0)]


def test_sqlite_refuses_a_file_that_is_not_aegis(tmp_path: Path) -> None:
    """A SQLite file of someone else's is a StoreError, left untouched."""
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE mine (x)")
    store = SQLiteUsageStore(path)
    with pytest.raises(StoreError, match="not an Aegis"):
        store.acquire([limit()], 1.0, reserve=True, over=False)
    with sqlite3.connect(path) as conn:
        assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["mine"]


def test_sqlite_refuses_garbage_with_a_clear_error(tmp_path: Path) -> None:
    """A file that is not a database at all is a StoreError naming it."""
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match=r"junk\.db"):
        SQLiteUsageStore(path).acquire([limit()], 1.0, reserve=True, over=False)


def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    """Usage tables of a newer version are refused rather than misread."""
    path = tmp_path / "aegis_audit.db"
    SQLiteUsageStore(path).acquire([limit()], 1.0, reserve=True, over=False)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE aegis_schema_versions SET version = 9 WHERE component = 'usage'")
    with pytest.raises(StoreError, match="upgrade aegis-runtime"):
        SQLiteUsageStore(path).acquire([limit()], 1.0, reserve=True, over=False)


@pytest.mark.parametrize(
    "edit",
    [
        "UPDATE aegis_usage SET total = 'lots'",
        "UPDATE aegis_usage SET units = 'lots'",
        "UPDATE aegis_usage SET at = 'yesterday'",
        "UPDATE aegis_usage SET units = -5",
        "UPDATE aegis_usage SET total = total - 10 WHERE seq = 2",
    ],
)
def test_sqlite_hand_edited_counters_fail_closed(tmp_path: Path, edit: str) -> None:
    """A counter edited by hand into nonsense is an error that names the table, not a free pass."""
    path = tmp_path / "aegis_audit.db"
    store = SQLiteUsageStore(path)
    for _ in range(2):
        store.acquire([limit()], 1.0, reserve=True, over=False)
    with sqlite3.connect(path) as conn:
        conn.execute(edit)
    with pytest.raises(StoreError, match="edited by hand"):
        store.acquire([limit()], 2.0, reserve=True, over=False)
    store.close()


def test_sqlite_releases_keep_the_running_totals_right(tmp_path: Path) -> None:
    """Releasing a reservation in the middle of a counter leaves the later ones counted exactly."""
    path = tmp_path / "aegis_audit.db"
    with SQLiteUsageStore(path) as store:
        made = [
            store.acquire([limit(maximum=100, amount=n)], float(n), reserve=True, over=False)
            for n in (1, 2, 3, 4)
        ]
        store.release(made[1].reservation or ())
        assert store.acquire([limit(maximum=100)], 10.0, reserve=False, over=False).used == (8,)
        # when the first row (at 1.0) has left the window, 3 + 4 remain
        assert store.acquire([limit(maximum=100)], 62.5, reserve=False, over=False).used == (7,)
        with pytest.raises(StoreError, match="not a reservation"):
            store.release([42])


def test_sqlite_a_clock_behind_counts_later_never_earlier(tmp_path: Path) -> None:
    """A charge stamped before the counter's newest row is counted from that row's time."""
    path = tmp_path / "aegis_audit.db"
    with SQLiteUsageStore(path) as store:
        store.acquire([limit(maximum=10)], 100.0, reserve=True, over=False)
        behind = store.acquire([limit(maximum=10)], 50.0, reserve=True, over=False)
        assert behind.used == (1,)
        # at 159 both still count (the second from 100.0, not 50.0); at 160.5 neither does
        assert store.acquire([limit(maximum=10)], 159.0, reserve=False, over=False).used == (2,)
        assert store.acquire([limit(maximum=10)], 160.5, reserve=False, over=False).used == (0,)


def test_sqlite_counters_forget_old_rows(tmp_path: Path) -> None:
    """Rows past their window are deleted as a counter goes on, and from counters left alone."""
    path = tmp_path / "aegis_audit.db"
    with SQLiteUsageStore(path) as store:
        store.acquire([limit("idle", maximum=10)], 0.0, reserve=True, over=False)
        for n in range(200):
            store.acquire([limit(maximum=1000, window=10.0)], float(n), reserve=True, over=False)
        with sqlite3.connect(path) as conn:
            busy = conn.execute("SELECT count(*) FROM aegis_usage WHERE bucket = 'b'").fetchone()
        assert busy[0] < 10 + 64  # the window's rows, and at most one batch not yet trimmed
        assert store.acquire(
            [limit(maximum=1000, window=10.0)], 200.0, reserve=False, over=False
        ).used == (9,)
        store.acquire([limit(maximum=1000, window=10.0)], 2000.0, reserve=True, over=False)
        with sqlite3.connect(path) as conn:
            idle = conn.execute("SELECT count(*) FROM aegis_usage WHERE bucket = 'idle'").fetchone()
        assert idle[0] == 0


def test_sqlite_memory_path_is_refused() -> None:
    """':memory:' cannot be shared, so it is refused with the in-memory store as the hint."""
    with pytest.raises(StoreError, match="MemoryUsageStore"):
        SQLiteUsageStore(":memory:")


def test_postgres_wrong_dsn_is_a_clear_store_error() -> None:
    """A server that is not there is a StoreError naming the DSN with its password masked."""
    store = PostgresUsageStore("postgresql://aegis:s3cret@127.0.0.1:1/nowhere", connect_timeout=1.0)
    with pytest.raises(StoreError) as info:
        store.acquire([limit()], 1.0, reserve=True, over=False)
    assert "s3cret" not in str(info.value)
    assert "aegis:***@127.0.0.1:1/nowhere" in str(info.value)
    assert "server is running" in str(info.value)


def test_postgres_recovers_from_a_killed_connection(postgres_dsn: str) -> None:
    """A connection the server terminated fails one call, and the next call reconnects."""
    import psycopg

    store = PostgresUsageStore(postgres_dsn)
    store.acquire([limit()], 1.0, reserve=True, over=False)
    pid = store._conn.info.backend_pid  # type: ignore[union-attr]  # open after a call
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(StoreError):
        store.acquire([limit()], 2.0, reserve=True, over=False)
    assert store.acquire([limit()], 3.0, reserve=False, over=False).used == (1,)
    store.close()


def _decision():  # type: ignore[no-untyped-def]  # a small helper for one test
    from aegis.core.action import Action
    from aegis.core.decision import Approval, PolicyDecision
    from aegis.core.risk import RiskLevel

    return PolicyDecision(Action("read", "crm"), RiskLevel.LOW, Approval.AUTO, "r")


def test_a_forked_child_counts_on_its_own_connection(
    make_store: Factory, request: pytest.FixtureRequest
) -> None:
    """After fork, the child counts through its own connection; the parent sees it (not memory)."""
    import os

    shared = "memory" not in request.node.callspec.id
    store = make_store()
    store.acquire([limit(maximum=10)], 1.0, reserve=True, over=False)
    pid = os.fork()
    if pid == 0:  # pragma: no cover  # the child reports through its exit status
        try:
            found = store.acquire([limit(maximum=10)], 2.0, reserve=True, over=False)
            os._exit(0 if found.used == (1,) and found.reserved else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    seen = store.acquire([limit(maximum=10)], 3.0, reserve=False, over=False).used
    assert seen == ((2,) if shared else (1,))  # the memory store is one process's


def test_sqlite_a_release_after_a_sweep_of_mixed_windows_still_gives_back(
    tmp_path: Path,
) -> None:
    """A reservation behind a longer window's row is kept by sweeps, so releasing it works."""
    with SQLiteUsageStore(tmp_path / "aegis_audit.db") as store:
        hourly, per_minute = Charge("m", 1, 100, 3600.0), Charge("m", 1, 100, 60.0)
        store.acquire([hourly], 1000.0, reserve=True, over=False)
        waiting = store.acquire([per_minute], 1100.0, reserve=True, over=False).reservation
        store.acquire([per_minute], 1700.0, reserve=True, over=False)  # the 10-minute sweep
        store.release(waiting or ())
        assert store.acquire([hourly], 1701.0, reserve=False, over=False).used == (2,)


def test_sqlite_a_released_token_is_never_given_again(tmp_path: Path) -> None:
    """Released, then reserved again at the same time: a late second release frees nothing."""
    with SQLiteUsageStore(tmp_path / "aegis_audit.db") as store:
        store.acquire([limit(maximum=10)], 100.0, reserve=True, over=False)
        first = store.acquire([limit(maximum=10)], 100.0, reserve=True, over=False).reservation
        store.release(first or ())
        second = store.acquire([limit(maximum=10)], 100.0, reserve=True, over=False).reservation
        assert second != first
        store.release(first or ())
        assert store.acquire([limit(maximum=10)], 100.0, reserve=False, over=False).used == (2,)


def test_sqlite_totals_near_the_integer_limit_shift_without_overflowing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counters that keep reaching the top are shifted down again and again and still count."""
    monkeypatch.setattr(sqlite_usage, "_MAX_TOTAL", 40)
    with SQLiteUsageStore(tmp_path / "aegis_audit.db") as store:
        for step in range(12):
            now = 1000.0 + 100 * step  # the step before left the 60 s window
            first = store.acquire([Charge("n", 9, 40, 60.0)], now, reserve=True, over=False)
            second = store.acquire([Charge("n", 9, 40, 60.0)], now, reserve=True, over=False)
            assert (first.used, second.used) == ((0,), (9,))
        with sqlite3.connect(tmp_path / "aegis_audit.db") as conn:
            low = conn.execute("SELECT min(total), typeof(min(total)) FROM aegis_usage").fetchone()
        assert low[0] >= 0
        assert low[1] == "integer"


def test_a_request_may_not_charge_one_counter_twice(make_store: Factory) -> None:
    """Two charges on one counter in one request are refused, writing nothing."""
    store = make_store()
    with pytest.raises(ValueError, match="charges a counter twice"):
        store.acquire([limit("twice"), limit("twice")], 1.0, reserve=True, over=False)
    assert store.acquire([limit("twice")], 1.0, reserve=False, over=False).used == (0,)


def test_sqlite_sweeps_walk_many_idle_counters_a_slice_at_a_time(tmp_path: Path) -> None:
    """Idle counters are forgotten in slices: each sweep looks at a bounded number of them."""
    path = tmp_path / "aegis_audit.db"
    with SQLiteUsageStore(path) as store:
        store.acquire_many(
            [Request((limit(f"idle-{n:04}", window=10.0),), 0.0, over=False) for n in range(1200)]
        )

        def idle_rows() -> int:
            with sqlite3.connect(path) as conn:
                found = conn.execute(
                    "SELECT count(*) FROM aegis_usage WHERE bucket LIKE 'idle-%'"
                ).fetchone()
            return int(found[0])

        left = []
        for now in (1000.0, 1011.0, 1022.0):
            store.acquire([limit("busy", window=10.0)], now, reserve=True, over=False)
            left.append(idle_rows())
    assert left == [701, 201, 0]  # 500 counters a sweep, "busy" among the first


# -- forgetting old flow events -------------------------------------------------------------


def _events(store: UsageStore, sessions: list[str]) -> list[float]:
    """The times of every event kept for ``sessions``, sorted."""
    return sorted(e.at for s in sessions for e in store.recall(s, None, None))


def test_flow_events_older_than_the_horizon_are_forgotten(make_store: Factory) -> None:
    """Events older than the longest look-back (and its margin) go; the rest stay."""
    store = make_store()
    now = 100_000.0
    edge = now - 3600 - EVENT_MARGIN
    for session in ("s1", "s2"):
        for at in (10.0, edge - 1, edge, edge + 1, now - 10):
            store.remember(FlowEvent(session, "read", "crm", {}, at))
    while store.forget_events(3600.0, now):
        pass
    assert _events(store, ["s1", "s2"]) == sorted([edge + 1, now - 10] * 2)
    assert [e.at for e in store.recall("s1", now - 3600, None)] == [now - 10]


def test_a_longer_horizon_from_another_store_is_kept_by_all(make_store: Factory) -> None:
    """A store whose policy looks back 1 h deletes nothing a 1 d policy elsewhere still reads."""
    short, long = make_store(), make_store()
    now = 1_000_000.0
    for at in (now - 2 * 86400, now - 7200, now - 60):
        short.remember(FlowEvent("s", "read", "crm", {}, at))
    long.forget_events(86400.0, now)  # another process runs a policy with `within: 1d`
    while short.forget_events(3600.0, now):
        pass
    assert _events(short, ["s"]) == [now - 7200, now - 60]
    # the horizon never shrinks by itself: a shorter policy later still keeps a day
    while short.forget_events(60.0, now + 3600):
        pass
    assert _events(long, ["s"]) == [now - 7200, now - 60]


def test_a_whole_session_look_back_stops_forgetting(make_store: Factory) -> None:
    """Once a policy looks over whole sessions, no event is ever too old to be needed."""
    store = make_store()
    store.remember(FlowEvent("s", "read", "crm", {}, 1.0))
    assert store.forget_events(None, 1_000_000.0) is False
    assert store.forget_events(60.0, 2_000_000.0) is False
    assert _events(store, ["s"]) == [1.0]


def test_forgetting_is_bounded_per_call(make_store: Factory) -> None:
    """One call deletes a bounded number of events and says more are left; later calls finish."""
    store = make_store()
    for n in range(FORGET_ROWS + 50):
        store.remember(FlowEvent("big", "read", "crm", {}, float(n)))
    store.remember(FlowEvent("young", "read", "crm", {}, 90_000.0))
    assert store.forget_events(60.0, 90_000.0) is True
    assert len(_events(store, ["big"])) == 50
    calls = 1
    while store.forget_events(60.0, 90_000.0):
        calls += 1
    assert calls <= 3
    assert _events(store, ["big", "young"]) == [90_000.0]


def test_forgetting_notes_up_to_when_each_session_lost_events(make_store: Factory) -> None:
    """What was deleted leaves a mark per session, shared by every store on the data: a flow
    rule must not read "deleted" as "never ran"."""
    store, other = make_store(), make_store()
    for at in (1.0, 2.0):
        store.remember(FlowEvent("old", "read", "crm", {}, at))
    store.remember(FlowEvent("young", "read", "crm", {}, 90_000.0))
    assert store.forgotten("old") is None
    while store.forget_events(60.0, 90_000.0):
        pass
    cutoff = 90_000.0 - 60.0 - EVENT_MARGIN
    assert other.forgotten("old") == cutoff
    assert other.forgotten("young") is None  # nothing of it went
    assert other.forgotten("never") is None
    # a later, shorter deletion never moves the mark back
    store.remember(FlowEvent("old", "read", "crm", {}, 89_000.0))
    while store.forget_events(60.0, 90_000.0 + 3600):
        pass
    assert other.forgotten("old") == cutoff + 3600


def test_a_gap_stands_in_for_events_only_while_no_policy_looks_back(make_store: Factory) -> None:
    """cover_events writes a gap (as forgotten() then says, to every store on the data) only
    while the horizon kept is exactly 0; before any horizon is told, or once one above 0 or a
    whole session is, it writes nothing and says events must be noted."""
    store, other = make_store(), make_store()
    assert isinstance(store, CoversEvents)
    assert store.cover_events("s", 100.0) is False  # no policy told the store yet
    assert other.forgotten("s") is None
    store.forget_events(0.0, 50.0)
    assert store.cover_events("s", 100.0) is True
    assert other.forgotten("s") == 100.0
    assert store.cover_events("s", 90.0) is True  # a gap never moves back
    assert other.forgotten("s") == 100.0
    assert store.cover_events("s", 130.0) is True
    assert other.forgotten("s") == 130.0
    other.forget_events(3600.0, 60.0)  # another process's flow rule looks back an hour
    assert store.cover_events("t", 160.0) is False
    assert other.forgotten("t") is None
    store.forget_events(0.0, 70.0)  # the longest horizon told stays: no cover
    assert store.cover_events("t", 170.0) is False
    other.forget_events(None, 80.0)  # a whole session
    assert store.cover_events("t", 180.0) is False
    assert other.forgotten("t") is None


def test_sqlite_a_horizon_edited_by_hand_covers_nothing(tmp_path: Path) -> None:
    """A horizon that is not a number (edited by hand) is no 0: events are noted."""
    path = tmp_path / "aegis_audit.db"
    with SQLiteUsageStore(path) as store:
        store.forget_events(0.0, 10.0)
        for edited in ("'none'", "-0.5", "NULL"):
            with sqlite3.connect(path) as conn:
                conn.execute(f"UPDATE aegis_flow_horizon SET seconds = {edited}")
            assert store.cover_events("s", 100.0) is False
        assert store.forgotten("s") is None


def test_sqlite_a_gap_edited_by_hand_fails_closed(tmp_path: Path) -> None:
    """A gap that is not a time cannot say what is gone: asking for it raises StoreError."""
    path = tmp_path / "aegis_audit.db"
    with SQLiteUsageStore(path) as store:
        store.remember(FlowEvent("s", "read", "crm", {}, 1.0))
        store.forget_events(0.0, 10_000.0)
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE aegis_flow_gaps SET until = 'soon'")
        with pytest.raises(StoreError, match="aegis_flow_gaps was edited by hand"):
            store.forgotten("s")


def test_forgetting_walks_many_sessions_a_slice_at_a_time(make_store: Factory) -> None:
    """More sessions than one call looks at: each call takes a slice, and all old ones go."""
    store = make_store()
    count = FORGET_SESSIONS + 30
    names = [f"s{n:04}" for n in range(count)]
    for name in names:
        store.remember(FlowEvent(name, "read", "crm", {}, 5.0))
    store.remember(FlowEvent("s0100", "read", "crm", {}, 80_000.0))  # young: stays
    calls = 1
    while store.forget_events(60.0, 80_000.0):
        calls += 1
        assert calls < 5
    assert _events(store, names) == [80_000.0]
    # the SQL stores look at FORGET_SESSIONS sessions per call; memory has no walk to slice
    assert calls == (1 if isinstance(store, MemoryUsageStore) else 2)


@pytest.mark.parametrize("edit", ["'short'", "-5", "-9e999"])
def test_sqlite_a_hand_edited_horizon_keeps_every_event(tmp_path: Path, edit: str) -> None:
    """A horizon typed into nonsense by hand is taken as a whole session: nothing is deleted."""
    path = tmp_path / "aegis_audit.db"
    with SQLiteUsageStore(path) as store:
        store.remember(FlowEvent("s", "read", "crm", {}, 1.0))
        store.remember(FlowEvent("s", "read", "crm", {}, 900_000.0))
        assert store.forget_events(86400.0, 2.0) is False  # a 1 d window elsewhere
        with sqlite3.connect(path) as conn:
            conn.execute(f"UPDATE aegis_flow_horizon SET seconds = {edit}")
        assert store.forget_events(60.0, 1_000_000.0) is False
        assert _events(store, ["s"]) == [1.0, 900_000.0]


def test_a_clock_stepped_ahead_deletes_only_what_time_really_made_old(
    make_store: Factory,
) -> None:
    """A wall clock stepped a day ahead (to be set back later) while a store is open deletes
    only events older than the window by the time that really passed: set back, the flow
    rules still find the events of the last hour (SQLite's and memory's processes have no
    server clock, so the store counts from its monotonic clock since it opened)."""
    store = make_store()
    real = time.time()
    for age in (3 * 3600, 30 * 60):  # past a 1 h window, and inside it
        store.remember(FlowEvent("s", "read", "crm", {}, real - age))
    while store.forget_events(3600.0, real + 86400):
        pass
    assert [round((real - e.at) / 60) for e in store.recall("s", None, None)] == [30]


def test_postgres_a_client_clock_ahead_deletes_only_by_the_servers(postgres_dsn: str) -> None:
    """A process whose clock runs a day ahead deletes only what the server's clock says is old."""
    store = PostgresUsageStore(postgres_dsn)
    real = time.time()
    try:
        for age in (3 * 3600, 30 * 60):  # past a 1 h window, and inside it
            store.remember(FlowEvent("s", "read", "crm", {}, real - age))
        while store.forget_events(3600.0, real + 86400):
            pass
        assert [round((real - e.at) / 60) for e in store.recall("s", None, None)] == [30]
    finally:
        store.close()


@pytest.mark.parametrize("edit", ["-5", "'-Infinity'", "'NaN'"])
def test_postgres_a_hand_edited_horizon_keeps_every_event(postgres_dsn: str, edit: str) -> None:
    """The same on PostgreSQL: a horizon below zero or not a number deletes nothing."""
    import psycopg

    store = PostgresUsageStore(postgres_dsn)
    try:
        store.remember(FlowEvent("s", "read", "crm", {}, 1.0))
        store.remember(FlowEvent("s", "read", "crm", {}, 900_000.0))
        assert store.forget_events(86400.0, 2.0) is False  # a 1 d window elsewhere
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(f"UPDATE aegis_flow_horizon SET seconds = {edit}")
        assert store.forget_events(60.0, 1_000_000.0) is False
        assert _events(store, ["s"]) == [1.0, 900_000.0]
    finally:
        store.close()
