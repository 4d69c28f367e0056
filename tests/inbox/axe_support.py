"""axe-core (the accessibility engine, from the npm registry) for the inbox's browser tests.

:func:`install_axe` gives its source (each browser module's ``axe_source`` fixture); the
pinned package is installed once per run by tests/npm_installs.py. :func:`axe_problems`
runs it. Not a conftest.py: a second module named conftest would shadow tests/cli's,
which its tests import from.
"""

from __future__ import annotations

import pytest
from npm_installs import NpmInstallError, installed
from playwright.sync_api import Page


def install_axe(tmp_path_factory: pytest.TempPathFactory) -> str:
    """axe-core's source, once npm has installed it; failing, never skipping."""
    try:
        folder = installed(tmp_path_factory, "axe-core")
    except NpmInstallError as exc:
        pytest.fail(str(exc))
    return (folder / "node_modules" / "axe-core" / "axe.min.js").read_text()


def axe_problems(page: Page, axe: str) -> list[str]:
    """The serious and critical violations axe-core finds on ``page``."""
    page.evaluate(axe)  # through the debugger protocol: the page's CSP stays as it is
    found = page.evaluate(
        "async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
        ".map(v => ({id: v.id, impact: v.impact, help: v.help,"
        " nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 5)}))"
    )
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {v['nodes']}"
        for v in found
        if v["impact"] in ("serious", "critical")
    ]
