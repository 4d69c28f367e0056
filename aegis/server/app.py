"""The Starlette application of the approval service.

:func:`create_app` builds it around an
:class:`~aegis.server.service.ApprovalService`; ``aegis serve`` runs it on
uvicorn. Other parts (the inbox pages, notifiers) extend it without
touching this module:

- pass ``routes=[...]`` (extra Starlette routes, mounted after the API;
  ``Mount("/static", StaticFiles(...))`` works too) and ``middleware=[...]``;
- read the service in a handler as ``request.app.state.service``;
- start background work with ``on_startup=[async_fn(app)]``; it runs in the
  lifespan, after the expiry sweeper starts, and a task it returns is
  cancelled at shutdown;
- listen to changes with ``service.subscribe(callback)``.

Example::

    service = open_service("aegis_audit.db")
    app = create_app(service)            # then: uvicorn.run(app, port=8700)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from typing import Any

try:
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import BaseRoute
except ImportError as exc:  # pragma: no cover  # CI installs every extra
    raise ImportError(
        'the approval service needs the server extra: pip install "aegis-runtime[server]"'
    ) from exc

from aegis.core.policy import Policy
from aegis.server.api import api_routes, error_response
from aegis.server.service import ApprovalService

__all__ = ["StartupHook", "create_app", "open_service"]

#: background work started with the app: ``hook(app)``, may return a task to cancel at shutdown
StartupHook = Callable[[Starlette], Awaitable[Any]]


def open_service(
    db: str = "aegis_audit.db",
    *,
    approval_ttl: float = 3600.0,
    schema: str | None = None,
    max_wait: float = 60.0,
    poll_interval: float = 0.5,
    policy: Policy | None = None,
    durability: str | None = None,
    auditor_groups: Collection[str] = (),
) -> ApprovalService:
    """Open the audit trail and the approval tables in ``db`` (a path or a PostgreSQL DSN).

    ``schema`` (PostgreSQL only) names the schema of both the audit trail
    and the approval tables; the connection's ``current_schema()`` when
    ``None``. ``durability`` is the audit trail's
    (:data:`~aegis.stores.base.Durability`; ``"result"`` when ``None``).
    Reviewers in one of ``auditor_groups`` read the whole audit trail.

    Raises:
        ConfigurationError: a setting it cannot use (a TTL or wait that is
            not a positive number of seconds, a store URL it cannot open).
    """
    # Imported here: the runtime's audit pulls in SQLite code the API module never needs.
    from aegis.runtime.audit import AuditLogger  # noqa: PLC0415

    # One opener: the audit trail and the approvals share the connection, and
    # with it the database, the schema and the credentials.
    audit = AuditLogger(db, schema=schema, durability=durability)
    try:
        audit.check()  # creates the trail (and a named schema) now, not on the first request
        return ApprovalService(
            audit.stores.approvals,
            audit,
            approval_ttl=approval_ttl,
            max_wait=max_wait,
            poll_interval=poll_interval,
            policy=policy,
            auditor_groups=auditor_groups,
        )
    except BaseException:  # a bad setting too: nothing is left open
        audit.close()
        raise


async def _not_found(request: Request, exc: Exception) -> Response:
    if isinstance(exc, HTTPException):
        return error_response(exc.status_code, "http_error", str(exc.detail))
    return error_response(500, "internal", "the approval service failed unexpectedly")


def create_app(
    service: ApprovalService,
    *,
    routes: Sequence[BaseRoute] = (),
    middleware: Sequence[Middleware] = (),
    on_startup: Sequence[StartupHook] = (),
    sweep_interval: float = 1.0,
    close_service: bool = True,
) -> Starlette:
    """The Starlette app serving ``service``'s JSON API, plus ``routes``.

    Args:
        service: the approval service; kept as ``app.state.service``.
        routes: more routes (the inbox's pages, static files), after the API's.
        middleware: Starlette middleware around everything.
        on_startup: background hooks, see the module docstring.
        sweep_interval: seconds between two expiry sweeps.
        close_service: close the service's store and audit at shutdown.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(service.sweep(sweep_interval), name="aegis-expiry")]
        try:
            for hook in on_startup:
                started = await hook(app)
                if isinstance(started, asyncio.Task):
                    tasks.append(started)
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            # An audit record being written as the sweeper stopped is finished
            # and marked before the store closes, or the next start writes it again.
            await service.settle()
            if close_service:
                service.close()

    app = Starlette(
        routes=[*api_routes(), *routes],
        middleware=list(middleware),
        exception_handlers={HTTPException: _not_found, Exception: _not_found},
        lifespan=lifespan,
    )
    app.state.service = service
    return app
