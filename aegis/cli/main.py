"""The command line's entry under the name other tools use: ``aegis.cli.main``.

``from aegis.cli.main import main, cli`` works, as does ``python -m
aegis.cli.main``. Importing this module makes the package attribute
``aegis.cli.main`` the module instead of the function (Python binds a
submodule to its package on import), so the module is callable too and
``aegis.cli.main(argv)``, the console script's ``aegis.cli:main``, keeps
running the command line either way.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Sequence

from aegis.cli._app import cli, main

__all__ = ["cli", "main"]


class _CallableModule(types.ModuleType):
    """This module, callable like :func:`main`."""

    def __call__(self, argv: Sequence[str] | None = None) -> None:
        main(argv)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    main()
