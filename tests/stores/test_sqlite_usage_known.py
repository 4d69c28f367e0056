"""SQLite counters that a connection keeps in memory between its own transactions.

A sequential action's charge is checked inside the transaction that appends
its start record (``SQLiteAuditStore.append_guarded`` with the usage store's
guard). While ``PRAGMA data_version`` says no other connection committed,
the connection counts a counter it knows without reading it. These tests
hold that to one rule: the guard counts exactly what a fresh connection
reading the file counts at the same moment, whatever else writes the file
(another connection, the same connection's group path, releases, a hand
edit), and whatever the clock does.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aegis.core.action import Action
from aegis.core.decision import Approval, PolicyDecision
from aegis.core.limits import Charge
from aegis.core.record import start_draft
from aegis.core.risk import RiskLevel
from aegis.errors import StoreError
from aegis.stores.sqlite.audit import SQLiteAuditStore
from aegis.stores.sqlite.usage import SQLiteUsageStore, StartGuard
from aegis.stores.usage import Acquired, Request

_DECISION = PolicyDecision(Action("send_email", "smtp"), RiskLevel.LOW, Approval.AUTO, "r")


class Trail:
    """An audit file with its usage counters on the same connection, and two other connections."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.audit = SQLiteAuditStore(str(path))
        self.usage = SQLiteUsageStore(database=self.audit.db)
        self.writer = SQLiteUsageStore(path)  # another process's store
        self.reader = SQLiteUsageStore(path)  # looks, never writes

    def start(self, charge: Charge, now: float) -> Acquired | None:
        """Append a start with ``charge`` reserved; ``None`` if it went in, else what was found."""
        guard = self.usage.guard(Request((charge,), now, over=False), None)
        record = self.audit.append_guarded(start_draft("s", _DECISION), guard)
        if record is not None:
            return None
        assert guard.acquired is not None
        return guard.acquired

    def truth(self, charge: Charge, now: float) -> int:
        """What a fresh look at the file counts."""
        return self.reader.acquire([charge], now, reserve=False, over=False).used[0]

    def counted(self, charge: Charge, now: float) -> int:
        """What a start counts in the counter, asked by one that cannot fit (it writes nothing)."""
        refused = self.start(Charge(charge.bucket, 1, 0, charge.window), now)
        assert refused is not None
        return refused.used[0]

    def close(self) -> None:
        for store in (self.reader, self.writer, self.usage, self.audit):
            store.close()


@pytest.fixture
def trail(tmp_path: Path) -> Iterator[Trail]:
    opened = Trail(tmp_path / "aegis_audit.db")
    yield opened
    opened.close()


def _start_many(trail: Trail, charge: Charge, count: int) -> None:
    """``count`` starts that fit, a second apart from 10.0: the counter is then known."""
    for n in range(count):
        assert trail.start(charge, 10.0 + n) is None


def _statements(trail: Trail) -> list[str]:
    seen: list[str] = []
    with trail.audit.db.connection("trace") as conn:
        conn.set_trace_callback(lambda sql: seen.append(sql.split()[0]))
    return seen


def test_a_known_counter_is_counted_without_reading_it(trail: Trail) -> None:
    """From the third start on, only the version is asked: no SELECT of the counter."""
    charge = Charge("c", 1, 100, 60.0)
    _start_many(trail, charge, 3)
    seen = _statements(trail)
    for n in range(5):
        assert trail.start(charge, 20.0 + n) is None
    assert "SELECT" not in seen
    assert seen.count("PRAGMA") == 5
    assert trail.truth(charge, 30.0) == 8


def test_another_connections_reservations_count_at_once(trail: Trail) -> None:
    """A counter known in memory is read again as soon as another connection wrote."""
    charge = Charge("c", 1, 5, 60.0)
    _start_many(trail, charge, 3)
    assert trail.writer.acquire([charge], 14.0, reserve=True, over=False).reserved
    assert trail.start(charge, 15.0) is None  # the fifth fits
    refused = trail.start(charge, 16.0)
    assert refused is not None
    assert refused.used == (5,)


def test_while_others_keep_writing_the_file_is_read_without_asking(trail: Trail) -> None:
    """After a few starts that each found another writer's commit, the version is not asked."""
    charge = Charge("c", 1, 1000, 60.0)
    for n in range(4):  # each start finds the other connection's reservation: stirred
        assert trail.writer.acquire([charge], 10.0 + n, reserve=True, over=False).reserved
        assert trail.start(charge, 10.5 + n) is None
    seen = _statements(trail)
    for n in range(3):
        assert trail.writer.acquire([charge], 20.0 + n, reserve=True, over=False).reserved
        assert trail.counted(charge, 20.5 + n) == trail.truth(charge, 20.5 + n) == 9 + 2 * n
        assert trail.start(charge, 20.5 + n) is None
    assert "PRAGMA" not in seen
    assert seen.count("SELECT") == 6  # each count read from the file


def test_a_hand_edit_of_a_known_counter_is_seen_at_once(trail: Trail) -> None:
    """Nonsense typed into a counter the connection knows fails the next start, closed."""
    charge = Charge("c", 1, 100, 60.0)
    _start_many(trail, charge, 4)
    with sqlite3.connect(trail.path) as conn:
        conn.execute("UPDATE aegis_usage SET total = 'lots'")
    with pytest.raises(StoreError, match="edited by hand"):
        trail.start(charge, 20.0)


def test_rows_deleted_by_hand_are_not_counted_from_memory(trail: Trail) -> None:
    """A plausible edit (the rows deleted) is counted as the file says, not as remembered."""
    charge = Charge("c", 1, 3, 60.0)
    _start_many(trail, charge, 3)
    assert trail.start(charge, 13.0) is not None  # full
    with sqlite3.connect(trail.path) as conn:
        conn.execute("DELETE FROM aegis_usage")
    assert trail.start(charge, 14.0) is None
    assert trail.truth(charge, 14.5) == 1


def test_the_same_connections_other_writes_are_not_missed(trail: Trail) -> None:
    """The group path and releases on the same connection (no new version) drop what is known."""
    charge = Charge("c", 1, 4, 60.0)
    _start_many(trail, charge, 3)
    grouped = trail.usage.acquire_many([Request((charge,), 13.0, over=False)])[0]
    assert grouped.reserved
    refused = trail.start(charge, 14.0)
    assert refused is not None
    assert refused.used == (4,)
    trail.usage.release(grouped.reservation or ())
    assert trail.start(charge, 15.0) is None


def _start_fails_after_counting(trail: Trail, charge: Charge, now: float) -> None:
    """A start whose count is written, then its record refused by the trail (all rolled back)."""
    with trail.audit.db.connection("arm") as conn:  # the same connection: no new version
        conn.execute(
            "CREATE TEMP TRIGGER no_starts BEFORE INSERT ON main.audit_log"
            " BEGIN SELECT RAISE(ABORT, 'the disk said no'); END"
        )
    with pytest.raises(StoreError, match="the disk said no"):
        trail.start(charge, now)
    with trail.audit.db.connection("disarm") as conn:
        conn.execute("DROP TRIGGER no_starts")


def test_a_start_that_is_not_written_leaves_the_known_count_alone(trail: Trail) -> None:
    """A start refused by the trail after the count was written rolls both back, in memory too."""
    charge = Charge("c", 1, 4, 60.0)
    _start_many(trail, charge, 3)
    _start_fails_after_counting(trail, charge, 13.0)
    assert trail.start(charge, 14.0) is None  # the fourth, not the fifth
    assert trail.start(charge, 15.0) is not None


def test_a_failed_start_is_forgotten_even_if_another_kind_of_start_commits_next(
    trail: Trail,
) -> None:
    """A start with two charges committing after a failed one does not revive what it wrote."""
    charge = Charge("x", 1, 4, 60.0)
    _start_many(trail, charge, 3)
    _start_fails_after_counting(trail, charge, 13.0)
    pair = Request((Charge("y", 1, 9, 60.0), Charge("z", 1, 9, 60.0)), 14.0, over=False)
    assert trail.audit.append_guarded(start_draft("s", _DECISION), trail.usage.guard(pair, None))
    assert trail.counted(charge, 15.0) == trail.truth(charge, 15.0) == 3


def test_odd_rows_the_count_does_not_read_leave_the_counter_read_each_time(trail: Trail) -> None:
    """A row edited by hand in the middle of the window: counted from the file, not refused."""
    charge = Charge("c", 1, 100, 60.0)
    _start_many(trail, charge, 5)
    with sqlite3.connect(trail.path) as conn:
        conn.execute("UPDATE aegis_usage SET units = 'odd' WHERE seq = 3")
    for n in range(3):
        assert trail.counted(charge, 20.0 + n) == trail.truth(charge, 20.0 + n) == 5 + n
        assert trail.start(charge, 20.0 + n) is None


def test_a_window_slides_past_more_rows_than_are_kept(trail: Trail) -> None:
    """Past the rows kept in memory, the oldest of the window are read again, and count right."""
    charge = Charge("c", 1, 10_000, 10.0)
    for n in range(1, 500):  # 79 rows in a window, more than a counter keeps in memory
        now = n / 8  # exact binary fractions: a row leaves exactly at its window's end
        assert trail.counted(charge, now) == trail.truth(charge, now) == min(n - 1, 79)
        assert trail.start(charge, now) is None
    wide = Charge("c", 1, 10_000, 20.0)
    for n in range(500, 520):  # the same counter under a wider window: read again, then kept
        assert trail.counted(wide, n / 8) == trail.truth(wide, n / 8)
        assert trail.start(wide, n / 8) is None


def test_a_window_of_another_writers_rows_is_read_again_past_the_rows_kept(trail: Trail) -> None:
    """Only the oldest rows of a long window are kept: when they have all left, it is read."""
    charge = Charge("c", 1, 10_000, 20.0)
    for n in range(100):
        assert trail.writer.acquire([charge], n / 8, reserve=True, over=False).reserved
    for now in (12.5, 12.5, 27.0, 30.0):  # first sight; read and kept; then the window moves
        assert trail.counted(charge, now) == trail.truth(charge, now)
    assert trail.truth(charge, 30.0) == 19


def test_a_clock_that_goes_back_counts_the_rows_it_let_go_again(trail: Trail) -> None:
    """Rows let go of as the window moved count again when a later start has an earlier clock."""
    charge = Charge("c", 1, 100, 10.0)
    for now in (1.0, 2.0, 3.0, 4.0):
        assert trail.start(charge, now) is None
    assert trail.counted(charge, 12.5) == 2  # the rows at 1 and 2 have left
    assert trail.counted(charge, 11.5) == 3  # back: the row at 2 counts again
    assert trail.counted(charge, 11.0) == 3  # exactly the window's end: 1.0 is out
    assert trail.truth(charge, 11.0) == 3


def test_rows_forgotten_under_their_own_shorter_window_stop_counting(trail: Trail) -> None:
    """A row of a shorter window, forgotten by a trim, is not counted on from memory."""
    short = Charge("c", 1, 100, 2.0)
    assert trail.usage.acquire_many([Request((short,), 0.0, over=False)])[0].reserved
    long = Charge("c", 1, 100, 100.0)
    for n in range(63):  # the counter's 64th row trims it, and forgets the short one
        now = 2.5 + n / 64
        assert trail.counted(long, now) == trail.truth(long, now)
        assert trail.start(long, now) is None
    assert trail.counted(long, 3.5) == trail.truth(long, 3.5) == 63


def test_a_forked_child_readies_and_counts_on_its_own_connection(trail: Trail) -> None:
    """A child starts on a new connection: its tables are checked there, nothing kept is reused."""
    charge = Charge("c", 1, 6, 60.0)
    _start_many(trail, charge, 3)  # the parent's connection knows the counter: 3
    assert trail.writer.acquire([charge], 13.5, reserve=True, over=False).reserved  # 4 now
    pid = os.fork()
    if pid == 0:  # pragma: no cover  # the child reports through its exit status
        try:
            fits = trail.start(charge, 20.0) is None  # the fifth
            full = trail.start(Charge("c", 1, 5, 60.0), 21.0)  # a sixth would not fit in 5
            same = full is not None and full.used == (5,)
            os._exit(0 if fits and same else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # the parent's memory is stale (others wrote): it counts what the file holds
    assert trail.counted(charge, 22.0) == trail.truth(charge, 22.0) == 5
    assert trail.start(charge, 23.0) is None
    assert trail.start(charge, 24.0) is not None


_STEP = st.one_of(
    st.tuples(
        st.just("start"),
        st.sampled_from(["a", "b"]),
        st.sampled_from([0.0, 0.3, 1.0, 4.0, 11.0]),  # seconds since the last step
        st.integers(min_value=1, max_value=3),
    ),
    st.tuples(st.just("other"), st.sampled_from(["a", "b"]), st.just(0.5), st.just(1)),
    st.tuples(st.just("group"), st.sampled_from(["a", "b"]), st.just(0.5), st.just(2)),
    st.tuples(st.just("release"), st.sampled_from(["a", "b"]), st.just(0.0), st.just(0)),
    st.tuples(st.just("back"), st.just("a"), st.sampled_from([-0.5, -3.0]), st.just(0)),
)
_WINDOWS = {"a": 5.0, "b": 12.0}


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(steps=st.lists(_STEP, min_size=5, max_size=80))
def test_starts_count_what_the_file_holds_whatever_else_happens(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, str, float, int]]
) -> None:
    """Any mix of starts, other writers, group reservations, releases and clock jumps."""
    trail = Trail(tmp_path_factory.mktemp("known") / "aegis_audit.db")
    tokens: list[tuple[object, ...]] = []
    now = 1000.0
    try:
        for kind, name, gap, amount in steps:
            now += gap
            charge = Charge(name, amount, 6, _WINDOWS[name])
            if kind == "start":
                used = trail.truth(charge, now)
                assert trail.counted(charge, now) == used
                refused = trail.start(charge, now)
                assert (refused is None) == (used + amount <= 6)
                if refused is not None:
                    assert refused.used == (used,)
            elif kind in ("other", "group"):
                store = trail.writer if kind == "other" else trail.usage
                found = store.acquire_many([Request((charge,), now, over=True)])[0]
                tokens.append(found.reservation or ())
            elif kind == "release" and tokens:
                trail.usage.release(tokens.pop(0))
        for name, window in _WINDOWS.items():  # and the file adds up for a fresh reader
            probe = Charge(name, 1, 6, window)
            assert (
                trail.truth(probe, now)
                == trail.writer.acquire([probe], now, reserve=False, over=False).used[0]
            )
    finally:
        trail.close()


class _PlainGuard:
    """A guard of another module, written before Guard.ready and Guard.committed."""

    __slots__ = ("prepared",)

    def __init__(self) -> None:
        self.prepared = 0

    def prepare(self, conn: sqlite3.Connection) -> None:
        self.prepared += 1

    def __call__(self, cur: sqlite3.Cursor) -> bool:
        return True


def test_a_guard_without_the_new_fields_still_appends(trail: Trail) -> None:
    """No ``ready``: prepared every time; no ``committed`` slot: the append still returns."""
    guard = _PlainGuard()
    assert trail.audit.append_guarded(start_draft("s", _DECISION), guard) is not None
    assert trail.audit.append_guarded(start_draft("s", _DECISION), guard) is not None
    assert guard.prepared == 2


def test_a_start_guard_made_directly_counts_like_the_stores(trail: Trail) -> None:
    """StartGuard(store, request, event) is the guard the store's ``guard`` makes."""
    charge = Charge("c", 1, 2, 60.0)
    for now in (10.0, 11.0, 12.0):
        guard = StartGuard(trail.usage, Request((charge,), now, over=False), None)
        trail.audit.append_guarded(start_draft("s", _DECISION), guard)
    assert trail.truth(charge, 13.0) == 2
    assert guard.acquired is not None
    assert guard.acquired.used == (2,)
