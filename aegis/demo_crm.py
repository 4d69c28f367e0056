"""The demo's executor: a small customer database (CRM) in a SQLite file.

It is a real executor, not a mock: reads, updates, refunds and deletes
change rows in a throw-away database, so that what the policy lets through
visibly happens and what it stops visibly does not.
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from aegis.adapters.base import BaseExecutor
from aegis.core.action import Action
from aegis.core.result import Result, ResultStatus

__all__ = ["CUSTOMERS", "CRMExecutor"]

#: the rows the CRM starts with: (id, name, email, tier)
CUSTOMERS: tuple[tuple[int, str, str, str], ...] = (
    (1, "Ada Lovelace", "ada@example.com", "gold"),
    (2, "Grace Hopper", "grace@example.com", "silver"),
    (3, "Alan Turing", "alan@example.com", "bronze"),
    (4, "Katherine Johnson", "katherine@example.com", "silver"),
    (5, "Edsger Dijkstra", "edsger@example.com", "bronze"),
)

_SCHEMA = """
CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, email TEXT, tier TEXT);
CREATE TABLE refunds (id INTEGER PRIMARY KEY, customer_id INTEGER, amount REAL);
"""

_UPDATABLE = frozenset({"name", "email", "tier"})


class CRMExecutor(BaseExecutor):
    """Carry out CRM actions on a fresh SQLite database.

    ``setup()`` creates the database (in a temporary folder unless ``path``
    is given) with :data:`CUSTOMERS`; ``teardown()`` closes it and removes
    the temporary folder. Understood actions:

    * ``read`` (target ``crm``): all customers, or ``{"id": n}``;
    * ``update`` ``{"id": n, "fields": {...}}``: name, email or tier;
    * ``refund`` ``{"customer_id": n, "amount": x}``: books a refund;
    * ``delete`` ``{"id": n}`` or ``{"scope": "all"}``.

    The database is tiny and local, so queries run on the event loop's
    thread: a thread hop would cost more than the query.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self._path = None if path is None else Path(path)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._db: sqlite3.Connection | None = None

    async def setup(self) -> None:
        """Create and fill the database."""
        path = self._path
        if path is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="aegis-demo-")
            path = Path(self._tmp.name) / "crm.db"
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.executescript(_SCHEMA)
        self._db.executemany("INSERT INTO customers VALUES (?, ?, ?, ?)", CUSTOMERS)

    async def teardown(self) -> None:
        """Close the database and delete it if it was temporary."""
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def customers(self) -> list[dict[str, Any]]:
        """Every customer row, by id."""
        rows = self._conn().execute("SELECT id, name, email, tier FROM customers ORDER BY id")
        return [dict(zip(("id", "name", "email", "tier"), row, strict=True)) for row in rows]

    async def execute(self, action: Action) -> Result:
        """Run ``action`` against the database; unknown actions raise ``ValueError``."""
        handler = getattr(self, f"_do_{action.type}", None)
        if handler is None:
            raise ValueError(
                f"the demo CRM cannot {action.type!r}; it knows read, update, refund and delete"
            )
        data = handler(action.params)
        return Result(action, ResultStatus.SUCCESS, data=data)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError(
                "the demo CRM is not set up; run it inside `async with Runtime(...)`"
            )
        return self._db

    def _do_read(self, params: Any) -> Any:
        if "id" in params:
            return [c for c in self.customers() if c["id"] == params["id"]]
        return self.customers()

    def _do_update(self, params: Any) -> dict[str, Any]:
        customer_id, fields = params["id"], dict(params.get("fields", {}))
        unknown = set(fields) - _UPDATABLE
        if unknown:
            raise ValueError(f"cannot update {sorted(unknown)}; updatable: {sorted(_UPDATABLE)}")
        self._existing(customer_id)
        for name, value in fields.items():
            # Column names come from the _UPDATABLE allow-list checked above.
            self._conn().execute(
                f"UPDATE customers SET {name} = ? WHERE id = ?", (value, customer_id)
            )
        return {"id": customer_id, "updated": fields}

    def _do_refund(self, params: Any) -> dict[str, Any]:
        customer_id, amount = params["customer_id"], params["amount"]
        self._existing(customer_id)
        cursor = self._conn().execute(
            "INSERT INTO refunds (customer_id, amount) VALUES (?, ?)", (customer_id, amount)
        )
        return {"refund_id": cursor.lastrowid, "customer_id": customer_id, "amount": amount}

    def _do_delete(self, params: Any) -> dict[str, int]:
        if params.get("scope") == "all":
            cursor = self._conn().execute("DELETE FROM customers")
        else:
            self._existing(params["id"])
            cursor = self._conn().execute("DELETE FROM customers WHERE id = ?", (params["id"],))
        return {"deleted": cursor.rowcount}

    def _existing(self, customer_id: object) -> None:
        row = self._conn().execute("SELECT 1 FROM customers WHERE id = ?", (customer_id,))
        if row.fetchone() is None:
            raise LookupError(f"no customer with id {customer_id!r}")
