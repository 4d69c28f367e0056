"""Prometheus metrics: what an operator's dashboard shows of Aegis.

``aegis serve --metrics`` (and ``aegis mcp-proxy --listen``) serve
``/metrics`` in the Prometheus text format, through ``prometheus_client``:

- ``aegis_actions_total{decision, status}``: governed actions by the
  policy's decision (auto, approve, block) and their result's status,
  counted from the audit trail the fleet writes (one count per action, at
  its final record);
- ``aegis_approval_requests_total{event}``: approval requests asked
  (``requested``), decided by a reviewer (``decided``), expired, cancelled,
  collected, and approvals withdrawn by a revocation (``withdrawn``, counted
  by the service that announced it);
- ``aegis_approval_requests_pending``: requests waiting for a reviewer now;
- ``aegis_approval_decision_seconds``: from a request to the decision that
  settled it;
- ``aegis_store_errors_total``: store calls that failed.

The endpoint asks for a bearer token like the API, of a reviewer or of a
scraper (``aegis token create NAME --role metrics``), unless the operator
passed ``--metrics-public`` (a scraper inside a trusted network). An
agent's token is refused (403): the agent asks for approval, and the
fleet's counts by decision are the operator's to read, not something a
compromised agent should learn its odds from.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

try:
    from prometheus_client import CollectorRegistry, Counter, Histogram
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
except ImportError as exc:  # pragma: no cover  # CI installs every extra
    raise ImportError(
        'Prometheus metrics need the server extra: pip install "aegis-runtime[server]"'
    ) from exc

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from aegis.core.approval_request import RequestStatus, Role
from aegis.errors import AegisError
from aegis.runtime.metrics import ActionsCollector, ActionTally, metrics_response

if TYPE_CHECKING:
    from aegis.server.service import ApprovalEvent, ApprovalService

__all__ = ["METRICS_READERS", "ServiceMetrics"]

_log = logging.getLogger("aegis.server")

#: the tokens that read /metrics: people who review, and scrapers' own tokens
METRICS_READERS: Final = (Role.REVIEWER, Role.METRICS)

#: seconds from a request to its settling decision: a minute to a day
DECISION_BUCKETS: Final = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 14400.0)


class ServiceMetrics:
    """The metrics of one approval service, and the ``/metrics`` route that serves them.

    Args:
        service: the approval service to watch (its events and its stores).
        public: serve ``/metrics`` without a token.
        follow_interval: seconds between two reads of new audit records.
    """

    def __init__(
        self, service: ApprovalService, *, public: bool = False, follow_interval: float = 1.0
    ) -> None:
        self.service = service
        self.public = public
        self.follow_interval = follow_interval
        self.registry = CollectorRegistry(auto_describe=True)
        self.actions = ActionTally()
        self.requests = Counter(
            "aegis_approval_requests",
            "Approval requests by what happened to them.",
            ["event"],
            registry=self.registry,
        )
        self.decision_seconds = Histogram(
            "aegis_approval_decision_seconds",
            "Seconds from an approval request to the decision that settled it.",
            buckets=DECISION_BUCKETS,
            registry=self.registry,
        )
        self.pending = 0
        self.registry.register(ActionsCollector(self.actions))
        self.registry.register(_Snapshot(self))
        self._unsubscribe = service.subscribe(self._on_event)

    def _on_event(self, event: ApprovalEvent) -> None:
        kind = event.kind.partition(".")[2] if event.kind.startswith("approval.") else ""
        if not kind:
            return
        self.requests.labels(kind).inc()
        request = event.request
        if (
            kind == "decided"
            and request is not None
            and request.status in (RequestStatus.APPROVED, RequestStatus.DENIED)
        ):
            decided = request.decisions[-1].at if request.decisions else None
            if decided is not None:
                self.decision_seconds.observe(
                    max(0.0, (decided - request.created_at).total_seconds())
                )

    async def refresh(self) -> None:
        """Read what a scrape shows from the stores: new audit records, pending requests."""
        await self._catch_up()
        service = self.service
        self.pending = await service.call(service.store.count_requests, RequestStatus.PENDING)

    async def _catch_up(self) -> None:
        audit = self.service.audit
        if audit is not None:
            await self.service.call(self.actions.catch_up, audit.get_log)

    async def follow(self, app: object = None) -> asyncio.Task[None]:
        """Start reading new audit records in the background (a startup hook)."""
        return asyncio.create_task(self._follow(), name="aegis-metrics")

    async def _follow(self) -> None:
        while True:
            with contextlib.suppress(AegisError):  # counted as a store error; try again
                await self._catch_up()
            await asyncio.sleep(self.follow_interval)

    async def endpoint(self, request: Request) -> Response:
        """``GET /metrics``: the text exposition, to a reviewer's or metrics token unless public."""
        if not self.public:
            from aegis.server.api import authenticated  # noqa: PLC0415  # the API's one check

            refused = await authenticated(
                request,
                METRICS_READERS,
                "reading /metrics",
                "give the scraper its own: aegis token create NAME --role metrics",
            )
            if refused is not None:
                return refused
        with contextlib.suppress(AegisError):  # a scrape shows the last counts it can
            await self.refresh()
        return metrics_response(self.registry)

    def routes(self) -> list[Route]:
        """The ``/metrics`` route, for ``create_app(routes=...)``."""
        return [Route("/metrics", self.endpoint, methods=["GET"])]

    def close(self) -> None:
        """Stop listening to the service's events."""
        self._unsubscribe()


class _Snapshot:
    """The metrics read from the stores at a scrape rather than counted in this process."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        metrics = self.metrics
        yield GaugeMetricFamily(
            "aegis_approval_requests_pending",
            "Approval requests waiting for a reviewer.",
            value=metrics.pending,
        )
        yield CounterMetricFamily(
            "aegis_store_errors",
            "Calls of the approval service to its stores that failed.",
            value=metrics.service.store_errors,
        )
