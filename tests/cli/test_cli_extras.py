"""A command missing what it needs (an extra, a token) says, in one line, what to give it.

Each case runs ``aegis`` in a fresh interpreter where the extra's packages
cannot be imported (``sys.modules[name] = None``), as on a machine that
installed only the core.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

POLICY = 'version: "1"\nrules:\n  - name: reads\n    match: {type: "read*"}\n    approval: auto\n'


def _aegis_without(
    packages: list[str], args: list[str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    code = (
        "import sys\n"
        f"for name in {packages!r}:\n"
        "    sys.modules[name] = None\n"
        "from aegis.cli import main\n"
        f"sys.argv = ['aegis', *{args!r}]\n"
        "main()\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        input="",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("packages", "args", "says"),
    [
        (
            ["uvicorn"],
            ["serve", "--db", "aegis_audit.db"],
            ("aegis serve needs the server extra (uvicorn is not installed)", "server"),
        ),
        (
            ["authlib", "joserfc"],
            ["serve", "--oidc-issuer", "https://id.example.com", "--oidc-client-id", "inbox"],
            ("aegis serve needs the oidc extra (authlib is not installed)", "oidc"),
        ),
        (
            ["mcp"],
            ["mcp-proxy", "--policy", "policy.yaml", "--listen", "127.0.0.1:1", "--", "true"],
            ("--listen needs the mcp extra (mcp is not installed)", "mcp"),
        ),
        (
            # The mcp extra brings prometheus_client too: not the server extra.
            ["prometheus_client"],
            ["mcp-proxy", "--policy", "policy.yaml", "--listen", "127.0.0.1:1", "--", "true"],
            ("--listen needs the mcp extra (prometheus_client is not installed)", "mcp"),
        ),
        (
            ["httpx"],
            [
                "mcp-proxy",
                "--policy",
                "policy.yaml",
                "--approval-url",
                "http://127.0.0.1:1",
                "--",
                "true",
            ],
            ("--approval-url needs the approval client of the server extra", "server"),
        ),
    ],
    ids=[
        "serve",
        "serve-oidc",
        "mcp-proxy-listen",
        "mcp-proxy-listen-metrics",
        "mcp-proxy-approval-url",
    ],
)
def test_a_missing_extra_is_one_line_naming_it(
    tmp_path: Path, packages: list[str], args: list[str], says: tuple[str, str]
) -> None:
    """No traceback: one line, the extra and the pip command (once), and nothing started."""
    (tmp_path / "policy.yaml").write_text(POLICY, encoding="utf-8")
    done = _aegis_without(packages, args, tmp_path)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("Error: "), lines[0]
    phrase, extra = says
    assert phrase in lines[0]
    assert lines[0].endswith(f': pip install "aegis-runtime[{extra}]"')
    assert lines[0].count("aegis-runtime[") == 1
    assert done.stdout == ""
    assert not (tmp_path / "aegis_audit.db").exists()


def test_an_unrelated_import_error_is_not_blamed_on_an_extra(tmp_path: Path) -> None:
    """A module no extra brings is left as it is: the message never invents an extra."""
    done = _aegis_without(["aegis.cli._serve"], ["serve"], tmp_path)
    assert done.returncode != 0
    assert "aegis-runtime[" not in done.stderr
    assert "aegis.cli._serve" in done.stderr


def test_approval_url_without_a_token_says_how_to_give_one(tmp_path: Path) -> None:
    """mcp-proxy --approval-url with no token names the command's own ways to give it."""
    (tmp_path / "policy.yaml").write_text(POLICY, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "AEGIS_TOKEN"}
    args = ["--policy", "policy.yaml", "--approval-url", "http://127.0.0.1:1", "--", "true"]
    done = _mcp_proxy(args, tmp_path, env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "AEGIS_TOKEN" in lines[0]
    assert "--approval-token-file" in lines[0]
    assert "token=" not in lines[0]  # the Python parameter means nothing here


def test_approval_url_without_its_scheme_shows_the_url_to_write(tmp_path: Path) -> None:
    """mcp-proxy --approval-url localhost:8700 is refused naming the option and the fix."""
    (tmp_path / "policy.yaml").write_text(POLICY, encoding="utf-8")
    args = ["--policy", "policy.yaml", "--approval-url", "localhost:8700", "--", "true"]
    done = _mcp_proxy(args, tmp_path, {**os.environ, "AEGIS_TOKEN": "aegis_x"})
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "--approval-url 'localhost:8700'" in lines[0]
    assert "http://localhost:8700" in lines[0]


def _mcp_proxy(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``aegis mcp-proxy ARGS`` in a process of its own, its input closed."""
    return subprocess.run(
        [sys.executable, "-m", "aegis", "mcp-proxy", *args],
        cwd=cwd,
        env=env,
        input="",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
