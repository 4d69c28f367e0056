"""Test-wide setup: child processes import this checkout's aegis."""

from __future__ import annotations

import os
import signal
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

# Ctrl-C: a shell without job control starts a background command (`cmd &`,
# as CI runners and nohup do) with SIGINT ignored, and a process keeps an
# ignored signal across exec. Every process a test starts would then ignore
# the Ctrl-C a test sends to stop it (`aegis serve`, `aegis audit tail -f`),
# and those tests failed for the way the suite was launched. The suite's
# processes take SIGINT as a terminal would give it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Hypothesis: its clock-based checks (an example slower than 200 ms, data
# drawn too slowly) say how loaded the machine is, not whether the code is
# right, and failed runs of the suite on a shared 2-core machine. Speed is
# the benchmarks' business; every property is still checked in full.
try:
    from hypothesis import HealthCheck, settings
except ImportError:  # the frameworks' own environments (scripts/check) have no property tests
    pass
else:
    settings.register_profile(
        "aegis-tests", deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    settings.load_profile("aegis-tests")


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


# ---------------------------------------------------------------- npm packages

#: which of tests/npm_installs.py's sets each fixture needs
NPM_SETS = {
    "npm_packages": "mcp",
    "oidc_provider_package": "oidc-provider",
    "axe_source": "axe-core",
}


@pytest.fixture(autouse=True, scope="session")
def _npm_installs_started(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Start installing the npm sets the selected tests need, at once and in the background.

    They take minutes; this way they finish while the tests that need none run.
    """
    from npm_installs import start

    wanted = {NPM_SETS[name] for item in request.session.items for name in item.fixturenames
              if name in NPM_SETS}  # fmt: skip
    for name in sorted(wanted):
        start(tmp_path_factory, name)


# ---------------------------------------------------------------- OpenID provider


@pytest.fixture(scope="session")
def oidc_provider_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """oidc-provider from npm, installed once per run (tests/npm_installs.py); fails if npm does."""
    from npm_installs import NpmInstallError, installed

    # tests/inbox/oidc_support.py: on the path once an inbox test module is collected
    from oidc_support import prepare_oidc_provider

    try:
        return prepare_oidc_provider(installed(tmp_path_factory, "oidc-provider"))
    except NpmInstallError as exc:
        pytest.fail(str(exc))
