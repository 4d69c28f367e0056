"""Every PostgreSQL entry point against a server that checks passwords (scram-sha-256).

The right password works in each form the README names (in the URL,
percent-encoded; a libpq string; PGPASSWORD; a passfile), and a wrong or
missing one stops the entry point with one error naming the problem and
the database, never the password: not on stdout or stderr, not in an
exception or a log, not in the audit trail.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from local_postgres import Login, free_port
from psycopg import sql

from aegis import Action, AuditLogger, Policy, ResultStatus, Runtime
from aegis.core.limits import Charge
from aegis.errors import ConfigurationError, StoreError
from aegis.stores import open_stores
from aegis.stores.postgres.usage import PostgresUsageStore

ROOT = Path(__file__).resolve().parent.parent
FILES_SERVER = ROOT / "tests" / "mcp" / "files_server.py"

#: a wrong password as awkward to mask as the right one
WRONG_PASSWORD = "wr0ng p@ss:/%25 Ä"

POLICY = Policy.from_dict(
    {
        "rules": [
            {
                "name": "refunds",
                "match": {"type": "refund"},
                "approval": "auto",
                "limit": {"max": 5, "per": "1h"},
                "on_exceed": {"approval": "block"},
            }
        ]
    }
)

MCP_POLICY = """\
version: "1"
defaults: {risk_level: medium, approval: block}
rules:
  - name: reads
    match: {type: read}
    approval: auto
"""


@pytest.fixture
def schema() -> str:
    """A schema name of the test's own in the login's database (created by the store)."""
    return f"pw_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def no_ambient_password(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No PGPASSWORD, and a passfile that does not exist: only what a test gives counts."""
    for name in ("PGPASSWORD", "PGPASSFILE", "AEGIS_DB", "AEGIS_SCHEMA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-passfile"))


def secret_forms(password: str) -> list[str]:
    """How a password could show up in text: as written, percent-encoded, its distinct tail."""
    return [password, quote(password, safe=""), password[-6:]]


def assert_hidden(password: str, *texts: str) -> None:
    """No text holds the password in any of its forms."""
    for text in texts:
        for form in secret_forms(password):
            assert form not in text, f"{form!r} shown in {text!r}"


def trail_text(login: Login, schema: str) -> str:
    """Every row of every table in ``schema``, as text: all the store wrote."""
    rows: list[str] = []
    with psycopg.connect(login.url(), autocommit=True) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (schema,),
        ).fetchall()
        for (table,) in tables:
            query = sql.SQL("SELECT t::text FROM {}.{} AS t").format(
                sql.Identifier(schema), sql.Identifier(table)
            )
            rows.extend(row[0] for row in conn.execute(query))
    return "\n".join(rows)


def record_one_refund(
    url: str, schema: str, ran: list[Action] | None = None
) -> tuple[ResultStatus, int]:
    """Run one refund through a Runtime whose trail and limits are at ``url``; how many ran."""
    ran = [] if ran is None else ran

    async def run() -> ResultStatus:
        with AuditLogger(url, schema=schema) as audit:
            async with Runtime(
                executor=lambda action: ran.append(action) or "ok",
                policy=POLICY,
                audit_logger=audit,
            ) as runtime:
                result = await runtime.run_one(Action("refund", "billing", {"amount": 3}))
            return result.status

    return asyncio.run(run()), len(ran)


def count_records(login: Login, schema: str) -> int:
    """How many records the trail in ``schema`` holds, after checking its chain."""
    with AuditLogger(login.url(), schema=schema, create=False, readonly=True) as audit:
        assert audit.verify().ok
        return len(list(audit.get_log()))


def assert_names_the_database(login: Login, text: str) -> None:
    """The error names the host, port and database it could not open."""
    for part in ("127.0.0.1", str(login.port), login.dbname):
        assert part in text


# ---------------------------------------------------------------- the library


def libpq_string(login: Login, password: str, host: str = "127.0.0.1") -> str:
    """A libpq key=value string, the password quoted and escaped as libpq wants."""
    escaped = password.replace("\\", "\\\\").replace("'", "\\'")
    return (
        f"host={host} port={login.port} dbname={login.dbname} user={login.user} "
        f"password='{escaped}'"
    )


def passfile_line(login: Login) -> str:
    r"""The login's line of a .pgpass file (':' and '\' escaped by a backslash)."""
    password = login.password.replace("\\", "\\\\").replace(":", "\\:")
    return f"127.0.0.1:{login.port}:{login.dbname}:{login.user}:{password}\n"


#: each way the README says a password may be given
PASSWORD_FORMS = ("url", "url-query", "libpq-string", "libpq-unix-socket", "PGPASSWORD", "passfile")


def password_given(form: str, login: Login, env: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """The location to open with the login's password given as ``form`` says."""
    if form == "url":
        return login.url()
    if form == "url-query":
        return f"{login.url_without_password()}?password={quote(login.password, safe='')}"
    if form == "libpq-string":
        return libpq_string(login, login.password)
    if form == "libpq-unix-socket":
        return libpq_string(login, login.password, host=login.socket_dir)
    if form == "PGPASSWORD":
        env.setenv("PGPASSWORD", login.password)
        return login.url_without_password()
    passfile = tmp_path / "pgpass"
    passfile.write_text(passfile_line(login), encoding="utf-8")
    passfile.chmod(0o600)  # libpq ignores a passfile others may read
    env.setenv("PGPASSFILE", str(passfile))
    return login.url_without_password()


@pytest.mark.parametrize("form", PASSWORD_FORMS)
@pytest.mark.usefixtures("no_ambient_password")
def test_the_right_password_runs_an_action_in_each_form(
    password_postgres: Login,
    schema: str,
    form: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Given in any documented form, the password opens the trail and the limits' counters."""
    url = password_given(form, password_postgres, monkeypatch, tmp_path)
    assert record_one_refund(url, schema) == (ResultStatus.SUCCESS, 1)
    assert count_records(password_postgres, schema) == 1
    assert_hidden(password_postgres.password, trail_text(password_postgres, schema))


@pytest.mark.parametrize(
    "spelling",
    [
        pytest.param(lambda login: login.url(WRONG_PASSWORD), id="url"),
        pytest.param(lambda login: libpq_string(login, WRONG_PASSWORD), id="libpq-string"),
        pytest.param(lambda login: login.url(login.password[:-1]), id="url-one-letter-short"),
        # libpq takes a '?' or '#' before the '@' as part of the password
        pytest.param(
            lambda login: login.url_without_password().replace("@", ":wr?ng#pw@", 1),
            id="url-unencoded-question-mark",
        ),
    ],
)
@pytest.mark.usefixtures("no_ambient_password")
def test_a_wrong_password_stops_the_first_action_before_it_runs(
    password_postgres: Login,
    schema: str,
    spelling: Callable[[Login], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One StoreError naming the refused login and the database; nothing runs or is lost."""
    assert record_one_refund(password_postgres.url(), schema) == (ResultStatus.SUCCESS, 1)
    url = spelling(password_postgres)
    caplog.set_level(logging.DEBUG)
    ran: list[Action] = []
    with pytest.raises(StoreError) as caught:
        record_one_refund(url, schema, ran)
    assert ran == []  # the executor never ran
    text = str(caught.value)
    assert "wrong user name or password" in text
    assert_names_the_database(password_postgres, text)
    shown = "".join(traceback.format_exception(caught.value)) + caplog.text
    assert_hidden(WRONG_PASSWORD, shown)
    assert "wr?ng#pw" not in shown
    assert_hidden(password_postgres.password, shown)
    assert count_records(password_postgres, schema) == 1  # the earlier action's, intact


@pytest.mark.parametrize("password", ["p@ss/w0rd", "p@ss@w0rd", "pa/ss@w0rd", "pass/w0rd"])
def test_an_unencoded_at_or_slash_in_the_password_is_refused_unshown(
    password_postgres: Login, password: str
) -> None:
    """libpq would take part of such a password for the host; the URL is refused, masked."""
    url = f"postgresql://aegis:{password}@127.0.0.1:{password_postgres.port}/agents"
    with pytest.raises(ConfigurationError, match="percent-encode") as caught:
        open_stores(url).audit.check()
    text = str(caught.value)
    assert f"postgresql://aegis:***@127.0.0.1:{password_postgres.port}/agents" in text
    for part in ("p@ss", "ss/w", "w0rd"):
        assert part not in text


@pytest.mark.usefixtures("no_ambient_password")
def test_no_password_at_all_says_the_server_wants_one(
    password_postgres: Login, schema: str
) -> None:
    """A DSN without a password, and none in the environment, is told where to give one."""
    with pytest.raises(StoreError) as caught:
        record_one_refund(password_postgres.url_without_password(), schema)
    text = str(caught.value)
    assert_names_the_database(password_postgres, text)
    assert "PGPASSWORD" in text  # the hint names the ways to give it
    assert "server is running" not in text  # it is, and it answered


@pytest.mark.usefixtures("no_ambient_password")
def test_the_usage_store_alone_refuses_a_wrong_password(
    password_postgres: Login, schema: str
) -> None:
    """The limits' counters opened on their own fail clearly, and count nothing."""
    charge = Charge(bucket="b", amount=1, maximum=5, window=3600.0)
    with PostgresUsageStore(password_postgres.url(), schema=schema) as usage:
        assert usage.acquire([charge], 1000.0, reserve=True, over=False).used == (0,)
    with (
        PostgresUsageStore(password_postgres.url(WRONG_PASSWORD), schema=schema) as wrong,
        pytest.raises(StoreError, match="password") as caught,
    ):
        wrong.acquire([charge], 1001.0, reserve=True, over=False)
    assert_names_the_database(password_postgres, str(caught.value))
    assert_hidden(WRONG_PASSWORD, str(caught.value))
    with PostgresUsageStore(password_postgres.url(), schema=schema) as usage:
        assert usage.acquire([charge], 1002.0, reserve=False, over=False).used == (1,)


@pytest.mark.usefixtures("no_ambient_password")
def test_open_stores_opens_all_three_stores_with_the_password(
    password_postgres: Login, schema: str
) -> None:
    """open_stores hands the audit store's password to the usage and approval stores, or fails."""
    with open_stores(password_postgres.url(), schema=schema) as stores:
        stores.audit.check()
        assert stores.approvals.list_tokens() == []
        assert stores.usage.latest_event("nobody", None) is None
        assert_hidden(password_postgres.password, repr(stores), stores.where)
    with (
        open_stores(password_postgres.url(WRONG_PASSWORD), schema=schema) as wrong,
        pytest.raises(StoreError, match="wrong user name or password") as caught,
    ):
        wrong.approvals.list_tokens()
    assert_names_the_database(password_postgres, str(caught.value))
    assert_hidden(WRONG_PASSWORD, str(caught.value))


# ---------------------------------------------------------------- the command line


def aegis_env(**extra: str) -> dict[str, str]:
    """The environment of an ``aegis`` process: no ambient password or store, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ("PGPASSWORD", "AEGIS_DB")}
    env.pop("AEGIS_SCHEMA", None)
    env["PGPASSFILE"] = "/nonexistent/pgpass"  # not ~/.pgpass (libpq warns of /dev/null)
    return {**env, **extra}


def aegis(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``python -m aegis ARGS`` to the end; its exit code, stdout and stderr."""
    return subprocess.run(
        [sys.executable, "-m", "aegis", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )


def assert_refused_clearly(login: Login, done: subprocess.CompletedProcess[str]) -> None:
    """Exit 1, and one error on stderr naming the refused login and the database."""
    assert done.returncode == 1, done.stderr
    [error] = done.stderr.strip().splitlines()  # one error, no traceback
    assert "wrong user name or password" in error
    assert_names_the_database(login, done.stderr)
    assert_hidden(WRONG_PASSWORD, done.stdout, done.stderr)
    assert_hidden(login.password, done.stdout, done.stderr)


@pytest.mark.parametrize("command", [("audit", "verify"), ("audit", "list")])
def test_the_audit_commands_refuse_a_wrong_password_clearly(
    password_postgres: Login, schema: str, command: tuple[str, ...]
) -> None:
    """`aegis audit verify|list --db` with a wrong password exits 1 naming the problem only."""
    assert record_one_refund(password_postgres.url(), schema) == (ResultStatus.SUCCESS, 1)
    wrong = password_postgres.url(WRONG_PASSWORD)
    done = aegis(*command, "--schema", schema, env=aegis_env(AEGIS_DB=wrong))
    assert_refused_clearly(password_postgres, done)
    assert count_records(password_postgres, schema) == 1


def test_the_audit_commands_take_the_password_from_aegis_db_or_pgpassword(
    password_postgres: Login, schema: str
) -> None:
    """AEGIS_DB may carry the encoded password; a DSN without one takes PGPASSWORD's."""
    assert record_one_refund(password_postgres.url(), schema) == (ResultStatus.SUCCESS, 1)
    verified = aegis(
        "audit", "verify", env=aegis_env(AEGIS_DB=password_postgres.url(), AEGIS_SCHEMA=schema)
    )
    assert verified.returncode == 0, verified.stderr
    listed = aegis(
        "audit", "list", "--db", password_postgres.url_without_password(), "--schema", schema,
        "--format", "json",
        env=aegis_env(PGPASSWORD=password_postgres.password),
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert [r["action_type"] for r in json.loads(listed.stdout)] == ["refund"]
    assert_hidden(password_postgres.password, *(p.stdout + p.stderr for p in (verified, listed)))


def test_serve_refuses_a_wrong_password_before_it_listens(
    password_postgres: Login, schema: str
) -> None:
    """`aegis serve --db` with a wrong password exits 1 at once, naming the problem only."""
    assert record_one_refund(password_postgres.url(), schema) == (ResultStatus.SUCCESS, 1)
    done = aegis(
        "serve", "--schema", schema, "--port", str(free_port()),
        env=aegis_env(AEGIS_DB=password_postgres.url(WRONG_PASSWORD)),
    )  # fmt: skip
    assert_refused_clearly(password_postgres, done)
    assert count_records(password_postgres, schema) == 1


@pytest.mark.parametrize("given", ["AEGIS_DB", "PGPASSWORD"])
def test_serve_answers_with_the_password_never_shown(
    password_postgres: Login, schema: str, tmp_path: Path, given: str
) -> None:
    """`aegis serve` serves with AEGIS_DB's encoded password, or PGPASSWORD's; shows neither."""
    if given == "AEGIS_DB":
        env = aegis_env(AEGIS_DB=password_postgres.url())
    else:
        env = aegis_env(
            AEGIS_DB=password_postgres.url_without_password(), PGPASSWORD=password_postgres.password
        )
    port = free_port()
    output = tmp_path / "serve.log"
    with output.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "aegis", "serve", "--schema", schema, "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
        )  # fmt: skip
        try:
            assert healthy(f"http://127.0.0.1:{port}/healthz", server)
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=60)
    shown = output.read_text()
    assert f"127.0.0.1:{password_postgres.port}/agents" in shown  # the store it serves
    assert_hidden(password_postgres.password, shown, trail_text(password_postgres, schema))


def healthy(url: str, process: subprocess.Popen[bytes]) -> bool:
    """Whether ``url`` answers 200 before ``process`` exits (or 60 s pass)."""
    deadline = time.monotonic() + 60
    while process.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                return bool(answer.status == 200)
        except OSError:
            time.sleep(0.1)  # not listening yet: nothing to await but the port
    return False


# ---------------------------------------------------------------- the MCP proxy


def mcp_proxy(schema: str, tmp_path: Path) -> list[str]:
    """The command line of `aegis mcp-proxy` before the files server (its --db in AEGIS_DB).

    A password in --db on the command line is refused (every local user
    could read it in the process list): the DSN comes from the environment.
    """
    policy = tmp_path / "policy.yaml"
    policy.write_text(MCP_POLICY, encoding="utf-8")
    return [
        sys.executable, "-m", "aegis", "mcp-proxy", "--policy", str(policy),
        "--schema", schema, "--name", "files", "--",
        sys.executable, str(FILES_SERVER), "--log", str(tmp_path / "calls.jsonl"),
    ]  # fmt: skip


def test_mcp_proxy_refuses_a_wrong_password_before_any_call(
    password_postgres: Login, schema: str, tmp_path: Path
) -> None:
    """`aegis mcp-proxy` with a wrong password in AEGIS_DB exits 1; no call reaches the server."""
    assert record_one_refund(password_postgres.url(), schema) == (ResultStatus.SUCCESS, 1)
    command = mcp_proxy(schema, tmp_path)
    done = subprocess.run(
        command, input="", capture_output=True, text=True, cwd=ROOT,
        env=aegis_env(AEGIS_DB=password_postgres.url(WRONG_PASSWORD)),
        timeout=60, check=False,
    )  # fmt: skip
    assert_refused_clearly(password_postgres, done)
    assert not (tmp_path / "calls.jsonl").exists()
    assert count_records(password_postgres, schema) == 1


def test_mcp_proxy_records_a_call_with_the_encoded_password(
    password_postgres: Login, schema: str, tmp_path: Path
) -> None:
    """With the password percent-encoded in AEGIS_DB, a call is forwarded and recorded."""
    command = mcp_proxy(schema, tmp_path)
    stderr = tmp_path / "proxy.err"
    with (
        stderr.open("w") as err,
        subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
            env=aegis_env(AEGIS_DB=password_postgres.url()), cwd=ROOT,
        ) as proxy,
    ):  # fmt: skip
        talk = StdioTalk(proxy)
        talk.ask("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                "clientInfo": {"name": "raw", "version": "1"}})  # fmt: skip
        talk.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        answer = talk.ask("tools/call", {"name": "read", "arguments": {"path": "/srv/readme.txt"}})
        talk.close()
    assert answer["result"]["structuredContent"]["content"] == "hello"
    assert count_records(password_postgres, schema) == 1
    assert_hidden(
        password_postgres.password, stderr.read_text(), trail_text(password_postgres, schema)
    )


class StdioTalk:
    """JSON-RPC over a process's stdin and stdout, one request at a time."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stdin is not None
        assert process.stdout is not None
        self.process = process
        self._stdin = process.stdin
        self._lines: queue.Queue[str] = queue.Queue()
        self._ids = 0
        threading.Thread(target=self._read, args=(process.stdout,), daemon=True).start()

    def _read(self, stdout: Any) -> None:
        for line in stdout:
            self._lines.put(line)

    def send(self, message: dict[str, Any]) -> None:
        """Write one message."""
        self._stdin.write(json.dumps(message) + "\n")
        self._stdin.flush()

    def ask(self, method: str, params: dict[str, Any]) -> Any:
        """Send a request; the next message the process writes (its answer)."""
        self._ids += 1
        self.send({"jsonrpc": "2.0", "id": self._ids, "method": method, "params": params})
        return json.loads(self._lines.get(timeout=120))

    def close(self) -> None:
        """End the input and wait for the process to exit."""
        self._stdin.close()
        self.process.wait(timeout=60)


# ---------------------------------------------------------------- the README

README_SECTION = (ROOT / "README.md").read_text(encoding="utf-8").split("## PostgreSQL", 1)[1]
README_SECTION = README_SECTION.split("\n## ", 1)[0]


def on_the_cluster(text: str, login: Login, schema: str) -> str:
    """README text pointed at the cluster: its host and port, its schema, the login's password."""
    assert "aegis:secret@db.internal:5432/agents" in text or "aegis@db.internal:5432/agents" in text
    text = text.replace("db.internal:5432", f"127.0.0.1:{login.port}")
    text = text.replace("aegis:secret@", f"aegis:{quote(login.password, safe='')}@")
    return text.replace('schema="aegis"', f"schema={schema!r}").replace(
        "--schema aegis", f"--schema {schema}"
    )


@pytest.mark.usefixtures("no_ambient_password")
def test_the_readme_example_records_with_its_password_in_the_url(
    password_postgres: Login, schema: str
) -> None:
    """The section's Python example, its password percent-encoded, records an action."""
    code = re.search(r"```python\n(.*?)```", README_SECTION, re.DOTALL)
    assert code is not None
    namespace: dict[str, Any] = {"crm": lambda action: "done", "policy": POLICY}
    exec(compile(on_the_cluster(code.group(1), password_postgres, schema), "README", "exec"),
         namespace)  # fmt: skip

    async def refund() -> ResultStatus:
        async with namespace["runtime"] as runtime:
            return (await runtime.run_one(Action("refund", "billing", {"amount": 3}))).status

    assert asyncio.run(refund()) is ResultStatus.SUCCESS
    namespace["audit"].close()
    assert count_records(password_postgres, schema) == 1


def test_the_readme_verify_command_takes_pgpassword(password_postgres: Login, schema: str) -> None:
    """The section's `aegis audit verify --db` DSN has no password; PGPASSWORD gives it."""
    assert record_one_refund(password_postgres.url(), schema) == (ResultStatus.SUCCESS, 1)
    shell = re.search(r"```sh\n(.*?)```", README_SECTION, re.DOTALL)
    assert shell is not None
    line = next(x for x in shell.group(1).splitlines() if x.startswith("aegis audit verify"))
    args = on_the_cluster(line, password_postgres, schema).split()[1:]
    refused = aegis(*args, env=aegis_env())
    assert refused.returncode == 1
    [error] = refused.stderr.strip().splitlines()
    assert "PGPASSWORD" in error  # says how to give it
    verified = aegis(*args, env=aegis_env(PGPASSWORD=password_postgres.password))
    assert verified.returncode == 0, verified.stderr  # the chain read, and intact
