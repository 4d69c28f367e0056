"""The PostgreSQL fixture gives each test its own schema and drops it afterwards."""

from __future__ import annotations

import os

import psycopg

# Not imported from conftest: tests/cli/conftest.py shadows that module name
# when the whole suite runs.
POSTGRES_DSN = os.environ.get(
    "AEGIS_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)


def test_each_test_gets_a_fresh_schema(postgres_dsn: str) -> None:
    """Tables made through the fixture's DSN land in its schema, which starts empty."""
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        schema = conn.execute("select current_schema()").fetchone()
        assert schema is not None
        assert schema[0].startswith("aegis_test_")
        conn.execute("create table t (x int)")
        count = conn.execute(
            "select count(*) from information_schema.tables where table_schema = %s",
            (schema[0],),
        ).fetchone()
        assert count == (1,)
    with psycopg.connect(POSTGRES_DSN) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
