"""Benchmark Aegis against agent-aegis 1.0.0, side by side.

Both packages import as ``aegis``, so each lives in its own virtual
environment under ``benchmarks/`` and ``workloads.py`` runs in each as a
subprocess. Runs alternate (ours, theirs, ours, theirs, ...) so that any
drift of the machine hits both sides alike; the table shows medians.

Usage::

    python benchmarks/run.py              # full run, about three minutes
    python benchmarks/run.py --quick      # smoke run, well under a minute
    python benchmarks/run.py --rounds 9   # more rounds, steadier medians
    python benchmarks/run.py --profile    # cProfile of our run_one and evaluate
    python benchmarks/run.py --sqlite     # the durability rows only (run_one, bare commits)

Every row that writes the audit trail says under which durability each
side ran: ours takes ``durability=`` (``"result"`` by default), agent-aegis
always syncs every record (WAL, ``synchronous=FULL``), which is ours'
``"result"`` promise. The bare SQLite commit rows are the floors: no store
that flushes once per action can beat ``bare commit, synchronous=FULL``.

The driver uses only the standard library, so any Python 3.11 runs it.
Results go to ``benchmarks/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORKLOADS = HERE / "workloads.py"
RESULTS = HERE / "results.json"
THEIRS_SPEC = "agent-aegis==1.0.0"


@dataclass(frozen=True)
class Side:
    """One package under test and the venv it lives in."""

    name: str
    venv: Path
    distribution: str
    install: tuple[str, ...]

    @property
    def python(self) -> Path:
        """The venv's interpreter."""
        return self.venv / "bin" / "python"


OURS = Side("ours", HERE / ".venv-ours", "aegis-runtime", ("-e", str(REPO)))
THEIRS = Side("theirs", HERE / ".venv-theirs", "agent-aegis", (THEIRS_SPEC,))
SIDES = (OURS, THEIRS)


@dataclass(frozen=True)
class Workload:
    """A row of the table: how to read its number and what we promised."""

    name: str
    label: str
    higher_is_better: bool
    target: float | None = None  # minimum speed-up of ours over theirs
    script: str = ""  # the workload of workloads.py (the row's name when empty)
    ours_args: tuple[str, ...] = ()  # e.g. ("--durability", "process")
    ours_only: bool = False  # a floor that no package runs (bare SQLite)
    durability: str = ""  # under which promise each side ran, for the table

    @property
    def workload(self) -> str:
        """The name workloads.py knows the row's workload by."""
        return self.script or self.name


THROUGHPUT = (
    Workload("eval_exact_10", "evaluate, 10 exact rules + catch-all", True, 2),
    Workload("eval_exact_100", "evaluate, 100 exact rules + catch-all", True),
    Workload("eval_exact_1000", "evaluate, 1,000 exact rules + catch-all", True, 100),
    Workload("eval_glob_1000", "evaluate, 1,000 glob rules (95% miss)", True, 20),
    Workload("eval_cond_100", "evaluate, 100 param_gt rules", True, 5),
)
#: agent-aegis syncs every record: a returned result's record is on disk ("result")
THEIRS_DURABILITY = "theirs: fsync per record"
DURABILITY = (
    Workload(
        "run_one_seq",
        "run_one x3,000 sequential, SQLite audit, each side's default",
        True,
        0.9,
        durability=f"ours: result; {THEIRS_DURABILITY}",
    ),
    Workload(
        "run_one_conc",
        "run_one x1,000 asyncio.gather, SQLite audit, each side's default",
        True,
        10,
        durability=f"ours: result; {THEIRS_DURABILITY}",
    ),
    Workload(
        "run_one_seq_process",
        "run_one x3,000 sequential, ours durability='process' (a weaker promise)",
        True,
        3,
        script="run_one_seq",
        ours_args=("--durability", "process"),
        durability=f"ours: process; {THEIRS_DURABILITY}",
    ),
    Workload(
        "run_one_seq_full",
        "run_one x3,000 sequential, ours durability='full' (a stronger promise)",
        True,
        script="run_one_seq",
        ours_args=("--durability", "full"),
        durability=f"ours: full; {THEIRS_DURABILITY}",
    ),
    Workload(
        "run_one_conc_full",
        "run_one x1,000 asyncio.gather, ours durability='full'",
        True,
        script="run_one_conc",
        ours_args=("--durability", "full"),
        durability=f"ours: full; {THEIRS_DURABILITY}",
    ),
    Workload(
        "bare_commit_full",
        "floor: bare SQLite one-row commits, WAL, synchronous=FULL",
        True,
        script="bare_commit",
        ours_args=("--durability", "full"),
        ours_only=True,
        durability="one flush per commit",
    ),
    Workload(
        "bare_commit_normal",
        "floor: bare SQLite one-row commits, WAL, synchronous=NORMAL",
        True,
        script="bare_commit",
        ours_args=("--durability", "process"),
        ours_only=True,
        durability="no flush",
    ),
)
AUDIT = (
    Workload("export", "export_jsonl of the audit log", False),
    Workload("verify", "verify() of the audit log", False),
)

# ---------------------------------------------------------------- venvs


def _probe(side: Side) -> str | None:
    """The installed version of ``side``'s package, or None if the venv is unusable."""
    if not side.python.exists():
        return None
    code = f"import importlib.metadata as m; print(m.version({side.distribution!r}))"
    done = subprocess.run(
        [str(side.python), "-c", code], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else None


def ensure_venv(side: Side) -> str:
    """Create or repair ``side``'s venv; quick when it is already in place."""
    version = _probe(side)
    if version is not None and (side is not THEIRS or version == THEIRS_SPEC.split("==")[1]):
        return version
    print(f"setting up {side.venv.relative_to(REPO)} ...", file=sys.stderr, flush=True)
    if not side.python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(side.venv)], check=True)
    pip = [str(side.python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, *side.install], check=True)
    version = _probe(side)
    if version is None:
        raise SystemExit(
            f"{side.venv}: installed {' '.join(side.install)} but cannot import it; "
            f"delete the folder and run again"
        )
    return version


def importable(side: Side, module: str) -> bool:
    """Whether ``module`` imports in ``side``'s venv (ours may still be partial)."""
    done = subprocess.run(
        [str(side.python), "-c", f"import {module}"], capture_output=True, check=False
    )
    return done.returncode == 0


# ---------------------------------------------------------------- running


def contention() -> dict[str, Any]:
    """How busy the machine is now: load averages, and CPU and I/O pressure where shown."""
    seen: dict[str, Any] = {"loadavg": [round(x, 2) for x in os.getloadavg()]}
    for kind in ("cpu", "io"):
        try:
            first = Path(f"/proc/pressure/{kind}").read_text().splitlines()[0]
        except (OSError, IndexError):
            continue
        fields = dict(part.split("=") for part in first.split()[1:])
        seen[f"{kind}_pressure_avg10"] = float(fields.get("avg10", "nan"))
    return seen


#: (label, side, extra workload arguments) of the flush counts --sqlite adds
FLUSH_COUNTS = (
    ("ours, durability='process'", "ours", ("--durability", "process")),
    ("ours, durability='result' (default)", "ours", ("--durability", "result")),
    ("ours, durability='full'", "ours", ("--durability", "full")),
    ("agent-aegis 1.0.0 (its only mode)", "theirs", ()),
)


def count_flushes(side: Side, extra: tuple[str, ...], scratch: Path) -> float | None:
    """fsync/fdatasync calls per sequential ``run_one``, counted by strace; None without it.

    The count does not depend on the machine's load, so it says what the
    promise costs even when the timings are noise: one flush per action is
    the floor of "result", two is what "full" asks.
    """
    strace = shutil.which("strace")
    if strace is None:
        return None
    log = scratch / f"strace-{side.name}.txt"
    done = subprocess.run(
        [
            *(strace, "-f", "-c", "-o", str(log), "-e", "trace=fsync,fdatasync"),
            *(str(side.python), str(WORKLOADS), "run_one_seq", "--quick", *extra),
        ],
        capture_output=True,
        text=True,
        cwd=scratch,
        check=False,
    )
    if done.returncode != 0 or not log.exists():
        return None
    report = json.loads(done.stdout.strip().splitlines()[-1])
    calls = 0
    for line in log.read_text().splitlines():
        parts = line.split()
        if parts and parts[-1] in ("fsync", "fdatasync"):
            calls += int(parts[3])
    # the workload's warm-up actions run under strace too
    return calls / (report["n"] + report.get("warmup", 0))


def print_flushes(sides: list[Side]) -> list[dict[str, Any]]:
    """Print (and return as rows) the flushes per action of each side and level."""
    print("\nflushes (fsync + fdatasync) per sequential run_one, counted by strace:")
    rows = []
    with tempfile.TemporaryDirectory(prefix="aegis-bench-") as tmp:
        for label, name, extra in FLUSH_COUNTS:
            side = OURS if name == "ours" else THEIRS
            if side not in sides:
                continue
            flushes = count_flushes(side, extra, Path(tmp))
            shown = "not measured (no strace)" if flushes is None else f"{flushes:.2f}"
            print(f"  {label}: {shown}")
            rows.append({"workload": f"flushes: {label}", "flushes_per_action": flushes})
    return rows


def describe_contention(busy: list[dict[str, Any]]) -> str:
    """One line on how busy the machine was over the rounds."""
    loads = [b["loadavg"][0] for b in busy]
    if not loads:
        return "machine: no timed rounds"
    text = (
        f"machine: {os.cpu_count()} cores, 1-minute load average {min(loads):.1f} to "
        f"{max(loads):.1f} at the rounds' starts"
    )
    for kind, key in (("CPU", "cpu_pressure_avg10"), ("I/O", "io_pressure_avg10")):
        values = [b[key] for b in busy if key in b]
        if values:
            text += f", {kind} pressure (avg10) {min(values):.0f}-{max(values):.0f}%"
    return text


def run_workload(side: Side, workload: str, *extra: str, cwd: Path) -> dict[str, Any]:
    """Run one workload in ``side``'s venv and return the JSON it printed."""
    done = subprocess.run(
        [str(side.python), str(WORKLOADS), workload, *extra],
        capture_output=True,
        text=True,
        cwd=cwd,  # agent-aegis writes aegis_audit.db into the cwd by default
        check=False,
    )
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-3:]
        return {"error": f"exit {done.returncode}: " + " | ".join(tail)}
    try:
        report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError) as exc:
        return {"error": f"unreadable output {done.stdout[-200:]!r}: {exc}"}
    return report


def audit_db(side: Side, records: int, scratch: Path) -> Path:
    """An audit log of ``records`` entries for ``side``, built once and kept.

    agent-aegis never changes, so its log is cached inside its venv; ours is
    rebuilt every run because the schema may change between commits.
    """
    folder = side.venv if side is THEIRS else scratch
    db = folder / f"bench-audit-{records}.db"
    if db.exists():
        return db
    print(f"building {records:,}-record audit log for {side.name} ...", file=sys.stderr)
    tmp = db.with_suffix(".building")
    for leftover in folder.glob(tmp.name + "*"):
        leftover.unlink()
    report = run_workload(
        side, "build_log", "--db", str(tmp), "--records", str(records), cwd=scratch
    )
    if "error" in report:
        raise SystemExit(f"could not build the audit log for {side.name}: {report['error']}")
    for suffix in ("", "-wal", "-shm"):
        built = Path(str(tmp) + suffix)
        if built.exists():
            built.rename(str(db) + suffix)
    print(f"  {report['value']:,.0f} records/s via AuditLogger.log", file=sys.stderr)
    return db


def collect(
    args: argparse.Namespace, sides: list[Side], scratch: Path, busy: list[dict[str, Any]]
) -> dict[str, Any]:
    """Run every workload on every side, alternating, and keep every sample.

    ``busy`` gets how busy the machine was at the start of each round.
    """
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {}
    quick = ["--quick"] if args.quick else []
    dbs = {}
    if not args.sqlite:
        dbs = {side.name: audit_db(side, args.records, scratch) for side in sides}
    rows = DURABILITY if args.sqlite else (*THROUGHPUT, *DURABILITY)
    total = args.warmup + args.rounds
    for round_ in range(total):
        warming = round_ < args.warmup
        tag = "warm-up" if warming else f"round {round_ - args.warmup + 1}/{args.rounds}"
        now = contention()
        print(f"{tag} ... (load {now['loadavg']})", file=sys.stderr, flush=True)
        if not warming:
            busy.append(now)
        for workload in rows:
            for side in sides:
                if workload.ours_only and side is not OURS:
                    continue
                extra = workload.ours_args if side is OURS else ()
                report = run_workload(side, workload.workload, *quick, *extra, cwd=scratch)
                if not warming:
                    samples.setdefault(workload.name, {}).setdefault(side.name, []).append(report)
        if args.sqlite:
            continue
        for workload in AUDIT:
            for side in sides:
                db = str(dbs[side.name])
                report = run_workload(side, workload.name, "--db", db, cwd=scratch)
                if not warming:
                    samples.setdefault(workload.name, {}).setdefault(side.name, []).append(report)
    return samples


# ---------------------------------------------------------------- summary


def median_of(reports: list[dict[str, Any]], key: str = "value") -> float | None:
    """Median of ``key`` over the successful reports, None if there are none."""
    values = [r[key] for r in reports if key in r]
    return statistics.median(values) if values else None


def speedup(workload: Workload, ours: float | None, theirs: float | None) -> float | None:
    """How many times faster ours is (>1 means faster), whichever way the unit runs."""
    if not ours or not theirs:
        return None
    return ours / theirs if workload.higher_is_better else theirs / ours


def summarise(samples: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per workload plus the derived targets."""
    rows: list[dict[str, Any]] = []
    for workload in (*THROUGHPUT, *DURABILITY, *AUDIT):
        per_side = samples.get(workload.name, {})
        if not per_side:
            continue
        ours = median_of(per_side.get("ours", []))
        theirs = median_of(per_side.get("theirs", []))
        ratio = speedup(workload, ours, theirs)
        row: dict[str, Any] = {
            "workload": workload.name,
            "label": workload.label,
            "unit": _unit(per_side),
            "ours": ours,
            "theirs": theirs,
            "speedup": ratio,
            "target": f">= {workload.target:g}x" if workload.target else "",
            "durability": workload.durability,
            "met": None if workload.target is None or ratio is None else ratio >= workload.target,
            "errors": sorted(
                {r["error"] for reports in per_side.values() for r in reports if "error" in r}
            ),
            "skipped": sorted(
                {r["skipped"] for reports in per_side.values() for r in reports if "skipped" in r}
            ),
        }
        digests = {r["digest"] for reports in per_side.values() for r in reports if "digest" in r}
        if len(digests) > 1:
            # a speed-up means nothing if the two packages decided differently
            row["errors"].append(f"the two sides reached different verdicts ({digests})")
        for side in ("ours", "theirs"):
            peak = median_of(per_side.get(side, []), "peak_rss_mb")
            if peak is not None:
                row[f"{side}_peak_rss_mb"] = peak
                row[f"{side}_delta_mb"] = median_of(per_side.get(side, []), "delta_mb")
        rows.append(row)

    by_name = {row["workload"]: row for row in rows}
    floor = by_name.get("bare_commit_full", {}).get("ours")
    seq = by_name.get("run_one_seq", {})
    if floor and seq.get("ours") and seq.get("theirs"):
        # how close each side comes to one flush per action, the floor of the promise
        rows.append(
            {
                "workload": "floor_share",
                "label": "sequential run_one at 'result' as a share of the bare FULL commit",
                "unit": "share",
                "ours": seq["ours"] / floor,
                "theirs": seq["theirs"] / floor,
                "speedup": None,
                "target": "",
                "met": None,
                "durability": "one flush per action",
            }
        )
    if args.sqlite:
        return rows
    # targets that compare two of our own numbers or two rows
    e10, e1000 = by_name["eval_exact_10"]["ours"], by_name["eval_exact_1000"]["ours"]
    if e10 and e1000:
        slowdown = e10 / e1000
        rows.append(
            {
                "workload": "scaling_exact",
                "label": "ours: 1,000 vs 10 exact rules (slowdown)",
                "unit": "x slower",
                "ours": slowdown,
                "theirs": None,
                "speedup": None,
                "target": "<= 1.5x slower",
                "met": slowdown <= 1.5,
            }
        )
    verify = by_name["verify"]
    outcomes = [r.get("outcome") for r in samples.get("verify", {}).get("ours", [])]
    if outcomes and all(isinstance(o, dict) for o in outcomes):
        verify["outcome_ok"] = all(o["ok"] for o in outcomes)
    if verify.get("ours_peak_rss_mb") is not None:
        verify["target"] = "peak RSS < 100 MB"
        verify["met"] = verify["ours_peak_rss_mb"] < 100
    size = "100k" if args.records == 100_000 else f"{args.records:,}"
    for name in ("export", "verify"):
        by_name[name]["label"] += f", {size} records"
    return rows


def _unit(per_side: dict[str, list[dict[str, Any]]]) -> str:
    for reports in per_side.values():
        for report in reports:
            if "unit" in report:
                return str(report["unit"])
    return ""


def _fmt(value: float | None, unit: str, skipped: bool = False) -> str:
    if value is None:
        return "n/a" if skipped else "-"
    if unit == "s":
        return f"{value * 1000:,.0f} ms" if value < 10 else f"{value:,.1f} s"
    if unit == "x slower":
        return f"{value:.2f}x"
    if unit == "share":
        return f"{value:.0%}"
    return f"{value:,.0f}/s"


def _ratio(ratio: float | None) -> str:
    if ratio is None:
        return "-"
    return f"{ratio:,.1f}x faster" if ratio >= 1 else f"{1 / ratio:,.1f}x slower"


def _memory(row: dict[str, Any], side: str) -> str:
    peak = row.get(f"{side}_peak_rss_mb")
    return "" if peak is None else f" ({peak:.0f} MB)"


def table(rows: list[dict[str, Any]], markdown: bool) -> str:
    """The summary table, as plain text or Markdown."""
    head = [
        "workload",
        "durability",
        "ours (median)",
        "theirs (median)",
        "ours vs theirs",
        "target",
        "met?",
    ]
    body = []
    for row in rows:
        ratio = row["speedup"]
        met = {True: "yes", False: "NO", None: ""}[row["met"]]
        if row.get("errors"):
            met = "ERROR"
        elif row.get("outcome_ok") is False:
            met = "NOT OK"
        skipped = bool(row.get("skipped"))
        body.append(
            [
                row["label"],
                row.get("durability", ""),
                _fmt(row["ours"], row["unit"], skipped) + _memory(row, "ours"),
                _fmt(row["theirs"], row["unit"], skipped) + _memory(row, "theirs"),
                _ratio(ratio),
                row["target"],
                met,
            ]
        )
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(head, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) for cells in body]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


# ---------------------------------------------------------------- profile


def profile(scratch: Path) -> None:
    """Print cProfile's top entries for our run_one and evaluate workloads."""
    for workload in ("run_one_seq", "eval_exact_1000", "eval_cond_100"):
        print(f"\n=== cProfile: ours, {workload} (sorted by own time) ===", flush=True)
        subprocess.run(
            [str(OURS.python), str(WORKLOADS), workload, "--profile"], cwd=scratch, check=False
        )


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """Set up both venvs, run the workloads, print the table, save the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per side (5)")
    parser.add_argument("--warmup", type=int, default=None, help="discarded rounds (1; 0 quick)")
    parser.add_argument("--quick", action="store_true", help="small workloads, one round")
    parser.add_argument("--records", type=int, default=None, help="audit log size (100,000)")
    parser.add_argument("--only", choices=["ours", "theirs"], help="run one side only")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--profile", action="store_true", help="profile our side and exit")
    parser.add_argument(
        "--sqlite", action="store_true", help="only the durability rows: run_one and bare commits"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = 1 if "--rounds" not in (argv or sys.argv) else args.rounds
        args.warmup = 0 if args.warmup is None else args.warmup
        args.records = 10_000 if args.records is None else args.records
    args.warmup = 1 if args.warmup is None else args.warmup
    args.records = 100_000 if args.records is None else args.records

    versions = {side.name: ensure_venv(side) for side in SIDES}
    sides = [side for side in SIDES if args.only in (None, side.name)]
    # until our modules have landed, measure theirs alone (a dry run)
    missing = [m for m in ("aegis.core.policy", "aegis.runtime.engine") if not importable(OURS, m)]
    if missing and OURS in sides:
        print(f"ours: {', '.join(missing)} not importable yet; theirs only", file=sys.stderr)
        sides.remove(OURS)

    with tempfile.TemporaryDirectory(prefix="aegis-bench-") as tmp:
        scratch = Path(tmp)
        if args.profile:
            profile(scratch)
            return 0
        started = time.perf_counter()
        busy: list[dict[str, Any]] = []
        samples = collect(args, sides, scratch, busy)
        elapsed = time.perf_counter() - started

    rows = summarise(samples, args)
    print()
    print(table(rows, args.markdown))
    for row in rows:
        for error in row.get("errors", []):
            print(f"{row['workload']}: {error}")
    sizes = " (quick: 1/10 of the evaluations, 1/5 of the run_one calls)" if args.quick else ""
    print(f"\n{args.rounds} round(s) per side after {args.warmup} warm-up{sizes}; {elapsed:.0f} s")
    print("memory: peak RSS of a fresh process (ru_maxrss), interpreter included")
    if args.sqlite:
        rows += print_flushes(sides)
    print(describe_contention(busy))
    RESULTS.write_text(
        json.dumps(
            {
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": machine(),
                "versions": versions,
                "settings": {
                    "rounds": args.rounds,
                    "warmup": args.warmup,
                    "quick": args.quick,
                    "records": args.records,
                    "sides": [side.name for side in sides],
                },
                "summary": rows,
                "contention": busy,
                "samples": samples,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"results written to {RESULTS.relative_to(REPO)}")
    failed = any(row.get("errors") for row in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
