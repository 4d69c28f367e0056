"""Fleets: many processes running governed actions into one shared audit trail.

For 1, 2, 4 and 8 worker processes, each runs its share of governed actions
(``Runtime.run_one`` with a policy, an executor that does nothing and the
durable chained audit trail) into one PostgreSQL chain, and into one SQLite
file for contrast. Reported per run: throughput, p50 and p99 latency of one
action, and the time ``verify()`` then takes over the whole chain. A second
table runs concurrent ``run_one`` in one process (``asyncio.gather``), where
group commit shares one transaction among many actions. Every Result counts
only once its record is committed.

Usage::

    python benchmarks/fleet.py                      # 4,000 actions per run
    python benchmarks/fleet.py --actions 40000 --processes 8 --stores postgres --cli-verify
    python benchmarks/fleet.py --quick

The PostgreSQL server is ``$AEGIS_TEST_POSTGRES_DSN`` (default the local test
server); each run gets a fresh schema, dropped afterwards. Results go to
``benchmarks/fleet-results.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "fleet-results.json"
POSTGRES = os.environ.get("AEGIS_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")

POLICY = {
    "version": "1",
    "defaults": {"risk_level": "medium", "approval": "block"},
    "rules": [
        {"name": "writes", "match": {"type": "write"}, "risk_level": "low", "approval": "auto"}
    ],
}


# ---------------------------------------------------------------- the worker


def _executor(action: Any) -> dict[str, object]:
    return {"ok": action.params["n"]}


async def _work(
    db: str, count: int, worker: int, concurrency: int, synchronous: str
) -> dict[str, Any]:
    from aegis import Action, AuditLogger, Policy, Runtime  # noqa: PLC0415  # in the child only

    latencies: list[int] = []
    ok = 0
    audit = AuditLogger(db, synchronous=synchronous)
    async with Runtime(
        executor=_executor, policy=Policy.from_dict(POLICY), audit_logger=audit
    ) as runtime:

        async def one(n: int) -> None:
            nonlocal ok
            start = time.perf_counter_ns()
            result = await runtime.run_one(
                Action("write", "crm", {"n": n, "worker": worker}), context={"worker": worker}
            )
            latencies.append(time.perf_counter_ns() - start)
            ok += result.ok

        # The first action connects and creates the tables: before the clock.
        await one(0)
        latencies.clear()
        start = time.perf_counter()
        for first in range(1, count, concurrency):
            await asyncio.gather(*(one(n) for n in range(first, min(first + concurrency, count))))
        elapsed = time.perf_counter() - start
    return {
        "worker": worker,
        "ok": ok,
        "count": count,
        "elapsed": elapsed,
        "latencies_ns": latencies,
    }


def worker_main(db: str, count: int, worker: int, concurrency: int, synchronous: str) -> None:
    """Child process: wait for the go line, run, print one JSON line."""
    sys.stdin.readline()
    print(json.dumps(asyncio.run(_work(db, count, worker, concurrency, synchronous))), flush=True)


# ---------------------------------------------------------------- the driver


def _fresh(store: str, tmp: Path) -> tuple[str, Any]:
    """A fresh trail of kind ``store``: its URL and a cleanup callable."""
    if store.startswith("sqlite"):
        path = tmp / f"fleet-{uuid.uuid4().hex[:8]}.db"
        return str(path), lambda: None
    import psycopg  # noqa: PLC0415  # only for PostgreSQL runs

    schema = f"aegis_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')

    def drop() -> None:
        with psycopg.connect(POSTGRES, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    separator = "&" if "?" in POSTGRES else "?"
    return f"{POSTGRES}{separator}options=-csearch_path%3D{schema}", drop


def _bare_commits(count: int = 300) -> float:
    """Commits per second of a one-row INSERT, one connection: the server's fsync rate."""
    import psycopg  # noqa: PLC0415  # only for PostgreSQL runs

    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        table = f"aegis_bare_{uuid.uuid4().hex[:8]}"
        conn.execute(f"CREATE TABLE public.{table} (x int)")
        try:
            start = time.perf_counter()
            for n in range(count):
                conn.execute(f"INSERT INTO public.{table} VALUES (%s)", (n,))
            return count / (time.perf_counter() - start)
        finally:
            conn.execute(f"DROP TABLE public.{table}")


def _percentile(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000


def run_fleet(  # noqa: PLR0917  # one argument per column of the table
    store: str, processes: int, actions: int, concurrency: int, tmp: Path, cli_verify: bool
) -> dict[str, Any]:
    """Run one fleet and measure it; the trail is dropped afterwards."""
    db, cleanup = _fresh(store, tmp)
    try:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        }
        share = actions // processes
        children = [
            subprocess.Popen(
                [
                    *(sys.executable, __file__, "--worker", db, str(share), str(i)),
                    *(str(concurrency), "full" if store.endswith("-full") else "normal"),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
            for i in range(processes)
        ]
        time.sleep(1.0)  # let every child import and wait at its stdin
        start = time.perf_counter()
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        summaries = []
        for child in children:
            out, _ = child.communicate(timeout=3600)
            if child.returncode != 0:
                raise SystemExit(f"a worker failed (exit {child.returncode}) on {store}")
            summaries.append(json.loads(out))
        wall = time.perf_counter() - start
        latencies = [ns for s in summaries for ns in s["latencies_ns"]]
        ok = sum(s["ok"] for s in summaries)
        total = sum(s["count"] for s in summaries)
        slowest = max(s["elapsed"] for s in summaries)
        row: dict[str, Any] = {
            "store": store,
            "processes": processes,
            "concurrency": concurrency,
            "actions": total,
            "ok": ok,
            "throughput": len(latencies) / slowest,
            "wall": wall,
            "p50_us": _percentile(latencies, 0.50),
            "p99_us": _percentile(latencies, 0.99),
        }
        sys.path.insert(0, str(REPO))
        from aegis import AuditLogger  # noqa: PLC0415  # this checkout's

        with AuditLogger(db, create=False) as audit:
            start = time.perf_counter()
            report = audit.verify()
            row["verify_s"] = time.perf_counter() - start
            row["verified"] = report.ok
            row["records"] = report.checked  # a start and a final record per action
            row["present"] = audit.count()  # the actions, each once
        if cli_verify:
            row.update(_cli_verify(db, env))
        return row
    finally:
        cleanup()


def _cli_verify(db: str, env: dict[str, str]) -> dict[str, Any]:
    """``aegis audit verify --db`` on the trail, then again after tampering with one row."""
    verify = [sys.executable, "-m", "aegis", "audit", "verify", "--db", db, "--format", "json"]
    start = time.perf_counter()
    done = subprocess.run(verify, capture_output=True, text=True, env=env, check=False)
    out: dict[str, Any] = {"cli_verify_s": time.perf_counter() - start, "cli_exit": done.returncode}
    out["cli_checked"] = json.loads(done.stdout)["checked"] if done.returncode == 0 else None
    if db.startswith("postgresql://"):
        import psycopg  # noqa: PLC0415  # only for PostgreSQL runs

        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute(
                "UPDATE aegis_audit_log SET action_target = 'elsewhere' WHERE id = "
                "(SELECT max(id) / 2 FROM aegis_audit_log)"
            )
        tampered = subprocess.run(verify, capture_output=True, text=True, env=env, check=False)
        out["tampered_exit"] = tampered.returncode
        out["tampered_reason"] = json.loads(tampered.stdout).get("reason")
    return out


def _fine(row: dict[str, Any]) -> str:
    """Whether every action succeeded and the chain verified with all of them."""
    good = row["verified"] and row["ok"] == row["actions"] == row["present"]
    return "yes" if good else "NO"


def _print_table(rows: list[dict[str, Any]], title: str) -> None:
    print(f"\n{title}")
    print(
        f"{'store':<9} {'procs':>5} {'conc':>5} {'actions':>8} {'actions/s':>10} "
        f"{'p50 us':>9} {'p99 us':>9} {'verify s':>9} {'ok':>4}"
    )
    for r in rows:
        print(
            f"{r['store']:<9} {r['processes']:>5} {r['concurrency']:>5} {r['actions']:>8} "
            f"{r['throughput']:>10,.0f} {r['p50_us']:>9,.0f} {r['p99_us']:>9,.0f} "
            f"{r['verify_s']:>9.3f} {_fine(r):>4}"
        )
    by_store: dict[str, dict[int, float]] = {}
    for r in rows:
        by_store.setdefault(r["store"], {})[r["processes"]] = r["throughput"]
    for store, per in by_store.items():
        if 1 in per and len(per) > 1:
            ratios = ", ".join(f"{n} procs {per[n] / per[1]:.2f}x" for n in sorted(per) if n != 1)
            print(f"  {store}: scaling against 1 process: {ratios}")


def main() -> None:
    """Parse the command line and run the tables."""
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--actions", type=int, default=4000, help="actions per fleet run")
    parser.add_argument("--processes", type=int, nargs="*", default=[1, 2, 4, 8])
    parser.add_argument(
        "--stores",
        nargs="*",
        default=["postgres", "sqlite"],
        choices=["postgres", "postgres-full", "sqlite", "sqlite-full"],
        help="-full: synchronous='full' (every record on disk before its call returns)",
    )
    parser.add_argument("--concurrency", type=int, default=1, help="run_one at once per process")
    parser.add_argument(
        "--gather", type=int, default=1000, help="concurrent run_one in one process (0: skip)"
    )
    parser.add_argument("--cli-verify", action="store_true", help="also run aegis audit verify")
    parser.add_argument("--quick", action="store_true", help="small counts, a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.actions, args.gather = 400, 200
    if any(store.startswith("postgres") for store in args.stores):
        print(f"baseline: {_bare_commits():,.0f} bare synchronous commits/s on this server")
    with tempfile.TemporaryDirectory() as tmp:
        fleets = [
            run_fleet(store, n, args.actions, args.concurrency, Path(tmp), args.cli_verify)
            for store in args.stores
            for n in args.processes
        ]
        _print_table(
            fleets, f"fleets: {args.actions} governed actions per run, split over N processes"
        )
        for r in fleets:
            if "cli_exit" in r:
                print(
                    f"  {r['store']} {r['processes']} procs: aegis audit verify exit "
                    f"{r['cli_exit']} ({r['cli_checked']} records, {r['cli_verify_s']:.2f} s)"
                    + (
                        f"; after tampering exit {r['tampered_exit']}: {r['tampered_reason']}"
                        if "tampered_exit" in r
                        else ""
                    )
                )
        gathered = []
        if args.gather:
            gathered = [
                run_fleet(store, 1, args.gather * 5, args.gather, Path(tmp), False)
                for store in args.stores
            ]
            _print_table(gathered, f"one process, run_one {args.gather} at a time (asyncio.gather)")
    RESULTS.write_text(
        json.dumps({"argv": sys.argv[1:], "fleets": fleets, "gather": gathered}, indent=2) + "\n"
    )
    print(f"\nresults in {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
