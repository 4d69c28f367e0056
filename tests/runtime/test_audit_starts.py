"""Every start is in the chain: killed actions stay visible, edits fail, the store is checked."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from engine_support import TablePolicy
from flow_horizon import looked_back

from aegis.cli import cli
from aegis.core.action import Action
from aegis.core.chain import record_hash
from aegis.core.policy import Policy
from aegis.core.record import start_draft
from aegis.core.result import Result, ResultStatus
from aegis.errors import AuditError, StoreError
from aegis.runtime.audit import AuditLogger
from aegis.runtime.engine import Runtime
from aegis.testing import RecordingExecutor

CHILD = Path(__file__).with_name("runtime_child.py")


def run_and_kill(db: Path, done: int) -> None:
    """Run a real Runtime in a child process and SIGKILL it while an action executes."""
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(db), str(done)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    assert line == "executing\n", child.communicate(timeout=30)
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def killed_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database whose writer was killed in the middle of a wire transfer, after 3 reads."""
    db = tmp_path_factory.mktemp("killed") / "audit.db"
    run_and_kill(db, 3)
    return db


@pytest.fixture
def copy(killed_db: Path, tmp_path: Path) -> Path:
    """A private copy of the killed writer's database, to edit."""
    target = tmp_path / "audit.db"
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{killed_db}{suffix}")
        if source.exists():
            shutil.copy(source, f"{target}{suffix}")
    return target


def sql(db: Path, statement: str, *args: Any) -> None:
    """Edit the database by hand, as someone with the file would."""
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute(statement, args)


def cli_run(*args: str) -> Any:
    """Run ``aegis ARGS`` in-process and return Click's result."""
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


# ---------------------------------------------------------------- a killed action


def test_a_killed_action_shows_in_get_log_as_started(killed_db: Path) -> None:
    """After SIGKILL mid-executor, get_log() lists the transfer as started with no outcome."""
    with AuditLogger(killed_db, create=False, readonly=True) as audit:
        records = audit.get_log()
        pending = audit.pending()
        stats = audit.stats()
    assert [r["action_type"] for r in records] == ["read", "read", "read", "wire_transfer"]
    transfer = records[-1]
    assert transfer["kind"] == "start"
    assert transfer["result_status"] is None
    assert transfer["completed_at"] is None
    assert transfer["action_params"] == {"amount": 250_000, "to": "ACME"}
    assert transfer["context"] == {"tool_call_id": "call_42"}
    assert transfer["decided_at"] is not None
    assert pending == [transfer]
    assert stats["result_status"] == {"started": 1, "success": 3}


def test_a_killed_action_is_exported_and_the_export_verifies(
    killed_db: Path, tmp_path: Path
) -> None:
    """export_jsonl writes the killed action's start record, marked; every line rehashes."""
    out = tmp_path / "out.jsonl"
    chain = tmp_path / "chain.jsonl"
    with AuditLogger(killed_db, create=False, readonly=True) as audit:
        written = audit.export_jsonl(out)
        records = audit.export_jsonl(chain, records=True)
        report = audit.verify()
    lines = [json.loads(line) for line in out.read_text("utf-8").splitlines()]
    assert written == len(lines) == 4  # one line per action: three reads and the transfer
    assert lines[-1]["kind"] == "start"
    assert lines[-1]["unfinished"] is True
    assert lines[-1]["action_type"] == "wire_transfer"
    assert all(record_hash(line) == line["hash"] for line in lines)
    assert [line["start_id"] for line in lines if line["kind"] == "final"] == [1, 3, 5]
    every = [json.loads(line) for line in chain.read_text("utf-8").splitlines()]
    assert records == len(every) == 7  # three reads (start + final) and one start
    assert all(record_hash(line) == line["hash"] for line in every)
    assert report.ok
    assert report.unfinished == (7,)


def test_the_cli_lists_shows_and_counts_the_killed_action(killed_db: Path) -> None:
    """`aegis audit list/show/stats/verify` show the interrupted transfer as started."""
    listed = cli_run("audit", "list", "--db", str(killed_db))
    assert listed.exit_code == 0, listed.output
    last = listed.stdout.splitlines()[-1].split("\t")
    assert last[0] == "7"
    assert last[3] == "wire_transfer:bank"
    assert last[7] == "started"
    shown = cli_run("audit", "show", "7", "--db", str(killed_db))
    assert "start" in shown.stdout
    assert "call_42" in shown.stdout
    stats = cli_run("audit", "stats", "--db", str(killed_db), "--format", "json")
    assert json.loads(stats.stdout)["result_status"] == {"started": 1, "success": 3}
    verified = cli_run("audit", "verify", "--db", str(killed_db))
    assert verified.exit_code == 0
    assert "1 action started but never finished" in verified.stderr
    assert "wire_transfer:bank" in verified.stderr


def test_the_cli_in_a_real_process_lists_the_killed_action(killed_db: Path) -> None:
    """`python -m aegis audit list` in its own process shows the started transfer."""
    done = subprocess.run(
        [sys.executable, "-m", "aegis", "audit", "list", "--db", str(killed_db)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "wire_transfer:bank" in done.stdout
    assert "started" in done.stdout


def test_no_file_is_left_beside_the_database(killed_db: Path) -> None:
    """Starts live in the database: nothing but SQLite's own files sits beside it."""
    names = {p.name for p in killed_db.parent.iterdir()}
    assert names <= {"audit.db", "audit.db-wal", "audit.db-shm"}


# ---------------------------------------------------------------- hand edits


@pytest.mark.parametrize(
    ("statement", "bad_id"),
    [
        ("DELETE FROM audit_log WHERE id = 7", None),  # the evidence of the transfer
        ("UPDATE audit_log SET kind = 'final' WHERE id = 7", 7),
        ("UPDATE audit_log SET kind = NULL WHERE id = 7", 7),
        ("UPDATE audit_log SET start_id = 3 WHERE id = 2", 2),
        ("UPDATE audit_log SET start_id = NULL WHERE id = 4", 4),
        ("UPDATE audit_log SET context = NULL WHERE id = 7", 7),
        ('UPDATE audit_log SET action_params = \'{"amount":1,"to":"ACME"}\' WHERE id = 7', 7),
        ("DELETE FROM audit_log WHERE id = 3", 3),
    ],
    ids=[
        "delete-start",
        "start-made-final",
        "kind-erased",
        "start-id-moved",
        "start-id-erased",
        "context-erased",
        "amount-edited",
        "delete-finished-start",
    ],
)
def test_editing_the_start_records_fails_verify(
    copy: Path, statement: str, bad_id: int | None
) -> None:
    """Deleting or editing a start record or a link to it makes verify fail."""
    kept_head = AuditLogger(copy, create=False, readonly=True).head()
    sql(copy, statement)
    with AuditLogger(copy, create=False, readonly=True) as audit:
        report = audit.verify(kept_head)
    assert not report.ok
    if bad_id is not None:
        assert report.first_bad_id == bad_id


def test_a_start_appended_to_hide_the_killed_start_fails_verify(copy: Path) -> None:
    """An appended start record that names the killed one, as a final record would, fails.

    Every view of actions takes a start that a later record names as
    finished: such a record hid the killed transfer from list, export and
    pending while verify() passed.
    """
    with AuditLogger(copy) as audit:
        decision = TablePolicy().evaluate(Action("read", "crm", {}))
        draft = start_draft("s", decision)._replace(start_id=7)
        audit.store.append([draft])
    with AuditLogger(copy, create=False, readonly=True) as audit:
        report = audit.verify()
    assert (report.ok, report.first_bad_id) == (False, 8)
    assert "start record" in report.reason


def test_deleting_the_last_start_is_caught_only_with_a_kept_head(copy: Path) -> None:
    """Cutting the killed start off the end is the one edit that needs a kept head."""
    with AuditLogger(copy, create=False, readonly=True) as audit:
        kept = audit.head()
    sql(copy, "DELETE FROM audit_log WHERE id = 7")
    with AuditLogger(copy, create=False, readonly=True) as audit:
        assert audit.verify().ok
        report = audit.verify(kept)
    assert not report.ok
    assert "removed from the end" in report.reason


def test_malformed_files_beside_the_database_do_not_disturb_verify(copy: Path) -> None:
    """Junk files named like old journals or SQLite's own files never crash verify."""
    Path(f"{copy}.pending-1-abcd").write_bytes(b"\xff\x00not json\n{")
    Path(f"{copy}-journal").write_bytes(b"")
    with AuditLogger(copy, create=False, readonly=True) as audit:
        assert audit.verify().ok
    result = cli_run("audit", "verify", "--db", str(copy))
    assert result.exit_code == 0, result.output


# ---------------------------------------------------------------- read-only copies


@contextmanager
def read_only(*paths: Path) -> Iterator[None]:
    """Make ``paths`` read-only, even for root (immutable), and undo it afterwards."""
    root = os.geteuid() == 0
    try:
        for path in paths:
            if root:
                subprocess.run(["chattr", "+i", str(path)], check=True)
            else:
                path.chmod(0o555 if path.is_dir() else 0o444)
        yield
    finally:
        for path in paths:
            if root:
                subprocess.run(["chattr", "-i", str(path)], check=True)
            else:
                path.chmod(0o755 if path.is_dir() else 0o644)


def checkpointed_copy(source: Path, folder: Path) -> Path:
    """A copy of ``source`` with its WAL folded in, as a backup tool would make it."""
    folder.mkdir()
    target = folder / "evidence.db"
    with closing(sqlite3.connect(source)) as src, closing(sqlite3.connect(target)) as dst:
        src.backup(dst)
    return target


def test_a_read_only_copy_can_be_listed_exported_and_verified(
    killed_db: Path, tmp_path: Path
) -> None:
    """A backup in a read-only folder is listed, exported and verified without writing."""
    evidence = checkpointed_copy(killed_db, tmp_path / "mount")
    before = evidence.read_bytes()
    out = tmp_path / "out.jsonl"
    with read_only(evidence, evidence.parent):
        listed = cli_run("audit", "list", "--db", str(evidence))
        exported = cli_run("audit", "export", "--db", str(evidence), "-o", str(out))
        verified = cli_run("audit", "verify", "--db", str(evidence))
        with AuditLogger(evidence, create=False, readonly=True) as audit:
            assert len(audit.get_log()) == 4
    assert listed.exit_code == 0, listed.output
    assert "wire_transfer:bank" in listed.stdout
    assert exported.exit_code == 0, exported.output
    assert len(out.read_text().splitlines()) == 4  # one line per action
    assert verified.exit_code == 0, verified.output
    assert evidence.read_bytes() == before


def test_a_read_only_copy_of_the_first_schema_can_be_read(tmp_path: Path) -> None:
    """An old (schema 1) database is read, not migrated, when opened read-only."""
    db = tmp_path / "old.db"
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute(
            "CREATE TABLE audit_log (id INTEGER PRIMARY KEY, session_id TEXT, timestamp TEXT,"
            " action_type TEXT, action_target TEXT, action_params TEXT, action_desc TEXT,"
            " risk_level TEXT, approval TEXT, matched_rule TEXT, reason TEXT,"
            " human_decision TEXT, result_status TEXT, result_data TEXT, result_error TEXT,"
            " started_at TEXT, completed_at TEXT, prev_hash TEXT, hash TEXT, start_ref TEXT)"
        )
        record = {
            "id": 1,
            "session_id": "s",
            "timestamp": "2024-01-01T00:00:00.000000+00:00",
            "action_type": "read",
            "action_target": "crm",
            "action_params": {},
            "action_desc": "",
            "risk_level": "LOW",
            "approval": "auto",
            "matched_rule": "r",
            "reason": "",
            "result_status": "success",
            "prev_hash": "0" * 64,
        }
        digest = record_hash(record)
        conn.execute(
            "INSERT INTO audit_log VALUES (1, 's', ?, 'read', 'crm', '{}', '', 'LOW', 'auto',"
            " 'r', '', NULL, 'success', 'null', NULL, NULL, NULL, ?, ?, NULL)",
            (record["timestamp"], "0" * 64, digest),
        )
        conn.execute("PRAGMA application_id = 1095059283")
        conn.execute("PRAGMA user_version = 1")
    before = db.read_bytes()
    with read_only(db), AuditLogger(db, create=False, readonly=True) as audit:
        assert audit.verify().ok
        [only] = audit.get_log()
    assert only["kind"] is None
    assert only["result_status"] == "success"
    assert db.read_bytes() == before


# ---------------------------------------------------------------- the store is checked first


def runtime_on(db: Path, executor: RecordingExecutor) -> Runtime:
    """A runtime writing to the SQLite file ``db``."""
    return Runtime(executor=executor, policy=TablePolicy(), audit_logger=AuditLogger(db))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"this is a text file, not a database\n" * 100, "not a database"),
        (os.urandom(8192), "not a database"),
    ],
    ids=["text", "random-bytes"],
)
async def test_a_garbage_file_fails_before_any_action_runs(
    tmp_path: Path, content: bytes, message: str
) -> None:
    """A file that is not SQLite is a StoreError at the first run_one; nothing executes."""
    db = tmp_path / "audit.db"
    db.write_bytes(content)
    executor = RecordingExecutor()
    with pytest.raises(StoreError, match=message):
        await runtime_on(db, executor).run_one(Action("read", "crm"))
    assert executor.actions == []
    assert db.read_bytes() == content


async def test_another_applications_database_fails_before_any_action_runs(
    tmp_path: Path,
) -> None:
    """A SQLite file of another application is refused at start; it is left untouched."""
    db = tmp_path / "app.db"
    sql(db, "CREATE TABLE customers (id INTEGER)")
    before = db.read_bytes()
    executor = RecordingExecutor()
    with pytest.raises(StoreError, match="not an Aegis audit database"):
        async with runtime_on(db, executor) as runtime:
            await runtime.run_one(Action("read", "crm"))
    assert executor.actions == []
    assert db.read_bytes() == before


async def test_a_read_only_database_fails_before_any_action_runs(tmp_path: Path) -> None:
    """A read-only audit file is an error at Runtime start, before the executor runs."""
    db = tmp_path / "audit.db"
    AuditLogger(db).log("s", TablePolicy().evaluate(Action("read", "crm")))
    executor = RecordingExecutor()
    with read_only(db):
        with pytest.raises(StoreError, match="read-only"):
            async with runtime_on(db, executor) as runtime:
                await runtime.run_one(Action("read", "crm"))
        assert executor.actions == []


async def test_a_database_in_a_missing_folder_fails_before_any_action_runs(
    tmp_path: Path,
) -> None:
    """A path whose folder does not exist is an AuditError before anything runs."""
    executor = RecordingExecutor()
    with pytest.raises(AuditError, match="folder exists"):
        await runtime_on(tmp_path / "no" / "audit.db", executor).run_one(Action("read", "crm"))
    assert executor.actions == []


# ---------------------------------------------------------------- odd content


class Unprintable:
    """A value whose repr raises."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


@pytest.mark.parametrize(
    ("params", "data", "expect_params", "expect_data"),
    [
        (
            {"name": "caf\udce9", "keep": "ok"},
            None,
            {"name": "<unstorable str: 'caf\\udce9'>", "keep": "ok"},
            None,
        ),
        (
            {"keep": 2},
            {"obj": Unprintable(), "rows": [1, 2]},
            {"keep": 2},
            {"obj": "<unrepresentable Unprintable>", "rows": [1, 2]},
        ),
        (
            {"keep": 3},
            Unprintable(),
            {"keep": 3},
            "<unrepresentable Unprintable>",
        ),
    ],
    ids=["lone-surrogate", "broken-repr-inside", "broken-repr-whole"],
)
async def test_a_record_is_never_lost_because_of_its_content(
    tmp_path: Path,
    params: dict[str, Any],
    data: Any,
    expect_params: dict[str, Any],
    expect_data: Any,
) -> None:
    """Values that cannot be stored become marked text; the record and other params stay."""
    db = tmp_path / "audit.db"
    executor = RecordingExecutor(default=data)
    async with runtime_on(db, executor) as runtime:
        result = await runtime.run_one(Action("read", "crm", params))
    assert result.status is ResultStatus.SUCCESS
    with AuditLogger(db, create=False, readonly=True) as audit:
        [record] = audit.get_log()
        report = audit.verify()
        exported = list(audit.store.export_lines())
    assert record["action_params"] == expect_params
    assert record["result_data"] == expect_data
    assert report.ok, report.reason
    assert all(record_hash(json.loads(line)) == json.loads(line)["hash"] for line in exported)


async def test_an_int_past_the_digit_limit_keeps_its_record_and_the_other_params(
    tmp_path: Path,
) -> None:
    """A param past Python's 4,300-digit limit is stored as marked hex; the rest is kept."""
    db = tmp_path / "audit.db"
    decision = TablePolicy().evaluate(Action("read", "crm", {"big": 10**5000, "keep": 1}))
    with AuditLogger(db) as audit:
        start = await audit.record_start("s", decision)
        await audit.record(
            "s",
            decision,
            result=Result(decision.action, ResultStatus.SUCCESS, data=[10**5000, 2]),
            start_token=start,
        )
        [record] = audit.get_log()
        report = audit.verify()
    marker = f"<unstorable int: {hex(10**5000)}>"
    assert record["action_params"] == {"big": marker, "keep": 1}
    assert record["result_data"] == [marker, 2]
    assert report.ok


async def test_tail_shows_the_last_actions_not_the_last_records(tmp_path: Path) -> None:
    """`aegis audit tail -n 3` shows three actions although each has two records."""
    db = tmp_path / "audit.db"
    async with runtime_on(db, RecordingExecutor()) as runtime:
        for n in range(5):
            await runtime.run_one(Action("read", "crm", {"n": n}))
    result = cli_run("audit", "tail", "-n", "3", "--db", str(db))
    assert result.exit_code == 0, result.output
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == ["6", "8", "10"]


@pytest.mark.parametrize("looking_back", [True, False], ids=["events noted", "gap"])
async def test_a_subscriber_hears_the_starts_written_with_their_flow_events(
    tmp_path: Path, looking_back: bool
) -> None:
    """A plain action's start shares its transaction with its flow event: subscribers hear it.

    While no policy sharing the file looks back, no event is noted (a gap
    stands in): the starts are heard alike.
    """
    db = tmp_path / "a.db"
    if looking_back:
        looked_back(db)
    audit = AuditLogger(db)
    heard: list[tuple[str | None, str]] = []
    audit.subscribe(lambda record: heard.append((record["kind"], record["action_type"])))
    policy = Policy.from_dict(
        {"rules": [{"name": "all", "match": {"type": "*"}, "approval": "auto"}]}
    )
    async with Runtime(executor=RecordingExecutor(), policy=policy, audit_logger=audit) as runtime:
        for kind in ("read", "send"):
            result = await runtime.run_one(Action(kind, "crm", {"id": 1}))
            assert result.status is ResultStatus.SUCCESS
    assert heard == [("start", "read"), ("final", "read"), ("start", "send"), ("final", "send")]
    with closing(sqlite3.connect(db)) as conn:  # each start carried its event
        noted = conn.execute("SELECT action_type FROM aegis_flow_events ORDER BY at").fetchall()
    assert noted == ([("read",), ("send",)] if looking_back else [])


#: a trail the release before canonical JSON escaped mark look-alikes wrote (aegis 2d87acd,
#: policy: every action auto): an action with an int past the digit limit (``{H}``, its
#: hex), one with a mapping shaped like canonical JSON's mark of it, and one with an
#: escape's look-alike; each a start and a final record (its times: seconds past 23:05),
#: with the fields that differ between them
_OLD_TRAIL: tuple[dict[str, Any], ...] = (
    {
        "params": '{"n":"<unstorable int: {H}>"}',
        "data": "null",
        "times": ("03.737697", "03.737303"),
        "hash": "ef192b5f54f041b25266b7d2f675403f64c6afbbc325a0339ef806ff68c16170",
    },
    {
        "params": '{"n":"<unstorable int: {H}>"}',
        "data": '["<unstorable int: {H}>",1]',
        "times": ("03.742191", "03.737303", "03.739373", "03.742119"),
        "hash": "42500422ed8f44588ab7f9c120ea66273abdddda15e7ccbf2064b5b9fd706a8d",
    },
    {
        "params": '{"n":{"__aegis_int__":"{H}"}}',
        "data": "null",
        "times": ("03.743772", "03.743664"),
        "hash": "7f62487e8fd2c1b43440e772543a3ef89f81b580ff57e0b29ade4eed20ee309f",
    },
    {
        "params": '{"n":{"__aegis_int__":"{H}"}}',
        "data": '["<unstorable int: {H}>",{"__aegis_int__":"{H}"}]',
        "times": ("03.744452", "03.743664", "03.743949", "03.744172"),
        "hash": "ad4689dfc00c4df9cd0721c053393e0a2d5f6198f1e49fae875c1fb1b13b6325",
    },
    {
        "params": '{"n":{"__aegis_map__":{"__aegis_int__":"{H}"}}}',
        "data": "null",
        "times": ("03.745584", "03.745494"),
        "hash": "f4681f162d758a4ca2e6e41e8950722dc496559ce80e69489cdf6641584a5e97",
    },
    {
        "params": '{"n":{"__aegis_map__":{"__aegis_int__":"{H}"}}}',
        "data": '["<unstorable int: {H}>",{"__aegis_map__":{"__aegis_int__":"{H}"}}]',
        "times": ("03.745950", "03.745494", "03.745768", "03.745919"),
        "hash": "0c12c83082cda76748e29c73be2a6672f7e0cdaccb7fb4cbfa6c025de261bcdb",
    },
)
_OLD_POLICY_DIGEST = "8b49027ca95982bd4e451bab4a6a18cd28c4231f0eefd8b433c98b3dd3879191"


async def test_a_trail_of_ints_past_the_digit_limit_and_their_look_alikes_still_verifies(
    tmp_path: Path,
) -> None:
    """Records an older release wrote of an int past the digit limit and of mappings shaped
    like canonical JSON's marks verify as they are; the same actions run now are recorded
    with the very params text they had, and the trail still verifies."""
    db = tmp_path / "audit.db"
    with AuditLogger(db) as created:
        assert created.verify().ok  # the empty trail, its tables created
    huge = 10**5000
    prev = "0" * 64
    rows = []
    for ident, old in enumerate(_OLD_TRAIL, 1):
        final = ident % 2 == 0
        at, decided, *ran = (f"2026-12-07T23:05:{clock}+00:00" for clock in old["times"])
        rows.append(
            {"id": ident, "kind": "final" if final else "start", "timestamp": at}
            | {"session_id": "s", "action_type": "read", "action_target": "crm"}
            | {"action_params": old["params"].replace("{H}", hex(huge)), "action_desc": ""}
            | {"risk_level": "MEDIUM", "approval": "auto", "matched_rule": "all", "reason": ""}
            | {"result_status": "success" if final else None}
            | {"result_data": old["data"].replace("{H}", hex(huge))}
            | {"started_at": ran[0] if ran else None, "completed_at": ran[1] if ran else None}
            | {"decided_at": decided, "policy_digest": _OLD_POLICY_DIGEST}
            | {"start_id": ident - 1 if final else None, "prev_hash": prev, "hash": old["hash"]}
        )
        prev = old["hash"]
    with closing(sqlite3.connect(db)) as conn, conn:
        names = ", ".join(rows[0])
        conn.executemany(
            f"INSERT INTO audit_log ({names}) VALUES ({', '.join(':' + n for n in rows[0])})",
            rows,
        )
    rules = [{"name": "all", "match": {"type": "*"}, "approval": "auto"}]
    policy = Policy.from_dict({"rules": rules})
    mark = {"__aegis_int__": hex(huge)}
    with AuditLogger(db, create=False, readonly=True) as audit:
        old_report = audit.verify()
    assert old_report.ok, old_report.reason
    async with Runtime(
        executor=lambda action: "ok",
        policy=policy,
        audit_logger=AuditLogger(db, create=False),
        session_id="s",
    ) as rt:
        for params in ({"n": huge}, {"n": mark}, {"n": {"__aegis_map__": mark}}):
            assert (await rt.run_one(Action("read", "crm", params))).status is ResultStatus.SUCCESS
    with AuditLogger(db, create=False, readonly=True) as audit:
        report = audit.verify()
    assert report.ok, report.reason
    with closing(sqlite3.connect(db)) as conn:
        stored = conn.execute("SELECT action_params, policy_digest FROM audit_log ORDER BY id")
        texts = [(params, digest) for params, digest in stored]
    assert texts[6:] == texts[:6]  # the same params text, and the policy's digest unchanged
