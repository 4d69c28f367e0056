"""The latency the governing MCP proxy adds to a tool call.

Times the same sequential ``tools/call`` round trips twice, with the same
raw JSON-RPC client over stdio pipes: once against the test MCP server
itself, once through ``aegis mcp-proxy`` in front of it (policy decision,
durable SQLite audit record with the request id, forwarding both ways).
Rounds alternate (direct, proxied, direct, ...) so machine drift hits both
alike; the difference of the medians is the proxy's cost per call.

Usage::

    python benchmarks/mcp_proxy.py              # 5 rounds of 500 calls
    python benchmarks/mcp_proxy.py --quick      # 2 rounds of 100 calls
    python benchmarks/mcp_proxy.py --calls 2000 --rounds 7
    python benchmarks/mcp_proxy.py --callgrind [--against OTHER_CHECKOUT] [--upstream-http]

``--callgrind`` counts instructions instead of timing (a loaded machine
makes wall clocks noise): the proxy runs under ``valgrind
--tool=callgrind`` (the client and the server do not), once for a short
session and once for a session of ``--calls`` more auto calls; the
difference over the difference in calls is the proxy's instructions per
call, start-up excluded. ``--against`` runs the same against another
checkout's ``aegis`` (``git worktree add /tmp/old COMMIT``) for a
before/after; ``--upstream-http`` puts the server behind
``--upstream-url`` (Streamable HTTP) instead of stdio. ``--reader``
counts the instructions of reading one reply line with the proxy's
strict reader and with plain ``json.loads``.

Needs the ``mcp`` extra (the test server is built on the SDK).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SERVER = REPO / "tests" / "mcp" / "files_server.py"

POLICY = """\
version: "1"
defaults: {approval: block}
rules:
  - {name: reads, match: {type: read}, risk_level: low, approval: auto}
  - {name: no-deletes, match: {type: delete}, risk_level: critical, approval: block}
"""


def _send(pipe: IO[bytes], message: dict[str, Any]) -> None:
    pipe.write(json.dumps(message).encode() + b"\n")
    pipe.flush()


def _receive(pipe: IO[bytes]) -> dict[str, Any]:
    line = pipe.readline()
    if not line:
        raise RuntimeError("the server closed its output")
    reply: dict[str, Any] = json.loads(line)
    return reply


def _session(
    command: list[str],
    calls: int,
    tool: str,
    env: dict[str, str],
    *,
    wait: float = 15,
    cwd: Path = REPO,
) -> list[float]:
    """Round-trip times (seconds) of ``calls`` sequential calls of ``tool``."""
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=cwd, env=env
    )
    if process.stdin is None or process.stdout is None:
        raise RuntimeError("the process has no pipes")
    try:
        _send(
            process.stdin,
            {
                "jsonrpc": "2.0",
                "id": 0,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "bench", "version": "1"},
                },
            },
        )
        _receive(process.stdout)
        _send(process.stdin, {"jsonrpc": "2.0", "method": "notifications/initialized"})
        times: list[float] = []
        arguments = {"path": "/srv/readme.txt"}
        for i in range(1, calls + 1):
            started = time.perf_counter()
            _send(
                process.stdin,
                {
                    "jsonrpc": "2.0",
                    "id": i,
                    "method": "tools/call",
                    "params": {"name": tool, "arguments": arguments},
                },
            )
            reply = _receive(process.stdout)
            times.append(time.perf_counter() - started)
            if "result" not in reply:
                raise RuntimeError(f"call {i} failed: {reply}")
        return times
    finally:
        process.stdin.close()
        try:
            process.wait(wait)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _instructions(command: list[str], calls: int, root: Path, out: Path) -> int:
    """Instructions the proxy (``command``, ``root``'s aegis) executes over ``calls`` auto calls."""
    valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "-q"]
    # `python -m` puts the working directory first on sys.path: run it in
    # the checkout measured, or this one's aegis is what runs.
    env = {**os.environ, "PYTHONPATH": str(root)}
    _session([*valgrind, *command], calls, "read", env, wait=300, cwd=root)
    summary = re.search(r"^summary:\s+(\d+)", out.read_text(), re.MULTILINE)
    if summary is None:
        raise RuntimeError(f"no summary line in {out}")
    return int(summary.group(1))


def _compiled(root: Path) -> None:
    """Byte-compile ``root``'s aegis first: a first run compiling it would count that too."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(root / "aegis")], check=True)


def _callgrind(base: list[str], server: list[str], calls: int, against: str | None) -> None:
    """:func:`_counted` of a proxy in front of ``server``: a stdio command, or a URL."""
    print(f"server: {server[0] if len(server) == 1 else 'stdio'}")
    target = ["--upstream-url", server[0]] if len(server) == 1 else ["--", *server]
    _counted(base, target, calls, against)


def _counted(base: list[str], target: list[str], calls: int, against: str | None) -> None:
    """Print the proxy's instructions per auto call, here and in ``against``."""
    if shutil.which("valgrind") is None:
        raise SystemExit("--callgrind needs valgrind on PATH")
    checkouts = [("this checkout", REPO)]
    if against:
        checkouts.append((against, Path(against).resolve()))
    short = 10
    print(
        f"MCP proxy instructions per auto tools/call (callgrind): "
        f"sessions of {short} and {short + calls} calls"
    )
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        policy = Path(tmp) / "policy.yaml"
        policy.write_text(POLICY, encoding="utf-8")
        for label, root in checkouts:
            where = subprocess.run(
                [sys.executable, "-c", "import aegis; print(aegis.__file__)"],
                cwd=root,
                env={**os.environ, "PYTHONPATH": str(root)},
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            if not where.startswith(str(root)):
                raise SystemExit(f"{label}: the proxy would run {where}, not {root}'s aegis")
            _compiled(root)
            counts = []
            for i, n in enumerate((short, short + calls)):
                db = str(Path(tmp) / f"audit-{len(results)}-{i}.db")
                command = [*base, "--policy", str(policy), "--db", db, *target]
                out = Path(tmp) / f"cg-{len(results)}-{i}"
                counts.append(_instructions(command, n, root, out))
            per_call = (counts[1] - counts[0]) / calls
            results.append(per_call)
            print(f"{label:<40}{per_call:>14,.0f} instructions per call")
    if len(results) == 2:
        print(f"this checkout / {against}: {results[0] / results[1]:.3f}x")
    print(f"load average while measuring: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


#: one typical reply of the test server to a read, as the proxy reads it
_REPLY = {
    "jsonrpc": "2.0",
    "id": 7,
    "result": {
        "content": [{"type": "text", "text": "hello"}],
        "structuredContent": {"path": "/srv/readme.txt", "content": "hello"},
        "isError": False,
    },
}

_READER = """
import json, sys
from aegis.mcp._jsonrpc import read_message
line = sys.argv[3].encode() + b"\\n"
read = read_message if sys.argv[1] == "strict" else json.loads
for _ in range(int(sys.argv[2])):
    read(line)
"""


def _reader(repeat: int) -> None:
    """Print the instructions to read one reply line: the proxy's reader, and json.loads."""
    if shutil.which("valgrind") is None:
        raise SystemExit("--reader needs valgrind on PATH")
    line = json.dumps(_REPLY)
    _compiled(REPO)
    per_line = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("plain", "strict"):
            counts = []
            for n in (0, repeat):
                out = Path(tmp) / f"cg-{kind}-{n}"
                valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "-q"]
                subprocess.run(
                    [*valgrind, sys.executable, "-c", _READER, kind, str(n), line],
                    cwd=REPO,
                    check=True,
                )
                summary = re.search(r"^summary:\s+(\d+)", out.read_text(), re.MULTILINE)
                if summary is None:
                    raise RuntimeError(f"no summary line in {out}")
                counts.append(int(summary.group(1)))
            per_line[kind] = (counts[1] - counts[0]) / repeat
    print(f"instructions to read one {len(line) + 1}-byte reply line (callgrind, {repeat} reads)")
    print(f"{'json.loads':<40}{per_line['plain']:>14,.0f}")
    print(f"{'read_message (the proxy reader)':<40}{per_line['strict']:>14,.0f}")
    print(f"strict / plain: {per_line['strict'] / per_line['plain']:.2f}x")


@contextlib.contextmanager
def _http_server() -> Iterator[str]:
    """The test server over Streamable HTTP on a free loopback port; yields its URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, str(SERVER), "--http", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            with socket.socket() as client:
                if client.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the test server did not start listening")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        process.wait(30)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:7.3f} ms"


def main() -> None:
    """Run the rounds and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--callgrind", action="store_true", help="count instructions")
    parser.add_argument("--against", help="another checkout, for --callgrind")
    parser.add_argument(
        "--reader", action="store_true", help="count the instructions to read one reply line"
    )
    parser.add_argument(
        "--upstream-http",
        action="store_true",
        help="with --callgrind: the server over Streamable HTTP (--upstream-url), not stdio",
    )
    args = parser.parse_args()
    if args.reader:
        _reader(2000)
        return
    if args.callgrind:
        base = [sys.executable, "-m", "aegis", "mcp-proxy", "--name", "files"]
        calls = args.calls if args.calls != 500 else 200
        if not args.upstream_http:
            _callgrind(base, [sys.executable, str(SERVER)], calls, args.against)
            return
        with _http_server() as url:
            _callgrind(base, [url], calls, args.against)
        return
    calls, rounds = (100, 2) if args.quick else (args.calls, args.rounds)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    server = [sys.executable, str(SERVER)]
    with tempfile.TemporaryDirectory() as tmp:
        policy = Path(tmp) / "policy.yaml"
        policy.write_text(POLICY, encoding="utf-8")
        base = [
            sys.executable,
            "-m",
            "aegis",
            "mcp-proxy",
            "--policy",
            str(policy),
            "--name",
            "files",
        ]
        samples: dict[str, list[float]] = {"direct": [], "proxied": [], "blocked": []}
        for round_ in range(rounds):
            db = str(Path(tmp) / f"audit-{round_}.db")
            proxied = [*base, "--db", db, "--", *server]
            samples["direct"] += _session(server, calls, "read", env)
            samples["proxied"] += _session(proxied, calls, "read", env)
            samples["blocked"] += _session(proxied, calls, "delete", env)
    direct = statistics.median(samples["direct"])
    print(f"MCP proxy latency: {rounds} rounds x {calls} sequential tools/call over stdio")
    print(f"{'path':<34}{'p10':>11}{'median':>11}{'p90':>11}{'p99':>11}")
    for name, label in (
        ("direct", "client -> server"),
        ("proxied", "client -> aegis -> server (auto)"),
        ("blocked", "client -> aegis (blocked call)"),
    ):
        values = sorted(samples[name])
        p10 = values[int(len(values) * 0.10)]
        p90 = values[int(len(values) * 0.90)]
        p99 = values[int(len(values) * 0.99)]
        print(f"{label:<34}{_ms(p10)}{_ms(statistics.median(values))}{_ms(p90)}{_ms(p99)}")
    added = statistics.median(samples["proxied"]) - direct
    quiet = _quantile(samples["proxied"], 0.10) - _quantile(samples["direct"], 0.10)
    verdict = "met" if added < 0.001 else "NOT met"
    print(
        f"added by the proxy per auto call: median {_ms(added).strip()} "
        f"(x{statistics.median(samples['proxied']) / direct:.2f} of the server's own time), "
        f"p10 {_ms(quiet).strip()}; target < 1 ms (median): {verdict}"
    )
    print(f"load average while measuring: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[int(len(ordered) * q)]


if __name__ == "__main__":
    main()
