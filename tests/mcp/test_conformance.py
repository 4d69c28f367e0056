"""The MCP conformance suite (npm, pinned) against real servers, directly and behind the proxy.

The suite's server scenarios run twice against the same server program:
once straight at its Streamable HTTP endpoint, once through ``aegis
mcp-proxy --listen`` with a policy that lets the suite's tools through.
The two runs go side by side, each against a server process of its own
(most of a run is waiting, and a run takes minutes on a loaded machine). The proxy must
not cost a scenario: every scenario that passes directly passes behind it.
Scenarios that fail directly fail because the server lacks what they ask
for (server-everything offers none of the suite's own test tools), so they
say nothing about the proxy; the direct pass count is asserted too, so the
comparison cannot hold vacuously.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mcp_support import HERE, Files, NpmPackages, background, free_port

#: the policy behind the proxy: the suite's own tools run, anything else is blocked
POLICY = """\
version: "1"
defaults:
  risk_level: medium
  approval: block
rules:
  - name: conformance-tools
    match: {type: "test_*"}
    risk_level: low
    approval: auto
"""

#: a scenario's results folder: server-<scenario>-<timestamp>
_FOLDER = re.compile(r"^server-(?P<scenario>.+)-\d{4}-\d\d-\d\dT[0-9-]+Z$")


def run_suite(
    npm: NpmPackages, url: str, out: Path, only: tuple[str, ...] = ()
) -> dict[str, list[dict[str, Any]]]:
    """Every server scenario (active and pending), or ``only`` these, against ``url``."""
    command = [npm.node, str(npm.conformance), "server", "--url", url, "--output-dir", str(out)]
    runs = [[*command, "--scenario", scenario] for scenario in only] or [
        [*command, "--suite", "all"]
    ]

    def one(run: list[str]) -> str:
        done = subprocess.run(
            run, capture_output=True, text=True, timeout=600, check=False, cwd=out.parent
        )
        return done.stdout[-1000:] + done.stderr[-1000:]

    # single scenarios three at a time: each mostly waits for its node and its server to start
    with ThreadPoolExecutor(3) as pool:
        said = "".join(pool.map(one, runs))
    # The suite exits 1 when any scenario fails; its results folders say which.
    results: dict[str, list[dict[str, Any]]] = {}
    for folder in sorted(out.iterdir()) if out.exists() else []:
        match = _FOLDER.match(folder.name)
        assert match is not None, f"unexpected results folder {folder.name}"
        results[match["scenario"]] = json.loads((folder / "checks.json").read_text())
    assert results, f"the suite wrote no results: {said}"
    return results


def side_by_side(
    first: Callable[[], dict[str, Any]], second: Callable[[], dict[str, Any]]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two suite runs at once (each mostly waits on its server); both their results."""
    with ThreadPoolExecutor(2) as pool:
        one, two = pool.submit(first), pool.submit(second)
        return one.result(), two.result()


def passing(results: dict[str, list[dict[str, Any]]]) -> set[str]:
    """The scenarios with a successful check and no failed one."""
    return {
        scenario
        for scenario, checks in results.items()
        if any(c["status"] == "SUCCESS" for c in checks)
        and not any(c["status"] == "FAILURE" for c in checks)
    }


def failures(results: dict[str, list[dict[str, Any]]], scenario: str) -> str:
    """What failed in ``scenario``, for a failure message."""
    return "; ".join(
        f"{c['id']}: {c.get('errorMessage', '')}"
        for c in results.get(scenario, [])
        if c["status"] == "FAILURE"
    )


def scenarios(npm: NpmPackages) -> set[str]:
    """The server scenarios the pinned suite has, from its own ``list``."""
    done = subprocess.run(
        [npm.node, str(npm.conformance), "list", "--server"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return set(re.findall(r"^\s*- (\S+)", done.stdout, flags=re.M))


def compare(
    npm: NpmPackages, direct: dict[str, Any], proxied: dict[str, Any], at_least: int
) -> None:
    """Both runs covered the whole suite, and the proxy lost no scenario."""
    expected = scenarios(npm)
    assert len(expected) >= 30
    assert set(direct) == expected
    assert set(proxied) == expected
    assert len(passing(direct)) >= at_least, sorted(passing(direct))
    print(
        f"conformance: {len(passing(direct))} of {len(expected)} scenarios pass directly,"
        f" {len(passing(proxied))} behind the proxy;"
        f" behind the proxy only: {sorted(passing(proxied) - passing(direct))}"
    )
    lost = sorted(passing(direct) - passing(proxied))
    assert not lost, "pass directly, fail behind the proxy: " + " | ".join(
        f"{scenario} ({failures(proxied, scenario)})" for scenario in lost
    )


@contextmanager
def proxy(files: Files, *upstream: str) -> Iterator[str]:
    """``aegis mcp-proxy --listen`` in front of ``upstream``; yields its URL."""
    port = free_port()
    command = files.proxy("--listen", f"127.0.0.1:{port}")
    command = command[: command.index("--listen") + 2] + list(upstream)
    url = f"http://127.0.0.1:{port}/mcp"
    with background(command, files.stderr, url):
        yield url


def test_server_everything_passes_behind_the_proxy_as_it_does_directly(
    npm_packages: NpmPackages, tmp_path: Path
) -> None:
    """The reference server over HTTP, then over stdio behind ``--listen``: nothing lost."""
    npm = npm_packages
    files = Files(tmp_path, POLICY)
    port = free_port()
    server = ["env", f"PORT={port}", npm.node, str(npm.everything), "streamableHttp"]
    direct_url = f"http://127.0.0.1:{port}/mcp"
    with (
        background(server, tmp_path / "server.log", direct_url),
        proxy(files, "--", npm.node, str(npm.everything), "stdio") as url,
    ):
        direct, proxied = side_by_side(
            lambda: run_suite(npm, direct_url, tmp_path / "direct"),
            lambda: run_suite(npm, url, tmp_path / "proxied"),
        )
    compare(npm, direct, proxied, at_least=10)
    # The suite's tool calls were decided and recorded, whatever the server made of them.
    records = files.records()
    assert {"test_simple_text", "test_error_handling", "test_sampling"} <= {
        r["action_type"] for r in records
    }
    assert {r["matched_rule"] for r in records} == {"conformance-tools"}


def test_a_server_offering_every_scenario_passes_them_behind_the_proxy(
    npm_packages: NpmPackages, tmp_path: Path
) -> None:
    """conformance_server.py, directly and behind ``--listen --upstream-url``: both pass.

    Two instances of it, one for each run: the runs go side by side.

    The server offers the suite's own tools, resources and prompts, so nearly
    every scenario passes directly, and must behind the proxy, which records
    each of the suite's tool calls with its outcome.
    """
    npm = npm_packages
    files = Files(tmp_path, POLICY)
    ports = free_port(), free_port()
    direct_url, upstream_url = (f"http://127.0.0.1:{port}/mcp" for port in ports)
    server = [sys.executable, str(HERE / "conformance_server.py"), "--http"]
    with (
        background([*server, str(ports[0])], tmp_path / "server.log", direct_url),
        background([*server, str(ports[1])], tmp_path / "upstream.log", upstream_url),
        proxy(files, "--upstream-url", upstream_url) as url,
    ):
        direct, proxied = side_by_side(
            lambda: run_suite(npm, direct_url, tmp_path / "direct"),
            lambda: run_suite(npm, url, tmp_path / "proxied"),
        )
    compare(npm, direct, proxied, at_least=30)
    # Each tool call of the suite was decided by the rule and recorded once, with its outcome.
    outcomes = {r["action_type"]: r["result_status"] for r in files.records()}
    assert len(outcomes) == len(files.records())
    assert {r["matched_rule"] for r in files.records()} == {"conformance-tools"}
    called = {
        "test_simple_text", "test_image_content", "test_audio_content", "test_embedded_resource",
        "test_multiple_content_types", "test_tool_with_logging", "test_tool_with_progress",
        "test_sampling", "test_elicitation", "test_elicitation_sep1034_defaults",
        "test_elicitation_sep1330_enums", "test_reconnection",
    }  # fmt: skip
    assert outcomes == {**dict.fromkeys(called, "success"), "test_error_handling": "failed"}


#: the scenarios where the server speaks first mid-call: requests to the client, notifications
TALKING_BACK = (
    "tools-call-sampling",
    "tools-call-elicitation",
    "elicitation-sep1034-defaults",
    "elicitation-sep1330-enums",
    "tools-call-with-logging",
    "tools-call-with-progress",
)


def test_a_stdio_server_talks_back_through_the_proxy(
    npm_packages: NpmPackages, tmp_path: Path
) -> None:
    """conformance_server.py over stdio behind ``--listen``: sampling, elicitation, logs, progress.

    The suite speaks HTTP only, so these pass outright rather than against a
    direct run; they pass directly over HTTP in the test above. (Only the
    scenarios the stdio leg adds anything to, since every session starts a server.)
    """
    files = Files(tmp_path, POLICY)
    server = ["--", sys.executable, str(HERE / "conformance_server.py")]
    with proxy(files, *server) as url:
        proxied = run_suite(npm_packages, url, tmp_path / "proxied", only=TALKING_BACK)
    assert set(proxied) == set(TALKING_BACK)
    failed = sorted(set(TALKING_BACK) - passing(proxied))
    assert not failed, " | ".join(f"{s} ({failures(proxied, s)})" for s in failed)
    outcomes = [(r["action_type"], r["result_status"]) for r in files.records()]
    assert sorted(outcomes) == sorted(
        (tool, "success")
        for tool in (
            "test_sampling", "test_elicitation", "test_elicitation_sep1034_defaults",
            "test_elicitation_sep1330_enums", "test_tool_with_logging", "test_tool_with_progress",
        )
    )  # fmt: skip
