"""The MCP tests' npm packages: real hosts, servers and the conformance suite, installed once."""

from __future__ import annotations

import pytest
from mcp_support import NpmPackages, install_npm_packages


@pytest.fixture(scope="session")
def npm_packages(tmp_path_factory: pytest.TempPathFactory) -> NpmPackages:
    """The pinned npm packages in a temporary folder, installed once per session.

    A failing install fails the tests that need them; they are never skipped.
    """
    return install_npm_packages(tmp_path_factory.mktemp("npm"))
