"""Test-wide setup: child processes import this checkout's aegis."""

from __future__ import annotations

import json
import os
import secrets
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from local_postgres import Login

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


#: the password of the password cluster's ``aegis`` role: every character a URL
#: must encode ('@', ':', '/', '%', a space), a quote and a backslash a libpq
#: string must escape, and non-ASCII letters
AEGIS_ROLE_PASSWORD = "p@ss:w/rd %41 'q' \\ Grüße-密码"


@pytest.fixture(scope="session")
def password_postgres() -> Iterator[Login]:
    """A cluster of the session's own that checks passwords (scram-sha-256), and a login on it.

    The login is the role ``aegis`` (password AEGIS_ROLE_PASSWORD), owner of
    the database ``agents``. The server at POSTGRES_DSN trusts everyone, so
    only here is a wrong password refused. Fails, never skips, without
    PostgreSQL's server binaries: a password path untested would go unseen.
    """
    from local_postgres import ClusterUnavailable, LocalCluster

    try:
        cluster = LocalCluster(password=secrets.token_urlsafe(16))
    except ClusterUnavailable as exc:
        pytest.fail(str(exc))
    try:
        cluster.start()
        yield cluster.add_login("aegis", AEGIS_ROLE_PASSWORD, "agents")
    except ClusterUnavailable as exc:
        pytest.fail(str(exc))
    finally:
        cluster.stop()


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


# ---------------------------------------------------------------- scheduling under pytest-xdist

#: about how many seconds each of the slowest test files took on one of two
#: workers (scripts/check's ``-n 2 --dist loadfile``) on a loaded 2-core
#: machine, waiting for npm left out. Only the order matters: costliest first.
#: Any other file, a new one too, counts as DEFAULT_FILE_COST; a file that
#: grows slow belongs here.
FILE_COSTS: dict[str, float] = {
    "tests/adapters/test_cross_process.py": 458,
    "tests/mcp/test_conformance.py": 454,
    "tests/mcp/test_proxy_stdio.py": 384,
    "tests/inbox/test_inbox_browser.py": 282,
    "tests/mcp/test_proxy_http.py": 271,
    "tests/adapters/test_readme_integrations.py": 255,
    "tests/test_readme.py": 222,
    "tests/inbox/test_approvals_terminal.py": 206,
    "tests/mcp/test_proxy_hostile_server.py": 165,
    "tests/inbox/test_inbox_pages.py": 146,
    "tests/runtime/test_audit.py": 144,
    "tests/stores/test_usage_contract.py": 128,
    "tests/inbox/test_inbox_oidc.py": 124,
    "tests/mcp/test_real_hosts.py": 123,
    "tests/server/test_server_remote.py": 113,
    "tests/runtime/test_engine_limits.py": 110,
    "tests/server/test_server_audit_visibility.py": 106,
    "tests/mcp/test_proxy_session.py": 103,
    "tests/inbox/test_inbox_oidc_groups.py": 100,
    "tests/stores/postgres/test_postgres_chain_faults.py": 99,
    "tests/mcp/test_proxy_one_reading.py": 91,
    "tests/adapters/test_contract.py": 87,
    "tests/mcp/test_proxy_long_approval.py": 86,
    "tests/runtime/test_calls.py": 75,
    "tests/inbox/test_inert_text.py": 74,
    "tests/server/test_server_visibility.py": 72,
    "tests/stores/postgres/test_postgres_audit.py": 72,
    "tests/mcp/test_proxy_wire.py": 69,
    "tests/inbox/test_inbox_oidc_browser.py": 65,
    "tests/stores/test_approval_store.py": 65,
    "tests/core/test_policy_properties.py": 64,
    "tests/inbox/test_approvals_cli.py": 64,
    "tests/stores/test_audit_contract.py": 60,
    "tests/inbox/test_local_secrets.py": 59,
    "tests/mcp/test_proxy_approval.py": 55,
    "tests/inbox/test_inbox_sessions.py": 54,
    "tests/stores/test_approval_sort_index.py": 52,
    "tests/inbox/test_metrics.py": 49,
    "tests/server/test_server_fuzz.py": 48,
    "tests/server/test_server_grant_rules.py": 45,
    "tests/server/test_server_paging.py": 42,
    "tests/core/test_regex.py": 41,
    "tests/stores/test_durability.py": 41,
    "tests/mcp/test_readme_mcp.py": 40,
    "tests/server/test_server_postgres.py": 40,
    "tests/adapters/test_extras.py": 35,
    "tests/server/test_server_live_list.py": 35,
    "tests/runtime/test_audit_crash.py": 30,
    "tests/server/test_server_readme.py": 28,
    "tests/server/test_server_door.py": 24,
    "tests/adapters/test_openai_agents_reach.py": 23,
    "tests/cli/test_cli_app.py": 22,
    "tests/core/test_conditions.py": 22,
    "tests/cli/test_cli_audit.py": 20,
    "tests/cli/test_cli_test.py": 19,
    "tests/server/test_server_bounds.py": 18,
    "tests/runtime/test_audit_tamper.py": 17,
    "tests/server/test_server_attacks.py": 16,
    "tests/stores/test_approval_store_model.py": 16,
    "tests/inbox/test_inbox_readme.py": 15,
    "tests/runtime/test_audit_backend.py": 15,
    "tests/server/test_server_terms.py": 15,
    "tests/stores/test_sqlite_usage_known.py": 15,
    "tests/stores/postgres/test_postgres_open_stores.py": 14,
    "tests/stores/test_sqlite_audit_threads.py": 14,
    "tests/server/test_server_api.py": 13,
    "tests/server/test_server_tls.py": 13,
    "tests/test_demo.py": 13,
    "tests/test_postgres_passwords.py": 40,
    "tests/cli/test_cli_stores.py": 12,
    "tests/core/test_approval_request.py": 12,
    "tests/core/test_record.py": 12,
    "tests/mcp/test_proxy_paths.py": 12,
    "tests/runtime/test_approval.py": 12,
    "tests/cli/test_cli_service.py": 11,
    "tests/runtime/test_limits_let_through.py": 11,
    "tests/core/test_policy_limits.py": 10,
}

DEFAULT_FILE_COST = 5.0

#: where the workers write down which npm sets each test file needs, for the controller
_NPM_NEEDS = "npm-needs.json"


def _file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On an xdist worker: write down each test file's npm sets for the controller's scheduler."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    from npm_installs import run_root

    needs: dict[str, set[str]] = {}
    for item in items:
        for name in item.fixturenames:
            if name in NPM_SETS:
                needs.setdefault(_file_of(item.nodeid), set()).add(NPM_SETS[name])
    root = run_root(config._tmp_path_factory)  # what the tmp_path_factory fixture gives
    written = root / f"{_NPM_NEEDS}.{os.environ['PYTEST_XDIST_WORKER']}"
    written.write_text(json.dumps({file: sorted(sets) for file, sets in needs.items()}))
    written.replace(root / _NPM_NEEDS)  # both workers write the same; either is whole


@pytest.hookimpl(optionalhook=True)  # only pytest-xdist knows the hook
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadfile``: hand out the costliest file whose npm sets are installed first.

    xdist's own order, most tests first, left the slowest files for last (the
    MCP conformance suite: three tests, minutes), run by one worker while the
    other idled. Now the next file a worker gets is the one that costs most
    (FILE_COSTS) among those ready to run: a file whose npm set is still
    installing comes once it is installed, or when nothing else is left.
    """
    if config.getvalue("dist") != "loadfile":
        return None
    from npm_installs import finished
    from xdist.scheduler import LoadFileScheduling

    root = config._tmp_path_factory.getbasetemp()  # the workers' run_root

    class CostliestReadyFirst(LoadFileScheduling):
        needs: dict[str, list[str]] | None = None

        def _assign_work_unit(self, node: Any) -> None:
            if self.needs is None:  # every worker has collected, so written them
                path = root / _NPM_NEEDS
                self.needs = json.loads(path.read_text()) if path.exists() else {}
            needs = self.needs

            def ready(file: str) -> bool:
                return all(finished(root, name) for name in needs.get(file, ()))

            def cost(file: str) -> float:
                return FILE_COSTS.get(file, DEFAULT_FILE_COST)

            # xdist 3.8's own queue; another shape (a newer xdist) keeps its order.
            queue = getattr(self, "workqueue", None)
            if queue and hasattr(queue, "move_to_end"):
                files = list(queue)  # xdist's order breaks ties
                pick = max(filter(ready, files), key=cost, default=None) or max(files, key=cost)
                queue.move_to_end(pick, last=False)
            super()._assign_work_unit(node)

    return CostliestReadyFirst(config, log)
