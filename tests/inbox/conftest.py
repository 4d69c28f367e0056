"""Fixtures the inbox's browser tests share."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from axe_support import AXE_VERSION


@pytest.fixture(scope="module")
def axe_source(tmp_path_factory: pytest.TempPathFactory) -> str:
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
