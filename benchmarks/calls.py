"""How many Python and C calls one governed action costs: the per-action path's layers, counted.

Timings on a shared, loaded machine move by more than the cost of a layer
of calls (a call on the per-action path is about half a microsecond of a
~100 µs action); a count does not move at all. This runs ``run_one`` under
``sys.setprofile`` for four policies (plain ``auto``, a rate limit per
agent, a limit keyed by a param, ``approve`` with a handler that says yes)
and prints the calls per action, here and, with ``--against``, in another
checkout, each in a fresh process. Use it beside ``benchmarks/limits.py``
and ``benchmarks/run.py`` to see whether a change added layers, then time
what it added.

``--cpu`` also times each policy: the process's CPU time per action (best
of several rounds of sequential actions, the audit on a tmpfs when there is
one, so that a flush costs no waiting), at durability ``result`` and
``process`` (a checkout without ``durability=`` at its default). With
``--against`` the rounds alternate between the two checkouts, each in a
fresh interpreter, so a loaded machine weighs on both alike.
``--threads`` times a plain ``def`` executor (run on a worker thread)
beside an ``async def`` one, sequential ``run_one`` at durability
``result`` on a tmpfs: actions per second, CPU (user + system, all
threads) and context switches per action, the best of several rounds.
``--instructions`` counts the instructions of one action instead
(valgrind's callgrind, counting only the measured actions): the one measure
that other work on the machine cannot disturb. Its last row is 1,000 plain
actions under one ``asyncio.gather`` (the gathered row of ``run.py``), whose
records share commits.

Usage::

    python benchmarks/calls.py
    python benchmarks/calls.py --against /path/to/other/checkout
    python benchmarks/calls.py --cpu [--against ...]            # about a minute
    python benchmarks/calls.py --instructions [--against ...]   # a few minutes
    python benchmarks/calls.py --threads [--against ...]        # about a minute
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import inspect
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

KINDS: dict[str, dict[str, Any]] = {
    "plain auto": {"approval": "auto"},
    "a limit per agent": {
        "approval": "auto",
        "limit": {"max": 10**9, "per": "1h", "key": ["agent"]},
    },
    "a limit per params.customer": {
        "approval": "auto",
        "limit": {"max": 10**9, "per": "1h", "key": ["params.customer"]},
    },
    "approve, handler says yes": {"approval": "approve"},
    # every refund looks for an earlier one in the session and is remembered as one
    "a flow rule (after, 1h)": {
        "approval": "auto",
        "conditions": {"after": {"type": "refund", "target": "stripe", "within": "1h"}},
    },
}
WARM, COUNTED = 50, 150
DURABILITIES = ("result", "process")
#: the --instructions row of 1,000 plain actions gathered at once
GATHERED = "plain auto, 1,000 gathered@result"
#: CPU rounds per checkout, and actions per round
ROUNDS, ACTIONS = 5, 400


def _folder() -> str:
    """A fresh folder for the audit files: on a tmpfs when there is one."""
    shm = "/dev/shm"  # a tmpfs: a flush costs no waiting
    return tempfile.mkdtemp(dir=shm if os.path.isdir(shm) else None)


async def _runtime(
    rule: dict[str, Any], path: str, durability: str | None, executor: Any = None
) -> Any:
    """A runtime over a fresh audit at ``path`` whose first rule is ``rule``, entered."""
    from aegis import AuditLogger, Policy, Runtime  # noqa: PLC0415  # after sys.path

    rules = [
        {"name": "refunds", "match": {"type": "refund"}, **rule},
        {"name": "rest", "match": {"type": "*"}, "approval": "auto"},
    ]
    options: dict[str, Any] = {}
    if durability is not None and "durability" in inspect.signature(AuditLogger).parameters:
        options["durability"] = durability
    audit = AuditLogger(path, **options)

    async def execute(action: object) -> None:
        return None

    async def approve(decision: object) -> bool:
        return True

    runtime = Runtime(
        executor=execute if executor is None else executor,
        policy=Policy.from_dict({"rules": rules}),
        audit_logger=audit,
        agent="bench",
        approval_handler=approve,
    )
    return await runtime.__aenter__()


def _actions(count: int) -> list[Any]:
    from aegis import Action  # noqa: PLC0415  # after sys.path

    return [Action("refund", "stripe", {"amount": 1.5, "customer": i % 50}) for i in range(count)]


async def _count(rule: dict[str, Any], folder: str) -> tuple[float, float]:
    """Python calls and C calls per ``run_one`` under a policy whose first rule is ``rule``."""
    runtime = await _runtime(rule, os.path.join(folder, f"{len(os.listdir(folder))}.db"), None)
    actions = _actions(WARM + COUNTED)
    counts = {"call": 0, "c_call": 0}

    def profile(frame: object, event: str, arg: object) -> None:
        if event in counts:
            counts[event] += 1

    for action in actions[:WARM]:
        await runtime.run_one(action)
    sys.setprofile(profile)
    try:
        for action in actions[WARM:]:
            await runtime.run_one(action)
    finally:
        sys.setprofile(None)
    await runtime.close()
    return counts["call"] / COUNTED, counts["c_call"] / COUNTED


async def _cpu(rule: dict[str, Any], path: str, durability: str) -> float:
    """Best CPU microseconds per ``run_one`` over :data:`ROUNDS` rounds of :data:`ACTIONS`."""
    runtime = await _runtime(rule, path, durability)
    for action in _actions(WARM):
        await runtime.run_one(action)
    best = float("inf")
    for _ in range(ROUNDS):
        actions = _actions(ACTIONS)
        gc.collect()
        gc.disable()
        used = time.process_time()
        for action in actions:
            await runtime.run_one(action)
        best = min(best, (time.process_time() - used) / ACTIONS * 1e6)
        gc.enable()
    await runtime.close()
    return best


def _sync_execute(action: object) -> dict[str, bool]:
    return {"ok": True}


async def _async_execute(action: object) -> dict[str, bool]:
    return {"ok": True}


EXECUTORS = {"def executor": _sync_execute, "async def executor": _async_execute}


async def _threads(name: str, path: str) -> dict[str, float]:
    """Best round of :data:`ACTIONS` sequential actions with executor ``name``, 'result'."""
    runtime = await _runtime(KINDS["plain auto"], path, "result", EXECUTORS[name])
    for action in _actions(WARM):
        await runtime.run_one(action)
    best: dict[str, float] = {}
    for _ in range(ROUNDS):
        actions = _actions(ACTIONS)
        gc.collect()
        gc.disable()
        before, began = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for action in actions:
            await runtime.run_one(action)
        after, took = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - began
        gc.enable()
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        switches = after.ru_nvcsw + after.ru_nivcsw - before.ru_nvcsw - before.ru_nivcsw
        if not best or ACTIONS / took > best["actions/s"]:
            best = {
                "actions/s": ACTIONS / took,
                "CPU us/action": cpu / ACTIONS * 1e6,
                "switches/action": switches / ACTIONS,
            }
    await runtime.close()
    return best


def _counted(kind: str, durability: str, count: int, gathered: bool = False) -> None:
    """Run ``count`` actions of ``kind`` (at once if ``gathered``); callgrind counts them alone."""
    folder = _folder()
    loop = asyncio.new_event_loop()
    runtime = loop.run_until_complete(
        _runtime(KINDS[kind], os.path.join(folder, "a.db"), durability)
    )

    async def run(actions: list[Any]) -> None:
        if gathered:
            await asyncio.gather(*(runtime.run_one(action) for action in actions))
            return
        for action in actions:
            await runtime.run_one(action)

    actions = _actions(WARM + count)
    loop.run_until_complete(run(actions[:WARM]))
    # The one call of sys.call_tracing in the process: callgrind counts inside it only.
    sys.call_tracing(loop.run_until_complete, (run(actions[WARM:]),))
    loop.run_until_complete(runtime.close())
    loop.close()
    shutil.rmtree(folder, ignore_errors=True)


def _measure(cpu: bool, threads: bool = False) -> dict[str, Any]:
    folder = _folder()
    try:
        if threads:
            return {
                f"{name}: {measure}": value
                for name in EXECUTORS
                for measure, value in asyncio.run(
                    _threads(name, os.path.join(folder, f"{len(os.listdir(folder))}.db"))
                ).items()
            }
        if cpu:
            return {
                f"{kind}@{durability}": asyncio.run(
                    _cpu(rule, os.path.join(folder, f"{len(os.listdir(folder))}.db"), durability)
                )
                for durability in DURABILITIES
                for kind, rule in KINDS.items()
            }
        return {kind: asyncio.run(_count(rule, folder)) for kind, rule in KINDS.items()}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _child(checkout: Path, *args: str, valgrind: bool = False) -> str:
    """This script in a fresh process importing ``checkout``; its output (or callgrind's count)."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    command = [sys.executable, __file__, *args]
    if valgrind:
        command = [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            "--collect-atstart=no",
            "--toggle-collect=sys_call_tracing",
            *command,
        ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    if valgrind:
        counted = re.search(r"Collected : (\d+)", done.stderr)
        if counted is None:
            raise SystemExit(f"callgrind printed no count:\n{done.stderr}")
        return counted.group(1)
    return done.stdout


def _table(title: str, rows: list[str], sides: dict[str, dict[str, Any]], cell: Any) -> None:
    print(title)
    print(f"{'':34s}" + "".join(f"{name[-24:]:>26s}" for name in sides))
    for row in rows:
        print(f"{row:34s}" + "".join(f"{cell(side[row]):>26s}" for side in sides.values()))


def main() -> None:
    """Count (and time) and print the tables."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--against", type=Path, help="another checkout to measure too")
    parser.add_argument("--cpu", action="store_true", help="CPU time per action too")
    parser.add_argument("--instructions", action="store_true", help="instructions per action")
    parser.add_argument("--threads", action="store_true", help="def vs async def executor")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    parser.add_argument("--durability", help=argparse.SUPPRESS)
    parser.add_argument("--gathered", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.json or args.count is not None:  # a child: import aegis from PYTHONPATH
        sys.path.insert(0, os.environ.get("PYTHONPATH", str(REPO)))
        if args.count is not None:
            _counted(args.kind, args.durability, args.count, args.gathered)
        else:
            print(json.dumps(_measure(args.cpu, args.threads)))
        return
    checkouts = {"this checkout": REPO}
    if args.against is not None:
        checkouts[str(args.against)] = args.against.resolve()
    if args.threads:
        runs: dict[str, dict[str, float]] = {name: {} for name in checkouts}
        for _ in range(2):  # the checkouts alternate, each run in a fresh process
            for name, path in checkouts.items():
                for row, value in json.loads(_child(path, "--json", "--threads")).items():
                    better = max if row.endswith("actions/s") else min
                    runs[name][row] = better(value, runs[name].get(row, value))
        _table(
            f"sequential run_one, 'result' on tmpfs (best round of {ACTIONS} actions)",
            list(runs["this checkout"]),
            runs,
            lambda v: f"{v:,.1f}",
        )
        print(f"load average: {os.getloadavg()[0]:.1f}")
        return
    if args.instructions:
        if shutil.which("valgrind") is None:
            parser.error("--instructions needs valgrind")
        counted: dict[str, dict[str, float]] = {name: {} for name in checkouts}
        rows = [
            f"{k}@{d}" for d in DURABILITIES for k in KINDS if k != "a limit per params.customer"
        ]
        rows.append(GATHERED)
        for row in rows:
            kind, durability = row.split("@")
            count = 1000 if row == GATHERED else 200
            for name, checkout in checkouts.items():
                out = _child(
                    checkout,
                    "--count",
                    str(count),
                    "--kind",
                    "plain auto" if row == GATHERED else kind,
                    "--durability",
                    durability,
                    *(["--gathered"] if row == GATHERED else []),
                    valgrind=True,
                )
                counted[name][row] = int(out) / count
        _table(
            "instructions per run_one (callgrind, 200 actions after 50; gathered: 1,000)",
            rows,
            counted,
            lambda v: f"{v:,.0f}",
        )
        return
    sides = {name: json.loads(_child(path, "--json")) for name, path in checkouts.items()}
    _table(
        f"calls per run_one ({COUNTED} actions after {WARM}), Python / C",
        list(KINDS),
        sides,
        lambda v: f"{v[0]:.1f} / {v[1]:<9.1f}",
    )
    if args.cpu:
        best: dict[str, dict[str, float]] = {name: {} for name in checkouts}
        for _ in range(2):  # the checkouts alternate, each run in a fresh process
            for name, path in checkouts.items():
                for row, value in json.loads(_child(path, "--json", "--cpu")).items():
                    best[name][row] = min(value, best[name].get(row, value))
        print()
        _table(
            f"CPU us per run_one (process time, best round of {ACTIONS} actions, tmpfs)",
            list(best["this checkout"]),
            best,
            lambda v: f"{v:.1f}",
        )
        print(f"load average: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
