"""The MCP tests' npm packages: real hosts, servers and the conformance suite, installed once."""

from __future__ import annotations

import pytest
from mcp_support import NpmPackages, check_npm_packages
from npm_installs import NpmInstallError, installed


@pytest.fixture(scope="session")
def npm_packages(tmp_path_factory: pytest.TempPathFactory) -> NpmPackages:
    """The pinned npm packages (tests/npm_installs.py's "mcp" set), installed once per run.

    A failing install fails the tests that need them; they are never skipped.
    """
    try:
        return check_npm_packages(installed(tmp_path_factory, "mcp"))
    except NpmInstallError as exc:
        pytest.fail(str(exc))
