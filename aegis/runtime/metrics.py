"""Counting governed actions for Prometheus, shared by ``aegis serve`` and ``aegis mcp-proxy``.

:class:`ActionTally` counts actions by the policy's decision and the
result's status from audit records; :class:`ActionsCollector` exposes it as
``aegis_actions_total``; :func:`metrics_response` renders a registry. The
``prometheus_client`` package comes with the ``[server]`` and ``[mcp]``
extras; nothing on the per-action path imports this module.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

try:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import CounterMetricFamily, Metric
    from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
except ImportError as exc:  # pragma: no cover  # CI installs every extra
    raise ImportError(
        'Prometheus metrics need prometheus_client: pip install "aegis-runtime[server]"'
    ) from exc
from starlette.responses import Response

__all__ = ["ActionTally", "ActionsCollector", "metrics_response"]

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


class ActionsCollector:
    """``aegis_actions_total{decision, status}`` from a tally, read at each scrape."""

    def __init__(self, tally: ActionTally) -> None:
        self.tally = tally

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        actions = CounterMetricFamily(
            "aegis_actions",
            "Governed actions by the policy's decision and the result's status.",
            labels=["decision", "status"],
        )
        for (decision, status), count in sorted(self.tally.counts.items()):
            actions.add_metric([decision, status], count)
        yield actions
