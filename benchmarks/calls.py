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

Usage::

    python benchmarks/calls.py
    python benchmarks/calls.py --against /path/to/other/checkout
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
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
}
WARM, COUNTED = 50, 150


async def _count(rule: dict[str, Any], folder: str) -> tuple[float, float]:
    """Python calls and C calls per ``run_one`` under a policy whose first rule is ``rule``."""
    from aegis import Action, AuditLogger, Policy, Runtime  # noqa: PLC0415  # after sys.path

    rules = [
        {"name": "refunds", "match": {"type": "refund"}, **rule},
        {"name": "rest", "match": {"type": "*"}, "approval": "auto"},
    ]
    policy = Policy.from_dict({"rules": rules})
    audit = AuditLogger(os.path.join(folder, f"{len(os.listdir(folder))}.db"))
    actions = [
        Action("refund", "stripe", {"amount": 1.5, "customer": i % 50})
        for i in range(WARM + COUNTED)
    ]
    counts = {"call": 0, "c_call": 0}

    def profile(frame: object, event: str, arg: object) -> None:
        if event in counts:
            counts[event] += 1

    async def execute(action: Action) -> None:
        return None

    async def approve(decision: object) -> bool:
        return True

    async with Runtime(
        executor=execute, policy=policy, audit_logger=audit, agent="bench", approval_handler=approve
    ) as runtime:
        for action in actions[:WARM]:
            await runtime.run_one(action)
        sys.setprofile(profile)
        try:
            for action in actions[WARM:]:
                await runtime.run_one(action)
        finally:
            sys.setprofile(None)
    return counts["call"] / COUNTED, counts["c_call"] / COUNTED


def _measure() -> dict[str, tuple[float, float]]:
    with tempfile.TemporaryDirectory() as folder:
        return {kind: asyncio.run(_count(rule, folder)) for kind, rule in KINDS.items()}


def _in(checkout: Path) -> dict[str, tuple[float, float]]:
    """:func:`_measure` in a fresh process importing ``checkout``."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    out = subprocess.run(
        [sys.executable, __file__, "--json"], env=env, capture_output=True, text=True, check=True
    )
    return {kind: (py, c) for kind, (py, c) in json.loads(out.stdout).items()}


def main() -> None:
    """Count and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", type=Path, help="another checkout to count too")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.json:
        sys.path.insert(0, os.environ.get("PYTHONPATH", str(REPO)))
        print(json.dumps(_measure()))
        return
    sides = {"this checkout": _in(REPO)}
    if args.against is not None:
        sides[str(args.against)] = _in(args.against.resolve())
    print(f"calls per run_one ({COUNTED} actions after {WARM}), Python / C")
    header = f"{'':30s}" + "".join(f"{name[-24:]:>26s}" for name in sides)
    print(header)
    for kind in KINDS:
        row = "".join(f"{side[kind][0]:>14.1f} / {side[kind][1]:<9.1f}" for side in sides.values())
        print(f"{kind:30s}{row}")


if __name__ == "__main__":
    main()
