"""Log lines a peer provokes: the first few of each kind in full, then a count."""

from __future__ import annotations

import logging

import pytest

from aegis.mcp._logs import QuietLog


def test_past_the_first_few_lines_are_counted_and_told_at_most_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Ten lines in full, then a count when a minute has passed, and the rest at flush."""
    now = [0.0]
    quiet = QuietLog(logging.getLogger("aegis.test"), first=10, every=60, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, "aegis.test"):
        for i in range(1000):
            now[0] = i * 0.1  # 100 s in all
            quiet.warning("flood", "refused line %d", i)
        quiet.error("other", "a kind of its own")
        quiet.flush()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[:10] == [f"refused line {i}" for i in range(10)]
    assert "more of them are counted" in lines[10]
    # a minute after the tenth (0.9 s), line 609 tells the 600 counted so far
    assert lines[11] == "600 more like it in the last 60s, the latest: refused line 609"
    assert lines[12] == "a kind of its own"
    assert lines[13] == "390 more like it in the last 39s, the latest: refused line 999"
    assert len(lines) == 14
    assert caplog.records[12].levelno == logging.ERROR
