"""Test-wide setup: child processes import this checkout's aegis."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# Crash, multi-process and CLI tests start real Python processes. They must
# run the code under test, not whatever aegis happens to be installed.
_ROOT = str(Path(__file__).resolve().parent.parent)
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (_ROOT, os.environ.get("PYTHONPATH", "")) if p
)

# Bytecode: the suite starts hundreds of Python processes (aegis serve,
# mcp-proxy, the CLI, agents), and with PYTHONDONTWRITEBYTECODE set each one
# compiles aegis and the test helpers from source again, about a third of the
# CPU such a test spends. Those processes keep their bytecode in a cache
# folder of their own instead (PYTHONPYCACHEPREFIX), so nothing is written
# into the checkout and the next process, or the next run, reads it back.
# A PYTHONPYCACHEPREFIX already set is used as it is.
if os.environ.get("PYTHONDONTWRITEBYTECODE"):
    _cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    os.environ.setdefault("PYTHONPYCACHEPREFIX", str(Path(_cache_home) / "aegis-test-pycache"))
    del os.environ["PYTHONDONTWRITEBYTECODE"]


# ---------------------------------------------------------------- PostgreSQL

#: the server the PostgreSQL tests use; scripts/check makes sure it runs
POSTGRES_DSN = os.environ.get(
    "AEGIS_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)


@pytest.fixture
def postgres_dsn() -> Iterator[str]:
    """A DSN of the test server whose search_path is a fresh schema, dropped afterwards.

    Everything a test creates through this DSN lands in its own schema, so
    tests never see each other's tables and leave nothing behind.
    """
    import psycopg

    schema = f"aegis_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    separator = "&" if "?" in POSTGRES_DSN else "?"
    try:
        yield f"{POSTGRES_DSN}{separator}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


# ---------------------------------------------------------------- OpenID provider


@pytest.fixture(scope="session")
def oidc_provider_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """oidc-provider installed from npm into a temp folder, once per session; fails if npm does."""
    # tests/inbox/oidc_support.py: on the path once an inbox test module is collected
    from oidc_support import ProviderInstallError, install_oidc_provider

    try:
        return install_oidc_provider(tmp_path_factory.mktemp("oidc-provider"))
    except ProviderInstallError as exc:
        pytest.fail(str(exc))
