"""The integration tests never reach a network: the Agents SDK's tracing export is off."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _no_agents_tracing() -> None:
    """Keep the Agents SDK from exporting traces (it would try api.openai.com)."""
    from agents import set_tracing_disabled

    set_tracing_disabled(True)
