"""The PostgreSQL chain against the server's own floor: one and eight writers.

Measured in one run, on one server, interleaved round by round so that the
load of a shared machine falls on every figure alike:

- **bare**: the server's durable commit rate, a one-row ``INSERT`` per
  transaction on one connection (``synchronous_commit`` on): the floor of
  one flush per action;
- **1 process**: one worker process running ``Runtime.run_one`` one action
  at a time (a policy, an executor that does nothing, the PostgreSQL audit
  trail) at each durability level;
- **8 processes**: eight such workers at once, into the same chain.

Each row prints actions per second and its ratio to the bare commit rate of
the same round; the summary takes the median over the rounds. Targets (issue
22, at the default durability ``"result"``): 1 process >= 0.40x bare,
8 processes >= 1.0x bare.

Usage::

    python benchmarks/pg_chain.py                    # 3 rounds, every durability
    python benchmarks/pg_chain.py --rounds 5 --seconds 5 --durability result
    python benchmarks/pg_chain.py --json out.json

The server is ``$AEGIS_TEST_POSTGRES_DSN`` (default the local test server);
each run gets a fresh schema, dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
POSTGRES = os.environ.get("AEGIS_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
LEVELS = ("process", "result", "full")
POLICY = {
    "version": "1",
    "defaults": {"risk_level": "medium", "approval": "block"},
    "rules": [
        {"name": "writes", "match": {"type": "write"}, "risk_level": "low", "approval": "auto"}
    ],
}


# ---------------------------------------------------------------- the worker


async def _work(db: str, seconds: float, worker: int, durability: str) -> dict[str, Any]:
    from aegis import Action, AuditLogger, Policy, Runtime  # noqa: PLC0415  # in the child only

    try:
        audit = AuditLogger(db, durability=durability)
        audit.check()
    except TypeError:  # a checkout from before durability= (--baseline): its older names
        audit = AuditLogger(db, synchronous={"result": "normal", "full": "full"}[durability])
    async with Runtime(
        executor=lambda action: {"ok": True}, policy=Policy.from_dict(POLICY), audit_logger=audit
    ) as runtime:
        n = 0

        async def one() -> None:
            nonlocal n
            n += 1
            result = await runtime.run_one(
                Action("write", "crm", {"n": n, "worker": worker}), context={"worker": worker}
            )
            if not result.ok:
                raise SystemExit(f"an action failed: {result.error}")

        await one()  # connects and creates the tables: before the clock
        backend = _backend_pid(audit)
        print("ready", flush=True)
        sys.stdin.readline()
        done = 0
        server = _cpu_of(backend)
        cpu = time.process_time()
        start = time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            await one()
            done += 1
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu
        server = _cpu_of(backend) - server
    return {
        "worker": worker,
        "actions": done,
        "elapsed": elapsed,
        "cpu": cpu,
        "server_cpu": server if backend else None,
    }


def _backend_pid(audit: Any) -> int:
    """The server process of the trail's writing connection (0 if not known)."""
    conn = getattr(audit.store, "_writer_conn", None)  # the store's own; a benchmark may look
    return int(conn.info.backend_pid) if conn is not None else 0


def _cpu_of(pid: int) -> float:
    """CPU seconds (user + system) of a local process, from /proc; 0.0 if unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker_main(db: str, seconds: float, worker: int, durability: str) -> None:
    """Child process: connect, say ready, wait for the go line, run, print one JSON line."""
    print(json.dumps(asyncio.run(_work(db, seconds, worker, durability))), flush=True)


# ---------------------------------------------------------------- the driver


def _fresh() -> tuple[str, Callable[[], None]]:
    """A DSN whose search_path is a fresh schema, and its cleanup."""
    import psycopg  # noqa: PLC0415

    schema = f"aegis_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')

    def drop() -> None:
        with psycopg.connect(POSTGRES, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    separator = "&" if "?" in POSTGRES else "?"
    return f"{POSTGRES}{separator}options=-csearch_path%3D{schema}", drop


def bare_commits(seconds: float) -> float:
    """Durable commits per second of a one-row INSERT per transaction, one connection."""
    import psycopg  # noqa: PLC0415

    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = on")
        table = f"aegis_bare_{uuid.uuid4().hex[:8]}"
        conn.execute(f"CREATE TABLE public.{table} (x int)")
        try:
            done = 0
            start = time.perf_counter()
            deadline = start + seconds
            while time.perf_counter() < deadline:
                conn.execute(f"INSERT INTO public.{table} VALUES (%s)", (done,))
                done += 1
            return done / (time.perf_counter() - start)
        finally:
            conn.execute(f"DROP TABLE public.{table}")


def fleet(processes: int, durability: str, seconds: float, repo: Path = REPO) -> dict[str, Any]:
    """Actions per second of ``processes`` sequential workers into one fresh chain.

    Also the CPU per action of the workers (``cpu_us``, client) and of their
    connections' server processes (``server_cpu_us``; read from /proc, so
    only for a server on this machine, ``None`` elsewhere). The workers
    import Aegis from ``repo`` (another checkout, for a baseline).
    """
    db, cleanup = _fresh()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]),
    }
    try:
        children = [
            subprocess.Popen(
                [sys.executable, __file__, "--worker", db, str(seconds), str(i), durability],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
            for i in range(processes)
        ]
        try:
            for child in children:
                assert child.stdout is not None
                if child.stdout.readline().strip() != "ready":
                    raise SystemExit(f"a worker did not start (exit {child.wait()})")
            for child in children:
                assert child.stdin is not None
                child.stdin.write("go\n")
                child.stdin.flush()
            summaries = []
            for child in children:
                out, _ = child.communicate(timeout=600)
                if child.returncode != 0:
                    raise SystemExit(f"a worker failed (exit {child.returncode})")
                summaries.append(json.loads(out))
        finally:
            for child in children:
                if child.poll() is None:
                    child.kill()
                    child.wait()
        # every worker ran for the same time from the same go: the fleet's rate
        # is the sum of theirs
        actions = sum(s["actions"] for s in summaries)
        servers = [s["server_cpu"] for s in summaries]
        return {
            "rate": sum(s["actions"] / s["elapsed"] for s in summaries),
            "cpu_us": 1e6 * sum(s["cpu"] for s in summaries) / max(actions, 1),
            "server_cpu_us": (None if None in servers else 1e6 * sum(servers) / max(actions, 1)),
        }
    finally:
        cleanup()


def _load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover - not on Linux
        return "?"


def main(argv: list[str] | None = None) -> int:
    """Run the rounds, print each and the medians; optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", nargs=4, metavar=("DB", "SECONDS", "N", "DURABILITY"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--durability", nargs="+", choices=LEVELS, default=list(LEVELS))
    parser.add_argument("--json", type=Path, help="write every sample here")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout (e.g. a git worktree of an older commit) measured in the same "
        "rounds at durability result, for a before/after",
    )
    args = parser.parse_args(argv)
    if args.worker:
        db, seconds, n, durability = args.worker
        worker_main(db, float(seconds), int(n), durability)
        return 0

    print(f"PostgreSQL chain benchmark: {POSTGRES.split('@')[-1]}, {os.cpu_count()} CPUs")
    print(f"{args.rounds} rounds x {args.seconds:g} s per figure; load average at start {_load()}")
    samples: list[dict[str, Any]] = []
    for round_no in range(1, args.rounds + 1):
        bare = bare_commits(args.seconds)
        print(f"\nround {round_no}: bare durable commits {bare:,.0f}/s (load {_load()})")
        runs = [(durability, "this checkout", REPO) for durability in args.durability]
        if args.baseline:
            runs.append(("result", "baseline", args.baseline.resolve()))
        for durability, code, repo in runs:
            for processes in (1, args.processes):
                measured = fleet(processes, durability, args.seconds, repo)
                rate = measured["rate"]
                ratio = rate / bare
                samples.append(
                    {
                        "round": round_no,
                        "code": code,
                        "durability": durability,
                        "processes": processes,
                        "rate": rate,
                        "bare": bare,
                        "ratio": ratio,
                        "cpu_us": measured["cpu_us"],
                        "server_cpu_us": measured["server_cpu_us"],
                        "load": _load(),
                    }
                )
                server = measured["server_cpu_us"]
                print(
                    f"  {code}, durability={durability:<8} {processes} process(es): "
                    f"{rate:8,.0f} actions/s = {ratio:5.2f}x bare; CPU per action "
                    f"{measured['cpu_us']:,.0f} us client, "
                    + ("?" if server is None else f"{server:,.0f} us")
                    + " server"
                )
    print("\nmedian over rounds (ratio to the bare commit rate of the same round):")
    print("| code | durability | processes | actions/s | x bare | client CPU/action | server |")
    print("|---|---|---|---|---|---|---|")
    kinds = sorted(
        {(s["code"], s["durability"]) for s in samples},
        key=lambda k: (k[0] != "this checkout", LEVELS.index(k[1])),
    )
    for code, durability in kinds:
        for processes in (1, args.processes):
            mine = [
                s
                for s in samples
                if (s["code"], s["durability"], s["processes"]) == (code, durability, processes)
            ]
            servers = [s["server_cpu_us"] for s in mine if s["server_cpu_us"] is not None]
            print(
                f"| {code} | {durability} | {processes} | "
                f"{statistics.median(s['rate'] for s in mine):,.0f} | "
                f"{statistics.median(s['ratio'] for s in mine):.2f} | "
                f"{statistics.median(s['cpu_us'] for s in mine):,.0f} us | "
                + (f"{statistics.median(servers):,.0f} us |" if servers else "? |")
            )
    bares = sorted({s["bare"] for s in samples})
    print(f"bare commits/s: median {statistics.median(bares):,.0f} (of {len(bares)} rounds)")
    print(f"load average at the end {_load()}")
    if args.json:
        args.json.write_text(json.dumps(samples, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
