"""A password in ``--db`` on the command line: long-running commands refuse it, others warn.

A process's arguments are readable by every local user (``ps``,
``/proc/PID/cmdline``) for as long as it runs; the password of a
long-running command (``aegis mcp-proxy``, ``aegis serve``, ``aegis audit
tail -f``) would stay there for hours. Real ``aegis`` processes; the DSNs
name a closed port, so nothing here needs a database.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from local_postgres import free_port

ROOT = Path(__file__).resolve().parents[2]
FILES_SERVER = ROOT / "tests" / "mcp" / "files_server.py"
PASSWORD = "s3cr3t-Pw"
#: a DSN with a password in each form, on a port where nothing listens
WITH_PASSWORD = {
    "url": f"postgresql://aegis:{PASSWORD}@127.0.0.1:1/agents",
    "query": f"postgresql://aegis@127.0.0.1:1/agents?password={PASSWORD}",
    "libpq": f"host=127.0.0.1 port=1 dbname=agents user=aegis password={PASSWORD}",
}
WITHOUT_PASSWORD = "postgresql://aegis@127.0.0.1:1/agents"


def aegis(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m aegis ARGS`` to its end, with no ambient store or password but ``env``."""
    base = {k: v for k, v in os.environ.items() if k not in ("PGPASSWORD", "AEGIS_DB")}
    base["PGPASSFILE"] = "/nonexistent/pgpass"
    return subprocess.run(
        [sys.executable, "-m", "aegis", *args],
        input="",
        capture_output=True,
        text=True,
        env={**base, **env},
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def proxy_args(db: list[str], tmp_path: Path) -> list[str]:
    """``mcp-proxy`` before the files server, logging the calls it gets in ``calls.jsonl``."""
    policy = tmp_path / "policy.yaml"
    policy.write_text('version: "1"\ndefaults: {risk_level: low, approval: auto}\nrules: []\n')
    return [
        "mcp-proxy", "--policy", str(policy), *db, "--name", "files", "--",
        sys.executable, str(FILES_SERVER), "--log", str(tmp_path / "calls.jsonl"),
    ]  # fmt: skip


def assert_refused(done: subprocess.CompletedProcess[str]) -> None:
    """A usage error pointing to AEGIS_DB, PGPASSWORD and a passfile; the password never shown."""
    assert done.returncode == 2, done.stderr
    for way in ("AEGIS_DB", "PGPASSWORD", "passfile"):
        assert way in done.stderr
    assert PASSWORD not in done.stdout + done.stderr


@pytest.mark.parametrize("form", sorted(WITH_PASSWORD))
def test_mcp_proxy_refuses_a_password_in_db_on_the_command_line(form: str, tmp_path: Path) -> None:
    """The proxy exits with a usage error before it starts the server."""
    done = aegis(*proxy_args(["--db", WITH_PASSWORD[form]], tmp_path))
    assert_refused(done)
    assert not (tmp_path / "calls.jsonl").exists()


def test_serve_and_tail_follow_refuse_a_password_in_db_on_the_command_line() -> None:
    """``aegis serve`` and ``aegis audit tail -f`` run for hours: refused too."""
    url = WITH_PASSWORD["url"]
    assert_refused(aegis("serve", "--db", url, "--port", str(free_port())))
    assert_refused(aegis("audit", "tail", "-f", "--db", url, "--timeout", "1"))


def test_the_same_dsn_from_aegis_db_or_without_a_password_is_taken(tmp_path: Path) -> None:
    """From AEGIS_DB, or without a password, the proxy goes on to the database (closed here)."""
    for done in (
        aegis(*proxy_args([], tmp_path), AEGIS_DB=WITH_PASSWORD["url"]),
        aegis(*proxy_args(["--db", WITHOUT_PASSWORD], tmp_path)),
    ):
        assert done.returncode == 1, done.stderr  # the closed port, not the command line
        assert "127.0.0.1:1" in done.stderr
        assert PASSWORD not in done.stdout + done.stderr


def test_a_short_lived_command_warns_and_goes_on() -> None:
    """``aegis audit verify --db`` with a password warns on stderr, then reads (a closed port)."""
    done = aegis("audit", "verify", "--db", WITH_PASSWORD["url"])
    assert done.returncode == 1, done.stderr
    warning, *rest = done.stderr.strip().splitlines()
    assert warning.startswith("warning:")
    assert "AEGIS_DB" in warning
    assert "127.0.0.1:1" in "\n".join(rest)
    assert PASSWORD not in done.stdout + done.stderr
    quiet = aegis("audit", "verify", "--db", WITHOUT_PASSWORD)
    assert quiet.returncode == 1
    assert "warning:" not in quiet.stderr
