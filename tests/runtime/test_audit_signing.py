"""Signed checkpoints: the head signed with Ed25519, checked with the public key alone."""

from __future__ import annotations

import json
import sqlite3
import stat
import time
from contextlib import closing
from pathlib import Path

import pytest
from click.testing import CliRunner
from engine_support import TablePolicy

from aegis.cli import cli
from aegis.core.action import Action
from aegis.core.checkpoint import Checkpoint
from aegis.errors import ConfigurationError
from aegis.runtime.audit import AuditLogger
from aegis.runtime.engine import Runtime
from aegis.runtime.signing import Signer, generate_key_files, load_public_key
from aegis.testing import RecordingExecutor

DECISION = TablePolicy().evaluate(Action("read", "crm", {"n": 1}))


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    """A fresh key pair: (private, public)."""
    return generate_key_files(tmp_path / "audit.key")


def write(db: Path, key: Path | None, count: int, every: int = 10) -> None:
    """Log ``count`` records, signing with ``key`` every ``every`` records and at close."""
    with AuditLogger(db, signing_key=key, checkpoint_every=every) as audit:
        for _ in range(count):
            audit.log("s", DECISION)


def sql(db: Path, statement: str) -> None:
    """Edit the database by hand."""
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute(statement)


def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path: Path) -> None:
    """`aegis audit keygen` writes PATH (mode 0600) and PATH.pub, and refuses to overwrite."""
    path = tmp_path / "k"
    result = CliRunner().invoke(cli, ["audit", "keygen", str(path)])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert b"PUBLIC KEY" in (tmp_path / "k.pub").read_bytes()
    again = CliRunner().invoke(cli, ["audit", "keygen", str(path)])
    assert again.exit_code == 2
    assert "exists" in again.stderr


def test_heads_are_signed_every_n_records_and_at_close(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    """25 records with every=10 leave checkpoints at 10, 20 and 25, all valid."""
    db = tmp_path / "a.db"
    write(db, keys[0], 25)
    with AuditLogger(db, readonly=True, create=False) as audit:
        kept = audit.checkpoints()
        report = audit.verify(public_key=keys[1])
    assert [c.count for c in kept] == [10, 20, 25]
    assert (report.ok, report.checkpoints) == (True, 3)


def test_heads_are_signed_after_the_interval(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    """With a short interval, a record written after it passed is signed at once."""
    db = tmp_path / "a.db"
    audit = AuditLogger(db, signing_key=keys[0], checkpoint_every=1000, checkpoint_interval=0.01)
    audit.log("s", DECISION)
    time.sleep(0.05)
    audit.log("s", DECISION)
    # every=1000 was never reached: only the interval can have signed record 2
    assert audit.checkpoints()[-1].count == 2
    audit.close()


def test_a_truncated_tail_is_caught_with_the_public_key_alone(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    """Records cut off after a checkpoint pass the chain check and fail the signed one."""
    db = tmp_path / "a.db"
    write(db, keys[0], 25)
    sql(db, "DELETE FROM audit_log WHERE id > 15")
    with AuditLogger(db, readonly=True, create=False) as audit:
        assert audit.verify().ok  # without a key or a kept head: undetectable
        report = audit.verify(public_key=keys[1])
    assert not report.ok
    assert "removed from the end" in report.reason


def test_a_tail_cut_with_its_checkpoints_needs_the_kept_head(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    """Checkpoints share the file: cut with the records they cover, only a kept head tells."""
    db = tmp_path / "a.db"
    write(db, keys[0], 25)  # checkpoints at 10, 20 and 25
    with AuditLogger(db, readonly=True, create=False) as audit:
        kept = audit.head()
    sql(db, "DELETE FROM audit_log WHERE id > 20")
    sql(db, "DELETE FROM audit_checkpoints WHERE count > 20")
    with AuditLogger(db, readonly=True, create=False) as audit:
        signed = audit.verify(public_key=keys[1])
        with_head = audit.verify(kept, public_key=keys[1])
    assert (signed.ok, signed.checked, signed.unsigned) == (True, 20, 0)
    assert (with_head.ok, with_head.first_bad_id) == (False, 21)


def test_a_consistent_rewrite_is_caught_with_the_public_key(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    """A chain rewritten from scratch, hashes and all, no longer fits the signed heads."""
    db = tmp_path / "a.db"
    write(db, keys[0], 12)
    sql(db, "DELETE FROM audit_log")
    write(db, None, 12)  # a forger without the key rebuilds a valid-looking chain
    with AuditLogger(db, readonly=True, create=False) as audit:
        assert audit.verify().ok
        report = audit.verify(public_key=keys[1])
    assert (report.ok, report.first_bad_id) == (False, 10)
    assert "signed checkpoint" in report.reason


@pytest.mark.parametrize(("edit", "bad_id"), [("rewrite", 2), ("cut", 4)])
def test_records_changed_before_their_checkpoint_are_never_signed_over(
    tmp_path: Path, keys: tuple[Path, Path], edit: str, bad_id: int
) -> None:
    """Records rewritten or cut while the runtime runs, before a checkpoint covers them, fail.

    The checkpoint at close signs what the logger wrote, not what the store
    holds by then: a forger who rebuilt the unsigned records consistently
    (or cut them off) while the logger was open does not get them signed.
    """
    db = tmp_path / "a.db"
    with AuditLogger(db, signing_key=keys[0], checkpoint_every=1000) as audit:
        for _ in range(5):
            audit.log("s", DECISION)
        sql(db, f"DELETE FROM audit_log WHERE id >= {bad_id}")
        if edit == "rewrite":
            with AuditLogger(db) as forger:  # a valid-looking chain of other actions
                for _ in range(5 - bad_id + 1):
                    forger.log("forged", DECISION)
    with AuditLogger(db, readonly=True, create=False) as audit:
        assert audit.verify().ok  # the chain alone holds
        report = audit.verify(public_key=keys[1])
    assert (report.ok, report.first_bad_id) == (False, bad_id)


def test_a_checkpoint_after_a_rewrite_signs_the_records_as_written(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    """checkpoint() signs the current head, but never over a record rewritten since."""
    db = tmp_path / "a.db"
    with AuditLogger(db, signing_key=keys[0], checkpoint_every=1000) as audit:
        for _ in range(2):
            audit.log("s", DECISION)
        sql(db, "DELETE FROM audit_log WHERE id = 2")
        with AuditLogger(db) as forger:
            forger.log("forged", DECISION)
        kept = audit.checkpoint()
    assert kept is not None
    assert kept.count == 2
    with AuditLogger(db, readonly=True, create=False) as audit:
        assert audit.verify().ok
        report = audit.verify(public_key=keys[1])
    assert (report.ok, report.first_bad_id) == (False, 2)


def test_checkpoints_signed_by_another_key_are_refused(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    """A forger's own checkpoints fail against the real public key."""
    db = tmp_path / "a.db"
    forger, _ = generate_key_files(tmp_path / "forger.key")
    write(db, forger, 5)
    with AuditLogger(db, readonly=True, create=False) as audit:
        report = audit.verify(public_key=keys[1])
    assert not report.ok
    assert "not signed by the given key" in report.reason


def test_an_edited_checkpoint_is_refused(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    """Changing a kept checkpoint's head breaks its signature."""
    db = tmp_path / "a.db"
    write(db, keys[0], 10)
    sql(db, "UPDATE audit_checkpoints SET count = 9")
    with AuditLogger(db, readonly=True, create=False) as audit:
        assert not audit.verify(public_key=keys[1]).ok


def test_the_public_key_cannot_sign(keys: tuple[Path, Path]) -> None:
    """A public key file is refused as a signing key; it only checks."""
    with pytest.raises(ConfigurationError, match="private key"):
        Signer(keys[1])
    checkpoint = Signer(keys[0]).sign(3, "ab" * 32)
    assert load_public_key(keys[1])(checkpoint)
    forged = Checkpoint(
        4, checkpoint.hash, checkpoint.created_at, checkpoint.key_id, checkpoint.signature
    )
    assert not load_public_key(keys[1])(forged)


async def test_the_runtime_signs_with_the_key_in_the_environment(
    tmp_path: Path, keys: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """$AEGIS_AUDIT_KEY makes the default trail sign; verify --public-key checks it."""
    monkeypatch.setenv("AEGIS_AUDIT_KEY", str(keys[0]))
    monkeypatch.chdir(tmp_path)
    async with Runtime(executor=RecordingExecutor(), policy=TablePolicy()) as runtime:
        await runtime.run_one(Action("read", "crm"))
    monkeypatch.delenv("AEGIS_AUDIT_KEY")
    db = tmp_path / "aegis_audit.db"
    result = CliRunner().invoke(
        cli, ["audit", "verify", "--db", str(db), "--public-key", str(keys[1]), "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["checkpoints"] == 1
    assert document["head"].startswith("2:")


def test_audit_head_prints_the_head_to_keep(tmp_path: Path) -> None:
    """`aegis audit head` prints count:hash, the form --expect-head takes."""
    db = tmp_path / "a.db"
    write(db, None, 3)
    result = CliRunner().invoke(cli, ["audit", "head", "--db", str(db)])
    assert result.exit_code == 0, result.output
    printed = result.stdout.strip()
    with AuditLogger(db, readonly=True, create=False) as audit:
        assert printed == str(audit.head())
    kept = CliRunner().invoke(cli, ["audit", "verify", "--db", str(db), "--expect-head", printed])
    assert kept.exit_code == 0


async def test_a_checkpoint_that_cannot_be_written_never_fails_committed_records(
    tmp_path: Path, keys: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """The records are committed first: a failing checkpoint is logged and signed again later."""
    db = tmp_path / "audit.db"
    audit = AuditLogger(db, signing_key=keys[0], checkpoint_every=1)
    runtime = Runtime(executor=RecordingExecutor(), policy=TablePolicy(), audit_logger=audit)
    async with runtime:
        assert (await runtime.run_one(Action("read", "crm", {"n": 1}))).ok
        with closing(sqlite3.connect(db)) as conn, conn:
            conn.execute(
                "CREATE TRIGGER no_room BEFORE INSERT ON audit_checkpoints"
                " BEGIN SELECT RAISE(ABORT, 'no room for checkpoints'); END"
            )
        result = await runtime.run_one(Action("read", "crm", {"n": 2}))
        assert result.ok
        # its start and its final record both failed to sign: logged once, not per write
        failed = [r for r in caplog.records if "signing failed" in r.getMessage()]
        assert len(failed) == 1
        assert "no room for checkpoints" in caplog.text
        with closing(sqlite3.connect(db)) as conn, conn:
            conn.execute("DROP TRIGGER no_room")
        assert (await runtime.run_one(Action("read", "crm", {"n": 3}))).ok
        assert "work again" in caplog.text
    with AuditLogger(db, readonly=True) as reader:
        assert reader.count() == 3  # actions
        assert reader.head().count == 6  # records: a start and a final each
        assert reader.verify(public_key=keys[1]).ok
        assert reader.checkpoints()[-1].count == 6


def verify_cli(db: Path, public: Path) -> tuple[int, str]:
    """Run `aegis audit verify --public-key` and return its exit code and stderr+stdout."""
    result = CliRunner().invoke(
        cli, ["audit", "verify", "--db", str(db), "--public-key", str(public)]
    )
    return result.exit_code, result.output + result.stderr


def test_records_after_the_last_checkpoint_are_named(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    """Records written without the key after the last checkpoint are named, not passed silently."""
    db = tmp_path / "a.db"
    write(db, keys[0], 10, every=100)  # signed at close: records 1-10
    write(db, None, 3)  # records 11-13, no key
    with AuditLogger(db, readonly=True, create=False) as audit:
        report = audit.verify(public_key=keys[1])
    assert (report.ok, report.checked, report.unsigned) == (True, 13, 3)
    code, output = verify_cli(db, keys[1])
    assert code == 0
    assert "records 11-13" in output


def test_a_wrong_key_is_a_signature_failure_not_a_broken_chain(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    """Checked with another key, verify blames the signature, not the chain."""
    db = tmp_path / "a.db"
    write(db, keys[0], 5)
    _, other = generate_key_files(tmp_path / "other.key")
    with AuditLogger(db, readonly=True, create=False) as audit:
        report = audit.verify(public_key=other)
    assert (report.ok, report.bad_signature) == (False, True)
    code, output = verify_cli(db, other)
    assert code == 1
    assert "signature check failed" in output
    assert "chain broken" not in output


def test_a_trail_no_checkpoint_of_the_key_covers_fails(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    """Asked to check signatures, a non-empty trail with no checkpoint at all fails (exit 1)."""
    db = tmp_path / "a.db"
    write(db, None, 12)  # rewritten by someone without the key, checkpoints and all gone
    with AuditLogger(db, readonly=True, create=False) as audit:
        assert audit.verify().ok
        report = audit.verify(public_key=keys[1])
    assert (report.ok, report.bad_signature, report.unsigned) == (False, True, 12)
    code, output = verify_cli(db, keys[1])
    assert code == 1
    assert "signature check failed" in output


def test_an_empty_trail_passes_a_signature_check(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    """Nothing to cover is not a failure: an empty trail verifies with a key."""
    with AuditLogger(tmp_path / "a.db") as audit:
        assert audit.verify(public_key=keys[1]).ok
