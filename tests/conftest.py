"""Test-wide setup: child processes import this checkout's aegis."""

from __future__ import annotations

import os
from pathlib import Path

# Crash, multi-process and CLI tests start real Python processes. They must
# run the code under test, not whatever aegis happens to be installed.
_ROOT = str(Path(__file__).resolve().parent.parent)
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (_ROOT, os.environ.get("PYTHONPATH", "")) if p
)
