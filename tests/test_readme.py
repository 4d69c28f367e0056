"""The README's examples run as written."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_quick_start_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Python quick start prints a successful result and writes the audit database."""
    quick_start = README.split("## Quick start", 1)[1]
    code = re.findall(r"```python\n(.*?)```", quick_start, flags=re.S)[0]
    (tmp_path / "examples").mkdir()
    shutil.copy(ROOT / "examples" / "policy.yaml", tmp_path / "examples" / "policy.yaml")
    monkeypatch.chdir(tmp_path)
    script = tmp_path / "quick.py"
    script.write_text(code, encoding="utf-8")
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert out.startswith("success ")
    assert (tmp_path / "aegis_audit.db").exists()


def test_the_readme_gives_the_ci_test_command() -> None:
    """The test command CI runs is the README's, word for word."""
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1]
    assert f"```sh\n{ci}\n```" in README


def test_the_signed_checkpoints_commands_run(tmp_path: Path) -> None:
    """The signed checkpoints section's commands run as written and verify the signed trail."""
    section = README.split("## Signed checkpoints", 1)[1]
    block = re.findall(r"```sh\n(.*?)```", section, flags=re.S)[0]
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    aegis = f"{sys.executable} -m aegis"
    script = "set -e\n" + block.replace("aegis audit", f"{aegis} audit").replace(
        "python examples", f"{sys.executable} examples"
    )
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "1 signed checkpoint valid" in done.stdout + done.stderr
    assert re.search(r"^\d+:[0-9a-f]{64}$", done.stdout, flags=re.M)


def test_the_limits_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The limits section's policy and script block the 21st email with a reason."""
    section = README.split("## Limits, budgets and flow rules", 1)[1].split("\n## ", 1)[0]
    policy = re.findall(r"```yaml\n(.*?)```", section, flags=re.S)[0]
    code = re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]
    (tmp_path / "limits.yaml").write_text(policy, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    script = tmp_path / "limits.py"
    script.write_text(code, encoding="utf-8")
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert out.strip() == (
        "blocked blocked by policy rule 'email_rate': limit of rule 'email_rate' exceeded:"
        " 20 of 20 actions already in the last 1h per agent"
    )


def test_the_first_command_runs_on_a_stock_debian(tmp_path: Path) -> None:
    """'On a fresh machine' runs as written where only Debian's python3 is on PATH.

    Debian has no ``python`` command and refuses ``pip install`` outside a
    virtual environment (EXTERNALLY-MANAGED): the line makes the venv first,
    then installs the sources (a copy of them) and runs the demo. Installs
    from the package index (or pip's cache), as a new user's machine would.
    """
    section = README.split("## On a fresh machine", 1)[1]
    line = re.findall(r"```sh\n(.*?)```", section, flags=re.S)[0].strip()
    assert line.startswith("python3 -m venv "), line
    source = tmp_path / "aegis-src"
    source.mkdir()
    shutil.copy(ROOT / "pyproject.toml", source)
    shutil.copy(ROOT / "README.md", source)
    shutil.copytree(ROOT / "aegis", source / "aegis", ignore=shutil.ignore_patterns("__pycache__"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    debian = Path("/usr/bin/python3")
    (bin_dir / "python3").symlink_to(debian if debian.exists() else Path(sys._base_executable))
    path = f"{bin_dir}:/usr/bin:/bin"
    assert shutil.which("python", path=path) is None  # as on a stock Debian
    done = subprocess.run(
        ["bash", "-c", line],
        cwd=source,
        env={"PATH": path, "HOME": str(Path.home()), "LANG": "C.UTF-8"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Audit chain intact" in done.stdout
    assert (source / ".venv" / "bin" / "aegis").exists()
