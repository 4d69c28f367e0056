"""What the hardening of the core costs: run with ``python benchmarks/core_checks.py``.

Prints one line per measurement, best of several rounds, ours only:

- the runtime's own overhead per ``run_one`` (no audit I/O: a null audit),
  of which the canonical JSON taken three times per action is a part;
- ``param_matches`` per call with RE2 and with the built-in NFA, and on a
  hostile 10,000-character string that makes Python's ``re`` backtrack for ever;
- the shadowed-rule check of ``aegis validate`` on 5,000 rules (it was a
  quadratic loop: 16 s on this machine; ``--reference`` times that loop too);
- evaluation with 10 and 1,000 exact rules, and their ratio.

The standard library only, so any Python 3.11 with this checkout on the
path runs it (``PYTHONPATH=. python benchmarks/core_checks.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aegis import Action, Policy, PolicyRule, Result, ResultStatus, Runtime
from aegis.adapters.base import BaseExecutor
from aegis.core._index import covers
from aegis.core._regex import compile_search
from aegis.core.action import action_digest, canonical_json
from aegis.runtime.approval import AutoApprovalHandler


def best(fn: Callable[[], Any], rounds: int, per: int = 1) -> float:
    """The best of ``rounds`` timings of ``fn``, in microseconds per ``per`` operations."""
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times) / per * 1e6


class NoOp(BaseExecutor):
    """Succeeds at once."""

    async def execute(self, action: Action) -> Result:
        return Result(action, ResultStatus.SUCCESS)


class NullAudit:
    """Records nothing, so that the runtime's own steps are what is timed."""

    async def record(self, *args: Any, **kwargs: Any) -> None:
        return None

    def close(self) -> None:
        return None


def runtime_overhead(rounds: int) -> float:
    """Microseconds per run_one of an auto action, audit excluded."""
    policy = Policy(
        [PolicyRule(f"delete_{i}", f"prod_{i}", "high", "block", f"r{i}") for i in range(10)],
        default_approval="auto",
    )
    actions = [Action(f"read_{j}", "db", {"row": j}) for j in range(2_000)]

    async def run() -> float:
        runtime = Runtime(
            executor=NoOp(),
            policy=policy,
            approval_handler=AutoApprovalHandler(),
            audit_logger=NullAudit(),  # type: ignore[arg-type]  # duck-typed on purpose
        )
        async with runtime:
            timings = []
            for _ in range(rounds):
                started = time.perf_counter()
                for action in actions:
                    await runtime.run_one(action)
                timings.append(time.perf_counter() - started)
        return min(timings) / len(actions) * 1e6

    return asyncio.run(run())


def shadow_reference(policy: Policy) -> int:
    """The old quadratic shadowed-rule loop, for comparison."""
    found, catch_alls = 0, []
    for rule in policy.rules:
        for earlier in catch_alls:
            if covers(earlier.match_type, rule.match_type) and covers(
                earlier.match_target, rule.match_target
            ):
                found += 1
                break
        if not rule.conditions:
            catch_alls.append(rule)
    return found


def main(argv: list[str] | None = None) -> int:
    """Print the measurements."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds, best kept (7)")
    parser.add_argument(
        "--reference", action="store_true", help="also time the old quadratic shadow check"
    )
    args = parser.parse_args(argv)
    rounds = args.rounds

    action = Action("refund", "stripe", {"amount": 900, "customer": {"id": "c_1", "tier": "gold"}})
    print(f"canonical_json               {best(lambda: canonical_json(action), rounds):8.2f} us")
    print(f"action_digest                {best(lambda: action_digest(action), rounds):8.2f} us")
    print(f"run_one overhead (null audit){runtime_overhead(rounds):8.2f} us/action")

    text = "please refund order 12345 for customer alice@example.com"
    for engine, options in (("re2", {}), ("nfa", {"use_re2": False})):
        search = compile_search(r"\w+@\w+\.com|refund \d{5}", **options)  # type: ignore[arg-type]
        cost = best(lambda search=search: [search(text) for _ in range(1_000)], rounds, 1_000)
        hostile = compile_search(r"(a+)+$", **options)  # type: ignore[arg-type]
        slow = best(lambda hostile=hostile: hostile("a" * 10_000 + "!"), 3)
        print(
            f"param_matches {engine:<4} {len(text)} chars {cost:8.2f} us;"
            f" (a+)+$ on 10,001 chars {slow / 1000:8.1f} ms"
        )

    rules = [PolicyRule(f"action_{i}", f"target_{i % 50}", name=f"r{i}") for i in range(5_000)]
    policy = Policy([*rules, PolicyRule("act*", "*", name="late")])
    shadow = best(policy.shadowed_rules, 3) / 1e3
    print(f"shadowed_rules, 5,001 rules  {shadow:8.1f} ms")
    if args.reference:
        old = best(lambda: shadow_reference(policy), 1) / 1e3
        print(f"  the old quadratic loop     {old:8.1f} ms")

    costs = {}
    for n in (10, 1_000):
        exact = Policy(
            [PolicyRule(f"action_{i}", f"target_{i}", name=f"e{i}") for i in range(n)],
            default_approval="auto",
        )
        probes = [Action(f"other_{j}", f"system_{j}") for j in range(5_000)]
        evaluate = exact.evaluate
        costs[n] = best(
            lambda evaluate=evaluate, probes=probes: [evaluate(a) for a in probes], rounds, 5_000
        )
        print(f"evaluate, {n:>5} exact rules {costs[n]:8.3f} us")
    print(f"ratio 1,000 / 10 rules       {costs[1_000] / costs[10]:8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
