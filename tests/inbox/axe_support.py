"""axe-core (the accessibility engine, from the npm registry) for the inbox's browser tests.

The ``axe_source`` fixture (tests/inbox/conftest.py) installs it; :func:`axe_problems` runs it.
"""

from __future__ import annotations

from playwright.sync_api import Page

#: axe-core, from the npm registry, pinned
AXE_VERSION = "4.10.2"


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
