"""axe-core (the accessibility engine, from the npm registry) for the inbox's browser tests.

:func:`install_axe` installs it (each browser module's ``axe_source`` fixture, once per
module); :func:`axe_problems` runs it. Not a conftest.py: a second module named conftest
would shadow tests/cli's, which its tests import from.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
from playwright.sync_api import Page

#: axe-core, from the npm registry, pinned
AXE_VERSION = "4.10.2"


def install_axe(tmp_path_factory: pytest.TempPathFactory) -> str:
    """axe-core installed with npm into a temporary folder; failing, never skipping."""
    npm = shutil.which("npm")
    assert npm is not None, "npm is not on PATH; the accessibility check needs it"
    folder = tmp_path_factory.mktemp("axe")
    (folder / "package.json").write_text('{"name": "aegis-axe-test", "private": true}\n')
    done = subprocess.run(
        [npm, "install", "--prefix", str(folder), "--no-audit", "--no-fund",
         "--no-package-lock", f"axe-core@{AXE_VERSION}"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"npm install axe-core failed:\n{done.stderr[-2000:]}"
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
