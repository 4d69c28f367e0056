"""Fixtures of the store contract suite: every test runs once per engine in ENGINES.

The engines are in store_engines.py; to add one (PostgreSQL), add its
Engine subclass there and a factory here.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from quiet_postgres import QuietServer
from store_engines import ENGINE_CLASSES, Engine, MemoryEngine, PostgresEngine, SQLiteEngine

from aegis.stores.base import AuditStore

#: engine name -> factory of a fresh Engine (given pytest's request)
ENGINES: dict[str, Callable[[pytest.FixtureRequest], Engine]] = {
    "memory": lambda request: MemoryEngine(),
    "sqlite": lambda request: SQLiteEngine(request.getfixturevalue("tmp_path")),
    "postgres": lambda request: PostgresEngine(request.getfixturevalue("postgres_dsn")),
}


@pytest.fixture(params=sorted(ENGINES))
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    """Each engine in turn, on a fresh location."""
    made = ENGINES[request.param](request)
    try:
        yield made
    finally:
        made.cleanup()


@pytest.fixture(params=sorted(name for name in ENGINES if name != "memory"))
def persistent_engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    """Each engine whose records outlive the process, on a fresh location."""
    made = ENGINES[request.param](request)
    try:
        yield made
    finally:
        made.cleanup()


@pytest.fixture
def store(engine: Engine) -> Iterator[AuditStore]:
    """A store of the engine under test, checked and closed afterwards."""
    opened = engine.open()
    opened.check()
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture(scope="session")
def quiet_postgres() -> Iterator[str]:
    """The DSN of a PostgreSQL cluster of this session's own, whose WAL flushes can be watched."""
    server = QuietServer()
    try:
        server.start()
        yield server.dsn
    finally:
        server.stop()


@pytest.fixture
def quiet_postgres_dsn(quiet_postgres: str) -> Iterator[str]:
    """A DSN of the quiet cluster whose search_path is a fresh schema, dropped afterwards."""
    import psycopg

    schema = f"aegis_quiet_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(quiet_postgres, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{quiet_postgres}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(quiet_postgres, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(
    params=sorted(name for name, kind in ENGINE_CLASSES.items() if kind.observes_flushes)
)
def flushing_engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    """Each engine that can show which commits waited for the disk (Engine.watch_flushes).

    PostgreSQL's runs on the quiet cluster: on the shared server, other
    clients' flushes would carry ours.
    """
    if request.param == "postgres":
        made: Engine = PostgresEngine(request.getfixturevalue("quiet_postgres_dsn"))
    else:
        made = ENGINES[request.param](request)
    try:
        yield made
    finally:
        made.cleanup()
