"""The PostgreSQL server of the tests, for tests that need it beyond their own schema.

Same server as the ``postgres_dsn`` fixture of tests/conftest.py (whose module
name other conftest files shadow when the whole suite runs).
"""

from __future__ import annotations

import os

#: the server the PostgreSQL tests use; scripts/check makes sure it runs
POSTGRES_DSN = os.environ.get(
    "AEGIS_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)
