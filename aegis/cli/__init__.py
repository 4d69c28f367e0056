"""The ``aegis`` command line.

``aegis.cli:main`` is the console script; ``python -m aegis`` runs it too.
The commands are built on Click, with Rich for tables on a terminal::

    aegis validate policy.yaml
    aegis simulate policy.yaml 'refund:stripe:{"amount": 900}'
    aegis audit verify --db aegis_audit.db
"""

from __future__ import annotations

from aegis.cli._app import cli, main

__all__ = ["cli", "main"]
