"""The integration tests never reach a network: the Agents SDK's tracing export is off.

Integrations whose dependencies conflict with the main environment's run in
their own environment (``scripts/check`` creates it and sets
``AEGIS_TEST_FRAMEWORK``); elsewhere their folders are not collected.
"""

from __future__ import annotations

import os

import pytest

#: the framework whose own environment runs these tests, if any
ISOLATED = os.environ.get("AEGIS_TEST_FRAMEWORK", "")

#: folders of tests that only their framework's own environment can import
collect_ignore = [name for name in ("google_adk", "crewai") if name.replace("_", "-") != ISOLATED]


@pytest.fixture(autouse=True, scope="session")
def _no_agents_tracing() -> None:
    """Keep the Agents SDK from exporting traces (it would try api.openai.com)."""
    if ISOLATED:
        return  # the Agents SDK is not part of a framework's own environment
    from agents import set_tracing_disabled

    set_tracing_disabled(True)
