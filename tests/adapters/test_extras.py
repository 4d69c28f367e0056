"""Importing an integration without its extra fails with one line naming the extra."""

from __future__ import annotations

import subprocess
import sys

import pytest

CASES = [
    ("aegis.adapters.langchain", "langchain", "langchain"),
    ("aegis.adapters.openai_agents", "agents", "openai-agents"),
    ("aegis.adapters.anthropic", "anthropic", "anthropic"),
    ("aegis.adapters.pydantic_ai", "pydantic_ai", "pydantic-ai"),
    ("aegis.adapters.claude_agent_sdk", "claude_agent_sdk", "claude-agent-sdk"),
    ("aegis.adapters.google_adk", "google.adk", "google-adk"),
    ("aegis.adapters.crewai", "crewai", "crewai"),
]


@pytest.mark.parametrize(("module", "package", "extra"), CASES)
def test_import_without_the_extra_names_it(module: str, package: str, extra: str) -> None:
    """Without the framework, the import raises one ImportError line with the pip command."""
    code = (
        f"import sys; sys.modules[{package!r}] = None\n"
        "try:\n"
        f"    import {module}\n"
        "except ImportError as exc:\n"
        "    print(type(exc).__name__, exc, sep='|')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout.strip()
    kind, message = out.split("|", 1)
    assert kind == "ImportError"
    assert "\n" not in message
    assert f'pip install "aegis-runtime[{extra}]"' in message
    assert module in message


def test_the_core_imports_no_framework() -> None:
    """Importing aegis loads none of the framework packages."""
    code = (
        "import sys, aegis, aegis.runtime.engine\n"
        "names = ('langchain', 'langgraph', 'agents', 'anthropic', 'pydantic_ai',"
        " 'claude_agent_sdk', 'google', 'crewai')\n"
        "print(sorted(m for m in names if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout.strip()
    assert out == "[]"
