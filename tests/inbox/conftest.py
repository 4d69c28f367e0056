"""Fixtures of the inbox tests: the real OpenID provider, installed once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
from oidc_support import ProviderInstallError, install_oidc_provider


@pytest.fixture(scope="session")
def oidc_provider_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """oidc-provider installed from npm into a temp folder, once per session; fails if npm does."""
    try:
        return install_oidc_provider(tmp_path_factory.mktemp("oidc-provider"))
    except ProviderInstallError as exc:
        pytest.fail(str(exc))
