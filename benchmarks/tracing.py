"""What OpenTelemetry tracing costs a governed action.

Prints, for ``run_one`` sequential with the SQLite audit, the cost per
action without a tracer provider and with the OpenTelemetry SDK's provider
(a ``BatchSpanProcessor`` handing spans to an exporter that drops them, so
the figure is Aegis's span and the SDK's bookkeeping, not an exporter's
I/O). Each action carries a tool-call id and an agent name, as a framework's
call does. Rounds alternate between the two runtimes in one process, so both
see the same machine; the median round is reported, as wall time and as the
process's CPU time per action (all threads, the span processor's included).

``--against DIR`` measures another checkout (an older commit, say from
``git worktree add``) side by side: every round runs each checkout in a
fresh interpreter, one after the other, so a loaded machine weighs on both
alike. ``--instructions`` counts instructions instead of timing (valgrind's
callgrind, the only measure a machine shared with other work does not
disturb): the difference between two runs of different lengths, divided by
the actions between them, so start-up and imports cancel out.

Usage::

    python benchmarks/tracing.py                      # about a minute
    python benchmarks/tracing.py --quick              # a smoke run
    python benchmarks/tracing.py --against ../old     # both checkouts, interleaved
    python benchmarks/tracing.py --instructions [--against ../old]   # a few minutes
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DURABILITIES = ("process", "result")
POLICY = {"version": "1", "rules": [{"name": "r", "match": {"type": "*"}, "approval": "auto"}]}
CONTEXT = {"tool_call_id": "call_1", "agent": "support"}


async def measure(durability: str, actions: int, rounds: int) -> dict[str, Any]:
    """Median wall and CPU microseconds per action without and with tracing."""
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import (  # noqa: PLC0415
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    from aegis import Action, Policy, Runtime  # noqa: PLC0415  # from the checkout measured
    from aegis.runtime.audit import AuditLogger  # noqa: PLC0415

    class Dropping(SpanExporter):
        """Takes spans and keeps none: the SDK's work without an exporter's I/O."""

        def __init__(self) -> None:
            self.count = 0

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            self.count += len(spans)
            return SpanExportResult.SUCCESS

    async def noop(action: Action) -> dict[str, Any]:
        return {}

    exporter = Dropping()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    folder = Path(tempfile.mkdtemp(prefix="aegis-bench-tracing-"))
    policy = Policy.from_dict(POLICY)
    runtimes = {
        name: Runtime(
            executor=noop,
            policy=policy,
            audit_logger=AuditLogger(folder / f"{name}.db", durability=durability),
            tracer_provider=tracer_provider,
        )
        for name, tracer_provider in (("plain", None), ("traced", provider))
    }
    action = Action("read", "crm", {"id": 7})
    wall: dict[str, list[float]] = {name: [] for name in runtimes}
    cpu: dict[str, list[float]] = {name: [] for name in runtimes}
    async with runtimes["plain"], runtimes["traced"]:
        for runtime in runtimes.values():  # warm up both
            for _ in range(200):
                await runtime.run_one(action, context=CONTEXT)
        for _ in range(rounds):
            for name, runtime in runtimes.items():
                gc.collect()
                started, used = time.perf_counter(), time.process_time()
                for _ in range(actions):
                    await runtime.run_one(action, context=CONTEXT)
                cpu[name].append((time.process_time() - used) / actions * 1e6)
                wall[name].append((time.perf_counter() - started) / actions * 1e6)
    provider.shutdown()
    shutil.rmtree(folder, ignore_errors=True)
    return {
        **{f"{name}_wall": statistics.median(wall[name]) for name in runtimes},
        **{f"{name}_cpu": statistics.median(cpu[name]) for name in runtimes},
        "spans": exporter.count,
    }


async def run_only(traced: bool, actions: int) -> None:
    """``actions`` actions and nothing else: what ``--instructions`` counts."""
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import (  # noqa: PLC0415
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    from aegis import Action, Policy, Runtime  # noqa: PLC0415
    from aegis.runtime.audit import AuditLogger  # noqa: PLC0415

    class Dropping(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    async def noop(action: Action) -> dict[str, Any]:
        return {}

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Dropping()))
    folder = Path(tempfile.mkdtemp(prefix="aegis-bench-tracing-"))
    runtime = Runtime(
        executor=noop,
        policy=Policy.from_dict(POLICY),
        audit_logger=AuditLogger(folder / "a.db", durability="process"),
        tracer_provider=provider if traced else None,
    )
    action = Action("read", "crm", {"id": 7})
    async with runtime:
        for _ in range(actions):
            await runtime.run_one(action, context=CONTEXT)
    provider.shutdown()
    shutil.rmtree(folder, ignore_errors=True)


def child(checkout: Path, *args: str, valgrind: bool = False) -> str:
    """Run this script on ``checkout``'s aegis in a fresh interpreter; its output."""
    command = [sys.executable, str(Path(__file__).resolve()), "--checkout", str(checkout), *args]
    if valgrind:
        command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *command]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    if valgrind:
        counted = re.search(r"Collected : (\d+)", done.stderr)
        if counted is None:
            raise SystemExit(f"callgrind printed no count:\n{done.stderr}")
        return counted.group(1)
    return done.stdout


def instructions(checkout: Path, traced: bool, short: int, long: int) -> float:
    """Instructions per action of ``checkout``: two runs' difference over the actions between."""
    mode = "traced" if traced else "plain"
    short_run, long_run = (
        int(child(checkout, "--count", str(n), "--mode", mode, valgrind=True))
        for n in (short, long)
    )
    return (long_run - short_run) / (long - short)


def report(label: str, durability: str, found: dict[str, Any]) -> None:
    plain, traced = found["plain_wall"], found["traced_wall"]
    plain_cpu, traced_cpu = found["plain_cpu"], found["traced_cpu"]
    print(
        f"{label:<10}{durability:<12}{plain:>9.1f}{traced:>9.1f}{(traced - plain) / plain:>8.1%}"
        f"{plain_cpu:>11.1f}{traced_cpu:>9.1f}{(traced_cpu - plain_cpu) / plain_cpu:>8.1%}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--against", type=Path, help="another checkout, measured side by side")
    parser.add_argument("--instructions", action="store_true", help="count instructions")
    parser.add_argument("--checkout", type=Path, help=argparse.SUPPRESS)  # a child's
    parser.add_argument("--durability", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    here = HERE.parent
    if args.checkout is not None:  # a child: import aegis from that checkout
        sys.path.insert(0, str(args.checkout.resolve()))
        if args.count is not None:
            asyncio.run(run_only(args.mode == "traced", args.count))
        else:
            actions, rounds = (200, 1) if args.quick else (2000, 1)
            print(json.dumps(asyncio.run(measure(args.durability, actions, rounds))))
        return
    sides = {"this": here}
    if args.against is not None:
        sides["against"] = args.against.resolve()
        if not (sides["against"] / "aegis").is_dir():
            parser.error(f"{args.against} is not a checkout of aegis")
    if args.instructions:
        if shutil.which("valgrind") is None:
            parser.error("--instructions needs valgrind")
        short, long = (20, 120) if args.quick else (100, 1100)
        print(f"run_one sequential, SQLite audit at process, {long - short} actions counted")
        print("instructions per action")
        print(f"{'checkout':<10}{'untraced':>12}{'traced':>12}{'cost':>9}")
        for label, checkout in sides.items():
            plain, traced = (instructions(checkout, t, short, long) for t in (False, True))
            print(f"{label:<10}{plain:>12,.0f}{traced:>12,.0f}{(traced - plain) / plain:>9.1%}")
        return
    actions, rounds = (200, 3) if args.quick else (2000, 7)
    print(f"run_one sequential, SQLite audit, {actions} actions x {rounds} rounds, median round")
    print(
        f"{'checkout':<10}{'durability':<12}{'wall us':>9}{'traced':>9}{'cost':>8}"
        f"{'CPU us':>11}{'traced':>9}{'cost':>8}"
    )
    if args.against is None:
        sys.path.insert(0, str(here))
    for durability in DURABILITIES:
        if args.against is None:
            report("this", durability, asyncio.run(measure(durability, actions, rounds)))
            continue
        rows: dict[str, list[dict[str, Any]]] = {label: [] for label in sides}
        extra = ["--quick"] if args.quick else []
        for _ in range(rounds):
            for label, checkout in sides.items():
                out = child(checkout, "--durability", durability, *extra)
                rows[label].append(json.loads(out.strip().splitlines()[-1]))
        for label, found in rows.items():
            keys = found[0].keys()
            report(label, durability, {k: statistics.median(r[k] for r in found) for k in keys})


if __name__ == "__main__":
    main()
