"""The integration tests never reach a network: the Agents SDK's tracing export is off.

Integrations whose dependencies conflict with the main environment's run in
their own environment (``scripts/check`` creates it and sets
``AEGIS_TEST_FRAMEWORK``); elsewhere their folders are not collected.
"""

from __future__ import annotations

import os

import pytest

if os.environ.get("AEGIS_TEST_FRAMEWORK") == "crewai":
    # CrewAI's telemetry and trace export would reach for the network.
    os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("CREWAI_TRACING_ENABLED", "false")
    os.environ.setdefault("OTEL_SDK_DISABLED", "true")
    import warnings

    with warnings.catch_warnings():
        # Importing CrewAI warns about its own package layout (ImportWarning);
        # the suite turns warnings into errors, so it is imported once here.
        warnings.simplefilter("ignore")
        import crewai
        import crewai.rag.embeddings.factory  # noqa: F401

#: the framework whose own environment runs these tests, if any
ISOLATED = os.environ.get("AEGIS_TEST_FRAMEWORK", "")

#: folders of tests that only their framework's own environment can import
collect_ignore = [name for name in ("google_adk", "crewai") if name.replace("_", "-") != ISOLATED]


def pytest_configure(config: pytest.Config) -> None:
    """In CrewAI's environment, let CrewAI's warnings about its own internals pass."""
    if ISOLATED == "crewai":
        # CrewAI reads its own deprecated fields on every agent and crew it builds.
        config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning:crewai")
        config.addinivalue_line(
            "filterwarnings", "ignore:function_calling_llm is deprecated:DeprecationWarning"
        )


@pytest.fixture(autouse=True, scope="session")
def _no_agents_tracing() -> None:
    """Keep the Agents SDK from exporting traces (it would try api.openai.com)."""
    if ISOLATED:
        return  # the Agents SDK is not part of a framework's own environment
    from agents import set_tracing_disabled

    set_tracing_disabled(True)
