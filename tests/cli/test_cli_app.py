"""The ``aegis`` group itself: help, version, exit codes, ``python -m aegis``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import click
import pytest
from cli_support import run_as_reader
from click.testing import Result

from aegis.cli import cli

Invoke = Callable[..., Result]

COMMANDS = [
    ("init",),
    ("validate",),
    ("schema",),
    ("simulate",),
    ("replay",),
    ("demo",),
    ("audit",),
    ("audit", "list"),
    ("audit", "show"),
    ("audit", "export"),
    ("audit", "verify"),
    ("audit", "stats"),
    ("audit", "tail"),
]


def test_version_names_the_installed_package(invoke: Invoke) -> None:
    """--version prints the version of the installed distribution."""
    result = invoke("--version")
    assert result.exit_code == 0
    assert version("aegis-runtime") in result.stdout


def test_help_documents_exit_codes(invoke: Invoke) -> None:
    """The top-level help lists every command and what each exit status means."""
    result = invoke("--help")
    assert result.exit_code == 0
    for name in ("init", "validate", "schema", "simulate", "replay", "audit", "demo"):
        assert name in result.stdout
    for line in ("0  success", "1  a check failed", "2  usage error"):
        assert line in result.stdout


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help_with_an_example(invoke: Invoke, command: tuple[str, ...]) -> None:
    """Each command's --help works and shows at least one example invocation."""
    result = invoke(*command, "--help")
    assert result.exit_code == 0
    assert "Example" in result.stdout
    assert "aegis " in result.stdout


def _every_command(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    ctx = click.Context(group)
    found: list[tuple[str, ...]] = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        found.append((*path, name))
        if isinstance(command, click.Group):
            found += _every_command(command, (*path, name))
    return found


def test_format_help_names_only_the_formats_the_command_has(invoke: Invoke) -> None:
    """--format's help speaks of the machine formats of its own command, and no others."""
    checked = 0
    for command in _every_command(cli):
        result = invoke(*command, "--help")
        assert result.exit_code == 0, command
        text = " ".join(result.stdout.split())
        listed = re.search(r"--format \[([a-z|]+)\] Output format; (.*?) writes? nothing", text)
        if listed is None:
            assert "--format [" not in text, command
            continue
        choices = set(listed[1].split("|"))
        named = set(listed[2].split(" and "))
        assert named == choices - {"table", "text"}, command
        checked += 1
    assert checked >= 10


def test_main_exits_with_the_command_status(capsys: pytest.CaptureFixture[str]) -> None:
    """main(argv), the console script, exits with the command's status."""
    from aegis.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "/nonexistent/policy.yaml"])
    assert exit_info.value.code == 1
    assert "/nonexistent/policy.yaml" in capsys.readouterr().err


def test_unknown_command_is_a_usage_error(invoke: Invoke) -> None:
    """An unknown command exits 2 with Click's hint to try --help."""
    result = invoke("valdiate")
    assert result.exit_code == 2
    assert "Try 'aegis --help'" in result.stderr
    assert "Did you mean 'validate'?" in result.stderr


def test_every_lazy_command_resolves() -> None:
    """Every command the group advertises can be loaded."""
    import click

    ctx = click.Context(cli)
    for name in cli.list_commands(ctx):
        assert isinstance(cli.get_command(ctx, name), click.Command)


def test_python_dash_m_runs_the_cli_in_a_real_process(tmp_path: Path) -> None:
    """`python -m aegis init` then `validate` work in a subprocess, without colour codes."""
    env = {**os.environ, "NO_COLOR": "1"}
    init = subprocess.run(
        [sys.executable, "-m", "aegis", "init", "-o", "p.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert init.returncode == 0, init.stderr
    checked = subprocess.run(
        [sys.executable, "-m", "aegis", "validate", "p.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    assert "reads\tread*:*" in checked.stdout
    assert "\x1b[" not in checked.stdout + checked.stderr


def test_subprocess_reports_a_user_error_without_traceback(tmp_path: Path) -> None:
    """A missing database in a real process is one line on stderr and exit 1."""
    proc = subprocess.run(
        [sys.executable, "-m", "aegis", "audit", "verify", "--db", "nope.db"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "Error: no audit database at nope.db; run `aegis demo` to create one,"
        " or point --db (or $AEGIS_DB) at your agent's database"
    ]
    assert not (tmp_path / "nope.db").exists()


#: user mistakes, each of which must end in one "Error: ..." line and status 1 or 2
MISTAKES = [
    pytest.param(["simulate", "{dir}", "read:x"], 2, "is a directory", id="simulate-dir-policy"),
    pytest.param(["replay", "{dir}", "--db", "{db}"], 2, "is a directory", id="replay-dir-policy"),
    pytest.param(["validate", "{dir}"], 1, "is a directory", id="validate-dir-policy"),
    pytest.param(["validate", "{binary}"], 1, "not UTF-8", id="validate-binary-policy"),
    pytest.param(
        ["simulate", "{policy}", "--actions", "{binary}"], 2, "not UTF-8", id="binary-actions"
    ),
    pytest.param(["simulate", "{policy}", "--actions", "{dir}"], 2, "--actions", id="dir-actions"),
    pytest.param(
        ["simulate", "{policy}", "read:x", "--at", "garbage"], 2, "not an ISO 8601", id="bad-at"
    ),
    pytest.param(
        ["simulate", "{policy}", "read:x", "--at", "0001-01-01T00:00+05:00"],
        2,
        "out of range",
        id="at-out-of-range",
    ),
    pytest.param(
        ["audit", "list", "--db", "{db}", "--since", "9999-12-31T23:59-05:00"],
        2,
        "out of range",
        id="since-out-of-range",
    ),
    pytest.param(["audit", "list", "--db", "{policy}"], 1, "{policy}", id="db-not-sqlite"),
    pytest.param(["audit", "list", "--db", "{dir}"], 2, "is a directory", id="db-is-dir"),
    pytest.param(
        ["audit", "show", str(2**63), "--db", "{db}"], 2, "not in the range", id="show-huge-id"
    ),
    pytest.param(
        ["audit", "tail", "-f", "--interval", "1e308", "--db", "{db}"],
        2,
        "not in the range",
        id="tail-huge-interval",
    ),
]


@pytest.mark.parametrize(("args", "exit_code", "message"), MISTAKES)
def test_user_mistakes_are_one_line_not_a_traceback(  # noqa: PLR0917  # pytest passes by name
    invoke: Invoke,
    tmp_path: Path,
    policy_path: Path,
    audit_db: Path,
    args: list[str],
    exit_code: int,
    message: str,
) -> None:
    """A user mistake exits 1 or 2 with an Error: line naming the problem, never a traceback."""
    binary = tmp_path / "binary.bin"
    binary.write_bytes(b"\xff\xfe\x00\x81 not text")
    names = {"dir": str(tmp_path), "binary": str(binary), "policy": str(policy_path)}
    names["db"] = str(audit_db)
    result = invoke(*(arg.format(**names) for arg in args))
    assert result.exit_code == exit_code
    assert message.format(**names) in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("output_format", ["table", "json", "jsonl"])
def test_a_trail_that_cannot_be_read_prints_nothing_but_the_error(
    invoke: Invoke, policy_path: Path, output_format: str
) -> None:
    """audit list on a file that is no database: no header or '[' on stdout, one Error line."""
    result = invoke("audit", "list", "--db", str(policy_path), "--format", output_format)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith("Error: ")
    assert str(policy_path) in result.stderr


def test_unreadable_policy_is_one_line(policy_path: Path) -> None:
    """A policy file without read permission is a usage error naming it (root: run as nobody)."""
    import shutil
    import tempfile

    import aegis.cli._simulate  # noqa: F401  # loaded before a child drops its rights

    folder = Path(tempfile.mkdtemp(prefix="aegis-unreadable-"))
    folder.chmod(0o755)  # any user may enter; pytest's own folders are root's alone
    try:
        unreadable = folder / "policy.yaml"
        shutil.copyfile(policy_path, unreadable)
        unreadable.chmod(0)
        code, output = run_as_reader(["simulate", str(unreadable), "read:x"])
    finally:
        shutil.rmtree(folder)
    assert code == 2  # refused as a usage error, before anything is read
    assert str(unreadable) in output
    assert "Traceback" not in output


def test_the_entry_also_imports_as_aegis_cli_main() -> None:
    """aegis.cli.main imports as a module with main and cli, and stays callable either way."""
    script = (
        "import aegis.cli.main as m\n"
        "from aegis.cli import main\n"
        "from aegis.cli.main import cli\n"
        "assert m.cli is cli and callable(main)\n"
        "main(['--version'])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "aegis, version" in done.stdout
    done = subprocess.run(
        [sys.executable, "-m", "aegis.cli.main", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "aegis, version" in done.stdout
