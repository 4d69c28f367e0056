"""What OpenTelemetry tracing costs a governed action.

Runs in the current interpreter against this checkout and prints, for
``run_one`` sequential with the SQLite audit, the cost per action without a
tracer provider and with the OpenTelemetry SDK's provider (a
``BatchSpanProcessor`` handing spans to an exporter that drops them, so the
figure is Aegis's span and the SDK's bookkeeping, not an exporter's I/O).
Rounds alternate between the two runtimes in one process, so both see the
same machine; the median of the rounds is reported, at each durability.

Usage::

    python benchmarks/tracing.py            # about a minute
    python benchmarks/tracing.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import (  # noqa: E402
    BatchSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

from aegis import Action, Policy, Runtime  # noqa: E402
from aegis.runtime.audit import AuditLogger  # noqa: E402

POLICY = {"version": "1", "rules": [{"name": "r", "match": {"type": "*"}, "approval": "auto"}]}


class Dropping(SpanExporter):
    """Takes spans and keeps none: the SDK's work without an exporter's I/O."""

    def __init__(self) -> None:
        self.count = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.count += len(spans)
        return SpanExportResult.SUCCESS


async def _noop(action: Action) -> dict[str, Any]:
    return {}


async def measure(durability: str, actions: int, rounds: int) -> tuple[float, float, int]:
    """Median microseconds per action without and with tracing, and the spans exported."""
    exporter = Dropping()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    folder = Path(tempfile.mkdtemp(prefix="aegis-bench-tracing-"))
    policy = Policy.from_dict(POLICY)
    plain = Runtime(
        executor=_noop,
        policy=policy,
        audit_logger=AuditLogger(folder / "plain.db", durability=durability),
    )
    traced = Runtime(
        executor=_noop,
        policy=policy,
        audit_logger=AuditLogger(folder / "traced.db", durability=durability),
        tracer_provider=provider,
    )
    action = Action("read", "crm", {"id": 7})
    timings: dict[str, list[float]] = {"plain": [], "traced": []}
    async with plain, traced:
        for runtime in (plain, traced):  # warm up both
            for _ in range(200):
                await runtime.run_one(action)
        for _ in range(rounds):
            for name, runtime in (("plain", plain), ("traced", traced)):
                gc.collect()
                start = time.perf_counter()
                for _ in range(actions):
                    await runtime.run_one(action)
                timings[name].append((time.perf_counter() - start) / actions * 1e6)
    provider.shutdown()
    return statistics.median(timings["plain"]), statistics.median(timings["traced"]), exporter.count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    args = parser.parse_args()
    actions, rounds = (200, 3) if args.quick else (2000, 7)
    print(f"run_one sequential, SQLite audit, {actions} actions x {rounds} rounds, median round")
    print(f"{'durability':<12}{'untraced us':>13}{'traced us':>11}{'cost':>9}{'spans':>9}")
    for durability in ("process", "result"):
        untraced, traced, spans = asyncio.run(measure(durability, actions, rounds))
        cost = (traced - untraced) / untraced * 100
        print(f"{durability:<12}{untraced:>13.1f}{traced:>11.1f}{cost:>8.1f}%{spans:>9}")


if __name__ == "__main__":
    main()
