"""Usage counters: what rate limits, budgets and flow conditions count, kept in a store.

A :class:`UsageStore` keeps two things beside the audit trail (in the same
SQLite file or PostgreSQL database):

- **reservations**, one per action and counter (:class:`~aegis.core.limits.Charge`),
  each with its time, so that a sliding window is a sum over the rows newer
  than ``now - window``; :meth:`UsageStore.acquire` checks a counter and
  reserves in **one atomic step**, so concurrent tasks and processes can
  never pass a limit together;
- **flow events**, the actions of a session that were let through to run,
  which ``after`` / ``not_after`` conditions look for, each asking for the
  newest event it accepts (:meth:`UsageStore.latest_event`), so that a
  long session costs a check no more than a short one. Events older than
  any flow condition looks back are deleted now and then
  (:meth:`UsageStore.forget_events`): the store keeps the longest look-back
  (the *horizon*) any policy declared to it, so one process's shorter
  window never deletes what another's longer one still reads.

Three engines implement it: :class:`MemoryUsageStore` here (one process),
:class:`aegis.stores.sqlite.usage.SQLiteUsageStore` and
:class:`aegis.stores.postgres.usage.PostgresUsageStore`. One contract test
suite runs against all three.
"""

from __future__ import annotations

import heapq
import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import aegis.core.action as _action
from aegis.core.action import MARK_TEXT, FrozenDict, _marked, _unmarked, freeze, thaw
from aegis.core.limits import Charge, FlowEvent, flow_event
from aegis.errors import StoreError
from aegis.stores.base import Acquired, Request, UsageStore

__all__ = [
    "EVENT_MARGIN",
    "FORGET_ROWS",
    "FORGET_SESSIONS",
    "Acquired",
    "MemoryUsageStore",
    "Request",
    "SteadyClock",
    "UsageStore",
    "check_storable",
    "event_from_row",
    "judge",
    "needs_no_events",
    "params_json",
    "unencodable",
    "widest",
]

#: flow events are kept this much longer than the horizon (seconds): another
#: machine's clock may stamp its events a little in the past
EVENT_MARGIN: Final = 300.0
#: flow events one :meth:`UsageStore.forget_events` deletes, at most
FORGET_ROWS: Final = 1000
#: sessions one :meth:`UsageStore.forget_events` looks at, at most (the SQL stores)
FORGET_SESSIONS: Final = 500


#: a clock that counts on through a suspend where Linux has one, else the monotonic clock
_STEADY: Final = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


class SteadyClock:
    """The wall clock when it was made, moved on by a clock no one sets: immune to steps.

    A store deletes flow events by the time its caller gives; a wall clock
    stepped ahead (by hand, or a bad time source, to be set back later)
    would delete events still inside every window, for good. :meth:`cap`
    gives the earlier of that time and the time that really passed since.
    """

    __slots__ = ("_offset",)

    def __init__(self) -> None:
        self._offset = time.time() - time.clock_gettime(_STEADY)

    def cap(self, now: float) -> float:
        """``now``, or the wall time since this clock was made, when that is earlier."""
        steady = self._offset + time.clock_gettime(_STEADY)
        return now if now <= steady else steady


def widest(kept: object, given: float | None) -> float | None:
    """The horizon to keep: the longer of the stored one (``kept``) and ``given``.

    ``None`` (a whole session) is the longest. A stored value that is not a
    number of seconds (edited by hand: text, NaN, or below zero, which
    would have deleted what a longer window declared before still reads)
    counts as ``None``: when in doubt, keep events.
    """
    if given is None or not isinstance(kept, float | int) or not kept >= 0:
        return None
    return max(float(kept), given)


def needs_no_events(kept: object) -> bool:
    """Whether a stored horizon says no policy looks back at all: exactly 0 seconds.

    ``None`` (a whole session), a number above 0, a value never told and
    anything edited by hand all need events kept.
    """
    return type(kept) in (int, float) and kept == 0


def params_json(params: Any) -> str:
    """A flow event's params as stored: canonical JSON, odd values as their repr."""
    cached = _action.PARAMS_TEXT
    if cached[0] is params:  # an action's params just encoded: the same text (see PARAMS_TEXT)
        return cached[1]
    data = params._data if type(params) is FrozenDict else None
    if data is not None and _flat_params is not None:
        # Every action let through is noted: the usual flat params (text and
        # numbers, no container) skip thaw's copy and json.dumps's per-call
        # encoder, for the very text json.dumps gives (tests/stores/test_usage_contract.py).
        for key, item in data.items():
            if type(key) is not str or type(item) not in _FLAT_PARAMS:
                break
        else:
            try:
                return "".join(_flat_params(data, 0))
            except ValueError:
                pass  # an int past the digit limit: written below, as canonical_json does
    try:
        text = json.dumps(thaw(params), sort_keys=True, separators=(",", ":"), default=repr)
    except ValueError:  # an int past the 4,300-digit limit of int -> str (an Action takes one)
        pass
    else:
        if MARK_TEXT not in text:  # else a mapping shaped like a mark, maybe: escaped
            return text
    marked = thaw(_marked(params))
    return json.dumps(marked, sort_keys=True, separators=(",", ":"), default=repr)


def check_storable(event: FlowEvent, *, holds_nul: bool = True) -> None:
    """Refuse ``event`` when the store cannot keep it, before it joins others in one transaction.

    Concurrent actions' events are written together: one that cannot be
    written (a name with a lone surrogate, which UTF-8 has not; a NUL, for
    a store whose text cannot hold one: ``holds_nul=False``, PostgreSQL's)
    would fail its innocent siblings too. Checked in the task of its own
    action, it fails that action alone. (Params are JSON text, where a NUL
    is escaped.)

    Raises:
        StoreError: a name that is not valid Unicode or holds a NUL the
            store cannot keep, or params that cannot be encoded.
    """
    if not holds_nul and (
        "\x00" in event.session_id or "\x00" in event.type or "\x00" in event.target
    ):
        raise StoreError(
            "cannot note the action's flow event: its session, type or target holds a NUL "
            "(0x00), which this store's text cannot keep"
        )
    try:
        event.session_id.encode()
        event.type.encode()
        event.target.encode()
        # An Action's params (a FrozenDict) always encode: plain values, at most
        # 100 deep, an int past the digit limit marked (params_json); the text
        # is ASCII (ensure_ascii). Other mappings are tried. Speed: encoding
        # them here and again in the batch cost each gathered action ~3k instructions.
        if type(event.params) is not FrozenDict:
            params_json(event.params)
    except UnicodeEncodeError as exc:
        raise unencodable("note", "the action's flow event", exc) from None
    except (TypeError, ValueError, RecursionError) as exc:
        raise StoreError(
            f"cannot note the action's flow event: its params do not encode ({exc})"
        ) from exc


_c_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)
# json.dumps's encoder for params_json's options, built once, for values
# without containers (so without the circular check, which only containers need)
_flat_params: Any = (
    None
    if _c_make_encoder is None
    else _c_make_encoder(
        None, repr, json.encoder.encode_basestring_ascii, None, ":", ",", True, False, True
    )
)
_FLAT_PARAMS: Final = frozenset({str, int, float, bool, type(None)})


def unencodable(doing: str, where: str, exc: UnicodeEncodeError) -> StoreError:
    """The error for text a database cannot hold: a lone surrogate, which UTF-8 has not.

    A model's JSON can carry one (``"\\ud800"``) into a tool's name or a
    session id; the action is refused (it could not be remembered or looked
    up), never run unseen by a flow condition.
    """
    bad = exc.object[exc.start : exc.end] if isinstance(exc.object, str) else ""
    return StoreError(
        f"cannot {doing} {where}: a name holds {bad!a}, a lone surrogate that UTF-8 cannot"
        " encode; pass valid Unicode text as the action's type and target and the session id"
    )


def event_from_row(row: Sequence[Any], where: str) -> FlowEvent:
    """A flow event read back as ``(session_id, type, target, params JSON, at)``.

    The params are frozen as an :class:`~aegis.core.action.Action` holds
    them (lists as tuples, mappings as ``FrozenDict``): a flow condition's
    ``param_eq: {ids: [1, 2]}`` compares a tuple, and a JSON list would
    equal nothing, letting a ``not_after`` through.
    ``where`` names the database for the error ("in 'aegis_audit.db'").

    Raises:
        StoreError: the params column is not JSON (the table was edited by hand).
    """
    session_id, kind, target, params, at = row
    try:
        loaded = json.loads(params)
        if type(params) is not str or MARK_TEXT in params:  # a mark: what it stands for
            loaded = _unmarked(loaded)
        frozen = freeze(loaded) if isinstance(loaded, dict) else _NO_PARAMS
    except (TypeError, ValueError) as exc:  # not JSON, or NaN / too deep: no Action's params
        raise StoreError(
            f"a flow event {where} holds params that are not an action's JSON ({params!r});"
            " the table aegis_flow_events was edited by hand"
        ) from exc
    return flow_event(str(session_id), str(kind), str(target), frozen, at)


_NO_PARAMS: Final = FrozenDict()
#: a param of one of these types reads back from JSON as it was
_SCALARS: Final = frozenset({str, int, float, bool, type(None)})
#: an int below this prints under any digit limit Python allows (640 at least); a longer
#: one may be stored as canonical_json's marked text (params_json), so it makes the trip
_PRINTABLE: Final = 10**600


def _as_stored(event: FlowEvent) -> FlowEvent:
    """``event`` with its params as a database store reads them back (:func:`event_from_row`).

    Sets become sorted tuples, lists tuples, mappings ``FrozenDict``: the
    memory store keeps this, so that a flow condition decides alike on
    every engine. Params of plain scalars (the usual tool call) are kept as
    they are, without the round trip.
    """
    params = event.params
    if type(params) is FrozenDict and all(
        type(v) in _SCALARS and (type(v) is not int or -_PRINTABLE < v < _PRINTABLE)
        for v in params.values()
    ):
        return event
    try:
        frozen = freeze(_unmarked(json.loads(params_json(params))))
    except (TypeError, ValueError) as exc:
        raise StoreError(f"a flow event's params are not an action's ({exc})") from exc
    return FlowEvent(event.session_id, event.type, event.target, frozen, event.at)


def judge(charges: Sequence[Charge], used: Sequence[int]) -> int | None:
    """The index of the first charge that would pass its maximum, or ``None``.

    Every engine decides with this one function, so that they agree.

    Raises:
        ValueError: two charges name the same counter (one action counts once
            on a counter; a rule's limit and budget are two counters).
    """
    if len(charges) > 1 and len({charge.bucket for charge in charges}) != len(charges):
        raise ValueError(f"one request charges a counter twice: {[c.bucket for c in charges]}")
    for index, (charge, already) in enumerate(zip(charges, used, strict=True)):
        if already + charge.amount > charge.maximum:
            return index
    return None


_NEVER_TOLD: Final = object()


class _Counter:
    """One counter of a :class:`MemoryUsageStore`: its live rows by end, and their sum."""

    __slots__ = ("ends", "total", "window")

    def __init__(self) -> None:
        self.ends: list[tuple[float, int]] = []  # a heap of (end of the window, row id)
        self.total = 0  # units of the rows not yet past their window
        #: the window every live row was reserved with; -1.0 when they differ
        self.window: float | None = None


class MemoryUsageStore:
    """A :class:`UsageStore` in this process's memory: for tests and in-memory audits.

    Counts are lost when the process ends and not shared with other
    processes; use the SQLite or PostgreSQL store for those. A check costs
    the same however many reservations a window holds; a flow condition
    reads its session's events newer than its newest match, and all of them
    once one of the session's events was noted out of time order.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[int, tuple[str, float, int, float]] = {}  # id -> bucket, at, units, end
        self._counters: dict[str, _Counter] = {}
        #: each session's flow events, as noted: every action let through is one, so a
        #: condition reads its own session's only
        self._events: dict[str, list[FlowEvent]] = {}
        #: the sessions whose events were noted out of time order (the newest match is
        #: then not the last one: all are read)
        self._unordered: set[str] = set()
        self._horizon: object = _NEVER_TOLD  # the longest look-back declared (forget_events)
        #: session -> the time up to which its events may have been deleted (forgotten)
        self._gaps: dict[str, float] = {}
        self._steady = SteadyClock()  # forget_events counts from it when the wall clock is ahead
        self._next = 1
        self._closed = False

    def __repr__(self) -> str:
        events = sum(len(noted) for noted in self._events.values())
        return f"<MemoryUsageStore {len(self._rows)} reservations, {events} events>"

    def _check(self) -> None:
        if self._closed:
            raise StoreError("this usage store is closed; create a new one")

    def _used(self, charge: Charge, now: float) -> int:
        """The units in ``charge``'s window, forgetting the rows past their own."""
        counter = self._counters.get(charge.bucket)
        if counter is None:
            return 0
        rows, ends = self._rows, counter.ends
        while ends and ends[0][0] <= now:
            _, row = heapq.heappop(ends)
            found = rows.pop(row, None)
            if found is not None:  # not released meanwhile
                counter.total -= found[2]
        if not ends:
            del self._counters[charge.bucket]
            return 0
        if counter.window == charge.window:
            # every live row ends after now, i.e. began after now - window
            return counter.total
        since = now - charge.window  # rows reserved with another window: look at each
        return sum(rows[r][2] for _, r in ends if r in rows and rows[r][1] > since)

    def acquire(
        self, charges: Sequence[Charge], now: float, *, reserve: bool, over: bool
    ) -> Acquired:
        """See :meth:`UsageStore.acquire`."""
        with self._lock:
            self._check()
            used = [self._used(charge, now) for charge in charges]
            exceeded = judge(charges, used)
            if not reserve or (exceeded is not None and not over):
                return Acquired(tuple(used), exceeded, None)
            reserved: list[object] = []
            for charge in charges:
                row = self._next
                self._next += 1
                end = now + charge.window
                self._rows[row] = (charge.bucket, now, charge.amount, end)
                counter = self._counters.get(charge.bucket)
                if counter is None:
                    counter = self._counters[charge.bucket] = _Counter()
                    counter.window = charge.window
                elif counter.window != charge.window:
                    counter.window = -1.0
                heapq.heappush(counter.ends, (end, row))
                counter.total += charge.amount
                reserved.append(row)
            return Acquired(tuple(used), exceeded, tuple(reserved))

    def acquire_many(self, requests: Sequence[Request]) -> list[Acquired]:
        """See :meth:`UsageStore.acquire_many`."""
        return [self.acquire(r.charges, r.now, reserve=True, over=r.over) for r in requests]

    def release(self, reservation: Sequence[object]) -> None:
        """See :meth:`UsageStore.release`."""
        with self._lock:
            self._check()
            for row in reservation:
                if type(row) is not int:
                    raise TypeError(f"{row!r} is not a reservation of this memory store")
                found = self._rows.pop(row, None)
                if found is not None:
                    self._counters[found[0]].total -= found[2]  # its heap entry is skipped later

    def remember(self, event: FlowEvent) -> None:
        """See :meth:`UsageStore.remember`."""
        self._keep(event)

    def remember_many(self, events: Sequence[FlowEvent]) -> list[FlowEvent]:
        """Keep ``events``, as :meth:`remember` each; their ids are the events as kept."""
        return [self._keep(event) for event in events]

    def _keep(self, event: FlowEvent) -> FlowEvent:
        """Keep ``event`` as a database store reads it back; the very object kept."""
        event = _as_stored(event)
        with self._lock:
            self._check()
            events = self._events.get(event.session_id)
            if events is None:
                self._events[event.session_id] = [event]
                return event
            if event.at < events[-1].at:  # noted late: search them all from now on
                self._unordered.add(event.session_id)
            events.append(event)
            return event

    def drop_events(self, event_ids: Sequence[object]) -> None:
        """Delete the events :meth:`remember_many` returned: their actions never ran."""
        with self._lock:
            self._check()
            for kept in event_ids:
                if type(kept) is not FlowEvent:
                    raise StoreError(f"{kept!r} is not the id of a flow event of this store")
                events = self._events.get(kept.session_id, [])
                # the newest first: an event is dropped soon after it was noted
                for index in range(len(events) - 1, -1, -1):
                    if events[index] is kept:
                        del events[index]
                        break

    def recall(
        self, session_id: str, since: float | None, action_type: str | None
    ) -> list[FlowEvent]:
        """See :meth:`UsageStore.recall`."""
        with self._lock:
            self._check()
            return [
                e
                for e in self._events.get(session_id, ())
                if (since is None or e.at > since)
                and (action_type is None or e.type == action_type)
            ]

    def latest_event(
        self,
        session_id: str,
        since: float | None,
        where: Callable[[FlowEvent], bool] | None = None,
        *,
        action_type: str | None = None,
        action_target: str | None = None,
        passing: object = None,
    ) -> FlowEvent | None:
        """See :meth:`UsageStore.latest_event`: the session's events, newest first."""
        if passing is not None and type(passing) is not FlowEvent:
            raise StoreError(f"{passing!r} is not the id of a flow event of this store")
        with self._lock:
            self._check()
            found: FlowEvent | None = None
            in_order = session_id not in self._unordered
            for event in reversed(self._events.get(session_id, ())):
                if since is not None and event.at <= since:
                    if in_order:
                        break  # every event before it is older too
                    continue
                if (
                    (action_type is not None and event.type != action_type)
                    or (action_target is not None and event.target != action_target)
                    or (found is not None and event.at <= found.at)
                    or event is passing
                    or (where is not None and not where(event))
                ):
                    continue
                if in_order:
                    return event  # the last noted match is the newest
                found = event
            return found

    def forget_events(self, horizon: float | None, now: float) -> bool:
        """See :meth:`UsageStore.forget_events`."""
        with self._lock:
            self._check()
            if self._horizon is not _NEVER_TOLD:
                horizon = widest(self._horizon, horizon)
            self._horizon = horizon
            if horizon is None:
                return False
            cutoff = self._steady.cap(now) - horizon - EVENT_MARGIN
            left = FORGET_ROWS
            for session, events in list(self._events.items()):
                old = [i for i, e in enumerate(events) if e.at <= cutoff][:left]
                if not old:
                    continue
                gone = set(old)
                kept = [e for i, e in enumerate(events) if i not in gone]
                if kept:
                    self._events[session] = kept
                else:
                    del self._events[session]
                    self._unordered.discard(session)
                # what went: a condition looking back past it cannot say never
                self._gaps[session] = max(self._gaps.get(session, cutoff), cutoff)
                left -= len(old)
                if not left:
                    return True
            return False

    def cover_events(self, session_id: str, until: float) -> bool:
        """See :meth:`aegis.stores.base.CoversEvents.cover_events`."""
        with self._lock:
            self._check()
            if not needs_no_events(self._horizon):
                return False
            self._gaps[session_id] = max(self._gaps.get(session_id, until), until)
            return True

    def forgotten(self, session_id: str) -> float | None:
        """See :meth:`UsageStore.forgotten`."""
        with self._lock:
            self._check()
            return self._gaps.get(session_id)

    def close(self) -> None:
        """Mark the store closed (its counts are dropped)."""
        with self._lock:
            self._closed = True
            self._rows.clear()
            self._counters.clear()
            self._events.clear()
