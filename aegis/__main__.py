"""``python -m aegis``: the ``aegis`` command line."""

from __future__ import annotations

from aegis.cli import main

if __name__ == "__main__":
    main()
