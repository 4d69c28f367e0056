"""The approval service: a JSON API where agents ask and reviewers decide.

Needs the ``server`` extra: ``pip install "aegis-runtime[server]"``. Start it
with ``aegis serve``; build it in code with :func:`create_app`::

    from aegis.server import create_app, open_service

    app = create_app(open_service("aegis_audit.db", approval_ttl=3600))
"""

from __future__ import annotations

from aegis.server.app import create_app, open_service
from aegis.server.service import ApprovalEvent, ApprovalService, Principal

__all__ = ["ApprovalEvent", "ApprovalService", "Principal", "create_app", "open_service"]
