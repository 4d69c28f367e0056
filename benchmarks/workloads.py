"""Benchmark workloads, run inside one virtual environment at a time.

Both Aegis and agent-aegis import as ``aegis``, so this script never knows
which one it measures: it touches only the public API the two share, and
the driver (``run.py``) runs it once per package, in that package's venv.

Usage::

    python workloads.py WORKLOAD [--quick] [--db PATH] [--records N] [--durability LEVEL]

``--durability`` is ours alone (agent-aegis has no such option): the
``run_one`` workloads open ``AuditLogger(db_path, durability=LEVEL)``, and
``bare_commit`` commits with ``synchronous=FULL`` for ``full`` and
``result`` (one flush per commit), ``NORMAL`` for ``process``.

Each run prints one JSON object on stdout, e.g.
``{"workload": "eval_exact_1000", "value": 123456.0, "unit": "evals/s", ...}``.
Workloads that a package cannot run print ``{"skipped": "why"}`` instead.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import os
import resource
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aegis.adapters.base import BaseExecutor
from aegis.core.action import Action
from aegis.core.policy import Policy
from aegis.core.result import Result, ResultStatus
from aegis.runtime.approval import AutoApprovalHandler
from aegis.runtime.audit import AuditLogger
from aegis.runtime.engine import Runtime

#: where the run_one and bare_commit databases go: the disk under test, not a tmpfs
SCRATCH = os.environ.get("AEGIS_BENCH_SCRATCH") or str(Path(__file__).resolve().parent)

#: evaluations per workload: distinct actions, built before the clock starts
EVAL_ACTIONS = 20_000
#: a slow side stops early once it has spent this long, so that one
#: linear-scan policy cannot make the suite take minutes; rates stay exact
#: because every action in a workload costs the same to evaluate
EVAL_BUDGET_S = 2.0
RUN_ONE_SEQUENTIAL = 3_000
RUN_ONE_CONCURRENT = 1_000
WARMUP = 200
DIGEST_ACTIONS = 1_000


# ---------------------------------------------------------------- helpers


@contextmanager
def gc_paused() -> Iterator[None]:
    """Keep the cyclic collector out of the timed loop (applied to both sides)."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def rule(name: str, type_: str, target: str, **extra: Any) -> dict[str, Any]:
    """One policy rule in the dictionary format both packages read."""
    return {
        "name": name,
        "match": {"type": type_, "target": target},
        "risk_level": extra.pop("risk_level", "high"),
        "approval": extra.pop("approval", "approve"),
        **extra,
    }


CATCH_ALL = rule("catch-all", "*", "*", risk_level="low", approval="auto")


def policy_of(rules: list[dict[str, Any]]) -> Policy:
    """A policy whose rules end with the catch-all, blocking by default."""
    return Policy.from_dict(
        {
            "version": "1",
            "defaults": {"risk_level": "medium", "approval": "block"},
            "rules": [*rules, CATCH_ALL],
        }
    )


def rss_now_mb() -> float:
    """Resident set size of this process right now, from /proc."""
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def rss_peak_mb() -> float:
    """Peak resident set size of this process (``ru_maxrss``, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_evaluations(policy: Policy, actions: list[Action], budget: float) -> dict[str, Any]:
    """Evaluate ``actions`` in chunks until done or out of ``budget`` seconds."""
    for action in actions[:WARMUP]:
        policy.evaluate(action)
    timed = actions[WARMUP:]
    evaluate = policy.evaluate
    done = 0
    chunk = 500
    with gc_paused():
        start = time.perf_counter()
        elapsed = 0.0
        while done < len(timed) and elapsed < budget:
            for action in timed[done : done + chunk]:
                evaluate(action)
            done = min(done + chunk, len(timed))
            elapsed = time.perf_counter() - start
    return {
        "value": done / elapsed,
        "unit": "evals/s",
        "n": done,
        "seconds": elapsed,
        "digest": decisions_digest(policy, actions[:DIGEST_ACTIONS]),
    }


def decisions_digest(policy: Policy, actions: list[Action]) -> str:
    """A fingerprint of the decisions, so the driver can check both sides agree.

    A speed-up is only worth reporting if both packages reach the same
    verdicts: same matched rule, approval and risk for every action.
    """
    digest = hashlib.sha256()
    for action in actions:
        decision = policy.evaluate(action)
        verdict = (decision.matched_rule, str(decision.approval.value), int(decision.risk_level))
        digest.update(repr(verdict).encode())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------- policy workloads


def eval_exact(n_rules: int, quick: bool) -> dict[str, Any]:
    """Distinct actions that miss ``n_rules`` exact rules and hit the catch-all."""
    policy = policy_of([rule(f"exact-{i}", f"action_{i}", f"target_{i}") for i in range(n_rules)])
    count = WARMUP + (EVAL_ACTIONS // 10 if quick else EVAL_ACTIONS)
    actions = [Action(f"other_{j}", f"system_{j}") for j in range(count)]
    return time_evaluations(policy, actions, EVAL_BUDGET_S / (4 if quick else 1))


def eval_glob(quick: bool, n_rules: int = 1_000) -> dict[str, Any]:
    """Distinct actions against 1,000 glob rules; 95% miss them all."""
    policy = policy_of([rule(f"glob-{i}", f"tool_{i}_*", f"sys{i}*") for i in range(n_rules)])
    count = WARMUP + (EVAL_ACTIONS // 10 if quick else EVAL_ACTIONS)
    actions = []
    for j in range(count):
        if j % 20 == 0:  # a hit somewhere in the list
            k = (j * 7919) % n_rules
            actions.append(Action(f"tool_{k}_call{j}", f"sys{k}-{j}"))
        else:
            actions.append(Action(f"tool_x_call{j}", f"host{j}"))
    return time_evaluations(policy, actions, EVAL_BUDGET_S / (4 if quick else 1))


def eval_conditional(quick: bool, n_rules: int = 100) -> dict[str, Any]:
    """Distinct payments against 100 ``param_gt`` rules sharing one type.

    Thresholds fall from 100,000 to 1,000 and amounts spread over 0..100,000,
    so an action passes about half the conditions before one matches.
    """
    policy = policy_of(
        [
            rule(
                f"pay-over-{(n_rules - i) * 1000}",
                "pay",
                "*",
                conditions={"param_gt": {"amount": (n_rules - i) * 1000}},
            )
            for i in range(n_rules)
        ]
    )
    count = WARMUP + (EVAL_ACTIONS // 10 if quick else EVAL_ACTIONS)
    actions = [
        Action("pay", f"account_{j}", {"amount": (j * 7919) % 100_000, "currency": "EUR"})
        for j in range(count)
    ]
    return time_evaluations(policy, actions, EVAL_BUDGET_S / (4 if quick else 1))


# ---------------------------------------------------------------- runtime workloads


class NoOpExecutor(BaseExecutor):
    """Succeeds at once, so that the runtime's own overhead is what we time."""

    async def execute(self, action: Action) -> Result:
        return Result(action, ResultStatus.SUCCESS)


def runtime_policy() -> Policy:
    """Ten exact rules that the workload's actions miss, then auto-approve all."""
    return policy_of([rule(f"exact-{i}", f"delete_{i}", f"prod_{i}") for i in range(10)])


async def run_one_rate(
    n: int, concurrent: bool, db_path: Path, durability: str | None = None
) -> dict[str, Any]:
    """``run_one`` ``n`` distinct auto-approved actions with the SQLite audit."""
    if durability is None:  # each package's default (and agent-aegis knows no other)
        audit = AuditLogger(db_path=db_path)
    else:
        audit = AuditLogger(db_path=db_path, durability=durability)  # type: ignore[call-arg]
    runtime = Runtime(
        executor=NoOpExecutor(),
        policy=runtime_policy(),
        approval_handler=AutoApprovalHandler(),
        audit_logger=audit,
    )
    async with runtime:
        for j in range(WARMUP // 4):
            await runtime.run_one(Action(f"warmup_{j}", "db"))
        actions = [Action(f"read_{j}", "db", {"row": j}) for j in range(n)]
        with gc_paused():
            start = time.perf_counter()
            if concurrent:
                results = await asyncio.gather(*(runtime.run_one(a) for a in actions))
            else:
                results = [await runtime.run_one(a) for a in actions]
            elapsed = time.perf_counter() - start
    failures = [r for r in results if not r.ok]
    if failures:
        raise SystemExit(f"run_one: {len(failures)} actions did not succeed, e.g. {failures[0]}")
    return {"value": n / elapsed, "unit": "actions/s", "n": n, "seconds": elapsed}


def run_one_workload(
    concurrent: bool, quick: bool, durability: str | None = None
) -> dict[str, Any]:
    """Time ``run_one`` against a fresh audit database in a temporary folder.

    The folder is made beside this script, on the disk the repository is
    on, not in a tmpfs ``/tmp`` where a flush would cost nothing.
    """
    if concurrent:
        n = RUN_ONE_CONCURRENT // (5 if quick else 1)
    else:
        n = RUN_ONE_SEQUENTIAL // (5 if quick else 1)
    with tempfile.TemporaryDirectory(prefix="aegis-bench-", dir=SCRATCH) as tmp:
        report = asyncio.run(run_one_rate(n, concurrent, Path(tmp) / "audit.db", durability))
    report["durability"] = durability or "default"
    report["warmup"] = WARMUP // 4  # actions run before the clock started
    return report


def bare_commit(quick: bool, durability: str | None = None) -> dict[str, Any]:
    """The floor: one-row INSERT transactions on one connection, WAL, no Aegis at all.

    With ``synchronous=FULL`` (``durability`` full, result or None) each
    commit flushes the WAL once: no store that promises a record on disk
    per commit can go faster on this disk. With ``process`` it is
    ``synchronous=NORMAL``, nothing flushed: the floor of that promise.
    """
    n = 3_000 // (5 if quick else 1)
    sync = "NORMAL" if durability == "process" else "FULL"
    row = "x" * 600  # about an audit record's size
    with tempfile.TemporaryDirectory(prefix="aegis-bench-", dir=SCRATCH) as tmp:
        conn = sqlite3.connect(Path(tmp) / "bare.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={sync}")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        for _ in range(WARMUP // 4):
            conn.execute("INSERT INTO t (v) VALUES (?)", (row,))
        with gc_paused():
            start = time.perf_counter()
            for _ in range(n):
                conn.execute("INSERT INTO t (v) VALUES (?)", (row,))
            elapsed = time.perf_counter() - start
        conn.close()
    return {
        "value": n / elapsed,
        "unit": "commits/s",
        "n": n,
        "seconds": elapsed,
        "durability": f"synchronous={sync}",
    }


# ---------------------------------------------------------------- audit workloads


def build_log(db_path: Path, records: int) -> dict[str, Any]:
    """Fill an audit database with ``records`` entries (not a benchmark).

    Uses ``AuditLogger.log(session_id, decision, result=...)``, the public
    write path both packages share.
    """
    policy = runtime_policy()
    audit = AuditLogger(db_path=db_path)
    start = time.perf_counter()
    for j in range(records):
        action = Action(f"read_{j}", "db", {"row": j, "note": "benchmark record"})
        decision = policy.evaluate(action)
        audit.log("bench-session", decision, result=Result(action, ResultStatus.SUCCESS))
    audit.close()
    elapsed = time.perf_counter() - start
    return {"value": records / elapsed, "unit": "records/s", "n": records, "seconds": elapsed}


def measure_audit(db_path: Path, operation: str) -> dict[str, Any]:
    """Time ``export_jsonl`` or ``verify`` on an existing log, with memory peaks.

    Memory is the process's peak RSS (``ru_maxrss``), so it includes the
    interpreter and the imported package; ``rss_before_mb`` is the RSS just
    before the operation and ``delta_mb`` the growth the operation caused.
    """
    audit = AuditLogger(db_path=db_path)
    run: Callable[[], Any]
    if operation == "verify":
        verify = getattr(audit, "verify", None)
        if verify is None:
            audit.close()
            return {"skipped": "AuditLogger has no verify()"}
        run = verify
    else:
        out_dir = tempfile.mkdtemp(prefix="aegis-bench-export-")
        out_path = Path(out_dir) / "audit.jsonl"

        def run() -> Any:
            return audit.export_jsonl(out_path)

    gc.collect()
    before = rss_now_mb()
    start = time.perf_counter()
    outcome = run()
    elapsed = time.perf_counter() - start
    peak = rss_peak_mb()
    audit.close()
    report: dict[str, Any] = {
        "value": elapsed,
        "unit": "s",
        "seconds": elapsed,
        "peak_rss_mb": round(peak, 1),
        "rss_before_mb": round(before, 1),
        "delta_mb": round(peak - before, 1),
        "memory": "ru_maxrss",
        "outcome": _describe(outcome),
    }
    if operation == "export":
        report["bytes"] = out_path.stat().st_size
        out_path.unlink()
        os.rmdir(out_dir)
    return report


def _describe(outcome: Any) -> Any:
    """Something JSON can carry about what the operation returned."""
    if outcome is None or isinstance(outcome, bool | int | float | str):
        return outcome
    if hasattr(outcome, "ok"):  # our VerifyReport: say plainly whether the chain held
        return {"ok": bool(outcome.ok), "repr": repr(outcome)[:200]}
    return repr(outcome)[:200]


# ---------------------------------------------------------------- entry point


def profile(workload: Callable[[bool], dict[str, Any]], quick: bool, top: int = 25) -> int:
    """Run ``workload`` under cProfile and print its costliest functions."""
    import cProfile  # noqa: PLC0415  # only profiling runs pay for the import
    import pstats  # noqa: PLC0415

    profiler = cProfile.Profile()
    report = profiler.runcall(workload, quick)
    print(json.dumps(report))
    stats = pstats.Stats(profiler, stream=sys.stdout)
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return 0


POLICY_WORKLOADS: dict[str, Callable[[bool], dict[str, Any]]] = {
    "eval_exact_10": lambda quick: eval_exact(10, quick),
    "eval_exact_100": lambda quick: eval_exact(100, quick),
    "eval_exact_1000": lambda quick: eval_exact(1_000, quick),
    "eval_glob_1000": eval_glob,
    "eval_cond_100": eval_conditional,
}
#: workloads that take --durability (ours alone)
DURABLE_WORKLOADS: dict[str, Callable[[bool, str | None], dict[str, Any]]] = {
    "run_one_seq": lambda quick, level: run_one_workload(False, quick, level),
    "run_one_conc": lambda quick, level: run_one_workload(True, quick, level),
    "bare_commit": bare_commit,
}
AUDIT_WORKLOADS = ("build_log", "export", "verify")


def main(argv: list[str] | None = None) -> int:
    """Run one workload and print its numbers as one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "workload", choices=[*POLICY_WORKLOADS, *DURABLE_WORKLOADS, *AUDIT_WORKLOADS]
    )
    parser.add_argument("--quick", action="store_true", help="smaller workloads")
    parser.add_argument("--db", type=Path, help="audit database for build_log/export/verify")
    parser.add_argument("--records", type=int, default=100_000, help="records for build_log")
    parser.add_argument("--profile", action="store_true", help="print cProfile's top entries")
    parser.add_argument(
        "--durability", choices=["process", "result", "full"], help="ours: the audit's level"
    )
    args = parser.parse_args(argv)

    if args.workload in DURABLE_WORKLOADS:
        level = args.durability
        durable = DURABLE_WORKLOADS[args.workload]
        if args.profile:
            return profile(lambda quick: durable(quick, level), args.quick)
        report = durable(args.quick, level)
    elif args.profile and args.workload in POLICY_WORKLOADS:
        return profile(POLICY_WORKLOADS[args.workload], args.quick)
    elif args.workload in POLICY_WORKLOADS:
        report = POLICY_WORKLOADS[args.workload](args.quick)
    elif args.db is None:
        parser.error(f"{args.workload} needs --db PATH")
    elif args.workload == "build_log":
        report = build_log(args.db, args.records)
    else:
        report = measure_audit(args.db, args.workload)
    report = {"workload": args.workload, **report}
    json.dump(report, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
