"""The pending list sorted by risk reads an index in its order, on SQLite and PostgreSQL.

Without the index every list "highest risk first" sorts all pending
requests before it can answer with the first page. The tests ask each
engine's planner for the plan of the store's own query, and migrate a
store of the schema before the index (version 5) to the one with it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from approval_versions import create_version, version_of

from aegis.core.action import Action, action_digest
from aegis.core.approval_request import ApprovalRequest, RequestStatus, request_digest
from aegis.core.risk import RiskLevel
from aegis.stores._approvals_sql import _ORDERS, SCHEMA_VERSION
from aegis.stores.approvals import ApprovalStore, open_approval_store

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
INDEX = "aegis_approval_requests_risk"

#: the store's query for the first page of the pending list, highest risk first
PAGE = (
    "SELECT id FROM aegis_approval_requests WHERE status = 'pending' "
    f"ORDER BY {_ORDERS['risk']} LIMIT 100"
)


def _fill(store: ApprovalStore, count: int) -> None:
    levels = list(RiskLevel)
    for n in range(count):
        action = Action("refund", "billing", {"n": n})
        created = NOW + timedelta(seconds=n)
        store.create_request(
            ApprovalRequest(
                id=f"apr_{n:024x}",
                session_id=f"s{n}",
                requester="bot",
                action=action,
                risk_level=levels[n % len(levels)],
                matched_rule="refunds",
                reason="",
                approvers=1,
                reviewers=(),
                created_at=created,
                expires_at=created + timedelta(days=1),
                digest=request_digest(action, "bot"),
                action_digest=action_digest(action),
            ),
            created,
        )


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database: a SQLite file, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        return str(tmp_path / "aegis.db")
    dsn: str = request.getfixturevalue("postgres_dsn")
    return dsn


@pytest.fixture
def store(db: str) -> Iterator[ApprovalStore]:
    """The approval store of that database, holding 300 pending requests of every risk."""
    opened = open_approval_store(db)
    _fill(opened, 300)
    yield opened
    opened.close()


def _plan(db: str) -> str:
    """The engine's plan for :data:`PAGE`, as text."""
    if db.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute("ANALYZE aegis_approval_requests")
            # Only "can an index give this order?": with sorting priced out, a
            # plan without a Sort node must be reading an index in order.
            conn.execute("SET enable_sort = off")
            conn.execute("SET enable_seqscan = off")
            rows = conn.execute("EXPLAIN " + PAGE).fetchall()
        return "\n".join(str(row[0]) for row in rows)
    with sqlite3.connect(db) as conn:
        conn.execute("ANALYZE")
        rows = conn.execute("EXPLAIN QUERY PLAN " + PAGE).fetchall()
    conn.close()
    return "\n".join(str(row[-1]) for row in rows)


def test_the_risk_sort_reads_the_index_in_order(store: ApprovalStore, db: str) -> None:
    """The first page highest risk first comes from the index, with no sort of all pending."""
    plan = _plan(db)
    assert INDEX in plan, plan
    assert "TEMP B-TREE" not in plan.upper(), plan  # SQLite's sort
    assert "Sort" not in plan, plan  # PostgreSQL's
    page = store.list_requests(RequestStatus.PENDING, sort="risk", limit=100)
    ranks = [int(r.risk_level) for r in page]
    assert ranks == sorted(ranks, reverse=True)
    assert ranks[0] == int(RiskLevel.CRITICAL)


def _index_names(db: str) -> set[str]:
    if db.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(db, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
            ).fetchall()
        return {str(row[0]) for row in rows}
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall()
    conn.close()
    return {str(row[0]) for row in rows}


def test_a_store_of_version_5_gets_the_index(db: str) -> None:
    """Opening tables of the schema before the index adds it (version 6), keeping the rows."""
    create_version(db, 5)
    assert version_of(db) == 5
    assert INDEX not in _index_names(db)
    store = open_approval_store(db)
    try:
        _fill(store, 3)
        assert version_of(db) == SCHEMA_VERSION
        assert INDEX in _index_names(db)
        page = store.list_requests(RequestStatus.PENDING, sort="risk")
        assert [r.risk_level for r in page] == [RiskLevel.HIGH, RiskLevel.MEDIUM, RiskLevel.LOW]
    finally:
        store.close()
