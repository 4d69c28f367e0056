"""The psycopg boundary: masked DSNs, clear errors, timeouts, versioned schemas."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid

import psycopg
import pytest
from pg_support import POSTGRES_DSN

from aegis.errors import ConfigurationError, StoreError
from aegis.stores._url import parse_store_url
from aegis.stores.postgres.connection import Database, mask_dsn
from aegis.stores.postgres.schema import VERSIONS_TABLE, component_version, migrate

MIGRATIONS = {
    0: ("CREATE TABLE {schema}.widgets (id BIGINT PRIMARY KEY)",),
    1: ("ALTER TABLE {schema}.widgets ADD COLUMN name TEXT",),
}


@pytest.mark.parametrize(
    ("dsn", "masked"),
    [
        ("postgresql://app:s3cret@db:5432/aegis", "postgresql://app:***@db:5432/aegis"),
        ("postgres://app@db/aegis?password=s3cret&x=1", "postgres://app@db/aegis?password=***&x=1"),
        ("host=db user=app password=s3cret dbname=a", "host=db user=app password=*** dbname=a"),
        ("host=db password='s3 cret' dbname=a", "host=db password=*** dbname=a"),
        ("postgresql://app@db/aegis", "postgresql://app@db/aegis"),
        # libpq reads an unencoded '?' or '#' before the '@' as part of the password
        ("postgresql://app:s3?cr#et@db/aegis", "postgresql://app:***@db/aegis"),
        ("postgresql://app@db/aegis?user=me@corp", "postgresql://app@db/aegis?user=me@corp"),
        # libpq decodes a query's keys too, and sslpassword unlocks the client's key
        ("postgresql://app@db/a?pass%77ord=s3cret", "postgresql://app@db/a?pass%77ord=***"),
        (
            "postgresql://app@db/a?sslpassword=s3cret&x=1",
            "postgresql://app@db/a?sslpassword=***&x=1",
        ),
        ("host=db sslpassword='k 1' dbname=a", "host=db sslpassword=*** dbname=a"),
    ],
)
def test_mask_dsn_hides_the_password(dsn: str, masked: str) -> None:
    """Every spelling of a password in a DSN is masked; the rest stays readable."""
    assert mask_dsn(dsn) == masked


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://app@127.0.0.1:5432/test?pass%77ord=hunter2",
        "postgresql://app@127.0.0.1:5432/test?%70assword=hunter2&sslmode=disable",
        "postgresql://app:pw1@127.0.0.1:5432/test?sslpassword=keypass1",
        "host=127.0.0.1 dbname=test user=app sslpassword=keypass2",
        "host=127.0.0.1 dbname=test user=app password=ok sslpassword='key pass3'",
    ],
)
def test_no_secret_libpq_reads_reaches_a_message(dsn: str) -> None:
    """What libpq itself takes for a password or a key's passphrase is never in a message."""
    secrets = [
        value
        for key, value in psycopg.conninfo.conninfo_to_dict(dsn).items()
        if key in {"password", "sslpassword"} and isinstance(value, str)
    ]
    assert secrets
    location = parse_store_url(dsn)
    for text in (location.where, location.scrub(f"connection failed: {dsn}"), mask_dsn(dsn)):
        assert not [secret for secret in secrets if secret in text], text


def test_a_closed_port_is_one_clear_error_without_the_password() -> None:
    """A server that does not listen gives a StoreError naming the masked DSN and the fix."""
    db = Database("postgresql://postgres:topsecret@127.0.0.1:1/test", connect_timeout=2)
    with pytest.raises(StoreError) as caught:
        db.connect()
    text = str(caught.value)
    assert "postgresql://postgres:***@127.0.0.1:1/test" in text
    assert "topsecret" not in text
    assert "check that the server is running" in text


def test_a_missing_database_says_to_create_it() -> None:
    """A DSN naming a database that does not exist says so and how to fix it."""
    base = POSTGRES_DSN.rsplit("/", 1)[0]
    db = Database(f"{base}/aegis_no_such_db_{uuid.uuid4().hex[:6]}")
    with pytest.raises(StoreError, match="createdb"):
        db.connect()


def test_a_missing_role_names_the_user() -> None:
    """A DSN naming a role the server does not know points at the user name."""
    dsn = POSTGRES_DSN.replace("postgres@", "aegis_nobody:pw@", 1)
    with pytest.raises(StoreError, match="user name") as caught:
        Database(dsn).connect()
    assert ":pw@" not in str(caught.value)


def test_a_malformed_dsn_is_a_configuration_error() -> None:
    """A DSN libpq cannot parse is refused when the store is built, password masked."""
    with pytest.raises(ConfigurationError, match="not a valid PostgreSQL DSN") as caught:
        Database("host=db password=s3cret = nonsense")
    assert "s3cret" not in str(caught.value)


def test_statement_timeout_cancels_a_long_statement(postgres_dsn: str) -> None:
    """A statement past statement_timeout is cancelled by the server and explained."""
    db = Database(postgres_dsn, statement_timeout=0.2)
    with pytest.raises(StoreError, match="statement_timeout"), db.connection("wait at") as conn:
        conn.execute("SELECT pg_sleep(5)")
    db.close()


def test_a_search_path_without_any_schema_is_explained(postgres_dsn: str) -> None:
    """With no schema option and a search_path naming no schema, the error says what to do."""
    dsn = postgres_dsn.rsplit("%3D", 1)[0] + "%3Daegis_missing_schema"
    db = Database(dsn)
    with pytest.raises(StoreError, match="CREATE SCHEMA"), db.connection("read") as conn:
        db.schema(conn)
    db.close()


def test_migrate_creates_versions_and_tables(postgres_dsn: str) -> None:
    """A first migration creates the versions table and the component's tables."""
    db = Database(postgres_dsn)
    with db.connection("migrate") as conn:
        assert migrate(db, conn, "widgets", MIGRATIONS, create=True) == 2
        schema = db.schema(conn)
        assert component_version(conn, schema, "widgets") == 2
        assert component_version(conn, schema, "other") == 0
        conn.execute("INSERT INTO widgets (id, name) VALUES (1, 'a')")
        rows = conn.execute(f"SELECT component, version FROM {VERSIONS_TABLE}").fetchall()
    assert rows == [("widgets", 2)]
    db.close()


def test_a_reader_never_creates_tables(postgres_dsn: str) -> None:
    """Migrating with create=False in an empty schema is an error and creates nothing."""
    db = Database(postgres_dsn)
    with db.connection("read") as conn:
        with pytest.raises(StoreError, match="no Aegis widgets tables"):
            migrate(db, conn, "widgets", MIGRATIONS, create=False)
        assert component_version(conn, db.schema(conn), "widgets") is None
    db.close()


def test_a_newer_schema_is_refused(postgres_dsn: str) -> None:
    """Tables at a version this Aegis does not know are an error naming the upgrade."""
    db = Database(postgres_dsn)
    with db.connection("migrate") as conn:
        migrate(db, conn, "widgets", MIGRATIONS, create=True)
        conn.execute(f"UPDATE {VERSIONS_TABLE} SET version = 9")
        with pytest.raises(StoreError, match="upgrade aegis-runtime"):
            migrate(db, conn, "widgets", MIGRATIONS, create=True)
    db.close()


def test_an_explicit_schema_is_created(postgres_dsn: str) -> None:
    """A schema given by option is created on first use and holds the tables."""
    schema = f"aegis_explicit_{uuid.uuid4().hex[:8]}"
    db = Database(POSTGRES_DSN, schema=schema)
    try:
        with db.connection("migrate") as conn:
            migrate(db, conn, "widgets", MIGRATIONS, create=True)
            found = conn.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s",
                (schema,),
            ).fetchone()
        assert found == (2,)
    finally:
        db.close()
        with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_concurrent_migrations_do_not_race(postgres_dsn: str) -> None:
    """Eight threads migrating one fresh schema at once all end at the same version."""
    errors: list[BaseException] = []
    versions: list[int] = []
    barrier = threading.Barrier(8)

    def one() -> None:
        db = Database(postgres_dsn)
        try:
            conn = db.connect()
            with conn:
                barrier.wait()
                versions.append(migrate(db, conn, "widgets", MIGRATIONS, create=True))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert versions == [2] * 8


def test_without_the_extra_a_dsn_names_the_extra_to_install() -> None:
    """With psycopg missing, a postgresql:// trail is one line naming the postgres extra."""
    code = (
        "import sys; sys.modules['psycopg'] = None\n"
        "from aegis.cli import main\n"
        # no password in it: one on the command line is warned about first
        "sys.argv = ['aegis', 'audit', 'verify', '--db', 'postgresql://u@127.0.0.1/db']\n"
        "main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert 'pip install "aegis-runtime[postgres]"' in lines[0]
