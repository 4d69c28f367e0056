"""`aegis serve` on PostgreSQL compares this host's clock with the database server's."""

from __future__ import annotations

import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cli_support import Invoke

import aegis.server
from aegis.server.clocks import read_clocks, skew_warning
from aegis.server.service import ApprovalService
from aegis.stores.approvals import open_approval_store

TWO_MINUTES = timedelta(minutes=2)


def _shifted(by: timedelta) -> Callable[[], datetime]:
    return lambda: datetime.now(UTC) + by


def test_a_clock_two_minutes_off_is_named_with_both_times(postgres_dsn: str) -> None:
    """Ahead or behind, the warning gives both times, the gap, what it affects and the fix."""
    store = open_approval_store(postgres_dsn)
    try:
        assert (agreed := read_clocks(store, _shifted(timedelta(0)))) is not None
        assert skew_warning(agreed) is None  # the same host: its clocks agree
        ahead = read_clocks(store, _shifted(TWO_MINUTES))
        behind = read_clocks(store, _shifted(-TWO_MINUTES))
    finally:
        store.close()
    assert ahead is not None
    assert behind is not None
    assert ahead.skew == pytest.approx(120, abs=2)
    assert behind.skew == pytest.approx(-120, abs=2)
    for reading, way in ((ahead, "ahead of"), (behind, "behind")):
        warning = skew_warning(reading)
        assert warning is not None
        assert reading.host.isoformat()[:19] in warning
        assert reading.database.isoformat()[:19] in warning
        assert f"{abs(reading.skew):.1f} s {way}" in warning
        assert "tokens and inbox sign-ins" in warning
        assert "NTP" in warning


def test_a_sqlite_file_has_no_other_clock(tmp_path: Path) -> None:
    """A SQLite store lives on this host: there is nothing to compare, whatever the clock."""
    store = open_approval_store(str(tmp_path / "aegis.db"))
    try:
        assert read_clocks(store, _shifted(TWO_MINUTES)) is None
    finally:
        store.close()


def test_serve_warns_of_a_host_clock_off_and_still_starts(
    invoke: Invoke, postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Started with a clock two minutes behind, `aegis serve` warns on stderr, then goes on.

    It goes on to listen, on a port taken here on purpose, so that it stops
    there instead of serving.
    """
    opened = aegis.server.open_service

    def open_behind(*args: Any, **kwargs: Any) -> ApprovalService:
        service = opened(*args, **kwargs)
        service.clock = _shifted(-TWO_MINUTES)
        return service

    monkeypatch.setattr(aegis.server, "open_service", open_behind)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = invoke("serve", "--db", postgres_dsn, "--port", port, "--log-level", "critical")
    assert "could not listen" in result.stderr  # it went on past the warning
    assert "warning: this host's clock" in result.stderr
    assert "behind the database server's" in result.stderr
