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

Needs the ``mcp`` extra (the test server is built on the SDK).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
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


def _session(command: list[str], calls: int, tool: str, env: dict[str, str]) -> list[float]:
    """Round-trip times (seconds) of ``calls`` sequential calls of ``tool``."""
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO, env=env
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
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:7.3f} ms"


def main() -> None:
    """Run the rounds and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
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
