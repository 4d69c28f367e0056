"""The audit store contract, run against every engine: memory, SQLite (and PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from store_engines import Engine

from aegis.core.action import Action
from aegis.core.chain import EMPTY_HEAD, GENESIS_HASH, record_hash, verify_chain
from aegis.core.decision import Approval, PolicyDecision
from aegis.core.filters import Filters
from aegis.core.record import DecisionStamp, RecordDraft, final_draft, start_draft
from aegis.core.result import Result, ResultStatus
from aegis.core.risk import RiskLevel
from aegis.errors import StoreError
from aegis.runtime.audit import AuditLogger
from aegis.stores.base import AuditStore

WRITER = Path(__file__).with_name("store_writer.py")


def decision(type: str = "read", n: int = 0, risk: RiskLevel = RiskLevel.LOW) -> PolicyDecision:
    """A decision on an action of ``type`` with param ``n``."""
    return PolicyDecision(Action(type, "crm", {"n": n}), risk, Approval.AUTO, f"{type}_rule")


def final(session: str = "s", type: str = "read", n: int = 0, **kw: object) -> RecordDraft:
    """The draft of a successful final record."""
    d = decision(type, n)
    status = kw.pop("status", ResultStatus.SUCCESS)
    return final_draft(session, d, Result(d.action, status, data={"n": n}), **kw)  # type: ignore[arg-type]  # test helper


def fill(store: AuditStore, count: int = 6) -> None:
    """Append ``count`` final records, alternating two sessions."""
    store.append([final(f"s{n % 2}", n=n) for n in range(count)])


# ---------------------------------------------------------------- append and head


def test_append_seals_consecutive_records_that_verify(store: AuditStore) -> None:
    """Appended drafts get ids 1.. in order, each linked to the one before."""
    first = store.append([final(n=0), final(n=1)])
    second = store.append([final(n=2)])
    records = [*first, *second]
    assert [r.id for r in records] == [1, 2, 3]
    assert records[0].prev_hash == GENESIS_HASH
    assert [r.prev_hash for r in records[1:]] == [r.hash for r in records[:-1]]
    assert list(store.records(Filters(view="records"))) == records
    report = store.verify()
    assert (report.ok, report.checked) == (True, 3)
    assert store.head() == report.head
    assert (store.head().count, store.head().hash) == (3, records[-1].hash)


def test_an_empty_store_has_the_empty_head_and_verifies(store: AuditStore) -> None:
    """Nothing appended: head is 0:<genesis> and verify passes with 0 records."""
    assert store.head() == EMPTY_HEAD
    report = store.verify(EMPTY_HEAD)
    assert (report.ok, report.checked) == (True, 0)


def test_every_field_round_trips(store: AuditStore) -> None:
    """What is appended is what is read back, field by field."""
    d = decision("refund", 7, RiskLevel.HIGH)
    stamp = DecisionStamp("2024-01-01T00:00:00.000000+00:00", "ab" * 32, {"agent": "x", "n": 2})
    [start] = store.append([start_draft("s", d, human_decision="approved by a", stamp=stamp)])
    result = Result(d.action, ResultStatus.FAILED, data=["ü", 1.5], error="boom")
    [done] = store.append(
        [final_draft("s", d, result, human_decision="approved by a", stamp=stamp, start_id=1)]
    )
    assert list(store.records(Filters(view="records"))) == [start, done]
    assert done.start_id == start.id == 1
    assert start.kind == "start"
    assert done.kind == "final"
    assert json.loads(done.context or "") == {"agent": "x", "n": 2}


def test_a_store_reopened_continues_the_chain(engine: Engine) -> None:
    """A second store object on the same location appends after the first one's head."""
    first = engine.open()
    first.append([final(n=1)])
    second = engine.open()
    second.append([final(n=2)])
    first.append([final(n=3)])
    assert [r.id for r in second.records()] == [1, 2, 3]
    assert second.verify().ok
    first.close()
    second.close()


# ---------------------------------------------------------------- reads


def test_filters_select_matching_records(store: AuditStore) -> None:
    """Session, type, risk and status filters combine with AND; limit and after_id page."""
    store.append(
        [
            final("a", "read", 1),
            final("b", "write", 2),
            final("a", "write", 3, status=ResultStatus.DENIED),
            final("a", "read", 4),
        ]
    )
    ids = lambda f, **kw: [r.id for r in store.records(f, **kw)]  # noqa: E731  # local shorthand
    assert ids(Filters.of("a")) == [1, 3, 4]
    assert ids(Filters.of(action_type="write")) == [2, 3]
    assert ids(Filters.of("a", result_status="denied")) == [3]
    assert ids(Filters.of(risk_level="low")) == [1, 2, 3, 4]
    assert ids(Filters.of(), limit=2) == [1, 2]
    assert ids(Filters.of(), after_id=2) == [3, 4]
    assert ids(Filters.of("a"), after_id=1, limit=1) == [3]
    assert store.count(Filters.of("a")) == 3
    assert store.count(Filters.of(since="2999-01-01")) == 0


def test_the_actions_view_shows_unfinished_starts_only(store: AuditStore) -> None:
    """A start with a final record is hidden in the actions view; one without shows."""
    d = decision("pay", 1)
    store.append([start_draft("s", d), start_draft("s", decision("pay", 2))])
    store.append([final_draft("s", d, Result(d.action, ResultStatus.SUCCESS), start_id=1)])
    actions = [(r.id, r.kind) for r in store.records()]
    assert actions == [(2, "start"), (3, "final")]
    assert [r.id for r in store.records(Filters(view="records"))] == [1, 2, 3]
    assert [r.id for r in store.unfinished()] == [2]
    assert store.count() == 2
    assert store.stats()["result_status"] == {"started": 1, "success": 1}
    assert store.verify().unfinished == (2,)


def test_stats_count_by_field(store: AuditStore) -> None:
    """stats counts actions by status, risk, rule and type."""
    fill(store, 4)
    stats = store.stats()
    assert stats["result_status"] == {"success": 4}
    assert stats["risk_level"] == {"LOW": 4}
    assert stats["matched_rule"] == {"read_rule": 4}
    assert stats["action_type"] == {"read": 4}
    assert store.stats(Filters.of("s0"))["action_type"] == {"read": 2}


def test_export_lines_rehash_and_include_starts(store: AuditStore) -> None:
    """Every exported line is valid JSON that rehashes to its hash, starts included."""
    store.append([start_draft("s", decision(n=1)), final(n=2)])
    lines = [json.loads(line) for line in store.export_lines(Filters(view="records"))]
    assert [line["kind"] for line in lines] == ["start", "final"]
    assert [record_hash(line) for line in lines] == [line["hash"] for line in lines]
    assert lines[1]["result_data"] == {"n": 2}


def test_exported_actions_mark_the_unfinished(store: AuditStore) -> None:
    """In the actions view, the line of a start without a final record says unfinished."""
    d = decision("pay", 1)
    store.append([start_draft("s", d), start_draft("s", decision("pay", 2))])
    store.append([final_draft("s", d, Result(d.action, ResultStatus.SUCCESS), start_id=1)])
    lines = [json.loads(line) for line in store.export_lines(Filters(view="actions"))]
    assert [(line["id"], line.get("unfinished")) for line in lines] == [(2, True), (3, None)]
    assert [record_hash(line) for line in lines] == [line["hash"] for line in lines]


# ---------------------------------------------------------------- concurrency


def test_threads_appending_at_once_keep_one_chain(engine: Engine) -> None:
    """Four threads, each with its own store object, append 50 batches; nothing forks."""
    stores = [engine.open() for _ in range(4)]

    def write(store: AuditStore, t: int) -> None:
        for n in range(50):
            store.append([final(f"t{t}", n=n), final(f"t{t}", n=n)])

    threads = [threading.Thread(target=write, args=(s, t)) for t, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report = stores[0].verify()
    assert (report.ok, report.checked) == (True, 400)
    assert all(stores[0].count(Filters.of(f"t{t}")) == 100 for t in range(4))
    for store in stores:
        store.close()


async def test_group_commit_through_the_logger(engine: Engine) -> None:
    """300 concurrent start + final pairs through AuditLogger: every action, one chain."""
    logger = AuditLogger(store=engine.open())

    async def act(n: int) -> int:
        d = decision(n=n)
        token = await logger.record_start("s", d)
        await asyncio.sleep(0)
        return await logger.record(
            "s", d, result=Result(d.action, ResultStatus.SUCCESS), start_token=token
        )

    ids = await asyncio.gather(*(act(n) for n in range(300)))
    assert len(set(ids)) == 300
    assert logger.pending() == []
    report = logger.verify()
    assert (report.ok, report.checked) == (True, 600)
    logger.close()


# ---------------------------------------------------------------- tampering


@pytest.fixture
def filled(engine: Engine) -> AuditStore:
    """A store of 6 records (a start and its final among them), and its engine."""
    store = engine.open()
    d = decision("pay", 9)
    store.append([final(n=1), final(n=2), start_draft("s", d)])
    store.append([final_draft("s", d, Result(d.action, ResultStatus.SUCCESS), start_id=3)])
    store.append([final(n=5), final(n=6)])
    return store


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("session_id", "other"),
        ("action_type", "delete"),
        ("action_params", '{"n":999}'),
        ("result_status", "failed"),
        ("result_data", '{"forged":1}'),
        ("human_decision", "approved"),
        ("context", '{"agent":"x"}'),
        ("decided_at", "2020-01-01T00:00:00.000000+00:00"),
        ("kind", "start"),
        ("start_id", 1),
    ],
)
def test_an_edited_field_is_caught_at_its_record(
    engine: Engine, filled: AuditStore, field: str, value: object
) -> None:
    """Changing any stored field of record 4 makes verify fail at record 4."""
    engine.update(4, **{field: value})
    report = engine.open().verify()
    assert (report.ok, report.first_bad_id) == (False, 4)


def test_a_deleted_record_is_caught(engine: Engine, filled: AuditStore) -> None:
    """A record removed from the middle is reported missing."""
    engine.delete(3)
    report = engine.open().verify()
    assert (report.ok, report.first_bad_id) == (False, 3)
    assert "missing" in report.reason


def test_records_swapped_are_caught(engine: Engine, filled: AuditStore) -> None:
    """Two records exchanging ids break the links."""
    engine.renumber(2, 100)
    engine.renumber(5, 2)
    engine.renumber(100, 5)
    report = engine.open().verify()
    assert (report.ok, report.first_bad_id) == (False, 2)


def test_a_consistent_rewrite_is_caught_by_a_kept_head(engine: Engine) -> None:
    """Rewriting the whole chain consistently passes alone but fails against a kept head."""
    store = engine.open()
    fill(store, 3)
    kept = store.head()
    for n in (3, 2, 1):
        engine.delete(n)
    store.append([final(n=10), final(n=11), final(n=12)])
    assert store.verify().ok
    report = store.verify(kept)
    assert not report.ok
    assert "rewritten" in report.reason


def test_a_truncated_tail_is_caught_by_a_kept_head(engine: Engine, filled: AuditStore) -> None:
    """Records cut off the end pass alone and fail against a kept head."""
    kept = filled.head()
    engine.delete(6)
    assert engine.open().verify().ok
    report = engine.open().verify(kept)
    assert (report.ok, report.first_bad_id) == (False, 6)


def test_a_final_record_claiming_another_start_is_caught() -> None:
    """verify_chain refuses a final record whose start_id names no unfinished start."""
    from aegis.core.chain import seal

    d = decision("pay", 1)
    start = seal(start_draft("s", d), 1, GENESIS_HASH)
    other = decision("pay", 2)
    wrong = seal(
        final_draft("s", other, Result(other.action, ResultStatus.SUCCESS), start_id=1),
        2,
        start.hash,
    )
    report = verify_chain([start, wrong])
    assert (report.ok, report.first_bad_id) == (False, 2)
    twice = seal(final_draft("s", d, None, start_id=1), 3, wrong.hash)
    again = seal(final_draft("s", d, None, start_id=1), 2, start.hash)
    report = verify_chain([start, again, twice._replace(prev_hash=again.hash)])
    assert not report.ok


# ---------------------------------------------------------------- opening and faults


def test_a_read_only_store_refuses_appends(persistent_engine: Engine) -> None:
    """A store opened read-only reads and verifies, and refuses to write."""
    writer = persistent_engine.open()
    fill(writer, 2)
    writer.close()
    reader = persistent_engine.open(readonly=True, create=False)
    reader.check()
    assert reader.count() == 2
    assert reader.verify().ok
    with pytest.raises(StoreError):
        reader.append([final()])
    assert reader.count() == 2
    reader.close()


def test_a_killed_writer_loses_no_committed_record(persistent_engine: Engine) -> None:
    """Every id a writer printed before SIGKILL is stored, and the chain verifies."""
    child = subprocess.Popen(
        [sys.executable, str(WRITER), persistent_engine.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    printed = [int(child.stdout.readline()) for _ in range(100)]
    child.send_signal(signal.SIGKILL)
    out, _ = child.communicate(timeout=60)
    printed += [int(line) for line in out.split("\n")[:-1]]
    store = persistent_engine.open(create=False)
    stored = {r.id for r in store.records(Filters(view="records"))}
    report = store.verify()
    store.close()
    assert set(printed) <= stored
    assert report.ok, report.reason
    # the writer appends a start then its final: an unfinished start at most
    assert len(report.unfinished) <= 1


def test_signed_checkpoints_are_kept_and_checked(engine: Engine, tmp_path: Path) -> None:
    """A store keeps checkpoints once per count; verify checks them with the public key."""
    from aegis.runtime.signing import Signer, generate_key_files, load_public_key
    from aegis.stores.base import CheckpointStore

    private, public = generate_key_files(tmp_path / "k")
    store = engine.open()
    assert isinstance(store, CheckpointStore)
    fill(store, 4)
    head = store.head()
    signed = Signer(private).sign(head.count, head.hash)
    store.add_checkpoint(signed)
    store.add_checkpoint(Signer(private).sign(head.count, "0" * 64))  # same count: ignored
    assert store.checkpoints() == [signed]
    report = store.verify(check_signature=load_public_key(public))
    assert (report.ok, report.checkpoints) == (True, 1)
    engine.delete(4)
    assert not store.verify(check_signature=load_public_key(public)).ok
