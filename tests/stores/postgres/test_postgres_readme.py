"""The README's PostgreSQL section runs as written, against the test server."""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path

import psycopg
from pg_support import POSTGRES_DSN

from aegis import Action, Policy

README = (Path(__file__).resolve().parents[3] / "README.md").read_text(encoding="utf-8")


def test_the_postgresql_example_records_to_the_server() -> None:
    """The section's Python example, pointed at the test server, records a governed action."""
    section = README.split("## PostgreSQL", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert code is not None
    schema = f"aegis_readme_{uuid.uuid4().hex[:8]}"
    text = re.sub(r'"postgresql://[^"]+"', repr(POSTGRES_DSN), code.group(1))
    text = text.replace('schema="aegis"', f"schema={schema!r}")
    policy = Policy.from_dict({"version": "1", "defaults": {"approval": "auto"}, "rules": []})
    namespace: dict[str, object] = {"crm": lambda action: "done", "policy": policy}
    try:
        exec(compile(text, "README.md", "exec"), namespace)
        runtime = namespace["runtime"]

        async def go() -> None:
            async with runtime:  # type: ignore[attr-defined]
                result = await runtime.run_one(Action("read", "crm"))  # type: ignore[attr-defined]
                assert result.ok

        asyncio.run(go())
        with psycopg.connect(POSTGRES_DSN) as conn:
            rows = conn.execute(f'SELECT count(*) FROM "{schema}".aegis_audit_log').fetchone()
        assert rows is not None
        assert rows[0] >= 1
    finally:
        with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_the_verify_command_reads_the_named_schema() -> None:
    """The section's `aegis audit verify --db DSN --schema NAME` reads the trail in that schema."""
    from click.testing import CliRunner

    from aegis import AuditLogger
    from aegis.cli import cli

    section = README.split("## PostgreSQL", 1)[1].split("\n## ", 1)[0]
    shell = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert shell is not None
    line = next(x for x in shell.group(1).splitlines() if x.startswith("aegis audit verify"))
    schema = f"aegis_readme_{uuid.uuid4().hex[:8]}"
    args = re.sub(r"postgresql://\S+", POSTGRES_DSN, line).split()[1:]
    args[args.index("--schema") + 1] = schema
    try:
        with AuditLogger(POSTGRES_DSN, schema=schema) as audit:
            audit.check()
        result = CliRunner().invoke(cli, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
    finally:
        with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
