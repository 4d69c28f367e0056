"""Prometheus metrics: what an operator's dashboard shows of Aegis.

``aegis serve --metrics`` (and ``aegis mcp-proxy --listen``) serve
``/metrics`` in the Prometheus text format, through ``prometheus_client``:

- ``aegis_actions_total{decision, status}``: governed actions by the
  policy's decision (auto, approve, block) and their result's status,
  counted from the audit trail the fleet writes (one count per action, at
  its final record);
- ``aegis_approval_requests_total{event}``: approval requests asked
  (``requested``), decided by a reviewer (``decided``), expired, cancelled
  and collected;
- ``aegis_approval_requests_pending``: requests waiting for a reviewer now;
- ``aegis_approval_decision_seconds``: from a request to the decision that
  settled it;
- ``aegis_store_errors_total``: store calls that failed.

The endpoint asks for a bearer token like the API unless the operator
passed ``--metrics-public`` (a scraper inside a trusted network).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter as Tally
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final

try:
    from prometheus_client import CollectorRegistry, Counter, Histogram
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
except ImportError as exc:  # pragma: no cover  # CI installs every extra
    raise ImportError(
        'Prometheus metrics need the metrics extra: pip install "aegis-runtime[metrics]"'
    ) from exc

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from aegis.core.approval_request import RequestStatus
from aegis.errors import AegisError

if TYPE_CHECKING:
    from aegis.server.service import ApprovalEvent, ApprovalService

__all__ = ["ActionTally", "ServiceMetrics", "metrics_response"]

_log = logging.getLogger("aegis.server")

#: seconds from a request to its settling decision: a minute to a day
DECISION_BUCKETS: Final = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 14400.0)
#: audit records read per page while following the trail
PAGE: Final = 1000


def metrics_response(registry: CollectorRegistry) -> Response:
    """The registry's samples as a Prometheus text exposition."""
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


class ActionTally:
    """Governed actions by decision and status, counted from audit records.

    Feed it records in id order with :meth:`add`; a start record, and the
    records the approval service writes about its requests, are not actions
    of their own and are skipped, so each action counts once.
    """

    def __init__(self) -> None:
        self.counts: Tally[tuple[str, str]] = Tally()
        self.last_id = 0

    def add(self, record: Mapping[str, Any]) -> None:
        """Count one audit record (a dict as ``AuditLogger.get_log`` gives it)."""
        record_id = record.get("id")
        if isinstance(record_id, int):
            self.last_id = max(self.last_id, record_id)
        if record.get("kind") == "start":
            return
        context = record.get("context")
        if isinstance(context, Mapping) and "approval_event" in context:
            return
        decision = str(record.get("approval") or "unknown")
        status = str(record.get("result_status") or "none")
        self.counts[(decision, status)] += 1

    def catch_up(self, read: Callable[..., list[dict[str, Any]]]) -> int:
        """Read and count every record after the last one seen; return how many were read.

        ``read`` is an ``AuditLogger.get_log``.
        """
        total = 0
        while True:
            page = read(after_id=self.last_id, limit=PAGE, view="records")
            for record in page:
                self.add(record)
            total += len(page)
            if len(page) < PAGE:
                return total


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
        """``GET /metrics``: the text exposition, behind a bearer token unless public."""
        if not self.public:
            from aegis.server.api import authenticated  # noqa: PLC0415  # the API's one check

            refused = await authenticated(request)
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
        actions = CounterMetricFamily(
            "aegis_actions",
            "Governed actions by the policy's decision and the result's status.",
            labels=["decision", "status"],
        )
        for (decision, status), count in sorted(metrics.actions.counts.items()):
            actions.add_metric([decision, status], count)
        yield actions
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
