"""Shared fixtures for the command line tests: a runner, a policy, an audit database."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_support import POLICY, Invoke, write_session
from click.testing import CliRunner, Result

from aegis.cli import cli


@pytest.fixture
def invoke(monkeypatch: pytest.MonkeyPatch) -> Invoke:
    """Run ``aegis ARGS...`` in-process and return Click's result (stdout, stderr apart)."""
    monkeypatch.delenv("AEGIS_DB", raising=False)
    monkeypatch.delenv("AEGIS_SCHEMA", raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)
    runner = CliRunner()

    def run(*args: str, input: str | None = None) -> Result:
        return runner.invoke(cli, list(args), input=input, catch_exceptions=False)

    return run


@pytest.fixture
def policy_path(tmp_path: Path) -> Path:
    """A valid three-rule policy file."""
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY, encoding="utf-8")
    return path


@pytest.fixture
def audit_db(tmp_path: Path) -> Path:
    """An audit database holding cli_support.SESSION (4 records, session-1)."""
    path = tmp_path / "audit.db"
    write_session(path)
    return path
