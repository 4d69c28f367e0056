"""One parser of store locations, one opener: an engine's connection shared by its three stores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aegis import AuditLogger
from aegis.errors import ConfigurationError, StoreError
from aegis.stores import mask_dsn, open_stores, parse_store_url
from aegis.stores.base import ApprovalStore, AuditStore, UsageStore
from aegis.stores.memory import MemoryStore
from aegis.stores.sqlite.approvals import SqliteApprovalStore
from aegis.stores.sqlite.usage import SQLiteUsageStore
from aegis.stores.usage import MemoryUsageStore


@pytest.mark.parametrize(
    ("url", "engine", "target"),
    [
        ("audit.db", "sqlite", "audit.db"),
        ("/var/lib/aegis/audit.db", "sqlite", "/var/lib/aegis/audit.db"),
        ("sqlite:///audit.db", "sqlite", "audit.db"),
        ("SQLITE:////abs/audit.db", "sqlite", "/abs/audit.db"),
        (":memory:", "sqlite", ":memory:"),
        ("C:\\aegis\\audit.db", "sqlite", "C:\\aegis\\audit.db"),
        ("memory://", "memory", "memory://"),
        ("postgresql://app:pw@db/aegis", "postgres", "postgresql://app:pw@db/aegis"),
        ("Postgres://app@db/aegis", "postgres", "Postgres://app@db/aegis"),
        ("host=db user=app password=pw", "postgres", "host=db user=app password=pw"),
        ("  dbname = aegis  host='db 1'", "postgres", "  dbname = aegis  host='db 1'"),
    ],
)
def test_every_form_names_one_engine(url: str, engine: str, target: str) -> None:
    """Paths, sqlite:/postgresql: URLs, libpq strings and memory:// each name their engine."""
    location = parse_store_url(url)
    assert (location.engine, location.target) == (engine, target)
    assert "pw" not in location.where or engine != "postgres"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("mysql://db/aegis", "mysql"),
        ("redis://cache:6379/0", "redis"),
        ("file:audit.db", "file"),
        ("sqlite:/audit.db", "sqlite:///"),
        ("memory://x", "memory://"),
        ("postgresql:db", "PostgreSQL"),
        ("hots=db user=app", "'hots' is no libpq keyword"),
        ("host=db user", "key=value"),
        ("", "empty"),
    ],
)
def test_a_location_naming_no_engine_is_refused(url: str, says: str) -> None:
    """Unknown schemes, malformed URLs and libpq look-alikes are errors, never file names."""
    with pytest.raises(ConfigurationError, match=says):
        parse_store_url(url)


def test_a_refused_location_never_shows_its_password() -> None:
    """The error of a refused URL or keyword string masks the password it carries."""
    for url in (
        "mysql://app:hunter2@db/x",
        "host=db pasword=hunter2 password=hunter2",
        "postgres:hunter2@127.0.0.1/test",  # the '//' forgotten
        "postgresql:/app:hunter2@db/x",
        "app:hun/ter2@db/x",
    ):
        with pytest.raises(ConfigurationError) as caught:
            parse_store_url(url)
        assert "hunter2" not in str(caught.value).replace("/", "")


@pytest.mark.parametrize(
    ("dsn", "masked"),
    [
        ("postgresql://app:s3%zzet@db/a", "postgresql://app:***@db/a"),
        ("postgresql://app:p%40ss@db/a?password=x&sslmode=require", None),
        ("host=db password='it\\'s x' user=app", "host=db password=*** user=app"),
        ("host=db password=a\\ b user=app", "host=db password=*** user=app"),
    ],
)
def test_every_spelling_of_a_password_is_masked(dsn: str, masked: str | None) -> None:
    """Percent-escapes (valid or not), query passwords, quotes and escapes are all masked."""
    location = parse_store_url(dsn)
    if masked is not None:
        assert location.where == masked == mask_dsn(dsn)
    for secret in location.secrets:
        assert secret not in location.where
    assert location.scrub(f"error near <{dsn}>") == f"error near <{location.where}>"


def test_a_bad_percent_escape_in_the_password_stays_out_of_every_error() -> None:
    """A generated password with '%zz' appears in no error of the audit or the usage store."""
    from aegis.stores.postgres.usage import PostgresUsageStore

    password = "Xk%zzq-9f2e"
    dsn = f"postgresql://app:{password}@127.0.0.1:1/aegis"
    failures: list[str] = []
    for attempt in (
        lambda: AuditLogger(dsn).check(),
        lambda: AuditLogger(dsn, schema="agents").check(),
        lambda: PostgresUsageStore(dsn).recall("s", None, None),
        lambda: open_stores(dsn).usage.recall("s", None, None),
    ):
        with pytest.raises(ConfigurationError) as caught:
            attempt()
        failures.append(str(caught.value))
    for text in failures:
        assert "zzq" not in text, text
        assert "Xk" not in text, text
        assert "postgresql://app:***@127.0.0.1:1/aegis" in text


def test_a_libpq_string_is_postgresql_never_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AuditLogger('host=... password=...') opens PostgreSQL; no file named after it appears."""
    monkeypatch.chdir(tmp_path)
    audit = AuditLogger("host=127.0.0.1 port=1 user=app password=hunter2 connect_timeout=2")
    assert "hunter2" not in audit.db_path
    assert "hunter2" not in repr(audit)
    with pytest.raises(Exception) as caught:  # noqa: PT011  # the store's error, whatever it is
        audit.check()
    assert "hunter2" not in str(caught.value)
    audit.close()
    assert os.listdir(tmp_path) == []
    assert audit.stores.location.engine == "postgres"


def test_sqlite_stores_share_one_connection(tmp_path: Path) -> None:
    """The audit, usage and approval stores of a SQLite file use the audit's one database."""
    with open_stores(tmp_path / "a.db") as stores:
        assert isinstance(stores.audit, AuditStore)
        assert isinstance(stores.usage, SQLiteUsageStore)
        assert isinstance(stores.usage, UsageStore)
        approvals = stores.approvals
        assert isinstance(approvals, SqliteApprovalStore)
        assert stores.usage.db is stores.audit.db is approvals.db  # type: ignore[attr-defined]
        assert stores.usage is stores.usage  # opened once
        assert stores.approvals is approvals
        assert approvals.list_tokens() == []
        stores.audit.check()
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(("-wal", "-shm"))] == ["a.db"]


def test_closing_the_stores_closes_all_three(tmp_path: Path) -> None:
    """After close, the usage and approval stores refuse work along with the audit."""
    stores = open_stores(tmp_path / "a.db")
    usage, approvals = stores.usage, stores.approvals
    stores.close()
    stores.close()  # again: nothing
    with pytest.raises(StoreError, match="closed"):
        usage.recall("s", None, None)
    with pytest.raises(StoreError, match="closed"):
        approvals.list_tokens()
    with pytest.raises(StoreError, match="closed"):
        _ = stores.usage


def test_memory_stores_count_in_memory_and_keep_no_approvals() -> None:
    """memory:// gives a memory trail, memory counters, and a clear error for approvals."""
    stores = open_stores("memory://")
    assert isinstance(stores.audit, MemoryStore)
    assert isinstance(stores.usage, MemoryUsageStore)
    with pytest.raises(ConfigurationError, match="approval"):
        _ = stores.approvals
    stores.close()


def test_a_schema_for_sqlite_is_refused(tmp_path: Path) -> None:
    """schema= names a PostgreSQL schema: given with a SQLite file it is an error, not ignored."""
    with pytest.raises(ConfigurationError, match="schema"):
        open_stores(tmp_path / "a.db", schema="agents")
    with pytest.raises(ConfigurationError, match="schema"):
        AuditLogger(tmp_path / "a.db", schema="agents")
    assert not (tmp_path / "a.db").exists()


def test_an_audit_logger_over_a_given_store_has_stores_beside_it(tmp_path: Path) -> None:
    """AuditLogger(store=...) of a SQLite store shares its connection with the usage store."""
    from aegis.stores.sqlite.audit import SQLiteAuditStore

    store = SQLiteAuditStore(str(tmp_path / "a.db"))
    audit = AuditLogger(store=store)
    assert audit.stores.audit is store
    assert audit.stores.usage.db is store.db  # type: ignore[attr-defined]
    assert isinstance(audit.stores.approvals, ApprovalStore)
    audit.close()


def test_a_dsn_without_its_scheme_is_told_how_to_write_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """'app@host:5432/agents' is a file path SQLite cannot open: the error says postgresql://."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoreError) as caught, AuditLogger("app@127.0.0.1:5432/agents") as log:
        log.get_log()
    assert "'app@127.0.0.1:5432/agents'" in str(caught.value)
    assert "postgresql://" in str(caught.value)
    assert list(tmp_path.iterdir()) == []
