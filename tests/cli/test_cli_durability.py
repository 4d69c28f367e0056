"""``--durability`` of ``aegis serve`` and ``aegis mcp-proxy``: the audit trail's promise, named."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

from aegis.core.policy import Policy
from aegis.mcp.runner import ProxySettings, build_runtime
from aegis.runtime.audit import AuditLogger
from aegis.server import open_service

Invoke = Callable[..., Result]
POLICY = Policy.from_dict({"version": "1", "defaults": {"approval": "auto"}, "rules": []})


@pytest.mark.parametrize("command", ["serve", "mcp-proxy"])
def test_the_option_is_offered_with_its_levels(invoke: Invoke, command: str) -> None:
    """Both commands that write the trail name the three levels in their help."""
    result = invoke(command, "--help")
    assert result.exit_code == 0
    assert "--durability [process|result|full]" in result.output


@pytest.mark.parametrize("command", ["serve", "mcp-proxy"])
def test_an_unknown_level_is_a_usage_error(invoke: Invoke, command: str, tmp_path: Path) -> None:
    """A level that is not one of the three stops the command before it opens anything."""
    db = tmp_path / "audit.db"
    result = invoke(command, "--durability", "sometimes", "--db", str(db), "--policy", "p.yaml")
    assert result.exit_code == 2
    assert "sometimes" in result.output
    assert not db.exists()


@pytest.mark.parametrize("level", ["process", "result", "full"])
def test_the_service_opens_its_trail_at_the_level(tmp_path: Path, level: str) -> None:
    """open_service(durability=...) (what `aegis serve --durability` calls) opens the trail so."""
    service = open_service(str(tmp_path / "audit.db"), durability=level)
    try:
        assert isinstance(service.audit, AuditLogger)
        assert service.audit.store.durability == level  # type: ignore[attr-defined]
    finally:
        service.close()


@pytest.mark.parametrize(("level", "expected"), [(None, "result"), ("full", "full")])
def test_the_proxy_records_at_the_level(tmp_path: Path, level: str | None, expected: str) -> None:
    """The proxy's runtime writes its trail at the level given, 'result' by default."""
    settings = ProxySettings(policy=POLICY, db=str(tmp_path / "audit.db"), durability=level)
    runtime = build_runtime(settings)
    audit = runtime.audit
    assert isinstance(audit, AuditLogger)
    assert audit.store.durability == expected  # type: ignore[attr-defined]
    audit.close()
